"""The replica contract as a property, against a real Redis: after any sequence of deltas,
new epochs, snapshot rewrites, stream trims, pins and replica restarts, a replica holds (and
serves) the weights of a version the trainer published, bit for bit, never a mix; within an
epoch its version never goes backwards; and whenever Redis still holds what is needed to
rebuild the newest version, the replica is at that version."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowlearn.contracts.redis_contract import Keys
from flowlearn.serving.metrics import Metrics
from flowlearn.serving.replica import Follower

from .conftest import RedisServer, Trainer

SIZE = 5
MODEL = "m"

VALUES = st.one_of(st.floats(width=64), st.sampled_from([0.0, -0.0, math.nan, 1e-310]))
TRAIN = st.tuples(
    st.just("train"),
    st.lists(st.integers(0, SIZE - 1), min_size=1, max_size=3, unique=True),
    VALUES,
    st.booleans(),
)  # the last: also rewrite the snapshot
ACTIONS = st.one_of(
    # Training is the common case: three branches of ten.
    TRAIN,
    TRAIN,
    TRAIN,
    # The job restarts from a checkpoint some versions back: a new epoch.
    st.tuples(st.just("restart_job"), st.integers(0, 6)),
    # Trimmed as the publisher does (never past the snapshot) ...
    st.tuples(st.just("trim")),
    # ... or harder than it ever should: the replica must still never serve a mix.
    st.tuples(st.just("trim_hard"), st.integers(0, 3)),
    st.tuples(st.just("restart_replica")),
    st.tuples(st.just("pin"), st.integers(0, 20)),
    st.tuples(st.just("unpin")),
)
#: Each action, then whether the replica catches up at once or lags behind for a while.
STEPS = st.lists(st.tuples(ACTIONS, st.booleans()), min_size=1, max_size=30)


def rebuildable(r, keys: Keys, trainer: Trainer) -> bool:
    """Whether the snapshot plus the stream still lead to the newest published version."""
    epoch, version = (int(x) for x in r.hmget(keys.snapshot(MODEL), "epoch", "version"))
    for stream_id, _ in r.xrange(keys.deltas(MODEL), min=f"({epoch}-{version}"):
        entry_epoch, entry_version = (int(x) for x in stream_id.split(b"-"))
        if (entry_epoch, entry_version) != (epoch, version + 1):
            return False
        version += 1
    return (epoch, version) == max(trainer.published)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS)
def test_replica_holds_only_published_versions(serving_redis: RedisServer, steps) -> None:
    r = serving_redis.client()
    keys = Keys(f"p{np.random.default_rng().integers(1 << 40):x}:")
    trainer = Trainer(r, keys, MODEL, size=SIZE)
    trainer.publish(np.ones(SIZE))

    def new_follower() -> Follower:
        return Follower(serving_redis.client(), keys, Metrics())

    follower = new_follower()
    highest: tuple[int, int] = (0, 0)  # of this replica's life
    for step, catch_up in steps:
        kind = step[0]
        if kind == "train":
            weights = trainer.weights.copy()
            weights[step[1]] = step[2]
            # Every version also changes a rotating coordinate, so that each delta matters.
            weights[trainer.version % SIZE] = trainer.version + 1
            trainer.publish(weights, snapshot=step[3])
        elif kind == "restart_job":
            candidates = [v for (e, v) in trainer.published if e == trainer.epoch]
            if candidates:
                version = max(min(candidates), trainer.version - step[1])
                trainer.restart(version, np.frombuffer(trainer.published[(trainer.epoch, version)]))
        elif kind == "trim":
            epoch, version = r.hmget(keys.snapshot(MODEL), "epoch", "version")
            r.xtrim(keys.deltas(MODEL), minid=f"{int(epoch)}-{int(version)}", approximate=False)
        elif kind == "trim_hard":
            r.xtrim(keys.deltas(MODEL), maxlen=step[1], approximate=False)
        elif kind == "restart_replica":
            follower.client.close()
            follower, highest = new_follower(), (0, 0)
        elif kind == "pin":
            r.set(keys.pin(MODEL), max(1, trainer.version - step[1]))
        else:
            r.delete(keys.pin(MODEL))
        if not catch_up and MODEL in follower.replicas:
            continue  # lagging: what it holds was checked when it was read
        follower.sync()

        replica = follower.replicas[MODEL]
        served = replica.served
        assert served is not None and replica.latest is served.latest
        latest = served.latest
        assert trainer.published[(latest.epoch, latest.version)] == latest.weights.tobytes()
        chosen = served.version
        assert trainer.published[(chosen.epoch, chosen.version)] == chosen.weights.tobytes()
        assert not latest.weights.flags.writeable
        # Epochs only grow here (Redis keeps its data), and versions within one epoch too.
        assert (latest.epoch, latest.version) >= highest
        highest = (latest.epoch, latest.version)
        if rebuildable(r, keys, trainer):
            assert (latest.epoch, latest.version) == max(trainer.published)
        pin = r.get(keys.pin(MODEL))
        assert served.pin == (None if pin is None else int(pin))
        if served.pin is not None and not served.pin_missing:
            assert chosen.version == served.pin
        else:
            assert chosen is latest
    follower.client.close()
    r.close()
