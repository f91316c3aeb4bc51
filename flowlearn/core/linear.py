"""Linear models trained by mini-batch gradient steps: logistic, softmax and least squares.

All parameters of a model live in one flat float64 vector, ``coef`` (C order) followed by the
intercept(s). The optimizer updates that vector in place, :meth:`weights_vector` copies it
for publication, and :func:`flowlearn.core.model_types.from_spec` rebuilds a servable model
from it.

Training is deterministic: weights start at zero and every step is a fixed sequence of
float64 numpy operations, so the same data in the same batches gives bit-identical weights.

>>> import numpy as np
>>> X = np.array([[1.0, 0.0], [0.0, 1.0]] * 50)
>>> y = np.array([1, 0] * 50)
>>> model = LogisticRegression(n_features=2, optimizer=optim.SGD(lr=0.5))
>>> for _ in range(20):
...     model = model.learn_many(X, y)
>>> model.predict_many(np.array([[1.0, 0.0], [0.0, 1.0]])).tolist()
[1, 0]

The module also holds the one codec registry of the learning core: :func:`to_bytes` and
:func:`from_bytes` round-trip any model, optimizer, scaler, hasher, metric or drift detector.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np

from flowlearn.core import codec, drift, metrics, optim, pipeline, preprocessing
from flowlearn.core.validation import (
    Arrays,
    Meta,
    Stateful,
    check_array,
    check_labels,
    check_matrix,
    check_vector,
)

__all__ = [
    "LinearRegression",
    "LogisticRegression",
    "Model",
    "SoftmaxRegression",
    "from_bytes",
    "sigmoid",
    "softmax",
    "to_bytes",
]


def sigmoid(z: np.ndarray) -> np.ndarray:
    # Accurate relative to p even for tiny probabilities (rare events); the floor on z only
    # keeps exp() from overflowing, where p is below 1e-304 anyway.
    return 1.0 / (1.0 + np.exp(-np.maximum(z, -700.0)))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e


class _LinearModel(Stateful):
    """Shared machinery: flat parameters, validation, the gradient step and state."""

    _type: ClassVar[str]

    def __init__(
        self,
        n_features: int,
        n_outputs: int,
        optimizer: optim.Optimizer | None,
        l2: float,
        l1: float,
        intercept: bool,
        clip_grad_norm: float | None,
        seed: int,
    ) -> None:
        if int(n_features) < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if l1 < 0 or l2 < 0 or not (math.isfinite(l1) and math.isfinite(l2)):
            raise ValueError(f"l1 and l2 must be finite and >= 0, got l1={l1}, l2={l2}")
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be > 0 or None, got {clip_grad_norm}")
        self.n_features = int(n_features)
        self.optimizer = optim.SGD(lr=0.05) if optimizer is None else optimizer
        self.l2 = float(l2)
        self.l1 = float(l1)
        self.intercept = bool(intercept)
        self.clip_grad_norm = None if clip_grad_norm is None else float(clip_grad_norm)
        # Weights start at zero (the loss is convex, so nothing to break); the seed is kept
        # so that a spec fully names a run.
        self.seed = int(seed)
        #: Norm of the last batch gradient, before clipping (the job's safety gate reads it).
        self.last_grad_norm = 0.0
        self._k = n_outputs
        n_coef = self.n_features * n_outputs
        size = n_coef + (n_outputs if self.intercept else 0)
        self._w = np.zeros(size)
        self._g = np.zeros(size)
        coef_shape = (self.n_features,) if n_outputs == 1 else (self.n_features, n_outputs)
        # Views into the flat vectors: the optimizer's in-place updates show through them.
        self._coef = self._w[:n_coef].reshape(coef_shape)
        self._bias = self._w[n_coef:]
        self._g_coef = self._g[:n_coef].reshape(coef_shape)
        self._g_bias = self._g[n_coef:]
        # The intercept is never penalised.
        self._l1: np.ndarray | float = 0.0
        if self.l1:
            self._l1 = np.zeros(size)
            self._l1[:n_coef] = self.l1

    # ------------------------------------------------------------------ parameters

    @property
    def coef(self) -> np.ndarray:
        """A copy of the coefficients: ``(n_features,)``, or ``(n_features, n_classes)``."""
        return self._coef.copy()

    @property
    def intercept_(self) -> np.ndarray:
        """A copy of the intercept(s) (empty when ``intercept=False``)."""
        return self._bias.copy()

    def weights_vector(self) -> np.ndarray:
        """Flat float64 copy of every serving parameter: coef (C order), then intercept(s)."""
        return self._w.copy()

    def set_weights_vector(self, v: np.ndarray) -> None:
        """Overwrite all serving parameters from a :meth:`weights_vector`-shaped vector."""
        self._w[:] = check_vector(v, self._w.size, "weights vector")

    def spec(self) -> dict[str, Any]:
        """What a server needs besides the weights vector to rebuild the model."""
        return {
            "type": self._type,
            "n_features": self.n_features,
            "classes": self._classes(),
            "intercept": self.intercept,
        }

    def _classes(self) -> list[int] | None:
        return list(range(max(self._k, 2)))

    # ------------------------------------------------------------------ learning

    def _scores(self, X: np.ndarray) -> np.ndarray:
        z = X @ self._coef
        if self.intercept:
            z += self._bias
        return z

    def _check_y(self, y: Any, n: int) -> np.ndarray:
        raise NotImplementedError

    def _residual(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """d(sum of per-sample losses)/dz, one row per sample."""
        raise NotImplementedError

    def learn_many(self, X: Any, y: Any) -> Self:
        """One gradient step on the mean loss of the batch; an empty batch is a no-op."""
        X = check_matrix(X, self.n_features)
        n = X.shape[0]
        y = self._check_y(y, n)
        if n == 0:
            return self
        r = self._residual(self._scores(X), y)
        r /= n
        np.dot(X.T, r, out=self._g_coef)
        if self.intercept:
            self._g_bias[:] = r.sum(axis=0)
        if self.l2:
            self._g_coef += self.l2 * self._coef
        g = self._g
        norm = math.sqrt(g @ g)
        if not math.isfinite(norm):
            raise ValueError("the batch gradient is not finite (inputs too large?); not applied")
        self.last_grad_norm = norm
        if self.clip_grad_norm is not None and norm > self.clip_grad_norm:
            g *= self.clip_grad_norm / norm
        self.optimizer.step(self._w, g, self._l1)
        return self

    # ------------------------------------------------------------------ state

    def _params(self) -> dict[str, Any]:
        return {
            "n_features": self.n_features,
            "optimizer": optim.optimizer_params(self.optimizer),
            "l2": self.l2,
            "l1": self.l1,
            "intercept": self.intercept,
            "clip_grad_norm": self.clip_grad_norm,
            "seed": self.seed,
        }

    @classmethod
    def _from_params(cls, params: Mapping[str, Any]) -> Self:
        opt = params.get("optimizer")
        return cls(
            **{**params, "optimizer": None if opt is None else optim.optimizer_from_params(opt)}
        )

    def _state(self) -> tuple[Arrays, Meta]:
        opt_arrays, opt_meta = self.optimizer._state()
        arrays = {"w": self._w, **{f"optimizer.{k}": v for k, v in opt_arrays.items()}}
        return arrays, {"optimizer_state": opt_meta, "last_grad_norm": self.last_grad_norm}

    def _load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self._w[:] = check_array(arrays, "w", self._w.shape)
        prefix = "optimizer."
        opt_arrays = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        self.optimizer._load_state(opt_arrays, meta["optimizer_state"])
        self.last_grad_norm = float(meta["last_grad_norm"])


class LogisticRegression(_LinearModel):
    """Binary logistic regression; labels are 0/1 (ints, floats or bools).

    ``predict_proba_many`` gives the probability of class 1, shape ``(n,)``.
    """

    _type = "logistic"

    def __init__(
        self,
        n_features: int,
        optimizer: optim.Optimizer | None = None,
        l2: float = 0.0,
        l1: float = 0.0,
        intercept: bool = True,
        clip_grad_norm: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(n_features, 1, optimizer, l2, l1, intercept, clip_grad_norm, seed)

    def _check_y(self, y: Any, n: int) -> np.ndarray:
        return check_labels(y, n, 2).astype(np.float64)

    def _residual(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        r = sigmoid(z)
        r -= y
        return r

    def predict_proba_many(self, X: Any) -> np.ndarray:
        return sigmoid(self._scores(check_matrix(X, self.n_features)))

    def predict_many(self, X: Any) -> np.ndarray:
        return (self._scores(check_matrix(X, self.n_features)) > 0.0).astype(np.int64)

    def loss_many(self, X: Any, y: Any) -> np.ndarray:
        """Per-sample log loss, computed stably from the scores (never log(0))."""
        X = check_matrix(X, self.n_features)
        y = self._check_y(y, X.shape[0])
        z = self._scores(X)
        return np.logaddexp(0.0, z) - y * z


class SoftmaxRegression(_LinearModel):
    """Multinomial logistic regression; labels are class indices ``0 .. n_classes-1``.

    ``coef`` has shape ``(n_features, n_classes)``; ``predict_proba_many`` gives ``(n, k)``.
    """

    _type = "softmax"

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        optimizer: optim.Optimizer | None = None,
        l2: float = 0.0,
        l1: float = 0.0,
        intercept: bool = True,
        clip_grad_norm: float | None = None,
        seed: int = 0,
    ) -> None:
        if int(n_classes) < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        super().__init__(
            n_features, int(n_classes), optimizer, l2, l1, intercept, clip_grad_norm, seed
        )

    @property
    def n_classes(self) -> int:
        return self._k

    def _check_y(self, y: Any, n: int) -> np.ndarray:
        return check_labels(y, n, self._k)

    def _residual(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        p = softmax(z)
        p[np.arange(len(y)), y] -= 1.0
        return p

    def predict_proba_many(self, X: Any) -> np.ndarray:
        return softmax(self._scores(check_matrix(X, self.n_features)))

    def predict_many(self, X: Any) -> np.ndarray:
        return self._scores(check_matrix(X, self.n_features)).argmax(axis=1)

    def loss_many(self, X: Any, y: Any) -> np.ndarray:
        """Per-sample cross-entropy, via log-sum-exp."""
        X = check_matrix(X, self.n_features)
        y = self._check_y(y, X.shape[0])
        z = self._scores(X)
        m = z.max(axis=1)
        lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
        return lse - z[np.arange(len(y)), y]

    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "n_classes": self._k}


class LinearRegression(_LinearModel):
    """Least-squares regression: per-sample loss ``(y_hat - y) ** 2``."""

    _type = "linear"

    def __init__(
        self,
        n_features: int,
        optimizer: optim.Optimizer | None = None,
        l2: float = 0.0,
        l1: float = 0.0,
        intercept: bool = True,
        clip_grad_norm: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(n_features, 1, optimizer, l2, l1, intercept, clip_grad_norm, seed)

    def _classes(self) -> None:
        return None

    def _check_y(self, y: Any, n: int) -> np.ndarray:
        return check_vector(y, n)

    def _residual(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        z -= y
        z *= 2.0
        return z

    def predict_many(self, X: Any) -> np.ndarray:
        return self._scores(check_matrix(X, self.n_features))

    def loss_many(self, X: Any, y: Any) -> np.ndarray:
        X = check_matrix(X, self.n_features)
        e = self._scores(X) - self._check_y(y, X.shape[0])
        return e * e


Model = LogisticRegression | SoftmaxRegression | LinearRegression


# ---------------------------------------------------------------------------- codec registry

_REGISTRY: dict[str, type[Stateful]] = {
    c.__name__: c
    for c in (
        LogisticRegression,
        SoftmaxRegression,
        LinearRegression,
        *optim.OPTIMIZERS.values(),
        *optim.SCHEDULERS.values(),
        *preprocessing.CLASSES,
        pipeline.FeatureTransform,
        *metrics.CLASSES,
        *drift.CLASSES,
    )
}


def to_bytes(obj: Stateful) -> bytes:
    """Any learning-core object's full state as codec bytes (no pickle)."""
    if _REGISTRY.get(type(obj).__name__) is not type(obj):
        raise TypeError(f"{type(obj).__name__} is not a learning-core class")
    arrays, meta = obj.state_dict()
    return codec.encode_state(arrays, meta)


def from_bytes(payload: bytes) -> Any:
    """Rebuild what :func:`to_bytes` wrote; only whitelisted classes are ever created."""
    arrays, meta = codec.decode_state(payload)
    cls = _REGISTRY.get(str(meta.get("class")))
    if cls is None:
        raise codec.CodecError(f"state of unknown class {meta.get('class')!r}")
    return cls._restore(arrays, meta)
