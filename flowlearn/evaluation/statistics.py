"""The evaluation's numbers over an :class:`flowlearn.evaluation.data.EvaluationData`: windowed
accuracy, log loss and calibration, the reliability diagram, drift episodes and the recovery
from them, and the report's headline. Flink-free and network-free.

**Windows.** :func:`compute_windows` cuts the samples, in stream order, into consecutive
windows of ``window`` samples (the last one may be shorter) and gives per window and per model
the accuracy (mean of ``correct``), the log loss (mean of ``loss``) and the expected
calibration error (top-label ECE over 10 equal-width confidence bins,
:func:`flowlearn.core.metrics.expected_calibration_error`, as
:class:`flowlearn.core.metrics.ExpectedCalibrationError`), each over the samples that model scored.

**Recovery.** Performance drift alerts (``drift`` with ``direction = "up"``) closer than
``gap`` samples form one episode. For each episode and model: the *level* is the model's
accuracy over the ``reference`` samples before the change (the detectors' change-point
estimate when known, else the first alert); from the first alert on, the samples are cut
into windows of ``window``; the *recovery* is the number of samples from the alert to the end
of the first window whose accuracy is within ``tolerance`` of the level (None: not before the
next episode or the end of the data).

>>> data = EvaluationData.empty("m")
>>> data = data.with_samples(Samples.build(
...     t=[1, 2, 3, 4], online=Side.from_probabilities([0.9, 0.2, 0.6, 0.4], [1, 0, 0, 0])))
>>> [(w.n, w.online.accuracy) for w in compute_windows(data, 2)]
[(2, 1.0), (2, 0.5)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowlearn.core.metrics import confidence_bin, expected_calibration_error
from flowlearn.evaluation.data import (
    Alert,
    EvaluationData,
    EvaluationError,
    Samples,
    Side,
    as_floats,
)

__all__ = [
    "N_BINS",
    "Bin",
    "Episode",
    "EpisodeReport",
    "Headline",
    "Recovery",
    "Stats",
    "Window",
    "compute_windows",
    "drift_episodes",
    "ece",
    "headline",
    "reliability",
]

#: Confidence bins of the ECE and the reliability diagram.
N_BINS = 10


def ece(confidence: Any, correct: Any, n_bins: int = N_BINS) -> float:
    """Top-label expected calibration error: ``sum_b |accuracy_b - confidence_b| n_b / n``
    over ``n_bins`` equal-width bins of the confidence (NaN entries skipped; NaN if none):
    :func:`flowlearn.core.metrics.expected_calibration_error` of the samples that have both.

    >>> ece([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1])
    0.4
    """
    conf = as_floats(confidence)
    ok_ = as_floats(correct)
    keep = ~(np.isnan(conf) | np.isnan(ok_))
    return expected_calibration_error(conf[keep], ok_[keep], n_bins)


@dataclass(frozen=True)
class Stats:
    """One model's numbers over some samples (NaN: undefined)."""

    n: int
    accuracy: float
    log_loss: float
    ece: float

    @classmethod
    def of(cls, side: Side, mask: np.ndarray | None = None) -> Stats:
        sel = side.scored() if mask is None else (side.scored() & mask)
        n = int(sel.sum())
        if not n:
            return cls(0, math.nan, math.nan, math.nan)
        correct = side.correct[sel]
        correct = correct[~np.isnan(correct)]
        return cls(
            n,
            float(correct.mean()) if len(correct) else math.nan,
            float(side.loss[sel].mean()),
            ece(side.confidence[sel], side.correct[sel]),
        )


@dataclass(frozen=True)
class Window:
    """Samples ``[start, end)`` (stream positions), ``t`` of their first and last."""

    index: int
    start: int
    end: int
    t_start: float
    t_end: float
    online: Stats
    baseline: Stats

    @property
    def n(self) -> int:
        return self.end - self.start


def compute_windows(data: EvaluationData, window: int) -> list[Window]:
    """Consecutive windows of ``window`` samples (the last may be shorter)."""
    if window < 1:
        raise EvaluationError(f"window must be >= 1 sample, got {window}")
    s = data.samples
    out = []
    for i, start in enumerate(range(0, len(s), window)):
        end = min(start + window, len(s))
        sl = slice(start, end)
        out.append(
            Window(
                i,
                start,
                end,
                float(s.t[start]),
                float(s.t[end - 1]),
                Stats.of(s.online.take(sl)),
                Stats.of(s.baseline.take(sl)),
            )
        )
    return out


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    n: int
    confidence: float
    accuracy: float


def reliability(side: Side, mask: np.ndarray | None = None, n_bins: int = N_BINS) -> list[Bin]:
    """The reliability diagram's bins: mean confidence against accuracy (empty bins out)."""
    keep = ~(np.isnan(side.confidence) | np.isnan(side.correct))
    if mask is not None:
        keep &= mask
    conf, ok_ = side.confidence[keep], side.correct[keep]
    b = confidence_bin(conf, n_bins)
    out = []
    for k in range(n_bins):
        sel = b == k
        if sel.any():
            out.append(
                Bin(
                    k / n_bins,
                    (k + 1) / n_bins,
                    int(sel.sum()),
                    float(conf[sel].mean()),
                    float(ok_[sel].mean()),
                )
            )
    return out


@dataclass(frozen=True)
class Episode:
    """Performance drift alerts close together: a change the models went through.
    ``start``/``alert`` are stream positions (samples before them)."""

    alerts: tuple[Alert, ...]
    change: int
    alert: int

    @property
    def t(self) -> float:
        return self.alerts[0].t


