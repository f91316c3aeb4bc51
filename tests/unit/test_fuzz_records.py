"""Fuzzing the record parsers: a poison record never crashes the job, nothing is lost silently.

Contract (docs/architecture.md "Topics", docs/job.md "Dead letters and alerts"): every parser in
``flowlearn.contracts.records``, given any bytes, either returns a record that satisfies the
documented
invariants or raises :class:`RecordError` whose ``reason`` is a documented DLQ reason, and
the DLQ record built from it gives back the original bytes. Any other exception would fail
the Flink operator, which restarts and meets the same record again: a crash loop.

Three kinds of input: arbitrary bytes; near-valid JSON records (each field valid or junk:
wrong types, NaN/Infinity tokens, 1e309, huge and over-long integers, deep nesting, lone
surrogates, duplicate keys, unknown models and commands, far timestamps); and bulk Arrow IPC
records, both corrupted and well-formed with wrong schemas, types and values. Examples are
derandomized so CI is stable; ``POISON`` and ``@example`` pin inputs that once escaped.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flowlearn.contracts import records
from flowlearn.contracts.records import (
    ARROW_STREAM_PREFIX,
    BINARY_LABELS,
    RecordError,
    dlq_record,
    encode_sample_batch,
    is_bulk,
    parse_control,
    parse_event,
    parse_label,
    parse_sample,
    parse_sample_batch,
)
from flowlearn.core.control import CONTROL_COMMANDS
from flowlearn.core.sparse import SparseRows, to_fields
from flowlearn.core.spec import ModelSpec

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SPECS: dict[str, dict[str, Any]] = {
    "dense": ModelSpec(type="logistic", n_features=3).as_dict(),
    "hashed": ModelSpec(type="logistic", n_features=4, features="hashed", hash_seed=7).as_dict(),
    "soft": ModelSpec(type="softmax", n_features=2, n_classes=3).as_dict(),
    # One hashed column: every feature of a record lands in it, so values add up.
    "lin": ModelSpec(type="linear", n_features=1, features="hashed").as_dict(),
}


def spec_for(model_id: str) -> Mapping[str, Any] | None:
    return SPECS.get(model_id)


def documented_reasons() -> set[str]:
    """The DLQ reasons of docs/job.md's table, so the tests hold the code to its docs."""
    text = (Path(__file__).parents[2] / "docs" / "job.md").read_text()
    table = text.split("## Dead letters and alerts", 1)[1].split("\n\n")[2]
    return {
        m
        for row in table.splitlines()
        if row.startswith("| `")
        for m in re.findall(r"`([a-z_]+)`", row.split("|")[1])
    }


PARSE_REASONS = {
    "not_json",
    "not_object",
    "too_large",
    "missing_field",
    "bad_field",
    "bad_features",
    "unknown_model",
    "bad_model_id",
}
CONTROL_REASONS = {
    "not_json",
    "not_object",
    "too_large",
    "missing_field",
    "bad_field",
    "unknown_command",
    "bad_model_id",
}
BULK_REASONS = PARSE_REASONS | {"bad_arrow"}


def test_the_reasons_used_here_are_the_documented_ones() -> None:
    used = PARSE_REASONS | CONTROL_REASONS | BULK_REASONS
    assert not used - documented_reasons()


# -- the contract ----------------------------------------------------------------------------


def assert_dlq_keeps(raw: bytes, exc: RecordError, topic: str) -> None:
    """What the parse operator does with a RecordError must keep the record whole."""
    text = dlq_record(topic, exc.reason, raw, records.now_ms(), exc.message, partition=0, offset=7)
    text.encode("ascii")  # whatever the detail holds, the DLQ record is plain ASCII JSON
    d = json.loads(text)
    assert base64.b64decode(d["raw"], validate=True) == raw
    assert (d["source_topic"], d["reason"], d["partition"], d["offset"]) == (
        topic,
        exc.reason,
        0,
        7,
    )


