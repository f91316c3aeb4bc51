"""Self-tuning models: one linear model trained at several learning rates at once, served
as the mixture of the copies, each weighted by how well it has predicted lately.

No single learning rate suits every stream: on the public streams of ``bench/`` the best
rate in hindsight ranges over a factor of eight around the measured default
(docs/learning.md). A self-tuning model trains ``k`` copies of the same model on the same
batches (``learning_rates``; by default the measured default times 1/4, 1/2, 1, 2 and 4)
and predicts with their mixture. Member ``i`` weighs

    alpha_i  proportional to  exp(-eta * L_i),  L_i <- gamma^n * L_i + (its losses on the batch)

where the losses are each member's prequential ones (scored before it learns the batch),
``gamma = 0.5 ** (1 / half_life)`` forgets old evidence, so that after a drift a faster
member takes over, and ``eta`` is 1 for the log loss of classifiers and 1/2 for the
squared error of regressors (on the standardised target): the members' posterior
probabilities under a discounted likelihood, i.e. Bayesian model averaging with
forgetting (Raftery et al., "Online prediction under model uncertainty via dynamic model
averaging", 2010), the exponentially weighted average forecaster (Hedge) of the
prediction-with-experts literature.

The mixture weights are published with the members' weights, so the predictor mixes
exactly as the trainer did.

>>> import numpy as np
>>> from flowlearn.core import linear, optim
>>> members = [linear.LogisticRegression(1, optimizer=optim.SGD(lr)) for lr in (0.01, 1.0)]
>>> model = SelfTuning(members)
>>> X, y = np.array([[1.0], [-1.0]] * 32), np.array([1, 0] * 32)
>>> for _ in range(10):
...     model = model.learn_many(X, y)
>>> model.mixture_weights.round(3).tolist()  # the fast member has predicted better
[0.0, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Self, cast

import numpy as np

from flowlearn.core import linear
from flowlearn.core.sparse import check_rows
from flowlearn.core.validation import Arrays, Meta, Stateful, check_array

__all__ = ["DEFAULT_RATE_FACTORS", "HALF_LIFE", "SelfTuning"]

#: The default members' learning rates: the measured default times these.
DEFAULT_RATE_FACTORS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Samples after which a member's past losses count half (the forgetting of the mixture).
HALF_LIFE = 500
#: The smallest probability a log loss is taken of (a member certain of the wrong class
#: loses ~28 nats on the sample, not infinity).
_PROBABILITY_FLOOR = 1e-12


class SelfTuning(Stateful):
    """``members``: linear models of one type and shape, each with its own optimizer (in
    practice, its own learning rate). The interface is a linear model's: the trainer, the
    pipeline and the predictor treat a self-tuning model as one model."""

    #: Its members take sparse rows, so it does (``linear._LinearModel.takes_sparse``).
    takes_sparse = True

    def __init__(self, members: Sequence[linear.Model], half_life: float = HALF_LIFE) -> None:
        if not members:
            raise ValueError("a self-tuning model needs at least one member")
        first = members[0]
        for m in members:
            if type(m) is not type(first) or m.weights_vector().size != first.weights_vector().size:
                raise ValueError("the members of a self-tuning model must have one type and shape")
        if not half_life > 0:
            raise ValueError(f"half_life must be > 0, got {half_life}")
        self.members = list(members)
        self.half_life = float(half_life)
        self.n_features = first.n_features
        self._regression = isinstance(first, linear.LinearRegression)
        self._eta = 0.5 if self._regression else 1.0
        self._decay = 0.5 ** (1.0 / self.half_life)
        #: Each member's discounted sum of prequential losses (training state).
        self.losses = np.zeros(len(self.members))
        #: The published mixture weights (sum to 1), refreshed after every batch.
        self.mixture_weights = np.full(len(self.members), 1.0 / len(self.members))
        self.last_grad_norm = 0.0

    # ------------------------------------------------------------------ what the trainer reads

    @property
    def clip_grad_norm(self) -> float | None:
        return self.members[0].clip_grad_norm

    @property
    def batch_size(self) -> int:
        return self.members[0].batch_size

    @property
    def learning_rates(self) -> list[float]:
        return [m.optimizer.learning_rate for m in self.members]

    def set_learning_rate(self, lr: float) -> None:
        raise ValueError(
            "a self-tuning model weighs its own learning rates "
            f"{self.learning_rates}; change them in its spec (learning_rates)"
        )

    # ------------------------------------------------------------------ learning

    def learn_many(self, X: Any, y: Any) -> Self:
        """Score the batch with every member (their prequential losses update the mixture),
        then let every member take its step."""
        X = check_rows(X, self.n_features)
        if len(X) == 0:
            return self
        batch_losses = np.array([float(np.sum(m.loss_many(X, y))) for m in self.members])
        for m in self.members:
            m.learn_many(X, y)
        self.last_grad_norm = max(m.last_grad_norm for m in self.members)
        self.losses = self.losses * self._decay ** len(X) + batch_losses
        self.mixture_weights = self._weights_of(self.losses)
        return self

    def _weights_of(self, losses: np.ndarray) -> np.ndarray:
        logits = -self._eta * losses
        w = np.exp(logits - logits.max())
        return w / w.sum()

    # ------------------------------------------------------------------ predicting

    def predict_proba_many(self, X: Any) -> np.ndarray:
        """The mixture of the members' probabilities: ``(n,)`` of class 1 for a binary
        model, ``(n, k)`` for a multiclass one."""
        X = check_rows(X, self.n_features)
        if self._regression:
            raise ValueError("a regression model predicts no probabilities")
        classifiers = cast(list[linear.LogisticRegression | linear.SoftmaxRegression], self.members)
        out = np.zeros(0)
        for alpha, m in zip(self.mixture_weights, classifiers, strict=True):
            part = alpha * m.predict_proba_many(X)
            out = part if out.size == 0 else out + part
        return out

    def predict_many(self, X: Any) -> np.ndarray:
        X = check_rows(X, self.n_features)
        if self._regression:
            out = np.zeros(len(X))
            for alpha, m in zip(self.mixture_weights, self.members, strict=True):
                out += alpha * m.predict_many(X)
            return out
        return self._classes_of(self.predict_proba_many(X))

    def loss_many(self, X: Any, y: Any) -> np.ndarray:
        """The mixture's per-sample loss: log loss of its probabilities, or squared error."""
        if self._regression:
            return self._losses(self.predict_many(X), y)
        return self._losses(self.predict_proba_many(X), y)

    def test_many(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`loss_many` and :meth:`predict_many` of one batch (the trainer's test
        step), the members' predictions made once."""
        if self._regression:
            predicted = self.predict_many(X)
            return self._losses(predicted, y), predicted
        p = self.predict_proba_many(X)
        return self._losses(p, y), self._classes_of(p)

    @staticmethod
    def _classes_of(p: np.ndarray) -> np.ndarray:
        """The classes of the mixture's probabilities (a binary model's: of class 1)."""
        return p.argmax(axis=1) if p.ndim == 2 else (p > 0.5).astype(np.int64)

    def _losses(self, predicted: np.ndarray, y: Any) -> np.ndarray:
        """Per-sample losses of the mixture's predictions (a regressor) or probabilities."""
        if self._regression:
            error = predicted - np.asarray(y, dtype=np.float64)
            return error * error
        labels = np.asarray(y, dtype=np.int64)
        if predicted.ndim == 2:
            chosen = predicted[np.arange(len(labels)), labels]
        else:
            chosen = np.where(labels == 1, predicted, 1.0 - predicted)
        return -np.log(np.maximum(chosen, _PROBABILITY_FLOOR))

    # ------------------------------------------------------------------ published and saved

    def weights_vector(self) -> np.ndarray:
        """The members' weights vectors, then the mixture weights."""
        return np.concatenate([*(m.weights_vector() for m in self.members), self.mixture_weights])

    def set_weights_vector(self, v: np.ndarray, *, finite: bool = True) -> None:
        size = self.members[0].weights_vector().size
        k = len(self.members)
        if np.shape(v) != (k * size + k,):
            raise ValueError(f"weights vector must have shape ({k * size + k},), got {np.shape(v)}")
        for i, m in enumerate(self.members):
            m.set_weights_vector(v[i * size : (i + 1) * size], finite=finite)
        self.mixture_weights = np.array(v[k * size :], dtype=np.float64)

    def spec(self) -> dict[str, Any]:
        return {
            **self.members[0].spec(),
            "members": len(self.members),
            "learning_rates": self.learning_rates,
        }

    def with_columns(self, source: np.ndarray) -> Self:
        """This model over new columns (:func:`flowlearn.core.pipeline.remap_columns`)."""
        moved = type(self)([m.with_columns(source) for m in self.members], self.half_life)
        moved.losses = self.losses.copy()
        moved.mixture_weights = self.mixture_weights.copy()
        return moved

    def _params(self) -> dict[str, Any]:
        return {
            "members": [m.state_dict()[1]["params"] for m in self.members],
            "member_class": type(self.members[0]).__name__,
            "half_life": self.half_life,
        }

    @classmethod
    def _from_params(cls, params: Mapping[str, Any]) -> Self:
        member_cls = linear.MODEL_CLASSES[params["member_class"]]
        members = [member_cls._from_params(p) for p in params["members"]]
        return cls(members, float(params["half_life"]))

    def _state(self) -> tuple[Arrays, Meta]:
        arrays: dict[str, np.ndarray] = {
            "losses": self.losses,
            "mixture_weights": self.mixture_weights,
        }
        members_meta = []
        for i, m in enumerate(self.members):
            member_arrays, member_meta = m._state()
            arrays.update({f"members.{i}.{k}": v for k, v in member_arrays.items()})
            members_meta.append(member_meta)
        return arrays, {"members_state": members_meta, "last_grad_norm": self.last_grad_norm}

    def _load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        k = len(self.members)
        self.losses = check_array(arrays, "losses", (k,))
        self.mixture_weights = check_array(arrays, "mixture_weights", (k,))
        for i, (m, member_meta) in enumerate(zip(self.members, meta["members_state"], strict=True)):
            prefix = f"members.{i}."
            m._load_state(
                {key[len(prefix) :]: v for key, v in arrays.items() if key.startswith(prefix)},
                member_meta,
            )
        self.last_grad_norm = float(meta["last_grad_norm"])
        if not math.isclose(float(self.mixture_weights.sum()), 1.0, rel_tol=1e-9):
            raise ValueError("corrupt SelfTuning state: mixture weights do not sum to 1")
