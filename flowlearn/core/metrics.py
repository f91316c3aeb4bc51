"""Streaming metrics, cumulative or over a sliding window, and a prequential evaluator.

Every metric keeps summed sufficient statistics. Cumulative metrics add each batch's
statistics; windowed metrics (``window_size=N``) keep the last N ``(y_true, y_pred)`` pairs
in a ring buffer and recompute the statistics when read, so no floating-point error builds
up from adding and subtracting. An empty metric reads NaN (undefined, not zero).

>>> acc = Accuracy().update_many(np.array([1, 0, 1]), np.array([1, 1, 1]))
>>> round(acc.get(), 4)
0.6667
>>> Accuracy(window_size=2).update_many([1, 0, 1], [1, 1, 1]).get()
0.5
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, Self

import numpy as np

from flowlearn.core.validation import Arrays, Meta, Stateful, check_array, check_finite

__all__ = [
    "F1",
    "MAE",
    "R2",
    "RMSE",
    "ROCAUC",
    "Accuracy",
    "ExpectedCalibrationError",
    "LogLoss",
    "Metric",
    "Precision",
    "Prequential",
    "Recall",
    "calibration_bins",
    "calibration_error",
    "confidence_bin",
    "expected_calibration_error",
]

_EPS = 1e-15


class Metric(Stateful):
    """Base: validation, the cumulative/windowed bookkeeping and state."""

    #: True when ``y_pred`` must be probabilities or scores rather than predicted labels.
    requires_proba: ClassVar[bool] = False
    #: Whether ``y_pred`` may be an ``(n, k)`` matrix of class probabilities.
    accepts_matrix: ClassVar[bool] = False
    bigger_is_better: ClassVar[bool] = True

    def __init__(self, window_size: int | None = None) -> None:
        if window_size is not None and int(window_size) < 1:
            raise ValueError(f"window_size must be >= 1 or None, got {window_size}")
        self.window_size = None if window_size is None else int(window_size)
        self._s = np.zeros(self._n_stats())
        self._true: np.ndarray | None = None
        self._pred: np.ndarray | None = None
        self._pos = 0
        self._count = 0

    @property
    def name(self) -> str:
        suffix = f"@{self.window_size}" if self.window_size else ""
        return f"{type(self).__name__}{suffix}"

    def _n_stats(self) -> int:
        raise NotImplementedError

    def _stats(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        """Summed sufficient statistics of a batch, shape ``(_n_stats(),)``."""
        raise NotImplementedError

    def _value(self, s: np.ndarray) -> float:
        raise NotImplementedError

    def _check(self, y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
        yt = np.asarray(y_true, dtype=np.float64)
        yp = np.asarray(y_pred, dtype=np.float64)
        ok_ndims = (1, 2) if self.accepts_matrix else (1,)
        if yt.ndim != 1 or yp.ndim not in ok_ndims or len(yp) != len(yt):
            shape = "(n,) or (n, k)" if self.accepts_matrix else "(n,)"
            raise ValueError(
                f"y_true must have shape (n,) and y_pred {shape} with the same n, "
                f"got {yt.shape} and {yp.shape}"
            )
        check_finite(yt, "y_true")
        check_finite(yp, "y_pred")
        return yt, yp

    def update_many(self, y_true: Any, y_pred: Any) -> Self:
        yt, yp = self._check(y_true, y_pred)
        n = len(yt)
        if n == 0:
            return self
        if self.window_size is None:
            self._s += self._stats(yt, yp)
            return self
        w = self.window_size
        if self._true is None or self._pred is None or self._pred.shape[1:] != yp.shape[1:]:
            if self._count:
                raise ValueError(f"y_pred shape changed within the window: {yp.shape[1:]}")
            self._true = np.zeros(w)
            self._pred = np.zeros((w, *yp.shape[1:]))
        yt, yp = yt[-w:], yp[-w:]
        idx = (self._pos + np.arange(len(yt))) % w
        self._true[idx] = yt
        self._pred[idx] = yp
        self._pos = int((self._pos + len(yt)) % w)
        self._count = min(self._count + len(yt), w)
        return self

    def update(self, y_true: float, y_pred: Any) -> Self:
        return self.update_many([y_true], [y_pred])

    def get(self) -> float:
        if self.window_size is None:
            return self._value(self._s)
        if not self._count or self._true is None or self._pred is None:
            return float("nan")
        return self._value(self._stats(self._true[: self._count], self._pred[: self._count]))

    def _params(self) -> dict[str, Any]:
        return {"window_size": self.window_size}

    def _state(self) -> tuple[Arrays, Meta]:
        arrays = {"s": self._s}
        if self._true is not None and self._pred is not None:
            arrays |= {"true": self._true, "pred": self._pred}
        return arrays, {"pos": self._pos, "count": self._count}

    def _load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self._s = check_array(arrays, "s", self._s.shape)
        self._pos, self._count = int(meta["pos"]), int(meta["count"])
        if "true" in arrays and self.window_size:
            self._true = check_array(arrays, "true", (self.window_size,))
            pred = np.asarray(arrays["pred"])
            self._pred = check_array(arrays, "pred", (self.window_size, *pred.shape[1:]))


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


class Accuracy(Metric):
    """Share of exact label matches."""

    def _n_stats(self) -> int:
        return 2

    def _stats(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        return np.array([len(y_true), np.count_nonzero(y_true == y_pred)])

    def _value(self, s: np.ndarray) -> float:
        return _ratio(s[1], s[0])


class LogLoss(Metric):
    """Mean cross-entropy; ``y_pred`` is P(class 1) ``(n,)`` or class probabilities ``(n, k)``.

    Probabilities are clipped to ``[1e-15, 1 - 1e-15]`` so one confident miss is large but
    finite.
    """

    requires_proba = True
    accepts_matrix = True
    bigger_is_better = False

    def _n_stats(self) -> int:
        return 2

    def _stats(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        if y_pred.ndim == 2:
            p = y_pred[np.arange(len(y_true)), y_true.astype(np.int64)]
        else:
            p = np.where(y_true == 1, y_pred, 1.0 - y_pred)
        return np.array([len(y_true), -np.log(np.clip(p, _EPS, 1.0 - _EPS)).sum()])

    def _value(self, s: np.ndarray) -> float:
        return _ratio(s[1], s[0])


class ROCAUC(Metric):
    """Area under the ROC curve of binary labels against scores in ``[0, 1]``.

    Scores are histogrammed into ``n_bins`` equal-width bins, pairs within one bin counting
    as ties, so memory is constant and the result is within ``1 / n_bins``-wide ties of the
    exact AUC.
    """

    requires_proba = True

    def __init__(self, window_size: int | None = None, n_bins: int = 1000) -> None:
        if int(n_bins) < 2:
            raise ValueError(f"n_bins must be >= 2, got {n_bins}")
        self.n_bins = int(n_bins)
        super().__init__(window_size)

    def _n_stats(self) -> int:
        return 2 * self.n_bins

    def _stats(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        b = np.clip((y_pred * self.n_bins).astype(np.int64), 0, self.n_bins - 1)
        b += np.where(y_true == 1, self.n_bins, 0)
        return np.bincount(b, minlength=2 * self.n_bins).astype(np.float64)

    def _value(self, s: np.ndarray) -> float:
        neg, pos = s[: self.n_bins], s[self.n_bins :]
        n_pos, n_neg = pos.sum(), neg.sum()
        if not n_pos or not n_neg:
            return float("nan")
        neg_below = np.cumsum(neg) - neg
        return float(pos @ (neg_below + 0.5 * neg) / (n_pos * n_neg))

    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "n_bins": self.n_bins}


def confidence_bin(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """The equal-width bin (``0 .. n_bins - 1``) of each confidence in ``[0, 1]``; 1.0 is in
    the last bin.

    >>> confidence_bin(np.array([0.0, 0.55, 0.99, 1.0]), 10).tolist()
    [0, 5, 9, 9]
    """
    return np.clip((confidence * n_bins).astype(np.int64), 0, n_bins - 1)


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> np.ndarray:
    """The ECE's summed sufficient statistics, shape ``(3 * n_bins,)``: per confidence bin the
    count, then the summed confidence, then the summed correctness (1/0). Statistics of
    several batches add up; :func:`calibration_error` reads them."""
    b = confidence_bin(confidence, n_bins)
    return np.concatenate(
        [
            np.bincount(b, minlength=n_bins),
            np.bincount(b, weights=confidence, minlength=n_bins),
            np.bincount(b, weights=correct, minlength=n_bins),
        ]
    ).astype(np.float64)


def calibration_error(bins: np.ndarray) -> float:
    """Top-label ECE from :func:`calibration_bins`:
    ``sum_b |accuracy_b - confidence_b| * n_b / n`` (NaN when there are no samples)."""
    count, conf, correct = np.split(bins, 3)
    n = count.sum()
    return float(np.abs(correct - conf).sum() / n) if n else float("nan")


def expected_calibration_error(confidence: Any, correct: Any, n_bins: int = 10) -> float:
    """Top-label ECE of per-sample confidences (the probability of the predicted label) and
    correctness (1/0) over ``n_bins`` equal-width confidence bins; NaN for no samples. The one
    implementation: :class:`ExpectedCalibrationError` and the evaluation's windows use it.

    >>> expected_calibration_error([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1])
    0.4
    """
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct, dtype=np.float64).reshape(-1)
    return calibration_error(calibration_bins(conf, ok, int(n_bins)))


class ExpectedCalibrationError(Metric):
    """Top-label ECE (:func:`expected_calibration_error`) over confidence bins.

    ``y_pred`` is P(class 1) ``(n,)`` for binary labels or class probabilities ``(n, k)``.
    """

    requires_proba = True
    accepts_matrix = True
    bigger_is_better = False

    def __init__(self, window_size: int | None = None, n_bins: int = 10) -> None:
        if int(n_bins) < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = int(n_bins)
        super().__init__(window_size)

    def _n_stats(self) -> int:
        return 3 * self.n_bins

    def _stats(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        if y_pred.ndim == 2:
            conf, label = y_pred.max(axis=1), y_pred.argmax(axis=1)
        else:
            conf, label = np.maximum(y_pred, 1.0 - y_pred), (y_pred > 0.5).astype(np.int64)
        correct = (label == y_true).astype(np.float64)
        return calibration_bins(conf, correct, self.n_bins)

    def _value(self, s: np.ndarray) -> float:
        return calibration_error(s)

    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "n_bins": self.n_bins}


class _BinaryCounts(Metric):
    """True positives, false positives and false negatives for ``pos_label``."""

    def __init__(self, window_size: int | None = None, pos_label: int = 1) -> None:
        self.pos_label = int(pos_label)
        super().__init__(window_size)

    def _n_stats(self) -> int:
        return 3

    def _stats(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        t, p = y_true == self.pos_label, y_pred == self.pos_label
        return np.array(
            [np.count_nonzero(t & p), np.count_nonzero(~t & p), np.count_nonzero(t & ~p)],
            dtype=np.float64,
        )

    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "pos_label": self.pos_label}


class Precision(_BinaryCounts):
    def _value(self, s: np.ndarray) -> float:
        return _ratio(s[0], s[0] + s[1])


class Recall(_BinaryCounts):
    def _value(self, s: np.ndarray) -> float:
        return _ratio(s[0], s[0] + s[2])


class F1(_BinaryCounts):
    def _value(self, s: np.ndarray) -> float:
        return _ratio(2 * s[0], 2 * s[0] + s[1] + s[2])


class MAE(Metric):
    bigger_is_better = False

    def _n_stats(self) -> int:
        return 2

    def _stats(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        return np.array([len(y_true), np.abs(y_true - y_pred).sum()])

    def _value(self, s: np.ndarray) -> float:
        return _ratio(s[1], s[0])


class RMSE(Metric):
    bigger_is_better = False

    def _n_stats(self) -> int:
        return 2

    def _stats(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        e = y_true - y_pred
        return np.array([len(y_true), e @ e])

    def _value(self, s: np.ndarray) -> float:
        return float(np.sqrt(s[1] / s[0])) if s[0] else float("nan")


class R2(Metric):
    """Coefficient of determination against the mean of the labels seen (NaN if constant)."""

    def _n_stats(self) -> int:
        return 4

    def _stats(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        e = y_true - y_pred
        return np.array([len(y_true), y_true.sum(), y_true @ y_true, e @ e])

    def _value(self, s: np.ndarray) -> float:
        n, sy, syy, sse = s
        if not n:
            return float("nan")
        sst = syy - sy * sy / n
        return float(1.0 - sse / sst) if sst > 0 else float("nan")


class _Model(Protocol):
    def learn_many(self, X: Any, y: Any) -> Any: ...
    def predict_many(self, X: Any) -> np.ndarray: ...


class Prequential:
    """Test-then-train evaluation, batch by batch.

    Each batch is first scored with the current model (labels, or probabilities for metrics
    that need them), then the model trains on it; a model with a feature pipeline
    (:class:`flowlearn.core.pipeline.Pipeline`) scales what it learns and scores.

    >>> from flowlearn.core import linear
    >>> ev = Prequential(linear.LogisticRegression(n_features=1), [Accuracy(), LogLoss()])
    >>> ev = ev.step(np.array([[1.0], [-1.0]]), np.array([1, 0]))
    >>> ev.get()
    {'Accuracy': 0.5, 'LogLoss': 0.6931471805599453}
    """

    def __init__(self, model: Any, metrics: Sequence[Metric]):
        names = [m.name for m in metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metric names must be unique, got {names}")
        self.model = model
        self.metrics = list(metrics)
        self.n_seen = 0

    def step(self, X: Any, y: Any) -> Self:
        X = np.asarray(X, dtype=np.float64)
        if len(X) == 0:
            return self
        labels = self.model.predict_many(X)
        probas = (
            self.model.predict_proba_many(X)
            if any(m.requires_proba for m in self.metrics)
            else None
        )
        for m in self.metrics:
            m.update_many(y, probas if m.requires_proba else labels)
        self.model.learn_many(X, y)
        self.n_seen += len(X)
        return self

    def get(self) -> dict[str, float]:
        return {m.name: m.get() for m in self.metrics}


CLASSES: tuple[type[Stateful], ...] = (
    Accuracy,
    LogLoss,
    ROCAUC,
    ExpectedCalibrationError,
    Precision,
    Recall,
    F1,
    MAE,
    RMSE,
    R2,
)
