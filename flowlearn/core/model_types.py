"""The model types, in one place: the spec, training, the codec and scoring all look a type
up here, so adding one is adding an entry (docs/architecture.md, "Where to add...").

>>> model_type("auto_softmax").task
'multiclass'
>>> sorted(MODEL_TYPES)  # doctest: +NORMALIZE_WHITESPACE
['auto_linear', 'auto_logistic', 'auto_softmax', 'contextual_bandit', 'hoeffding_tree',
 'hoeffding_tree_regressor', 'linear', 'logistic', 'random_forest', 'softmax']
>>> model_type("tree")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: unknown model type 'tree'; known: auto_linear, ..., softmax
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from flowlearn.core import bandits, linear, pipeline, regression_trees, trees
from flowlearn.core.ensemble import SelfTuning
from flowlearn.core.optim import Optimizer
from flowlearn.core.pipeline import FeatureTransform, FeedbackPipeline, Pipeline, TargetScaler

#: A tree model: a Hoeffding tree classifier or regressor, or an adaptive random forest.
TreeModel = (
    trees.HoeffdingTreeClassifier
    | trees.RandomForestClassifier
    | regression_trees.HoeffdingTreeRegressor
)
#: A model of any type: a linear model, a self-tuning mixture of them, a tree model, or a
#: contextual bandit.
Model = linear.Model | SelfTuning | TreeModel | bandits.ContextualBandit


@dataclass(frozen=True)
class ModelType:
    """One kind of model: its model class, what it predicts, and whether it is a
    self-tuning mixture of that class at several learning rates (:mod:`ensemble`)."""

    name: str
    #: The (member) model's class (its constructor: ``(n_features, [n_classes,] **params)``).
    cls: type[linear.Model] | type[TreeModel] | type[bandits.ContextualBandit]
    #: What it predicts: "binary" (labels 0 or 1), "multiclass" (class indices; the number
    #: of classes comes from the spec's ``n_classes``, or ``classes`` once published),
    #: "regression" (any finite number) or, for a "bandit", which action to take (it learns
    #: from rewards: :mod:`flowlearn.core.bandits`).
    task: Literal["binary", "multiclass", "regression", "bandit"]
    #: Several copies of ``cls``, one per learning rate, served as their mixture.
    self_tuning: bool = False

    @property
    def multiclass(self) -> bool:
        return self.task == "multiclass"

    @property
    def tree(self) -> bool:
        """A tree model (:mod:`flowlearn.core.trees`, :mod:`~flowlearn.core.regression_trees`):
        it learns by splitting, not by gradient steps, so it has tree parameters and no
        optimizer."""
        return issubclass(self.cls, TREE_CLASSES)

    @property
    def explainable(self) -> bool:
        """Its served score is linear in the (transformed) features, so each feature's
        share of it is well defined (``contributions_many`` of :mod:`flowlearn.core.linear`):
        a plain linear model, not a mixture, a tree or a bandit."""
        return not (self.tree or self.self_tuning or self.bandit)

    @property
    def bandit(self) -> bool:
        """A contextual bandit: it chooses actions and learns from their rewards, with no
        optimizer and no tree parameters (its own, :data:`~flowlearn.core.spec.BANDIT_FIELDS`)."""
        return self.task == "bandit"

    @property
    def classifier(self) -> bool:
        """Its predictions are classes, so 0/1 errors exist (and accuracy, calibration)."""
        return self.task in ("binary", "multiclass")

    def build(
        self, n_features: int, n_classes: int, optimizers: Sequence[Optimizer], **params: Any
    ) -> Model:
        """A fresh model: one member per optimizer (a plain type takes exactly one);
        ``params`` are the members' other keyword arguments (l1, batch_size, ...)."""
        if self.tree or self.bandit:
            raise ValueError(f"a {self.name} model has no optimizer")
        if not self.self_tuning and len(optimizers) != 1:
            raise ValueError(f"a {self.name} model trains with one optimizer")
        members = [
            self._member(n_features, n_classes, optimizer=opt, **params) for opt in optimizers
        ]
        return SelfTuning(members) if self.self_tuning else members[0]

    def build_tree(self, n_features: int, n_classes: int, **params: Any) -> TreeModel:
        """A fresh tree model; ``params`` are its class's keyword arguments (the spec's
        :data:`~flowlearn.core.spec.TREE_FIELDS` it sets, and ``seed``); a regressor
        ignores ``n_classes``."""
        cls = self.cls
        if issubclass(cls, regression_trees.HoeffdingTreeRegressor):
            return cls(n_features, **params)
        if not issubclass(cls, TREE_CLASSES):
            raise ValueError(f"a {self.name} model is no tree model")
        return cls(n_features, n_classes, **params)

    def _member(self, n_features: int, n_classes: int, **params: Any) -> linear.Model:
        cls = self.cls
        if issubclass(cls, TREE_CLASSES) or issubclass(cls, bandits.ContextualBandit):
            raise ValueError(f"a {self.name} model has no members")
        if issubclass(cls, linear.SoftmaxRegression):
            return cls(n_features, n_classes, **params)
        return cls(n_features, **params)

    def unfitted(self, published: Mapping[str, Any]) -> Model:
        """A model of a published spec's shape, its weights at zero (a bandit: its prior)."""
        if self.tree or self.bandit:
            # A tree's or a bandit's published spec names every constructor argument its
            # vector's length depends on (a tree's seed only steers training).
            accepted = inspect.signature(self.cls).parameters
            params = {k: v for k, v in published.items() if k in accepted and k != "n_features"}
            if self.bandit:
                return bandits.ContextualBandit(int(published["n_features"]), **params)
            n_classes = len(published.get("classes") or ())
            return self.build_tree(int(published["n_features"]), n_classes, **params)
        intercept = bool(published.get("intercept", True))
        n_features, n_classes = int(published["n_features"]), len(published.get("classes") or ())
        n_members = int(published.get("members", 1)) if self.self_tuning else 1
        members = [
            self._member(n_features, n_classes, intercept=intercept) for _ in range(n_members)
        ]
        return SelfTuning(members) if self.self_tuning else members[0]

    def servable(self, published: Mapping[str, Any], weights: np.ndarray) -> Model:
        """A model that predicts with a published spec and weights vector (the model's
        part of it: no pipeline statistics), as published: non-finite weights, which the
        trainer never publishes, give non-finite scores, which the predictor refuses."""
        model = self.unfitted(published)
        model.set_weights_vector(weights, finite=False)
        return model


