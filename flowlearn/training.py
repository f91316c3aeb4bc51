"""Flink-free training step of one model: prequential score, safety gate, update, version.

The trainer operator holds this object's state in Flink managed state (as codec bytes and
two counters) and calls :meth:`ModelTrainer.train_batch` on each mini-batch.

>>> import numpy as np
>>> t = ModelTrainer.create("m", {"type": "logistic", "n_features": 2, "learning_rate": 0.1})
>>> r = t.train_batch(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1.0, 0.0]))
>>> r.version.version, r.version.samples_applied, t.version
(1, 2, 1)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowlearn import codec, linear, optim
from flowlearn.redis_contract import ModelVersion

#: A full snapshot rides along with every version while the weights stay under this size.
SNAPSHOT_EVERY_VERSION_BYTES = 64 * 1024
#: Larger models rewrite the snapshot every this many versions (the delta stream keeps more).
SNAPSHOT_INTERVAL = 100


Model = linear.LogisticRegression | linear.SoftmaxRegression | linear.LinearRegression


def build_model(spec: Mapping[str, Any]) -> Model:
    """A fresh model for a model spec (``conf.ModelSpec.as_dict()``)."""
    kind = spec.get("type", "logistic")
    n_features = int(spec["n_features"])
    sgd = optim.SGD(lr=float(spec.get("learning_rate", 0.05)))
    l2 = float(spec.get("l2", 0.0))
    if kind == "logistic":
        return linear.LogisticRegression(n_features=n_features, optimizer=sgd, l2=l2)
    if kind == "softmax":
        return linear.SoftmaxRegression(
            n_features=n_features, n_classes=int(spec.get("n_classes", 2)), optimizer=sgd, l2=l2
        )
    if kind == "linear":
        return linear.LinearRegression(n_features=n_features, optimizer=sgd, l2=l2)
    raise ValueError(f"unknown model type {kind!r}")


@dataclass(frozen=True)
class BatchResult:
    """What one batch did: the new version (None if rejected) and what the test step saw
    before training: per-sample losses and, for classifiers, 0/1 errors."""

    version: ModelVersion | None
    prequential_loss: float
    rejected: str | None = None
    losses: np.ndarray | None = None
    errors: np.ndarray | None = None


class ModelTrainer:
    """One model's weights, version counter and applied-sample counter."""

    def __init__(
        self, model_id: str, spec: Mapping[str, Any], model: Model, version: int,
        samples_applied: int,
    ) -> None:
        self.model_id = model_id
        self.spec = dict(spec)
        self.model = model
        self.version = version
        self.samples_applied = samples_applied
        self._published_spec = json.dumps(
            {**model.spec(), "features": spec.get("features", "dense"),
             "hash_seed": int(spec.get("hash_seed", 0))},
            sort_keys=True,
        )
        # Set on construction, i.e. after every (re)start: the first version a (re)started
        # job publishes carries a full snapshot (DESIGN: a new epoch starts with one).
        self._needs_snapshot = True

    @classmethod
    def create(cls, model_id: str, spec: Mapping[str, Any]) -> ModelTrainer:
        return cls(model_id, spec, build_model(spec), 0, 0)

    @classmethod
    def restore(
        cls, model_id: str, spec: Mapping[str, Any], state: bytes, version: int,
        samples_applied: int,
    ) -> ModelTrainer:
        model = build_model(spec)
        arrays, meta = codec.decode_state(state)
        model.load_state_dict(arrays, meta)
        return cls(model_id, spec, model, version, samples_applied)

    def state_bytes(self) -> bytes:
        arrays, meta = self.model.state_dict()
        return codec.encode_state(arrays, meta)

    def train_batch(self, X: np.ndarray, y: np.ndarray) -> BatchResult:
        """Test then train on one batch; returns the version it made."""
        if len(X) == 0:
            return BatchResult(None, float("nan"), "empty")
        before = self.model.weights_vector()
        losses = errors = None
        loss = float("nan")
        try:
            losses = self.model.loss_many(X, y)
            loss = float(np.mean(losses))
            if not isinstance(self.model, linear.LinearRegression):
                errors = (self.model.predict_many(X) != y).astype(np.float64)
            self.model.learn_many(X, y)
        except ValueError as exc:  # non-finite input or gradient: the weights are untouched
            return BatchResult(None, loss, f"rejected: {exc}")
        after = self.model.weights_vector()
        if not np.all(np.isfinite(after)):
            # Safety gate: never publish or keep non-finite weights.
            self.model.set_weights_vector(before)
            return BatchResult(None, loss, "non_finite_weights")
        return BatchResult(self._new_version(before, after, len(X)), loss, None, losses, errors)

    def restore_weights(self, weights: np.ndarray) -> ModelVersion:
        """A new version whose weights equal ``weights`` bit for bit (a rollback); the
        optimizer keeps its state."""
        before = self.model.weights_vector()
        self.model.set_weights_vector(weights)
        return self._new_version(before, self.model.weights_vector(), 0)

    def reset(self) -> ModelVersion:
        """A new version holding a freshly initialised model (optimizer state too)."""
        before = self.model.weights_vector()
        self.model = build_model(self.spec)
        return self._new_version(before, self.model.weights_vector(), 0)

    def set_learning_rate(self, lr: float) -> None:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rate must be a positive number, got {lr}")
        self.model.optimizer.set_learning_rate(lr)

    def _new_version(self, before: np.ndarray, after: np.ndarray, n_samples: int
                     ) -> ModelVersion:
        base = self.version
        self.version += 1
        self.samples_applied += n_samples
        snapshot = (
            self._needs_snapshot
            or after.nbytes <= SNAPSHOT_EVERY_VERSION_BYTES
            or self.version % SNAPSHOT_INTERVAL == 0
        )
        self._needs_snapshot = False
        return ModelVersion(
            model_id=self.model_id,
            version=self.version,
            base_version=base,
            samples_applied=self.samples_applied,
            spec_json=self._published_spec,
            delta=codec.make_delta(before, after),
            weights=codec.encode_array(after) if snapshot else None,
        )