def parse_or_dead_letter(
    parse: Callable[[bytes], Any], raw: bytes, reasons: set[str], topic: str
) -> Any | None:
    """Run ``parse``; a RecordError must carry an allowed reason and a message. Any other
    exception propagates and fails the test."""
    try:
        return parse(raw)
    except RecordError as exc:
        assert exc.reason in reasons, f"undocumented reason {exc.reason!r} ({exc.message})"
        assert isinstance(exc.message, str) and exc.message.strip()
        assert_dlq_keeps(raw, exc, topic)
        return None


def check_text(value: Any) -> None:
    """A string field as the job forwards it: non-empty, bounded, encodable as UTF-8 (Flink
    and Kafka serialise strings as UTF-8; a lone surrogate would fail the job there)."""
    assert isinstance(value, str) and 0 < len(value) <= 200
    value.encode("utf-8")


def check_ts(ts: Any) -> None:
    assert type(ts) is int and 0 <= ts < 2**62


def check_features(features: Any, spec: Mapping[str, Any]) -> None:
    if spec["features"] == "hashed":  # one sparse row, never dense
        assert isinstance(features, SparseRows) and features.shape == (1, int(spec["n_features"]))
        features = features.values
    else:
        assert isinstance(features, np.ndarray)
        assert features.shape == (int(spec["n_features"]),)
    assert features.dtype == np.float64 and np.isfinite(features).all()


def check_label(label: Any, spec: Mapping[str, Any]) -> None:
    assert type(label) is float and math.isfinite(label)
    if spec["type"] == "logistic":
        assert label in BINARY_LABELS
    elif spec["type"] == "softmax":
        assert label == int(label) and 0 <= label < spec["n_classes"]


def check_sample(s: records.Sample) -> None:
    check_text(s.model_id)
    spec = SPECS[s.model_id]
    check_ts(s.ts)
    check_features(s.features, spec)
    check_label(s.label, spec)
    if s.event_id is not None:  # optional on fl.samples, and not forwarded: any UTF-8 text
        assert isinstance(s.event_id, str)
        s.event_id.encode("utf-8")


def check_event(e: records.Event) -> None:
    check_text(e.model_id)
    check_text(e.event_id)
    check_ts(e.ts)
    check_features(e.features, SPECS[e.model_id])


def check_label_record(lab: records.Label) -> None:
    check_text(lab.model_id)
    check_text(lab.event_id)
    check_ts(lab.ts)
    check_label(lab.label, SPECS[lab.model_id])


def check_control(c: records.Control) -> None:
    check_text(c.model_id)
    assert c.command in CONTROL_COMMANDS
    assert isinstance(c.args, dict)
    for name in CONTROL_COMMANDS[c.command]:
        value = c.args[name]
        assert type(value) in (int, float) and math.isfinite(value)
    if c.command == "create":
        assert isinstance(c.args["spec"], dict)
    if c.command == "update":
        assert isinstance(c.args["changes"], dict) and c.args["changes"]
    check_ts(c.ts)
    check_text(c.source)


def check_batch(b: records.SampleBatch) -> None:
    check_text(b.model_id)
    spec = SPECS[b.model_id]
    assert spec["features"] == "dense"
    n = len(b.ts)
    assert n >= 1
    assert b.ts.dtype == np.int64 and b.ts.shape == (n,)
    assert ((b.ts >= 0) & (b.ts < 2**62)).all()
    assert b.features.dtype == np.float64 and b.features.shape == (n, spec["n_features"])
    # NaN is a missing value, which these specs' pipelines impute; never infinity.
    assert spec["missing"] == "impute" and not np.isinf(b.features).any()
    assert b.labels.dtype == np.float64 and b.labels.shape == (n,)
    assert np.isfinite(b.labels).all()
    for y in b.labels.tolist():
        check_label(y, spec)


def route_sample(raw: bytes) -> Any:
    """What ``flowlearn.operators.parse.ParseSamples`` does with a record of ``fl.samples``."""
    return parse_sample_batch(raw, spec_for) if is_bulk(raw) else parse_sample(raw, spec_for)


