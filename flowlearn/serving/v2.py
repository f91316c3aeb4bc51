"""The Open Inference Protocol (KServe V2, REST) in terms of the V1 scoring path.

An inference request's tensors become the rows a V1 ``instances`` list would hold (dense
lists of numbers, or ``{name: value}`` maps), so both protocols score, log and count through
one path (:func:`flowlearn.serving.app.answer`); the scores become output tensors. This
module only translates, and says what is wrong with a request (:class:`Refused`).

A model takes one tensor, ``input-0``:

- dense features: numbers (FP64; FP32, INT32 and INT64 accepted and read as float64) of
  shape ``[n, n_features]``, the data flat in row-major order or nested;
- a hashed model, or a dense one with ``feature_names``: BYTES of shape ``[n]``, each element
  a JSON object ``{name: value}`` (a dense model with names takes numbers too).

An optional second input, ``event_id`` (BYTES ``[n]``), gives the rows' event ids, as V1's
``{"features": ..., "event_id": ...}`` wrapper does. Outputs: ``predict`` (a classifier's
class index, INT64 ``[n]``; a regressor's value, FP64 ``[n]``), ``proba`` (a classifier's
class probabilities, FP64 ``[n, k]``) and, while predictions are logged, ``event_id``.

>>> spec = {"type": "logistic", "n_features": 2, "features": "dense", "classes": [0, 1]}
>>> parse_infer({"inputs": [{"name": "input-0", "shape": [1, 2], "datatype": "FP32",
...                          "data": [1, 2.5]}]}, spec, 10).rows
[[1, 2.5]]
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson

from flowlearn.contracts.records import is_bandit
from flowlearn.core.model_types import model_type
from flowlearn.serving.scoring import predicted_classes

#: The one feature input's name in the model metadata (any name is accepted on input).
INPUT = "input-0"
#: The optional input (and, while the log is on, output) of event ids.
EVENT_ID = "event_id"
PREDICT, PROBA = "predict", "proba"
#: A contextual bandit's input of candidate actions (action features), and its outputs.
ACTIONS = "actions"
ACTION, PROPENSITY, PROBABILITIES = "action", "propensity", "probabilities"
NUMERIC = ("FP64", "FP32", "INT64", "INT32")
#: The binary tensor extension: the JSON part's length; the tensors' bytes follow it.
BINARY_HEADER = "Inference-Header-Content-Length"
BINARY_DTYPES = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8", "INT32": "<i4"}
#: What this server implements beyond the core protocol (server metadata).
EXTENSIONS = ["binary_tensor_data"]
INT_RANGE = {"INT32": 2**31, "INT64": 2**63}
PLATFORM = "flowlearn"


class Refused(Exception):
    """A request answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Infer(NamedTuple):
    """An inference request, read: what the V1 path takes, plus what to answer."""

    rows: list[Any]
    event_ids: list[str | None]
    outputs: list[str] | None  # None: every output
    id: str | None
    #: A bandit's candidate actions per row (``m`` lists of ``n_action_features`` numbers),
    #: from the ``actions`` input; None without action features.
    candidates: list[Any] | None = None


def takes_maps(spec: Mapping[str, Any]) -> bool:
    """Whether the model reads ``{name: value}`` rows (hashed, or named dense features)."""
    return spec.get("features", "dense") == "hashed" or bool(spec.get("feature_names"))


def takes_numbers(spec: Mapping[str, Any]) -> bool:
    return spec.get("features", "dense") == "dense"


def is_classifier(spec: Mapping[str, Any]) -> bool:
    return model_type(spec.get("type")).classifier


def n_classes(spec: Mapping[str, Any]) -> int:
    """Classes of a classifier's ``proba`` (-1 when the spec does not say)."""
    if model_type(spec.get("type")).task == "binary":
        return 2
    return len(spec.get("classes") or ()) or int(spec.get("n_classes") or -1)


def output_names(spec: Mapping[str, Any], logged: bool) -> list[str]:
    if is_bandit(spec):  # a choice always has its event id: the reward is sent with it
        return [ACTION, PROPENSITY, PROBABILITIES, EVENT_ID]
    names = [PREDICT, PROBA] if is_classifier(spec) else [PREDICT]
    return [*names, EVENT_ID] if logged else names


