"""Parsing and validation of the JSON records on flowlearn's Kafka topics (docs/architecture.md,
"Topics").

A record either parses into a typed value or raises :class:`RecordError`, whose ``reason`` is
a short machine-readable code (it becomes the ``reason`` of the dead-letter record) and whose
message says what is wrong.

>>> s = parse_sample(b'{"model_id": "m", "ts": 5, "features": [1, 2], "label": 1}',
...                  lambda m: {"features": "dense", "n_features": 2, "type": "logistic"})
>>> s.model_id, s.ts, s.features.tolist(), s.label
('m', 5, [1.0, 2.0], 1.0)
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from flowlearn.core.control import CONTROL_COMMANDS
from flowlearn.core.features import FeatureError, rows_of
from flowlearn.core.model_types import MODEL_TYPES
from flowlearn.core.sparse import INDEX_DTYPE, Rows, SparseRows, with_columns
from flowlearn.core.spec import model_id_problem

#: Largest record accepted on any topic; bigger ones go to the DLQ as ``too_large``. Half of
#: Kafka's default message size (1 MiB, the broker's ``message.max.bytes`` and the job's sink
#: producers' ``max.request.size``), so that any JSON record's dead letter, whose ``raw`` is
#: base64 (4/3 the size), still fits in one Kafka message and keeps the record whole.
MAX_RECORD_BYTES = 512 << 10
#: Longest ``raw`` a dead letter carries whole (bulk records may be larger): beyond it only
#: the first this many bytes are kept, with ``raw_truncated``, ``raw_size`` and
#: ``raw_sha256``. A dead letter too large for Kafka would fail the job's DLQ sink, and the
#: job would fail again on the same record after every restart.
MAX_DLQ_RAW_BYTES = 640 << 10
#: Confluent's Schema Registry serializers put a zero byte and a 4-byte schema id before
#: the JSON (their "wire format"); the parsers read the JSON after it, the id unchecked.
SCHEMA_REGISTRY_MAGIC = b"\x00"
SCHEMA_REGISTRY_HEADER_BYTES = 5
#: Largest bulk (Arrow IPC) record accepted.
MAX_BULK_RECORD_BYTES = 16 << 20
#: Labels of a logistic model; a softmax model takes integer class indices.
BINARY_LABELS = (0.0, 1.0)
#: The longest ``event_id`` a record may carry.
MAX_EVENT_ID_CHARS = 200


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds, the unit of every ``ts`` in the records."""
    return time.time_ns() // 1_000_000


class RecordError(ValueError):
    """A record that cannot be used; ``reason`` is the DLQ reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Sample:
    """One labelled sample, features already numeric: a dense model's row, or a hashed
    model's sparse row (:class:`~flowlearn.core.sparse.SparseRows` of one row)."""

    model_id: str
    ts: int
    features: np.ndarray | SparseRows
    label: float
    event_id: str | None = None


