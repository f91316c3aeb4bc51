"""Parse and validate raw Kafka records; bad ones go to the DLQ side output with a reason."""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
from pyflink.common import Row, Types
from pyflink.datastream import (
    BroadcastProcessFunction,
    OutputTag,
    ProcessFunction,
    RuntimeContext,
)

from flowlearn.conf import ConfigError, Settings
from flowlearn.contracts.records import (
    MAX_EVENT_ID_CHARS,
    RecordError,
    alert_record,
    control_record,
    dlq_record,
    first_sample_shape,
    is_bandit,
    is_bulk,
    now_ms,
    parse_control,
    parse_event,
    parse_label,
    parse_sample,
    parse_sample_batch,
    record_model_id,
    valid_labels,
)
from flowlearn.contracts.spec import DELETED, ModelSpecs, create_applies
from flowlearn.core.control import changes_shape
from flowlearn.core.sparse import SparseRows, to_fields
from flowlearn.core.spec import model_id_problem
from flowlearn.operators import sample_columns
from flowlearn.operators.sample_columns import DecodedBundle
from flowlearn.operators.types import (
    ControlCommand,
    FeedbackBuilder,
    Samples,
    SamplesBuilder,
    keyed,
)
from flowlearn.state import descriptors
from flowlearn.state.rows import to_row

#: Dead-letter records (JSON strings in the ``fl.dlq`` format, docs/architecture.md).
DLQ_TAG = OutputTag("dlq", Types.STRING())
#: ``create`` commands for new models that a record named (``job.unknown_model_policy``
#: "infer": the spec its shape shows; "create": ``[model_defaults]``; JSON ``fl.control``
#: records): the job sends them to ``fl.control``, where every parser and the trainer hear
#: of the model, so that ``job.max_models`` counts it job-wide and after restarts.
INFERRED_TAG = OutputTag("inferred", Types.STRING())
#: The parsers' alerts (JSON strings in the ``fl.alerts`` format): ``model_limit``.
PARSER_ALERT_TAG = OutputTag("parser-alerts", Types.STRING())
#: A parser sends at most one ``model_limit`` alert this often (processing time), with the
#: number of records it refused since the one before: a stream of new ids is one alert a
#: minute per parser, not one per record, and remembers no ids.
MODEL_LIMIT_ALERT_INTERVAL_MS = 60_000

SpecFor = Callable[[str], Mapping[str, Any] | None]


class _ParseRecords:
    """Bundles of raw records of one topic (:func:`unbundle`) -> typed rows; anything
    unusable -> :data:`DLQ_TAG`. Subclasses say what a record gives (:meth:`parse`) and, if
    they gather rows over a bundle, what is left at its end (:meth:`end_of_bundle`)."""

    #: Metric prefix: ``<what>_parsed`` and ``<what>_dlq`` counters.
    what = "records"

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.source_topic = topic

    def open(self, runtime_context: RuntimeContext) -> None:
        group = runtime_context.get_metrics_group()
        self.parsed = group.counter(f"{self.what}_parsed")
        self.dead = group.counter(f"{self.what}_dlq")
        self.specs = ModelSpecs(self.settings)
        unknown = group.counter(f"{self.what}_unknown_features")
        #: Hears every feature name a record gives that its model does not have.
        self.on_unknown = lambda _name: unknown.inc()

    def parse(self, raw: bytes) -> Iterable[Any]:
        """The rows one record gives now (RecordError: a dead letter)."""
        raise NotImplementedError

    def end_of_bundle(self) -> Iterable[Any]:
        return ()

    def inferred_create(self, raw: bytes, error: RecordError) -> tuple[str, str] | None:
        """The model id of ``raw``, which ``error`` refused as an unknown model's, and a
        ``create`` command (JSON) for it, when the unknown-model policy makes the model;
        the record is then parsed again under the spec the create gives, and the create
        goes out only if it passes (else :meth:`withdraw`)."""
        return None

    def withdraw(self, model_id: str) -> None:
        """Forget the create :meth:`inferred_create` asked for: its record was bad anyway."""

    def alerts_for(self, error: RecordError) -> Iterable[tuple[OutputTag, str]]:
        """Alerts that the dead letter of ``error`` calls for (none, unless a subclass says)."""
        return ()

    def parse_bundle(self, bundle: bytes) -> Iterator[Any]:
        parsed = 0
        for raw in unbundle(bundle):
            parsed += yield from self.parse_record(raw)
        self.parsed.inc(parsed)
        yield from self.end_of_bundle()

    def parse_record(self, raw: bytes) -> Generator[Any, None, bool]:
        """What one record gives (its rows, or its dead letter); returns whether it parsed."""
        try:
            try:
                out = self.parse(raw)
            except RecordError as exc:
                inferred = self.inferred_create(raw, exc)
                if inferred is None:
                    raise
                model_id, create = inferred
                try:
                    out = self.parse(raw)
                except RecordError:
                    # Bad under the spec it would get too: it makes no model.
                    self.withdraw(model_id)
                    raise
                yield INFERRED_TAG, create
        except RecordError as exc:
            self.dead.inc()
            yield DLQ_TAG, dlq_record(self.source_topic, exc.reason, raw, now_ms(), exc.message)
            yield from self.alerts_for(exc)
            return False
        yield from out
        return True


