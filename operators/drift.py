"""Drift operator keyed by model id: feeds the trainer's prequential stream to a
:class:`flowlearn.core.monitoring.DriftMonitor`, raises ``drift`` alerts and, when configured,
adapts the model through ``fl.control`` (Flink 2 has no iterations: the loop closes through
Kafka)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, RuntimeContext

from flowlearn.conf import Settings
from flowlearn.contracts.records import alert_record, control_record
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.core.monitoring import DriftMonitor
from flowlearn.operators.hot_models import HotModels
from flowlearn.operators.keyed_specs import KeyedSpecs
from flowlearn.operators.model_metrics import ModelMetrics
from flowlearn.operators.types import Evaluated
from flowlearn.state import descriptors

#: Control records (JSON, the ``fl.control`` format of docs/architecture.md) the drift operator
#: sends.
CONTROL_OUT_TAG = OutputTag("control-out", Types.STRING())
#: The monitor's state is written every this many batches: detectors are statistical, and a
#: recovery that replays a few batches into a slightly older monitor changes nothing that
#: matters, while a 50 KB write per batch would.
PERSIST_EVERY_BATCHES = 16


class DriftOperator(KeyedProcessFunction):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.specs = ModelSpecs(settings)

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(descriptors.DRIFT_MONITOR)
        self.monitors: dict[str, DriftMonitor] = {}
        self.batches: dict[str, int] = {}
        # The version of the model's last adaptation, in state: a restart must not let a
        # model be reset twice within one cooldown.
        self.last_adapted = runtime_context.get_state(descriptors.DRIFT_LAST_ADAPTED)
        self.model_specs = KeyedSpecs(self.specs, runtime_context)
        group = runtime_context.get_metrics_group()
        self.alarms = group.counter("drift_alarms")
        self.adaptations = group.counter("drift_adaptations")
        self.per_model = ModelMetrics(
            group, ("drift_alarms", "drift_adaptations"), self.settings.job
        )
        # A monitor dropped from memory comes back from its last write (PERSIST_EVERY_BATCHES):
        # it misses at most that many batches, as after a recovery.
        self.hot = HotModels(
            self.settings.job.hot_models, lambda model_id: False, (self.monitors, self.batches)
        )

    def _monitor(self, model_id: str, n_monitored: int) -> DriftMonitor:
        monitor = self.monitors.get(model_id)
        if monitor is None:
            saved = self.state.value()
            if saved is not None:
                monitor = DriftMonitor.from_bytes(bytes(saved))
            else:
                spec = self.model_specs.spec_of(model_id)
                monitor = DriftMonitor.create(spec.as_dict(), n_monitored, n_monitored)
            self.monitors[model_id] = monitor
        return monitor

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        row = Evaluated._make(value)
        model_id, version, n_monitored = row.model_id, row.version, row.n_monitored
        self.hot.touch(model_id)
        if row.kind in ("create", "update", "delete"):
            # A new model, new detectors, or no model: the detectors start again.
            self.state.clear()
            if row.kind != "update":  # the cooldown of the model's last adaptation holds
                self.last_adapted.clear()
            self.monitors.pop(model_id, None)
            self.batches.pop(model_id, None)
            self.model_specs.follow(model_id, row.kind, row.spec)
            return
        if row.kind != "train":
            # A rollback or reset scored no samples, but its weights are new: their errors
            # are not to be compared with the old weights'.
            if model_id in self.monitors or self.state.value() is not None:
                spec = self.model_specs.spec_of(model_id)
                monitor = self._monitor(model_id, n_monitored).restarted(spec.as_dict())
                self.monitors[model_id] = monitor
                self.state.update(monitor.to_bytes())
            return
        monitor = self._monitor(model_id, n_monitored)
        X = np.asarray(row.features, dtype=np.float64).reshape(len(row.losses), n_monitored)
        alarms = monitor.update(
            np.asarray(row.errors, dtype=np.float64), np.asarray(row.losses, dtype=np.float64), X
        )
        count = self.batches.get(model_id, 0) + 1
        self.batches[model_id] = count
        if alarms or count % PERSIST_EVERY_BATCHES == 0:
            self.state.update(monitor.to_bytes())
        for alarm in alarms:
            self.alarms.inc()
            self.per_model.inc(model_id, "drift_alarms")
            yield alert_record(
                model_id,
                "drift",
                {**alarm.as_dict(), "version": version, "samples_applied": row.samples_applied},
            )
        job = self.settings.job
        performance_alarm = any(a.degraded for a in alarms)
        spec = self.model_specs.spec_of(model_id)
        last_adapted = self.last_adapted.value()
        if (
            performance_alarm
            and spec.drift_action == "reset"
            and (last_adapted is None or version - last_adapted >= job.drift_cooldown_versions)
        ):
            self.last_adapted.update(version)
            self.adaptations.inc()
            self.per_model.inc(model_id, "drift_adaptations")
            yield (
                CONTROL_OUT_TAG,
                control_record(
                    model_id,
                    "reset",
                    {},
                    source=f"drift:{'+'.join(sorted({a.detector for a in alarms}))}",
                ),
            )
