"""Epoch fencing against a real Redis: a writer left over from before a failover (a zombie)
cannot roll a model back, a retry is told from an older write, and a publisher started after
Redis lost its data writes again (docs/architecture.md, "Redis")."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from flowlearn.contracts.records import now_ms
from flowlearn.contracts.redis_contract import (
    Keys,
    ModelVersion,
    Publisher,
    PublishOutcome,
    lineage_problem,
    read_pinned,
    read_snapshot,
)
from flowlearn.core import codec
from flowlearn.serving.metrics import Metrics
from flowlearn.serving.replica import Follower

from .conftest import RedisServer, Trainer, wait_for


@pytest.fixture
def trainer(serving_redis: RedisServer, prefix: str) -> Iterator[Trainer]:
    client = serving_redis.client()
    yield Trainer(client, Keys(prefix), "m", size=4)
    client.close()


def version_of(trainer: Trainer, version: int, weights: np.ndarray) -> ModelVersion:
    """A full-weights version ``version`` of the trainer's model (whatever came before)."""
    return ModelVersion(
        trainer.model_id,
        version,
        version - 1,
        version * 10,
        trainer.spec,
        codec.make_delta(np.zeros(weights.size), weights),
        codec.encode_array(weights),
    )


def last_stream_id(trainer: Trainer) -> bytes:
    entries = trainer.client.xrevrange(trainer.keys.deltas(trainer.model_id), count=1)
    return bytes(entries[0][0])


def test_a_writer_of_an_older_epoch_can_neither_publish_nor_pin(serving_redis, trainer):
    zombie = trainer.publisher  # the job before a failover...
    trainer.publish(np.full(4, 1.0))
    trainer.restart(1, np.full(4, 1.0))  # ... and after it: a new epoch from the checkpoint
    trainer.publish(np.full(4, 2.0))
    assert trainer.epoch > zombie.epoch
    before = read_snapshot(trainer.client, trainer.keys, "m")
    head = last_stream_id(trainer)

    # The zombie goes on with its own lineage: a higher version, but of the older epoch.
    stale = version_of(trainer, 50, np.full(4, -9.0))
    assert zombie.publish(stale) is PublishOutcome.REFUSED
    assert not zombie.pin("m", 1, trainer.spec, codec.encode_array(np.full(4, -9.0)))

    after = read_snapshot(trainer.client, trainer.keys, "m")
    assert before is not None and after is not None
    assert (after.epoch, after.version) == (trainer.epoch, 2)
    assert after.weights.tobytes() == before.weights.tobytes()
    assert last_stream_id(trainer) == head
    assert read_pinned(trainer.client, trainer.keys, "m") is None
    assert trainer.client.get(trainer.keys.pin("m")) is None
    # A predictor holds the new lineage's weights, not the zombie's.
    f = Follower(serving_redis.client(), trainer.keys, Metrics())
    f.sync()
    latest = f.replicas["m"].latest
    assert latest is not None and (latest.epoch, latest.version) == (trainer.epoch, 2)
    assert latest.weights.tobytes() == np.full(4, 2.0).tobytes()
    # The live publisher pins as before.
    assert trainer.publisher.pin("m", 2, trainer.spec, codec.encode_array(np.full(4, 2.0)))


def test_a_retry_of_a_written_version_is_told_from_an_older_write(trainer):
    trainer.publish(np.full(4, 1.0))
    trainer.publish(np.full(4, 2.0), snapshot=True)
    trainer.publish(np.full(4, 3.0))
    head = last_stream_id(trainer)
    # Version 2 again, with other weights: the entry is there, so it is a retry (no change).
    retry = version_of(trainer, 2, np.full(4, 7.0))
    assert trainer.publisher.publish(retry) is PublishOutcome.ALREADY_WRITTEN
    snap = read_snapshot(trainer.client, trainer.keys, "m")
    assert snap is not None and snap.version == 2
    assert snap.weights.tobytes() == np.full(4, 2.0).tobytes()
    assert last_stream_id(trainer) == head
    # Version 2 was trimmed away... (a version never written, older than the head) is refused.
    trainer.client.xtrim(trainer.keys.deltas("m"), maxlen=1, approximate=False)
    assert trainer.publisher.publish(retry) is PublishOutcome.REFUSED