PARSERS: dict[str, tuple[Callable[[bytes], Any], Callable[[Any], None], set[str]]] = {
    "fl.samples": (
        route_sample,
        lambda r: (check_batch if isinstance(r, records.SampleBatch) else check_sample)(r),
        BULK_REASONS,
    ),
    "fl.events": (lambda raw: parse_event(raw, spec_for), check_event, PARSE_REASONS),
    "fl.labels": (lambda raw: parse_label(raw, spec_for), check_label_record, PARSE_REASONS),
    "fl.control": (parse_control, check_control, CONTROL_REASONS),
}


def assert_contract(topic: str, raw: bytes) -> Any | None:
    parse, check, reasons = PARSERS[topic]
    parsed = parse_or_dead_letter(parse, raw, reasons, topic)
    if parsed is not None:
        check(parsed)
    return parsed


# -- arbitrary bytes -------------------------------------------------------------------------


@FUZZ
@given(
    topic=st.sampled_from(sorted(PARSERS)),
    raw=st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=200).map(lambda b: ARROW_STREAM_PREFIX + b),
        st.text(max_size=100).map(lambda t: t.encode("utf-8")),
        st.text(max_size=60).map(lambda t: t.encode("utf-16")),
    ),
)
@example(topic="fl.samples", raw=b" " * (records.MAX_RECORD_BYTES + 1))
@example(topic="fl.samples", raw=ARROW_STREAM_PREFIX + b"\0" * 4)
def test_any_bytes_parse_or_go_to_the_dlq(topic: str, raw: bytes) -> None:
    assert_contract(topic, raw)


# -- near-valid JSON -------------------------------------------------------------------------


class Raw(str):
    """JSON text written as is: tokens json.dumps cannot produce (1e309, 400 digits)."""


class Obj(tuple[tuple[str, Any], ...]):
    """A JSON object as (key, value) pairs, so that a key may appear twice."""