def model_metadata(
    name: str, version: int, spec: Mapping[str, Any], logged: bool
) -> dict[str, Any]:
    """``GET /v2/models/{m}``: the served version, the input tensor, the outputs."""
    n_features = int(spec["n_features"])
    if takes_numbers(spec):
        inputs = [{"name": INPUT, "datatype": "FP64", "shape": [-1, n_features]}]
    else:
        inputs = [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}]
    outputs: list[dict[str, Any]] = []
    if is_bandit(spec):
        n_action_features = int(spec.get("n_action_features") or 0)
        m = -1 if n_action_features else int(spec["n_actions"])
        if n_action_features:
            inputs.append(
                {"name": ACTIONS, "datatype": "FP64", "shape": [-1, -1, n_action_features]}
            )
        outputs = [
            {"name": ACTION, "datatype": "INT64", "shape": [-1]},
            {"name": PROPENSITY, "datatype": "FP64", "shape": [-1]},
            {"name": PROBABILITIES, "datatype": "FP64", "shape": [-1, m]},
            {"name": EVENT_ID, "datatype": "BYTES", "shape": [-1]},
        ]
    elif is_classifier(spec):
        outputs.append({"name": PREDICT, "datatype": "INT64", "shape": [-1]})
        outputs.append({"name": PROBA, "datatype": "FP64", "shape": [-1, n_classes(spec)]})
    else:
        outputs.append({"name": PREDICT, "datatype": "FP64", "shape": [-1]})
    if logged:
        outputs.append({"name": EVENT_ID, "datatype": "BYTES", "shape": [-1]})
    return {
        "name": name,
        "versions": [str(version)],
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": outputs,
    }


def _flatten(data: Any, shape: Sequence[int], where: str) -> list[Any]:
    """Tensor data, flat (row-major) or nested as ``shape``, as a flat list of its elements."""
    if not isinstance(data, list):
        raise Refused(400, f"{where}.data: expected an array")
    if not any(isinstance(x, list) for x in data):
        size = math.prod(shape)
        if len(data) != size:
            raise Refused(
                400,
                f"{where}: shape {list(shape)} holds {size} elements, data has {len(data)}",
            )
        return data
    flat: list[Any] = []

    def walk(node: Any, depth: int, at: str) -> None:
        if depth == len(shape):
            if isinstance(node, list):
                raise Refused(400, f"{where}.data{at}: nested deeper than shape {list(shape)}")
            flat.append(node)
            return
        if not isinstance(node, list) or len(node) != shape[depth]:
            raise Refused(
                400,
                f"{where}.data{at}: expected an array of {shape[depth]} (shape {list(shape)})",
            )
        for i, child in enumerate(node):
            walk(child, depth + 1, f"{at}[{i}]")

    walk(data, 0, "")
    return flat


def _shape(tensor: Mapping[str, Any], where: str) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        type(d) is int and d >= 0 for d in shape
    ):  # bool is not a dimension
        raise Refused(400, f"{where}.shape: expected an array of non-negative integers")
    return shape


def _strings(tensor: Mapping[str, Any], where: str, n: int | None) -> list[str]:
    """A BYTES tensor of ``n`` strings (shape ``[n]`` or ``[n, 1]``)."""
    if tensor.get("datatype") != "BYTES":
        raise Refused(400, f"{where}.datatype: expected BYTES, got {tensor.get('datatype')!r}")
    shape = _shape(tensor, where)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise Refused(400, f"{where}.shape: expected [n] (or [n, 1]), got {shape}")
    if n is not None and shape[0] != n:
        raise Refused(400, f"{where}.shape: {shape[0]} rows, the features have {n}")
    values = _flatten(tensor.get("data"), shape, where)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise Refused(400, f"{where}.data[{i}]: expected a string, got {type(v).__name__}")
    return values


