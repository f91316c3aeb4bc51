"""Prequential evaluation of a model against a batch baseline: the data and its numbers.

Flink-free and network-free. :mod:`flowlearn.evaluation.replay` (a bounded run of the job on a
file) and
:mod:`flowlearn.evaluation.recorded` (what a live system recorded: alerts, DLQ, the prediction log
joined
with labels, MLflow) build an :class:`EvaluationData`; :mod:`flowlearn.evaluation.report` draws it.

**Per-sample records.** Every sample that was scored before it was learned (prequential:
test, then train) has, for each of the two models (*online* and *baseline*), a
:class:`Side` entry: ``correct`` (1 or 0), ``loss`` (log loss, ``-log p(true label)``) and
``confidence`` (the probability of the predicted label, for calibration); NaN where that
model did not score the sample. ``t`` places the sample on the report's axis: on the
``"samples"`` axis (a replay) ``t`` is the stream position after the sample (1, 2, ...), the
coordinate of ``samples_applied``; on the ``"time"`` axis (live) it is epoch milliseconds.

**Windows.** :func:`compute_windows` cuts the samples, in stream order, into consecutive
windows of ``window`` samples (the last one may be shorter) and gives per window and per model
the accuracy (mean of ``correct``), the log loss (mean of ``loss``) and the expected
calibration error (top-label ECE over 10 equal-width confidence bins, as
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = [
    "Alert",
    "Checkpoint",
    "Episode",
    "EvaluationData",
    "EvaluationError",
    "Headline",
    "Recovery",
    "Samples",
    "Side",
    "Stats",
    "VersionPoint",
    "Window",
    "batch_baseline",
    "build_live",
    "build_replay",
    "compute_windows",
    "drift_episodes",
    "ece",
    "fixed_baseline",
    "headline",
    "ledger_checkpoints",
    "reliability",
]

#: Probabilities are clipped to this before a log (as flowlearn.core.metrics.LogLoss).
EPS = 1e-15
#: Confidence bins of the ECE and the reliability diagram.
N_BINS = 10
AXIS_SAMPLES, AXIS_TIME = "samples", "time"
#: Alert kinds drawn on the time axis (besides drift): rollbacks and their decisions.
ROLLBACK_KINDS = ("rollback", "degraded")


class EvaluationError(ValueError):
    """The input cannot be evaluated (says what and where)."""


def _floats(values: Any) -> np.ndarray:
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
        loss = _floats(losses)
        if model_type == "linear" or errors is None or len(errors) == 0:
            nan = np.full(len(loss), np.nan)
            return cls(nan, loss, nan.copy())
        correct = 1.0 - _floats(errors)
        p_true = np.exp(-loss)
        if model_type == "logistic":
            confidence = np.where(correct == 1.0, p_true, 1.0 - p_true)
        else:
            confidence = np.full(len(loss), np.nan)
        return cls(correct, loss, confidence)

    @classmethod
    def concat(cls, parts: Sequence[Side]) -> Side:
        if not parts:
            return cls.missing(0)
        return cls(*(np.concatenate([getattr(s, f) for s in parts])
                     for f in ("correct", "loss", "confidence")))

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
    def build(cls, t: Any, online: Side, baseline: Side | None = None,
              version: Any = None, served: Sequence[str] = ()) -> Samples:
        t = _floats(t)
        n = len(t)
        if len(online) != n or (baseline is not None and len(baseline) != n):
            raise EvaluationError("per-sample arrays of different lengths")
        v = (np.full(n, -1, dtype=np.int64) if version is None
             else np.asarray(version, dtype=np.int64).reshape(-1))
        return cls(t, v, online, baseline if baseline is not None else Side.missing(n),
                   tuple(served))

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
        return (self.kind == "drift" and self.detail.get("direction") == "up"
                and self.detail.get("signal") in ("error", "loss"))

    @property
    def label(self) -> str:
        d = self.detail
        if self.kind == "drift":
            return f"drift {d.get('detector', '?')} {d.get('signal', '?')} {d.get('direction', '')}"
        if self.kind == "rollback":
            return (f"rollback v{d.get('from_version', '?')} -> v{d.get('new_version', '?')}"
                    if d.get("ok") else f"rollback failed: {d.get('reason', '')}")
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
        return self.model_type != "linear"

    @property
    def late(self) -> int:
        """Labels the job could not use for lateness: ``late``, ``outside_window``,
        ``no_event``."""
        return sum(self.dlq.get(r, 0) for r in ("late", "outside_window", "no_event"))


# ---------------------------------------------------------------------------- numbers


def ece(confidence: Any, correct: Any, n_bins: int = N_BINS) -> float:
    """Top-label expected calibration error: ``sum_b |accuracy_b - confidence_b| n_b / n``
    over ``n_bins`` equal-width bins of the confidence (NaN entries skipped; NaN if none).

    >>> ece([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1])
    0.4
    """
    conf = _floats(confidence)
    ok_ = _floats(correct)
    keep = ~(np.isnan(conf) | np.isnan(ok_))
    conf, ok_ = conf[keep], ok_[keep]
    if not len(conf):
        return math.nan
    b = np.clip((conf * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    gap = np.abs(np.bincount(b, weights=ok_, minlength=n_bins)
                 - np.bincount(b, weights=conf, minlength=n_bins))
    return float(gap.sum() / count.sum())


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
        return cls(n, float(correct.mean()) if len(correct) else math.nan,
                   float(side.loss[sel].mean()), ece(side.confidence[sel], side.correct[sel]))


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
        out.append(Window(i, start, end, float(s.t[start]), float(s.t[end - 1]),
                          Stats.of(s.online.take(sl)), Stats.of(s.baseline.take(sl))))
    return out


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    n: int
    confidence: float
    accuracy: float


def reliability(side: Side, mask: np.ndarray | None = None, n_bins: int = N_BINS
                ) -> list[Bin]:
    """The reliability diagram's bins: mean confidence against accuracy (empty bins out)."""
    keep = ~(np.isnan(side.confidence) | np.isnan(side.correct))
    if mask is not None:
        keep &= mask
    conf, ok_ = side.confidence[keep], side.correct[keep]
    b = np.clip((conf * n_bins).astype(np.int64), 0, n_bins - 1)
    out = []
    for k in range(n_bins):
        sel = b == k
        if sel.any():
            out.append(Bin(k / n_bins, (k + 1) / n_bins, int(sel.sum()),
                           float(conf[sel].mean()), float(ok_[sel].mean())))
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
        changes = [int(np.searchsorted(s.t, a.change_t, side="left"))
                   for a in group if a.change_t is not None]
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