class _ParseModelRecords(_ParseRecords, BroadcastProcessFunction):
    """A parser of one model's records (samples, events, labels): it checks them against the
    model's spec, which is ``conf/``'s unless a ``create`` or ``delete`` command (its
    broadcast input: every ``fl.control`` row) gave the model a runtime entry. The entries
    live in the broadcast state (:data:`flowlearn.state.descriptors.RUNTIME_SPECS`), so they
    survive restarts; a dict mirrors them for the per-record lookups.

    The same entries say how many models the job holds (configured ones and created ones,
    less the deleted): every parser sees every command, so the count is job-wide. A record
    of a new model id makes a new model (the unknown-model policy's ``create``) only below
    ``job.max_models``; past it the record is dead-lettered as ``model_limit``."""

    #: Whether this topic's records show a model's shape (samples and events do; labels
    #: carry no features).
    shows_shape = True

    def open(self, runtime_context: RuntimeContext) -> None:
        super().open(runtime_context)
        #: Spec dicts of the models with a runtime entry (None: deleted); None until the
        #: broadcast state has been read after a (re)start.
        self.runtime_dicts: dict[str, dict[str, Any] | None] | None = None
        #: Models the job holds, by the runtime entries (and conf/ for those without one).
        self.models_held = 0
        self.spec_for: SpecFor = self._spec_for
        policy = self.settings.job.unknown_model_policy
        self.infers = policy == "infer"
        #: Whether a record of a new model id makes the model (through a ``create``).
        self.creates = policy in ("create", "infer")
        #: What a label (no shape) of a model not yet created is checked against.
        self.shapeless_default = self.specs.defaults.as_dict()
        #: The spec a "create" policy's create gives a new model.
        self.default_entry = self.specs.runtime_entry(self.shapeless_default, "model_defaults")
        #: Specs of the creates this parser sent, until they come back from fl.control as
        #: runtime entries; they count as models meanwhile.
        self.requested: dict[str, dict[str, Any]] = {}
        self.max_models = self.settings.job.max_models
        self.limit_refused = runtime_context.get_metrics_group().counter(f"{self.what}_model_limit")
        #: ``model_limit`` refusals since the last alert, the latest one's model, and when
        #: the last alert was sent.
        self.refused_since_alert = 0
        self.refused_model = ""
        self.last_limit_alert_ms: int | None = None

    def check_not_ahead(self, ts: int) -> None:
        """Refuse (``bad_field``) a record dated further ahead of this operator's clock than
        ``job.out_of_orderness_ms``: a sample's ``ts`` drives its model's dedupe window (one
        from the far future would expire every id seen so far), an event's or label's the
        label join's watermark."""
        ahead = ts - now_ms()
        limit = self.settings.job.out_of_orderness_ms
        if ahead > limit:
            raise RecordError(
                "bad_field",
                f"field 'ts' is {ahead} ms ahead of the clock "
                f"(more than job.out_of_orderness_ms = {limit})",
            )

    def held_spec(self, model_id: str) -> Mapping[str, Any] | None:
        """The spec of a model the job holds (None: deleted, or never made)."""
        assert self.runtime_dicts is not None
        if model_id in self.runtime_dicts:
            return self.runtime_dicts[model_id]
        return self.specs.dict_of(model_id) if model_id in self.specs.models else None

    def _spec_for(self, model_id: str) -> Mapping[str, Any] | None:
        spec = self.held_spec(model_id)
        if spec is not None or not self.creates:
            return spec
        requested = self.requested.get(model_id)
        if requested is not None or self.shows_shape:
            return requested  # None: unknown_model, then inferred_create asks for it
        # A label makes no model, but one of a model that cannot be made waits for nothing.
        self._check_model_limit(model_id)
        return self.shapeless_default

    def _check_model_limit(self, model_id: str) -> None:
        """``model_limit`` (counted) when the job holds ``job.max_models`` models, counting
        the creates this parser sent that have not come back yet."""
        held = self.models_held + len(self.requested)
        if held >= self.max_models:
            self.limit_refused.inc()
            self.refused_since_alert += 1
            self.refused_model = model_id
            raise RecordError(
                "model_limit",
                f"model '{model_id}' is not created: the job holds {held} models, "
                f"job.max_models = {self.max_models}",
            )

    def alerts_for(self, error: RecordError) -> Iterable[tuple[OutputTag, str]]:
        if error.reason != "model_limit":
            return ()
        now = now_ms()
        last = self.last_limit_alert_ms
        if last is not None and now - last < MODEL_LIMIT_ALERT_INTERVAL_MS:
            return ()
        self.last_limit_alert_ms = now
        detail = {
            "reason": "model_limit",
            "setting": "job.max_models",
            "limit": self.max_models,
            "refused_records": self.refused_since_alert,
            "source_topic": self.source_topic,
            "detail": error.message,
        }
        self.refused_since_alert = 0
        return ((PARSER_ALERT_TAG, alert_record(self.refused_model, "model_limit", detail)),)

    def inferred_create(self, raw: bytes, error: RecordError) -> tuple[str, str] | None:
        if not (self.creates and self.shows_shape and error.reason == "unknown_model"):
            return None
        if self.infers:
            shape = first_sample_shape(raw)
            entry = None if shape is None else self.specs.inferred_entry(shape[1])
            if shape is None or entry is None:
                return None
            model_id = shape[0]
        else:  # the defaults, whatever the record shows (its parse says what is wrong)
            named = record_model_id(raw)
            if named is None:
                return None
            model_id, entry = named, self.default_entry
        self._check_model_limit(model_id)
        spec = json.loads(entry)
        self.requested[model_id] = spec
        source = self.settings.job.unknown_model_policy
        return model_id, control_record(model_id, "create", {"spec": spec}, source=source)

    def withdraw(self, model_id: str) -> None:
        self.requested.pop(model_id, None)

    def _exists(self, model_id: str) -> bool:
        assert self.runtime_dicts is not None
        if model_id in self.runtime_dicts:
            return self.runtime_dicts[model_id] is not None
        return model_id in self.specs.models

    def _learn(self, model_id: str, entry: str) -> None:
        assert self.runtime_dicts is not None
        held_before = self._exists(model_id)
        spec = self.specs.model_spec(model_id, entry) if entry else None
        self.runtime_dicts[model_id] = None if spec is None else spec.as_dict()
        self.models_held += self._exists(model_id) - held_before
        self.requested.pop(model_id, None)  # the job's answer to this parser's create

    def _restore(self, ctx: Any) -> None:
        if self.runtime_dicts is None:
            self.runtime_dicts = {}
            self.models_held = len(self.specs.models)
            for model_id, entry in ctx.get_broadcast_state(descriptors.RUNTIME_SPECS).items():
                self._learn(model_id, entry)

    def process_element(self, value: Any, ctx: BroadcastProcessFunction.ReadOnlyContext) -> Any:
        self._restore(ctx)
        yield from self.parse_bundle(bytes(value))

    def process_broadcast_element(self, value: Any, ctx: BroadcastProcessFunction.Context) -> Any:
        command = ControlCommand._make(value)
        args = json.loads(command.args)
        if not changes_shape(command.command, args):
            return
        self._restore(ctx)
        entries = ctx.get_broadcast_state(descriptors.RUNTIME_SPECS)
        current = entries.get(command.model_id) if entries.contains(command.model_id) else None
        # The trainer refuses what is refused here: the same rules, on the same entries.
        if command.command == "update":  # with reset
            try:
                entry = self.specs.reset_entry(command.model_id, current, args["changes"])
            except ConfigError:
                return
            if entry is None:
                return
        else:
            entry = runtime_entry_of(command)
            if command.command == "create" and not create_applies(current, entry):
                return
        entries.put(command.model_id, entry)
        self._learn(command.model_id, entry)
        yield from ()