def drift_episodes(data: EvaluationData, gap: int) -> list[Episode]:
    """Performance drift alerts grouped: one within ``gap`` samples of an episode's first
    alert belongs to it. The change starts at the smallest change-point estimate of the
    episode's alerts (no later than its first alert), else at the first alert."""
    s = data.samples
    alerts = sorted((a for a in data.alerts if a.performance), key=lambda a: a.t)
    groups: list[list[Alert]] = []
    for a in alerts:
        if groups and s.position(a.t) - s.position(groups[-1][0].t) <= gap:
            groups[-1].append(a)
        else:
            groups.append([a])
    episodes = []
    previous = 0
    for group in groups:
        at = s.position(group[0].t)
        changes = [
            int(np.searchsorted(s.t, a.change_t, side="left"))
            for a in group
            if a.change_t is not None
        ]
        change = min([at, *changes])
        change = max(change, previous)
        episodes.append(Episode(tuple(group), change, at))
        previous = at
    return episodes


@dataclass(frozen=True)
class Recovery:
    """How one model went through an episode: its pre-change ``level`` (accuracy), the
    lowest windowed accuracy after the alert, and the samples from the alert until a window
    was back within the tolerance of the level (None: it was not)."""

    model: str
    level: float
    lowest: float
    samples: int | None
    #: The axis distance from the alert to the end of that window (samples or ms).
    t: float | None

    @property
    def recovered(self) -> bool:
        return self.samples is not None


def _accuracy(side: Side, start: int, end: int) -> tuple[float, int]:
    part = side.correct[start:end]
    part = part[~np.isnan(part)]
    return (float(part.mean()) if len(part) else math.nan), len(part)


def _recovery(
    name: str,
    side: Side,
    s: Samples,
    ep: Episode,
    limit: int,
    window: int,
    tolerance: float,
    reference: int,
) -> Recovery:
    level, n_level = _accuracy(side, max(0, ep.change - reference), ep.change)
    if n_level < min(window, reference) // 2:
        level = math.nan
    lowest = math.inf
    found: tuple[int, float] | None = None
    for start in range(ep.alert, limit - window + 1, window):
        acc, n = _accuracy(side, start, start + window)
        if n < window // 2:
            continue
        lowest = min(lowest, acc)
        if found is None and level == level and acc >= level - tolerance:
            end = start + window
            found = (end - ep.alert, float(s.t[end - 1] - ep.t))
    return Recovery(
        name,
        level,
        lowest if lowest != math.inf else math.nan,
        found[0] if found else None,
        found[1] if found else None,
    )


@dataclass(frozen=True)
class EpisodeReport:
    episode: Episode
    online: Recovery
    baseline: Recovery | None


@dataclass(frozen=True)
class Headline:
    """The report's summary: both models over the samples both scored, after the first
    change, and through each drift episode."""

    window: int
    tolerance: float
    online_all: Stats
    both: int
    online: Stats
    baseline: Stats
    post_drift: tuple[Stats, Stats] | None
    episodes: tuple[EpisodeReport, ...]

    def lines(self) -> list[str]:
        """The summary as plain text (the CLI prints it)."""

        def pct(v: float) -> str:
            return "n/a" if v != v else f"{v:.1%}"

        out = [
            f"online: accuracy {pct(self.online_all.accuracy)}, log loss "
            f"{self.online_all.log_loss:.4f} over {self.online_all.n} samples"
        ]
        if self.both:
            out.append(
                f"both scored {self.both} samples: online {pct(self.online.accuracy)}"
                f" / baseline {pct(self.baseline.accuracy)} accuracy, log loss "
                f"{self.online.log_loss:.4f} / {self.baseline.log_loss:.4f}"
            )
        if self.post_drift is not None:
            on, base = self.post_drift
            out.append(
                f"after the first drift: online {pct(on.accuracy)} / baseline "
                f"{pct(base.accuracy)} accuracy ({on.n} samples)"
            )
        for k, rep in enumerate(self.episodes, 1):
            for r in (rep.online, rep.baseline):
                if r is None:
                    continue
                got = (
                    f"recovered {r.samples} samples after the alert"
                    if r.recovered
                    else "not recovered"
                )
                out.append(
                    f"drift {k} (alert at sample {rep.episode.alert}): {r.model} "
                    f"level {pct(r.level)}, lowest {pct(r.lowest)}, {got} "
                    f"(within {self.tolerance * 100:g} points)"
                )
        return out


def headline(
    data: EvaluationData,
    window: int,
    tolerance: float = 0.05,
    reference: int | None = None,
    gap: int | None = None,
) -> Headline:
    """See the module docstring; ``reference`` defaults to 4 windows, ``gap`` to 5."""
    s = data.samples
    reference = 4 * window if reference is None else reference
    gap = 5 * window if gap is None else gap
    both = s.online.scored() & s.baseline.scored()
    episodes = drift_episodes(data, gap) if data.classifier else []
    reports = []
    has_baseline = bool(s.baseline.scored().any())
    for k, ep in enumerate(episodes):
        limit = episodes[k + 1].alert if k + 1 < len(episodes) else len(s)
        online = _recovery("online", s.online, s, ep, limit, window, tolerance, reference)
        baseline = (
            _recovery("baseline", s.baseline, s, ep, limit, window, tolerance, reference)
            if has_baseline
            else None
        )
        reports.append(EpisodeReport(ep, online, baseline))
    post = None
    if episodes:
        after = np.arange(len(s)) >= episodes[0].change
        post = (Stats.of(s.online, both & after), Stats.of(s.baseline, both & after))
    return Headline(
        window,
        tolerance,
        Stats.of(s.online),
        int(both.sum()),
        Stats.of(s.online, both),
        Stats.of(s.baseline, both),
        post,
        tuple(reports),
    )
