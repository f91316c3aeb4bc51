"""The trainer's buffer and sample ids across a restore, outside Flink: its
process_element1 over stand-in keyed state (one model, so one key)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pyflink.common import Row

from flowlearn.conf import load_settings
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.core.training import RAMP_FRACTION, ModelTrainer
from flowlearn.operators.trainer import MiniBatchTrainer
from tests.unit.flink_stand_ins import Context, KeyedState, ListState, ValueState

# "m" is named by no spec: it takes the defaults at once.
SETTINGS = load_settings(
    env={"FLOWLEARN__JOB__BATCH_SIZE": "2", "FLOWLEARN__JOB__UNKNOWN_MODEL_POLICY": "create"}
)
#: Samples a model has learnt before its batches are full (batches of 2, RAMP_FRACTION).
GROWN = 2 * RAMP_FRACTION


def started(state: KeyedState) -> MiniBatchTrainer:
    """A trainer opened over ``state`` (batches of 2): a (re)start of the job."""
    trainer = MiniBatchTrainer(SETTINGS)
    trainer.open(state)
    return trainer


def grown() -> KeyedState:
    """The state of a model that has learnt GROWN samples: its batches are full ones."""
    trainer = ModelTrainer.create("m", ModelSpecs(SETTINGS).spec_of("m").as_dict())
    trainer.train_samples(np.zeros((GROWN, 10)), np.ones(GROWN))
    assert trainer.next_batch_size() == 2
    state = KeyedState()
    for name, value in (
        ("model-state-v1", trainer.state_bytes()),
        ("model-version-v1", trainer.version),
        ("samples-applied-v1", GROWN),
    ):
        state.states[name] = ValueState()
        state.states[name].update(value)
    return state


def sample(event_id: str, ts: int = 1000) -> Row:
    return Row("m", ts, [0.5] * 10, [1.0], [event_id] if event_id else [], [], [])


def features_of(event_id: str) -> list[float]:
    """Features of their own for each id (sum of its characters, plus the position)."""
    return [float(sum(map(ord, event_id)) % 13 + j) / 10 for j in range(10)]


def samples(*event_ids: str, ts: int = 1000) -> Row:
    """The JSON samples of one bundle, as the parser gathers them into one row."""
    features = [x for event_id in event_ids for x in features_of(event_id)]
    return Row("m", ts, features, [1.0] * len(event_ids), list(event_ids), [], [])


def send(trainer: MiniBatchTrainer, row: Row) -> list[Any]:
    return list(trainer.process_element1(row, Context()))


def test_buffered_rows_of_older_savepoints_are_moved_over_with_their_ids():
    state = grown()
    state.states["batch-buffer-v1"] = v1 = ListState()
    v1.rows = [Row(900, [0.1] * 10, [0.0]), Row(950, [0.2] * 10, [1.0])]
    state.states["batch-buffer-v2"] = v2 = ListState()
    v2.rows = [Row(960, [0.3] * 10, [1.0], "old")]
    state.states["batch-buffer-v3"] = v3 = ListState()
    v3.rows = [Row(970, [0.4] * 10, [1.0], ["older"])]
    trainer = started(state)
    assert send(trainer, sample("old")) == []  # its id came with the v2 row
    assert send(trainer, sample("older")) == []  # and this one with the v3 row
    assert send(trainer, sample("a")) != []  # five samples: two batches of 2, one waits
    assert send(trainer, sample("b")) != []  # and the last batch
    assert v1.rows == v2.rows == v3.rows == [] and state.states["batch-buffer-v4"].rows == []
    assert state.states["samples-applied-v1"].value() == GROWN + 6
    assert state.group.metrics["duplicate_samples"].count == 2


def test_duplicates_within_a_bundle_are_dropped_and_the_rest_trained_in_order():
    state = grown()
    trainer = started(state)
    out = send(trainer, samples("p", "p", "", "q", "p"))
    assert state.group.metrics["duplicate_samples"].count == 2
    # "p", "", "q": one batch of 2 trained, the third sample waits with its id.
    assert state.states["samples-applied-v1"].value() == GROWN + 2
    assert len([o for o in out if not isinstance(o, tuple)]) == 1  # one version row
    (tail,) = state.states["batch-buffer-v4"].rows
    assert tail[1] == features_of("q") and list(tail[3]) == ["q"]


@pytest.mark.parametrize("young", [True, False], ids=["young model", "grown model"])
def test_a_batch_is_the_same_however_its_samples_were_bundled(young):
    one_by_one, bundled = (KeyedState(), KeyedState()) if young else (grown(), grown())
    a, b = started(one_by_one), started(bundled)
    ids = [f"s{i}" for i in range(5)]
    for event_id in ids:
        send(a, samples(event_id))
    send(b, samples(*ids[:3]))
    send(b, samples(*ids[3:]))
    for state in (one_by_one, bundled):
        if young:  # batches of one sample each: a young model learns from the first
            assert state.states["samples-applied-v1"].value() == 5
            assert state.states["model-version-v1"].value() == 5
            assert state.states["batch-buffer-v4"].rows == []
        else:
            assert state.states["samples-applied-v1"].value() == GROWN + 4
            (tail,) = state.states["batch-buffer-v4"].rows
            assert list(tail[3]) == ["s4"]
    assert one_by_one.states["model-state-v1"].value() == bundled.states["model-state-v1"].value()


def test_ids_buffered_or_trained_before_a_restart_are_still_duplicates_after_it():
    state = grown()
    trainer = started(state)
    assert send(trainer, sample("x1")) == []
    assert send(trainer, sample("x2")) != []  # a batch of 2: trained, a version out
    assert send(trainer, sample("y")) == []  # waits in the buffer

    restarted = started(state)  # the Python worker's memory is gone; the state is not
    for event_id in ("x1", "y", "x2"):
        assert send(restarted, sample(event_id)) == []  # duplicates: nothing buffered
    assert send(restarted, sample("z")) != []  # with the restored "y", a batch of 2
    assert state.group.metrics["duplicate_samples"].count == 3
    # x1, x2, then y and z: each trained once.
    assert state.states["samples-applied-v1"].value() == GROWN + 4