def runtime_entry_of(command: ControlCommand) -> str:
    """The runtime entry a ``create`` or ``delete`` command gives its model (the parser
    left a ``create``'s spec complete and validated in its args)."""
    if command.command == "delete":
        return DELETED
    return json.dumps(json.loads(command.args)["spec"], sort_keys=True)


def unbundle(bundle: bytes) -> Iterator[bytes]:
    r"""The records of a bundle made by the Java ``RecordBundler`` (operators/java): each a
    4-byte big-endian length, then its bytes.

    >>> list(unbundle(b"\x00\x00\x00\x02hi\x00\x00\x00\x00"))
    [b'hi', b'']
    """
    view = memoryview(bundle)
    at, end = 0, len(bundle)
    while at < end:
        n = int.from_bytes(view[at : at + 4], "big")
        if at + 4 + n > end:
            raise ValueError(f"bundle of {end} bytes cut inside a record of {n} at {at}")
        yield bytes(view[at + 4 : at + 4 + n])
        at += 4 + n


class _ModelRows(NamedTuple):
    """One model's decoded records among a bundle's (:meth:`_ParseDecoded.gather_rows`)."""

    model_id: str
    #: Their indices in the bundle's decoded columns.
    records: np.ndarray
    #: Their features: dense rows of ``width`` values, row-major (none for labels).
    values: list[float]
    width: int
    #: Their event ids ("" for none).
    event_ids: list[str]


