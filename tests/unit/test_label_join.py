"""The label join's state outside Flink (stand-in keyed state, one model): a hashed model's
event waits as its sparse row, and entries of an older savepoint (dense) are moved over."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from pyflink.common import Row

from flowlearn.conf import load_settings
from flowlearn.contracts.records import parse_event
from flowlearn.core.sparse import to_fields
from flowlearn.core.spec import ModelSpec
from flowlearn.operators.label_join import HAS_EVENT, PAIRED, LabelJoin
from flowlearn.operators.parse import DLQ_TAG
from flowlearn.operators.types import Feedback, FeedbackBuilder, Samples
from flowlearn.state.descriptors import JoinEntry
from flowlearn.state.rows import to_row
from tests.unit.flink_stand_ins import Context, KeyedState, MapState, Timers

SETTINGS = load_settings(env={})
HASHED = ModelSpec(type="logistic", n_features=2**18, features="hashed").as_dict()
EVENT = (
    b'{"event_id": "e1", "model_id": "m", "ts": 1000, '
    b'"features": {"country": "fr", "device": "ios", "age": 31.5}}'
)


def opened(state: KeyedState) -> LabelJoin:
    join = LabelJoin(SETTINGS)
    join.open(state)
    return join


def send(join: LabelJoin, feedback: Feedback) -> list[Any]:
    return list(join.process_element(to_row(feedback), Context()))


def labels(*pairs: tuple[str, int], value: float = 1.0) -> Feedback:
    """Labels of model "m" in one row, as a bundle's give them: (event id, ts) each."""
    gathered = FeedbackBuilder("l", "m")
    for event_id, ts in pairs:
        gathered.add_label(event_id, ts, value, f'{{"event_id": "{event_id}"}}'.encode())
    return gathered.build()


def label(event_id: str = "e1", ts: int = 2000) -> Feedback:
    return labels((event_id, ts))


def events(*rows: tuple[str, int, list[float]]) -> Feedback:
    """Dense events of model "m" in one row: (event id, ts, features) each."""
    gathered = FeedbackBuilder("e", "m")
    for event_id, ts, values in rows:
        gathered.add_event(event_id, ts, values)
    return gathered.build()


def test_a_hashed_event_waits_as_its_sparse_row_and_is_trained_sparse():
    event = parse_event(EVENT, lambda _m: HASHED)
    values, indices, offsets = to_fields(event.features)
    state = KeyedState()
    join = opened(state)
    hashed = FeedbackBuilder("e", "m", sparse=True)
    hashed.add_event("e1", 1000, values, indices)
    assert send(join, hashed.build()) == []
    (stored,) = state.states["join-entries-v4"].values()
    entry = JoinEntry.unpacked(stored)
    # Three features: three values and their columns, not 2**18 floats (2 MiB).
    assert len(entry.features) == len(entry.indices) == 3 and list(entry.offsets) == [0, 3]
    (paired,) = send(join, label())
    sample = Samples._make(paired[1])
    assert (sample.features, sample.indices, sample.offsets) == (values, indices, offsets)
    assert sample.labels == [1.0]


@pytest.mark.parametrize(
    ("name", "row"),
    [
        ("join-entries-v2", Row(HAS_EVENT, 1000, [0.5, 1.5], 0, 0.0, b"")),
        ("join-entries-v3", Row(HAS_EVENT, 1000, [0.5, 1.5], 0, 0.0, b"", [], [])),
    ],
)
def test_entries_of_an_older_savepoint_are_moved_over_and_pair(name: str, row: Row):
    state = KeyedState()
    state.states[name] = old = MapState()
    old["e1"] = row
    join = opened(state)
    (paired,) = send(join, label())
    sample = Samples._make(paired[1])
    assert (sample.features, sample.indices, sample.offsets, sample.ts) == (
        [0.5, 1.5],
        [],
        [],
        1000,
    )
    assert old == {}
    (tombstone,) = state.states["join-entries-v4"].items()
    assert tombstone[0] == "e1" and JoinEntry.unpacked(tombstone[1]).flags & PAIRED


def test_a_waiting_label_pairs_after_a_restart_with_its_raw_bytes_kept():
    """The state alone (a new worker's empty mirror) holds what a waiting label needs:
    its time and value to pair, its raw record for the dead-letter topic."""
    state = KeyedState()
    send(opened(state), labels(("e1", 2000), ("e2", 2000), value=0.0))
    restarted = opened(state)
    (paired,) = send(restarted, events(("e1", 1500, [0.5, 1.5])))
    assert Samples._make(paired[1]).labels == [0.0]
    expiry = 2000 + 1000
    (dead,) = list(restarted.on_timer(expiry, TimerContext()))
    assert dead[0] == DLQ_TAG and b'"e2"' in base64.b64decode(json.loads(dead[1])["raw"])


class TimerContext(Context):
    def get_current_key(self) -> str:
        return "m"


def test_what_a_timer_counts_reaches_the_counters_with_the_next_record():
    """PyFlink drops the metric updates a timer callback makes: the join holds them (an
    expired event, a label whose event never came) and applies them with the next record,
    so the counters miss nothing."""
    state = KeyedState()
    join = opened(state)
    send(join, events(("old", 1000, [0.5, 1.5])))
    send(join, label("orphan", 1000))
    expiry = 1000 + SETTINGS.job.label_window_ms + 1000
    fired = list(join.on_timer(expiry, TimerContext()))
    assert len(fired) == 1  # the orphan label's dead letter
    totals = state.group.metrics
    assert totals["expired"].count == 0 and totals["unmatched_labels"].count == 0
    send(join, label("next", expiry + 5000))
    assert totals["expired"].count == 1 and totals["unmatched_labels"].count == 1
    assert totals["pending_events"].count == 0  # +1 for the event, -1 at its expiry
    model = state.group.groups[("model", "m")].metrics
    assert model["expired"].count == 1 and model["unmatched_labels"].count == 1


