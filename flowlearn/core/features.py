"""Turning the ``features`` of a record or a prediction request into a numeric matrix.

One function serves the training job and the predictor, so a model sees the same numbers
in both. A model's published ``spec`` says how: ``"features": "dense"`` takes a list of
exactly ``n_features`` numbers (or a ``{name: value}`` map of its ``feature_names``; missing
values are NaN, for the model's pipeline to fill); ``"features": "hashed"`` takes a
``{name: number or string}`` map hashed into ``n_features`` columns (``hash_seed`` picks the
hash).

>>> vectorize([[1, 2.5]], {"features": "dense", "n_features": 2}).tolist()
[[1.0, 2.5]]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from flowlearn.core.preprocessing import FeatureHasher
from flowlearn.core.sparse import Rows


class FeatureError(ValueError):
    """Features that do not fit the model: the message names the offending field."""


#: The types of JSON numbers (``bool`` is a type of its own, not among them).
_JSON_NUMBER_TYPES = frozenset({int, float})


def check_dense_row(
    row: Any, n_features: int, where: str = "features", allow_missing: bool = False
) -> list[float]:
    """Validate one dense feature list: numbers only, finite, of the expected length; with
    ``allow_missing``, ``null`` and NaN are missing values (NaN in the result)."""
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
    out = []
    for i, v in enumerate(row):
        out.append(_value(v, f"{where}[{i}]", allow_missing))
    return out


def _value(v: Any, where: str, allow_missing: bool, bools: bool = False) -> float:
    """One dense value as a float (NaN: missing, where allowed); FeatureError naming it."""
    if v is None:
        if allow_missing:
            return math.nan
        raise FeatureError(f"{where}: missing (null), and the model's missing policy is dlq")
    if isinstance(v, bool) and bools:
        return float(v)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise FeatureError(f"{where}: expected a number, got {type(v).__name__}")
    try:
        x = float(v)
    except OverflowError:  # an int beyond float64's range
        raise FeatureError(f"{where}: not a finite number (too large)") from None
    if math.isnan(x) and allow_missing:
        return x
    if not math.isfinite(x):
        raise FeatureError(f"{where}: not a finite number ({x})")
    return x


@lru_cache(maxsize=64)
def _columns(names: tuple[str, ...]) -> dict[str, int]:
    return {name: i for i, name in enumerate(names)}


def named_row(
    row: Mapping[str, Any],
    names: Sequence[str],
    where: str = "features",
    allow_missing: bool = True,
    on_unknown: Callable[[str], None] | None = None,
) -> list[float]:
    """A ``{name: value}`` map as the dense row of the columns ``names`` (NaN: missing).

    Names the model does not have go to ``on_unknown`` (the job and the predictor count
    them); true/false count as 1/0.

    >>> named_row({"b": 2, "a": True, "z": 1}, ("a", "b", "c"), on_unknown=print)
    z
    [1.0, 2.0, nan]
    """
    columns = _columns(tuple(names))
    out = [math.nan] * len(columns)
    for name, v in row.items():
        col = columns.get(name)
        if col is None:
            if on_unknown is not None:
                on_unknown(str(name))
            continue
        out[col] = _value(v, f"{where}.{name}", allow_missing=True, bools=True)
    if not allow_missing:
        for col, x in enumerate(out):
            if math.isnan(x):
                raise FeatureError(
                    f"{where}.{names[col]}: missing, and the model's missing policy is dlq"
                )
    return out


@lru_cache(maxsize=64)
def _hasher(n_features: int, seed: int) -> FeatureHasher:
    return FeatureHasher(n_features=n_features, seed=seed)


def vectorize(
    rows: Sequence[Any],
    spec: Mapping[str, Any],
    on_unknown: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Rows of features -> float64 matrix ``(len(rows), n_features)`` as the spec says.

    A dense row is a list of ``n_features`` numbers or, when the spec has
    ``feature_names``, a ``{name: value}`` map (unknown names go to ``on_unknown``). With
    ``missing = "impute"`` a missing value (an absent name, null) is NaN, which the model's
    feature pipeline fills; otherwise it is an error naming the feature.
    """
    n_features = int(spec["n_features"])
    kind = spec.get("features", "dense")
    if kind == "dense":
        names = spec.get("feature_names") or ()
        allow_missing = spec.get("missing") == "impute"
        out = np.empty((len(rows), n_features), dtype=np.float64)
        for i, row in enumerate(rows):
            where = f"instances[{i}]" if len(rows) > 1 else "features"
            if isinstance(row, Mapping):
                if not names:
                    raise FeatureError(
                        f"{where}: expected a list of {n_features} numbers (a {{name: value}} "
                        "map needs the model's feature_names)"
                    )
                out[i] = named_row(row, names, where, allow_missing, on_unknown)
            else:
                out[i] = check_dense_row(row, n_features, where, allow_missing)
        return out
    if kind == "hashed":
        return _hashed(rows, spec, sparse=False)
    raise FeatureError(f"unknown feature kind {kind!r} in model spec")


def rows_of(
    rows: Sequence[Any],
    spec: Mapping[str, Any],
    on_unknown: Callable[[str], None] | None = None,
) -> Rows:
    """Rows of features as the model takes them: :func:`vectorize`'s matrix for a dense
    model, :class:`~flowlearn.core.sparse.SparseRows` for a hashed one (never densified:
    a map of a few names costs a few entries, whatever ``n_features``). The job and the
    predictor read features through here.

    >>> X = rows_of([{"a": 1.5}], {"features": "hashed", "n_features": 2**18})
    >>> X.shape, X.values.tolist() in ([1.5], [-1.5])
    ((1, 262144), True)
    """
    if spec.get("features", "dense") == "hashed":
        return _hashed(rows, spec, sparse=True)
    return vectorize(rows, spec, on_unknown)


def _hashed(rows: Sequence[Any], spec: Mapping[str, Any], sparse: bool) -> Any:
    """Hashed rows, sparse or dense; FeatureError naming what is wrong."""
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise FeatureError(f"instances[{i}]: expected a {{name: value}} map")
    hasher = _hasher(int(spec["n_features"]), int(spec.get("hash_seed", 0)))
    overflow = "features: values in one hashed column add up beyond float64's range"
    try:
        if sparse:
            return hasher.transform_sparse(list(rows))
        # Finite values that share a column add up, and the sum can overflow to inf.
        with np.errstate(over="raise", invalid="raise"):
            return np.asarray(hasher.transform_many(list(rows)), dtype=np.float64)
    except FeatureError:
        raise
    except FloatingPointError:
        raise FeatureError(overflow) from None
    except OverflowError:  # an int beyond float64's range
        raise FeatureError("features: a value is beyond float64's range") from None
    except ValueError as exc:
        raise FeatureError(str(exc)) from exc
