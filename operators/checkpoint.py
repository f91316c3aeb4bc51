"""Checkpoint operator keyed by model id: keeps a
:class:`flowlearn.core.checkpointing.CheckpointLedger`
per model (checkpoint versions with their windowed metrics), registers chosen checkpoints in
MLflow, and asks the trainer for an automatic rollback through ``fl.control`` when the live
model degrades (alert ``degraded``).

MLflow calls take tens of milliseconds or more, so they run on a background thread
(:class:`Registrar`) and never hold up the stream. A checkpoint chosen for registration stays
marked *pending* in the ledger (managed state) until the thread confirms it, so a failure in
between re-queues it after recovery; the registry is idempotent, so a replayed registration
creates nothing new.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pyflink.datastream import KeyedProcessFunction, RuntimeContext

from flowlearn.conf import Settings
from flowlearn.contracts.records import alert_record, control_record, now_ms
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.core.checkpointing import CheckpointLedger, Register, Retired, Rollback
from flowlearn.operators.drift import CONTROL_OUT_TAG
from flowlearn.operators.hot_models import HotModels
from flowlearn.operators.keyed_specs import KeyedSpecs
from flowlearn.operators.model_metrics import ModelMetrics
from flowlearn.operators.types import Evaluated
from flowlearn.state import descriptors

#: A registration that failed is tried again after this long (MLflow server down, locked DB).
RETRY_AFTER_S = 30.0


@dataclass(frozen=True)
class Registration:
    model_id: str
    version: int
    weights: bytes
    spec_json: str
    samples_applied: int
    metrics: Mapping[str, float]
    #: The target of an automatic rollback: the version served again (MLflow alias ``live``,
    #: kept by retention), registered before or not.
    restored: bool = False


class Registrar:
    """Registers versions in MLflow from a daemon thread; confirmations and refusals are
    collected by model id, for the operator to apply when it next holds that model's key.

    A registration that fails for a reason that may pass (server down, locked store) is
    tried again :data:`RETRY_AFTER_S` later while the others go on; one the registry refuses
    for good (an invalid name or value) is reported as refused, once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.jobs: queue.Queue[Registration] = queue.Queue()
        self.done: dict[str, list[int]] = defaultdict(list)
        #: Per model, the versions the registry refused for good, with the reason.
        self.refusals: dict[str, list[tuple[int, str]]] = defaultdict(list)
        #: Registrations waiting to be tried again: (not before, monotonic s; registration).
        self.delayed: list[tuple[float, Registration]] = []
        self.failures = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mlflow-registrar", daemon=True)
        self.thread.start()

    def submit(self, registration: Registration) -> None:
        self.jobs.put(registration)

    def confirmed(self, model_id: str) -> list[int]:
        with self.lock:
            return self.done.pop(model_id, [])

    def refused(self, model_id: str) -> list[tuple[int, str]]:
        with self.lock:
            return self.refusals.pop(model_id, [])

    def stop(self, drain_s: float = 30.0) -> None:
        """Let queued registrations finish (at most ``drain_s``), then end the thread; what
        is left stays pending in the ledger and is registered after the next start."""
        deadline = time.monotonic() + drain_s
        while self.jobs.unfinished_tasks and time.monotonic() < deadline:
            self.stopping.wait(0.05)
        self.stopping.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        from flowlearn.registry.mlflow_store import (  # imports mlflow: seconds
            Registry,
            RegistryError,
        )

        registry = Registry.from_settings(self.settings)
        while not self.stopping.is_set():
            now = time.monotonic()
            due = [job for at, job in self.delayed if at <= now]
            self.delayed = [(at, job) for at, job in self.delayed if at > now]
            for job in due:
                self.jobs.put(job)
            try:
                job = self.jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                registry.register(
                    job.model_id,
                    job.version,
                    job.weights,
                    job.spec_json,
                    job.samples_applied,
                    job.metrics,
                    # The job's newest registered version is the one it serves, or about
                    # to: the version after it descends from it.
                    live=True,
                    restored=job.restored,
                )
            except (ValueError, RegistryError) as exc:
                self.failures += 1
                if isinstance(exc, RegistryError) and not exc.permanent:
                    print(
                        f"flowlearn checkpoint: registering {job.model_id} v{job.version} "
                        f"failed, retrying in {RETRY_AFTER_S:.0f}s: {exc}",
                        file=sys.stderr,
                    )
                    self.delayed.append((time.monotonic() + RETRY_AFTER_S, job))
                else:  # a bad registration: retrying cannot help
                    with self.lock:
                        self.refusals[job.model_id].append((job.version, str(exc)[:1000]))
                self.jobs.task_done()
                continue
            with self.lock:
                self.done[job.model_id].append(job.version)
            self.jobs.task_done()