def _recovery(name: str, side: Side, s: Samples, ep: Episode, limit: int, window: int,
              tolerance: float, reference: int) -> Recovery:
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
    return Recovery(name, level, lowest if lowest != math.inf else math.nan,
                    found[0] if found else None, found[1] if found else None)


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

        out = [f"online: accuracy {pct(self.online_all.accuracy)}, log loss "
               f"{self.online_all.log_loss:.4f} over {self.online_all.n} samples"]
        if self.both:
            out.append(f"both scored {self.both} samples: online {pct(self.online.accuracy)}"
                       f" / baseline {pct(self.baseline.accuracy)} accuracy, log loss "
                       f"{self.online.log_loss:.4f} / {self.baseline.log_loss:.4f}")
        if self.post_drift is not None:
            on, base = self.post_drift
            out.append(f"after the first drift: online {pct(on.accuracy)} / baseline "
                       f"{pct(base.accuracy)} accuracy ({on.n} samples)")
        for k, rep in enumerate(self.episodes, 1):
            for r in (rep.online, rep.baseline):
                if r is None:
                    continue
                got = (f"recovered {r.samples} samples after the alert" if r.recovered
                       else "not recovered")
                out.append(f"drift {k} (alert at sample {rep.episode.alert}): {r.model} "
                           f"level {pct(r.level)}, lowest {pct(r.lowest)}, {got} "
                           f"(within {self.tolerance * 100:g} points)")
        return out