def _numeric_rows(
    tensor: Mapping[str, Any], spec: Mapping[str, Any], where: str, model: str
) -> list[list[Any]]:
    datatype = tensor.get("datatype")
    n_features = int(spec["n_features"])
    if not takes_numbers(spec):
        raise Refused(
            400,
            f"{where}: model '{model}' takes hashed features, not numbers: send a BYTES tensor "
            f"of JSON objects (one per row), or use POST /v1/models/{model}:predict",
        )
    shape = _shape(tensor, where)
    if len(shape) != 2 or shape[1] != n_features:
        raise Refused(400, f"{where}.shape: expected [n, {n_features}], got {shape}")
    flat = _flatten(tensor.get("data"), shape, where)
    bound = INT_RANGE.get(str(datatype))
    if bound is not None:
        for i, v in enumerate(flat):
            if type(v) is not int or not -bound <= v < bound:
                raise Refused(400, f"{where}.data[{i}]: expected an {datatype} integer, got {v!r}")
    elif not _finite_numbers(flat):
        missing = spec.get("missing") == "impute"
        for i, v in enumerate(flat):
            if v is None and missing:
                continue  # a missing value, which the model's pipeline fills (as in V1)
            if type(v) not in (int, float):
                raise Refused(400, f"{where}.data[{i}]: expected a number, got {type(v).__name__}")
            if not _finite_numbers([v]):
                raise Refused(400, f"{where}.data[{i}]: not a finite float64 number")
    return [flat[i * n_features : (i + 1) * n_features] for i in range(shape[0])]


def _finite_numbers(values: list[Any]) -> bool:
    """Whether every value is a JSON number that is a finite float64 (C-level loops)."""
    try:
        return {int, float}.issuperset(map(type, values)) and all(map(math.isfinite, values))
    except OverflowError:  # an int beyond float64's range
        return False


def _map_rows(
    tensor: Mapping[str, Any], spec: Mapping[str, Any], where: str, model: str
) -> list[Any]:
    if not takes_maps(spec):
        raise Refused(
            400,
            f"{where}: model '{model}' takes numbers (FP64 of shape [n, {spec['n_features']}]); "
            "a BYTES tensor of JSON objects is for hashed or named features",
        )
    rows: list[Any] = []
    for i, text in enumerate(_strings(tensor, where, None)):
        try:
            row = orjson.loads(text)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise Refused(400, f"{where}.data[{i}]: expected a JSON object {{name: value}}")
        rows.append(row)
    return rows


def _object(value: Any, where: str) -> None:
    if value is not None and not isinstance(value, dict):
        raise Refused(400, f"{where}: expected an object")