def _load_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise RecordError("not_json", "the record has no value (an empty one, or a tombstone)")
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordError("too_large", f"{len(raw)} bytes, limit {MAX_RECORD_BYTES}")
    header = ""
    if raw[:1] == SCHEMA_REGISTRY_MAGIC and len(raw) > SCHEMA_REGISTRY_HEADER_BYTES:
        # JSON text never starts with a zero byte: this is the header of Confluent's
        # Schema Registry serializers, and the JSON follows it.
        schema_id = int.from_bytes(raw[1:SCHEMA_REGISTRY_HEADER_BYTES], "big")
        header = (
            f"after a Schema Registry header (schema id {schema_id}; the job reads JSON, "
            "as the JSON Schema serializer writes it, not Avro or Protobuf): "
        )
        raw = raw[SCHEMA_REGISTRY_HEADER_BYTES:]
    try:
        # orjson parses a record in a seventh of the time. What it refuses and Python's json
        # may take (NaN and Infinity literals, numbers beyond float64's range, a BOM, UTF-16
        # text, lone surrogates) is parsed again by json, so that such records get the same
        # reason (from the checks that follow) either way. Integers beyond 64 bits come out
        # as floats, the value every numeric field makes of them anyway.
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            obj = json.loads(raw)
        # ValueError covers JSONDecodeError, UnicodeDecodeError and int's 4300-digit limit;
        # RecursionError is arrays or objects nested too deep.
        except (ValueError, RecursionError) as exc:
            raise RecordError("not_json", f"{header}{exc}"[:300]) from exc
    if not isinstance(obj, dict):
        raise RecordError("not_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _finite_number(value: Any) -> bool:
    """A JSON number (not a bool) that is finite as a float64: a huge int is not (and
    ``math.isfinite`` would raise OverflowError on it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _utf8(value: str) -> bool:
    """Encodable as UTF-8, as Flink and Kafka write strings: JSON's ``"\\ud800"`` is not."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _field(obj: Mapping[str, Any], name: str) -> Any:
    if name not in obj or obj[name] is None:
        raise RecordError("missing_field", f"field '{name}' is required")
    return obj[name]


def check_model_id(value: Any) -> str:
    """``value`` as a model id, else :class:`RecordError` ``bad_model_id`` saying why (the
    rule: :data:`flowlearn.core.spec.MODEL_ID_PATTERN`)."""
    problem = model_id_problem(value)
    if problem is not None:
        raise RecordError("bad_model_id", f"field 'model_id': {problem}")
    return str(value)


def _model_id(obj: Mapping[str, Any]) -> str:
    return check_model_id(_field(obj, "model_id"))


def _timestamp(obj: Mapping[str, Any]) -> int:
    value = _field(obj, "ts")
    if not _finite_number(value):
        raise RecordError("bad_field", "field 'ts' must be epoch milliseconds (a number)")
    if not 0 <= value < 1 << 62:
        raise RecordError("bad_field", f"field 'ts' out of range: {value}")
    return int(value)


def _label(obj: Mapping[str, Any], spec: Mapping[str, Any]) -> float:
    value = _field(obj, "label")
    if isinstance(value, bool):
        value = int(value)
    names = spec.get("class_names")
    if isinstance(value, str) and names:
        try:
            return float(names.index(value))
        except ValueError:
            raise RecordError(
                "bad_field", f"field 'label': {value!r} is not one of the classes {list(names)}"
            ) from None
    if not _finite_number(value):
        raise RecordError("bad_field", "field 'label' must be a finite number")
    task = label_task(spec)
    if task == "bandit":  # the label is the chosen action's reward
        lo, hi = reward_range(spec)
        if not lo <= float(value) <= hi:
            raise RecordError(
                "reward_out_of_range",
                f"field 'label': reward {value} outside the model's reward_range [{lo:g}, {hi:g}]",
            )
    if task == "binary" and float(value) not in BINARY_LABELS:
        raise RecordError(
            "bad_field", f"field 'label' must be 0 or 1 for a {spec['type']} model, got {value}"
        )
    if task == "multiclass":
        n_classes = n_classes_of(spec)
        if float(value) != int(value) or not 0 <= int(value) < n_classes:
            raise RecordError(
                "bad_field", f"field 'label' must be a class index in 0..{n_classes - 1}"
            )
    return float(value)


def label_task(spec: Mapping[str, Any]) -> str:
    """What a model's labels are: "binary", "multiclass", "regression" or "bandit" (a
    reward); a spec without a known type checks no labels ("regression")."""
    kind = MODEL_TYPES.get(spec.get("type", ""))
    return kind.task if kind else "regression"


def n_classes_of(spec: Mapping[str, Any]) -> int:
    """A multiclass model's number of classes (its ``n_classes``, else its ``classes``)."""
    return int(spec.get("n_classes") or len(spec.get("classes") or []))


def reward_range(spec: Mapping[str, Any]) -> tuple[float, float]:
    """The rewards a contextual bandit takes as labels, both ends included."""
    lo, hi = spec.get("reward_range", (0.0, 1.0))
    return float(lo), float(hi)


def valid_labels(labels: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """Which of the numeric ``labels`` the model takes, as a mask: the rules of one record's
    label (:func:`parse_sample`), on a whole column of them (bulk records, the JSON samples
    decoded in Java).

    >>> valid_labels(np.array([0.0, 1.0, 2.0, np.nan]), {"type": "logistic"}).tolist()
    [True, True, False, False]
    """
    ok = np.isfinite(labels)
    task = label_task(spec)
    if task == "binary":
        ok &= np.isin(labels, BINARY_LABELS)
    elif task == "multiclass":
        ok &= (labels == np.floor(labels)) & (labels >= 0) & (labels < n_classes_of(spec))
    elif task == "bandit":
        lo, hi = reward_range(spec)
        ok &= (labels >= lo) & (labels <= hi)
    return ok


def parse_sample(
    raw: bytes,
    spec_for: Callable[[str], Mapping[str, Any] | None],
    on_unknown: Callable[[str], None] | None = None,
) -> Sample:
    """Parse one ``fl.samples`` record; ``spec_for(model_id)`` gives the model's spec or None,
    ``on_unknown`` hears feature names the model does not have."""
    obj = _load_json_object(raw)
    model_id = _model_id(obj)
    spec = _spec(model_id, spec_for)
    ts = _timestamp(obj)
    label = _label(obj, spec)
    features = _features(obj, spec, on_unknown)
    event_id = _event_id(obj) if obj.get("event_id") is not None else None
    return Sample(model_id, ts, features, label, event_id)


@dataclass(frozen=True)
class Event:
    """Features seen at prediction time, waiting for their label."""

    event_id: str
    model_id: str
    ts: int
    features: np.ndarray | SparseRows  # as Sample's


@dataclass(frozen=True)
class Label:
    """The label of an earlier event."""

    event_id: str
    model_id: str
    ts: int
    label: float


def _event_id(obj: Mapping[str, Any]) -> str:
    value = _field(obj, "event_id")
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_EVENT_ID_CHARS
        or not _utf8(value)
    ):
        raise RecordError(
            "bad_field", f"field 'event_id' must be a non-empty string (<= {MAX_EVENT_ID_CHARS})"
        )
    return value


def _spec(model_id: str, spec_for: Callable[[str], Mapping[str, Any] | None]) -> Mapping[str, Any]:
    spec = spec_for(model_id)
    if spec is None:
        raise RecordError("unknown_model", f"no spec for model '{model_id}'")
    return spec


def _features(
    obj: Mapping[str, Any],
    spec: Mapping[str, Any],
    on_unknown: Callable[[str], None] | None = None,
) -> np.ndarray | SparseRows:
    """A record's features as the model's row (a hashed model's: one sparse row, never
    dense); a contextual bandit's row goes on with the choice made (:func:`_choice`): the
    feedback row :class:`flowlearn.core.pipeline.FeedbackPipeline` trains on."""
    try:
        rows = rows_of([_field(obj, "features")], spec, on_unknown)
    except FeatureError as exc:
        raise RecordError("bad_features", str(exc)) from exc
    if isinstance(rows, SparseRows):
        return with_columns(rows, _choice(obj, spec)) if is_bandit(spec) else rows
    if is_bandit(spec):
        return np.concatenate([rows[0], _choice(obj, spec)])
    return rows[0]


def is_bandit(spec: Mapping[str, Any]) -> bool:
    """Whether a spec is a contextual bandit's (whose records carry a choice)."""
    kind = MODEL_TYPES.get(spec.get("type", ""))
    return kind is not None and kind.bandit


def _choice(obj: Mapping[str, Any], spec: Mapping[str, Any]) -> np.ndarray:
    """A bandit's choice, as its feedback row ends: the action (``action``: an index among
    the listed actions, or the chosen action's features), then the ``propensity`` it was
    chosen with, at least the model's ``min_propensity``."""
    action = _field(obj, "action")
    n_action_features = int(spec.get("n_action_features") or 0)
    if n_action_features:
        if not (
            isinstance(action, list)
            and len(action) == n_action_features
            and all(_finite_number(v) for v in action)
        ):
            raise RecordError(
                "bad_action",
                f"field 'action' must be the chosen action's {n_action_features} features "
                "(finite numbers)",
            )
        values = [float(v) for v in action]
    else:
        n_actions = int(spec.get("n_actions") or 0)
        if not (_finite_number(action) and action == int(action) and 0 <= action < n_actions):
            raise RecordError(
                "bad_action", f"field 'action' must be an action index in 0..{n_actions - 1}"
            )
        values = [float(action)]
    propensity = _field(obj, "propensity")
    if not (_finite_number(propensity) and 0 < propensity <= 1):
        raise RecordError("bad_propensity", "field 'propensity' must be a number in (0, 1]")
    floor = float(spec.get("min_propensity") or 0.0)
    if propensity < floor:
        raise RecordError(
            "low_propensity",
            f"field 'propensity': {propensity:.3g} is below the model's min_propensity "
            f"{floor:g} (inverse propensity weights that large make evaluation meaningless)",
        )
    return np.array([*values, float(propensity)])


def parse_event(
    raw: bytes,
    spec_for: Callable[[str], Mapping[str, Any] | None],
    on_unknown: Callable[[str], None] | None = None,
) -> Event:
    """Parse one ``fl.events`` record (``on_unknown`` as in :func:`parse_sample`)."""
    obj = _load_json_object(raw)
    model_id = _model_id(obj)
    spec = _spec(model_id, spec_for)
    return Event(_event_id(obj), model_id, _timestamp(obj), _features(obj, spec, on_unknown))


def parse_label(raw: bytes, spec_for: Callable[[str], Mapping[str, Any] | None]) -> Label:
    """Parse one ``fl.labels`` record."""
    obj = _load_json_object(raw)
    model_id = _model_id(obj)
    spec = _spec(model_id, spec_for)
    return Label(_event_id(obj), model_id, _timestamp(obj), _label(obj, spec))


#: Every Arrow IPC stream starts with this continuation marker; JSON never does.
ARROW_STREAM_PREFIX = b"\xff\xff\xff\xff"


def is_bulk(raw: bytes) -> bool:
    """True for a bulk record (Arrow IPC stream) rather than one JSON sample."""
    return raw[:4] == ARROW_STREAM_PREFIX


@dataclass(frozen=True)
class SampleBatch:
    """Many labelled samples of one model, from one bulk record."""

    model_id: str
    ts: np.ndarray  # (n,) int64
    features: np.ndarray  # (n, d) float64
    labels: np.ndarray  # (n,) float64


def encode_sample_batch(model_id: str, ts: np.ndarray, features: Rows, labels: np.ndarray) -> bytes:
    """A bulk record: one Arrow IPC stream with columns model_id, ts, features, label.

    Sparse rows (a hashed model's samples, which the trainer dead-letters this way) take
    the columns ``indices`` (list of int32: the hashed columns) and ``values`` (list of
    float64) in place of ``features``, and the schema's metadata says ``n_features``: the
    hashed columns, not the names (hashing cannot be undone), so such a record is for
    inspection; the job takes bulk records of dense models only.

    >>> raw = encode_sample_batch("m", np.array([1]), np.ones((1, 2)), np.array([1.0]))
    >>> is_bulk(raw)
    True
    """
    import pyarrow as pa

    columns: dict[str, Any] = {
        "model_id": pa.array([model_id] * len(features), pa.string()),
        "ts": pa.array(np.asarray(ts, dtype=np.int64)),
    }
    metadata = None
    if isinstance(features, SparseRows):
        offsets = pa.array(features.offsets.astype(np.int32))
        columns["indices"] = pa.ListArray.from_arrays(
            offsets, pa.array(features.indices.astype(INDEX_DTYPE))
        )
        columns["values"] = pa.ListArray.from_arrays(offsets, pa.array(features.values))
        metadata = {"n_features": str(features.width)}
    else:
        X = np.ascontiguousarray(features, dtype=np.float64)
        columns["features"] = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), X.shape[1])
    columns["label"] = pa.array(np.asarray(labels, dtype=np.float64))
    table = pa.table(columns, metadata=metadata)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def first_sample_shape(raw: bytes) -> tuple[str, Any] | None:
    """The model id of a samples or events record and the features of its first sample, as
    given (a JSON record's ``features``; a bulk record's first row, a list), or None when it
    shows none: what ``job.unknown_model_policy = "infer"`` fixes a new model's shape from.

    >>> first_sample_shape(b'{"model_id": "m", "features": {"a": 1}}')
    ('m', {'a': 1})
    """
    try:
        if is_bulk(raw):
            import pyarrow as pa

            table = pa.ipc.open_stream(raw).read_all()
            model_id, features = table.column("model_id")[0], table.column("features")[0]
            return str(model_id.as_py()), features.as_py()
        obj = _load_json_object(raw)
        return str(obj["model_id"]), obj["features"]
    except Exception:  # any way of being malformed: the record's own parse says which
        return None


