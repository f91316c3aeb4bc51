"""The scale-out simulation (docs/scaling.md): one replica is the job's trainer, merges are
deterministic and blind to how the stream is cut, and shards add up to the unsharded model."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from flowlearn.core.training import batch_plan, build_model
from flowlearn.evaluation.scaling_sim import (
    DataParallel,
    Run,
    Sharded,
    replica_of,
    shard_ranges,
    train_single,
)

OPTIMIZERS = ("sgd", "adam", "adagrad", "ftrl")


def _stream(n: int = 2000, d: int = 9, classes: int = 2, seed: int = 3) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 20.0, size=d) + rng.normal(size=d)
    X[rng.random(X.shape) < 0.03] = np.nan  # missing values: the pipeline fills them
    w = rng.normal(size=(d, classes))
    y = (np.nan_to_num(X) @ w).argmax(axis=1).astype(np.float64)
    return X, y


def _spec(optimizer: str = "sgd", classes: int = 2, **extra: Any) -> dict[str, Any]:
    kind = {"type": "logistic"} if classes == 2 else {"type": "softmax", "n_classes": classes}
    return {**kind, "n_features": 9, "batch_size": 64, "optimizer": optimizer, **extra}


def _bits(run: Run) -> tuple[bytes, bytes, bytes | None]:
    errors = None if run.errors is None else run.errors.tobytes()
    return run.model.weights_vector().tobytes(), run.losses.tobytes(), errors


def _data_parallel(spec: dict[str, Any], X: Any, y: Any, cuts: list[int], **kw: Any) -> Run:
    sim = DataParallel(spec, **kw)
    ids = [f"event-{i}" for i in range(len(y))]
    edges = [0, *cuts, len(y)]
    for a, b in itertools.pairwise(edges):
        sim.feed(X[a:b], y[a:b], ids[a:b])
    return sim.finish()


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("period", [64, 256, 1000])
def test_one_replica_trains_as_the_job_trainer_bit_for_bit(optimizer: str, period: int) -> None:
    X, y = _stream()
    spec = _spec(optimizer, l2=0.001, clip_grad_norm=2.0)
    single = train_single(spec, X, y)
    one = _data_parallel(spec, X, y, [100, 777], replicas=1, period=period)
    assert one.model.weights_vector().tobytes() == single.model.weights_vector().tobytes()
    assert one.worker_losses is not None
    assert one.worker_losses.tobytes() == single.losses.tobytes()
    if period == 64:  # merged, so published, after every batch: the job's served losses
        assert _bits(one) == _bits(single)
    else:  # published every `period` samples: the served model is older
        assert one.mean_loss > single.mean_loss


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("merge", ["mean", "sum"])
@pytest.mark.parametrize("partition", ["round_robin", "hash"])
def test_replicas_are_deterministic_and_blind_to_bundle_cuts(
    optimizer: str, merge: Any, partition: Any
) -> None:
    X, y = _stream(classes=3)
    spec = _spec(optimizer, classes=3)
    kw = {"replicas": 3, "period": 256, "merge": merge, "partition": partition}
    first = _data_parallel(spec, X, y, [500], **kw)
    again = _data_parallel(spec, X, y, [500], **kw)
    cut_otherwise = _data_parallel(spec, X, y, [1, 2, 63, 64, 700, 1501, 1999], **kw)
    assert _bits(first) == _bits(again) == _bits(cut_otherwise)
    assert first.messages == cut_otherwise.messages > 0
    # It learns: the served model beats the untrained one (log 3 per sample).
    assert first.mean_loss < 0.9 * np.log(3)


def test_replicas_share_the_stream_as_routed() -> None:
    X, y = _stream(n=4096)
    spec = _spec()
    run = _data_parallel(spec, X, y, [], replicas=4, period=256)
    # A young model (the first 16 batches' worth, 1,024 samples) trains on replica 0 alone.
    assert run.max_share == 1024 + (4096 - 1024) // 4
    ids = [f"event-{i}" for i in range(4096)]
    assert replica_of(ids[5], 4) == replica_of(ids[5], 4)
    counts = np.bincount([replica_of(e, 4) for e in ids], minlength=4)
    assert counts.min() > 900  # a hash spreads them evenly


def test_feature_statistics_pool_exactly_over_replicas() -> None:
    X, y = _stream()
    spec = _spec()
    reference = build_model(spec)
    reference.observe(X, y)
    run = _data_parallel(spec, X, y, [], replicas=4, period=128)
    np.testing.assert_allclose(run.model.features.vector(), reference.features.vector(), rtol=1e-9)
    assert run.model.samples_learnt == len(y)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("shards", [1, 2, 5])
def test_shards_summed_score_is_the_unsharded_models(
    optimizer: str, classes: int, shards: int
) -> None:
    X, y = _stream(classes=classes)
    spec = _spec(optimizer, classes, l1=0.001, l2=0.001, clip_grad_norm=1.0)
    single = train_single(spec, X, y)
    sim = Sharded(spec, shards)
    sim.feed(X[:300], y[:300])
    sim.feed(X[300:], y[300:])
    run = sim.finish()
    # The same batches and arithmetic, only the sums' order differs (bits may too).
    np.testing.assert_allclose(run.losses, single.losses, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        run.model.weights_vector(), single.model.weights_vector(), rtol=1e-9, atol=1e-12
    )
    # The coordinator's sum of the shards' partial scores is the assembled model's score.
    assembled = run.model
    logits = assembled.model._scores(assembled.features.transform_many(X))
    np.testing.assert_allclose(sim.scores(X), logits, rtol=1e-12, atol=1e-12)
    if shards == 1:
        assert _bits(run) == _bits(single)
    # Per batch and shard: columns down, partial scores up, residual down, and with
    # clipping a squared norm up and a scale down.
    assert run.messages == 5 * shards * len(batch_plan(len(y), 64))


def test_shards_are_deterministic_and_blind_to_bundle_cuts() -> None:
    X, y = _stream()
    spec = _spec("adam")
    runs = []
    for cuts in ([], [1, 2, 3, 500, 1024]):
        sim = Sharded(spec, 3)
        edges = [0, *cuts, len(y)]
        for a, b in itertools.pairwise(edges):
            sim.feed(X[a:b], y[a:b])
        runs.append(_bits(sim.finish()))
    assert runs[0] == runs[1]


def test_shard_ranges_cover_every_column_once() -> None:
    assert shard_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert shard_ranges(4096, 8)[-1] == (3584, 4096)
    with pytest.raises(ValueError, match="shards"):
        shard_ranges(3, 4)


def test_specs_the_simulation_does_not_cover_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        DataParallel({"type": "logistic", "n_features": 2}, replicas=2, period=64)
    with pytest.raises(ValueError, match="hoeffding_tree"):
        train_single({"type": "hoeffding_tree", "n_features": 2, "batch_size": 64}, [[0.0]], [0])
    with pytest.raises(ValueError, match="holdout_size"):
        Sharded({**_spec(), "holdout_size": 100}, 2)
    with pytest.raises(ValueError, match="event_ids"):
        DataParallel(_spec(), replicas=2, period=64, partition="hash").feed(*_stream(n=10))