class _ParseDecoded(_ParseModelRecords):
    """A parser of a topic whose Java bundler decodes the JSON records it can read with
    certainty into columns (``SampleBundler``, ``EventBundler``, ``LabelBundler``): those
    that pass every check their own parse would make are checked and gathered as arrays
    (:meth:`taken`, :meth:`gather_decoded`); every other record is parsed alone, in its
    place among them, which gives it the reason and the dead letter it has always had."""

    #: Whether this topic's records carry a model's features (labels do not).
    reads_features = True

    def parse_bundle(self, bundle: bytes) -> Iterator[Any]:
        if sample_columns.is_decoded(bundle):
            return self.parse_decoded(sample_columns.read(bundle))
        return super().parse_bundle(bundle)

    def parse_decoded(self, bundle: DecodedBundle) -> Iterator[Any]:
        taken = self.taken(bundle)
        rows = np.flatnonzero(taken)
        records = bundle.record_index[rows]
        alone = np.ones(bundle.n_records, dtype=bool)
        alone[records] = False
        parsed = done = 0
        for record in [*np.flatnonzero(alone).tolist(), bundle.n_records]:
            upto = int(np.searchsorted(records, record))
            if upto > done:
                yield from self.gather_decoded(bundle, rows[done:upto])
                parsed += upto - done
                done = upto
            if record < bundle.n_records:
                parsed += yield from self.parse_record(bundle.record(record))
        self.parsed.inc(parsed)
        yield from self.end_of_bundle()

    def taken(self, bundle: DecodedBundle) -> np.ndarray:
        """Which decoded records pass the checks their record's parse would make: a model
        id of the pattern, a model that is not a bandit (if the records carry features: a
        dense one, and its number of features), an event id not too long, ``ts`` not ahead
        (:meth:`~_ParseModelRecords.check_not_ahead`), and the topic's own
        (:meth:`fits_topic`)."""
        taken = np.zeros(len(bundle.labels), dtype=bool)
        if not taken.size:
            return taken
        fit = (bundle.ts - now_ms() <= self.settings.job.out_of_orderness_ms) & (
            np.diff(bundle.event_id_starts) <= MAX_EVENT_ID_CHARS
        )
        n_values = np.diff(bundle.feature_starts)
        for index, model_id in enumerate(bundle.model_ids):
            spec = self.decoded_spec(model_id) if model_id_problem(model_id) is None else None
            if spec is None or is_bandit(spec):
                continue
            mine = (bundle.model_id_index == index) & fit & self.fits_topic(bundle, spec)
            if self.reads_features:
                if spec.get("features", "dense") != "dense":
                    continue
                mine &= n_values == int(spec["n_features"])
            taken |= mine
        return taken

    def decoded_spec(self, model_id: str) -> Mapping[str, Any] | None:
        """The spec decoded records of ``model_id`` are checked against (None: each is
        parsed alone)."""
        return self.spec_for(model_id)

    def fits_topic(self, bundle: DecodedBundle, spec: Mapping[str, Any]) -> np.ndarray:
        """Which decoded records pass this topic's own checks under ``spec``."""
        raise NotImplementedError

    def gather_decoded(self, bundle: DecodedBundle, rows: np.ndarray) -> Iterator[Any]:
        """What decoded records that passed (:meth:`taken`), consecutive among the
        bundle's parsed records, give: they are gathered by model (:meth:`gather_rows`)."""
        ids = bundle.model_id_index[rows]
        event_ids = bundle.event_ids.decode("ascii")
        # Models in the order they first come among these rows, as one-by-one parsing
        # meets them (Java numbers them by their first decoded record, taken or not).
        _, first = np.unique(ids, return_index=True)
        for index in ids[np.sort(first)].tolist():
            mine = rows[ids == index]
            values: list[float] = []
            width = 0
            if self.reads_features:
                starts = bundle.feature_starts[mine]
                width = int(bundle.feature_starts[mine[0] + 1] - starts[0])
                values = bundle.features[starts[:, None] + np.arange(width)].ravel().tolist()
            if event_ids:
                bounds = bundle.event_id_starts
                ids_of = [event_ids[bounds[i] : bounds[i + 1]] for i in mine.tolist()]
            else:
                ids_of = [""] * len(mine)
            yield from self.gather_rows(
                bundle, _ModelRows(bundle.model_ids[index], mine, values, width, ids_of)
            )

    def gather_rows(self, bundle: DecodedBundle, rows: _ModelRows) -> Iterator[Any]:
        """Gather one model's decoded ``rows``; what was gathered of another shape goes out
        first."""
        raise NotImplementedError


