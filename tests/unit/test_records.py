import base64
import hashlib
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowlearn.contracts.records import (
    MAX_DLQ_RAW_BYTES,
    MAX_RECORD_BYTES,
    RecordError,
    dlq_record,
    parse_sample,
    valid_labels,
)

DENSE = {"type": "logistic", "features": "dense", "n_features": 3}
SPECS = {"m": DENSE, "soft": {**DENSE, "type": "softmax", "n_classes": 3}}


def spec_for(model_id):
    return SPECS.get(model_id)


def rec(**over):
    base = {"model_id": "m", "ts": 1000, "features": [1, 2.5, -3], "label": 1}
    base.update(over)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_valid_sample():
    s = parse_sample(rec(event_id="e1"), spec_for)
    assert (s.model_id, s.ts, s.label, s.event_id) == ("m", 1000, 1.0, "e1")
    assert s.features.tolist() == [1.0, 2.5, -3.0]


@pytest.mark.parametrize(
    "raw, reason, fragment",
    [
        (b"{not json", "not_json", ""),
        (b"", "not_json", "no value"),  # what the job's sources make of a tombstone
        (b"\xff\xfe", "not_json", ""),
        (b"[1, 2]", "not_object", "list"),
        (rec(model_id=...), "missing_field", "'model_id'"),
        (rec(features=...), "missing_field", "'features'"),
        (rec(label=...), "missing_field", "'label'"),
        (rec(ts=...), "missing_field", "'ts'"),
        (rec(ts="yesterday"), "bad_field", "'ts'"),
        (rec(ts=-5), "bad_field", "out of range"),
        (rec(label=0.5), "bad_field", "0 or 1"),
        (rec(model_id=7), "bad_model_id", "'model_id'"),
        (rec(model_id="fraud eu"), "bad_model_id", "outside [A-Za-z0-9._-]"),
        (rec(model_id="m" * 201), "bad_model_id", "at most 200"),
        (rec(model_id="m/x"), "bad_model_id", "outside"),
        (rec(model_id="nope"), "unknown_model", "nope"),
        (rec(features=[1, 2]), "bad_features", "expected 3 values, got 2"),
        (rec(features=[1, "x", 3]), "bad_features", "features[1]"),
        (rec(features={"a": 1}), "bad_features", "list of 3 numbers"),
        (b'{"model_id":"m","ts":1,"features":[1,NaN,3],"label":1}', "bad_features", "finite"),
        (b'{"model_id":"m","ts":1,"features":[1,1e999,3],"label":1}', "bad_features", "finite"),
        (rec(model_id="soft", label=3), "bad_field", "0..2"),
        (b" " * (MAX_RECORD_BYTES + 1), "too_large", ""),
    ],
)
def test_bad_records_have_a_reason(raw, reason, fragment):
    with pytest.raises(RecordError) as info:
        parse_sample(raw, spec_for)
    assert info.value.reason == reason
    assert fragment in info.value.message


def test_a_record_in_the_schema_registry_wire_format_is_read_as_its_json():
    """Confluent's JSON Schema serializer writes a zero byte and a 4-byte schema id before
    the JSON; Avro or Protobuf after that header is not JSON, and the reason says so."""
    header = b"\x00" + (1234).to_bytes(4, "big")
    s = parse_sample(header + rec(event_id="e1"), spec_for)
    assert (s.model_id, s.label, s.event_id) == ("m", 1.0, "e1")
    with pytest.raises(RecordError) as info:
        parse_sample(header + rec(label=0.5), spec_for)
    assert info.value.reason == "bad_field"  # the JSON's own checks, as without the header
    with pytest.raises(RecordError) as info:
        parse_sample(header + b"\x02\x0cfraud-eu\xd0\x0f", spec_for)  # Avro bytes
    assert info.value.reason == "not_json"
    assert "schema id 1234" in info.value.message and "not Avro" in info.value.message


def test_dlq_record_keeps_raw_bytes():
    raw = b"\x00\xffbad"
    d = json.loads(dlq_record("fl.samples", "not_json", raw, 5, "detail", partition=1, offset=9))
    assert base64.b64decode(d["raw"]) == raw
    assert d["reason"] == "not_json" and d["partition"] == 1 and d["offset"] == 9


def test_a_dead_letter_of_any_json_record_fits_one_kafka_message():
    # The largest JSON record accepted is kept whole in its dead letter, base64 and all,
    # under Kafka's default 1 MiB message size.
    raw = b"x" * MAX_RECORD_BYTES
    letter = dlq_record("fl.samples", "not_json", raw, 5, "detail" * 200)
    d = json.loads(letter)
    assert base64.b64decode(d["raw"]) == raw and "raw_truncated" not in d
    assert len(letter.encode()) < 1 << 20