def record_model_id(raw: bytes) -> str | None:
    """The model id a samples or events record names (JSON, or a bulk record's first row),
    as given, or None when it names none: whom ``job.unknown_model_policy = "create"``
    makes a model for.

    >>> record_model_id(b'{"model_id": "m", "ts": 5}')
    'm'
    """
    try:
        if is_bulk(raw):
            import pyarrow as pa

            return str(pa.ipc.open_stream(raw).read_all().column("model_id")[0].as_py())
        return str(_load_json_object(raw)["model_id"])
    except Exception:  # any way of being malformed: the record's own parse says which
        return None


def parse_sample_batch(
    raw: bytes, spec_for: Callable[[str], Mapping[str, Any] | None]
) -> SampleBatch:
    """Parse one bulk ``fl.samples`` record (see :func:`encode_sample_batch`).

    The record is taken or refused whole: a bad row sends it to the DLQ with the row named.
    """
    import pyarrow as pa

    if len(raw) > MAX_BULK_RECORD_BYTES:
        raise RecordError("too_large", f"{len(raw)} bytes, limit {MAX_BULK_RECORD_BYTES}")
    try:
        table = pa.ipc.open_stream(raw).read_all()
        # The IPC reader checks buffer sizes, not contents: corrupt offsets would be read out
        # of bounds (a segfault) by the compute functions below.
        table.validate(full=True)
    except (pa.ArrowException, OSError) as exc:
        raise RecordError("bad_arrow", str(exc)[:300]) from exc
    try:
        column_names = table.column_names
    except UnicodeDecodeError as exc:  # validate() does not check that names are UTF-8
        raise RecordError("bad_arrow", f"a column name is not UTF-8: {exc}"[:300]) from exc
    missing = {"model_id", "ts", "features", "label"} - set(column_names)
    if missing:
        raise RecordError("missing_field", f"bulk record lacks column(s) {sorted(missing)}")
    if len(set(column_names)) != len(column_names):
        raise RecordError("bad_field", f"bulk record repeats a column: {column_names}")
    if table.num_rows == 0:
        raise RecordError("bad_field", "bulk record has no rows")
    try:
        models = table.column("model_id").unique().to_pylist()
    except pa.ArrowException as exc:  # a type 'unique' has no kernel for (a list, a struct)
        raise RecordError("bad_field", f"column 'model_id' must hold strings: {exc}"[:300]) from exc
    if len(models) != 1:
        raise RecordError("bad_field", f"a bulk record holds one model id, got {models[:5]}")
    model_id = check_model_id(models[0])
    spec = _spec(model_id, spec_for)
    if spec.get("features", "dense") != "dense":
        raise RecordError("bad_features", "bulk records carry dense features only")
    if is_bandit(spec):
        raise RecordError(
            "bad_features",
            "bulk records carry no action or propensity: send a bandit's samples as JSON",
        )
    d = int(spec["n_features"])
    try:
        column = table.column("features").combine_chunks()
        kind = column.type
        if not (
            pa.types.is_list(kind)
            or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind)
        ):
            raise RecordError("bad_features", f"column 'features' must hold lists, got {kind}")
        if column.null_count:
            raise ValueError("null feature lists")
        sizes = (
            np.full(len(column), column.type.list_size)
            if pa.types.is_fixed_size_list(column.type)
            else np.diff(np.asarray(column.offsets))
        )
        bad = np.flatnonzero(sizes != d)
        if bad.size:
            raise RecordError(
                "bad_features", f"row {bad[0]}: expected {d} values, got {sizes[bad[0]]}"
            )
        X = np.asarray(column.flatten(), dtype=np.float64).reshape(-1, d)
        ts = np.asarray(table.column("ts").combine_chunks(), dtype=np.int64)
        y = np.asarray(table.column("label").combine_chunks(), dtype=np.float64)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        if isinstance(exc, RecordError):
            raise
        raise RecordError("bad_field", f"bulk columns of the wrong type: {exc}") from exc
    # NaN features are missing values where the model's pipeline imputes them.
    features_ok = ~np.isinf(X) if spec.get("missing") == "impute" else np.isfinite(X)
    for name, ok in (("features", features_ok), ("label", np.isfinite(y))):
        rows = np.flatnonzero(~ok.reshape(len(ok), -1).all(axis=1))
        if rows.size:
            raise RecordError(
                "bad_features" if name == "features" else "bad_field",
                f"row {rows[0]}: {name} not finite",
            )
    if ((ts < 0) | (ts >= 1 << 62)).any():
        raise RecordError("bad_field", "ts out of range")
    if not valid_labels(y, spec).all():
        if label_task(spec) == "binary":
            raise RecordError("bad_field", f"labels must be 0 or 1 for a {spec['type']} model")
        n_classes = n_classes_of(spec)
        raise RecordError("bad_field", f"labels must be class indices in 0..{n_classes - 1}")
    return SampleBatch(model_id, ts, X, y)


