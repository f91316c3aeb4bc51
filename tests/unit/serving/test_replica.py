"""ModelReplica's decisions, without Redis: skip, apply, reload, pins, lineage resets."""

from __future__ import annotations

import numpy as np
import pytest

from flowlearn.contracts.redis_contract import DeltaEntry, Snapshot
from flowlearn.core import codec
from flowlearn.serving.replica import ModelReplica, Offer

SPEC = {"type": "linear", "n_features": 2, "classes": None, "intercept": True}


def snapshot(epoch: int, version: int, weights, ts: int = 1) -> Snapshot:
    return Snapshot(epoch, version, version, SPEC, np.array(weights, dtype=float), ts)


def entry(epoch: int, version: int, base: int, indices=(0,), values=(9.0,)) -> DeltaEntry:
    delta = codec.Delta(np.array(indices, dtype=np.int64), np.array(values, dtype=float))
    return DeltaEntry(f"{epoch}-{version}".encode(), epoch, version, base, delta, 5)


@pytest.fixture
def replica() -> ModelReplica:
    r = ModelReplica("m", history=3)
    assert r.load(snapshot(2, 5, [1.0, 2.0, 3.0]))
    return r


def test_entries_are_skipped_applied_or_make_a_reload(replica):
    assert replica.offer(entry(1, 9, 8)) is Offer.SKIPPED  # an older lineage
    assert replica.offer(entry(2, 5, 4)) is Offer.SKIPPED  # already included
    assert replica.offer(entry(2, 7, 6)) is Offer.RELOAD  # a gap
    assert replica.offer(entry(3, 6, 5)) is Offer.RELOAD  # a newer epoch
    assert replica.offer(entry(2, 6, 5, indices=(7,))) is Offer.RELOAD  # out of range
    assert replica.latest is not None and replica.latest.version == 5
    assert replica.offer(entry(2, 6, 5)) is Offer.APPLIED
    assert replica.latest.version == 6 and replica.latest.weights.tolist() == [9.0, 2.0, 3.0]


def test_new_versions_are_copies_and_read_only(replica):
    before = replica.served
    replica.offer(entry(2, 6, 5))
    assert before is not None and before.version.weights.tolist() == [1.0, 2.0, 3.0]
    assert replica.served is not None and replica.served is not before
    with pytest.raises(ValueError):
        replica.served.version.weights[0] = 0.0


def test_snapshots_never_move_back_within_an_epoch(replica):
    assert not replica.load(snapshot(2, 4, [0.0, 0.0, 0.0]))
    assert not replica.load(snapshot(2, 5, [0.0, 0.0, 0.0]))
    assert replica.load(snapshot(3, 1, [0.0, 0.0, 0.0]))  # a new epoch may restart lower
    assert replica.position == (3, 1)


def test_pins_choose_among_recent_versions(replica):
    for v in range(6, 10):
        replica.offer(entry(2, v, v - 1, values=(float(v),)))
    replica.set_pin(8)
    served = replica.served
    assert served is not None and served.version.version == 8 and not served.pin_missing
    replica.set_pin(6)  # beyond the three versions kept
    served = replica.served
    assert served is not None and served.pin_missing and served.version.version == 9
    replica.set_pin(None)
    assert replica.served is not None and replica.served.pin is None


def test_snapshot_headers_decide_reloads(replica):
    replica.check_snapshot((2, 5, 1))
    assert replica.check_snapshot((2, 5, 1)) is None
    assert replica.check_snapshot((2, 9, 2)) == "behind"
    assert replica.check_snapshot((3, 1, 3)) == "epoch"
    assert replica.check_snapshot((1, 1, 4)) == "reset"  # the epoch counter went back


def test_a_vanished_model_waits_for_a_new_lineage(replica):
    replica.check_snapshot((2, 5, 1))
    assert replica.check_snapshot(None) is None and replica.lost
    assert replica.served is not None  # keeps serving what it holds
    assert replica.offer(entry(2, 6, 5)) is Offer.RELOAD  # nothing applied meanwhile
    assert replica.check_snapshot((2, 1, 8)) == "reset"
    assert replica.load(snapshot(2, 1, [7.0, 7.0, 7.0], ts=8), reset=True)
    assert not replica.lost and replica.latest is not None and replica.latest.version == 1


def test_a_changed_snapshot_behind_the_held_version_is_a_reset(replica):
    replica.check_snapshot((2, 5, 1))
    replica.offer(entry(2, 6, 5))
    assert replica.check_snapshot((2, 5, 1)) is None  # unchanged: the replica is just ahead
    assert replica.check_snapshot((2, 6, 2)) is None  # caught up with the stream
    assert replica.check_snapshot((2, 3, 9)) == "reset"  # rewritten backwards: data lost
