"""Event-time join of labels to the events they belong to (docs/architecture.md, "Label join").

Keyed by model id. Whichever of a pair (same event id) comes first waits in managed state.
A pair is emitted once, as a ``KEYED_SAMPLE_TYPE`` pair (model id, sample row carrying the
event's features and time: point-in-time correct), when
``0 <= label ts - event ts <= job.label_window_ms``.

- Duplicates (a second event or label for an id) are counted and ignored.
- A label behind the watermark is late: counted and sent to the DLQ with reason ``late``.
- A label outside the window goes to the DLQ as ``outside_window``; a label whose event never
  came (the watermark passed the label) as ``no_event``.
- An event whose label never came expires when the watermark passes its window: dropped
  (counted) or emitted with ``job.default_label`` (``job.expired_events``).
- A model holds at most ``job.join_buffer_entries`` entries (its waiting events and labels,
  and the tombstones of recent pairs): past it the entries due first go (counted
  ``join_overflow``): an event as if it had expired, a label alone to the DLQ as
  ``join_overflow``, a tombstone at once. The join's memory is otherwise the events' rate
  times the window (a prediction log at thousands of requests a second fills gigabytes).

Events and labels come a bundle of records at a time (a ``Feedback`` row: one model's
records of one bundle, made by the parsers), and what one call gives (its pairs, and the
events expired with the default label) leaves in as few ``Samples`` rows as the rows' shapes
allow: in PyFlink each record between Java and Python costs more than the join's work for
one event.

Why keyed by model and not by event id: PyFlink reads keyed state through a round trip to the
Java state backend, and keyed by event id every record is on a key of its own, so every
record paid for a read that could not be cached (about 100 joined samples/s on 2 cores,
``bench/bench_join.py``). Here the model's entries live in one ``MapState``
(``descriptors.JOIN_ENTRIES``, the source of truth, checkpointed) and in a dict mirror in the
Python worker: reads come from the mirror, every change goes to both (map-state writes are
buffered and flushed in bulk), and the mirror is loaded from the state on the model's first
record or timer after the worker (re)starts. A hashed model's event waits as its sparse row
(the columns it sets and their values, ``JoinEntry.indices``/``offsets``): 12 bytes a
feature, not 8 a column of the model. Paired entries shrink to a tombstone (flags and
the event's time) that keeps duplicates out until the event's window has passed.

Event-time timers are per model and rounded up to the second: one timer serves every entry
due in that second (``self.due``, rebuilt from the entries when the mirror is loaded).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from pyflink.common import Row
from pyflink.datastream import KeyedProcessFunction, RuntimeContext

from flowlearn.conf import Settings
from flowlearn.contracts.records import dlq_record, now_ms
from flowlearn.operators.model_metrics import ModelMetrics, TimerHeld
from flowlearn.operators.parse import DLQ_TAG
from flowlearn.operators.types import Feedback, SamplesBuilder
from flowlearn.state import descriptors
from flowlearn.state.descriptors import JoinEntry, JoinEntryV2

TIMER_GRANULARITY_MS = 1000

#: Bits of an entry's ``flags``.
HAS_EVENT, HAS_LABEL, PAIRED = 1, 2, 4


class _Row(NamedTuple):
    """An event's features as the job's rows carry them (``operators.types.Samples``)."""

    features: list[float]
    indices: list[int]
    offsets: list[int]


class _Mirrored(NamedTuple):
    """A :class:`JoinEntry` as the mirror keeps it: what the join reads of every entry, and
    the entry packed as the state keeps it (``JoinEntry.packed``), unpacked only when the
    entry pairs or leaves. A pending event of ten features takes about 0.3 KB of the
    Python worker (0.8 KB as lists)."""

    flags: int
    event_ts: int
    label_ts: int
    label: float
    packed: bytes

    @classmethod
    def of(cls, entry: JoinEntry) -> _Mirrored:
        return cls(entry.flags, entry.event_ts, entry.label_ts, entry.label, entry.packed())

    @classmethod
    def loaded(cls, packed: bytes) -> _Mirrored:
        """An entry as the state gave it."""
        return cls(*JoinEntry.head(packed), bytes(packed))

    def row(self) -> _Row:
        entry = JoinEntry.unpacked(self.packed)
        return _Row(entry.features, entry.indices, entry.offsets)

    @property
    def raw(self) -> bytes:
        return JoinEntry.unpacked(self.packed).raw


def _coalesce(ts: int) -> int:
    return -(-ts // TIMER_GRANULARITY_MS) * TIMER_GRANULARITY_MS


class _Joined:
    """The samples one call of the join gives (pairs, and expired events trained with the
    default label), in their order, in as few ``Samples`` rows as their shapes allow: each
    row is a record between Python and Java, and its cost."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.gathered: list[SamplesBuilder] = []

    def add(self, event_ts: int, row: _Row, label: float) -> None:
        sparse = bool(row.offsets)
        if not self.gathered or not self.gathered[-1].fits(sparse, len(row.features)):
            self.gathered.append(SamplesBuilder(self.model_id, sparse))
        self.gathered[-1].add_row(event_ts, row.features, row.indices, label)

    def rows(self) -> list[Row]:
        return [samples.row() for samples in self.gathered]