def test_a_dead_letter_of_a_huge_record_keeps_its_head_size_and_digest():
    raw = bytes(range(256)) * (MAX_DLQ_RAW_BYTES // 256 + 1000)
    letter = dlq_record("fl.samples", "too_large", raw, 5)
    d = json.loads(letter)
    assert base64.b64decode(d["raw"]) == raw[:MAX_DLQ_RAW_BYTES]
    assert d["raw_truncated"] is True and d["raw_size"] == len(raw)
    assert d["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert len(letter.encode()) < 1 << 20


def bulk(n=4, d=3, **over):
    import numpy as np

    from flowlearn.contracts.records import encode_sample_batch

    X = np.arange(n * d, dtype=float).reshape(n, d)
    args = {
        "model_id": "m",
        "ts": np.arange(n) + 100,
        "features": X,
        "labels": np.array([0.0, 1.0] * (n // 2)),
    }
    args.update(over)
    return encode_sample_batch(**args)


def test_bulk_record_round_trip():
    from flowlearn.contracts.records import is_bulk, parse_sample_batch

    raw = bulk()
    assert is_bulk(raw) and not is_bulk(b'{"a": 1}')
    b = parse_sample_batch(raw, spec_for)
    assert b.model_id == "m" and b.features.shape == (4, 3)
    assert b.ts.tolist() == [100, 101, 102, 103] and b.labels.tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize(
    "raw, reason, fragment",
    [
        (b"\xff\xff\xff\xffgarbage", "bad_arrow", ""),
        (bulk(d=2), "bad_features", "expected 3 values, got 2"),
        (bulk(model_id="nope"), "unknown_model", "nope"),
        (bulk(labels=[0.0, 1.0, 2.0, 1.0]), "bad_field", "0 or 1"),
    ],
)
def test_bad_bulk_records_have_a_reason(raw, reason, fragment):
    from flowlearn.contracts.records import parse_sample_batch

    with pytest.raises(RecordError) as info:
        parse_sample_batch(raw, spec_for)
    assert info.value.reason == reason and fragment in info.value.message


def test_bulk_record_with_a_nan_names_the_row():
    import numpy as np

    from flowlearn.contracts.records import parse_sample_batch

    X = np.ones((4, 3))
    X[2, 1] = np.nan
    with pytest.raises(RecordError, match="row 2: features not finite"):
        parse_sample_batch(bulk(features=X), spec_for)


def test_control_commands():
    from flowlearn.contracts.records import parse_control

    c = parse_control(
        b'{"model_id": "m", "command": "rollback", "args": {"version": 3},'
        b' "ts": 5, "source": "cli:alice"}'
    )
    assert (c.model_id, c.command, c.args["version"], c.source) == ("m", "rollback", 3, "cli:alice")
    assert parse_control(b'{"model_id": "m", "command": "pause", "ts": 5}').args == {}
    for raw, reason in [
        (b'{"model_id": "m", "command": "explode", "ts": 5}', "unknown_command"),
        (b'{"model_id": "m", "command": "rollback", "ts": 5}', "bad_field"),
        (
            b'{"model_id": "m", "command": "set_learning_rate", "args": {"learning_rate": "x"},'
            b' "ts": 5}',
            "bad_field",
        ),
        (b'{"model_id": "m", "command": "create", "ts": 5}', "bad_field"),
        (b'{"model_id": "m", "command": "create", "args": {"spec": [1]}, "ts": 5}', "bad_field"),
        (b'{"model_id": "a b", "command": "delete", "ts": 5}', "bad_model_id"),
    ]:
        with pytest.raises(RecordError) as info:
            parse_control(raw)
        assert info.value.reason == reason


# ---------------------------------------------------------------------------- bandits


def bandit_spec(**over):
    from flowlearn.core.spec import ModelSpec

    return {**ModelSpec(type="contextual_bandit", n_features=3, n_actions=4).as_dict(), **over}


def bandit_event(**over):
    base = {
        "model_id": "b",
        "event_id": "e1",
        "ts": 1000,
        "features": [1, 2.5, -3],
        "action": 2,
        "propensity": 0.25,
    }
    base.update(over)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_a_bandit_event_carries_its_choice_into_the_feedback_row():
    from flowlearn.contracts.records import parse_event, parse_label

    listed = bandit_spec()
    event = parse_event(bandit_event(), lambda _m: listed)
    assert event.features.tolist() == [1.0, 2.5, -3.0, 2.0, 0.25]
    features = bandit_spec(n_actions=0, n_action_features=2)
    event = parse_event(bandit_event(action=[0.5, -1]), lambda _m: features)
    assert event.features.tolist() == [1.0, 2.5, -3.0, 0.5, -1.0, 0.25]
    # A sample (logged feedback sent directly) is the same row with its reward.
    sample = parse_sample(bandit_event(label=0.75), lambda _m: listed)
    assert sample.features.tolist()[-2:] == [2.0, 0.25] and sample.label == 0.75
    label = b'{"model_id": "b", "event_id": "e1", "ts": 2000, "label": 1}'
    assert parse_label(label, lambda _m: listed).label == 1.0


@pytest.mark.parametrize(
    ("over", "reason", "fragment"),
    [
        ({"action": ...}, "missing_field", "'action'"),
        ({"action": 4}, "bad_action", "index in 0..3"),
        ({"action": 1.5}, "bad_action", "index in 0..3"),
        ({"action": True}, "bad_action", "index in 0..3"),
        ({"propensity": ...}, "missing_field", "'propensity'"),
        ({"propensity": 0}, "bad_propensity", "(0, 1]"),
        ({"propensity": 1.5}, "bad_propensity", "(0, 1]"),
        ({"propensity": 0.0005}, "low_propensity", "below the model's min_propensity 0.001"),
        ({"label": 2}, "reward_out_of_range", "outside the model's reward_range [0, 1]"),
    ],
)
def test_bad_bandit_feedback_has_a_reason(over, reason, fragment):
    from flowlearn.contracts.records import parse_event

    spec = bandit_spec()
    parse = parse_sample if "label" in over else parse_event
    raw = bandit_event(**({"label": 0.5} | over if parse is parse_sample else over))
    with pytest.raises(RecordError) as err:
        parse(raw, lambda _m: spec)
    assert err.value.reason == reason and fragment in err.value.message


def test_action_features_must_be_the_declared_number():
    from flowlearn.contracts.records import parse_event

    spec = bandit_spec(n_actions=0, n_action_features=2)
    for action in (1, [1.0], [1.0, float("inf")], [1, "x"]):
        with pytest.raises(RecordError, match="bad_action") as err:
            parse_event(bandit_event(action=action), lambda _m: spec)
        assert "2 features" in err.value.message


def test_a_dead_letter_of_hashed_samples_keeps_them_sparse():
    """The trainer's DLQ record of a hashed model's samples: columns indices and values
    (the hashed columns), n_features in the schema's metadata; never a dense matrix."""
    import numpy as np
    import pyarrow as pa

    from flowlearn.contracts.records import encode_sample_batch, is_bulk, parse_sample_batch
    from flowlearn.core.sparse import SparseRows

    X = SparseRows(np.array([0, 2, 3]), np.array([5, 2**17, 9]), np.array([1.0, -2.0, 0.5]), 2**18)
    raw = encode_sample_batch("m", np.array([1, 2]), X, np.array([0.0, 1.0]))
    assert is_bulk(raw) and len(raw) < 4096
    table = pa.ipc.open_stream(raw).read_all()
    assert table.column("indices").to_pylist() == [[5, 2**17], [9]]
    assert table.column("values").to_pylist() == [[1.0, -2.0], [0.5]]
    assert table.schema.metadata[b"n_features"] == b"262144"
    with pytest.raises(RecordError, match="features"):  # not a bulk record the job takes
        parse_sample_batch(raw, lambda _m: DENSE)


LABEL_SPECS = [
    {"type": "logistic", "n_features": 1},
    {"type": "softmax", "n_features": 1, "n_classes": 3},
    {"type": "random_forest", "n_features": 1, "classes": ["a", "b"]},
    {"type": "linear", "n_features": 1},
    {"type": "contextual_bandit", "n_features": 1, "n_actions": 2, "reward_range": [-1, 2]},
]


@given(
    st.sampled_from(LABEL_SPECS),
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-3, 4).map(float),
        st.sampled_from([0.0, 1.0, 2.0, 0.5, -0.0, 2.999999]),
    ),
)
def test_a_column_of_labels_is_checked_by_the_rules_of_one_record(spec, label):
    # The decoded JSON samples and bulk records check labels as columns; one record's parse
    # checks its own, with a reason. The two must take the same labels.
    def one(value):
        try:
            parse_sample(
                json.dumps(
                    {"model_id": "m", "ts": 1, "features": [0.0], "label": value}
                    | {"action": 0, "propensity": 0.5}
                ).encode(),
                lambda _id: spec,
            )
        except RecordError as exc:
            assert exc.reason in ("bad_field", "reward_out_of_range")
            return False
        return True

    taken = bool(valid_labels(np.array([label]), spec)[0])
    assert taken == (math.isfinite(label) and one(label))
