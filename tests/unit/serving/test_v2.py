"""Reading V2 inference requests into V1 rows, and V1 scores into V2 output tensors."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from flowlearn.serving.v2 import (
    Refused,
    inline_binary,
    model_metadata,
    output_tensors,
    parse_infer,
)

DENSE = {"type": "logistic", "n_features": 2, "features": "dense", "classes": [0, 1]}
HASHED = {**DENSE, "features": "hashed", "n_features": 8}
NAMED = {**DENSE, "feature_names": ["a", "b"]}
SOFTMAX = {"type": "softmax", "n_features": 2, "features": "dense", "classes": [0, 1, 2]}
LINEAR = {"type": "linear", "n_features": 2, "features": "dense", "classes": None}


def tensor(shape: list[int], data: Any, datatype: str = "FP64", name: str = "input-0") -> Any:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


@pytest.mark.parametrize(
    "data",
    [[1, 2.5, 3, 4], [[1, 2.5], [3, 4]]],
    ids=["flat", "nested"],
)
def test_dense_tensor_becomes_rows(data):
    parsed = parse_infer({"id": "x", "inputs": [tensor([2, 2], data)]}, DENSE, 10)
    assert parsed.rows == [[1, 2.5], [3, 4]]
    assert parsed.event_ids == [None, None] and parsed.outputs is None and parsed.id == "x"


def test_json_objects_and_event_ids():
    rows = [{"u": "a", "x": 1}, {"y": 2.5}]
    body = {
        "inputs": [
            tensor([2], [json.dumps(r) for r in rows], "BYTES"),
            tensor([2], ["e1", "e2"], "BYTES", name="event_id"),
        ],
        "outputs": [{"name": "proba"}, {"name": "proba"}],
    }
    for spec in (HASHED, NAMED):
        parsed = parse_infer(body, spec, 10)
        assert parsed.rows == rows and parsed.event_ids == ["e1", "e2"]
        assert parsed.outputs == ["proba"]


@pytest.mark.parametrize(
    "body, spec, message",
    [
        ([], DENSE, "expected an inference request object"),
        ({"inputs": [tensor([1, 2], [1, 2, 3])]}, DENSE, "holds 2 elements, data has 3"),
        ({"inputs": [tensor([1, 3], [1, 2, 3])]}, DENSE, "expected [n, 2], got [1, 3]"),
        ({"inputs": [tensor([2, 2], [[1, 2], [3, [4]]])]}, DENSE, "data[1][1]: nested deeper"),
        ({"inputs": [tensor([1, 2], [1, 2], "UINT8")]}, DENSE, "'UINT8' not accepted"),
        ({"inputs": [tensor([1, 2], [1, 2], "FP16")]}, NAMED, "FP32, INT64, INT32 or BYTES"),
        ({"inputs": [tensor([1, 8], [0] * 8)]}, HASHED, "takes hashed features"),
        ({"inputs": [tensor([1], ['{"a": 1}'], "BYTES")]}, DENSE, "takes numbers"),
        ({"inputs": [tensor([1], ["[1]"], "BYTES")]}, HASHED, "expected a JSON object"),
        ({"inputs": [tensor([1], ["{"], "BYTES")]}, HASHED, "expected a JSON object"),
        ({"inputs": [tensor([1], [1], "BYTES")]}, HASHED, "data[0]: expected a string"),
        ({"inputs": [tensor([1, 2], [1, float("nan")])]}, DENSE, "not a finite"),
        ({"inputs": [tensor([1, 2], [1, None])]}, DENSE, "expected a number"),
        ({"inputs": [tensor([1, 2], [1, 2])], "outputs": [{"name": "x"}]}, DENSE, "unknown"),
        ({"inputs": [tensor([1, 2], [1, 2])], "outputs": [{"name": "proba"}]}, LINEAR, "proba"),
        ({"inputs": [tensor([1, 2], [1, 2])], "outputs": {}}, DENSE, "outputs: expected"),
        ({"inputs": [tensor([1, 2], [1, 2])], "parameters": 3}, DENSE, "parameters"),
        ({"inputs": [{"name": "i", "shape": [1, 2], "datatype": "FP64"}]}, DENSE, "data: missing"),
        ({"inputs": [tensor([True, 2], [1, 2])]}, DENSE, "non-negative integers"),
    ],
)
def test_refused_with_a_message_naming_the_field(body, spec, message):
    with pytest.raises(Refused) as refused:
        parse_infer(body, spec, 10)
    assert refused.value.status == 400
    assert message in refused.value.message


def test_missing_values_where_the_model_imputes_them():
    spec = {**DENSE, "missing": "impute"}
    assert parse_infer({"inputs": [tensor([1, 2], [1, None])]}, spec, 10).rows == [[1, None]]


def test_too_many_rows_is_413():
    with pytest.raises(Refused) as refused:
        parse_infer({"inputs": [tensor([3, 2], [0] * 6)]}, DENSE, 2)
    assert refused.value.status == 413


def test_outputs_from_scores():
    p = np.array([0.25, 0.75])
    out = output_tensors(DENSE, p, None, None)
    assert out == [
        {"name": "predict", "shape": [2], "datatype": "INT64", "data": [0, 1]},
        {"name": "proba", "shape": [2, 2], "datatype": "FP64", "data": [0.75, 0.25, 0.25, 0.75]},
    ]
    probs = np.array([[0.2, 0.5, 0.3]])
    out = output_tensors(SOFTMAX, probs, ["e"], ["event_id", "predict"])
    assert out == [
        {"name": "event_id", "shape": [1], "datatype": "BYTES", "data": ["e"]},
        {"name": "predict", "shape": [1], "datatype": "INT64", "data": [1]},
    ]
    assert output_tensors(LINEAR, np.array([1.5]), None, None) == [
        {"name": "predict", "shape": [1], "datatype": "FP64", "data": [1.5]}
    ]


def test_model_metadata():
    meta = model_metadata("s", 4, SOFTMAX, logged=True)
    assert meta["versions"] == ["4"] and meta["platform"] == "flowlearn"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 2]}]
    assert [o["name"] for o in meta["outputs"]] == ["predict", "proba", "event_id"]
    assert meta["outputs"][1]["shape"] == [-1, 3]
    assert model_metadata("h", 1, HASHED, logged=False)["inputs"][0]["datatype"] == "BYTES"


# ---------------------------------------------------------------------------- binary tensors


def binary_body(*parts: tuple[dict[str, Any], bytes]) -> tuple[bytes, str]:
    """A binary-extension body: the JSON header, then each input's bytes."""
    inputs = [{**t, "parameters": {"binary_data_size": len(data)}} for t, data in parts]
    header = json.dumps({"inputs": inputs}).encode()
    return header + b"".join(data for _, data in parts), str(len(header))


