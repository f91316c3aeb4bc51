"""The predictor's scoring is the training core's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from flowlearn.core import model_types
from flowlearn.serving.scoring import n_weights, scorer

SPECS = [
    {"type": "logistic", "n_features": 4, "classes": [0, 1], "intercept": True},
    {"type": "logistic", "n_features": 4, "classes": [0, 1], "intercept": False},
    {"type": "softmax", "n_features": 4, "classes": [0, 1, 2], "intercept": True},
    {"type": "softmax", "n_features": 4, "classes": [0, 1, 2], "intercept": False},
    {"type": "linear", "n_features": 4, "classes": None, "intercept": True},
    {"type": "linear", "n_features": 4, "classes": None, "intercept": False},
    {"type": "auto_logistic", "n_features": 4, "classes": [0, 1], "intercept": True, "members": 3},
    {
        "type": "auto_softmax",
        "n_features": 4,
        "classes": [0, 1, 2],
        "intercept": True,
        "members": 2,
    },
    {"type": "auto_linear", "n_features": 4, "classes": None, "intercept": True, "members": 5},
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['type']}-{s['intercept']}")
def test_scores_equal_the_core_models_bit_for_bit(spec):
    rng = np.random.default_rng(0)
    weights = rng.normal(scale=3, size=n_weights(spec))
    X = rng.normal(scale=5, size=(50, 4))
    X[0] = 1e3  # saturated probabilities too
    if spec["type"].startswith("auto_"):  # mixture weights: positive, summing to 1
        k = spec["members"]
        weights[-k:] = rng.dirichlet(np.ones(k))
    model = model_types.from_spec(spec, weights)
    regression = spec["type"].endswith("linear")
    expected = model.predict_many(X) if regression else model.predict_proba_many(X)
    got = scorer(spec, weights)(X)
    assert got.dtype == np.float64 and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="unknown model type 'tree'"):
        scorer({"type": "tree", "n_features": 1}, np.zeros(1))
    with pytest.raises(ValueError, match="needs 5 weights"):
        scorer(SPECS[0], np.zeros(4))
    with pytest.raises(ValueError, match="needs 18 weights"):  # 3 members of 5, 3 mixture weights
        scorer(SPECS[6], np.zeros(15))
