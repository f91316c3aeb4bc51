"""Mini-batch trainer keyed by model id: buffers samples in managed state, trains each batch
with :class:`flowlearn.core.training.ModelTrainer`, and emits one ``VERSION_TYPE`` row a version.
Its second input carries the model's control commands (``fl.control``).

A batch is trained when it reaches the model's next batch size
(:meth:`flowlearn.core.training.ModelTrainer.next_batch_size`: the spec's ``batch_size``, else
``job.batch_size``, and fewer while the model is young) samples, or ``job.batch_timeout_ms``
(processing time) after its first sample, whichever comes first. At the end of a bounded
input the remaining partial batch is trained too (an event-time timer at the largest
timestamp, which only the final watermark reaches). The last ``job.keep_versions`` versions'
weights stay in state, and those of the last ``job.keep_checkpoints`` checkpoint versions
(every ``job.checkpoint_every_versions``-th), so that ``rollback`` needs no restart.

A JSON sample with an ``event_id`` is trained at most once: the trainer remembers the ids of
each model's samples over ``job.sample_dedupe_window_ms`` of event time
(:class:`flowlearn.core.dedupe.SeenIds`; buffered ids travel in the buffer's rows, trained ones
are written once per batch) and counts a repeated id as a duplicate.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
from pyflink.common import Types
from pyflink.datastream import KeyedCoProcessFunction, OutputTag, RuntimeContext

from flowlearn.conf import ConfigError, Settings
from flowlearn.contracts.records import alert_record, dlq_record, encode_sample_batch, now_ms
from flowlearn.contracts.spec import DELETED, ModelSpecs, create_applies
from flowlearn.core import codec
from flowlearn.core.control import LIFECYCLE_COMMANDS, apply_command, command_detail
from flowlearn.core.dedupe import SeenIds
from flowlearn.core.model_types import model_type
from flowlearn.core.retention import Retention
from flowlearn.core.sparse import (
    Rows,
    SparseRows,
    concat_rows,
    from_fields,
    leading_columns,
    to_fields,
)
from flowlearn.core.spec import learning_rates
from flowlearn.core.training import ModelTrainer, ModelVersion
from flowlearn.core.validation import StateMismatch
from flowlearn.operators.hot_models import HotModels
from flowlearn.operators.keyed_specs import KeyedSpecs
from flowlearn.operators.model_metrics import ModelMetrics, TimerHeld
from flowlearn.operators.parse import DLQ_TAG, runtime_entry_of
from flowlearn.operators.types import (
    EVAL_TYPE,
    ControlCommand,
    Evaluated,
    Samples,
    Version,
)
from flowlearn.state import descriptors
from flowlearn.state.descriptors import (
    BufferedSamples,
    BufferedSamplesV1,
    BufferedSamplesV2,
    BufferedSamplesV3,
    SeenBatch,
)
from flowlearn.state.rows import to_row

#: Per-feature gauges (missing values filled) are registered for at most this many features.
MAX_FEATURE_GAUGES = 256
#: Fires only when the final watermark (end of a bounded input) arrives.
END_OF_INPUT = (1 << 63) - 2

#: Alerts (JSON strings in the ``fl.alerts`` format, docs/architecture.md).
ALERT_TAG = OutputTag("alerts", Types.STRING())
#: Every new version as the drift and checkpoint operators see it (EVAL_TYPE).
EVAL_TAG = OutputTag("eval", EVAL_TYPE)


class _KeptVersions:
    """The weights kept for rollbacks (``flowlearn.core.retention``), in the current key's
    map states, as :class:`flowlearn.core.control.KeptWeights`."""

    def __init__(self, recent: Any, checkpoints: Any) -> None:
        self.recent, self.checkpoints = recent, checkpoints

    def weights(self, version: int) -> bytes | None:
        for kept in (self.recent, self.checkpoints):
            if kept.contains(version):
                return bytes(kept.get(version))
        return None

    def versions(self) -> list[int]:
        return sorted({*self.recent.keys(), *self.checkpoints.keys()})


class MiniBatchTrainer(KeyedCoProcessFunction):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.specs = ModelSpecs(settings)
        job = settings.job
        self.retention = Retention(
            job.keep_versions, job.checkpoint_every_versions, job.keep_checkpoints
        )

    def open(self, runtime_context: RuntimeContext) -> None:
        self.model_state = runtime_context.get_state(descriptors.MODEL_STATE)
        self.version_state = runtime_context.get_state(descriptors.MODEL_VERSION)
        self.applied_state = runtime_context.get_state(descriptors.SAMPLES_APPLIED)
        self.buffer = runtime_context.get_list_state(descriptors.BATCH_BUFFER)
        self.buffer_v1 = runtime_context.get_list_state(descriptors.BATCH_BUFFER_V1)
        self.buffer_v2 = runtime_context.get_list_state(descriptors.BATCH_BUFFER_V2)
        self.buffer_v3 = runtime_context.get_list_state(descriptors.BATCH_BUFFER_V3)
        self.seen_state = runtime_context.get_map_state(descriptors.SEEN_SAMPLE_IDS)
        self.recent = runtime_context.get_map_state(descriptors.RECENT_VERSIONS)
        self.checkpoints = runtime_context.get_map_state(descriptors.CHECKPOINT_VERSIONS)
        self.kept = _KeptVersions(self.recent, self.checkpoints)
        self.paused = runtime_context.get_state(descriptors.PAUSED)
        self.model_specs = KeyedSpecs(self.specs, runtime_context)
        self.infers = self.settings.job.unknown_model_policy == "infer"
        #: The spec the "create" policy's creates carry: [model_defaults], completed.
        self.default_spec = json.loads(
            self.specs.runtime_entry(self.specs.defaults.as_dict(), "model_defaults")
        )
        # Caches, rebuilt from state after every (re)start and for a model dropped from
        # memory (HotModels). A restored partial batch still has its flush timer: Flink
        # restores timers with the state.
        self.trainers: dict[str, ModelTrainer] = {}
        self.buffered: dict[str, int] = {}
        self.seen: dict[str, SeenIds] = {}
        self.flush_at: dict[str, int] = {}
        # Counted in a timer callback (a batch the timeout flushed): held until the next record.
        self.held = TimerHeld()
        group = runtime_context.get_metrics_group()
        self.per_model = ModelMetrics(
            group,
            (
                "samples_trained",
                "versions",
                "gate_rejected",
                "grad_clipped",
                "duplicate_samples",
                "paused_overflow",
            ),
            self.settings.job,
            self.held,
        )
        # Nothing is lost when a model's entries go: state holds everything they do once a
        # record, timer or command is handled (_save after every change).
        self.hot = HotModels(
            self.settings.job.hot_models,
            self.per_model.is_labelled,
            (self.trainers, self.buffered, self.seen),
        )
        held = self.held.wrap
        self.duplicates = held(group.counter("duplicate_samples"))
        self.buffered_overflow = held(group.counter("paused_overflow"))
        self.model_loss: dict[str, float] = {}
        self.samples_trained = held(group.counter("samples_trained"))
        self.versions_made = held(group.counter("versions"))
        self.rejected = held(group.counter("gate_rejected"))
        self.commands = held(group.counter("control_commands"))
        self.last_loss = 0.0
        group.gauge("prequential_loss", lambda: int(self.last_loss * 1e6))

    def _version_of(self, model_id: str) -> int:
        trainer = self.trainers.get(model_id)
        return 0 if trainer is None else trainer.version

    def _trainer(self, model_id: str) -> ModelTrainer:
        trainer = self.trainers.get(model_id)
        if trainer is None:
            spec = self.model_specs.spec_of(model_id)
            state = self.model_state.value()
            if state is None:
                trainer = ModelTrainer.create(model_id, spec.as_dict())
            else:
                trainer = ModelTrainer.restore(
                    model_id,
                    spec.as_dict(),
                    bytes(state),
                    self.version_state.value() or 0,
                    self.applied_state.value() or 0,
                )
            self.trainers[model_id] = trainer
            if model_id not in self.model_loss:  # gauges once per model and process
                self.model_loss[model_id] = 0.0
                # A deleted model's gauges stay registered (Flink cannot drop them) and read 0.
                self.per_model.gauge(model_id, "version", lambda: self._version_of(model_id))
                # Gauges are integers in PyFlink: the loss in millionths.
                self.per_model.gauge(
                    model_id,
                    "prequential_loss",
                    lambda: int(self.model_loss[model_id] * 1e6),
                )
                self._missing_value_gauges(model_id, trainer)
        return trainer

    def _missing_value_gauges(self, model_id: str, trainer: ModelTrainer) -> None:
        """``missing_values{model, feature}``: training values the pipeline had to fill, per
        feature of a dense model (up to MAX_FEATURE_GAUGES features)."""
        features = trainer.model.features
        if trainer.spec.get("features") != "dense":
            return
        names = features.names or tuple(str(i) for i in range(features.n_features))
        for col, name in enumerate(names[:MAX_FEATURE_GAUGES]):

            def read(col: int = col) -> int:
                trainer = self.trainers.get(model_id)
                if trainer is None:
                    return 0
                missing = trainer.model.features.missing
                return int(missing[col]) if col < len(missing) else 0

            self.per_model.feature_gauge(model_id, name, "missing_values", read)

    # ------------------------------------------------------------------ samples

    def _load(self, model_id: str) -> None:
        """The model's first touch after a (re)start: count the restored buffer and rebuild
        its seen ids; move the rows of an older buffer (``batch-buffer-v1`` to ``-v3``) over."""
        old = [BufferedSamplesV1._make(r).upgraded() for r in self.buffer_v1.get()]
        old += [BufferedSamplesV2._make(r).upgraded() for r in self.buffer_v2.get()]
        old += [BufferedSamplesV3._make(r).upgraded() for r in self.buffer_v3.get()]
        if old:
            self.buffer.add_all([to_row(r) for r in old])
            self.buffer_v1.clear()
            self.buffer_v2.clear()
            self.buffer_v3.clear()
        rows = [BufferedSamples._make(r) for r in self.buffer.get()]
        self.buffered[model_id] = sum(len(row.labels) for row in rows)
        batches = {int(seq): SeenBatch._make(v) for seq, v in self.seen_state.items()}
        self.seen[model_id] = SeenIds(
            self.settings.job.sample_dedupe_window_ms,
            {seq: (int(b.ts), list(b.ids)) for seq, b in batches.items()},
            [(event_id, int(row.ts)) for row in rows for event_id in row.event_ids if event_id],
        )

    def process_element1(self, value: Any, ctx: KeyedCoProcessFunction.Context) -> Iterator[Any]:
        # By field order: a Row handed over inside a fused Python chain has no names.
        model_id, ts, features, labels, event_ids, indices, offsets = Samples._make(value)
        self.held.release()
        self.hot.touch(model_id)
        row = BufferedSamples(ts, list(features), list(labels), [], list(indices), list(offsets))
        refused = self._misfit(model_id, row)
        if refused is not None:
            yield from self._refuse(model_id, row, *refused)
            return
        if model_id not in self.buffered:
            self._load(model_id)
        row = row._replace(event_ids=list(event_ids))
        if event_ids and self.settings.job.sample_dedupe_window_ms:
            seen = self.seen[model_id]
            keep = [
                i for i, event_id in enumerate(event_ids) if not event_id or seen.add(event_id, ts)
            ]
            if len(keep) < len(labels):
                self.duplicates.inc(len(labels) - len(keep))
                self.per_model.inc(model_id, "duplicate_samples", len(labels) - len(keep))
                if not keep:
                    return
                row = _kept(row, keep)
        self.buffer.add(to_row(row))
        count = self.buffered[model_id] + len(row.labels)
        self.buffered[model_id] = count
        if self.model_specs.model_spec(model_id) is None:
            # Held: a parser inferred the model's spec, its create is on the way.
            yield from self._bound_waiting(model_id)
            return
        if self.paused.value():
            yield from self._bound_waiting(model_id)
            return
        if count >= self._trainer(model_id).next_batch_size():
            yield from self._flush(model_id, ctx, whole=False)
        elif count == len(row.labels):  # a new batch: bound its latency
            self._time_out_batch(model_id, ctx)

    def _bound_waiting(self, model_id: str) -> Iterator[Any]:
        """A waiting model's buffer past ``job.paused_buffer_samples``: its oldest rows (whole,
        as parsers made them) to the DLQ as ``paused_overflow``, counted, until it fits."""
        limit = self.settings.job.paused_buffer_samples
        if self.buffered[model_id] <= limit:
            return
        rows = [BufferedSamples._make(r) for r in self.buffer.get()]
        count, drop = self.buffered[model_id], 0
        while drop < len(rows) and count > limit:
            count -= len(rows[drop].labels)
            drop += 1
        self.buffer.update([to_row(r) for r in rows[drop:]])
        self.buffered[model_id] = count
        overflow = self.buffered_overflow
        for row in rows[:drop]:
            overflow.inc(len(row.labels))
            self.per_model.inc(model_id, "paused_overflow", len(row.labels))
            yield from self._refuse(
                model_id,
                row,
                "paused_overflow",
                f"model '{model_id}' waits (paused, or its spec is on the way) with more than "
                f"job.paused_buffer_samples = {limit} samples buffered: the oldest go here",
            )

    def _misfit(self, model_id: str, row: BufferedSamples) -> tuple[str, str] | None:
        """Why samples the parser let through do not fit the model here, or None. It
        happens only around a ``create`` or ``delete``: the parser and the trainer hear of
        it on two paths, and a record checked under the one spec can reach the trainer
        under the other."""
        spec = self.model_specs.model_spec(model_id)
        if spec is None:
            if self.infers:  # held in the buffer until the model's inferred create comes
                return None
            return "unknown_model", f"no spec for model '{model_id}' (it was deleted)"
        try:
            width = self._trainer(model_id).model.sample_width
        except StateMismatch as exc:
            return "spec_changed", _spec_changed(exc)
        problem = _unfit(row, width, spec.features == "hashed")
        if problem is not None:
            return (
                "bad_features",
                f"{problem}: checked under another spec of the model (a create or "
                "delete around the record, or conf/ changed; a reset gives the model its "
                "spec's shape)",
            )
        return None

    def _refuse(
        self, model_id: str, row: BufferedSamples, reason: str, detail: str
    ) -> Iterator[Any]:
        """Samples to the DLQ, whole, as a bulk record (a parser's row holds whole samples;
        a hashed model's stay sparse: :func:`flowlearn.contracts.records.encode_sample_batch`)."""
        n = len(row.labels)
        if row.offsets:
            width = max(row.indices, default=0) + 1  # what they hold: they may fit no model
            X: Rows = SparseRows(row.offsets, row.indices, row.features, width)
        else:
            X = np.asarray(row.features, dtype=np.float64).reshape(n, -1)
        raw = encode_sample_batch(model_id, np.full(n, row.ts), X, np.asarray(row.labels))
        yield DLQ_TAG, dlq_record("trainer", reason, raw, now_ms(), detail)

    def _time_out_batch(self, model_id: str, ctx: Any) -> None:
        at = ctx.timer_service().current_processing_time() + self.settings.job.batch_timeout_ms
        ctx.timer_service().register_processing_time_timer(at)
        ctx.timer_service().register_event_time_timer(END_OF_INPUT)
        self.flush_at[model_id] = at

    def on_timer(self, timestamp: int, ctx: KeyedCoProcessFunction.OnTimerContext) -> Iterator[Any]:
        model_id = ctx.get_current_key()
        self.hot.touch(model_id)
        with self.held.timer():
            yield from self._flush(model_id, ctx, whole=True)

    def _flush(self, model_id: str, ctx: Any, whole: bool) -> Iterator[Any]:
        """Train the buffer: all of it (``whole``: the batch timed out, the input ended,
        training resumed), else its full batches, the rest waiting for more. Batches are then
        the same however the samples were bundled on the way (each batch's size is asked of
        the trainer after the one before)."""
        if self.paused.value():
            return  # samples wait in the buffer until `resume`
        pending = self.flush_at.pop(model_id, None)
        if pending is not None:
            ctx.timer_service().delete_processing_time_timer(pending)
        if model_id not in self.buffered:
            self._load(model_id)
        rows = [BufferedSamples._make(r) for r in self.buffer.get()]
        self.buffer.clear()
        self.buffered[model_id] = 0
        if not rows:
            return
        try:
            trainer = self._trainer(model_id)
        except StateMismatch as exc:  # buffered before conf/ changed the model's type
            for row in rows:
                yield from self._refuse(model_id, row, "spec_changed", _spec_changed(exc))
            return
        X = _batch(rows, trainer.model.sample_width, trainer.spec.get("features") == "hashed")
        y = np.concatenate([np.asarray(r.labels, dtype=np.float64) for r in rows])
        sealed = self.seen[model_id].seal()
        if sealed is not None:
            seq, newest, ids, expired = sealed
            self.seen_state.put(seq, to_row(SeenBatch(newest, ids)))
            for old in expired:
                self.seen_state.remove(old)
        # One version per batch: a bulk record may hold several batches.
        start = 0
        while start < len(y):
            end = start + trainer.next_batch_size()
            if end > len(y) and not whole:
                break
            X_batch, y_batch = X[start:end], y[start:end]
            start += len(y_batch)
            result = trainer.train_batch(X_batch, y_batch)
            self.last_loss = result.prequential_loss
            if result.version is None:
                # Safety gate: the batch is kept, whole, in the DLQ (as a bulk record).
                self.rejected.inc()
                self.per_model.inc(model_id, "gate_rejected")
                yield (
                    DLQ_TAG,
                    dlq_record(
                        "trainer",
                        "gate_rejected",
                        encode_sample_batch(
                            model_id,
                            np.full(len(y_batch), max(r.ts for r in rows)),
                            X_batch,
                            y_batch,
                        ),
                        now_ms(),
                        result.rejected or "",
                    ),
                )
                yield (
                    ALERT_TAG,
                    alert_record(
                        model_id,
                        "gate_rejected",
                        {
                            "reason": result.rejected,
                            "samples": len(y_batch),
                            "version": trainer.version,
                        },
                    ),
                )
                continue
            self.samples_trained.inc(len(y_batch))
            self.per_model.inc(model_id, "samples_trained", len(y_batch))
            if result.clipped:
                self.per_model.inc(model_id, "grad_clipped")
            self.model_loss[model_id] = result.prequential_loss
            monitored = leading_columns(X_batch, self.settings.job.drift_features_monitored)
            yield from self._emit(
                trainer, result.version, "train", result.errors, result.losses, monitored
            )
        if start < len(y):  # not a full batch yet: it waits, its latency bounded
            self.buffer.add(to_row(_tail(rows, start, X, y)))
            self.buffered[model_id] = len(y) - start
            self._time_out_batch(model_id, ctx)
        self._save(trainer)

    # ------------------------------------------------------------------ versions

    def _emit(
        self,
        trainer: ModelTrainer,
        mv: ModelVersion,
        kind: str,
        errors: np.ndarray | None = None,
        losses: np.ndarray | None = None,
        monitored: np.ndarray | None = None,
        spec: str = "",
    ) -> Iterator[Any]:
        """The version row, and its view for the monitoring operators; keeps the weights
        for rollbacks. ``spec`` is a "create" row's runtime entry."""
        self.versions_made.inc()
        self.per_model.inc(mv.model_id, "versions")
        weights = codec.encode_array(trainer.model.weights_vector())
        self.recent.put(mv.version, weights)
        dropped = self.retention.recent_dropped_by(mv.version)
        if self.recent.contains(dropped):
            self.recent.remove(dropped)
        is_checkpoint = self.retention.is_checkpoint(mv.version)
        if is_checkpoint:
            self.checkpoints.put(mv.version, weights)
            dropped = self.retention.checkpoint_dropped_by(mv.version)
            if self.checkpoints.contains(dropped):
                self.checkpoints.remove(dropped)
        if monitored is None:
            monitored = np.zeros((0, 0))
        yield (
            EVAL_TAG,
            to_row(
                Evaluated(
                    mv.model_id,
                    mv.version,
                    kind,
                    mv.samples_applied,
                    [] if errors is None else errors.tolist(),
                    [] if losses is None else losses.tolist(),
                    monitored.ravel().tolist(),
                    monitored.shape[1],
                    weights if is_checkpoint and not spec else b"",
                    spec or (mv.spec_json if is_checkpoint else ""),
                )
            ),
        )
        yield to_row(Version.of(mv))

    def _baseline_weights(self, model_id: str, version: int) -> np.ndarray:
        """A registered baseline's weights (imports mlflow on first use: seconds, once)."""
        from flowlearn.registry.mlflow_store import Registry

        registry = Registry.from_settings(self.settings)
        return codec.decode_array(registry.load_weights(model_id, version, kind="baseline"))

    def _save(self, trainer: ModelTrainer) -> None:
        self.model_state.update(trainer.state_bytes())
        self.version_state.update(trainer.version)
        self.applied_state.update(trainer.samples_applied)

    # ------------------------------------------------------------------ control

    def process_element2(self, value: Any, ctx: KeyedCoProcessFunction.Context) -> Iterator[Any]:
        command = ControlCommand._make(value)
        model_id = command.model_id
        self.held.release()
        self.hot.touch(model_id)
        self.commands.inc()
        if command.command in LIFECYCLE_COMMANDS:
            yield from self._lifecycle(command, ctx)
            return
        if self.model_specs.model_spec(model_id) is None:
            yield ALERT_TAG, alert_record(model_id, "control", _refusal(command, _NO_SUCH_MODEL))
            return
        try:
            trainer = self._trainer(model_id)
        except StateMismatch as exc:
            yield from self._unloadable(command, exc)
            return
        outcome = apply_command(
            trainer,
            command.command,
            json.loads(command.args),
            command.source,
            self.kept,
            lambda version: self._baseline_weights(model_id, version),
        )
        if outcome.ok:
            if outcome.paused is not None:
                self.paused.update(outcome.paused)
            if outcome.flush:
                yield from self._flush(model_id, ctx, whole=True)
            if outcome.new_version is not None:
                yield from self._emit(trainer, outcome.new_version, outcome.eval_kind)
            if outcome.republish is not None:
                yield to_row(Version.of(outcome.republish))
            if outcome.pin is not None:
                yield to_row(
                    Version.pinning(
                        model_id, outcome.pin, trainer.published_spec, outcome.pin_weights
                    )
                )
            self._save(trainer)
        yield ALERT_TAG, alert_record(model_id, outcome.alert_kind, outcome.detail)

    def _unloadable(self, command: ControlCommand, exc: StateMismatch) -> Iterator[Any]:
        """A command for a model whose saved state is of another type than its spec's
        (conf/ changed it): a ``reset`` replaces the model with its spec's, going on from its
        version and sample count; anything else is refused with the reason."""
        model_id = command.model_id
        if command.command != "reset":
            refusal = _refusal(command, _spec_changed(exc))
            yield ALERT_TAG, alert_record(model_id, "control", refusal)
            return
        version, applied = self._counters(model_id)
        trainer, mv = ModelTrainer.replacing(
            model_id, self.model_specs.spec_of(model_id).as_dict(), version, applied
        )
        self.trainers[model_id] = trainer
        yield from self._emit(trainer, mv, "reset")
        self._save(trainer)
        detail = {**_detail(command), "ok": True, "new_version": mv.version}
        yield ALERT_TAG, alert_record(model_id, "control", detail)

    def _counters(self, model_id: str) -> tuple[int, int]:
        """The current key's model's version and samples applied, whether or not its
        trainer can be built."""
        trainer = self.trainers.get(model_id)
        if trainer is not None:
            return trainer.version, trainer.samples_applied
        return self.version_state.value() or 0, self.applied_state.value() or 0

    # ------------------------------------------------------------------ lifecycle

    def _has_model(self, model_id: str) -> bool:
        """Whether the model exists here: with a live runtime entry, trained, with samples
        waiting, or with a ``[models.ID]`` table (and no entry)."""
        entry = self.model_specs.runtime_entry()
        if entry is not None:
            return entry != DELETED
        return self._trained_or_waiting() or model_id in self.specs.models

    def _trained_or_waiting(self) -> bool:
        """Whether the current key's model has a trained state or samples in its buffer."""
        return (
            self.model_state.value() is not None
            or next(iter(self.buffer.get()), None) is not None  # an iterable, not a list
        )

    def _lifecycle(self, command: ControlCommand, ctx: Any) -> Iterator[Any]:
        """``create``, ``update`` and ``delete`` (docs/models.md): the answer is an alert,
        ok or with the reason it was refused; a refused command changes nothing."""
        model_id = command.model_id
        if command.command == "update":
            if json.loads(command.args).get("reset") is True:
                yield from self._reshape(command, ctx)
            else:
                yield from self._update(command)
            return
        if command.command == "delete":
            # Applied whatever the answer, as the parsers apply it: a deleted and an unknown
            # model are alike.
            if self._has_model(model_id):
                yield from self._delete(model_id, ctx)
                detail = {**_detail(command), "ok": True}
            else:  # nothing to drop, anywhere; the entry is the parsers' (see _has_model)
                self.model_specs.set_entry(model_id, DELETED)
                detail = _refusal(command, _NO_SUCH_MODEL)
            yield ALERT_TAG, alert_record(model_id, "control", detail)
            return
        entry = runtime_entry_of(command)
        by_policy = self._by_create_policy(entry)
        if by_policy and self._trains_without_entry(model_id):
            # The policy's record of a model that its first records already made here,
            # under the same [model_defaults]: kept as it is, not started again. Nothing
            # changed, so nothing to answer (the parsers send one for each new model).
            self.model_specs.adopt(model_id, entry)
            return
        applies = create_applies(self.model_specs.runtime_entry(), entry)
        if applies is None and by_policy:
            return  # another parser's create of the same model: nothing changed either
        if not applies:
            detail = (
                {**_detail(command), "ok": True, "existed": True}
                if applies is None
                else _refusal(
                    command,
                    f"model '{model_id}' exists with another spec; `flowlearn models delete` "
                    "it first",
                )
            )
            yield ALERT_TAG, alert_record(model_id, "control", detail)
            return
        replaced = self.model_state.value() is not None  # trained under conf/ or the defaults
        replaced_version = self.version_state.value() or 0
        waiting = [BufferedSamples._make(r) for r in self.buffer.get()]
        self._forget(model_id, ctx)
        self.model_specs.set_entry(model_id, entry)
        trainer = self._trainer(model_id)
        mv = trainer.reset()  # version 1: the untrained model, served from now on
        yield from self._emit(trainer, mv, "create", spec=entry)
        self._save(trainer)
        yield from self._take_waiting(model_id, waiting, ctx)
        detail = {**_detail(command), "ok": True, "new_version": 1}
        if replaced:
            detail["replaced_version"] = replaced_version
        yield ALERT_TAG, alert_record(model_id, "control", detail)

    def _by_create_policy(self, entry: str) -> bool:
        """Whether a create's ``entry`` is the one the "create" policy gives a new model
        (``[model_defaults]``; the parsers send one for each new model id, so that
        ``job.max_models`` counts it). Told by the spec, not by the record's free-text
        ``source``, so that no other create can pass for one."""
        return self.specs.policy == "create" and json.loads(entry) == self.default_spec

    def _trains_without_entry(self, model_id: str) -> bool:
        """Whether the current key's model trains (or has samples waiting) under the spec
        ``conf/`` or the policy gives it, without a runtime entry, and no ``[models.ID]``."""
        return (
            not self.model_specs.runtime_entry()
            and model_id not in self.specs.models
            and self._trained_or_waiting()
        )

    def _take_waiting(
        self, model_id: str, waiting: list[BufferedSamples], ctx: Any
    ) -> Iterator[Any]:
        """Samples that waited in the buffer across a create (held until an inferred spec
        came, or short of a batch): those of the new shape are trained as they would have
        been, the others dead-lettered whole."""
        width = self._trainer(model_id).model.sample_width
        hashed = self.model_specs.spec_of(model_id).features == "hashed"
        fit = []
        for row in waiting:
            problem = _unfit(row, width, hashed)
            if problem is None:
                fit.append(row)
            else:
                detail = f"{problem}: buffered before the model's create"
                yield from self._refuse(model_id, row, "bad_features", detail)
        if fit:
            self.buffer.add_all([to_row(row) for row in fit])
            self._load(model_id)
            yield from self._flush(model_id, ctx, whole=False)

    def _update(self, command: ControlCommand) -> Iterator[Any]:
        """An ``update`` without ``reset``: the model's live fields changed. The trainer is
        rebuilt around its state under the new spec (batch size, holdout, replay), its
        learning rate set if it changed, and a new version (same weights) records it."""
        model_id = command.model_id
        if not self._has_model(model_id) or self.model_specs.model_spec(model_id) is None:
            yield ALERT_TAG, alert_record(model_id, "control", _refusal(command, _NO_SUCH_MODEL))
            return
        changes = json.loads(command.args)["changes"]
        spec = self.model_specs.spec_of(model_id)
        try:
            new_spec = json.loads(self.specs.updated_entry(spec, changes))
            if "learning_rate" in changes and model_type(spec.type).self_tuning:
                raise ValueError(
                    f"a {spec.type} model trains at its learning_rates, not one learning_rate"
                )
        except (ConfigError, ValueError) as exc:
            yield ALERT_TAG, alert_record(model_id, "control", _refusal(command, str(exc)))
            return
        try:
            old = self._trainer(model_id)
        except StateMismatch as exc:
            refusal = _refusal(command, _spec_changed(exc))
            yield ALERT_TAG, alert_record(model_id, "control", refusal)
            return
        trainer = ModelTrainer.restore(
            model_id, new_spec, old.state_bytes(), old.version, old.samples_applied
        )
        if "learning_rate" in changes:
            trainer.set_learning_rate(learning_rates(new_spec)[0])
        self.trainers[model_id] = trainer
        live = {**self.model_specs.live_changes(), **changes}
        self.model_specs.set_changes(model_id, live)
        mv = trainer.restore_weights(trainer.model.weights_vector())
        yield from self._emit(trainer, mv, "update", spec=json.dumps(live, sort_keys=True))
        self._save(trainer)
        detail = {**_detail(command), "ok": True, "new_version": mv.version, "spec": new_spec}
        yield ALERT_TAG, alert_record(model_id, "control", detail)

    def _reshape(self, command: ControlCommand, ctx: Any) -> Iterator[Any]:
        """An ``update`` with ``reset``: any field may change, so the model starts again,
        untrained, under the new spec (its earlier live changes taken in), at the next
        version number. Its kept versions and checkpoints go (they have the old shape), and
        so does its pin; samples waiting in the buffer are trained if they fit the new
        shape, dead-lettered otherwise. The parsers apply the same change
        (:meth:`flowlearn.contracts.spec.ModelSpecs.reset_entry`)."""
        model_id = command.model_id
        changes = json.loads(command.args)["changes"]
        try:
            entry = self.specs.reset_entry(
                model_id,
                self.model_specs.runtime_entry(),
                changes,
                self.model_specs.live_changes(),
            )
        except ConfigError as exc:
            yield ALERT_TAG, alert_record(model_id, "control", _refusal(command, str(exc)))
            return
        if entry is None:
            yield ALERT_TAG, alert_record(model_id, "control", _refusal(command, _NO_SUCH_MODEL))
            return
        version, applied = self._counters(model_id)
        waiting = [BufferedSamples._make(r) for r in self.buffer.get()]
        self._forget(model_id, ctx)
        self.model_specs.set_entry(model_id, entry)
        trainer, mv = ModelTrainer.replacing(
            model_id, self.model_specs.spec_of(model_id).as_dict(), version, applied
        )
        self.trainers[model_id] = trainer
        yield from self._emit(trainer, mv, "create", spec=entry)
        yield to_row(Version.pinning(model_id, 0))
        self._save(trainer)
        yield from self._take_waiting(model_id, waiting, ctx)
        detail = {
            **_detail(command),
            "ok": True,
            "from_version": mv.version - 1,
            "new_version": mv.version,
            "spec": json.loads(entry),
        }
        yield ALERT_TAG, alert_record(model_id, "control", detail)

    def _delete(self, model_id: str, ctx: Any) -> Iterator[Any]:
        """Drop everything kept of the model; the publisher removes it from Redis and the
        monitoring operators forget it too. Its later records follow
        ``job.unknown_model_policy``."""
        self._forget(model_id, ctx)
        self.model_specs.set_entry(model_id, DELETED)
        yield to_row(Version.deletion(model_id))
        yield EVAL_TAG, to_row(Evaluated(model_id, 0, "delete", 0, [], [], [], 0, b"", DELETED))

    def _forget(self, model_id: str, ctx: Any) -> None:
        """The current key's training state and caches cleared, its pending timer deleted
        (its spec is the caller's to set)."""
        for state in (
            self.model_state,
            self.version_state,
            self.applied_state,
            self.buffer,
            self.buffer_v1,
            self.buffer_v2,
            self.buffer_v3,
            self.seen_state,
            self.recent,
            self.checkpoints,
            self.paused,
        ):
            state.clear()
        pending = self.flush_at.pop(model_id, None)
        if pending is not None:
            ctx.timer_service().delete_processing_time_timer(pending)
        for cache in (self.trainers, self.buffered, self.seen):
            cache.pop(model_id, None)
        if model_id in self.model_loss:  # its gauges stay registered: Flink cannot drop them
            self.model_loss[model_id] = 0.0


_NO_SUCH_MODEL = "no such model: nothing trained, buffered or specified for it"


def _detail(command: ControlCommand) -> dict[str, Any]:
    return command_detail(command.command, json.loads(command.args), command.source)


def _spec_changed(exc: StateMismatch) -> str:
    return (
        f"the model's saved state is of another type than its spec's ({exc}): conf/ changed "
        "its type since it trained; a reset gives the model its spec's type"
    )


def _refusal(command: ControlCommand, reason: str) -> dict[str, Any]:
    return {**_detail(command), "ok": False, "reason": reason}


def _kept(row: BufferedSamples, keep: list[int]) -> BufferedSamples:
    """The buffer row with only its samples ``keep`` (in order), dense or sparse."""
    n = len(row.labels)
    if row.offsets:
        o = row.offsets
        spans = [(o[i], o[i + 1]) for i in keep]
        offsets = [0]
        for lo, hi in spans:
            offsets.append(offsets[-1] + hi - lo)
        features = [x for lo, hi in spans for x in row.features[lo:hi]]
        indices = [c for lo, hi in spans for c in row.indices[lo:hi]]
    else:
        width = len(row.features) // n
        features = [x for i in keep for x in row.features[i * width : (i + 1) * width]]
        indices, offsets = [], []
    ids = [row.event_ids[i] for i in keep] if row.event_ids else []
    return BufferedSamples(row.ts, features, [row.labels[i] for i in keep], ids, indices, offsets)


def _unfit(row: BufferedSamples, width: int, hashed: bool) -> str | None:
    """Why a buffer row's samples are no rows of a model of ``width`` values a sample (a
    hashed model's: sparse, or dense as older state holds them), or None."""
    n = len(row.labels)
    if row.offsets:
        if not hashed:
            return f"expected {width} values a sample (the model's shape), got sparse rows"
        try:
            from_fields(row.features, row.indices, row.offsets, width)
        except ValueError as exc:
            return f"sparse rows that do not fit the model's {width} columns ({exc})"
        return None if len(row.offsets) == n + 1 else f"{len(row.offsets) - 1} rows, {n} labels"
    if len(row.features) != width * n:
        return (
            f"expected {width} values a sample (the model's shape), got {len(row.features)} "
            f"for {n} samples"
        )
    return None


def _batch(rows: list[BufferedSamples], width: int, hashed: bool) -> Rows:
    """The buffer rows' samples in order: one dense matrix, or a hashed model's sparse rows
    (dense rows of older state taken sparse)."""
    if not hashed:
        return np.concatenate([np.asarray(r.features, dtype=np.float64) for r in rows]).reshape(
            -1, width
        )
    parts = [from_fields(r.features, r.indices, r.offsets, width) for r in rows]
    X = concat_rows(parts)
    return X if isinstance(X, SparseRows) else SparseRows.from_dense(X)


def _tail(rows: list[BufferedSamples], start: int, X: Rows, y: np.ndarray) -> BufferedSamples:
    """The buffer rows' samples from ``start`` on (X and y are the rows' samples, in order),
    as one buffer row: the latest time among the rows they came from, their event ids."""
    ts, at = -(1 << 62), 0
    ids: list[str] = []
    for row in rows:
        n = len(row.labels)
        if at + n > start:
            ts = max(ts, int(row.ts))
            skip = max(start - at, 0)
            ids.extend(row.event_ids[skip:] if row.event_ids else [""] * (n - skip))
        at += n
    values, indices, offsets = to_fields(X[start:])
    return BufferedSamples(
        ts, values, y[start:].tolist(), ids if any(ids) else [], indices, offsets
    )