def bounded(entries: int, **job: str) -> LabelJoin:
    env = {"FLOWLEARN__JOB__JOIN_BUFFER_ENTRIES": str(entries)}
    env |= {f"FLOWLEARN__JOB__{name.upper()}": value for name, value in job.items()}
    join = LabelJoin(load_settings(env=env))
    join.open(KeyedState())
    return join


def event(event_id: str, ts: int) -> Feedback:
    return events((event_id, ts, [float(ts)]))


def test_past_join_buffer_entries_the_entries_due_first_go_and_are_counted():
    """A model's join holds at most job.join_buffer_entries entries: the oldest event
    expires early (dropped by default), a label alone goes to the DLQ, nothing silently."""
    join = bounded(3)
    for i, ts in enumerate((3000, 1000, 2000)):  # out of order: the oldest is e1
        assert send(join, event(f"e{i}", ts)) == []
    assert send(join, event("e3", 4000)) == []  # e1 (ts 1000) goes: dropped
    assert set(join.mirror["m"]) == {"e0", "e2", "e3"}
    # e1's label now finds no event: it waits, and being due first (its ts + 1 s) it is the
    # one to go, to the DLQ with the raw label.
    ((tag, letter),) = send(join, label("e1", 1500))
    assert tag.tag_id == "dlq" and b'"reason": "join_overflow"' in letter.encode()
    (paired,) = send(join, label("e2", 2500))  # a waiting event still pairs
    assert Samples._make(paired[1]).features == [2000.0]
    counts = join.metrics.group.groups[("model", "m")].metrics
    assert counts["join_overflow"].count == 2 and counts["expired"].count == 1
    assert counts["pending_events"].count == 3  # e0, e3 and e2's tombstone


def test_an_event_pushed_out_of_the_join_is_trained_with_the_default_label_when_asked():
    join = bounded(1, expired_events="default_label", default_label="1.0")
    send(join, event("old", 1000))
    (pushed_out,) = send(join, event("new", 2000))
    sample = Samples._make(pushed_out[1])
    assert (sample.features, sample.labels, sample.ts) == ([1000.0], [1.0], 1000)
    assert set(join.mirror["m"]) == {"new"}


def test_a_bundles_pairs_leave_as_one_samples_row_in_their_order():
    """The join is called once a bundle and model: the pairs a row of labels completes
    leave together, each label with its own event's features; a duplicate in the same row
    is counted, and a late label goes to the DLQ with its own record's bytes."""
    join = opened(KeyedState())
    assert send(join, events(("a", 1000, [1.0, 2.0]), ("b", 1100, [3.0, 4.0]))) == []
    out = send(join, labels(("b", 1200), ("x", 1300), ("a", 1250), ("b", 1260)))
    (paired,) = out
    sample = Samples._make(paired[1])
    assert (sample.features, sample.labels, sample.ts) == ([3.0, 4.0, 1.0, 2.0], [1.0, 1.0], 1100)
    counts = join.metrics.group.groups[("model", "m")].metrics
    assert counts["joined"].count == 2 and counts["duplicates"].count == 1
    assert set(join.mirror["m"]) == {"a", "b", "x"}  # two tombstones, the label waiting

    class WatermarkAt5s(Timers):
        def current_watermark(self) -> int:
            return 5000

    class Behind(Context):
        def timer_service(self) -> Timers:
            return WatermarkAt5s()

    out = list(
        join.process_element(to_row(labels(("y", 4000), ("z", 6000), ("w", 4500))), Behind())
    )
    letters = [json.loads(letter) for tag, letter in out if tag.tag_id == "dlq"]
    assert [(d["reason"], json.loads(base64.b64decode(d["raw"]))["event_id"]) for d in letters] == [
        ("late", "y"),
        ("late", "w"),
    ]


def test_rows_of_another_width_leave_in_a_samples_row_of_their_own():
    """Events of one model can wait under two shapes (a create with a reset came between):
    their pairs are not run together into rows of the wrong width."""
    join = opened(KeyedState())
    send(join, events(("a", 1000, [1.0, 2.0]), ("b", 1000, [3.0, 4.0, 5.0])))
    send(join, events(("c", 1000, [6.0, 7.0, 8.0])))
    out = send(join, labels(("a", 1100), ("b", 1100), ("c", 1100)))
    assert [Samples._make(row[1]).features for row in out] == [
        [1.0, 2.0],
        [3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
    ]


def test_events_a_timer_expires_leave_as_one_row_with_the_default_label():
    join = bounded(100, expired_events="default_label", default_label="0.0")
    send(join, events(("a", 1000, [1.0]), ("b", 1200, [2.0])))
    expiry = 1200 + SETTINGS.job.label_window_ms + 1000
    (expired,) = list(join.on_timer(expiry, TimerContext()))
    sample = Samples._make(expired[1])
    assert (sample.features, sample.labels) == ([1.0, 2.0], [0.0, 0.0])
    assert join.mirror["m"] == {}