MODEL_TYPES: dict[str, ModelType] = {
    t.name: t
    for t in (
        ModelType("logistic", linear.LogisticRegression, "binary"),
        ModelType("softmax", linear.SoftmaxRegression, "multiclass"),
        ModelType("linear", linear.LinearRegression, "regression"),
        ModelType("auto_logistic", linear.LogisticRegression, "binary", self_tuning=True),
        ModelType("auto_softmax", linear.SoftmaxRegression, "multiclass", self_tuning=True),
        ModelType("auto_linear", linear.LinearRegression, "regression", self_tuning=True),
        ModelType("hoeffding_tree", trees.HoeffdingTreeClassifier, "multiclass"),
        ModelType("random_forest", trees.RandomForestClassifier, "multiclass"),
        ModelType(
            "hoeffding_tree_regressor", regression_trees.HoeffdingTreeRegressor, "regression"
        ),
        ModelType("contextual_bandit", bandits.ContextualBandit, "bandit"),
    )
}


#: The tree model classes (:attr:`ModelType.tree`).
TREE_CLASSES = (
    trees.HoeffdingTreeClassifier,
    trees.RandomForestClassifier,
    regression_trees.HoeffdingTreeRegressor,
)


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


def n_weights(published: Mapping[str, Any]) -> int:
    """Length of the weights vector a published spec describes: the model's, then its
    pipeline's statistics (when it has one).

    >>> n_weights({"type": "logistic", "n_features": 2, "intercept": True})
    3
    """
    size = model_type(published.get("type")).unfitted(published).weights_vector().size
    config = published.get("pipeline")
    if config is None:
        return int(size)
    return int(size) + pipeline.statistics_size(int(published["n_features"]), config)


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
    if parts is None:
        return model
    if kind.bandit:
        return FeedbackPipeline(parts[0], model)
    return Pipeline(parts[0], model, parts[1])
