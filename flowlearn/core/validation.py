"""Input checks and the state/clone base shared by every learning-core component.

The checks turn user input into float64 arrays and fail early with a message that names the
argument and the expected shape. They are on the predictor's hot path, so the common case
(an already float64 matrix of finite values) costs a couple of numpy calls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Self

import numpy as np

Arrays = dict[str, np.ndarray]
Meta = dict[str, Any]


def _first_non_finite(a: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])


def check_finite(a: np.ndarray, name: str) -> None:
    """Raise ValueError if ``a`` holds NaN or infinity, naming the first bad position."""
    # One reduction instead of an elementwise mask: NaN and inf propagate into the sum; only
    # an overflow of huge finite values can fool it, and the exact test then decides.
    if a.size and not math.isfinite(a.sum()) and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinity (first at index {_first_non_finite(a)})")


def check_matrix(X: Any, n_features: int, name: str = "X") -> np.ndarray:
    """``X`` as a finite float64 matrix of shape ``(n, n_features)``."""
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} must be a numeric array of shape (n, {n_features}): {exc}"
        ) from exc
    if arr.ndim != 2 or arr.shape[1] != n_features:
        raise ValueError(f"{name} must have shape (n, {n_features}), got {arr.shape}")
    check_finite(arr, name)
    return arr


def check_vector(y: Any, n: int | None, name: str = "y") -> np.ndarray:
    """``y`` as a finite float64 vector of shape ``(n,)`` (any length if ``n`` is None)."""
    expected = f"({'n' if n is None else n},)"
    try:
        arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array of shape {expected}: {exc}") from exc
    if arr.ndim != 1 or (n is not None and arr.shape[0] != n):
        raise ValueError(f"{name} must have shape {expected}, got {arr.shape}")
    check_finite(arr, name)
    return arr


def check_labels(y: Any, n: int, n_classes: int, name: str = "y") -> np.ndarray:
    """Class labels ``0 .. n_classes-1`` (integers, or floats holding integers) as int64."""
    arr = check_vector(y, n, name)
    labels = arr.astype(np.int64)
    if n and ((labels != arr).any() or labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"{name} must hold class labels in 0..{n_classes - 1}")
    return labels


def check_scalar(x: Any, name: str = "x") -> float:
    """A finite real number as a Python float."""
    if isinstance(x, bool | np.bool_):
        return float(x)
    try:
        value = float(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real number, got {type(x).__name__}") from exc
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_array(arrays: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float64 copy of ``arrays[key]``, which must have ``shape``: guards state loading."""
    if key not in arrays:
        raise ValueError(f"state is missing array {key!r}")
    arr = np.asarray(arrays[key], dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"state array {key!r} must have shape {shape}, got {arr.shape}")
    return arr.copy()


class StateMismatch(ValueError):
    """Saved state of one model class offered to another: the model's spec changed its
    type since the state was saved."""


class Stateful:
    """Base of every core component: constructor params, ``clone`` and codec-ready state.

    Subclasses implement :meth:`_params` (JSON-able constructor arguments) and, when they
    learn, :meth:`_state` / :meth:`_load_state`. ``state_dict()`` returns ``(arrays, meta)``
    ready for :func:`flowlearn.core.codec.encode_state`; ``meta`` carries the class name and the
    params so that :func:`flowlearn.core.linear.from_bytes` can rebuild the object.
    """

    def _params(self) -> dict[str, Any]:
        raise NotImplementedError

    def _state(self) -> tuple[Arrays, Meta]:
        return {}, {}

    def _load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore learned state into a freshly constructed object."""

    @classmethod
    def _from_params(cls, params: Mapping[str, Any]) -> Self:
        return cls(**params)

    def clone(self) -> Self:
        """A fresh, unfitted copy with the same parameters."""
        return self._from_params(self._params())

    def state_dict(self) -> tuple[Arrays, Meta]:
        arrays, extra = self._state()
        return arrays, {"class": type(self).__name__, "params": self._params(), **extra}

    @classmethod
    def _restore(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Self:
        if meta.get("class") != cls.__name__:
            raise StateMismatch(f"state of a {meta.get('class')!r} cannot load into {cls.__name__}")
        try:
            obj = cls._from_params(meta["params"])
            obj._load_state(arrays, meta)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"corrupt {cls.__name__} state: {exc!r}") from exc
        return obj

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Become the saved object: its parameters and its learned state."""
        restored = self._restore(arrays, meta)
        vars(self).clear()
        vars(self).update(vars(restored))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"
