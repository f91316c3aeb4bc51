"""One model trained by more than one worker, simulated (docs/scaling.md): data-parallel
replicas merged every N samples, and parameter shards, against the job's one trainer per
model, on public streams; what it costs in quality and what it could buy in speed.

For each stream (River's synthetic streams and bundled datasets through ``bench_quality``'s
:func:`~bench_quality.sources` and :func:`~bench_quality.materialise`, and
``agrawal_hashed``: the Agrawal stream with its change of classification function, its
categorical columns and their pairwise crosses as hashed tokens next to its numbers, 4,096
hashed columns, through the job's own hashing, :func:`flowlearn.core.features.vectorize`)
and each optimizer (``--optimizers``; specs otherwise the project's defaults: batch 64, the
default learning rate), the benchmark runs, with :mod:`flowlearn.evaluation.scaling_sim`:

1. **single**: the job's trainer (``ModelTrainer``, the job's batch cut), served loss = its
   test step;
2. **replicas**: K data-parallel replicas (round-robin by stream position), merged every N
   samples by ``mean`` (model averaging) and by ``sum`` (every replica's change added), for
   each K in ``--replicas`` (K = 1 shows what publishing only every N samples costs alone)
   and N in ``--periods``; served loss = the last merged model's, before the sample is learnt;
3. **shards**: the model's columns split over K shards (``--shards``), one synchronous round
   trip a batch.

It prints, per stream and optimizer, the served log loss of each run as a ratio to the single
trainer's (lower is better, 1.000 the same) and its accuracy's difference in points; then
per (merge, K, N) the median and worst ratio over streams, the ideal speed-up (samples /
the largest replica's share), the critical-path speed-up measured in this process (each
round's slowest replica plus the merge, against the single trainer's time: Python state
handling included, no network, no Flink), and the messages and bytes per 1,000 samples the
workers would exchange. No targets: this informs a design decision; exit status 0.

    python bench/bench_scaling.py [--quick] [--streams hyperplane,agrawal_hashed] [--n 20000]
                                  [--optimizers sgd,adam] [--replicas 1,2,4,8]
                                  [--periods 64,256,1024,4096] [--shards 2,4,8]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from bench_quality import materialise, sources

from flowlearn.core.features import vectorize
from flowlearn.evaluation.scaling_sim import DataParallel, Run, Sharded, train_single

STREAMS = ("hyperplane", "sea", "agrawal", "phishing", "bananas", "segments", "agrawal_hashed")
QUICK_STREAMS = ("hyperplane", "phishing", "agrawal_hashed")
HASHED_COLUMNS = 4096
BATCH_SIZE = 64


@dataclass
class Data:
    key: str
    X: np.ndarray
    y: np.ndarray
    spec: dict[str, Any]


def _agrawal_hashed(n: int) -> Data:
    """Agrawal (its drift in the middle, as bench_quality's ``agrawal``) with hashed
    features: numbers as themselves, the categorical columns and their pairwise crosses as
    tokens (``car=7``, ``car_zipcode=7_3``)."""
    src = next(s for s in sources() if s.key == "agrawal")
    categorical = ("elevel", "car", "zipcode")
    rows, labels = [], []
    for x, label in src.make(n, n):
        row: dict[str, Any] = {k: float(v) for k, v in x.items() if k not in categorical}
        for i, a in enumerate(categorical):
            row[a] = str(x[a])
            for b in categorical[i + 1 :]:
                row[f"{a}_{b}"] = f"{x[a]}_{x[b]}"
        rows.append(row)
        labels.append(float(label))
    spec = {"features": "hashed", "n_features": HASHED_COLUMNS, "hash_seed": 0}
    X = vectorize(rows, spec)
    return Data("agrawal_hashed", X, np.array(labels), {"type": "logistic", **spec})


def load(key: str, n: int) -> Data:
    if key == "agrawal_hashed":
        return _agrawal_hashed(n)
    src = {s.key: s for s in sources()}[key]
    s = materialise(src, n, 0)
    # A dataset smaller than n comes as 80% / 20%: the simulation streams all of it.
    X, y = np.concatenate([s.X, s.X_hold]), np.concatenate([s.y, s.y_hold])
    spec: dict[str, Any] = {"type": s.model_type, "n_features": s.n_features}
    if s.task == "multiclass":
        spec["n_classes"] = s.n_classes
    if s.task == "regression":
        raise ValueError(f"{key}: a regression stream (the simulation covers classifiers)")
    return Data(key, X, y, spec)


@dataclass(frozen=True)
class Cell:
    stream: str
    optimizer: str
    design: str  # "mean", "sum" or "shards"
    workers: int
    period: int  # 0 for shards
    loss_ratio: float
    accuracy_points: float
    ideal: float
    speedup: float
    messages_per_k: float
    bytes_per_k: float


def _cell(data: Data, opt: str, design: str, k: int, period: int, run: Run, single: Run) -> Cell:
    n = len(data.y)
    return Cell(
        data.key,
        opt,
        design,
        k,
        period,
        run.mean_loss / single.mean_loss,
        100 * (run.accuracy - single.accuracy),
        n / max(1, run.max_share) if design != "shards" else float(k),
        single.seconds / run.seconds if run.seconds else math.nan,
        1000 * run.messages / n,
        1000 * run.message_bytes / n,
    )


def run_stream(data: Data, opt: str, args: argparse.Namespace) -> tuple[Run, list[Cell]]:
    spec = {**data.spec, "batch_size": BATCH_SIZE, "optimizer": opt}
    single = train_single(spec, data.X, data.y)
    cells = []
    for merge in ("mean", "sum"):
        for k in args.replicas:
            if k == 1 and merge == "sum":
                continue  # one replica merges into itself: the same run as "mean"
            for period in args.periods:
                sim = DataParallel(spec, k, period, merge=merge)
                sim.feed(data.X, data.y)
                cells.append(_cell(data, opt, merge, k, period, sim.finish(), single))
    for k in args.shards:
        if k > data.X.shape[1]:
            continue  # more shards than columns
        shards = Sharded(spec, k)
        shards.feed(data.X, data.y)
        cells.append(_cell(data, opt, "shards", k, 0, shards.finish(), single))
    return single, cells


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def per_stream_table(cells: Sequence[Cell], singles: dict[tuple[str, str], Run]) -> list[str]:
    periods = sorted({c.period for c in cells if c.design != "shards"})
    lines = [
        "served log loss / single trainer's (accuracy difference, points); "
        "rows: stream, optimizer, design, K; columns: merge period N (shards: per batch)",
        f"{'stream':<15} {'opt':<5} {'single':>13} {'design':<6} {'K':>2} "
        + " ".join(f"{'N=' + str(p):>16}" for p in periods)
        + f" {'shards':>16}",
    ]
    keys = sorted({(c.stream, c.optimizer, c.design, c.workers) for c in cells}, key=_order)
    for stream, opt, design, k in keys:
        if design == "shards":
            continue
        single = singles[(stream, opt)]
        row = {
            c.period: c
            for c in cells
            if (c.stream, c.optimizer, c.design, c.workers) == (stream, opt, design, k)
        }
        shard = next(
            (
                c
                for c in cells
                if (c.stream, c.optimizer, c.design, c.workers) == (stream, opt, "shards", k)
            ),
            None,
        )
        base = f"{single.mean_loss:.3f}/{100 * single.accuracy:.1f}%"
        lines.append(
            f"{stream:<15} {opt:<5} {base:>13} {design:<6} {k:>2} "
            + " ".join(f"{_fmt(row.get(p)):>16}" for p in periods)
            + f" {_fmt(shard) if design == 'mean' else '':>16}"
        )
    return lines


def _order(key: tuple[str, str, str, int]) -> tuple[Any, ...]:
    stream, opt, design, k = key
    return (stream, opt, {"mean": 0, "sum": 1, "shards": 2}[design], k)


def _fmt(c: Cell | None) -> str:
    if c is None:
        return "-"
    if not math.isfinite(c.loss_ratio):
        return "diverged"
    return f"{c.loss_ratio:.3f} ({c.accuracy_points:+.1f})"


def summary_table(cells: Sequence[Cell]) -> list[str]:
    lines = [
        "per design, K, N over streams and optimizers: served log-loss ratio to the "
        "single trainer (median, worst), accuracy difference (median, worst, points), "
        "ideal and measured critical-path speed-up (median), messages and KiB per 1,000 samples",
        f"{'design':<6} {'K':>2} {'N':>5} {'ratio med':>9} {'worst':>8} {'acc med':>8} "
        f"{'worst':>6} {'ideal':>6} {'measured':>8} {'msgs/1k':>8} {'KiB/1k':>9}",
    ]
    groups: dict[tuple[str, int, int], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.design, c.workers, c.period), []).append(c)
    order = {"mean": 0, "sum": 1, "shards": 2}
    for (design, k, period), group in sorted(
        groups.items(), key=lambda g: (order[g[0][0]], g[0][1:])
    ):
        ratios = [c.loss_ratio if math.isfinite(c.loss_ratio) else math.inf for c in group]
        points = [c.accuracy_points for c in group]
        lines.append(
            f"{design:<6} {k:>2} {period or '-':>5} {statistics.median(ratios):>9.3f} "
            f"{max(ratios):>8.3f} {statistics.median(points):>+8.2f} {min(points):>+6.1f} "
            f"{statistics.median(c.ideal for c in group):>6.2f} "
            f"{statistics.median(c.speedup for c in group):>8.2f} "
            f"{statistics.median(c.messages_per_k for c in group):>8.1f} "
            f"{statistics.median(c.bytes_per_k for c in group) / 1024:>9.1f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 streams, 5,000 samples, sgd")
    parser.add_argument("--streams", default=None, help=f"comma-separated, of {','.join(STREAMS)}")
    parser.add_argument("--n", type=int, default=None, help="samples a stream (default 20,000)")
    parser.add_argument("--optimizers", default=None, help="default sgd,adam (quick: sgd)")
    parser.add_argument("--replicas", type=_ints, default=None, help="default 1,2,4,8")
    parser.add_argument("--periods", type=_ints, default=None, help="default 64,256,1024,4096")
    parser.add_argument("--shards", type=_ints, default=None, help="default 2,4,8")
    args = parser.parse_args(argv)
    quick = args.quick
    streams = args.streams.split(",") if args.streams else list(QUICK_STREAMS if quick else STREAMS)
    n = args.n or (5000 if quick else 20000)
    optimizers = (args.optimizers or ("sgd" if quick else "sgd,adam")).split(",")
    args.replicas = args.replicas or ([1, 2, 8] if quick else [1, 2, 4, 8])
    args.periods = args.periods or ([64, 1024] if quick else [64, 256, 1024, 4096])
    args.shards = args.shards or ([2, 8] if quick else [2, 4, 8])
    print(
        f"bench_scaling: {n} samples a stream (a dataset: all of it), batch {BATCH_SIZE}, "
        f"optimizers {','.join(optimizers)}; Elec2 is not bundled with River (a download), "
        "so it is not among the streams"
    )
    cells: list[Cell] = []
    singles: dict[tuple[str, str], Run] = {}
    for key in streams:
        data = load(key, n)
        for opt in optimizers:
            single, found = run_stream(data, opt, args)
            singles[(key, opt)] = single
            cells.extend(found)
            print(
                f"  {key} ({len(data.y)} samples, {data.X.shape[1]} columns), {opt}: done",
                file=sys.stderr,
            )
    print()
    print("\n".join(per_stream_table(cells, singles)))
    dense = [c for c in cells if c.stream != "agrawal_hashed"]
    hashed = [c for c in cells if c.stream == "agrawal_hashed"]
    for title, group in (
        ("dense streams", dense),
        (f"agrawal_hashed ({HASHED_COLUMNS} columns)", hashed),
    ):
        if group:
            print()
            print(f"{title}: " + "\n".join(summary_table(group)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