def dumps(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Obj):
        return "{" + ", ".join(f"{json.dumps(k)}: {dumps(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    return json.dumps(value)  # floats: NaN, Infinity and -Infinity tokens, as Python writes


DEEP = "[" * 5000 + "]" * 5000
SPECIAL_TOKENS = st.sampled_from(
    [
        Raw("NaN"),
        Raw("Infinity"),
        Raw("-Infinity"),
        Raw("1e309"),
        Raw("-1e309"),
        Raw("1e-400"),
        Raw("1" + "0" * 400),
        Raw("-" + "9" * 5000),
        Raw(DEEP),
        Raw('{"a": ' * 3000 + "1" + "}" * 3000),
    ]
)
LONE_SURROGATES = st.sampled_from(["\ud800", "model\udfff", "\udc80x"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(2**62 - 2, 2**64 + 2),
    st.floats(),
    st.text(max_size=12),
    LONE_SURROGATES,
    SPECIAL_TOKENS,
    st.sampled_from(["x" * 201, "y" * 100_000]),
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(st.tuples(st.text(max_size=6), inner), max_size=4).map(Obj)
    ),
    max_leaves=8,
)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
NUMBERS = FINITE | st.integers(-(2**63), 2**63)
MODEL_IDS = st.sampled_from(sorted(SPECS))


def features_for(spec: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    n = int(spec["n_features"])
    if spec["features"] == "dense":
        good = st.lists(NUMBERS, min_size=n, max_size=n)
        near = st.lists(NUMBERS | JUNK, min_size=max(n - 1, 0), max_size=n + 1)
        return st.one_of(good, good, near, st.dictionaries(st.text(max_size=4), NUMBERS))
    values = st.one_of(NUMBERS, st.text(max_size=8), st.none(), st.booleans())
    good_map = st.dictionaries(st.text(max_size=8), values, max_size=5)
    near_map: st.SearchStrategy[Any] = st.lists(
        st.tuples(st.text(max_size=8) | LONE_SURROGATES, values | JUNK), max_size=5
    ).map(Obj)
    return st.one_of(good_map, good_map, near_map, st.lists(NUMBERS, max_size=3))


def label_for(spec: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    if spec["type"] == "logistic":
        return st.sampled_from([0, 1, 0.0, 1.0, True, False])
    if spec["type"] == "softmax":
        k = int(spec["n_classes"])
        return st.integers(0, k - 1) | st.integers(0, k - 1).map(float)
    return FINITE | st.integers(-(2**70), 2**70)


NEAR_MISS: dict[str, st.SearchStrategy[Any]] = {
    "model_id": st.sampled_from(["", "nope", "x" * 201, 5, ["dense"], "DENSE"]) | LONE_SURROGATES,
    "ts": st.sampled_from([-1, 2**62, 2**63, 2**64, -1.5, 1e19, "5", True, [5]]) | SPECIAL_TOKENS,
    "label": st.sampled_from([2, -1, 0.5, 3, "1", [1], 10**400]) | SPECIAL_TOKENS,
    "event_id": st.sampled_from(["", "e" * 201, 7, ["e"]]) | LONE_SURROGATES,
    "command": st.sampled_from(["Pin", "unpin ", "ROLLBACK", "", 5, ["reset"], None])
    | LONE_SURROGATES
    | JUNK,
    "args": st.sampled_from([[], "v", 0, Obj([("version", "3")])]) | JUNK,
    "source": JUNK,
}
FIELDS = {
    "fl.samples": ("model_id", "ts", "features", "label", "event_id"),
    "fl.events": ("event_id", "model_id", "ts", "features"),
    "fl.labels": ("event_id", "model_id", "ts", "label"),
    "fl.control": ("model_id", "command", "args", "ts", "source"),
}


@st.composite
def control_args(draw: st.DrawFn, command: Any) -> Any:
    names = CONTROL_COMMANDS.get(command, ()) if isinstance(command, str) else ()
    pairs = [(name, draw(NUMBERS | NEAR_MISS["label"])) for name in names]
    return Obj(pairs + draw(st.lists(st.tuples(st.text(max_size=6), JUNK), max_size=2)))


@st.composite
def near_valid_records(draw: st.DrawFn) -> tuple[str, bytes]:
    """A record of some topic whose fields are each valid, a near miss or junk, then with
    fields dropped, unknown ones added and keys repeated."""
    topic = draw(st.sampled_from(sorted(FIELDS)))
    model_id = draw(MODEL_IDS)
    spec = SPECS[model_id]
    command = draw(st.sampled_from(sorted(CONTROL_COMMANDS)))
    good: dict[str, st.SearchStrategy[Any]] = {
        "model_id": st.just(model_id),
        "ts": st.integers(0, 2**62 - 1) | st.floats(0, 2.0**61),
        "features": features_for(spec),
        "label": label_for(spec),
        "event_id": st.text(min_size=1, max_size=30),
        "command": st.just(command),
        "source": st.text(max_size=30),
    }
    pairs: list[tuple[str, Any]] = []
    for name in FIELDS[topic]:
        mode = draw(st.sampled_from(["good"] * 6 + ["near", "junk", "drop"]))
        if mode == "drop":
            continue
        if name == "args":
            value = draw(control_args(command)) if mode == "good" else draw(NEAR_MISS["args"])
        elif mode == "good" or (mode == "near" and name not in NEAR_MISS):
            value = draw(good[name])
        elif mode == "near":
            value = draw(NEAR_MISS[name])
        else:
            value = draw(JUNK)
        pairs.append((name, value))
    pairs += draw(st.lists(st.tuples(st.text(max_size=8), JUNK), max_size=2))  # unknown fields
    if draw(st.booleans()) and pairs:  # a key twice: the JSON parser keeps the last one
        name = draw(st.sampled_from([key for key, _ in pairs]))
        pairs.append((name, draw(JUNK | good.get(name, JUNK))))
    pairs = draw(st.permutations(pairs))
    return topic, dumps(Obj(pairs)).encode("utf-8")


def _sample(**fields: str) -> bytes:
    base = {"model_id": '"dense"', "ts": "5", "features": "[1, 2, 3]", "label": "1"}
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in (base | fields).items()) + "}").encode()


POISON = [
    ("fl.samples", _sample(ts="1" + "0" * 400)),  # int too large to convert to float
    ("fl.samples", _sample(features="[1, 2, 1" + "0" * 400 + "]")),
    ("fl.samples", _sample(label="1" + "0" * 400)),
    ("fl.samples", _sample(ts="9" * 5000)),  # beyond int's 4300-digit limit: ValueError
    ("fl.samples", DEEP.encode()),  # RecursionError in the json module
    ("fl.samples", _sample(model_id='"hashed"', features='{"a": 1' + "0" * 400 + "}")),
    ("fl.samples", _sample(model_id='"lin"', features='{"a": 1e308, "b": 1e308}', label="0")),
    ("fl.samples", _sample(model_id='"dense"', event_id='"\\ud800"')),
    ("fl.events", b'{"event_id": "\\udfff", "model_id": "dense", "ts": 1, "features": [1,2,3]}'),
    (
        "fl.labels",
        b'{"event_id": "e", "model_id": "dense", "ts": 1, "label": -1' + b"0" * 400 + b"}",
    ),
    ("fl.control", b'{"model_id": "m", "command": ["reset"], "ts": 1}'),  # unhashable
    ("fl.control", b'{"model_id": "m", "command": {"a": 1}, "ts": 1}'),
    (
        "fl.control",
        b'{"model_id": "m", "command": "rollback", "ts": 1, "args": {"version": 1'
        + b"0" * 400
        + b"}}",
    ),
    ("fl.control", b'{"model_id": "\\ud800", "command": "reset", "ts": 1}'),
]


@settings(FUZZ, max_examples=600)
@given(near_valid_records())
def test_near_valid_records_parse_or_go_to_the_dlq(case: tuple[str, bytes]) -> None:
    assert_contract(*case)


@pytest.mark.parametrize("topic, raw", POISON, ids=range(len(POISON)))
def test_poison_records_go_to_the_dlq(topic: str, raw: bytes) -> None:
    """Inputs the fuzzing found: each once escaped as another exception or parsed into
    values the job cannot carry (an infinite feature, an unencodable string)."""
    assert assert_contract(topic, raw) is None


def test_control_source_is_kept_and_made_encodable() -> None:
    """``source`` only says who sent a command: a lone surrogate in it is escaped, not fatal."""
    c = parse_control(b'{"model_id": "m", "command": "reset", "ts": 1, "source": "cli:\\ud800"}')
    check_control(c)
    assert c.source == "cli:\\ud800"


@FUZZ
@given(st.data())
def test_valid_records_parse_to_their_values(data: st.DataObject) -> None:
    """The other half: a well-formed record is taken, with exactly its values."""
    model_id = data.draw(MODEL_IDS)
    spec = SPECS[model_id]
    n = spec["n_features"]
    ts = data.draw(st.integers(0, 2**62 - 1))
    label = data.draw(label_for(spec))
    if spec["features"] == "dense":
        features: Any = data.draw(st.lists(FINITE, min_size=n, max_size=n))
    else:
        features = data.draw(
            st.dictionaries(st.text(max_size=8), st.floats(-1e300, 1e300), max_size=1)
        )
    raw = json.dumps(
        {"model_id": model_id, "ts": ts, "features": features, "label": label, "event_id": "e1"}
    ).encode()
    s = parse_sample(raw, spec_for)
    check_sample(s)
    assert (s.model_id, s.ts, s.label, s.event_id) == (model_id, ts, float(label), "e1")
    if spec["features"] == "dense":
        assert s.features.tolist() == [float(x) for x in features]
    else:
        assert np.abs(s.features.values).sum() == sum(abs(float(v)) for v in features.values())
    event = parse_event(
        json.dumps(
            {"event_id": "e1", "model_id": model_id, "ts": ts, "features": features}
        ).encode(),
        spec_for,
    )
    assert to_fields(event.features) == to_fields(s.features)
    command = data.draw(st.sampled_from(sorted(CONTROL_COMMANDS)))
    args: dict[str, Any] = {name: data.draw(NUMBERS) for name in CONTROL_COMMANDS[command]}
    if command == "create":  # its spec is checked by the operator, against the settings
        args["spec"] = {"n_features": data.draw(st.integers(1, 5))}
    if command == "update":
        args["changes"] = {"batch_size": data.draw(st.integers(0, 512))}
    c = parse_control(
        json.dumps(
            {"model_id": model_id, "command": command, "args": args, "ts": ts, "source": "cli"}
        ).encode()
    )
    check_control(c)
    assert (c.command, c.args, c.ts, c.source) == (command, args, ts, "cli")


# -- the DLQ record --------------------------------------------------------------------------


@FUZZ
@given(
    raw=st.binary(max_size=500),
    topic=st.text(max_size=20),
    reason=st.text(max_size=20),
    detail=st.text(max_size=700) | LONE_SURROGATES,
    ts=st.integers(0, 2**62),
    partition=st.none() | st.integers(0, 2**31),
    offset=st.none() | st.integers(0, 2**63),
)
def test_dlq_record_gives_back_the_exact_bytes(
    raw: bytes,
    topic: str,
    reason: str,
    detail: str,
    ts: int,
    partition: int | None,
    offset: int | None,
) -> None:
    text = dlq_record(topic, reason, raw, ts, detail, partition, offset)
    text.encode("ascii")
    d = json.loads(text)
    assert base64.b64decode(d["raw"], validate=True) == raw
    assert (d["source_topic"], d["reason"], d["ts"]) == (topic, reason, ts)
    assert d["detail"] == detail[:500]
    assert d.get("partition") == partition and d.get("offset") == offset
    assert ("partition" in d) == (partition is not None) and ("offset" in d) == (offset is not None)


# -- bulk records (Arrow IPC) ----------------------------------------------------------------


def ipc(table: pa.Table, max_chunksize: int | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max_chunksize)
    return bytes(sink.getvalue().to_pybytes())


@st.composite
def bulk_tables(draw: st.DrawFn) -> pa.Table:
    """Well-formed Arrow IPC whose columns are each right or of a wrong type, shape or value."""
    model_id = draw(MODEL_IDS | st.sampled_from(["nope", ""]))
    d = int(SPECS.get(model_id, SPECS["dense"])["n_features"])
    n = draw(st.integers(0, 5))
    ok = draw(st.sampled_from(["all"] * 2 + ["model_id", "ts", "features", "label", "none"]))

    def right(name: str) -> bool:
        return ok == "all" or (ok == name) or (ok != "none" and draw(st.booleans()))

    x = draw(
        st.lists(st.lists(st.floats(width=64), min_size=d, max_size=d), min_size=n, max_size=n)
    )
    if right("features"):
        flat = pa.array([v for row in x for v in row], pa.float64())
        features: pa.Array = draw(
            st.sampled_from(
                [
                    pa.FixedSizeListArray.from_arrays(flat, d),
                    pa.array(x, pa.list_(pa.float64())),
                    pa.array(x, pa.large_list(pa.float64())),
                ]
            )
        )
    else:
        features = draw(
            st.sampled_from(
                [
                    lambda: pa.array([r[:-1] for r in x], pa.list_(pa.float64())),
                    lambda: pa.array([[*r, 1.0] for r in x], pa.list_(pa.float64())),
                    lambda: pa.array([None] * n, pa.list_(pa.float64())),
                    lambda: pa.array([[None] * d] * n, pa.list_(pa.float64())),
                    lambda: pa.array([[str(v) for v in r] for r in x], pa.list_(pa.string())),
                    lambda: pa.array(
                        [[int(v) % 7 for v in r if math.isfinite(v)] for r in x],
                        pa.list_(pa.int64()),
                    ),
                    lambda: pa.array(
                        [[[v] for v in r] for r in x], pa.list_(pa.list_(pa.float64()))
                    ),
                    lambda: pa.array([r[0] if r else 0.0 for r in x], pa.float64()),
                    lambda: pa.array([{"a": 1.0}] * n),
                    lambda: pa.array(["1,2,3"] * n, pa.string()),
                    lambda: pa.array([[True] * d] * n, pa.list_(pa.bool_())),
                    lambda: pa.FixedSizeListArray.from_arrays(
                        pa.array([1.0] * (n * (d + 1)), pa.float64()), d + 1
                    ),
                ]
            )
        )()
    ts_good = draw(st.lists(st.integers(0, 2**62 - 1), min_size=n, max_size=n))
    if right("ts"):
        ts = pa.array(ts_good, pa.int64())
    else:
        ts = draw(
            st.sampled_from(
                [
                    lambda: pa.array([-1] * n, pa.int64()),
                    lambda: pa.array([2**62] * n, pa.int64()),
                    lambda: pa.array([2**64 - 1] * n, pa.uint64()),
                    lambda: pa.array([1.5] * n, pa.float64()),
                    lambda: pa.array([math.nan] * n, pa.float64()),
                    lambda: pa.array([1e300] * n, pa.float64()),
                    lambda: pa.array([None] * n, pa.int64()),
                    lambda: pa.array(["5"] * n, pa.string()),
                    lambda: pa.array(["soon"] * n, pa.string()),
                    lambda: pa.array(ts_good, pa.timestamp("ms")),
                    lambda: pa.array([[1]] * n, pa.list_(pa.int64())),
                    lambda: pa.array([{"t": 1}] * n),
                ]
            )
        )()
    labels = draw(
        st.lists(label_for(SPECS.get(model_id, SPECS["dense"])).map(float), min_size=n, max_size=n)
    )
    if right("label"):
        label = pa.array(labels, pa.float64())
    else:
        label = draw(
            st.sampled_from(
                [
                    lambda: pa.array([math.nan] * n, pa.float64()),
                    lambda: pa.array([math.inf] * n, pa.float64()),
                    lambda: pa.array([2.0] * n, pa.float64()),
                    lambda: pa.array([0.5] * n, pa.float64()),
                    lambda: pa.array([None] * n, pa.float64()),
                    lambda: pa.array([True] * n, pa.bool_()),
                    lambda: pa.array(["1"] * n, pa.string()),
                    lambda: pa.array(["one"] * n, pa.string()),
                    lambda: pa.array([[1.0]] * n, pa.list_(pa.float64())),
                    lambda: pa.array([1] * n, pa.int8()),
                ]
            )
        )()
    if right("model_id"):
        ids: pa.Array = draw(
            st.sampled_from(
                [
                    pa.array([model_id] * n, pa.string()),
                    pa.array([model_id] * n, pa.large_string()),
                    pa.array([model_id] * n, pa.string()).dictionary_encode(),
                ]
            )
        )
    else:
        ids = draw(
            st.sampled_from(
                [
                    lambda: pa.array([model_id, "other"] * n, pa.string())[:n],
                    lambda: pa.array([None] * n, pa.string()),
                    lambda: pa.array([7] * n, pa.int64()),
                    lambda: pa.array([model_id.encode()] * n, pa.binary()),
                    lambda: pa.array([[model_id]] * n, pa.list_(pa.string())),
                    lambda: pa.array([{"m": model_id}] * n),
                    lambda: pa.array(["\u00e9" * 300] * n, pa.string()),
                ]
            )
        )()
    columns = {"model_id": ids, "ts": ts, "features": features, "label": label}
    names = [c for c in columns if ok == "all" or draw(st.integers(0, 9)) != 0]
    arrays = [columns[c] for c in names]
    if draw(st.integers(0, 5)) == 0:  # a column twice
        i = draw(st.integers(0, len(names))) % max(len(names), 1)
        if names:
            names.append(names[i])
            arrays.append(arrays[i])
    if draw(st.booleans()):
        names.append("extra")
        arrays.append(pa.array(range(n), pa.int64()))
    return pa.Table.from_arrays(arrays, names=names)


@FUZZ
@given(bulk_tables(), st.sampled_from([None, 1, 2]))
def test_bulk_records_of_any_schema_parse_or_go_to_the_dlq(
    table: pa.Table, chunk: int | None
) -> None:
    raw = ipc(table, chunk)
    assert is_bulk(raw)
    assert_contract("fl.samples", raw)


@st.composite
def valid_bulk(draw: st.DrawFn) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    model_id = draw(st.sampled_from(["dense", "soft"]))
    spec = SPECS[model_id]
    n = draw(st.integers(1, 6))
    ts = np.array(draw(st.lists(st.integers(0, 2**62 - 1), min_size=n, max_size=n)), dtype=np.int64)
    X = np.array(
        draw(st.lists(FINITE, min_size=n * spec["n_features"], max_size=n * spec["n_features"])),
        dtype=np.float64,
    ).reshape(n, spec["n_features"])
    y = np.array(draw(st.lists(label_for(spec).map(float), min_size=n, max_size=n)))
    return model_id, ts, X, y


@FUZZ
@given(valid_bulk())
def test_valid_bulk_records_parse_exactly(
    case: tuple[str, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    model_id, ts, X, y = case
    b = parse_sample_batch(encode_sample_batch(model_id, ts, X, y), spec_for)
    check_batch(b)
    assert b.model_id == model_id
    assert b.ts.tolist() == ts.tolist()
    assert b.features.tobytes() == X.tobytes() and b.labels.tobytes() == y.tobytes()


@pytest.mark.parametrize("column", ["model_id", "features"])
def test_bulk_record_with_corrupt_offsets_goes_to_the_dlq(column: str) -> None:
    """A middle offset far out of bounds passes the IPC reader's cheap checks; reading the
    column then went out of bounds and the worker died of a segfault (found by the
    corruption fuzzing below)."""
    bad = pa.py_buffer(np.array([0, 1 << 30, 6], dtype=np.int32).tobytes())
    ids = pa.array(["dense", "dense"])
    features: pa.Array = pa.array([[1.0, 2.0, 3.0]] * 2, pa.list_(pa.float64()))
    if column == "model_id":
        ids = pa.Array.from_buffers(pa.string(), 2, [None, bad, pa.py_buffer(b"densedense")])
    else:
        features = pa.Array.from_buffers(
            features.type, 2, [None, bad], children=[pa.array([1.0] * 6)]
        )
    raw = ipc(
        pa.table(
            {
                "model_id": ids,
                "ts": pa.array([1, 2]),
                "features": features,
                "label": pa.array([0.0, 1.0]),
            }
        )
    )
    with pytest.raises(RecordError) as info:
        parse_sample_batch(raw, spec_for)
    assert info.value.reason == "bad_arrow"


@FUZZ
@given(valid_bulk(), st.data())
def test_corrupted_bulk_records_parse_or_go_to_the_dlq(
    case: tuple[str, np.ndarray, np.ndarray, np.ndarray], data: st.DataObject
) -> None:
    """Bytes of a real bulk record flipped, overwritten, cut or extended."""
    buf = bytearray(encode_sample_batch(*case))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "cut", "extend"]))
        pos = data.draw(st.integers(4, len(buf) - 1))
        if op == "flip":
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            buf[pos] = data.draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x10]))
        elif op == "cut":
            del buf[max(pos, 8) :]
        else:
            buf += data.draw(st.binary(min_size=1, max_size=16))
    assert_contract("fl.samples", bytes(buf))


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


