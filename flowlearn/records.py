"""Parsing and validation of the JSON records on flowlearn's Kafka topics (DESIGN: topics).

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
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowlearn.features import FeatureError, vectorize

#: Largest record accepted on any topic; bigger ones go to the DLQ as ``too_large``.
MAX_RECORD_BYTES = 1 << 20
#: Labels of a logistic model; a softmax model takes integer class indices.
BINARY_LABELS = (0.0, 1.0)


class RecordError(ValueError):
    """A record that cannot be used; ``reason`` is the DLQ reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Sample:
    """One labelled sample, features already numeric."""

    model_id: str
    ts: int
    features: np.ndarray
    label: float
    event_id: str | None = None


def _load_json_object(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordError("too_large", f"{len(raw)} bytes, limit {MAX_RECORD_BYTES}")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError("not_json", str(exc)) from exc
    if not isinstance(obj, dict):
        raise RecordError("not_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _field(obj: Mapping[str, Any], name: str) -> Any:
    if name not in obj or obj[name] is None:
        raise RecordError("missing_field", f"field '{name}' is required")
    return obj[name]


def _model_id(obj: Mapping[str, Any]) -> str:
    value = _field(obj, "model_id")
    if not isinstance(value, str) or not value or len(value) > 200:
        raise RecordError("bad_field", "field 'model_id' must be a non-empty string (<= 200)")
    return value


def _timestamp(obj: Mapping[str, Any]) -> int:
    value = _field(obj, "ts")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RecordError("bad_field", "field 'ts' must be epoch milliseconds (a number)")
    if not 0 <= value < 1 << 62:
        raise RecordError("bad_field", f"field 'ts' out of range: {value}")
    return int(value)


def _label(obj: Mapping[str, Any], spec: Mapping[str, Any]) -> float:
    value = _field(obj, "label")
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise RecordError("bad_field", "field 'label' must be a finite number")
    kind = spec.get("type")
    if kind == "logistic" and float(value) not in BINARY_LABELS:
        raise RecordError("bad_field", f"field 'label' must be 0 or 1 for a logistic model, "
                                       f"got {value}")
    if kind == "softmax":
        n_classes = int(spec.get("n_classes") or len(spec.get("classes") or []))
        if float(value) != int(value) or not 0 <= int(value) < n_classes:
            raise RecordError("bad_field",
                              f"field 'label' must be a class index in 0..{n_classes - 1}")
    return float(value)


def parse_sample(
    raw: bytes, spec_for: Callable[[str], Mapping[str, Any] | None]
) -> Sample:
    """Parse one ``fl.samples`` record; ``spec_for(model_id)`` gives the model's spec or None."""
    obj = _load_json_object(raw)
    model_id = _model_id(obj)
    spec = _spec(model_id, spec_for)
    ts = _timestamp(obj)
    label = _label(obj, spec)
    features = _features(obj, spec)
    event_id = obj.get("event_id")
    if event_id is not None and not isinstance(event_id, str):
        raise RecordError("bad_field", "field 'event_id' must be a string")
    return Sample(model_id, ts, features, label, event_id)


@dataclass(frozen=True)
class Event:
    """Features seen at prediction time, waiting for their label."""

    event_id: str
    model_id: str
    ts: int
    features: np.ndarray


@dataclass(frozen=True)
class Label:
    """The label of an earlier event."""

    event_id: str
    model_id: str
    ts: int
    label: float


def _event_id(obj: Mapping[str, Any]) -> str:
    value = _field(obj, "event_id")
    if not isinstance(value, str) or not value or len(value) > 200:
        raise RecordError("bad_field", "field 'event_id' must be a non-empty string (<= 200)")
    return value


def _spec(model_id: str, spec_for: Callable[[str], Mapping[str, Any] | None]
          ) -> Mapping[str, Any]:
    spec = spec_for(model_id)
    if spec is None:
        raise RecordError("unknown_model", f"no spec for model '{model_id}'")
    return spec


def _features(obj: Mapping[str, Any], spec: Mapping[str, Any]) -> np.ndarray:
    try:
        return vectorize([_field(obj, "features")], spec)[0]
    except FeatureError as exc:
        raise RecordError("bad_features", str(exc)) from exc


def parse_event(raw: bytes, spec_for: Callable[[str], Mapping[str, Any] | None]) -> Event:
    """Parse one ``fl.events`` record."""
    obj = _load_json_object(raw)
    model_id = _model_id(obj)
    spec = _spec(model_id, spec_for)
    return Event(_event_id(obj), model_id, _timestamp(obj), _features(obj, spec))


def parse_label(raw: bytes, spec_for: Callable[[str], Mapping[str, Any] | None]) -> Label:
    """Parse one ``fl.labels`` record."""
    obj = _load_json_object(raw)
    model_id = _model_id(obj)
    spec = _spec(model_id, spec_for)
    return Label(_event_id(obj), model_id, _timestamp(obj), _label(obj, spec))


def dlq_record(
    source_topic: str, reason: str, raw: bytes, ts: int, detail: str = "",
    partition: int | None = None, offset: int | None = None,
) -> str:
    """The JSON of a dead-letter record (DESIGN: ``fl.dlq``); ``raw`` kept whole, base64."""
    record: dict[str, Any] = {
        "source_topic": source_topic,
        "reason": reason,
        "detail": detail[:500],
        "raw": base64.b64encode(raw).decode("ascii"),
        "ts": ts,
    }
    if partition is not None:
        record["partition"] = partition
    if offset is not None:
        record["offset"] = offset
    return json.dumps(record)