def headline(data: EvaluationData, window: int, tolerance: float = 0.05,
             reference: int | None = None, gap: int | None = None) -> Headline:
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
        baseline = (_recovery("baseline", s.baseline, s, ep, limit, window, tolerance,
                              reference) if has_baseline else None)
        reports.append(EpisodeReport(ep, online, baseline))
    post = None
    if episodes:
        after = np.arange(len(s)) >= episodes[0].change
        post = (Stats.of(s.online, both & after), Stats.of(s.baseline, both & after))
    return Headline(window, tolerance, Stats.of(s.online), int(both.sum()),
                    Stats.of(s.online, both), Stats.of(s.baseline, both), post, tuple(reports))


# ---------------------------------------------------------------------------- baselines


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


def batch_baseline(spec: Mapping[str, Any], X: np.ndarray, y: np.ndarray, train: int,
                   retrain_every: int = 0, epochs: int = 3, batch_size: int = 64,
                   seed: int = 0) -> BatchBaseline:
    """The batch baseline practitioners compare with:
    :func:`flowlearn.evaluation.batch.train_baseline`
    on the first ``train`` samples (which fits their first 80% and measures the rest), then,
    every ``retrain_every`` samples (0: never), again on all the samples so far.

    Each fit scores the samples from the end of its fit rows (its own holdout included, out
    of sample) until the next fit takes over: a sample is never scored by a model that was
    fit on it.
    """
    from flowlearn.evaluation.batch import BatchDataError, train_baseline

    n = len(y)
    if not 1 <= train <= n:
        raise EvaluationError(f"the baseline's training part must be 1..{n} samples, got "
                              f"{train}")
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
            result = train_baseline(spec, X[:cut], y[:cut], epochs=epochs,
                                    batch_size=batch_size, seed=seed)
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
    name = (f"batch baseline (flowlearn.evaluation.batch.train_baseline, {epochs} epochs) fit "
            f"on the first {fits[0][1]} of {train} samples{every}")
    return BatchBaseline(Side.concat(parts), tuple(fits), name)


# ---------------------------------------------------------------------------- builders