def as_float64_numbers(value: Any) -> Any:
    """``value`` with integers beyond 64 bits as floats (orjson's reading of them)."""
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else float(value)
    if isinstance(value, list):
        return [as_float64_numbers(v) for v in value]
    return {k: as_float64_numbers(v) for k, v in value.items()}


def python_json_object(raw: bytes) -> Any:
    """What the loader gave when it used Python's json alone: the object, or a reason."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return "not_json"
    return as_float64_numbers(obj) if isinstance(obj, dict) else "not_object"


@given(
    st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        json_values.map(lambda v: json.dumps(v).encode("utf-16")),
        st.binary(max_size=40),
    )
)
@example(b'{"a": NaN, "b": -Infinity, "c": 1e400}')
@example(b'\xef\xbb\xbf{"a": 1}')
@example(b'{"a": "\\ud800"}')
@example('{"": -9223372036854775809}'.encode("utf-16"))
def test_the_fast_json_path_reads_what_python_json_reads(raw: bytes) -> None:
    try:
        # Integers beyond 64 bits come out as floats from orjson, exact from json (which
        # reads what orjson refuses, UTF-16 text among it): the same number to every field.
        got = as_float64_numbers(records._load_json_object(raw))
    except RecordError as exc:
        got = exc.reason
    want = python_json_object(raw)
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
