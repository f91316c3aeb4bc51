"""The follower against a real Redis: convergence, late start, epochs, gaps, pins, bad data."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from flowlearn.contracts.redis_contract import Keys
from flowlearn.core import codec
from flowlearn.core.training import ModelTrainer
from flowlearn.serving.metrics import Metrics
from flowlearn.serving.replica import HISTORY, Follower

from .conftest import RedisServer, Trainer, wait_for


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def trainer(serving_redis: RedisServer, prefix: str) -> Iterator[Trainer]:
    client = serving_redis.client()
    yield Trainer(client, Keys(prefix), "m", size=6)
    client.close()


def follower(server: RedisServer, trainer: Trainer) -> Follower:
    return Follower(server.client(), trainer.keys, Metrics())


def holds(f: Follower, trainer: Trainer) -> bool:
    replica = f.replicas.get(trainer.model_id)
    latest = replica.latest if replica else None
    return (
        latest is not None
        and (latest.epoch, latest.version) == (trainer.epoch, trainer.version)
        and latest.weights.tobytes() == trainer.weights.tobytes()
    )


def test_running_replicas_converge_and_a_late_one_catches_up(serving_redis, trainer):
    followers = [follower(serving_redis, trainer) for _ in range(3)]
    threads = [threading.Thread(target=f.run, daemon=True) for f in followers]
    rng = np.random.default_rng(1)
    trainer.publish(rng.normal(size=6))
    for t in threads:
        t.start()
    try:
        for i in range(200):
            weights = trainer.weights.copy()
            weights[rng.integers(0, 6, size=2)] = rng.normal(size=2)
            trainer.publish(weights, snapshot=i % 50 == 0)
        wait_for(
            "three running replicas at the last version",
            lambda: all(holds(f, trainer) for f in followers),
        )
        for f in followers:
            assert sample(f.metrics, "flowlearn_predictor_deltas_applied_total", model="m") > 0
    finally:
        for f in followers:
            f.stop()
        for t in threads:
            t.join(5)
            assert not t.is_alive()
    late = follower(serving_redis, trainer)
    late.sync()
    assert holds(late, trainer)
    assert (
        sample(late.metrics, "flowlearn_predictor_snapshot_loads_total", model="m", reason="start")
        == 1
    )


def test_a_new_epoch_reloads_the_restarted_lineage(serving_redis, trainer):
    for i in range(7):
        trainer.publish(np.full(6, float(i)))
    f = follower(serving_redis, trainer)
    f.sync()
    old_epoch = trainer.epoch
    trainer.restart(5, np.full(6, 4.0))  # checkpoint at version 5
    trainer.publish(np.full(6, 99.0))  # version 6 of the new epoch, with its snapshot
    f.sync()
    assert holds(f, trainer) and trainer.epoch > old_epoch
    assert (
        sample(f.metrics, "flowlearn_predictor_snapshot_loads_total", model="m", reason="epoch")
        == 1
    )


def test_a_gap_reloads_the_snapshot_and_never_mixes(serving_redis, trainer):
    trainer.publish(np.zeros(6))
    f = follower(serving_redis, trainer)
    f.sync()
    for i in range(5):  # each version changes one coordinate of its own
        weights = trainer.weights.copy()
        weights[i] = i + 1.0
        trainer.publish(weights, snapshot=i == 2)
    # Versions 2 and 3 are trimmed while the replica is behind: the snapshot (version 4)
    # and the stream (versions 5 and 6) still lead to the latest.
    trainer.client.xtrim(trainer.keys.deltas("m"), maxlen=2, approximate=False)
    while f.poll(None):  # the stream reader meets the gap first (before any refresh)
        pass
    assert holds(f, trainer)
    assert (
        sample(f.metrics, "flowlearn_predictor_snapshot_loads_total", model="m", reason="gap") == 1
    )


def test_an_unbuildable_gap_keeps_the_held_version(serving_redis, trainer):
    trainer.publish(np.zeros(6))
    f = follower(serving_redis, trainer)
    f.sync()
    for i in range(4):
        weights = trainer.weights.copy()
        weights[i] = i + 1.0
        trainer.publish(weights)
    trainer.client.xtrim(trainer.keys.deltas("m"), maxlen=1, approximate=False)
    f.sync()  # version 5 needs 4, which neither the stream nor the snapshot (1) has
    latest = f.replicas["m"].latest
    assert latest is not None and latest.version == 1
    assert latest.weights.tobytes() == trainer.published[(trainer.epoch, 1)]
    assert sample(f.metrics, "flowlearn_predictor_stream_errors_total", model="m", kind="gap") == 1
    trainer.publish(np.full(6, 7.0), snapshot=True)  # a new snapshot moves it on
    f.sync()
    assert holds(f, trainer)


def pin(trainer: Trainer, version: int) -> None:
    """Pin ``version`` as the job's publisher does: with its weights."""
    weights = np.frombuffer(trainer.published[(trainer.epoch, version)])
    trainer.publisher.pin("m", version, trainer.spec, codec.encode_array(weights))


def test_pins_are_served_from_recent_versions(serving_redis, trainer):
    for i in range(HISTORY + 5):
        trainer.publish(np.full(6, float(i)))
    f = follower(serving_redis, trainer)
    f.sync()
    pin(trainer, trainer.version - 3)
    f.sync()
    served = f.replicas["m"].served
    assert served is not None and not served.pin_missing
    assert (
        served.version.version == trainer.version - 3 and served.latest.version == trainer.version
    )
    assert (
        served.version.weights.tobytes() == trainer.published[(trainer.epoch, trainer.version - 3)]
    )
    # A pin written without its weights (not by the job), to a version the replica never
    # held: the latest is served, flagged.
    trainer.client.set(trainer.keys.pin("m"), 1)
    f.sync()
    served = f.replicas["m"].served
    assert served is not None and served.pin == 1 and served.pin_missing
    assert served.version is served.latest
    trainer.publisher.unpin("m")
    assert not trainer.client.exists(trainer.keys.pin("m"), trainer.keys.pinned("m"))
    f.sync()
    served = f.replicas["m"].served
    assert served is not None and served.pin is None and served.version is served.latest