@dataclass(frozen=True)
class Control:
    """A command for one model's trainer (docs/architecture.md: ``fl.control``)."""

    model_id: str
    command: str
    args: dict[str, Any]
    ts: int
    source: str


def parse_control(raw: bytes) -> Control:
    """Parse one ``fl.control`` record; unknown commands and bad arguments are refused."""
    obj = _load_json_object(raw)
    model_id = _model_id(obj)
    command = _field(obj, "command")
    if not isinstance(command, str):  # a list or an object is not even hashable
        raise RecordError("bad_field", "field 'command' must be a string")
    if command not in CONTROL_COMMANDS:
        raise RecordError(
            "unknown_command", f"'{command}' is not one of {sorted(CONTROL_COMMANDS)}"
        )
    args = obj.get("args") or {}
    if not isinstance(args, dict):
        raise RecordError("bad_field", "field 'args' must be an object")
    for name in CONTROL_COMMANDS[command]:
        value = args.get(name)
        if not _finite_number(value):
            raise RecordError("bad_field", f"'{command}' needs a number in args.{name}")
    if command == "create" and not isinstance(args.get("spec"), dict):
        raise RecordError("bad_field", "'create' needs the model's spec table in args.spec")
    if command == "update" and not (isinstance(args.get("changes"), dict) and args["changes"]):
        raise RecordError("bad_field", "'update' needs the changed spec fields in args.changes")
    source = obj.get("source") or "unknown"
    # Informational only: kept, with what UTF-8 cannot encode (lone surrogates) escaped.
    source = str(source)[:200].encode("utf-8", "backslashreplace").decode("utf-8")[:200]
    return Control(model_id, command, args, _timestamp(obj), source)


