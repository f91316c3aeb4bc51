"""Event-time join of labels to the events they belong to (DESIGN: "Label join").

Keyed by model id and event id. Whichever of the pair comes first waits in managed state.
A pair is emitted once, as a ``SAMPLE_TYPE`` row carrying the event's features and time
(point-in-time correct), when ``0 <= label ts - event ts <= job.label_window_ms``.

- Duplicates (a second event or label for an id) are counted and ignored.
- A label behind the watermark is late: counted and sent to the DLQ with reason ``late``.
- A label outside the window goes to the DLQ as ``outside_window``; a label whose event never
  came (the watermark passed the label) as ``no_event``.
- An event whose label never came expires when the watermark passes its window: dropped
  (counted) or emitted with ``job.default_label`` (``job.expired_events``).

Event-time timers are rounded up to the second, so that one timer serves many keys' deadlines
at once and the timer count stays low.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pyflink.common import Row
from pyflink.datastream import KeyedProcessFunction, RuntimeContext

from conf import Settings
from flowlearn.records import dlq_record, now_ms
from operators.model_metrics import ModelMetrics
from operators.parse import DLQ_TAG
from state import descriptors

TIMER_GRANULARITY_MS = 1000
KEY_SEPARATOR = "\x1f"


def join_key(row: Any) -> str:
    """The key of a ``FEEDBACK_TYPE`` row: model id and event id."""
    return f"{row[1]}{KEY_SEPARATOR}{row[2]}"


def _coalesce(ts: int) -> int:
    return -(-ts // TIMER_GRANULARITY_MS) * TIMER_GRANULARITY_MS


class LabelJoin(KeyedProcessFunction):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.labels_topic = settings.kafka.topics.labels

    def open(self, runtime_context: RuntimeContext) -> None:
        self.event = runtime_context.get_state(descriptors.JOIN_EVENT)
        self.label = runtime_context.get_state(descriptors.JOIN_LABEL)
        self.done = runtime_context.get_state(descriptors.JOIN_DONE)
        # Totals and the same per model (a ``model`` label in Prometheus).
        group = runtime_context.get_metrics_group()
        self.metrics = ModelMetrics(group, ("joined", "duplicates", "late", "expired",
                                            "unmatched_labels", "pending_events"))
        self.totals = {name: group.counter(name) for name in self.metrics.names}
        self.window = self.settings.job.label_window_ms

    def _count(self, model_id: str, name: str, n: int = 1) -> None:
        if n >= 0:
            self.totals[name].inc(n)
        else:
            self.totals[name].dec(-n)
        self.metrics.inc(model_id, name, n)

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        kind, model_id, _event_id, ts, features, label, raw = value
        watermark = ctx.timer_service().current_watermark()
        if self.done.value():
            self._count(model_id, "duplicates")
            return
        timers = ctx.timer_service()
        if kind == "e":
            if self.event.value() is not None:
                self._count(model_id, "duplicates")
                return
            if ts + self.window < watermark:
                # Its window closed before it arrived: no label can join it any more.
                self._count(model_id, "expired")
                return
            self.event.update(Row(ts, features))
            # Pending events: +1 here, -1 when the entry is cleared (a join-buffer gauge as
            # a counter: PyFlink has no up-down counter).
            self._count(model_id, "pending_events")
            timers.register_event_time_timer(_coalesce(ts + self.window))
            waiting = self.label.value()
            if waiting is not None:
                yield from self._pair(model_id, ts, features, waiting[0], waiting[1],
                                      bytes(waiting[2]))
            return
        if self.label.value() is not None:
            self._count(model_id, "duplicates")
            return
        if ts < watermark:
            self._count(model_id, "late")
            yield DLQ_TAG, dlq_record(self.labels_topic, "late", bytes(raw), now_ms(),
                                      f"label ts {ts} behind the watermark {watermark}")
            return
        waiting_event = self.event.value()
        if waiting_event is None:
            self.label.update(Row(ts, label, bytes(raw)))
            # Its event has ts <= the label's: once the watermark passes, it is not coming.
            timers.register_event_time_timer(_coalesce(ts + 1))
            return
        yield from self._pair(model_id, waiting_event[0], waiting_event[1], ts, label,
                              bytes(raw))

    def _pair(self, model_id: str, event_ts: int, features: list[float], label_ts: int,
              label: float, raw: bytes) -> Iterator[Any]:
        self.done.update(True)
        self.label.clear()
        if not 0 <= label_ts - event_ts <= self.window:
            self._count(model_id, "unmatched_labels")
            yield DLQ_TAG, dlq_record(
                self.labels_topic, "outside_window", raw, now_ms(),
                f"label ts {label_ts} - event ts {event_ts} outside [0, {self.window}] ms")
            return
        self._count(model_id, "joined")
        yield Row(model_id, event_ts, features, [label])

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        model_id = str(ctx.get_current_key()).split(KEY_SEPARATOR, 1)[0]
        event = self.event.value()
        if self.done.value():
            # Keep the tombstone until the event's window has passed: duplicates stay ignored.
            if event is None or timestamp >= _coalesce(event[0] + self.window):
                self._clear(model_id, event is not None)
            return
        waiting_label = self.label.value()
        if waiting_label is not None and event is None:
            self._count(model_id, "unmatched_labels")
            yield DLQ_TAG, dlq_record(self.labels_topic, "no_event", bytes(waiting_label[2]),
                                      now_ms(), "no event with this id before the label")
            self._clear(model_id, False)
            return
        if event is not None and timestamp >= _coalesce(event[0] + self.window):
            self._count(model_id, "expired")
            if self.settings.job.expired_events == "default_label":
                yield Row(model_id, event[0], event[1], [self.settings.job.default_label])
            self._clear(model_id, True)

    def _clear(self, model_id: str, had_event: bool) -> None:
        if had_event:
            self._count(model_id, "pending_events", -1)
        self.event.clear()
        self.label.clear()
        self.done.clear()