class ParseSamples(_ParseDecoded):
    """Bundles of ``fl.samples`` records (JSON, or bulk Arrow IPC; see :func:`unbundle`) ->
    ``KEYED_SAMPLE_TYPE`` pairs (model id, ``SAMPLE_TYPE`` row): a row per bulk record, and
    one for the JSON samples of each model in the bundle. A model's samples keep their order.
    """

    what = "samples"

    def open(self, runtime_context: RuntimeContext) -> None:
        super().open(runtime_context)
        #: The bundle's JSON samples so far, by model.
        self.gathered: dict[str, SamplesBuilder] = {}

    def fits_topic(self, bundle: DecodedBundle, spec: Mapping[str, Any]) -> np.ndarray:
        return valid_labels(bundle.labels, spec)

    def gather_rows(self, bundle: DecodedBundle, rows: _ModelRows) -> Iterator[Row]:
        samples = self.gathered.get(rows.model_id)
        if samples is not None and not samples.fits(False, rows.width):  # a create came
            yield samples.row()
            samples = None
        if samples is None:
            samples = self.gathered[rows.model_id] = SamplesBuilder(rows.model_id, sparse=False)
        mine = rows.records
        samples.add_dense_rows(
            rows.values, bundle.labels[mine].tolist(), rows.event_ids, int(bundle.ts[mine].max())
        )

    def parse(self, raw: bytes) -> Iterable[Row]:
        if is_bulk(raw):
            b = parse_sample_batch(raw, self.spec_for)
            self.check_not_ahead(int(b.ts.max()))
            features = b.features.ravel().tolist()
            bulk = keyed(
                Samples(b.model_id, int(b.ts.max()), features, b.labels.tolist(), [], [], [])
            )
            earlier = self.gathered.pop(b.model_id, None)  # its JSON samples came first
            return (bulk,) if earlier is None else (earlier.row(), bulk)
        s = parse_sample(raw, self.spec_for, self.on_unknown)
        self.check_not_ahead(s.ts)
        sparse = isinstance(s.features, SparseRows)
        values, indices, _ = to_fields(s.features)
        samples = self.gathered.get(s.model_id)
        out: tuple[Row, ...] = ()
        if samples is not None and not samples.fits(sparse, len(values)):  # a create came
            out = (samples.row(),)
            samples = None
        if samples is None:
            samples = self.gathered[s.model_id] = SamplesBuilder(s.model_id, sparse)
        samples.add_row(s.ts, values, indices, s.label, s.event_id or "")
        return out

    def end_of_bundle(self) -> Iterable[Row]:
        rows = [samples.row() for samples in self.gathered.values()]
        self.gathered.clear()
        return rows