def test_binary_inputs_read_as_their_elements():
    rows = np.array([[1.5, -2.0], [3.0, 1e-300]])
    ids = [b"ev-1", "é".encode()]
    raw, length = binary_body(
        ({"name": "input-0", "shape": [2, 2], "datatype": "FP64"}, rows.astype("<f8").tobytes()),
        (
            {"name": "event_id", "shape": [2], "datatype": "BYTES"},
            b"".join(struct.pack("<I", len(b)) + b for b in ids),
        ),
    )
    parsed = parse_infer(inline_binary(raw, length), DENSE, 10)
    assert parsed.rows == rows.tolist() and parsed.event_ids == ["ev-1", "é"]
    int_raw, int_length = binary_body(
        ({"name": "input-0", "shape": [1, 2], "datatype": "INT32"}, b"\x01\0\0\0\xff\xff\xff\xff")
    )
    assert parse_infer(inline_binary(int_raw, int_length), DENSE, 10).rows == [[1, -1]]


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda raw, n: (raw, "x"), "the JSON part's length"),
        (lambda raw, n: (raw, str(len(raw) + 1)), "the JSON part's length"),
        (lambda raw, n: (raw + b"\0", n), "1 bytes after the binary inputs"),
        (lambda raw, n: (raw[:-1], n), "bytes are not there"),
        (lambda raw, n: (raw[: int(n) - 1] + raw[int(n) :], str(int(n) - 1)), "not JSON"),
    ],
)
def test_binary_bodies_that_do_not_add_up_are_refused(mangle, message):
    raw, length = binary_body(
        ({"name": "input-0", "shape": [1, 2], "datatype": "FP32"}, np.zeros(2, "<f4").tobytes())
    )
    with pytest.raises(Refused, match=message) as refused:
        inline_binary(*mangle(raw, length))
    assert refused.value.status == 400


def test_binary_elements_must_be_whole():
    raw, length = binary_body(
        ({"name": "input-0", "shape": [1, 2], "datatype": "FP64"}, b"\0" * 12)
    )
    with pytest.raises(Refused, match="12 bytes are not whole FP64 elements"):
        inline_binary(raw, length)
    raw, length = binary_body(
        ({"name": "event_id", "shape": [1], "datatype": "BYTES"}, struct.pack("<I", 9) + b"ab")
    )
    with pytest.raises(Refused, match="a BYTES element is cut off"):
        inline_binary(raw, length)


def test_a_body_without_the_header_is_plain_json():
    body = {"inputs": [tensor([1, 2], [1, 2])]}
    assert inline_binary(json.dumps(body).encode(), None) == body
    with pytest.raises(Refused, match="not JSON"):
        inline_binary(b"{", None)
