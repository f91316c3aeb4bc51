"""Scoring a published version: the training core's own model, rebuilt from the version's
spec and weights (:func:`flowlearn.core.model_types.from_spec`), so a prediction is the
trainer's, bit for bit, for every model type and its feature pipeline.

>>> import numpy as np
>>> score = scorer({"type": "logistic", "n_features": 2, "intercept": True},
...                np.array([1.0, -1.0, 0.0]))
>>> score(np.array([[0.0, 0.0]])).tolist()
[0.5]
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from flowlearn.core.bandits import Choice
from flowlearn.core.features import rows_of, vectorize
from flowlearn.core.linear import Contributions
from flowlearn.core.model_types import from_spec, model_type, n_weights
from flowlearn.core.sparse import INDEX_DTYPE, Rows

#: ``X (n, d) float64, or a hashed model's SparseRows -> scores``: the probability of class 1
#: ``(n,)`` for a binary model, the classes' probabilities ``(n, k)`` for a multiclass one,
#: predictions ``(n,)`` for a regressor.
Scorer = Callable[[Rows], np.ndarray]
#: ``X (n, d) float64 -> Contributions``: each feature's share of each sample's raw score.
Explainer = Callable[[np.ndarray], Contributions]

log = logging.getLogger("flowlearn.serving")


def scorer(spec: Mapping[str, Any], weights: np.ndarray) -> Scorer:
    """The scoring function of one version (the model holds a copy of ``weights``).

    Raises ValueError for an unknown model type or a weights vector of the wrong length.
    """
    return served_functions(spec, weights)[0]


class Chooser(Protocol):
    """``(contexts (n, d) float64, candidate actions (n, m, d_a) or None, seeds (n,)) ->
    Choice``: a contextual bandit's choices (:func:`flowlearn.core.bandits.choose`)."""

    def __call__(self, contexts: np.ndarray, actions: Any = None, *, seeds: Any) -> Choice: ...


def served_functions(spec: Mapping[str, Any], weights: np.ndarray) -> tuple[Scorer, Chooser | None]:
    """The scoring function of one version and, for a contextual bandit, its choosing
    function (None for a model that predicts), from one model rebuilt from the version: a
    bandit chooses with the trainer's own :func:`~flowlearn.core.bandits.choose` on the
    version's posterior, behind its feature pipeline, so a choice (and its propensity) is
    the trainer's, bit for bit, for the same seed.

    Raises ValueError for an unknown model type or a weights vector of the wrong length.
    """
    kind = model_type(spec.get("type"))
    if kind.tree:
        _tree_loops_loaded()
    model: Any = _model(spec, weights)
    score: Scorer = model.predict_proba_many if kind.classifier else model.predict_many
    choose: Chooser | None = model.choose_many if kind.bandit else None
    return score, choose


@functools.cache
def _tree_loops_loaded() -> None:
    """Load the trees' compiled loops (numba) once per process, with the first tree version
    it builds, before any request needs them: from numba's cache, a fraction of a second;
    compiled where the cache is empty (a new machine or pod), seconds."""
    from flowlearn.core import tree_kernels

    log.info("the trees' compiled loops loaded in %.1f s", tree_kernels.warm_up())


def scores_sparse(spec: Mapping[str, Any]) -> bool:
    """Whether a version scores a hashed model's sparse rows as they are (a linear type
    behind a scaling that keeps zeros zero: what the trainer learns them with), rather
    than made dense (trees, bandits, ``standard`` scaling).

    >>> scores_sparse({"type": "logistic", "features": "hashed", "pipeline": {"scale": "rms"}})
    True
    >>> scores_sparse({"type": "hoeffding_tree", "features": "hashed"})
    False
    """
    if spec.get("features", "dense") != "hashed":
        return False
    kind = model_type(spec.get("type"))
    scale = (spec.get("pipeline") or {}).get("scale")
    return not (kind.tree or kind.bandit) and scale != "standard"


def served_rows(
    rows: Sequence[Any], spec: Mapping[str, Any], on_unknown: Callable[[str], None] | None = None
) -> Rows:
    """Features as requests give them, as the version scores them: sparse rows for a
    version that scores them (:func:`scores_sparse`), as the trainer learnt them; else a
    dense matrix (:func:`flowlearn.core.features.vectorize`). FeatureError names a bad one."""
    if scores_sparse(spec):
        return rows_of(rows, spec, on_unknown)
    return vectorize(rows, spec, on_unknown)


def feature_bytes(rows: Sequence[Any], spec: Mapping[str, Any]) -> int:
    """What scoring ``rows`` (features as requests give them) allocates for their
    features: ``len(rows) x n_features`` float64 values, or, for a version that scores
    sparse rows (:func:`scores_sparse`), a 64-bit value and a 32-bit column per feature a
    row gives, and a 64-bit offset per row.

    >>> spec = {"type": "logistic", "n_features": 2**18, "features": "hashed"}
    >>> feature_bytes([{"a": 1, "b": "x"}] * 1000, spec)
    32008
    >>> feature_bytes([{"a": 1, "b": "x"}] * 1000, {**spec, "features": "dense"})
    2097152000
    """
    if scores_sparse(spec):
        given = sum(len(row) for row in rows if isinstance(row, Mapping))
        return (8 + np.dtype(INDEX_DTYPE).itemsize) * given + 8 * (len(rows) + 1)
    return len(rows) * int(spec["n_features"]) * 8


def predicted_classes(scores: np.ndarray) -> np.ndarray:
    """A classifier's scores (:data:`Scorer`) as class indices: the most probable class,
    a binary model's 1 when its probability is above 0.5.

    >>> predicted_classes(np.array([0.2, 0.7])).tolist(), predicted_classes(
    ...     np.array([[0.1, 0.6, 0.3]])).tolist()
    ([0, 1], [1])
    """
    if scores.ndim == 2:
        return scores.argmax(axis=1)
    return (scores > 0.5).astype(np.int64)


def class_labels(spec: Mapping[str, Any], scores: np.ndarray) -> list[str] | None:
    """The predicted classes by name, when the spec names them (``class_names``)."""
    names = spec.get("class_names")
    if not names:
        return None
    return [names[i] for i in predicted_classes(scores).tolist()]


def explainer(spec: Mapping[str, Any], weights: np.ndarray) -> Explainer:
    """The per-feature contributions of one version's raw scores (a linear model's: the
    logit, each class's score, or the prediction), as the trainer's model computes them.

    >>> explain = explainer({"type": "logistic", "n_features": 2, "intercept": True},
    ...                     np.array([1.0, -1.0, 0.5]))
    >>> explain(np.array([[2.0, 3.0]])).per_feature[0, :, 0].tolist()
    [2.0, -3.0]

    Raises ValueError for a model type whose score is not linear in its features.
    """
    kind = model_type(spec.get("type"))
    if not kind.explainable:
        raise ValueError(
            f"a {kind.name} model's score is not a sum of per-feature shares: "
            "explanations exist for the linear types (logistic, softmax, linear)"
        )
    model: Any = _model(spec, weights)
    explain: Explainer = model.contributions_many
    return explain


def _model(spec: Mapping[str, Any], weights: np.ndarray) -> Any:
    if weights.shape != (n_weights(spec),):
        raise ValueError(f"spec needs {n_weights(spec)} weights, got shape {weights.shape}")
    return from_spec(spec, weights)
