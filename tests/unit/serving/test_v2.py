"""Reading V2 inference requests into V1 rows, and V1 scores into V2 output tensors."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from flowlearn.serving.v2 import Refused, model_metadata, output_tensors, parse_infer

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