class _ParseFeedback(_ParseModelRecords):
    """Events and labels, gathered by model over a bundle into ``TIMED_FEEDBACK_TYPE``
    tuples ((model id, :class:`Feedback` row) and the latest ``ts`` of its records, for the
    job's timestamp assigner). Their ``ts`` drives the label join's watermark (one for all
    models), so one dated too far ahead (:meth:`~_ParseModelRecords.check_not_ahead`) would
    move the watermark past the present, and every on-time label of every model would then
    be ``late``."""

    kind = "e"

    def open(self, runtime_context: RuntimeContext) -> None:
        super().open(runtime_context)
        #: The bundle's records so far, by model.
        self.gathered: dict[str, FeedbackBuilder] = {}

    def gathering(self, model_id: str, sparse: bool = False) -> tuple[tuple[Row, int], ...]:
        """Start gathering ``model_id``'s records if not yet; what was gathered of another
        kind of row (a create came in between) goes out first."""
        gathered = self.gathered.get(model_id)
        if gathered is not None and gathered.sparse == sparse:
            return ()
        self.gathered[model_id] = FeedbackBuilder(self.kind, model_id, sparse)
        return () if gathered is None else (self.timed(gathered),)

    @staticmethod
    def timed(gathered: FeedbackBuilder) -> tuple[Row, int]:
        return keyed(gathered.build()), max(gathered.ts)

    def end_of_bundle(self) -> Iterable[tuple[Row, int]]:
        rows = [self.timed(gathered) for gathered in self.gathered.values()]
        self.gathered.clear()
        return rows