def control_record(
    model_id: str, command: str, args: dict[str, Any], source: str, ts: int | None = None
) -> str:
    """The JSON of an ``fl.control`` record (what :func:`parse_control` reads); ``ts``
    defaults to now.

    >>> control_record("m", "rollback", {"version": 40}, "cli", ts=1)
    '{"model_id": "m", "command": "rollback", "args": {"version": 40}, "ts": 1, "source": "cli"}'
    """
    return json.dumps(
        {
            "model_id": model_id,
            "command": command,
            "args": args,
            "ts": now_ms() if ts is None else ts,
            "source": source,
        }
    )


#: Largest alert (JSON) written whole. An answer echoes its command's args, which may be
#: anything up to a record's size, and JSON escaping can make them six times larger; an alert
#: too large for Kafka would fail the job's alerts sink again on every replay.
MAX_ALERT_BYTES = 64 << 10
#: What a cut alert keeps: this many characters of a string, and this many fields or items.
ALERT_FIELD_CHARS, ALERT_FIELDS = 200, 20


def alert_record(model_id: str, kind: str, detail: dict[str, Any], ts: int | None = None) -> str:
    """The JSON of an ``fl.alerts`` record (docs/architecture.md); ``ts`` defaults to now.
    Beyond :data:`MAX_ALERT_BYTES` the detail is cut (``truncated``): its strings to
    :data:`ALERT_FIELD_CHARS` characters and its objects and lists to :data:`ALERT_FIELDS`
    entries, or, if that is still too large, to its plain fields and the command's
    ``request`` id (what ``flowlearn models`` waits for).

    >>> alert_record("m", "control", {"command": "reset", "ok": True}, ts=1)
    '{"model_id": "m", "kind": "control", "ts": 1, "detail": {"command": "reset", "ok": true}}'
    >>> len(alert_record("m", "control", {"args": {"x": "é" * 10**6}})) < MAX_ALERT_BYTES
    True
    """
    record = {"model_id": model_id, "kind": kind, "ts": now_ms() if ts is None else ts}
    text = json.dumps({**record, "detail": detail})
    if len(text) <= MAX_ALERT_BYTES:
        return text
    text = json.dumps({**record, "detail": {**_cut(detail, 3), "truncated": True}})
    if len(text) <= MAX_ALERT_BYTES:
        return text
    args = detail.get("args")
    request = args.get("request") if isinstance(args, dict) else None
    plain = {
        str(k)[:ALERT_FIELD_CHARS]: _cut(v, 0)
        for k, v in list(detail.items())[:ALERT_FIELDS]
        if not isinstance(v, dict | list)
    }
    if isinstance(request, str):
        plain["args"] = {"request": request[:ALERT_FIELD_CHARS]}
    return json.dumps({**record, "detail": {**plain, "truncated": True}})