def test_after_redis_loses_its_data_a_restarted_publisher_writes_again(own_redis, prefix):
    client = own_redis.client()
    keys = Keys(prefix)
    trainer = Trainer(client, keys, "m", size=4)
    for i in range(3):
        trainer.publish(np.full(4, float(i)))
    own_redis.stop()  # no persistence: everything is gone, the epoch counter too
    own_redis.start()
    client = own_redis.client()
    trainer.client = trainer.publisher.client = client
    # The running job publishes on (its epoch is still the old one) ...
    before_restart = trainer.publisher
    for i in range(3):
        trainer.publish(np.full(4, 10.0 + i))
    # ... then restarts from a checkpoint: the new epoch is newer than every entry written.
    trainer.restart(2, np.full(4, 11.0))
    assert trainer.epoch > before_restart.epoch
    for i in range(3):
        trainer.publish(np.full(4, 20.0 + i))
    snap = read_snapshot(client, keys, "m")
    assert snap is not None and (snap.epoch, snap.version) == (trainer.epoch, 3)
    assert last_stream_id(trainer) == f"{trainer.epoch}-5".encode()
    f = Follower(own_redis.client(), keys, Metrics())
    f.sync()
    latest = f.replicas["m"].latest
    assert latest is not None and latest.weights.tobytes() == np.full(4, 22.0).tobytes()
    client.close()


def test_epochs_follow_the_clock_and_never_repeat(trainer):
    clock = now_ms()
    first = Publisher(trainer.client, trainer.keys, maxlen=10)
    second = Publisher(trainer.client, trainer.keys, maxlen=10)
    assert clock <= first.epoch < second.epoch
    trainer.client.delete(trainer.keys.epoch)  # the counter lost
    wait_for("the clock to pass the last epoch", lambda: now_ms() > second.epoch)
    third = Publisher(trainer.client, trainer.keys, maxlen=10)
    assert third.epoch > second.epoch
    assert int(trainer.client.get(trainer.keys.epoch)) == third.epoch


def test_a_version_number_is_checked_against_the_epochs_restored_since(trainer):
    """Epoch 1 makes versions 1-5, epoch 2 restores version 3 and makes 4-6, epoch 3
    restores version 2 (an older savepoint) and makes 3-4: a version of epoch 1 or 2 names
    the current weights only up to version 2."""
    for _ in range(5):
        trainer.publish(np.full(4, 1.0))
    e1 = trainer.epoch
    trainer.restart(3, np.full(4, 1.0))
    for _ in range(3):
        trainer.publish(np.full(4, 2.0))
    e2 = trainer.epoch
    wait_for("the clock to leave an epoch never taken", lambda: now_ms() > e2 + 1)
    trainer.restart(2, np.full(4, 1.0))
    for _ in range(2):
        trainer.publish(np.full(4, 3.0))
    e3 = trainer.epoch
    client, keys = trainer.client, trainer.keys

    def problem(epoch: int, version: int) -> str:
        return lineage_problem(client, keys, "m", epoch, version)

    assert problem(e3, 4) == "" and problem(e3, 1) == ""
    assert problem(e1, 2) == "" and problem(e2, 2) == ""
    assert "made again after a restore at version 2" in problem(e1, 3)
    assert "made again after a restore at version 2" in problem(e2, 5)
    assert "newer than" in problem(e3 + 1, 1)
    assert "no version of epoch" in problem(e2 + 1, 1)  # never taken: e3 > e2 + 1
    assert "no longer reaches back" in problem(e1 - 1, 1)
    assert "has no published version" in lineage_problem(client, keys, "other", e3, 1)
    client.xtrim(keys.deltas("m"), maxlen=2, approximate=False)  # epoch 3's entries only
    assert "no longer reaches back" in problem(e1, 1)
