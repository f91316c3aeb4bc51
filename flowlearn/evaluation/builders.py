"""The builders of an :class:`flowlearn.evaluation.data.EvaluationData`: :func:`build_replay`
places a bounded run's prequential rows on the samples axis (:mod:`flowlearn.evaluation.replay`),
:func:`build_live` joins what a live system recorded (the prediction log with labels, alerts,
DLQ, checkpoints) on the time axis (:mod:`flowlearn.evaluation.recorded`), and
:func:`ledger_checkpoints` gives the checkpoints' windowed metrics as the job registers them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from flowlearn.core.checkpointing import CheckpointLedger
from flowlearn.core.model_types import model_type as model_type_of
from flowlearn.core.monitoring import chunk_starts
from flowlearn.evaluation.baselines import BatchBaseline
from flowlearn.evaluation.data import (
    AXIS_SAMPLES,
    AXIS_TIME,
    Alert,
    Checkpoint,
    EvalRow,
    EvaluationData,
    EvaluationError,
    Samples,
    Side,
    VersionPoint,
)

__all__ = ["build_live", "build_replay", "ledger_checkpoints"]


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


def build_replay(
    model_id: str,
    model_type: str,
    n_samples: int,
    rows: Sequence[EvalRow],
    alerts: Sequence[Mapping[str, Any]],
    dlq: Sequence[Mapping[str, Any]] = (),
    *,
    input_records: int = 0,
    baseline: BatchBaseline | Side | None = None,
    baseline_name: str = "",
    source: str = "",
    adaptations: Sequence[Mapping[str, Any]] = (),
    final_weights: np.ndarray | None = None,
    notes: Sequence[str] = (),
) -> EvaluationData:
    """Place a bounded run's prequential rows on the samples axis.

    The trainer sees the model's valid samples in input order (``n_samples`` of them) and
    cuts them into batches: a trained batch's row says how many samples it scored
    (``len(losses)``) and ``samples_applied`` after it; a batch the safety gate rejected is
    not applied, its ``gate_rejected`` alert carries its size and the version before it. So
    the batch of version ``v`` holds the samples from ``samples_applied - n`` plus those of
    the batches rejected before it.
    """
    rows = sorted(rows, key=lambda r: r.version)
    rejected = sorted(
        (int(a["detail"].get("version", 0)), int(a["detail"].get("samples", 0)))
        for a in alerts
        if a.get("kind") == "gate_rejected"
    )
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
                    f"of {n_samples}: the run's output does not match the input"
                )
            side = Side.from_prequential(row.errors, row.losses, model_type)
            for name in ("correct", "loss", "confidence"):
                getattr(online, name)[start : start + n] = getattr(side, name)
            version[start : start + n] = row.version - 1  # scored by the version before
            batch_start.append(start)
            scored_positions.append(np.arange(start, start + n))
            end_of[row.version] = start + n
        else:
            end_of[row.version] = row.samples_applied + skipped
        versions.append(
            VersionPoint(row.version, float(end_of[row.version]), row.kind, row.samples_applied)
        )
    scored = np.concatenate(scored_positions) if scored_positions else np.zeros(0, np.int64)
    # The loss detector counts chunks of batches (flowlearn.core.monitoring.SIGNAL_CHUNK).
    chunks = chunk_starts([len(p) for p in scored_positions])

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
            elif d.get("signal") == "loss" and 0 <= cp < len(chunks):
                change_t = float(batch_start[chunks[cp]] + 1)
        return Alert(str(a.get("kind")), t, v, d, int(a.get("ts") or 0), change_t)

    placed = tuple(sorted((place(a) for a in alerts), key=lambda a: a.t))
    if isinstance(baseline, BatchBaseline):
        baseline_name = baseline_name or baseline.name
        baseline = baseline.side
    samples = Samples.build(np.arange(1, n_samples + 1), online, baseline, version)
    return EvaluationData(
        model_id,
        AXIS_SAMPLES,
        source,
        model_type,
        samples,
        placed,
        tuple(versions),
        (),
        np.zeros(0),
        _dlq_counts(dlq),
        input_records,
        0,
        baseline_name if baseline is not None else "",
        tuple(adaptations),
        tuple(notes),
        final_weights,
    )


def ledger_checkpoints(
    rows: Sequence[EvalRow], every: int, end_of: Mapping[int, float]
) -> list[Checkpoint]:
    """The checkpoints' windowed metrics as the checkpoint operator computes them (and
    registers them in MLflow): :class:`flowlearn.core.checkpointing.CheckpointLedger` fed the same
    rows. Each is placed at the end of the interval it covers (``end_of``: version -> t)."""
    ledger = CheckpointLedger(every=every, keep=1 << 40, auto_rollback=False)
    last = 0
    for row in sorted(rows, key=lambda r: r.version):
        ledger.observe(
            row.version,
            row.kind,
            n=len(row.losses),
            loss_sum=float(sum(row.losses)),
            error_sum=float(sum(row.errors)),
            samples_applied=row.samples_applied,
        )
        last = row.version
    out = []
    for c in ledger.checkpoints():
        if c.version + every > last or c.n == 0:
            continue  # its interval has not closed: not registered yet
        t = end_of.get(c.version + every, end_of.get(c.version, 0.0))
        out.append(
            Checkpoint(
                c.version,
                t,
                c.samples_applied,
                c.n,
                c.loss,
                1.0 - c.error if c.error == c.error else math.nan,
                end_of.get(c.version),
            )
        )
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
    return (
        scores.get("online"),
        scores.get("baseline"),
        _int_or_none(versions.get("online")) or -1,
        variant,
    )


def _proba(scores: Sequence[Any], model_type: str) -> np.ndarray:
    if model_type_of(model_type).multiclass:
        width = max((len(s) for s in scores if isinstance(s, list)), default=0)
        out = np.full((len(scores), width), np.nan)
        for i, s in enumerate(scores):
            if isinstance(s, list) and len(s) == width:
                out[i] = s
        return out
    return np.array(
        [s if isinstance(s, int | float) and not isinstance(s, bool) else np.nan for s in scores],
        dtype=np.float64,
    )


def build_live(
    model_id: str,
    model_type: str,
    *,
    events: Iterable[Mapping[str, Any]],
    labels: Iterable[Mapping[str, Any]],
    alerts: Iterable[Mapping[str, Any]] = (),
    dlq: Iterable[Mapping[str, Any]] = (),
    checkpoints: Sequence[Checkpoint] = (),
    versions: Sequence[VersionPoint] = (),
    input_records: int = 0,
    source: str = "",
    baseline_name: str = "",
    notes: Sequence[str] = (),
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
    y = np.array(
        [r[5] if isinstance(r[5], int | float) else np.nan for r in rows], dtype=np.float64
    )

    def side(col: int) -> Side:
        scores = [r[col] for r in rows]
        if model_type == "linear":
            pred = np.array(
                [s if isinstance(s, int | float) else np.nan for s in scores], dtype=np.float64
            )
            nan = np.full(len(rows), np.nan)
            return Side(nan, (pred - y) ** 2, nan.copy())  # the trainer's loss
        return Side.from_probabilities(_proba(scores, model_type), y)

    samples = Samples.build(
        [r[0] for r in rows], side(1), side(2), [r[3] for r in rows], [r[4] for r in rows]
    )
    placed = []
    for a in alerts:
        d = a.get("detail") or {}
        v = _int_or_none(d.get("version"))
        if a.get("kind") == "rollback":
            v = _int_or_none(d.get("new_version")) or v
        ts = _int_or_none(a.get("ts")) or 0
        placed.append(Alert(str(a.get("kind")), float(ts), v, d, ts))
    served_versions = [
        VersionPoint(int(v), float(t), "served") for t, v in _changes(samples.t, samples.version)
    ]
    has_baseline = bool(samples.baseline.scored().any())
    return EvaluationData(
        model_id,
        AXIS_TIME,
        source,
        model_type,
        samples,
        tuple(sorted(placed, key=lambda a: a.t)),
        tuple(sorted([*versions, *served_versions], key=lambda v: (v.t, v.version))),
        tuple(checkpoints),
        np.asarray(delays, dtype=np.float64),
        _dlq_counts(dlq),
        input_records,
        n_labels,
        (baseline_name or "served baseline (prediction log)") if has_baseline else "",
        (),
        tuple(notes),
        None,
    )


def _changes(t: np.ndarray, version: np.ndarray) -> list[tuple[float, int]]:
    """``(t, version)`` where the served version changes (the first one included)."""
    out = []
    last = None
    for ti, v in zip(t, version, strict=True):
        if v >= 0 and v != last:
            out.append((float(ti), int(v)))
            last = v
    return out
