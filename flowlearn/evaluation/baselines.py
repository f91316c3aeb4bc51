"""The baselines an online model is compared with, as per-sample records
(:class:`flowlearn.evaluation.data.Side`): a fixed model scoring every sample, or the batch
model of :func:`flowlearn.evaluation.batch.train_baseline` fit on a prefix of the stream (and
refit as it goes), each sample scored out of sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowlearn.evaluation.batch import BatchDataError, train_baseline
from flowlearn.evaluation.data import EvaluationError, Side

__all__ = ["BatchBaseline", "batch_baseline", "fixed_baseline"]


def fixed_baseline(model: Any, X: np.ndarray, y: np.ndarray) -> Side:
    """A fixed model (e.g. a registered baseline's weights) scoring every sample."""
    return _score(model, X, y)


def _score(model: Any, X: np.ndarray, y: np.ndarray) -> Side:
    if not len(y):
        return Side.missing(0)
    loss = np.asarray(model.loss_many(X, y), dtype=np.float64)
    if not hasattr(model, "predict_proba_many"):  # linear regression
        nan = np.full(len(y), np.nan)
        return Side(nan, loss, nan.copy())
    proba = np.asarray(model.predict_proba_many(X), dtype=np.float64)
    correct = (np.asarray(model.predict_many(X)) == y).astype(np.float64)
    confidence = np.maximum(proba, 1.0 - proba) if proba.ndim == 1 else proba.max(axis=1)
    return Side(correct, loss, confidence)


@dataclass(frozen=True)
class BatchBaseline:
    side: Side
    #: (position the model serves from, rows it was fit on, its holdout metrics) per fit.
    fits: tuple[tuple[int, int, Mapping[str, float]], ...]
    name: str


def batch_baseline(
    spec: Mapping[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    train: int,
    retrain_every: int = 0,
    epochs: int = 3,
    batch_size: int = 64,
    seed: int = 0,
) -> BatchBaseline:
    """The batch baseline practitioners compare with:
    :func:`flowlearn.evaluation.batch.train_baseline`
    on the first ``train`` samples (which fits their first 80% and measures the rest), then,
    every ``retrain_every`` samples (0: never), again on all the samples so far.

    Each fit scores the samples from the end of its fit rows (its own holdout included, out
    of sample) until the next fit takes over: a sample is never scored by a model that was
    fit on it.
    """
    n = len(y)
    if not 1 <= train <= n:
        raise EvaluationError(f"the baseline's training part must be 1..{n} samples, got {train}")
    if retrain_every < 0:
        raise EvaluationError("retrain_every must be >= 0")
    cuts = [train]
    if retrain_every:
        cuts += list(range(train + retrain_every, n, retrain_every))
    parts: list[Side] = []
    fits = []
    covered = 0
    for k, cut in enumerate(cuts):
        try:
            result = train_baseline(
                spec, X[:cut], y[:cut], epochs=epochs, batch_size=batch_size, seed=seed
            )
        except BatchDataError as exc:
            raise EvaluationError(f"baseline on the first {cut} samples: {exc}") from exc
        start = result.n_train if k == 0 else cut
        end = cuts[k + 1] if k + 1 < len(cuts) else n
        if k == 0 and start > covered:
            parts.append(Side.missing(start - covered))
        parts.append(_score(result.model, X[start:end], y[start:end]))
        covered = end
        fits.append((start, result.n_train, dict(result.metrics)))
    every = f", refit on all samples so far every {retrain_every}" if retrain_every else ""
    name = (
        f"batch baseline (flowlearn.evaluation.batch.train_baseline, {epochs} epochs) fit "
        f"on the first {fits[0][1]} of {train} samples{every}"
    )
    return BatchBaseline(Side.concat(parts), tuple(fits), name)