def inline_binary(raw: bytes, json_length: str | None) -> Any:
    """An inference request body as JSON: ``raw`` as it is, or, with the binary tensor
    extension (``json_length``: the ``Inference-Header-Content-Length`` header), its JSON
    header with each binary input's elements read into its ``data`` (what tritonclient
    sends by default). Raises :class:`Refused` (400) for a body that does not add up.

    >>> header = orjson.dumps({"inputs": [{"name": "input-0", "shape": [1, 2],
    ...     "datatype": "FP32", "parameters": {"binary_data_size": 8}}]})
    >>> tail = np.array([1.5, -2.0], dtype="<f4").tobytes()
    >>> inline_binary(header + tail, str(len(header)))["inputs"][0]["data"]
    [1.5, -2.0]
    """
    if json_length is None:
        return _json_body(raw)
    try:
        length = int(json_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(raw):
        raise Refused(
            400, f"{BINARY_HEADER}: expected the JSON part's length (0 to {len(raw)} bytes)"
        )
    body = _json_body(raw[:length])
    inputs = body.get("inputs") if isinstance(body, dict) else None
    at = length
    for i, tensor in enumerate(inputs if isinstance(inputs, list) else ()):
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is None:
            continue
        where = f"inputs[{i}]"
        if type(size) is not int or not 0 <= size <= len(raw) - at:
            raise Refused(400, f"{where}.parameters.binary_data_size: {size!r} bytes are not there")
        if "data" in tensor:
            raise Refused(400, f"{where}: data given both inline and as binary")
        tensor["data"] = binary_elements(raw[at : at + size], tensor, where)
        at += size
    if at != len(raw):
        raise Refused(400, f"{len(raw) - at} bytes after the binary inputs belong to none of them")
    return body


def _json_body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except ValueError:
        raise Refused(400, "body is not JSON") from None


def binary_elements(chunk: bytes, tensor: Mapping[str, Any], where: str) -> list[Any]:
    """A binary input's elements, flat: numbers little-endian, BYTES as 4-byte
    little-endian lengths each followed by its (UTF-8) bytes."""
    datatype = tensor.get("datatype")
    if datatype in BINARY_DTYPES:
        dtype = np.dtype(BINARY_DTYPES[datatype])
        if len(chunk) % dtype.itemsize:
            raise Refused(400, f"{where}: {len(chunk)} bytes are not whole {datatype} elements")
        values: list[Any] = np.frombuffer(chunk, dtype=dtype).tolist()
        return values
    if datatype != "BYTES":
        raise Refused(400, f"{where}.datatype: {datatype!r} cannot be sent as binary data here")
    strings: list[Any] = []
    at = 0
    while at < len(chunk):
        if at + 4 > len(chunk):
            raise Refused(400, f"{where}: a BYTES element's length is cut off")
        (n,) = struct.unpack_from("<I", chunk, at)
        if at + 4 + n > len(chunk):
            raise Refused(400, f"{where}: a BYTES element is cut off")
        try:
            strings.append(chunk[at + 4 : at + 4 + n].decode())
        except UnicodeDecodeError:
            raise Refused(400, f"{where}: a BYTES element is not UTF-8") from None
        at += 4 + n
    return strings


def binary_bytes(values: Sequence[Any], datatype: str) -> bytes:
    """Elements as the binary form holds them: :func:`binary_elements` undone.

    >>> binary_elements(binary_bytes(["a", "bc"], "BYTES"), {"datatype": "BYTES"}, "x")
    ['a', 'bc']
    """
    if datatype == "BYTES":
        encoded = [str(v).encode() for v in values]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    return np.asarray(values, dtype=BINARY_DTYPES[datatype]).tobytes()


def parse_infer(
    body: Any, spec: Mapping[str, Any], max_rows: int, model: str = "", logged: bool = False
) -> Infer:
    """An inference request body as the rows and event ids the V1 path scores.

    Raises :class:`Refused`: 400 for what the request gets wrong, 413 for more than
    ``max_rows`` rows.
    """
    if not isinstance(body, dict):
        raise Refused(400, "expected an inference request object")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise Refused(400, "id: expected a string")
    _object(body.get("parameters"), "parameters")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise Refused(400, "inputs: expected a non-empty array of tensors")
    features: list[tuple[int, dict[str, Any]]] = []
    ids: tuple[int, dict[str, Any]] | None = None
    actions: tuple[int, dict[str, Any]] | None = None
    n_action_features = int(spec.get("n_action_features") or 0) if is_bandit(spec) else 0
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise Refused(400, f"{where}: expected a tensor object")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise Refused(400, f"{where}.name: expected a string")
        if not isinstance(tensor.get("datatype"), str):
            raise Refused(400, f"{where}.datatype: expected a string")
        _shape(tensor, where)
        if "data" not in tensor:
            raise Refused(400, f"{where}.data: missing")
        _object(tensor.get("parameters"), f"{where}.parameters")
        if name == EVENT_ID:
            ids = (i, tensor)
        elif name == ACTIONS and n_action_features:
            actions = (i, tensor)
        else:
            features.append((i, tensor))
    if len(features) != 1:
        raise Refused(
            400,
            f"inputs: expected one feature tensor ('{INPUT}', plus '{EVENT_ID}' optionally), "
            f"got {len(features)}",
        )
    at, tensor = features[0]
    where = f"inputs[{at}]"
    datatype = tensor["datatype"]
    if datatype in NUMERIC:
        rows: list[Any] = _numeric_rows(tensor, spec, where, model)
    elif datatype == "BYTES":
        rows = _map_rows(tensor, spec, where, model)
    else:
        accepted = ", ".join(NUMERIC) + (" or BYTES" if takes_maps(spec) else "")
        raise Refused(400, f"{where}.datatype: {datatype!r} not accepted; expected {accepted}")
    if not rows:
        raise Refused(400, f"{where}.shape: expected at least one row")
    if len(rows) > max_rows:
        raise Refused(413, f"{where}: at most {max_rows} rows per request, got {len(rows)}")
    event_ids: list[str | None] = [None] * len(rows)
    if ids is not None:
        event_ids = list(_strings(ids[1], f"inputs[{ids[0]}]", len(rows)))
    candidates = None
    if n_action_features:
        if actions is None:
            raise Refused(
                400,
                f"inputs: a bandit with action features needs '{ACTIONS}', the candidates "
                f"(FP64, [n, m, {n_action_features}])",
            )
        candidates = _candidates(actions[1], f"inputs[{actions[0]}]", len(rows), n_action_features)
    requested = _requested(body.get("outputs"), spec, logged)
    return Infer(rows, event_ids, requested, request_id, candidates)


def _candidates(tensor: Mapping[str, Any], where: str, n: int, width: int) -> list[Any]:
    """The ``actions`` input: ``[n, m, width]`` finite numbers, as m candidates per row."""
    if tensor.get("datatype") not in ("FP64", "FP32"):
        raise Refused(
            400, f"{where}.datatype: expected FP64 or FP32, got {tensor.get('datatype')!r}"
        )
    shape = _shape(tensor, where)
    if len(shape) != 3 or shape[0] != n or shape[1] < 1 or shape[2] != width:
        raise Refused(400, f"{where}.shape: expected [{n}, m, {width}] (m >= 1), got {shape}")
    flat = _flatten(tensor.get("data"), shape, where)
    if not _finite_numbers(flat):
        raise Refused(400, f"{where}.data: expected finite numbers")
    return np.asarray(flat, dtype=np.float64).reshape(shape).tolist()


def _requested(outputs: Any, spec: Mapping[str, Any], logged: bool) -> list[str] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise Refused(400, "outputs: expected an array")
    known = output_names(spec, logged)
    names: list[str] = []
    for i, output in enumerate(outputs):
        name = output.get("name") if isinstance(output, dict) else None
        if not isinstance(name, str):
            raise Refused(400, f"outputs[{i}].name: expected a string")
        _object(output.get("parameters"), f"outputs[{i}].parameters")
        if name not in known:
            extra = (
                " (event_id only while predictions are logged)"
                if name == EVENT_ID and not logged
                else ""
            )
            raise Refused(
                400, f"outputs[{i}]: unknown output {name!r}; this model has {known}{extra}"
            )
        if name not in names:
            names.append(name)
    return names


def choice_tensors(choice: Mapping[str, Any], requested: list[str] | None) -> list[dict[str, Any]]:
    """A bandit's output tensors from the ``:choose`` answer ``choice``."""
    n = len(choice["choices"])
    probabilities = [c["probabilities"] for c in choice["choices"]]
    width = len(probabilities[0]) if n else 0  # one m for every row: a V2 tensor's
    tensors = {
        ACTION: {
            "name": ACTION,
            "shape": [n],
            "datatype": "INT64",
            "data": [c["action"] for c in choice["choices"]],
        },
        PROPENSITY: {
            "name": PROPENSITY,
            "shape": [n],
            "datatype": "FP64",
            "data": [c["propensity"] for c in choice["choices"]],
        },
        PROBABILITIES: {
            "name": PROBABILITIES,
            "shape": [n, width],
            "datatype": "FP64",
            "data": [v for p in probabilities for v in p],
        },
        EVENT_ID: {
            "name": EVENT_ID,
            "shape": [n],
            "datatype": "BYTES",
            "data": choice["event_ids"],
        },
    }
    return [tensors[name] for name in (requested or list(tensors))]


def binary_proba(scores: np.ndarray) -> np.ndarray:
    """A binary model's scores (the probability of class 1) as ``[n, 2]`` class
    probabilities; written into one array (``np.stack`` costs several microseconds a call,
    most of a single-instance answer's tensors).

    >>> binary_proba(np.array([0.25, 1.0])).tolist()
    [[0.75, 0.25], [0.0, 1.0]]
    """
    proba = np.empty((scores.shape[0], 2))
    np.subtract(1.0, scores, out=proba[:, 0])
    proba[:, 1] = scores
    return proba


def output_tensors(
    spec: Mapping[str, Any],
    scores: np.ndarray,
    event_ids: list[str] | None,
    requested: list[str] | None,
) -> list[dict[str, Any]]:
    """The response's output tensors from the V1 scores (the same float64 numbers)."""
    n = scores.shape[0]
    tensors: dict[str, dict[str, Any]] = {}
    if is_classifier(spec):
        index = predicted_classes(scores)
        proba = scores if scores.ndim == 2 else binary_proba(scores)
        tensors[PREDICT] = {
            "name": PREDICT,
            "shape": [n],
            "datatype": "INT64",
            "data": index.tolist(),
        }
        tensors[PROBA] = {
            "name": PROBA,
            "shape": list(proba.shape),
            "datatype": "FP64",
            "data": proba.reshape(-1).tolist(),
        }
    else:
        tensors[PREDICT] = {
            "name": PREDICT,
            "shape": [n],
            "datatype": "FP64",
            "data": scores.reshape(-1).tolist(),
        }
    if event_ids is not None:
        tensors[EVENT_ID] = {"name": EVENT_ID, "shape": [n], "datatype": "BYTES", "data": event_ids}
    names = requested if requested is not None else list(tensors)
    return [tensors[name] for name in names if name in tensors]
