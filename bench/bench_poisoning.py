"""Label-flip poisoning at several rates: accuracy on clean held-out data of the job's trainer
with and without its protections (holdout gate, automatic rollback), against the clean run
and against River's ``LogisticRegression`` (``learn_one``, no protection) on the same
poisoned stream.

The trainer and the checkpoint ledger run in process, as the job runs them
(:mod:`flowlearn.evaluation.poisoning`), with the job's default rollback settings; a rollback lands
4
batches after it is decided (the live job's ``fl.control`` round trip). Accuracies are at
the end of the poisoning episode (the worst moment) and at the end of the stream (after as
many clean samples again).

Usage: ``python bench/bench_poisoning.py [--quick] [--episode 10000]``. Not a timed test.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from flowlearn.conf import load_settings
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.devstack.producer import DriftingStream
from flowlearn.evaluation.poisoning import compare, flip_labels, stream_arrays


def river_accuracy(
    X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, until: int
) -> tuple[float, float]:
    """River on ``(X, y)``: held-out accuracy after ``until`` samples and at the end."""
    from river import linear_model, optim

    model = linear_model.LogisticRegression(optimizer=optim.SGD(0.1))
    names = [f"x{i}" for i in range(X.shape[1])]
    tests = [dict(zip(names, row, strict=True)) for row in X_test]

    def accuracy() -> float:
        return float(
            np.mean([model.predict_one(x) == bool(t) for x, t in zip(tests, y_test, strict=True)])
        )

    at_until = float("nan")
    for i, (row, label) in enumerate(zip(X, y, strict=True)):
        if i == until:
            at_until = accuracy()
        model.learn_one(dict(zip(names, row, strict=True)), bool(label))
    return at_until, accuracy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rates, shorter stream")
    parser.add_argument(
        "--episode",
        type=int,
        default=10_000,
        help="samples in the poisoning episode (default 10000)",
    )
    args = parser.parse_args()
    settings = load_settings()
    job, spec = settings.job, ModelSpecs(settings).defaults
    ledger = dict(
        every=job.checkpoint_every_versions,
        keep=job.keep_checkpoints,
        window_samples=job.rollback_window_samples,
        margin=job.rollback_margin,
        min_samples=job.rollback_min_samples,
        cooldown_versions=job.rollback_cooldown_versions,
    )
    rates = (0.2, 0.5, 1.0) if args.quick else (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
    start = 10_000
    episode = (start, start + args.episode)
    n = episode[1] + args.episode
    X, y = stream_arrays(DriftingStream(n_features=10, seed=7), n + 5000)
    X, y, X_test, y_test = X[:n], y[:n], X[n:], y[n:]
    model_spec = {"type": "logistic", "n_features": 10, "learning_rate": spec.learning_rate}
    print(
        f"label-flip poisoning: {n} samples, episode {episode}, batch {job.batch_size}, "
        f"holdout 512, rollback window {job.rollback_window_samples}, margin "
        f"{job.rollback_margin}; held-out accuracy at the episode's end / at the end"
    )
    header = (
        f"{'rate':>5} | {'clean':>11} | {'unprotected':>11} | {'protected':>11} | "
        f"{'River':>11} | rollbacks | rejected | protected - clean"
    )
    print(header)
    print("-" * len(header))
    for rate in rates:
        t0 = time.perf_counter()
        runs = compare(
            X,
            y,
            X_test,
            y_test,
            rate=rate,
            episode=episode,
            spec=model_spec,
            batch_size=job.batch_size,
            ledger_options=ledger,
            holdout_size=512,
        )
        river = river_accuracy(X, flip_labels(y, rate, episode), X_test, y_test, episode[1])
        cells = [f"{r.episode_end_accuracy:.3f}/{r.final_accuracy:.3f}" for r in runs.values()]
        p, c = runs["protected"], runs["clean"]
        print(
            f"{rate:>5.1f} | {cells[0]:>11} | {cells[1]:>11} | {cells[2]:>11} | "
            f"{river[0]:.3f}/{river[1]:.3f} | {p.rollbacks:>9} | {p.gate_rejections:>8} | "
            f"{p.episode_end_accuracy - c.episode_end_accuracy:+.3f}  "
            f"({time.perf_counter() - t0:.1f}s)"
        )


if __name__ == "__main__":
    main()