class CheckpointOperator(KeyedProcessFunction):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.specs = ModelSpecs(settings)

    def open(self, runtime_context: RuntimeContext) -> None:
        self.ledger_state = runtime_context.get_state(descriptors.CHECKPOINT_LEDGER)
        self.weights = runtime_context.get_map_state(descriptors.CHECKPOINT_WEIGHTS)
        self.model_specs = KeyedSpecs(self.specs, runtime_context)
        self.ledgers: dict[str, CheckpointLedger] = {}
        #: Per model, the versions whose weights are in ``self.weights``: read from the state
        #: once (a MapState's keys are a blocking round trip to the JVM each time, which the
        #: row of every checkpoint version paid), then kept beside its writes.
        self.stored: dict[str, set[int]] = {}
        self.registrar: Registrar | None = None
        group = runtime_context.get_metrics_group()
        self.per_model = ModelMetrics(
            group, ("checkpoints", "registered", "auto_rollbacks"), self.settings.job
        )
        self.auto_rollbacks = group.counter("auto_rollbacks")
        # A ledger is written to state after every row: one dropped from memory comes back
        # whole. Labelled models keep theirs (their gauge reads it).
        self.hot = HotModels(
            self.settings.job.hot_models, self.per_model.is_labelled, (self.ledgers, self.stored)
        )

    def close(self) -> None:
        if self.registrar is not None:
            self.registrar.stop()

    def _new_ledger(self, model_id: str) -> CheckpointLedger:
        job = self.settings.job
        spec = self.model_specs.spec_of(model_id)
        return CheckpointLedger(
            every=job.checkpoint_every_versions,
            keep=job.keep_checkpoints,
            window_samples=job.rollback_window_samples,
            margin=job.rollback_margin,
            min_samples=job.rollback_min_samples,
            cooldown_versions=job.rollback_cooldown_versions,
            auto_rollback=spec.auto_rollback,
            register_interval_ms=int(self.settings.mlflow.register_min_interval_s * 1000),
        )

    def _stored(self, model_id: str) -> set[int]:
        stored = self.stored.get(model_id)
        if stored is None:
            stored = self.stored[model_id] = set(self.weights.keys())
        return stored

    def _ledger(self, model_id: str) -> CheckpointLedger:
        ledger = self.ledgers.get(model_id)
        if ledger is None:
            ledger = self._new_ledger(model_id)
            saved = self.ledger_state.value()
            if saved is not None:
                ledger.load_bytes(bytes(saved))
                # Chosen before a failure but never confirmed: register them again.
                for version in ledger.pending_registrations():
                    self._register(model_id, ledger, version)
            self.ledgers[model_id] = ledger
            # Gauges are integers in PyFlink: the loss in millionths. Flink reads every gauge
            # at the end of every bundle, and cannot drop one: a deleted (or re-created)
            # model's ledger is gone until its next version, and its gauge reads 0 meanwhile
            # (a KeyError there failed the job, on every replay of the delete).
            self.per_model.gauge(model_id, "windowed_loss", lambda: self._windowed_loss(model_id))
        return ledger

    def _windowed_loss(self, model_id: str) -> int:
        ledger = self.ledgers.get(model_id)
        return 0 if ledger is None else _millionths(ledger.live_loss()[0])

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        row = Evaluated._make(value)
        model_id, version, weights = row.model_id, row.version, row.weights
        self.hot.touch(model_id)
        if row.kind in ("create", "update", "delete"):
            self.model_specs.follow(model_id, row.kind, row.spec)
        if row.kind in ("create", "delete"):  # a new model, or none: its checkpoints go
            self.ledger_state.clear()
            self.weights.clear()
            self.stored[model_id] = set()
            self.ledgers.pop(model_id, None)
            if row.kind == "delete":
                return
        ledger = self._ledger(model_id)
        if row.kind == "update":  # of the live fields, this operator reads auto_rollback
            ledger.auto_rollback = self.model_specs.spec_of(model_id).auto_rollback
        if self.registrar is not None:
            for confirmed in self.registrar.confirmed(model_id):
                checkpoint = ledger.get(confirmed)
                if checkpoint is not None and not checkpoint.registered:  # not a rollback's
                    self.per_model.inc(model_id, "registered")
                ledger.mark_registered(confirmed)
            for refused, reason in self.registrar.refused(model_id):
                ledger.abandon_registration(refused)
                yield alert_record(
                    model_id,
                    "registry_refused",
                    {"version": refused, "reason": reason},
                )
        if weights:
            self.weights.put(version, bytes(weights))
            self._stored(model_id).add(version)
            ledger.spec_json = row.spec
            self.per_model.inc(model_id, "checkpoints")
        decisions = ledger.observe(
            version,
            row.kind,
            n=len(row.losses),
            loss_sum=float(sum(row.losses)),
            error_sum=float(sum(row.errors)),
            samples_applied=row.samples_applied,
            now_ms=now_ms(),
        )
        for decision in decisions:
            if isinstance(decision, Register):
                self._register(model_id, ledger, decision.version)
            elif isinstance(decision, Rollback):
                self._register(model_id, ledger, decision.to_version, restored=True)
                self.auto_rollbacks.inc()
                self.per_model.inc(model_id, "auto_rollbacks")
                reason = (
                    f"live loss {decision.live_loss:.4f} over the last "
                    f"{decision.window_samples} samples is worse than checkpoint "
                    f"{decision.to_version}'s {decision.best_loss:.4f} by more than "
                    f"{self.settings.job.rollback_margin:.0%}"
                )
                yield (
                    CONTROL_OUT_TAG,
                    control_record(
                        model_id,
                        "rollback",
                        {"version": decision.to_version, "reason": reason},
                        source="checkpoint:auto-rollback",
                    ),
                )
                yield alert_record(
                    model_id,
                    "degraded",
                    {
                        **decision.as_dict(),
                        "version": version,
                        "action": "rollback",
                        "reason": reason,
                    },
                )
            elif isinstance(decision, Retired):
                yield alert_record(
                    model_id,
                    "checkpoints_retired",
                    {
                        "versions": list(decision.versions),
                        "reason": decision.reason,
                        "version": version,
                    },
                )
        stored = self._stored(model_id)
        for stale in stored - {c.version for c in ledger.checkpoints()}:
            self.weights.remove(stale)
            stored.discard(stale)
        self.ledger_state.update(ledger.to_bytes())

    def _register(
        self, model_id: str, ledger: CheckpointLedger, version: int, restored: bool = False
    ) -> None:
        """Register a checkpoint; a rollback's target even when it already is, to point the
        registry's ``live`` alias at it (registering is idempotent)."""
        if not self.settings.mlflow.enabled:
            return
        checkpoint = ledger.get(version)
        if checkpoint is None or version not in self._stored(model_id):
            return
        if checkpoint.registered and not restored:
            return
        if self.registrar is None:
            self.registrar = Registrar(self.settings)
        self.registrar.submit(
            Registration(
                model_id,
                version,
                bytes(self.weights.get(version)),
                ledger.spec_json,
                checkpoint.samples_applied,
                checkpoint.metrics(),
                restored,
            )
        )


def _millionths(value: float) -> int:
    return int(value * 1e6) if value == value else 0
