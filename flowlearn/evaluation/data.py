"""Prequential evaluation of a model against a batch baseline: the data model.

Flink-free and network-free. :mod:`flowlearn.evaluation.replay` (a bounded run of the job on a
file) and :mod:`flowlearn.evaluation.recorded` (what a live system recorded: alerts, DLQ, the
prediction log joined with labels, MLflow) build an :class:`EvaluationData` (with
:mod:`flowlearn.evaluation.builders`; the baseline's records come from
:mod:`flowlearn.evaluation.baselines`); :mod:`flowlearn.evaluation.statistics` computes its
numbers and :mod:`flowlearn.evaluation.report` draws it.

**Per-sample records.** Every sample that was scored before it was learned (prequential:
test, then train) has, for each of the two models (*online* and *baseline*), a
:class:`Side` entry: ``correct`` (1 or 0), ``loss`` (log loss, ``-log p(true label)``) and
``confidence`` (the probability of the predicted label, for calibration); NaN where that
model did not score the sample. ``t`` places the sample on the report's axis: on the
``"samples"`` axis (a replay) ``t`` is the stream position after the sample (1, 2, ...), the
coordinate of ``samples_applied``; on the ``"time"`` axis (live) it is epoch milliseconds.

>>> data = EvaluationData.empty("m").with_samples(Samples.build(
...     t=[1, 2], online=Side.from_probabilities([0.9, 0.2], [1, 1])))
>>> data.samples.online.correct.tolist(), len(data.samples)
([1.0, 0.0], 2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from flowlearn.core.model_types import model_type as model_type_of

__all__ = [
    "AXIS_SAMPLES",
    "AXIS_TIME",
    "Alert",
    "Checkpoint",
    "EvalRow",
    "EvaluationData",
    "EvaluationError",
    "Samples",
    "Side",
    "VersionPoint",
    "as_floats",
]

#: Probabilities are clipped to this before a log (as flowlearn.core.metrics.LogLoss).
EPS = 1e-15
AXIS_SAMPLES, AXIS_TIME = "samples", "time"


class EvaluationError(ValueError):
    """The input cannot be evaluated (says what and where)."""


def as_floats(values: Any) -> np.ndarray:
    """``values`` (None: none) as a flat float64 array."""
    return np.asarray([] if values is None else values, dtype=np.float64).reshape(-1)


# ---------------------------------------------------------------------------- per-sample data


@dataclass(frozen=True)
class Side:
    """What one model did on each sample: ``correct`` (1/0), ``loss``, ``confidence``;
    NaN where it did not score the sample (or, for ``confidence``, where it is unknown)."""

    correct: np.ndarray
    loss: np.ndarray
    confidence: np.ndarray

    @classmethod
    def missing(cls, n: int) -> Side:
        nan = np.full(n, np.nan)
        return cls(nan, nan.copy(), nan.copy())

    @classmethod
    def from_probabilities(cls, proba: Any, labels: Any) -> Side:
        """From predicted probabilities: ``(n,)`` P(class 1) of a binary model or ``(n, k)``
        class probabilities, and the true labels. A row holding NaN was not scored.

        >>> s = Side.from_probabilities([0.8, 0.3], [1, 1])
        >>> s.correct.tolist(), s.loss.round(4).tolist(), s.confidence.tolist()
        ([1.0, 0.0], [0.2231, 1.204], [0.8, 0.7])
        """
        p = np.asarray(proba, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        if p.ndim not in (1, 2) or len(p) != len(y):
            raise EvaluationError(f"probabilities of shape {p.shape} for {len(y)} labels")
        n = len(y)
        if p.ndim == 1:
            ok = np.isfinite(p) & np.isfinite(y)
            p_true = np.where(y == 1, p, 1.0 - p)
            predicted = (p > 0.5).astype(np.float64)
            confidence = np.maximum(p, 1.0 - p)
        else:
            ok = np.isfinite(p).all(axis=1) & np.isfinite(y) & (y >= 0) & (y < p.shape[1])
            idx = np.where(ok, y, 0).astype(np.int64)
            p_true = p[np.arange(n), idx] if n else np.zeros(0)
            predicted = p.argmax(axis=1).astype(np.float64) if n else np.zeros(0)
            confidence = p.max(axis=1) if n else np.zeros(0)
        correct = np.where(ok, (predicted == y).astype(np.float64), np.nan)
        with np.errstate(invalid="ignore"):
            loss = np.where(ok, -np.log(np.clip(p_true, EPS, 1.0 - EPS)), np.nan)
        return cls(correct, loss, np.where(ok, confidence, np.nan))

    @classmethod
    def from_prequential(cls, errors: Any, losses: Any, model_type: str) -> Side:
        """From the trainer's test step (``EVAL_TYPE`` rows): 0/1 errors and log losses.

        For a logistic model the loss is ``-log p(true label)``, so ``p = exp(-loss)`` is the
        probability of the true label and the confidence in the predicted one is ``p`` when
        the prediction is right and ``1 - p`` when it is wrong. A softmax model's confidence in
        a wrong prediction is not in the row: its calibration is left out (NaN). A linear
        model has no accuracy; its loss is the trainer's.
        """
        loss = as_floats(losses)
        task = model_type_of(model_type).task
        if task == "regression" or errors is None or len(errors) == 0:
            nan = np.full(len(loss), np.nan)
            return cls(nan, loss, nan.copy())
        correct = 1.0 - as_floats(errors)
        p_true = np.exp(-loss)
        if task == "binary":
            confidence = np.where(correct == 1.0, p_true, 1.0 - p_true)
        else:
            confidence = np.full(len(loss), np.nan)
        return cls(correct, loss, confidence)

    @classmethod
    def concat(cls, parts: Sequence[Side]) -> Side:
        if not parts:
            return cls.missing(0)
        return cls(
            *(
                np.concatenate([getattr(s, f) for s in parts])
                for f in ("correct", "loss", "confidence")
            )
        )

    def take(self, index: Any) -> Side:
        return Side(self.correct[index], self.loss[index], self.confidence[index])

    def scored(self) -> np.ndarray:
        """Which samples this model scored."""
        return ~np.isnan(self.loss)

    def __len__(self) -> int:
        return len(self.loss)


@dataclass(frozen=True)
class Samples:
    """Per-sample prequential records of one model, in stream order."""

    t: np.ndarray
    version: np.ndarray  # the online version that scored the sample (-1: unknown)
    online: Side
    baseline: Side
    #: The variant that answered the request ("online"/"baseline") in the served view;
    #: empty in a replay.
    served: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        t: Any,
        online: Side,
        baseline: Side | None = None,
        version: Any = None,
        served: Sequence[str] = (),
    ) -> Samples:
        t = as_floats(t)
        n = len(t)
        if len(online) != n or (baseline is not None and len(baseline) != n):
            raise EvaluationError("per-sample arrays of different lengths")
        v = (
            np.full(n, -1, dtype=np.int64)
            if version is None
            else np.asarray(version, dtype=np.int64).reshape(-1)
        )
        return cls(
            t, v, online, baseline if baseline is not None else Side.missing(n), tuple(served)
        )

    def __len__(self) -> int:
        return len(self.t)

    def position(self, t: float) -> int:
        """How many samples are at or before ``t`` on the axis."""
        return int(np.searchsorted(self.t, t, side="right"))


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Alert:
    """One ``fl.alerts`` record, placed on the axis (``t``). ``change_t`` is where the
    detector estimates that the change began (the first new-regime sample), when known."""

    kind: str
    t: float
    version: int | None
    detail: Mapping[str, Any]
    ts: int = 0
    change_t: float | None = None

    @property
    def performance(self) -> bool:
        """A rise of the error or the loss: a drift the model suffers from."""
        return (
            self.kind == "drift"
            and self.detail.get("direction") == "up"
            and self.detail.get("signal") in ("error", "loss")
        )

    @property
    def label(self) -> str:
        d = self.detail
        if self.kind == "drift":
            return f"drift {d.get('detector', '?')} {d.get('signal', '?')} {d.get('direction', '')}"
        if self.kind == "rollback":
            return (
                f"rollback v{d.get('from_version', '?')} -> v{d.get('new_version', '?')}"
                if d.get("ok")
                else f"rollback failed: {d.get('reason', '')}"
            )
        if self.kind == "degraded":
            return f"degraded: rollback to v{d.get('to_version', '?')} decided"
        if self.kind == "control":
            return f"{d.get('command', 'control')} ({'ok' if d.get('ok') else 'failed'})"
        return self.kind


@dataclass(frozen=True)
class VersionPoint:
    """A model version on the axis; ``kind`` as in ``EVAL_TYPE`` ("train", "rollback",
    "reset", "warm_start") or "registered" (an MLflow checkpoint) or "served"."""

    version: int
    t: float
    kind: str
    samples_applied: int = 0


@dataclass(frozen=True)
class Checkpoint:
    """A registered checkpoint's windowed metrics (MLflow), placed on the axis."""

    version: int
    t: float
    samples_applied: int
    n: int
    loss: float
    accuracy: float
    #: Where the interval the metrics cover begins (None: unknown).
    t_start: float | None = None


