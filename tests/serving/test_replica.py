"""Replicas follow Redis bit-exactly: after any sequence of deltas, new epochs, trims and
restarts they hold the weights of a version the trainer published, never a mix."""

from __future__ import annotations

import json
import uuid

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowlearn import codec
from flowlearn.redis_contract import Keys, ModelVersion, Publisher
from flowlearn.serving.replica import ModelReplica, sync

SPEC = json.dumps({"type": "logistic", "n_features": 4, "classes": [0, 1], "intercept": True,
                   "features": "dense", "hash_seed": 0})
SIZE = 5

STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("train"), st.lists(st.integers(0, SIZE - 1), min_size=1, max_size=3),
                  st.floats(-10, 10, allow_nan=False), st.booleans()),
        st.tuples(st.just("restart_job")),  # a new epoch, from the last checkpointed version
        # The stream is trimmed (bounded length), as far as the publisher allows: never past
        # the snapshot, so that a replica can always rebuild the latest version.
        st.tuples(st.just("trim")),
        st.tuples(st.just("restart_replica")),
        st.tuples(st.just("sync")),
    ),
    min_size=1, max_size=40,
)


class Trainer:
    """Plays the job: versions with overwrite deltas, snapshots, epochs, replays."""

    def __init__(self, client, keys, model_id):
        self.client, self.keys, self.model_id = client, keys, model_id
        self.publisher = Publisher(client, keys, maxlen=1000)
        self.weights = np.zeros(SIZE)
        self.version = 0
        self.checkpoint = (0, self.weights.copy())
        self.first = True
        self.published: dict[tuple[int, int], bytes] = {}

    def train(self, idx, value, snapshot):
        before = self.weights.copy()
        self.weights[idx] = value + self.version
        self.version += 1
        mv = ModelVersion(self.model_id, self.version, self.version - 1, self.version * 10,
                          SPEC, codec.make_delta(before, self.weights),
                          codec.encode_array(self.weights) if snapshot or self.first else None)
        self.first = False
        self.publisher.publish(mv)
        self.published[(self.publisher.epoch, self.version)] = self.weights.tobytes()
        if self.version % 3 == 0:
            self.checkpoint = (self.version, self.weights.copy())

    def restart(self):
        self.version, weights = self.checkpoint
        self.weights = weights.copy()
        self.publisher = Publisher(self.client, self.keys, maxlen=1000)
        self.first = True


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_replica_holds_only_published_versions(redis_server, steps):
    keys = Keys(f"t{uuid.uuid4().hex[:8]}:")
    model_id = "m"
    trainer = Trainer(redis_server, keys, model_id)
    trainer.train([0], 1.0, True)
    replica = ModelReplica(model_id)
    last_seen: dict[int, int] = {}
    for step in steps:
        if step[0] == "train":
            trainer.train(step[1], step[2], step[3])
        elif step[0] == "restart_job":
            trainer.restart()
        elif step[0] == "trim":
            snap = redis_server.hmget(keys.snapshot(model_id), "epoch", "version")
            redis_server.xtrim(keys.deltas(model_id),
                               minid=f"{int(snap[0])}-{int(snap[1])}", approximate=False)
        elif step[0] == "restart_replica":
            replica = ModelReplica(model_id)
        sync(redis_server, keys, replica)
        served = replica.served
        if served is None:
            continue
        assert trainer.published[(served.epoch, served.version)] == served.weights.tobytes()
        assert served.version >= last_seen.get(served.epoch, 0)
        last_seen[served.epoch] = served.version


def test_two_replicas_converge_and_a_late_one_catches_up(redis_server):
    keys = Keys(f"t{uuid.uuid4().hex[:8]}:")
    trainer = Trainer(redis_server, keys, "m")
    early = ModelReplica("m")
    for i in range(30):
        trainer.train([i % SIZE], float(i), i % 10 == 0)
        sync(redis_server, keys, early)
    late = ModelReplica("m")
    sync(redis_server, keys, late)
    assert early.served.version == late.served.version == 30
    assert early.served.weights.tobytes() == late.served.weights.tobytes() \
        == trainer.weights.tobytes()


def test_a_new_epoch_makes_the_replica_reload_the_restarted_lineage(redis_server):
    keys = Keys(f"t{uuid.uuid4().hex[:8]}:")
    trainer = Trainer(redis_server, keys, "m")
    replica = ModelReplica("m")
    for i in range(7):
        trainer.train([i % SIZE], float(i), False)
    sync(redis_server, keys, replica)
    assert replica.served.version == 7
    trainer.restart()  # back to the version-6 checkpoint, new epoch
    trainer.train([1], 99.0, False)
    sync(redis_server, keys, replica)
    assert (replica.served.epoch, replica.served.version) == (trainer.publisher.epoch, 7)
    assert replica.served.weights.tobytes() == trainer.weights.tobytes()
