"""Feature preprocessing: signed feature hashing (running standardisation is the feature
pipeline's, :mod:`flowlearn.core.pipeline`).

>>> h = FeatureHasher(n_features=8)
>>> X = h.transform_many([{"country": "fr", "age": 31.0}, {"country": "de"}])
>>> X.shape
(2, 8)
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Self

import numpy as np

from flowlearn.core.sparse import INDEX_DTYPE, SparseRows
from flowlearn.core.validation import Stateful

__all__ = ["FeatureHasher"]

Value = float | int | bool | str


def _bucket(token: str, n_features: int, seed: int, alternate_sign: bool) -> tuple[int, float]:
    """Column and sign of a token: keyed BLAKE2b of its UTF-8 bytes.

    Python's ``hash()`` is salted per process; BLAKE2b is the same on every machine, so a
    trainer and a predictor in different processes put a feature in the same column.
    """
    digest = hashlib.blake2b(
        token.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little", signed=True)
    ).digest()
    h = int.from_bytes(digest, "little")
    sign = -1.0 if alternate_sign and h & 1 else 1.0
    return (h >> 1) % n_features, sign


def _check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise ValueError(f"feature names must be strings, got {name!r}")


def _number(name: str, value: Any) -> float:
    """The numeric value of a non-string feature; ValueError names a bad field."""
    if type(value) is float or type(value) is int:  # fast path: skips the ABC check below
        x = float(value)
    elif isinstance(value, bool | np.bool_):
        return float(value)
    elif isinstance(value, numbers.Real):
        x = float(value)
    else:
        raise ValueError(
            f"feature {name!r}: expected a number or a string, got {type(value).__name__}"
        )
    if not math.isfinite(x):
        raise ValueError(f"feature {name!r}: not a finite number ({x})")
    return x


#: Hashed tokens remembered per hasher; cleared when full (hashing again is only slower),
#: in entries or in the characters of their names and values (long names would otherwise
#: keep megabytes per request's worth of tokens).
_CACHE_SIZE = 1 << 16
_CACHE_CHARS = 4 << 20


class FeatureHasher(Stateful):
    """Hash ``{name: value}`` maps into a fixed number of signed columns.

    A string value counts as the token ``"name=value"`` with value 1.0; a number (bools as
    0/1) counts as the token ``"name"`` with that value. With ``alternate_sign`` a hash bit
    picks the sign, so collisions cancel out in expectation instead of piling up.

    Parameters
    ----------
    n_features
        Number of output columns.
    seed
        Keys the hash: a different seed gives a different, equally stable, layout.
    alternate_sign
        Sign each token by a hash bit.
    defaults
        Values for features that are absent from a map or ``None`` (JSON null). A feature
        missing without a default contributes nothing.

    >>> h = FeatureHasher(n_features=4, defaults={"device": "unknown"})
    >>> idx, vals = h.transform_one({"device": None})
    >>> idx.dtype.name, vals.tolist() in ([1.0], [-1.0])
    ('int64', True)
    """

    def __init__(
        self,
        n_features: int,
        seed: int = 0,
        alternate_sign: bool = True,
        defaults: Mapping[str, Value] | None = None,
    ) -> None:
        if int(n_features) < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if not -(2**63) <= int(seed) < 2**63:
            raise ValueError(f"seed must fit in 64 signed bits, got {seed}")
        self.n_features = int(n_features)
        self.seed = int(seed)
        self.alternate_sign = bool(alternate_sign)
        self.defaults = dict(defaults or {})
        for name, value in self.defaults.items():
            _check_name(name)
            if not isinstance(value, str):
                _number(name, value)
        self._cache: dict[tuple[str, str | None], tuple[int, float]] = {}
        self._cache_chars = 0

    def _locate(self, name: str, value: str | None) -> tuple[int, float]:
        """Column and sign of a feature (``value`` for string features, else None)."""
        key = (name, value)
        hit = self._cache.get(key)
        if hit is None:
            _check_name(name)
            token = name if value is None else f"{name}={value}"
            hit = _bucket(token, self.n_features, self.seed, self.alternate_sign)
            if len(self._cache) >= _CACHE_SIZE or self._cache_chars + len(token) > _CACHE_CHARS:
                self._cache.clear()
                self._cache_chars = 0
            self._cache[key] = hit
            self._cache_chars += len(token)
        return hit

    def _pairs(self, mapping: Mapping[str, Any]) -> Iterator[tuple[int, float]]:
        if not isinstance(mapping, Mapping):
            raise ValueError(f"expected a {{name: value}} map, got {type(mapping).__name__}")
        items: Iterable[tuple[str, Any]] = mapping.items()
        if self.defaults:
            missing = [(k, v) for k, v in self.defaults.items() if mapping.get(k) is None]
            items = [*mapping.items(), *missing]
        for name, value in items:
            if value is None:
                continue
            if isinstance(value, str):
                col, sign = self._locate(name, value)
                yield col, sign
            else:
                col, sign = self._locate(name, None)
                yield col, sign * _number(name, value)

    def transform_one(self, mapping: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Sparse form: sorted unique column indices (int64) and their summed values."""
        acc: dict[int, float] = {}
        for col, x in self._pairs(mapping):
            acc[col] = acc.get(col, 0.0) + x
        cols = sorted(acc)
        return np.array(cols, dtype=np.int64), np.array([acc[c] for c in cols], dtype=np.float64)

    def transform_sparse(self, mappings: Sequence[Mapping[str, Any]]) -> SparseRows:
        """The maps as :class:`~flowlearn.core.sparse.SparseRows`, never densified: each row
        the sorted columns its tokens fall in and their summed values (colliding tokens add
        up in the map's order, as :meth:`transform_many` adds them).

        >>> X = FeatureHasher(n_features=2**18).transform_sparse([{"a": 2.0}, {}])
        >>> X.shape, X.nnz, X.offsets.tolist()
        ((2, 262144), 1, [0, 1, 1])
        """
        offsets = [0]
        cols: list[int] = []
        vals: list[float] = []
        for mapping in mappings:
            acc: dict[int, float] = {}
            for col, x in self._pairs(mapping):
                acc[col] = acc.get(col, 0.0) + x
            for col in sorted(acc):
                cols.append(col)
                vals.append(acc[col])
            offsets.append(len(cols))
        values = np.array(vals, dtype=np.float64)
        if not np.isfinite(values).all():  # Python's float sums overflow without a word
            raise FloatingPointError("values in one hashed column add up beyond float64's range")
        return SparseRows(
            np.array(offsets, dtype=np.int64),
            np.array(cols, dtype=INDEX_DTYPE),
            values,
            self.n_features,
        )

    def transform_many(self, mappings: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Dense ``(len(mappings), n_features)`` float64 matrix."""
        flat: list[int] = []
        vals: list[float] = []
        for i, mapping in enumerate(mappings):
            base = i * self.n_features
            for col, x in self._pairs(mapping):
                flat.append(base + col)
                vals.append(x)
        out = np.zeros((len(mappings), self.n_features))
        # add.at sums colliding tokens (plain fancy assignment would keep only the last).
        np.add.at(out.reshape(-1), np.array(flat, dtype=np.int64), np.array(vals))
        return out

    def spec(self) -> dict[str, Any]:
        """JSON-able description; :meth:`from_spec` rebuilds an identical hasher."""
        return {"type": "hashed", **self._params()}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Self:
        return cls._from_params({k: v for k, v in spec.items() if k != "type"})

    def _params(self) -> dict[str, Any]:
        return {
            "n_features": self.n_features,
            "seed": self.seed,
            "alternate_sign": self.alternate_sign,
            "defaults": self.defaults,
        }


CLASSES: tuple[type[Stateful], ...] = (FeatureHasher,)