@dataclass(frozen=True)
class EvaluationData:
    """Everything a report shows about one model."""

    model_id: str
    axis: str = AXIS_SAMPLES
    source: str = ""
    model_type: str = "logistic"
    samples: Samples = field(default_factory=lambda: Samples.build([], Side.missing(0)))
    alerts: tuple[Alert, ...] = ()
    versions: tuple[VersionPoint, ...] = ()
    checkpoints: tuple[Checkpoint, ...] = ()
    #: Label time minus event time of every label joined to its event (ms).
    label_delays_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: Dead-lettered records by reason (of this model where they can be attributed).
    dlq: Mapping[str, int] = field(default_factory=dict)
    #: Input records (samples, events, labels) the rates are relative to; 0: unknown.
    input_records: int = 0
    #: Labels read: the late-data rate is relative to them; 0: unknown.
    labels: int = 0
    #: Describes the baseline ("" when there is none).
    baseline_name: str = ""
    #: Commands the job sent to itself through fl.control (a replay does not apply them).
    adaptations: tuple[Mapping[str, Any], ...] = ()
    notes: tuple[str, ...] = ()
    final_weights: np.ndarray | None = None

    @classmethod
    def empty(cls, model_id: str, **kwargs: Any) -> EvaluationData:
        return cls(model_id, **kwargs)

    def with_samples(self, samples: Samples) -> EvaluationData:
        return replace(self, samples=samples)

    @property
    def classifier(self) -> bool:
        return model_type_of(self.model_type).classifier

    @property
    def late(self) -> int:
        """Labels the job could not use for lateness: ``late``, ``outside_window``,
        ``no_event``."""
        return sum(self.dlq.get(r, 0) for r in ("late", "outside_window", "no_event"))


@dataclass(frozen=True)
class EvalRow:
    """One ``EVAL_TYPE`` row as the replay collects it."""

    version: int
    kind: str
    samples_applied: int
    errors: Sequence[float]
    losses: Sequence[float]
