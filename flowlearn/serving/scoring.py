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

from flowlearn.core.model_types import model_type

#: ``X (n, d) float64 -> scores``: ``(n,)`` for logistic and linear, ``(n, k)`` for softmax.
Scorer = Callable[[np.ndarray], np.ndarray]


def n_weights(spec: Mapping[str, Any]) -> int:
    """Length of the weights vector a spec describes: coef then the intercept(s)."""
    k = model_type(spec.get("type")).n_outputs(spec)
    return int(spec["n_features"]) * k + (k if spec.get("intercept", True) else 0)


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
    bias = weights[d * k :] if spec.get("intercept", True) else None

    def linear(X: np.ndarray) -> np.ndarray:
        z = X @ coef
        if bias is not None:
            z += bias
        return z

    # The link functions are the training core's own, so scores are bit-identical to it.
    link = kind.link
    if link is None:
        return linear

    def score(X: np.ndarray) -> np.ndarray:
        return link(linear(X))

    return score
