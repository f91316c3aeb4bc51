"""Per-model Flink metrics: a ``model`` metric group per model id, created on first use.

Flink's Prometheus reporter turns the group into a label, so every metric registered here
appears as ``flink_taskmanager_job_task_operator_model_<name>{model="<id>"}``.

A job may hold thousands of models, and Flink cannot unregister a metric: each operator
instance labels the first ``job.model_metrics_limit`` models it sees, and those named in
``job.model_metrics``. The counters of every other model add up under the label
:data:`OTHER_MODELS`, and they get no gauges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flowlearn.conf import JobConf

#: The ``model`` label of the models beyond the limit (not a valid model id: no clash).
OTHER_MODELS = "(other)"


class TimerHeld:
    """Counter updates, applied at once, or held while a timer callback runs and applied when
    the next record comes: PyFlink drops the metric updates made in ``on_timer`` (its Beam
    harness reports the updates of element bundles only), so the counts of timer-driven work
    (expired events, labels whose event never came, batches the timeout flushed) were lost.
    Held updates add up per counter: they take no more memory than the counters.

    >>> class Counter:
    ...     count = 0
    ...     def inc(self, n=1): self.count += n
    ...     def dec(self, n=1): self.count -= n
    >>> held, raw = TimerHeld(), Counter()
    >>> expired = held.wrap(raw)
    >>> with held.timer():
    ...     expired.inc(2)
    >>> raw.count, held.release(), raw.count
    (0, None, 2)
    """

    def __init__(self) -> None:
        self.in_timer = False
        #: id(counter) -> (counter, the sum of its held updates).
        self.held: dict[int, tuple[Any, int]] = {}

    def wrap(self, counter: Any) -> HeldCounter:
        return HeldCounter(self, counter)

    def add(self, counter: Any, n: int) -> None:
        if not self.in_timer:
            _apply(counter, n)
            return
        _, before = self.held.get(id(counter), (counter, 0))
        self.held[id(counter)] = (counter, before + n)

    @contextmanager
    def timer(self) -> Iterator[None]:
        """Hold the updates made within (a timer callback's body)."""
        self.in_timer = True
        try:
            yield
        finally:
            self.in_timer = False

    def release(self) -> None:
        """Apply the held updates (call it first thing for every record)."""
        if self.held:
            for counter, n in self.held.values():
                _apply(counter, n)
            self.held.clear()


class HeldCounter:
    """A Flink counter whose updates go through :class:`TimerHeld`."""

    __slots__ = ("counter", "owner")

    def __init__(self, owner: TimerHeld, counter: Any) -> None:
        self.owner, self.counter = owner, counter

    def inc(self, n: int = 1) -> None:
        self.owner.add(self.counter, n)

    def dec(self, n: int = 1) -> None:
        self.owner.add(self.counter, -n)


def _apply(counter: Any, n: int) -> None:
    if n >= 0:
        counter.inc(n)
    else:
        counter.dec(-n)


class ModelMetrics:
    """Counters by (model id, name) under one operator's metric group.

    >>> # metrics = ModelMetrics(runtime_context.get_metrics_group(), ("joined", "late"), job)
    >>> # metrics.inc("demo", "joined")

    ``held``: the operator's :class:`TimerHeld`, when it counts in timer callbacks.
    """

    def __init__(
        self, group: Any, counters: tuple[str, ...], job: JobConf, held: TimerHeld | None = None
    ) -> None:
        self.group = group
        self.held = held
        self.names = counters
        self.limit = job.model_metrics_limit
        self.always = frozenset(job.model_metrics)
        #: Counters by model id: a labelled model's own, or the shared OTHER_MODELS ones.
        self.counters: dict[str, dict[str, Any]] = {}
        self.labelled = 0

    def _group_counters(self, label: str) -> dict[str, Any]:
        model_group = self.group.add_group("model", label)
        counters = {name: model_group.counter(name) for name in self.names}
        if self.held is not None:
            return {name: self.held.wrap(counter) for name, counter in counters.items()}
        return counters

    def _model(self, model_id: str) -> dict[str, Any]:
        counters = self.counters.get(model_id)
        if counters is None:
            if model_id in self.always or self.labelled < self.limit:
                self.labelled += model_id not in self.always
                counters = self._group_counters(model_id)
            else:
                counters = self.counters.get(OTHER_MODELS) or self._group_counters(OTHER_MODELS)
                self.counters[OTHER_MODELS] = counters
            self.counters[model_id] = counters
        return counters

    def is_labelled(self, model_id: str) -> bool:
        """Whether ``model_id`` has series of its own (gauges are registered only then)."""
        return self._model(model_id) is not self.counters.get(OTHER_MODELS)

    def inc(self, model_id: str, name: str, n: int = 1) -> None:
        """Add ``n`` (negative: subtract) to the model's counter ``name``."""
        _apply(self._model(model_id)[name], n)

    def gauge(self, model_id: str, name: str, read: Callable[[], int]) -> None:
        """Register a gauge for the model (once, when its counters are created), if it is
        labelled."""
        if self.is_labelled(model_id):
            self.group.add_group("model", model_id).gauge(name, read)

    def feature_gauge(
        self, model_id: str, feature: str, name: str, read: Callable[[], int]
    ) -> None:
        """Register a gauge for one feature of the model (a ``feature`` label), if the
        model is labelled."""
        if self.is_labelled(model_id):
            self.group.add_group("model", model_id).add_group("feature", feature).gauge(name, read)