def _dlq_counts(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        reason = str(r.get("reason", "?"))
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class EvalRow:
    """One ``EVAL_TYPE`` row as the replay collects it."""

    version: int
    kind: str
    samples_applied: int
    errors: Sequence[float]
    losses: Sequence[float]


def build_replay(model_id: str, model_type: str, n_samples: int, rows: Sequence[EvalRow],
                 alerts: Sequence[Mapping[str, Any]], dlq: Sequence[Mapping[str, Any]] = (),
                 *, input_records: int = 0, baseline: BatchBaseline | Side | None = None,
                 baseline_name: str = "", source: str = "",
                 adaptations: Sequence[Mapping[str, Any]] = (),
                 final_weights: np.ndarray | None = None,
                 notes: Sequence[str] = ()) -> EvaluationData:
    """Place a bounded run's prequential rows on the samples axis.

    The trainer sees the model's valid samples in input order (``n_samples`` of them) and
    cuts them into batches: a trained batch's row says how many samples it scored
    (``len(losses)``) and ``samples_applied`` after it; a batch the safety gate rejected is
    not applied, its ``gate_rejected`` alert carries its size and the version before it. So
    the batch of version ``v`` holds the samples from ``samples_applied - n`` plus those of
    the batches rejected before it.
    """
    rows = sorted(rows, key=lambda r: r.version)
    rejected = sorted((int(a["detail"].get("version", 0)), int(a["detail"].get("samples", 0)))
                      for a in alerts if a.get("kind") == "gate_rejected")
    online = Side.missing(n_samples)
    version = np.full(n_samples, -1, dtype=np.int64)
    end_of: dict[int, int] = {}  # version -> stream position after its batch
    batch_start: list[int] = []  # start of each trained batch, in order
    scored_positions: list[np.ndarray] = []
    versions = []
    for row in rows:
        skipped = sum(n for v, n in rejected if v < row.version)
        n = len(row.losses)
        if row.kind == "train" and n:
            start = row.samples_applied - n + skipped
            if start < 0 or start + n > n_samples:
                raise EvaluationError(
                    f"{model_id}: version {row.version} scored samples {start}..{start + n} "
                    f"of {n_samples}: the run's output does not match the input")
            side = Side.from_prequential(row.errors, row.losses, model_type)
            for name in ("correct", "loss", "confidence"):
                getattr(online, name)[start:start + n] = getattr(side, name)
            version[start:start + n] = row.version - 1  # scored by the version before
            batch_start.append(start)
            scored_positions.append(np.arange(start, start + n))
            end_of[row.version] = start + n
        else:
            end_of[row.version] = row.samples_applied + skipped
        versions.append(VersionPoint(row.version, float(end_of[row.version]), row.kind,
                                     row.samples_applied))
    scored = np.concatenate(scored_positions) if scored_positions else np.zeros(0, np.int64)

    def place(a: Mapping[str, Any]) -> Alert:
        d = a.get("detail") or {}
        v = _int_or_none(d.get("version"))
        if a.get("kind") == "rollback":
            v = _int_or_none(d.get("new_version")) or v
        if v is not None and v in end_of:
            t = float(end_of[v])
        else:
            t = float(_int_or_none(d.get("samples_applied")) or 0)
        change_t = None
        cp = _int_or_none(d.get("change_point"))
        if a.get("kind") == "drift" and cp is not None:
            if d.get("signal") == "error" and 0 <= cp < len(scored):
                change_t = float(scored[cp] + 1)
            elif d.get("signal") == "loss" and 0 <= cp < len(batch_start):
                change_t = float(batch_start[cp] + 1)
        return Alert(str(a.get("kind")), t, v, d, int(a.get("ts") or 0), change_t)

    placed = tuple(sorted((place(a) for a in alerts), key=lambda a: a.t))
    if isinstance(baseline, BatchBaseline):
        baseline_name = baseline_name or baseline.name
        baseline = baseline.side
    samples = Samples.build(np.arange(1, n_samples + 1), online, baseline, version)
    return EvaluationData(
        model_id, AXIS_SAMPLES, source, model_type, samples, placed, tuple(versions), (),
        np.zeros(0), _dlq_counts(dlq), input_records, 0,
        baseline_name if baseline is not None else "", tuple(adaptations), tuple(notes),
        final_weights)


def ledger_checkpoints(rows: Sequence[EvalRow], every: int, end_of: Mapping[int, float]
                       ) -> list[Checkpoint]:
    """The checkpoints' windowed metrics as the checkpoint operator computes them (and
    registers them in MLflow): :class:`flowlearn.core.checkpointing.CheckpointLedger` fed the same
    rows. Each is placed at the end of the interval it covers (``end_of``: version -> t)."""
    from flowlearn.core.checkpointing import CheckpointLedger

    ledger = CheckpointLedger(every=every, keep=1 << 40, auto_rollback=False)
    last = 0
    for row in sorted(rows, key=lambda r: r.version):
        ledger.observe(row.version, row.kind, n=len(row.losses),
                       loss_sum=float(sum(row.losses)), error_sum=float(sum(row.errors)),
                       samples_applied=row.samples_applied)
        last = row.version
    out = []
    for c in ledger.checkpoints():
        if c.version + every > last or c.n == 0:
            continue  # its interval has not closed: not registered yet
        t = end_of.get(c.version + every, end_of.get(c.version, 0.0))
        out.append(Checkpoint(c.version, t, c.samples_applied, c.n, c.loss,
                              1.0 - c.error if c.error == c.error else math.nan,
                              end_of.get(c.version)))
    return out


def _served_scores(record: Mapping[str, Any]) -> tuple[Any, Any, int, str]:
    """``(online score, baseline score, online version, served variant)`` of a prediction
    log record; None where that variant was not scored."""
    variant = str(record.get("variant") or "online")
    scores = {variant: record.get("score")}
    versions = {variant: record.get("model_version")}
    shadow = record.get("shadow")
    if isinstance(shadow, Mapping) and shadow.get("variant"):
        scores[str(shadow["variant"])] = shadow.get("score")
        versions[str(shadow["variant"])] = shadow.get("model_version")
    return (scores.get("online"), scores.get("baseline"),
            _int_or_none(versions.get("online")) or -1, variant)


def _proba(scores: Sequence[Any], model_type: str) -> np.ndarray:
    if model_type == "softmax":
        width = max((len(s) for s in scores if isinstance(s, list)), default=0)
        out = np.full((len(scores), width), np.nan)
        for i, s in enumerate(scores):
            if isinstance(s, list) and len(s) == width:
                out[i] = s
        return out
    return np.array([s if isinstance(s, int | float) and not isinstance(s, bool) else np.nan
                     for s in scores], dtype=np.float64)


def build_live(model_id: str, model_type: str, *, events: Iterable[Mapping[str, Any]],
               labels: Iterable[Mapping[str, Any]], alerts: Iterable[Mapping[str, Any]] = (),
               dlq: Iterable[Mapping[str, Any]] = (), checkpoints: Sequence[Checkpoint] = (),
               versions: Sequence[VersionPoint] = (), input_records: int = 0,
               source: str = "", baseline_name: str = "", notes: Sequence[str] = ()
               ) -> EvaluationData:
    """The served view, on the time axis: the prediction log (``fl.events`` records that
    carry a ``score``) joined with ``fl.labels`` on ``event_id`` (the first label of an
    event counts), plus alerts, DLQ counts and registered checkpoints. Every event joined to
    a label, served or not, gives a label delay.

    Records are the topics' JSON objects, already filtered to the model.
    """
    first_label: dict[str, Mapping[str, Any]] = {}
    n_labels = 0
    for record in labels:
        n_labels += 1
        first_label.setdefault(str(record.get("event_id")), record)
    rows = []
    delays = []
    seen: set[str] = set()
    for ev in events:
        event_id = str(ev.get("event_id"))
        lab = first_label.get(event_id)
        if lab is None or event_id in seen:
            continue
        seen.add(event_id)
        ev_ts, lab_ts = _int_or_none(ev.get("ts")), _int_or_none(lab.get("ts"))
        if ev_ts is not None and lab_ts is not None:
            delays.append(lab_ts - ev_ts)
        if "score" in ev and ev_ts is not None:
            online, base, version, variant = _served_scores(ev)
            rows.append((ev_ts, online, base, version, variant, lab.get("label")))
    rows.sort(key=lambda r: r[0])
    y = np.array([r[5] if isinstance(r[5], int | float) else np.nan for r in rows],
                 dtype=np.float64)

    def side(col: int) -> Side:
        scores = [r[col] for r in rows]
        if model_type == "linear":
            pred = np.array([s if isinstance(s, int | float) else np.nan for s in scores],
                            dtype=np.float64)
            nan = np.full(len(rows), np.nan)
            return Side(nan, (pred - y) ** 2, nan.copy())  # the trainer's loss
        return Side.from_probabilities(_proba(scores, model_type), y)

    samples = Samples.build([r[0] for r in rows], side(1), side(2), [r[3] for r in rows],
                            [r[4] for r in rows])
    placed = []
    for a in alerts:
        d = a.get("detail") or {}
        v = _int_or_none(d.get("version"))
        if a.get("kind") == "rollback":
            v = _int_or_none(d.get("new_version")) or v
        ts = _int_or_none(a.get("ts")) or 0
        placed.append(Alert(str(a.get("kind")), float(ts), v, d, ts))
    served_versions = [VersionPoint(int(v), float(t), "served")
                       for t, v in _changes(samples.t, samples.version)]
    has_baseline = bool(samples.baseline.scored().any())
    return EvaluationData(
        model_id, AXIS_TIME, source, model_type, samples,
        tuple(sorted(placed, key=lambda a: a.t)),
        tuple(sorted([*versions, *served_versions], key=lambda v: (v.t, v.version))),
        tuple(checkpoints), np.asarray(delays, dtype=np.float64), _dlq_counts(dlq),
        input_records, n_labels,
        (baseline_name or "served baseline (prediction log)") if has_baseline else "",
        (), tuple(notes), None)


def _changes(t: np.ndarray, version: np.ndarray) -> list[tuple[float, int]]:
    """``(t, version)`` where the served version changes (the first one included)."""
    out = []
    last = None
    for ti, v in zip(t, version, strict=True):
        if v >= 0 and v != last:
            out.append((float(ti), int(v)))
            last = v
    return out
