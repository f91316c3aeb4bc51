"""The model types, in one place: the spec, training, the codec and scoring all look a type
up here, so adding one is adding an entry (docs/architecture.md, "Where to add...").

>>> model_type("softmax").n_outputs({"classes": [0, 1, 2]})
3
>>> sorted(MODEL_TYPES)
['linear', 'logistic', 'softmax']
>>> model_type("tree")
Traceback (most recent call last):
...
ValueError: unknown model type 'tree'; known: linear, logistic, softmax
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from flowlearn.core import linear, pipeline
from flowlearn.core.pipeline import FeatureTransform, Pipeline, TargetScaler

Model = linear.Model


@dataclass(frozen=True)
class ModelType:
    """One kind of model: its class, how many outputs (weight columns) a published spec
    gives it, and the link from linear scores to predictions (None: the scores are the
    predictions)."""

    name: str
    #: The model's class (its constructor: ``(n_features, [n_classes,] **params)``).
    cls: Callable[..., Model]
    #: What it predicts: "binary" (labels 0 or 1), "multiclass" (class indices; the number
    #: of classes comes from the spec's ``n_classes``, or ``classes`` once published) or
    #: "regression" (any finite number).
    task: Literal["binary", "multiclass", "regression"]
    link: Callable[[np.ndarray], np.ndarray] | None

    @property
    def multiclass(self) -> bool:
        return self.task == "multiclass"

    @property
    def classifier(self) -> bool:
        """Its predictions are classes, so 0/1 errors exist (and accuracy, calibration)."""
        return self.task != "regression"

    def n_outputs(self, published: Mapping[str, Any]) -> int:
        """Weight columns of a published spec (:meth:`linear._LinearModel.spec`)."""
        return len(published.get("classes") or ()) if self.multiclass else 1

    def build(self, n_features: int, n_classes: int, **params: Any) -> Model:
        """A fresh model; ``params`` are the model's keyword arguments (optimizer, l1, ...)."""
        if self.multiclass:
            return self.cls(n_features, n_classes, **params)
        return self.cls(n_features, **params)

    def servable(self, published: Mapping[str, Any], weights: np.ndarray) -> Model:
        """A model that predicts with a published spec and weights vector."""
        intercept = bool(published.get("intercept", True))
        n_features = int(published["n_features"])
        if self.multiclass:
            model = self.cls(n_features, self.n_outputs(published), intercept=intercept)
        else:
            model = self.cls(n_features, intercept=intercept)
        model.set_weights_vector(weights)
        return model


MODEL_TYPES: dict[str, ModelType] = {
    t.name: t
    for t in (
        ModelType("logistic", linear.LogisticRegression, "binary", link=linear.sigmoid),
        ModelType("softmax", linear.SoftmaxRegression, "multiclass", link=linear.softmax),
        ModelType("linear", linear.LinearRegression, "regression", link=None),
    )
}


def model_type(name: Any) -> ModelType:
    """The registered type ``name``; ValueError naming the known ones otherwise."""
    found = MODEL_TYPES.get(name) if isinstance(name, str) else None
    if found is None:
        raise ValueError(f"unknown model type {name!r}; known: {', '.join(sorted(MODEL_TYPES))}")
    return found


def pipeline_of(
    published: Mapping[str, Any], weights: np.ndarray
) -> tuple[FeatureTransform, TargetScaler | None] | None:
    """The feature pipeline (and target scaler) of a published version; None for a version
    published before models had one (it predicts from the raw features)."""
    config = published.get("pipeline")
    if config is None:
        return None
    d = int(published["n_features"])
    size = pipeline.statistics_size(d, config)
    if weights.ndim != 1 or len(weights) < size:
        raise ValueError(f"weights vector of shape {weights.shape} has no pipeline statistics")
    return pipeline.servable(d, config, weights[len(weights) - size :])


def n_model_weights(published: Mapping[str, Any], weights: np.ndarray) -> int:
    """How many of ``weights`` are the model's (the rest are its pipeline's statistics)."""
    config = published.get("pipeline")
    if config is None:
        return len(weights)
    return len(weights) - pipeline.statistics_size(int(published["n_features"]), config)


def from_spec(published: Mapping[str, Any], weights: np.ndarray) -> Model | Pipeline:
    """A servable model (behind its feature pipeline, when it has one) from a published
    spec and weights vector.

    >>> m = from_spec({"type": "logistic", "n_features": 2, "intercept": True},
    ...               np.array([1.0, -1.0, 0.0]))
    >>> m.predict_many(np.array([[2.0, 0.0]])).tolist()
    [1]
    """
    kind = model_type(published.get("type"))
    parts = pipeline_of(published, weights)
    model = kind.servable(published, weights[: n_model_weights(published, weights)])
    return model if parts is None else Pipeline(parts[0], model, parts[1])
