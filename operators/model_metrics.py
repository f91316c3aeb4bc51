"""Per-model Flink metrics: a ``model`` metric group per model id, created on first use.

Flink's Prometheus reporter turns the group into a label, so every metric registered here
appears as ``flink_taskmanager_job_task_operator_model_<name>{model="<id>"}``.

A job may hold thousands of models, and Flink cannot unregister a metric: each operator
instance labels the first ``job.model_metrics_limit`` models it sees, and those named in
``job.model_metrics``. The counters of every other model add up under the label
:data:`OTHER_MODELS`, and they get no gauges.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flowlearn.conf import JobConf

#: The ``model`` label of the models beyond the limit (not a valid model id: no clash).
OTHER_MODELS = "(other)"


class ModelMetrics:
    """Counters by (model id, name) under one operator's metric group.

    >>> # metrics = ModelMetrics(runtime_context.get_metrics_group(), ("joined", "late"), job)
    >>> # metrics.inc("demo", "joined")
    """

    def __init__(self, group: Any, counters: tuple[str, ...], job: JobConf) -> None:
        self.group = group
        self.names = counters
        self.limit = job.model_metrics_limit
        self.always = frozenset(job.model_metrics)
        #: Counters by model id: a labelled model's own, or the shared OTHER_MODELS ones.
        self.counters: dict[str, dict[str, Any]] = {}
        self.labelled = 0

    def _group_counters(self, label: str) -> dict[str, Any]:
        model_group = self.group.add_group("model", label)
        return {name: model_group.counter(name) for name in self.names}

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
        counter = self._model(model_id)[name]
        if n >= 0:
            counter.inc(n)
        else:
            counter.dec(-n)

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
