"""Linear models trained by mini-batch gradient steps: logistic, softmax and least squares.

A model's ``batch_size`` is the batch its learning rate is set for. A batch of ``n``
samples steps on the sum of its per-sample gradients divided by ``max(n, batch_size)``, so
every sample moves the weights alike however the stream was cut: a batch of 8 takes an
eighth of a full batch's step, not a full step on a noisier gradient. With ``batch_size =
0`` every batch steps on its mean gradient.

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
from typing import Any, ClassVar, NamedTuple, Self

import numpy as np

from flowlearn.core import (
    bandits,
    codec,
    drift,
    metrics,
    optim,
    pipeline,
    preprocessing,
    regression_trees,
    trees,
)
from flowlearn.core.sparse import Rows, SparseRows, check_rows
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
    "MODEL_CLASSES",
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


class Contributions(NamedTuple):
    """A linear model's raw scores taken apart: ``per_feature[i, j, k]`` is feature ``j``'s
    share of sample ``i``'s score ``k``; ``base[k]`` is what no feature explains (the
    intercept). ``per_feature.sum(axis=1) + base`` is the raw score."""

    per_feature: np.ndarray
    base: np.ndarray


class _LinearModel(Stateful):
    """Shared machinery: flat parameters, validation, the gradient step and state."""

    _type: ClassVar[str]
    #: Learns and predicts from :class:`~flowlearn.core.sparse.SparseRows` as they are (a
    #: hashed model's rows): the same step, its products over the stored entries only.
    takes_sparse: ClassVar[bool] = True

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
        batch_size: int,
    ) -> None:
        if int(n_features) < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if l1 < 0 or l2 < 0 or not (math.isfinite(l1) and math.isfinite(l2)):
            raise ValueError(f"l1 and l2 must be finite and >= 0, got l1={l1}, l2={l2}")
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be > 0 or None, got {clip_grad_norm}")
        if int(batch_size) < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        self.n_features = int(n_features)
        #: The batch the learning rate is for (0: every batch steps on its mean gradient).
        self.batch_size = int(batch_size)
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

    def set_weights_vector(self, v: np.ndarray, *, finite: bool = True) -> None:
        """Overwrite all serving parameters from a :meth:`weights_vector`-shaped vector
        (``finite=False``: as they are, NaN and infinity included, as a predictor serves a
        published version)."""
        if finite:
            self._w[:] = check_vector(v, self._w.size, "weights vector")
            self.optimizer.adopt(self._w, self._l1)
            return
        if np.shape(v) != self._w.shape:
            raise ValueError(f"weights vector must have shape {self._w.shape}, got {np.shape(v)}")
        self._w[:] = v

    def set_learning_rate(self, lr: float) -> None:
        """Replace the optimizer's learning rate, keeping its state (an operator command)."""
        self.optimizer.set_learning_rate(lr)

    def with_columns(self, source: np.ndarray) -> Self:
        """This model over new feature columns: for each new column, ``source`` names the
        old one it takes (:func:`flowlearn.core.pipeline.remap_columns`; -1: a new feature,
        weight 0). The coefficients and optimizer buffers of a kept feature move with it;
        the intercept, the optimizer's step count and parameters stay.

        >>> m = LinearRegression(2)
        >>> m.set_weights_vector(np.array([1.0, 2.0, 3.0]))
        >>> m.with_columns(np.array([1, -1, 0])).weights_vector().tolist()
        [2.0, 0.0, 1.0, 3.0]
        """
        params = {**self._params(), "n_features": len(source)}
        moved = self._from_params(params)
        n_coef = self.n_features * self._k

        def move(v: np.ndarray) -> np.ndarray:
            coef = pipeline.take_columns(v[:n_coef].reshape(self.n_features, self._k), source, 0.0)
            return np.concatenate([coef.ravel(), v[n_coef:]])

        moved._w[:] = move(self._w)
        opt_arrays, opt_meta = self.optimizer._state()
        size = None if opt_meta["size"] is None else moved._w.size
        moved.optimizer._load_state(
            {k: move(v) for k, v in opt_arrays.items()}, {**opt_meta, "size": size}
        )
        moved.last_grad_norm = self.last_grad_norm
        return moved

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

    def contributions_many(self, X: Any) -> Contributions:
        """Each feature's share of the raw score (the logit, the class scores, the
        prediction): ``coef[j] * x[j]``, and the intercept as the base; they add up to the
        score (up to rounding).

        >>> m = LinearRegression(2)
        >>> m.set_weights_vector(np.array([2.0, -1.0, 0.5]))
        >>> c = m.contributions_many(np.array([[1.0, 3.0]]))
        >>> c.per_feature[0, :, 0].tolist(), c.base.tolist()
        ([2.0, -3.0], [0.5])
        """
        X = check_matrix(X, self.n_features)
        base = self._bias.copy() if self.intercept else np.zeros(self._k)
        coef = self._coef.reshape(self.n_features, self._k)
        return Contributions(X[:, :, None] * coef[None, :, :], base)

    # ------------------------------------------------------------------ learning

    def _scores(self, X: Rows) -> np.ndarray:
        z = X.dot(self._coef) if isinstance(X, SparseRows) else X @ self._coef
        if self.intercept:
            z += self._bias
        return z

    def _check_y(self, y: Any, n: int) -> np.ndarray:
        raise NotImplementedError

    def _losses(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-sample losses of scores ``z`` (left as they are) for checked labels ``y``."""
        raise NotImplementedError

    def _predictions(self, z: np.ndarray) -> np.ndarray:
        """What :meth:`predict_many` answers for scores ``z``."""
        raise NotImplementedError

    def predict_many(self, X: Any) -> np.ndarray:
        return self._predictions(self._scores(check_rows(X, self.n_features)))

    def loss_many(self, X: Any, y: Any) -> np.ndarray:
        X = check_rows(X, self.n_features)
        y = self._check_y(y, X.shape[0])
        return self._losses(self._scores(X), y)

    def test_many(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`loss_many` and :meth:`predict_many` of one batch (the trainer's test
        step), its scores computed once."""
        X = check_rows(X, self.n_features)
        y = self._check_y(y, X.shape[0])
        z = self._scores(X)
        return self._losses(z, y), self._predictions(z)

    def _residual(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """d(sum of per-sample losses)/dz, one row per sample."""
        raise NotImplementedError

    def learn_many(self, X: Any, y: Any) -> Self:
        """One gradient step: the batch's summed loss over ``max(n, batch_size)`` samples
        (its mean loss when ``batch_size`` is 0 or smaller); an empty batch is a no-op.
        Sparse rows take the same step, the gradient summed over their stored entries."""
        X = check_rows(X, self.n_features)
        n = X.shape[0]
        y = self._check_y(y, n)
        if n == 0:
            return self
        r = self._residual(self._scores(X), y)
        r /= max(n, self.batch_size)
        if isinstance(X, SparseRows):
            self._g_coef[...] = X.t_dot(r)
        else:
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
            "batch_size": self.batch_size,
        }

    @classmethod
    def _from_params(cls, params: Mapping[str, Any]) -> Self:
        opt = params.get("optimizer")
        # Saved before models had a batch size: mean-gradient steps, as they took.
        return cls(
            **{
                "batch_size": 0,
                **params,
                "optimizer": None if opt is None else optim.optimizer_from_params(opt),
            }
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
        batch_size: int = 0,
    ) -> None:
        super().__init__(
            n_features, 1, optimizer, l2, l1, intercept, clip_grad_norm, seed, batch_size
        )

    def _check_y(self, y: Any, n: int) -> np.ndarray:
        return check_labels(y, n, 2).astype(np.float64)

    def _residual(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        r = sigmoid(z)
        r -= y
        return r

    def predict_proba_many(self, X: Any) -> np.ndarray:
        return sigmoid(self._scores(check_rows(X, self.n_features)))

    def _predictions(self, z: np.ndarray) -> np.ndarray:
        return (z > 0.0).astype(np.int64)

    def _losses(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-sample log loss, computed stably from the scores (never log(0))."""
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
        batch_size: int = 0,
    ) -> None:
        if int(n_classes) < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        super().__init__(
            n_features,
            int(n_classes),
            optimizer,
            l2,
            l1,
            intercept,
            clip_grad_norm,
            seed,
            batch_size,
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
        return softmax(self._scores(check_rows(X, self.n_features)))

    def _predictions(self, z: np.ndarray) -> np.ndarray:
        return z.argmax(axis=1)

    def _losses(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-sample cross-entropy, via log-sum-exp."""
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
        batch_size: int = 0,
    ) -> None:
        super().__init__(
            n_features, 1, optimizer, l2, l1, intercept, clip_grad_norm, seed, batch_size
        )

    def _classes(self) -> None:
        return None

    def _check_y(self, y: Any, n: int) -> np.ndarray:
        return check_vector(y, n)

    def _residual(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        z -= y
        z *= 2.0
        return z

    def _predictions(self, z: np.ndarray) -> np.ndarray:
        return z

    def _losses(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        e = z - y
        return e * e


Model = LogisticRegression | SoftmaxRegression | LinearRegression
#: The linear model classes by name (what a saved self-tuning model names its members by).
MODEL_CLASSES: dict[str, type[Model]] = {
    c.__name__: c for c in (LogisticRegression, SoftmaxRegression, LinearRegression)
}


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
        *trees.CLASSES,
        *regression_trees.CLASSES,
        bandits.ContextualBandit,
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