def test_a_pin_holds_however_many_versions_come_and_for_a_replica_that_never_held_it(
    serving_redis, trainer
):
    for i in range(3):
        trainer.publish(np.full(6, float(i)))
    f = follower(serving_redis, trainer)
    f.sync()
    pin(trainer, 2)
    expected = trainer.published[(trainer.epoch, 2)]
    for i in range(2 * HISTORY):  # version 2 leaves the history of recent versions
        trainer.publish(np.full(6, 10.0 + i))
    late = follower(serving_redis, trainer)  # started after the pin: never held version 2
    for replica_of in (f, late):
        replica_of.sync()
        served = replica_of.replicas["m"].served
        assert served is not None and not served.pin_missing
        assert served.version.version == 2 and served.version.weights.tobytes() == expected
        assert served.latest.version == trainer.version


def test_unusable_entries_and_snapshots_are_counted_not_fatal(serving_redis, trainer):
    trainer.publish(np.ones(6))
    f = follower(serving_redis, trainer)
    f.sync()
    keys = trainer.keys
    trainer.client.xadd(
        keys.deltas("m"),
        {"epoch": trainer.epoch, "codec": "flc1", "delta": b"garbage"},
        id=f"{trainer.epoch}-{trainer.version + 1}",
    )
    trainer.client.set(keys.pin("m"), "not-a-version")
    f.sync()
    assert (
        sample(f.metrics, "flowlearn_predictor_stream_errors_total", model="m", kind="bad_entry")
        == 1
    )
    assert (
        sample(f.metrics, "flowlearn_predictor_stream_errors_total", model="m", kind="bad_pin") == 1
    )
    # A snapshot whose weights do not fit its spec is refused; the held version stays.
    trainer.client.hset(keys.snapshot("m"), mapping={"epoch": trainer.epoch + 5, "version": 1})
    trainer.client.hset(keys.snapshot("m"), "spec", '{"type": "logistic", "n_features": 9}')
    f.sync()
    latest = f.replicas["m"].latest
    assert latest is not None and latest.weights.tobytes() == trainer.weights.tobytes()
    assert (
        sample(f.metrics, "flowlearn_predictor_stream_errors_total", model="m", kind="bad_snapshot")
        >= 1
    )


@pytest.mark.parametrize("seen_missing", [True, False])
def test_redis_losing_its_data_starts_a_new_lineage(serving_redis, trainer, seen_missing):
    for i in range(3):
        trainer.publish(np.full(6, float(i)))
    f = follower(serving_redis, trainer)
    f.sync()
    for key in trainer.client.scan_iter(f"{trainer.keys.prefix}*"):
        trainer.client.delete(key)  # what a Redis restart without persistence looks like
    if seen_missing:
        f.sync()
        assert holds(f, trainer)  # nothing to follow: the last good weights stay
    # The epoch counter starts again, but epochs follow the clock too: the new lineage's epoch
    # is newer, and its version 4 is based on its own version 3, not on the replica's.
    fresh = Trainer(trainer.client, trainer.keys, "m", size=6)
    for i in range(4):
        fresh.publish(np.full(6, 40.0 + i))
    f.sync()
    assert fresh.epoch > trainer.epoch and holds(f, fresh)
    # A replica that saw the snapshot go missing knows the old lineage was lost.
    reason = "reset" if seen_missing else "epoch"
    assert (
        sample(f.metrics, "flowlearn_predictor_snapshot_loads_total", model="m", reason=reason) == 1
    )


def test_many_models_are_followed(serving_redis, prefix):
    client = serving_redis.client()
    keys = Keys(prefix)
    trainers = [Trainer(client, keys, f"model-{i}", size=3) for i in range(5)]
    f = Follower(serving_redis.client(), keys, Metrics())
    for t in trainers:
        t.publish(np.arange(3.0))
    f.sync()
    for t in trainers:
        t.publish(np.arange(3.0) * 2)
    f.sync()
    assert all(holds(f, t) for t in trainers)
    client.close()


def test_a_version_of_another_shape_is_loaded_whole_from_its_snapshot(serving_redis, trainer):
    """``models update --reset``: the trainer's ``replacing`` version has no delta base, so
    the replica reloads the snapshot and serves the new spec, even when the new weights are
    fewer (an overwrite delta would fit the old array)."""
    linear = ModelTrainer.create("m", {"type": "linear", "n_features": 5})
    first = linear.reset()
    trainer.publisher.publish(first)
    f = follower(serving_redis, trainer)
    f.sync()
    smaller, mv = ModelTrainer.replacing(
        "m", {"type": "logistic", "n_features": 2}, linear.version, linear.samples_applied
    )
    trainer.publisher.publish(mv)
    f.sync()
    latest = f.replicas["m"].latest
    assert latest is not None and latest.version == mv.version == 2
    assert latest.spec["n_features"] == 2 and latest.spec["type"] == "logistic"
    assert latest.weights.tobytes() == smaller.model.weights_vector().tobytes()
    trainer.publisher.pin("m", 1, first.spec_json, first.weights or b"")  # the old shape
    f.sync()
    served = f.replicas["m"].served
    assert served is not None and served.version.spec["type"] == "linear"
    assert served.version.weights.tobytes() == codec.decode_array(first.weights).tobytes()
    assert served.version.score(np.ones((1, 5))).shape == (1,)
