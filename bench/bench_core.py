"""Learning-core benchmark: flowlearn against River and Vowpal Wabbit, prequentially.

For each stream (River's synthetic streams with drift and its bundled real datasets) the same
samples are scored then trained on by

- flowlearn: the feature pipeline's standardisation + ``LogisticRegression``
  (``SoftmaxRegression`` for multiclass) in mini-batches,
- River: ``StandardScaler() | LogisticRegression()`` (``SoftmaxRegression``), one at a time,
- Vowpal Wabbit: logistic loss (``--oaa`` for multiclass), one at a time,

and the script prints accuracy, log loss and samples/s with the ratios to River. Then the
drift detectors: mean detection delay and false alarms against River's ADWIN and
PageHinkley on streams with known change points.

Then the trainer alone on ready arrays (issue "Scale out": a hot model's subtask does only
the training step, so it is capped at this rate): ``ModelTrainer.create(id, spec)`` with
the job's default spec (``[model_defaults]``: a 10-feature logistic model) at the job's
batch size ``--trainer-batch`` (256), then ``train_batch`` on pre-made float64 arrays of
that many rows, one after another (test step, update, gates, version and its delta
included); samples/s is the median of 5 runs. Target: at least 300,000 samples/s.

Usage: ``python bench/bench_core.py [--quick] [--batch 64] [--trainer-only]``. Not a timed
test.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowlearn.conf import load_settings
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.core import drift, linear, metrics, optim
from flowlearn.core.pipeline import FeatureTransform, Pipeline
from flowlearn.core.training import ModelTrainer

#: The trainer alone on ready arrays, at least this many samples/s (issue "Scale out").
TRAINER_TARGET = 300_000

# ---------------------------------------------------------------------------- data


@dataclass
class Stream:
    name: str
    X: np.ndarray
    y: np.ndarray  # class indices 0..k-1
    dicts: list[dict[str, float]]
    n_classes: int


def _materialise(name: str, dataset: Any, n: int | None) -> Stream:
    pairs = list(itertools.islice(dataset, n))
    keys = list(pairs[0][0])
    labels = sorted({y for _, y in pairs}, key=str)
    index = {label: i for i, label in enumerate(labels)}
    X = np.array([[float(x[k]) for k in keys] for x, _ in pairs])
    y = np.array([index[y] for _, y in pairs], dtype=np.int64)
    dicts = [dict(zip(keys, row, strict=True)) for row in X.tolist()]
    return Stream(name, X, y, dicts, len(labels))


def streams(n: int) -> Iterator[Stream | str]:
    """Streams as Stream objects, or a string: the reason a dataset was skipped."""
    from river import datasets
    from river.datasets import synth

    yield _materialise(
        "Hyperplane(drift)",
        synth.Hyperplane(
            seed=42, n_features=10, n_drift_features=4, mag_change=0.001, noise_percentage=0.05
        ),
        n,
    )
    yield _materialise(
        "SEA(abrupt)",
        # Built by hand: River's ConceptDriftStream overflows with width=1.
        itertools.chain(
            itertools.islice(synth.SEA(variant=0, seed=1), n // 2), synth.SEA(variant=2, seed=2)
        ),
        n,
    )
    yield _materialise(
        "Agrawal(drift)",
        synth.ConceptDriftStream(
            synth.Agrawal(classification_function=0, seed=1),
            synth.Agrawal(classification_function=2, seed=2),
            position=n // 2,
            width=max(1, n // 20),
            seed=3,
        ),
        n,
    )
    # River's names for them: Segment is ImageSegments; Shuttle is not bundled.
    for name, attr in (
        ("Phishing", "Phishing"),
        ("Shuttle", "Shuttle"),
        ("Segment", "ImageSegments"),
    ):
        cls = getattr(datasets, attr, None)
        if cls is None:
            yield f"{name}: not in the installed river (needs a download); skipped"
            continue
        dataset = cls()
        if not getattr(dataset, "is_downloaded", True) or getattr(dataset, "url", None):
            yield f"{name}: needs a download, impossible here; skipped"
            continue
        yield _materialise(name, dataset, None)


# ---------------------------------------------------------------------------- learners


@dataclass
class Result:
    accuracy: float
    log_loss: float
    rate: float  # samples/s


def default_optimizer() -> optim.Optimizer:
    # Batch-mean gradients: River's per-sample rate (0.01) times a 64-sample batch.
    return optim.SGD(lr=0.64)


def run_flowlearn(
    s: Stream, batch: int, make_optimizer: Callable[[], optim.Optimizer] = default_optimizer
) -> Result:
    d = s.X.shape[1]
    opt = make_optimizer()
    model: Any
    if s.n_classes == 2:
        model = linear.LogisticRegression(d, optimizer=opt)
    else:
        model = linear.SoftmaxRegression(d, s.n_classes, optimizer=opt)
    ev = metrics.Prequential(
        Pipeline(FeatureTransform(d), model), [metrics.Accuracy(), metrics.LogLoss()]
    )
    start = time.perf_counter()
    for i in range(0, len(s.y), batch):
        ev.step(s.X[i : i + batch], s.y[i : i + batch])
    elapsed = time.perf_counter() - start
    got = ev.get()
    return Result(got["Accuracy"], got["LogLoss"], len(s.y) / elapsed)


def run_river(s: Stream) -> Result:
    from river import linear_model
    from river import preprocessing as rp

    inner = (
        linear_model.LogisticRegression() if s.n_classes == 2 else linear_model.SoftmaxRegression()
    )
    model = rp.StandardScaler() | inner
    acc, loss = metrics.Accuracy(), metrics.LogLoss()
    preds = np.zeros(len(s.y))
    probas = np.zeros((len(s.y), s.n_classes))
    labels: list[Any] = [bool(v) for v in s.y] if s.n_classes == 2 else s.y.tolist()
    start = time.perf_counter()
    for i, (x, y) in enumerate(zip(s.dicts, labels, strict=True)):
        p = model.predict_proba_one(x)
        for c in range(s.n_classes):
            probas[i, c] = p.get(bool(c) if s.n_classes == 2 else c, 0.0)
        model.learn_one(x, y)
    elapsed = time.perf_counter() - start
    preds = probas.argmax(axis=1)
    acc.update_many(s.y, preds)
    loss.update_many(s.y, probas[:, 1] if s.n_classes == 2 else probas)
    return Result(acc.get(), loss.get(), len(s.y) / elapsed)


def run_vw(s: Stream) -> Result | None:
    try:
        from vowpalwabbit import Workspace
    except ImportError:
        return None
    lines = [" ".join(f"f{j}:{v:.6g}" for j, v in enumerate(row)) for row in s.X.tolist()]
    if s.n_classes == 2:
        vw = Workspace("--loss_function logistic --link logistic --quiet --normalized")
        examples = [(f"{2 * y - 1} | {f}", f"| {f}") for y, f in zip(s.y, lines, strict=True)]
    else:
        vw = Workspace(f"--oaa {s.n_classes} --probabilities --loss_function logistic --quiet")
        examples = [(f"{y + 1} | {f}", f"| {f}") for y, f in zip(s.y, lines, strict=True)]
    probas = np.zeros((len(s.y), s.n_classes))
    start = time.perf_counter()
    for i, (train, test) in enumerate(examples):
        p = vw.predict(test)
        if s.n_classes == 2:
            probas[i] = (1.0 - p, p)
        else:
            probas[i] = p
        vw.learn(train)
    elapsed = time.perf_counter() - start
    vw.finish()
    acc = metrics.Accuracy().update_many(s.y, probas.argmax(axis=1)).get()
    loss = metrics.LogLoss().update_many(s.y, probas[:, 1] if s.n_classes == 2 else probas)
    return Result(acc, loss.get(), len(s.y) / elapsed)


# ---------------------------------------------------------------------------- detectors


def detector_streams(n_streams: int, length: int) -> Iterator[tuple[str, np.ndarray, list[int]]]:
    rng = np.random.default_rng(0)
    changes = [length // 4, length // 2, 3 * length // 4]
    for k in range(n_streams):
        levels = rng.uniform(0.1, 0.9, size=4)
        while np.min(np.abs(np.diff(levels))) < 0.2:
            levels = rng.uniform(0.1, 0.9, size=4)
        mean = np.repeat(levels, np.diff([0, *changes, length]))
        if k % 2:
            yield "bernoulli", (rng.random(length) < mean).astype(float), changes
        else:
            yield "gaussian", mean + rng.normal(scale=0.2, size=length), changes


def score(detections: list[int], changes: list[int], length: int) -> tuple[list[int], int]:
    """Delays of the first detection after each change (before the next), and false alarms."""
    bounds = [*changes, length]
    delays, true_hits = [], set()
    for c, nxt in itertools.pairwise(bounds):
        hits = [d for d in detections if c <= d < nxt]
        if hits:
            delays.append(hits[0] - c)
            true_hits.add(hits[0])
        else:
            delays.append(nxt - c)  # missed: charged the whole segment
    return delays, len(detections) - len(true_hits)


def bench_detectors(quick: bool) -> None:
    from river import drift as rd

    pairs: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        ("ADWIN", drift.ADWIN, rd.ADWIN),
        (
            "PageHinkley",
            lambda: drift.PageHinkley(threshold=10.0),
            lambda: rd.PageHinkley(threshold=10.0),
        ),
    ]
    n_streams, length = (6, 4000) if quick else (20, 20_000)
    print(f"\nDetectors on {n_streams} streams of {length} values, 3 known changes each")
    print(f"{'detector':<12} {'impl':<10} {'mean delay':>11} {'false alarms':>13} {'values/s':>10}")
    for name, ours, theirs in pairs:
        for impl, make in (("flowlearn", ours), ("river", theirs)):
            delays: list[int] = []
            false_alarms = 0
            elapsed = 0.0
            for _, xs, changes in detector_streams(n_streams, length):
                det = make()
                values = xs.tolist()
                start = time.perf_counter()
                if impl == "flowlearn":
                    hits = np.flatnonzero(det.update_many(values)).tolist()
                else:
                    hits = []
                    for i, x in enumerate(values):
                        det.update(x)
                        if det.drift_detected:
                            hits.append(i)
                elapsed += time.perf_counter() - start
                d, fa = score(hits, changes, length)
                delays += d
                false_alarms += fa
            rate = n_streams * length / elapsed
            print(
                f"{name:<12} {impl:<10} {np.mean(delays):>11.1f} {false_alarms:>13d} {rate:>10.0f}",
                flush=True,
            )


# ---------------------------------------------------------------------------- trainer alone


def bench_trainer(batch: int, n_batches: int, repeats: int = 5) -> bool:
    """The trainer alone on ready arrays; prints samples/s and says whether the target is met."""
    settings = load_settings(env={})
    settings = dataclasses.replace(
        settings, job=dataclasses.replace(settings.job, batch_size=batch)
    )
    # A model without a [models.<id>] table trains with [model_defaults], as in the job.
    spec = ModelSpecs(settings).spec_of("bench-trainer").as_dict()
    rng = np.random.default_rng(0)
    d = int(spec["n_features"])
    X = rng.normal(size=(n_batches * batch, d)) * rng.uniform(0.5, 5.0, size=d)
    y = (X @ rng.normal(size=d) + rng.normal(size=len(X)) > 0).astype(np.float64)
    batches = [(X[i : i + batch], y[i : i + batch]) for i in range(0, len(y), batch)]
    rates = []
    for _ in range(repeats):
        trainer = ModelTrainer.create("bench-trainer", spec)
        start = time.perf_counter()
        for xb, yb in batches:
            trainer.train_batch(xb, yb)
        rates.append(len(y) / (time.perf_counter() - start))
    rate = statistics.median(rates)
    print(
        f"\nTrainer alone on ready arrays: {spec['type']}, {d} features, batch {batch}, "
        f"{n_batches} batches, median of {repeats} runs"
    )
    print(
        f"  {rate:,.0f} samples/s ({1e6 * batch / rate:.0f} us a batch; runs: "
        f"{', '.join(f'{r:,.0f}' for r in rates)}); target >= {TRAINER_TARGET:,}"
    )
    return rate >= TRAINER_TARGET


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short streams (a few seconds)")
    parser.add_argument(
        "--batch", type=int, default=64, help="flowlearn mini-batch size for the throughput target"
    )
    parser.add_argument(
        "--acc-batch",
        type=int,
        default=32,
        help="a second, smaller mini-batch size also reported (accuracy)",
    )
    parser.add_argument(
        "--trainer-batch", type=int, default=256, help="batch size of the trainer-alone part"
    )
    parser.add_argument(
        "--trainer-only", action="store_true", help="only the trainer alone on ready arrays"
    )
    args = parser.parse_args(argv)
    n_trainer_batches = 200 if args.quick else 2_000
    if args.trainer_only:
        met = bench_trainer(args.trainer_batch, n_trainer_batches)
        print("target met" if met else f"target missed: < {TRAINER_TARGET:,} samples/s")
        return 0
    n = 5_000 if args.quick else 50_000
    print(f"Prequential, synthetic streams of {n} samples; flowlearn batch {args.batch}")
    header = (
        f"{'stream':<18} {'learner':<13} {'accuracy':>9} {'logloss':>8} {'samples/s':>10}"
        f" {'Δacc':>6} {'speed×':>7}"
    )
    rows: list[str] = []
    failures: list[str] = []
    for s in streams(n):
        if isinstance(s, str):
            print(f"  skip: {s}", flush=True)
            rows.append(f"{s}")
            continue
        print(
            f"  running {s.name} ({len(s.y)} samples, {s.X.shape[1]} features, "
            f"{s.n_classes} classes) ...",
            flush=True,
        )
        river = run_river(s)
        results = {
            f"flowlearn/{args.batch}": run_flowlearn(s, args.batch),
            f"flowlearn/{args.acc_batch}": run_flowlearn(s, args.acc_batch),
            "river": river,
            "vw": run_vw(s),
        }
        for learner, r in results.items():
            if r is None:
                continue
            dacc = 100 * (r.accuracy - river.accuracy)
            rows.append(
                f"{s.name:<18} {learner:<13} {r.accuracy:>9.4f} {r.log_loss:>8.4f} "
                f"{r.rate:>10.0f} {dacc:>+6.2f} {r.rate / river.rate:>7.1f}"
            )
        fast, small = results[f"flowlearn/{args.batch}"], results[f"flowlearn/{args.acc_batch}"]
        assert fast is not None and small is not None
        best = max(fast.accuracy, small.accuracy)
        if best < river.accuracy - 0.005:
            failures.append(f"{s.name}: accuracy {best:.4f} < river {river.accuracy:.4f} - 0.005")
        if fast.rate < 10 * river.rate:
            failures.append(
                f"{s.name}: only {fast.rate / river.rate:.1f}× river's throughput "
                f"at batch {args.batch}"
            )
    print()
    print(header)
    for row in rows:
        print(row)
    bench_detectors(args.quick)
    if not bench_trainer(args.trainer_batch, n_trainer_batches):
        failures.append(f"the trainer alone: < {TRAINER_TARGET:,} samples/s")
    print()
    if failures:
        print("targets missed:\n  " + "\n  ".join(failures))
    else:
        print(
            f"targets met: accuracy within 0.5 point of River or better (best of batch "
            f"{args.batch}/{args.acc_batch}), ≥10× its throughput at batch {args.batch}, "
            f"the trainer alone ≥ {TRAINER_TARGET:,} samples/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
