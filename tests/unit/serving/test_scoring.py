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
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['type']}-{s['intercept']}")
def test_scores_equal_the_core_models_bit_for_bit(spec):
    rng = np.random.default_rng(0)
    weights = rng.normal(scale=3, size=n_weights(spec))
    X = rng.normal(scale=5, size=(50, 4))
    X[0] = 1e3  # saturated probabilities too
    model = model_types.from_spec(spec, weights)
    expected = model.predict_many(X) if spec["type"] == "linear" else model.predict_proba_many(X)
    got = scorer(spec, weights)(X)
    assert got.dtype == np.float64 and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


def test_the_scorer_reads_the_weights_without_copying_them():
    weights = np.zeros(3)
    score = scorer(SPECS[0] | {"n_features": 2}, weights)
    weights[2] = 100.0  # never happens to a served version (its weights are read-only)
    assert score(np.zeros((1, 2)))[0] == 1.0


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="unknown model type 'tree'"):
        scorer({"type": "tree", "n_features": 1}, np.zeros(1))
    with pytest.raises(ValueError, match="needs 5 weights"):
        scorer(SPECS[0], np.zeros(4))
