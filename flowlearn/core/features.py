"""Turning the ``features`` of a record or a prediction request into a numeric matrix.

One function serves the training job and the predictor, so a model sees the same numbers
in both. A model's published ``spec`` says how: ``"features": "dense"`` takes a list of
exactly ``n_features`` numbers; ``"features": "hashed"`` takes a ``{name: number or string}``
map hashed into ``n_features`` columns (``hash_seed`` picks the hash).

>>> vectorize([[1, 2.5]], {"features": "dense", "n_features": 2}).tolist()
[[1.0, 2.5]]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from flowlearn.core.preprocessing import FeatureHasher


class FeatureError(ValueError):
    """Features that do not fit the model: the message names the offending field."""


#: The types of JSON numbers (``bool`` is a type of its own, not among them).
_JSON_NUMBER_TYPES = frozenset({int, float})


def check_dense_row(row: Any, n_features: int, where: str = "features") -> list[float]:
    """Validate one dense feature list: numbers only, finite, of the expected length."""
    # The common case, a JSON list of finite numbers, checked with C-level loops: this runs
    # for every record the job parses (per-element isinstance cost a sixth of its time).
    if (
        type(row) is list
        and len(row) == n_features
        and _JSON_NUMBER_TYPES.issuperset(map(type, row))
    ):
        try:
            values = list(map(float, row))
        except OverflowError:  # an int beyond float64's range: the loop below says which
            values = []
        if len(values) == n_features and all(map(math.isfinite, values)):
            return values
    if not isinstance(row, Sequence) or isinstance(row, str | bytes):
        raise FeatureError(f"{where}: expected a list of {n_features} numbers")
    if len(row) != n_features:
        raise FeatureError(f"{where}: expected {n_features} values, got {len(row)}")
    for i, v in enumerate(row):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise FeatureError(f"{where}[{i}]: expected a number, got {type(v).__name__}")
        try:
            finite = math.isfinite(v)
        except OverflowError:  # an int beyond float64's range
            finite = False
        if not finite:
            raise FeatureError(
                f"{where}[{i}]: not a finite number ({v if isinstance(v, float) else 'too large'})"
            )
    return [float(v) for v in row]


@lru_cache(maxsize=64)
def _hasher(n_features: int, seed: int) -> FeatureHasher:
    return FeatureHasher(n_features=n_features, seed=seed)


def vectorize(rows: Sequence[Any], spec: Mapping[str, Any]) -> np.ndarray:
    """Rows of features -> float64 matrix ``(len(rows), n_features)`` as the spec says."""
    n_features = int(spec["n_features"])
    kind = spec.get("features", "dense")
    if kind == "dense":
        out = np.empty((len(rows), n_features), dtype=np.float64)
        for i, row in enumerate(rows):
            out[i] = check_dense_row(
                row, n_features, f"instances[{i}]" if len(rows) > 1 else "features"
            )
        return out
    if kind == "hashed":
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise FeatureError(f"instances[{i}]: expected a {{name: value}} map")
        hasher = _hasher(n_features, int(spec.get("hash_seed", 0)))
        try:
            # Finite values that share a column add up, and the sum can overflow to inf.
            with np.errstate(over="raise", invalid="raise"):
                return np.asarray(hasher.transform_many(list(rows)), dtype=np.float64)
        except FeatureError:
            raise
        except FloatingPointError:
            raise FeatureError(
                "features: values in one hashed column add up beyond float64's range"
            ) from None
        except OverflowError:  # an int beyond float64's range
            raise FeatureError("features: a value is beyond float64's range") from None
        except ValueError as exc:
            raise FeatureError(str(exc)) from exc
    raise FeatureError(f"unknown feature kind {kind!r} in model spec")