def _cut(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return value[:ALERT_FIELD_CHARS]
    if isinstance(value, dict):
        if depth == 0:
            return "..."
        items = list(value.items())[:ALERT_FIELDS]
        return {str(k)[:ALERT_FIELD_CHARS]: _cut(v, depth - 1) for k, v in items}
    if isinstance(value, list):
        return [_cut(v, depth - 1) for v in value[:ALERT_FIELDS]] if depth else "..."
    return value


def dlq_record(
    source_topic: str,
    reason: str,
    raw: bytes,
    ts: int,
    detail: str = "",
    partition: int | None = None,
    offset: int | None = None,
) -> str:
    """The JSON of a dead-letter record (docs/architecture.md: ``fl.dlq``); ``raw`` kept whole,
    base64, up
    to :data:`MAX_DLQ_RAW_BYTES` (beyond: its head, its size and its SHA-256)."""
    record: dict[str, Any] = {
        "source_topic": source_topic,
        "reason": reason,
        "detail": detail[:500],
        "raw": base64.b64encode(raw[:MAX_DLQ_RAW_BYTES]).decode("ascii"),
        "ts": ts,
    }
    if len(raw) > MAX_DLQ_RAW_BYTES:
        record.update(
            raw_truncated=True, raw_size=len(raw), raw_sha256=hashlib.sha256(raw).hexdigest()
        )
    if partition is not None:
        record["partition"] = partition
    if offset is not None:
        record["offset"] = offset
    return json.dumps(record)
