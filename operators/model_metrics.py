"""Per-model Flink metrics: a ``model`` metric group per model id, created on first use.

Flink's Prometheus reporter turns the group into a label, so every metric registered here
appears as ``flink_taskmanager_job_task_operator_model_<name>{model="<id>"}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ModelMetrics:
    """Counters by (model id, name) under one operator's metric group.

    >>> # metrics = ModelMetrics(runtime_context.get_metrics_group(), ("joined", "late"))
    >>> # metrics.inc("demo", "joined")
    """

    def __init__(self, group: Any, counters: tuple[str, ...]) -> None:
        self.group = group
        self.names = counters
        self.counters: dict[str, dict[str, Any]] = {}

    def _model(self, model_id: str) -> dict[str, Any]:
        counters = self.counters.get(model_id)
        if counters is None:
            model_group = self.group.add_group("model", model_id)
            counters = {name: model_group.counter(name) for name in self.names}
            self.counters[model_id] = counters
        return counters

    def inc(self, model_id: str, name: str, n: int = 1) -> None:
        """Add ``n`` (negative: subtract) to the model's counter ``name``."""
        counter = self._model(model_id)[name]
        if n >= 0:
            counter.inc(n)
        else:
            counter.dec(-n)

    def gauge(self, model_id: str, name: str, read: Callable[[], int]) -> None:
        """Register a gauge for the model (once, when its counters are created)."""
        self._model(model_id)
        self.group.add_group("model", model_id).gauge(name, read)

    def feature_gauge(
        self, model_id: str, feature: str, name: str, read: Callable[[], int]
    ) -> None:
        """Register a gauge for one feature of the model (a ``feature`` label)."""
        self._model(model_id)
        self.group.add_group("model", model_id).add_group("feature", feature).gauge(name, read)
