"""Label-flip poisoning, in process: what it costs a model and what the safety gates and the
automatic rollback win back. The trainer (:class:`flowlearn.core.training.ModelTrainer`, its
holdout gate included) and the checkpoint ledger
(:class:`flowlearn.core.checkpointing.CheckpointLedger`) run as the job runs them, version by
version; a rollback the ledger asks for is carried out ``command_delay_batches`` batches
later (the live job sends it through ``fl.control``, which takes about a checkpoint
interval).

A share ``rate`` of the labels inside a poisoning episode is flipped (binary labels). Three
runs over the same batches (:func:`compare`):

- ``clean``: no label flipped, protections on (what the same configuration gets unpoisoned);
- ``unprotected``: poisoned, no holdout gate, no automatic rollback;
- ``protected``: poisoned, protections on.

Each is measured on a clean held-out set of the same concept at the end of the episode and
at the end of the stream, and prequentially against the true labels over the episode and
after it.

>>> from flowlearn.devstack.producer import DriftingStream
>>> X, y = stream_arrays(DriftingStream(n_features=4, seed=1), 4000)
>>> X_test, y_test = X[3000:], y[3000:]
>>> runs = compare(X[:3000], y[:3000], X_test, y_test, rate=1.0, episode=(1500, 2000),
...                spec={"type": "logistic", "n_features": 4}, batch_size=50,
...                ledger_options={"every": 5, "window_samples": 200, "min_samples": 200,
...                                "cooldown_versions": 10}, holdout_size=200)
>>> runs["protected"].rollbacks >= 1
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowlearn.core.checkpointing import CheckpointLedger, Retired, Rollback
from flowlearn.core.training import ModelTrainer
from flowlearn.devstack.producer import DriftingStream


@dataclass(frozen=True)
class PoisoningRun:
    """One run's outcome (accuracies in [0, 1])."""

    name: str
    #: On the held-out set with the weights at the end of the episode, and at the end.
    episode_end_accuracy: float
    final_accuracy: float
    #: Prequential (each batch scored before it is trained on), against the true labels.
    episode_accuracy: float
    after_accuracy: float
    rollbacks: int
    gate_rejections: int


def stream_arrays(stream: DriftingStream, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The next ``n`` samples of ``stream`` as features (n x d) and labels."""
    records = stream.take(n, 0)
    return (
        np.array([r["features"] for r in records], dtype=np.float64),
        np.array([r["label"] for r in records], dtype=np.float64),
    )


def flip_labels(y: np.ndarray, rate: float, episode: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``y`` with a share ``rate`` of the labels in ``episode`` (start, end) flipped."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be within [0, 1], got {rate}")
    start, end = episode
    poisoned = y.copy()
    chosen = start + np.flatnonzero(np.random.default_rng(seed).random(end - start) < rate)
    poisoned[chosen] = 1.0 - poisoned[chosen]
    return poisoned


def _accuracy(trainer: ModelTrainer, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(trainer.model.predict_many(X) == y))


def run(
    name: str,
    X: np.ndarray,
    y_given: np.ndarray,
    y_true: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    spec: Mapping[str, Any],
    batch_size: int,
    episode: tuple[int, int],
    ledger_options: Mapping[str, Any],
    auto_rollback: bool,
    command_delay_batches: int = 4,
) -> PoisoningRun:
    """Train on ``(X, y_given)`` batch by batch as the job does; see the module docstring."""
    trainer = ModelTrainer.create(name, spec)
    ledger = CheckpointLedger(**ledger_options, auto_rollback=auto_rollback)
    checkpoints: dict[int, np.ndarray] = {}
    queued: list[tuple[int, int]] = []  # (batch index it lands at, version to restore)
    right = np.zeros(len(y_true))
    rollbacks = rejections = 0
    episode_end_accuracy: float | None = None
    for b, start in enumerate(range(0, len(X), batch_size)):
        for due, version in [q for q in queued if q[0] <= b]:
            queued.remove((due, version))
            if version in checkpoints:
                mv = trainer.restore_weights(checkpoints[version])
                ledger.observe(mv.version, "rollback")
                rollbacks += 1
        if start >= episode[1] and episode_end_accuracy is None:
            episode_end_accuracy = _accuracy(trainer, X_test, y_test)
        Xb, yb = X[start : start + batch_size], y_given[start : start + batch_size]
        right[start : start + len(Xb)] = (
            trainer.model.predict_many(Xb) == y_true[start : start + len(Xb)]
        )
        result = trainer.train_batch(Xb, yb)
        if result.version is None:
            rejections += 1
            continue
        version = result.version.version
        assert result.losses is not None and result.errors is not None
        decisions = ledger.observe(
            version,
            "train",
            n=len(yb),
            loss_sum=float(np.sum(result.losses)),
            error_sum=float(np.sum(result.errors)),
            samples_applied=trainer.samples_applied,
            now_ms=b,
        )
        if ledger.is_checkpoint(version):
            checkpoints[version] = trainer.model.weights_vector()
        for decision in decisions:
            if isinstance(decision, Rollback):
                queued.append((b + 1 + command_delay_batches, decision.to_version))
            elif isinstance(decision, Retired):
                for retired in decision.versions:
                    checkpoints.pop(retired, None)
    final_accuracy = _accuracy(trainer, X_test, y_test)
    inside = slice(*episode)
    return PoisoningRun(
        name,
        final_accuracy if episode_end_accuracy is None else episode_end_accuracy,
        final_accuracy,
        float(np.mean(right[inside])),
        float(np.mean(right[episode[1] :])),
        rollbacks,
        rejections,
    )


def compare(
    X: np.ndarray,
    y: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    rate: float,
    episode: tuple[int, int],
    spec: Mapping[str, Any],
    batch_size: int,
    ledger_options: Mapping[str, Any],
    holdout_size: int,
    holdout_margin: float = 0.05,
    command_delay_batches: int = 4,
    seed: int = 0,
) -> dict[str, PoisoningRun]:
    """The clean, unprotected and protected runs (module docstring) at one flip ``rate``."""
    poisoned = flip_labels(y, rate, episode, seed)
    protected = {**spec, "holdout_size": holdout_size, "holdout_margin": holdout_margin}
    unprotected = {**spec, "holdout_size": 0}
    common: dict[str, Any] = dict(
        batch_size=batch_size,
        episode=episode,
        ledger_options=ledger_options,
        command_delay_batches=command_delay_batches,
    )
    return {
        "clean": run(
            "clean", X, y, y, X_test, y_test, spec=protected, auto_rollback=True, **common
        ),
        "unprotected": run(
            "unprotected",
            X,
            poisoned,
            y,
            X_test,
            y_test,
            spec=unprotected,
            auto_rollback=False,
            **common,
        ),
        "protected": run(
            "protected",
            X,
            poisoned,
            y,
            X_test,
            y_test,
            spec=protected,
            auto_rollback=True,
            **common,
        ),
    }
