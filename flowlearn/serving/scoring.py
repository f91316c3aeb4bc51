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

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from flowlearn.core.model_types import from_spec, model_type, n_weights

#: ``X (n, d) float64 -> scores``: the probability of class 1 ``(n,)`` for a binary model,
#: the classes' probabilities ``(n, k)`` for a multiclass one, predictions ``(n,)`` for a
#: regressor.
Scorer = Callable[[np.ndarray], np.ndarray]


def scorer(spec: Mapping[str, Any], weights: np.ndarray) -> Scorer:
    """The scoring function of one version (the model holds a copy of ``weights``).

    Raises ValueError for an unknown model type or a weights vector of the wrong length.
    """
    kind = model_type(spec.get("type"))
    if weights.shape != (n_weights(spec),):
        raise ValueError(f"spec needs {n_weights(spec)} weights, got shape {weights.shape}")
    model: Any = from_spec(spec, weights)
    return model.predict_proba_many if kind.classifier else model.predict_many