class _Call(NamedTuple):
    """What one call of the join works with: the key's entries, the row of records, the
    watermark and timers, and the samples it gives."""

    model_id: str
    entries: dict[str, _Mirrored]
    batch: Feedback
    watermark: int
    timers: Any
    joined: _Joined


class LabelJoin(KeyedProcessFunction):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.labels_topic = settings.kafka.topics.labels

    def open(self, runtime_context: RuntimeContext) -> None:
        self.entries = runtime_context.get_map_state(descriptors.JOIN_ENTRIES)
        #: Entries of older savepoints (``join-entries-v3`` rows, ``-v2`` dense rows): moved
        #: over on a model's first touch.
        self.entries_v3 = runtime_context.get_map_state(descriptors.JOIN_ENTRIES_V3)
        self.entries_v2 = runtime_context.get_map_state(descriptors.JOIN_ENTRIES_V2)
        #: model id -> event id -> entry: the mirror of ``self.entries``, per model.
        self.mirror: dict[str, dict[str, _Mirrored]] = {}
        #: model id -> timer time -> event ids to look at when that timer fires.
        self.due: dict[str, dict[int, list[str]]] = {}
        # Totals and the same per model (a ``model`` label in Prometheus).
        # Counted in a timer callback (expired, unmatched_labels): held until the next record.
        self.held = TimerHeld()
        group = runtime_context.get_metrics_group()
        self.metrics = ModelMetrics(
            group,
            (
                "joined",
                "duplicates",
                "late",
                "expired",
                "unmatched_labels",
                "pending_events",
                "join_overflow",
            ),
            self.settings.job,
            self.held,
        )
        self.totals = {name: self.held.wrap(group.counter(name)) for name in self.metrics.names}
        self.window = self.settings.job.label_window_ms
        self.max_entries = self.settings.job.join_buffer_entries

    # ------------------------------------------------------------------ the mirror

    def _model(self, model_id: str) -> dict[str, _Mirrored]:
        """The current key's (``model_id``'s) entries, loaded from state the first time."""
        loaded = self.mirror.get(model_id)
        if loaded is not None:
            return loaded
        entries: dict[str, _Mirrored] = {}
        due: dict[int, list[str]] = {}
        old = [
            (event_id, JoinEntryV2._make(row).upgraded())
            for event_id, row in self.entries_v2.items()
        ]
        old += [(event_id, JoinEntry._make(row)) for event_id, row in self.entries_v3.items()]
        if old:
            # put, not put_all: PyFlink's put_all iterates its argument as (key, value)
            # pairs, so the dict its signature asks for fails to unpack (every restore of an
            # older savepoint with a waiting event crashed here).
            for event_id, moved in old:
                self.entries.put(event_id, moved.packed())
            self.entries_v2.clear()
            self.entries_v3.clear()
        for event_id, packed in self.entries.items():
            entry = _Mirrored.loaded(packed)
            entries[event_id] = entry
            due.setdefault(self._deadline(entry), []).append(event_id)
        self.mirror[model_id], self.due[model_id] = entries, due
        return entries

    def _deadline(self, entry: JoinEntry | _Mirrored) -> int:
        if entry.flags & HAS_EVENT:
            return _coalesce(entry.event_ts + self.window)
        return _coalesce(entry.label_ts + 1)  # a label whose event has ts <= the label's

    def _put(self, model_id: str, event_id: str, entry: JoinEntry, timers: Any) -> None:
        mirrored = self.mirror[model_id][event_id] = _Mirrored.of(entry)
        self.entries.put(event_id, mirrored.packed)
        deadline = self._deadline(entry)
        due = self.due[model_id]
        if deadline not in due:
            due[deadline] = []
            timers.register_event_time_timer(deadline)
        due[deadline].append(event_id)

    def _remove(self, model_id: str, event_id: str, had_event: bool) -> None:
        del self.mirror[model_id][event_id]
        self.entries.remove(event_id)
        if had_event:
            self._count(model_id, "pending_events", -1)

    def _count(self, model_id: str, name: str, n: int = 1) -> None:
        if n >= 0:
            self.totals[name].inc(n)
        else:
            self.totals[name].dec(-n)
        self.metrics.inc(model_id, name, n)

    # ------------------------------------------------------------------ records

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        batch = Feedback._make(value)
        self.held.release()
        model_id = batch.model_id
        entries = self._model(model_id)
        timers = ctx.timer_service()
        watermark = timers.current_watermark()
        call = _Call(model_id, entries, batch, watermark, timers, _Joined(model_id))
        add = self._event if batch.kind == "e" else self._label
        for i, event_id in enumerate(batch.event_ids):
            yield from add(call, i, event_id)
        yield from call.joined.rows()

    def _event(self, call: _Call, i: int, event_id: str) -> Iterator[Any]:
        """Event ``i`` of the call's row."""
        model_id, batch, timers, joined = call.model_id, call.batch, call.timers, call.joined
        entry = call.entries.get(event_id)
        if entry is not None and entry.flags & (PAIRED | HAS_EVENT):
            self._count(model_id, "duplicates")
            return
        ts = batch.ts[i]
        if ts + self.window < call.watermark:
            # Its window closed before it arrived: no label can join it any more.
            self._count(model_id, "expired")
            return
        # Pending events: +1 here, -1 when the entry is removed (a join-buffer gauge as a
        # counter: PyFlink has no up-down counter).
        self._count(model_id, "pending_events")
        row = _Row(*batch.event_row(i))
        if entry is not None:  # its label waits
            yield from self._pair(
                model_id, event_id, ts, row, entry.label_ts, entry.label, entry.raw, timers, joined
            )
            return
        waiting = JoinEntry(HAS_EVENT, ts, row.features, 0, 0.0, b"", row.indices, row.offsets)
        self._put(model_id, event_id, waiting, timers)
        yield from self._overflow(model_id, joined)

    def _label(self, call: _Call, i: int, event_id: str) -> Iterator[Any]:
        """Label ``i`` of the call's row."""
        model_id, batch, timers, joined = call.model_id, call.batch, call.timers, call.joined
        watermark = call.watermark
        entry = call.entries.get(event_id)
        if entry is not None and entry.flags & (PAIRED | HAS_LABEL):
            self._count(model_id, "duplicates")
            return
        ts = batch.ts[i]
        if ts < watermark:
            self._count(model_id, "late")
            yield (
                DLQ_TAG,
                dlq_record(
                    self.labels_topic,
                    "late",
                    batch.raw_of(i),
                    now_ms(),
                    f"label ts {ts} behind the watermark {watermark}",
                ),
            )
            return
        label = float(batch.labels[i])
        if entry is None:
            alone = JoinEntry(HAS_LABEL, 0, [], ts, label, batch.raw_of(i), [], [])
            self._put(model_id, event_id, alone, timers)
            yield from self._overflow(model_id, joined)
            return
        yield from self._pair(
            model_id,
            event_id,
            entry.event_ts,
            entry.row(),
            ts,
            label,
            batch.raw_of(i),
            timers,
            joined,
        )

    def _pair(
        self,
        model_id: str,
        event_id: str,
        event_ts: int,
        row: _Row,
        label_ts: int,
        label: float,
        raw: bytes,
        timers: Any,
        joined: _Joined,
    ) -> Iterator[Any]:
        # The tombstone: the event's time (its deadline removes it), no features.
        self._put(
            model_id,
            event_id,
            JoinEntry(HAS_EVENT | PAIRED, event_ts, [], 0, 0.0, b"", [], []),
            timers,
        )
        if not 0 <= label_ts - event_ts <= self.window:
            self._count(model_id, "unmatched_labels")
            yield (
                DLQ_TAG,
                dlq_record(
                    self.labels_topic,
                    "outside_window",
                    raw,
                    now_ms(),
                    f"label ts {label_ts} - event ts {event_ts} outside [0, {self.window}] ms",
                ),
            )
            return
        self._count(model_id, "joined")
        joined.add(event_ts, row, label)

    def _overflow(self, model_id: str, joined: _Joined) -> Iterator[Any]:
        """Past ``job.join_buffer_entries``, the model's entries due first go: an event as
        if its window had passed, a label alone to the DLQ, a tombstone at once (a
        duplicate of its pair is then no longer recognised)."""
        entries, due = self.mirror[model_id], self.due[model_id]
        while len(entries) > self.max_entries:
            deadline = min(due)
            ids = due[deadline]
            while ids and len(entries) > self.max_entries:
                event_id = ids.pop(0)
                entry = entries.get(event_id)
                if entry is None or self._deadline(entry) != deadline:
                    continue  # gone, or due later since (an event paired with its label)
                self._count(model_id, "join_overflow")
                if entry.flags & PAIRED:
                    self._remove(model_id, event_id, had_event=True)
                elif entry.flags & HAS_EVENT:
                    self._count(model_id, "expired")
                    self._expired_event(model_id, event_id, entry, joined)
                else:
                    yield from self._dead_label(
                        model_id,
                        event_id,
                        entry,
                        "join_overflow",
                        f"the model's label join holds job.join_buffer_entries = "
                        f"{self.max_entries} entries; the label waited longest for its event",
                    )
            if not ids:
                del due[deadline]

    # ------------------------------------------------------------------ timers

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        model_id = str(ctx.get_current_key())
        entries = self._model(model_id)
        due = self.due[model_id]
        joined = _Joined(model_id)
        with self.held.timer():
            for deadline in sorted(t for t in due if t <= timestamp):
                for event_id in due.pop(deadline):
                    entry = entries.get(event_id)
                    if entry is not None:
                        yield from self._expire(model_id, event_id, entry, timestamp, joined)
        yield from joined.rows()

    def _expire(
        self, model_id: str, event_id: str, entry: _Mirrored, timestamp: int, joined: _Joined
    ) -> Iterator[Any]:
        flags, event_ts = entry.flags, entry.event_ts
        event_window_passed = timestamp >= _coalesce(event_ts + self.window)
        if flags & PAIRED:
            # Keep the tombstone until the event's window has passed: duplicates stay ignored.
            if event_window_passed:
                self._remove(model_id, event_id, had_event=True)
            return
        if not flags & HAS_EVENT:  # a label alone: its event is not coming any more
            self._count(model_id, "unmatched_labels")
            yield from self._dead_label(
                model_id, event_id, entry, "no_event", "no event with this id before the label"
            )
            return
        if event_window_passed:
            self._count(model_id, "expired")
            self._expired_event(model_id, event_id, entry, joined)

    def _dead_label(
        self, model_id: str, event_id: str, entry: _Mirrored, reason: str, detail: str
    ) -> Iterator[Any]:
        """A label alone that no event will join: its raw record to the DLQ, then removed."""
        yield (DLQ_TAG, dlq_record(self.labels_topic, reason, entry.raw, now_ms(), detail))
        self._remove(model_id, event_id, had_event=False)

    def _expired_event(
        self, model_id: str, event_id: str, entry: _Mirrored, joined: _Joined
    ) -> None:
        """An event no label will join: trained with ``job.default_label`` when
        ``job.expired_events`` says so, then removed."""
        if self.settings.job.expired_events == "default_label":
            joined.add(entry.event_ts, entry.row(), self.settings.job.default_label)
        self._remove(model_id, event_id, had_event=True)
