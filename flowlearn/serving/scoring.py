"""Scoring a published weights vector: one small vectorised function per model type.

This is the predictor's hot path, so it does no validation (the features were checked by
:func:`flowlearn.core.features.vectorize`, the weights' length when the version was built) and
keeps views into the read-only weights instead of copying them. The arithmetic is the
training core's (``flowlearn.core.linear``) operation for operation, in float64, so a prediction
here is bit-identical to ``model_types.from_spec(spec, weights).predict_proba_many(X)``;
``tests/unit/serving/test_scoring.py`` holds that equality.

>>> import numpy as np
>>> score = scorer({"type": "logistic", "n_features": 2, "intercept": True},
...                np.array([1.0, -1.0, 0.0]))
>>> score(np.array([[0.0, 0.0]])).tolist()
[0.5]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from flowlearn.core.model_types import model_type, n_model_weights, pipeline_of
from flowlearn.core.pipeline import statistics_size

#: ``X (n, d) float64 -> scores``: ``(n,)`` for logistic and linear, ``(n, k)`` for softmax.
Scorer = Callable[[np.ndarray], np.ndarray]


def n_weights(spec: Mapping[str, Any]) -> int:
    """Length of the weights vector a spec describes: coef, the intercept(s), then the
    feature pipeline's statistics (:mod:`flowlearn.core.pipeline`) when it has one."""
    k = model_type(spec.get("type")).n_outputs(spec)
    d = int(spec["n_features"])
    config = spec.get("pipeline")
    statistics = 0 if config is None else statistics_size(d, config)
    return d * k + (k if spec.get("intercept", True) else 0) + statistics


def scorer(spec: Mapping[str, Any], weights: np.ndarray) -> Scorer:
    """The scoring function of one version (closes over views of ``weights``).

    Raises ValueError for an unknown model type or a weights vector of the wrong length.
    """
    kind = model_type(spec.get("type"))
    if weights.shape != (n_weights(spec),):
        raise ValueError(f"spec needs {n_weights(spec)} weights, got shape {weights.shape}")
    d = int(spec["n_features"])
    k = kind.n_outputs(spec)
    coef = weights[: d * k].reshape((d, k) if kind.multiclass else (d,))
    bias = weights[d * k : n_model_weights(spec, weights)] if spec.get("intercept", True) else None
    # The pipeline is the training core's own object: the same transform, bit for bit.
    parts = pipeline_of(spec, weights)
    transform = None if parts is None else parts[0].transform_many
    target = None if parts is None else parts[1]

    def linear(X: np.ndarray) -> np.ndarray:
        if transform is not None:
            X = transform(X)
        z = X @ coef
        if bias is not None:
            z += bias
        return z

    # The link functions are the training core's own, so scores are bit-identical to it.
    link = kind.link
    if link is None:
        if target is not None:
            inverse = target.inverse
            return lambda X: inverse(linear(X))
        return linear

    def score(X: np.ndarray) -> np.ndarray:
        return link(linear(X))

    return score
