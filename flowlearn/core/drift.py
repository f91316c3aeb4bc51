"""Drift detectors: error-rate detectors (ADWIN, Page-Hinkley, DDM) and feature-distribution
tests against a reference window (PSI, two-sample Kolmogorov-Smirnov).

Every detector takes one value at a time, ``update(x) -> bool`` (True when a change is
detected at this value), or a batch, ``update_many(xs)`` (a bool per value). After an update
it reports:

- ``drift_detected``: the last update's answer;
- ``statistic``: the detector's test statistic at the last update;
- ``change_point``: at a detection, the estimated index (counting every value the detector
  has seen, from 0) of the first value of the new regime; ``None`` before any detection;
- ``n_seen`` and ``n_detections``.

As in River, a detector that fired starts afresh with the next value.

>>> import random
>>> rng = random.Random(7)
>>> det = ADWIN()
>>> stream = [rng.random() < 0.2 for _ in range(1000)] + [rng.random() < 0.8 for _ in range(1000)]
>>> hits = [i for i, flag in enumerate(det.update_many(stream)) if flag]
>>> 1000 <= hits[0] < 1100 and abs(det.change_point - 1000) < 100
True
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from flowlearn.core.validation import (
    Arrays,
    Meta,
    Stateful,
    check_array,
    check_scalar,
    check_vector,
)

__all__ = ["ADWIN", "DDM", "KS", "PSI", "DriftDetector", "PageHinkley"]


class DriftDetector(Stateful):
    """Base: validation, counters, the restart after a detection, and state."""

    def __init__(self) -> None:
        self.n_seen = 0
        self.n_detections = 0
        self.drift_detected = False
        self.statistic = 0.0
        self.change_point: int | None = None
        self._reset()

    def _reset(self) -> None:
        """Forget the current regime (called at creation and after each detection)."""
        raise NotImplementedError

    def _update(self, x: float) -> bool:
        """Feed one finite value (index ``n_seen - 1``); True when a change is detected."""
        raise NotImplementedError

    def update(self, x: float) -> bool:
        return self._step(check_scalar(x))

    def _step(self, x: float) -> bool:
        if self.drift_detected:
            self._reset()
        self.n_seen += 1
        self.drift_detected = self._update(x)
        if self.drift_detected:
            self.n_detections += 1
        return self.drift_detected

    def update_many(self, xs: Any) -> np.ndarray:
        """Update with each value in order; a bool array, True where a change was detected."""
        values = check_vector(xs, None, "xs")
        return np.array([self._step(x) for x in values.tolist()], dtype=bool)

    def _counters(self) -> Meta:
        return {
            "n_seen": self.n_seen,
            "n_detections": self.n_detections,
            "drift_detected": self.drift_detected,
            "statistic": self.statistic,
            "change_point": self.change_point,
        }

    def _load_counters(self, meta: Mapping[str, Any]) -> None:
        self.n_seen = int(meta["n_seen"])
        self.n_detections = int(meta["n_detections"])
        self.drift_detected = bool(meta["drift_detected"])
        self.statistic = float(meta["statistic"])
        cp = meta["change_point"]
        self.change_point = None if cp is None else int(cp)


class ADWIN(DriftDetector):
    """ADaptive WINdowing (Bifet & Gavaldà, 2007), ADWIN2's exponential-histogram buckets.

    The window is summarised by buckets holding sums of ``2**i`` values, at most
    ``max_buckets`` per size, so an update costs O(1) amortised and a check O(log n).
    Every ``clock`` values the detector tries every bucket boundary as a cut between an older
    and a newer sub-window and signals a change when their means differ by more than the
    Hoeffding/Bernstein bound for confidence ``delta``. Parameters, defaults and detections
    follow River's ``drift.ADWIN``.

    ``statistic`` is the largest ``|mean0 - mean1| / epsilon_cut`` of the last check (above
    1 means a change); at a detection ``change_point`` is the cut that reaches it.
    """

    def __init__(
        self,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if clock < 1 or max_buckets < 2 or min_window_length < 1 or grace_period < 0:
            raise ValueError("clock >= 1, max_buckets >= 2, min_window_length >= 1 needed")
        self.delta = float(delta)
        self.clock = int(clock)
        self.max_buckets = int(max_buckets)
        self.min_window_length = int(min_window_length)
        self.grace_period = int(grace_period)
        super().__init__()

    def _reset(self) -> None:
        # Row i holds the (sum, variance) of buckets of 2**i values, oldest first.
        self._totals: list[list[float]] = [[]]
        self._variances: list[list[float]] = [[]]
        self.width = 0
        self.total = 0.0
        self.variance = 0.0  # sum of squared deviations from the window mean
        self._tick = 0

    @property
    def estimation(self) -> float:
        """Mean of the current window."""
        return self.total / self.width if self.width else 0.0

    def _update(self, x: float) -> bool:
        if self.width:
            d = x - self.total / self.width
            self.variance += self.width * d * d / (self.width + 1)
        self.width += 1
        self.total += x
        self._totals[0].append(x)
        self._variances[0].append(0.0)
        self._compress()
        self._tick += 1
        # A window of one value has no cut to test (and no bound: log(log(1)) is undefined).
        if self._tick % self.clock or self.width <= max(self.grace_period, 1):
            return False
        significant, self.statistic, n_recent = self._scan()
        if not significant:
            return False
        # The strongest cut of the first scan estimates the change; River-style, the window
        # then sheds its oldest buckets until no cut is significant any more.
        self.change_point = self.n_seen - n_recent
        while significant:
            self._drop_oldest()
            significant, _, _ = self._scan()
        return True

    def _compress(self) -> None:
        i = 0
        while len(self._totals[i]) > self.max_buckets:
            if i + 1 == len(self._totals):
                self._totals.append([])
                self._variances.append([])
            n = float(2**i)
            t0, t1 = self._totals[i][:2]
            d = t0 / n - t1 / n
            v = self._variances[i][0] + self._variances[i][1] + n * n * d * d / (2 * n)
            del self._totals[i][:2], self._variances[i][:2]
            self._totals[i + 1].append(t0 + t1)
            self._variances[i + 1].append(v)
            i += 1

    def _scan(self) -> tuple[bool, float, int]:
        """Try every bucket boundary as a cut, oldest first.

        Returns whether some cut is significant, the largest ``|mean0 - mean1| / eps_cut``
        and the number of values after the cut that reaches it.
        """
        mwl = self.min_window_length
        var_window = self.variance / self.width
        delta_prime = math.log(2.0 * math.log(self.width) / self.delta)
        n0, u0 = 0.0, 0.0
        n1, u1 = float(self.width), self.total
        best, best_n1 = 0.0, self.width
        for i in range(len(self._totals) - 1, -1, -1):
            size = float(2**i)
            row = self._totals[i]
            for k, u in enumerate(row):
                n0 += size
                n1 -= size
                u0 += u
                u1 -= u
                if (i == 0 and k == len(row) - 1) or n0 < mwl or n1 < mwl:
                    continue
                m_recip = 1.0 / (n0 - mwl + 1) + 1.0 / (n1 - mwl + 1)
                eps = (
                    math.sqrt(2.0 * m_recip * var_window * delta_prime)
                    + 2.0 / 3.0 * delta_prime * m_recip
                )
                ratio = abs(u0 / n0 - u1 / n1) / eps
                if ratio > best:
                    best, best_n1 = ratio, int(n1)
        return best > 1.0, best, best_n1

    def _drop_oldest(self) -> None:
        i = len(self._totals) - 1
        n = float(2**i)
        u = self._totals[i].pop(0)
        v = self._variances[i].pop(0)
        self.width -= int(n)
        self.total -= u
        d = u / n - self.total / self.width
        self.variance -= v + n * self.width * d * d / (n + self.width)
        if not self._totals[i] and i > 0:
            self._totals.pop()
            self._variances.pop()

    def _params(self) -> dict[str, Any]:
        return {
            "delta": self.delta,
            "clock": self.clock,
            "max_buckets": self.max_buckets,
            "min_window_length": self.min_window_length,
            "grace_period": self.grace_period,
        }

    def _state(self) -> tuple[Arrays, Meta]:
        arrays = {
            "totals": np.array([t for row in self._totals for t in row], dtype=np.float64),
            "variances": np.array([v for row in self._variances for v in row], dtype=np.float64),
        }
        meta = {
            **self._counters(),
            "row_lengths": [len(row) for row in self._totals],
            "width": self.width,
            "total": self.total,
            "variance": self.variance,
            "tick": self._tick,
        }
        return arrays, meta

    def _load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self._load_counters(meta)
        lengths = [int(n) for n in meta["row_lengths"]]
        totals = check_array(arrays, "totals", (sum(lengths),)).tolist()
        variances = check_array(arrays, "variances", (sum(lengths),)).tolist()
        bounds = np.cumsum([0, *lengths]).tolist()
        self._totals = [totals[a:b] for a, b in itertools.pairwise(bounds)]
        self._variances = [variances[a:b] for a, b in itertools.pairwise(bounds)]
        self.width = int(meta["width"])
        self.total = float(meta["total"])
        self.variance = float(meta["variance"])
        self._tick = int(meta["tick"])


class PageHinkley(DriftDetector):
    """Page-Hinkley test (a CUSUM on deviations from the running mean), as River's.

    ``mode`` watches increases (``"up"``), decreases (``"down"``) or ``"both"``. The
    statistic is the cumulative sum's rise above its minimum (or fall below its maximum);
    ``change_point`` is the value just after that minimum (maximum), where the sum turned.
    """

    _MODES = ("up", "down", "both")

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
        mode: str = "both",
    ) -> None:
        if mode not in self._MODES:
            raise ValueError(f"mode must be one of {self._MODES}, got {mode!r}")
        self.min_instances = int(min_instances)
        self.delta = float(delta)
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.mode = mode
        super().__init__()

    def _reset(self) -> None:
        self._n = 0
        self._mean = 0.0
        self._sum_up = 0.0
        self._sum_down = 0.0
        self._min_up = math.inf
        self._max_down = -math.inf
        self._argmin_up = self.n_seen
        self._argmax_down = self.n_seen

    def _update(self, x: float) -> bool:
        self._n += 1
        self._mean += (x - self._mean) / self._n
        dev = x - self._mean
        self._sum_up = self.alpha * self._sum_up + dev - self.delta
        self._sum_down = self.alpha * self._sum_down + dev + self.delta
        if self._sum_up < self._min_up:
            self._min_up, self._argmin_up = self._sum_up, self.n_seen
        if self._sum_down > self._max_down:
            self._max_down, self._argmax_down = self._sum_down, self.n_seen
        up = self._sum_up - self._min_up if self.mode != "down" else 0.0
        down = self._max_down - self._sum_down if self.mode != "up" else 0.0
        self.statistic = max(up, down)
        if self._n < self.min_instances or self.statistic <= self.threshold:
            return False
        self.change_point = self._argmin_up if up >= down else self._argmax_down
        return True

    def _params(self) -> dict[str, Any]:
        return {
            "min_instances": self.min_instances,
            "delta": self.delta,
            "threshold": self.threshold,
            "alpha": self.alpha,
            "mode": self.mode,
        }

    _FIELDS = (
        "_n",
        "_mean",
        "_sum_up",
        "_sum_down",
        "_min_up",
        "_max_down",
        "_argmin_up",
        "_argmax_down",
    )

    def _state(self) -> tuple[Arrays, Meta]:
        # The extrema start at +-inf, which JSON cannot hold: they travel as an array.
        values = np.array([float(getattr(self, f)) for f in self._FIELDS])
        return {"fields": values}, self._counters()

    def _load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self._load_counters(meta)
        values = check_array(arrays, "fields", (len(self._FIELDS),)).tolist()
        for name, value in zip(self._FIELDS, values, strict=True):
            setattr(
                self, name, int(value) if name in ("_n", "_argmin_up", "_argmax_down") else value
            )


class DDM(DriftDetector):
    """Drift Detection Method (Gama et al., 2004) on a stream of 0/1 errors, as River's.

    Tracks the error rate ``p`` and its binomial deviation ``s``; remembers the minimum of
    ``p + s``; warns above ``p_min + warning_threshold * s_min`` and detects above
    ``p_min + drift_threshold * s_min``. ``statistic`` is ``(p + s - p_min) / s_min``;
    ``change_point`` is where the warning zone preceding the detection began.
    """

    def __init__(
        self, warm_start: int = 30, warning_threshold: float = 2.0, drift_threshold: float = 3.0
    ) -> None:
        if warning_threshold > drift_threshold:
            raise ValueError("warning_threshold must not exceed drift_threshold")
        self.warm_start = int(warm_start)
        self.warning_threshold = float(warning_threshold)
        self.drift_threshold = float(drift_threshold)
        super().__init__()

    def _reset(self) -> None:
        self._n = 0
        self._p = 0.0
        self._p_min = 0.0
        self._s_min = 0.0
        self._ps_min = math.inf
        self.warning_detected = False
        self._warning_start = self.n_seen

    def _update(self, x: float) -> bool:
        self._n += 1
        self._p += (x - self._p) / self._n
        s = math.sqrt(self._p * (1.0 - self._p) / self._n)
        if self._n <= self.warm_start:
            return False
        if self._p + s <= self._ps_min:
            self._p_min, self._s_min, self._ps_min = self._p, s, self._p + s
        level = self._p + s - self._p_min
        # s_min is 0 only while every value so far was equal: fall back to the raw level.
        self.statistic = level / self._s_min if self._s_min else level
        if level > self.drift_threshold * self._s_min:
            self.change_point = self._warning_start if self.warning_detected else self.n_seen - 1
            self.warning_detected = False
            return True
        warning = level > self.warning_threshold * self._s_min
        if warning and not self.warning_detected:
            self._warning_start = self.n_seen - 1
        self.warning_detected = warning
        return False

    def _params(self) -> dict[str, Any]:
        return {
            "warm_start": self.warm_start,
            "warning_threshold": self.warning_threshold,
            "drift_threshold": self.drift_threshold,
        }

    def _state(self) -> tuple[Arrays, Meta]:
        values = np.array(
            [self._n, self._p, self._p_min, self._s_min, self._ps_min, self._warning_start],
            dtype=np.float64,
        )
        return {"fields": values}, {**self._counters(), "warning_detected": self.warning_detected}

    def _load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self._load_counters(meta)
        n, p, p_min, s_min, ps_min, ws = check_array(arrays, "fields", (6,)).tolist()
        self._n, self._p, self._p_min, self._s_min, self._ps_min = int(n), p, p_min, s_min, ps_min
        self._warning_start = int(ws)
        self.warning_detected = bool(meta["warning_detected"])


class _ReferenceWindowTest(DriftDetector):
    """Compares a sliding window of recent values with a reference window.

    The first ``reference_size`` values form the reference; then the last ``window_size``
    values are tested against it every ``clock`` values. After a detection the next values
    form a new reference. ``change_point`` splits the window where a two-segment model
    (reference distribution before, the window's own distribution after, on reference
    quantile bins) fits best.
    """

    def __init__(self, reference_size: int, window_size: int, clock: int) -> None:
        if reference_size < 2 or window_size < 2 or clock < 1:
            raise ValueError("reference_size and window_size must be >= 2 and clock >= 1")
        self.reference_size = int(reference_size)
        self.window_size = int(window_size)
        self.clock = int(clock)
        super().__init__()

    def _reset(self) -> None:
        # The reference grows value by value, then is frozen as an array; the window is
        # allocated when the reference is complete (it takes no value before). A model with
        # little traffic then keeps a few values, not two full windows per feature.
        self._reference: list[float] | np.ndarray = []
        self._window = np.zeros(0)
        self._count = 0  # values in the window (ring buffer) so far
        self._edges = np.zeros(0)

    def _update(self, x: float) -> bool:
        if isinstance(self._reference, list):
            self._reference.append(x)
            if len(self._reference) == self.reference_size:
                self._on_reference()
            return False
        self._window[self._count % self.window_size] = x
        self._count += 1
        if self._count < self.window_size or self._count % self.clock:
            return False
        # Oldest first: the ring buffer rotated so that the split search sees time order.
        start = self._count % self.window_size
        window = np.concatenate([self._window[start:], self._window[:start]])
        if not self._test(window):
            return False
        self.change_point = self.n_seen - self.window_size + self._split(window)
        return True

    def update_many(self, xs: Any) -> np.ndarray:
        """As the base class, but the values between two tests are written to the window in
        one slice: only every ``clock``-th value costs a test, the others a copy."""
        values = check_vector(xs, None, "xs")
        out = np.zeros(len(values), dtype=bool)
        i = 0
        while i < len(values):
            if (
                self.drift_detected
                or len(self._reference) < self.reference_size
                or self._count < self.window_size
            ):
                out[i] = self._step(float(values[i]))
                i += 1
                continue
            # Steps before the next tested one (a test runs when the count hits a multiple
            # of the clock), written as one slice.
            bulk = min(self.clock - 1 - self._count % self.clock, len(values) - i, self.window_size)
            if bulk > 0:
                slots = (self._count + np.arange(bulk)) % self.window_size
                self._window[slots] = values[i : i + bulk]
                self._count += bulk
                self.n_seen += bulk
                i += bulk
            if i < len(values):
                out[i] = self._step(float(values[i]))
                i += 1
        return out

    def _on_reference(self) -> None:
        self._reference = np.array(self._reference, dtype=np.float64)
        self._window = np.zeros(self.window_size)
        ref = np.sort(self._reference)
        self._sorted_ref = ref
        qs = np.quantile(ref, np.linspace(0, 1, self._n_bins() + 1)[1:-1])
        self._edges = np.unique(qs)
        # Bins are (-inf, e1], (e1, e2], ...: a value equal to an edge goes below it, which
        # keeps the values of a discrete stream (say 0/1 errors) in separate bins.
        counts = np.bincount(np.searchsorted(self._edges, ref), minlength=len(self._edges) + 1)
        # Laplace smoothing: an empty reference bin must not make the log ratio infinite.
        self._ref_frac = (counts + 0.5) / (len(ref) + 0.5 * len(counts))

    def _n_bins(self) -> int:
        return 10

    def _test(self, window: np.ndarray) -> bool:
        raise NotImplementedError

    def _split(self, window: np.ndarray) -> int:
        """Index in ``window`` where the best two-segment fit starts the new regime."""
        b = np.searchsorted(self._edges, window)
        k = len(self._ref_frac)
        onehot = np.zeros((len(window), k))
        onehot[np.arange(len(window)), b] = 1.0
        # suffix[j] = counts of window[j:], for j = 0 .. n-1.
        suffix = np.cumsum(onehot[::-1], axis=0)[::-1]
        n_suffix = suffix.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ll_suffix = np.nansum(suffix * np.log(suffix / n_suffix[:, None]), axis=1)
        log_ref = np.log(self._ref_frac)[b]
        ll_prefix = np.concatenate([[0.0], np.cumsum(log_ref)[:-1]])
        return int(np.argmax(ll_prefix + ll_suffix))

    def _params(self) -> dict[str, Any]:
        return {
            "reference_size": self.reference_size,
            "window_size": self.window_size,
            "clock": self.clock,
        }

    def _state(self) -> tuple[Arrays, Meta]:
        arrays = {"reference": np.array(self._reference, dtype=np.float64), "window": self._window}
        return arrays, {**self._counters(), "count": self._count}

    def _load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self._load_counters(meta)
        ref = np.asarray(arrays["reference"], dtype=np.float64)
        if ref.ndim != 1 or len(ref) > self.reference_size:
            raise ValueError(f"state array 'reference' must be 1-d, <= {self.reference_size}")
        self._reference = ref.tolist()
        if len(self._reference) == self.reference_size:
            self._on_reference()
            self._window = check_array(arrays, "window", (self.window_size,))
        else:  # empty until the reference is complete (zeros in states of earlier releases)
            self._window = np.zeros(0)
        self._count = int(meta["count"])


class PSI(_ReferenceWindowTest):
    """Population Stability Index of the window against the reference, on reference
    quantile bins: ``sum (w_i - r_i) * ln(w_i / r_i)``. Signals above ``threshold``
    (0.1 is commonly read as a moderate shift, 0.25 as a major one).
    """

    def __init__(
        self,
        reference_size: int = 500,
        window_size: int = 500,
        n_bins: int = 10,
        threshold: float = 0.25,
        clock: int = 10,
    ) -> None:
        if n_bins < 2 or threshold <= 0:
            raise ValueError("n_bins must be >= 2 and threshold > 0")
        self.n_bins = int(n_bins)
        self.threshold = float(threshold)
        super().__init__(reference_size, window_size, clock)

    def _n_bins(self) -> int:
        return self.n_bins

    def _test(self, window: np.ndarray) -> bool:
        k = len(self._ref_frac)
        counts = np.bincount(np.searchsorted(self._edges, window), minlength=k)
        frac = (counts + 0.5) / (len(window) + 0.5 * k)
        self.statistic = float(((frac - self._ref_frac) * np.log(frac / self._ref_frac)).sum())
        return self.statistic > self.threshold

    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "n_bins": self.n_bins, "threshold": self.threshold}


class KS(_ReferenceWindowTest):
    """Two-sample Kolmogorov-Smirnov test of the window against the reference.

    ``statistic`` is ``D = sup |F_ref - F_window|``; a change is signalled when D exceeds the
    asymptotic critical value at level ``alpha``:
    ``sqrt(-ln(alpha / 2) / 2) * sqrt((m + n) / (m n))``.
    """

    def __init__(
        self,
        reference_size: int = 500,
        window_size: int = 500,
        alpha: float = 0.005,
        clock: int = 10,
    ) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = float(alpha)
        m, n = reference_size, window_size
        self._critical = math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((m + n) / (m * n))
        super().__init__(reference_size, window_size, clock)

    def _test(self, window: np.ndarray) -> bool:
        ref = self._sorted_ref
        win = np.sort(window)
        points = np.concatenate([ref, win])
        f_ref = np.searchsorted(ref, points, side="right") / len(ref)
        f_win = np.searchsorted(win, points, side="right") / len(win)
        self.statistic = float(np.abs(f_ref - f_win).max())
        return self.statistic > self._critical

    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "alpha": self.alpha}


CLASSES: tuple[type[Stateful], ...] = (ADWIN, PageHinkley, DDM, PSI, KS)