class ParseEvents(_ParseDecoded, _ParseFeedback):
    """``fl.events`` -> :class:`Feedback` rows of kind "e" (bundles of the Java
    ``EventBundler``: most JSON events come decoded)."""

    what = "events"

    def fits_topic(self, bundle: DecodedBundle, spec: Mapping[str, Any]) -> np.ndarray:
        return np.diff(bundle.event_id_starts) > 0  # an event needs its id

    def gather_rows(self, bundle: DecodedBundle, rows: _ModelRows) -> Iterator[tuple[Row, int]]:
        yield from self.gathering(rows.model_id)
        ts = bundle.ts[rows.records].tolist()
        self.gathered[rows.model_id].add_dense_events(rows.event_ids, ts, rows.values, rows.width)

    def parse(self, raw: bytes) -> tuple[tuple[Row, int], ...]:
        e = parse_event(raw, self.spec_for, self.on_unknown)
        self.check_not_ahead(e.ts)
        values, indices, offsets = to_fields(e.features)
        out = self.gathering(e.model_id, sparse=bool(offsets))
        self.gathered[e.model_id].add_event(e.event_id, e.ts, values, indices)
        return out


class ParseLabels(_ParseDecoded, _ParseFeedback):
    """``fl.labels`` -> :class:`Feedback` rows of kind "l", each record's bytes kept for a
    late DLQ (bundles of the Java ``LabelBundler``: most JSON labels come decoded)."""

    what = "labels"
    kind = "l"
    shows_shape = False
    reads_features = False

    def decoded_spec(self, model_id: str) -> Mapping[str, Any] | None:
        """The spec of a model the job holds or this parser asked for; the labels of any
        other model are parsed alone: their parse counts them against ``job.max_models``."""
        spec = self.held_spec(model_id)
        return spec if spec is not None else self.requested.get(model_id)

    def fits_topic(self, bundle: DecodedBundle, spec: Mapping[str, Any]) -> np.ndarray:
        # A label needs its event id, and a label its model takes.
        return (np.diff(bundle.event_id_starts) > 0) & valid_labels(bundle.labels, spec)

    def gather_rows(self, bundle: DecodedBundle, rows: _ModelRows) -> Iterator[tuple[Row, int]]:
        yield from self.gathering(rows.model_id)
        gathered = self.gathered[rows.model_id]
        mine = rows.records
        for event_id, ts, label, record in zip(
            rows.event_ids,
            bundle.ts[mine].tolist(),
            bundle.labels[mine].tolist(),
            bundle.record_index[mine].tolist(),
            strict=True,
        ):
            gathered.add_label(event_id, ts, label, bundle.record(record))

    def parse(self, raw: bytes) -> tuple[tuple[Row, int], ...]:
        lab = parse_label(raw, self.spec_for)
        self.check_not_ahead(lab.ts)
        out = self.gathering(lab.model_id)
        self.gathered[lab.model_id].add_label(lab.event_id, lab.ts, lab.label, raw)
        return out


class ParseControl(_ParseRecords, ProcessFunction):
    """``fl.control`` -> ``CONTROL_TYPE`` rows (unknown commands to the DLQ). A ``create``
    leaves with its spec validated and complete, an ``update`` with its changes checked
    (``bad_spec``, naming the field, when they are not valid)."""

    what = "control"

    def process_element(self, value: Any, ctx: ProcessFunction.Context) -> Iterator[Any]:
        yield from self.parse_bundle(bytes(value))

    def parse(self, raw: bytes) -> tuple[Row]:
        c = parse_control(raw)
        args = c.args
        try:
            if c.command == "create":
                args = {
                    **args,
                    "spec": json.loads(self.specs.runtime_entry(args["spec"], "args.spec")),
                }
            elif c.command == "update":  # checked again by the trainer, on the model's own spec
                if "reset" in args and not isinstance(args["reset"], bool):
                    raise ConfigError("args.reset: must be true or false")
                if args.get("reset"):
                    self.specs.check_field_names(args["changes"], "args.changes")
                else:
                    self.specs.updated_entry(self.specs.defaults, args["changes"], "args.changes")
        except ConfigError as exc:
            raise RecordError("bad_spec", str(exc)) from None
        return (to_row(ControlCommand(c.model_id, c.command, json.dumps(args), c.ts, c.source)),)
