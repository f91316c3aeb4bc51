"""Small trained models of every scoring shape the predictor answers with, for the tests of
registered versions as MLflow models (unit and integration)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from flowlearn.core.features import rows_of
from flowlearn.core.training import build_model, published_spec
from flowlearn.serving.app import _labels
from flowlearn.serving.scoring import scorer, served_rows

NAMES = ["age", "income", "tenure"]

#: name -> the spec of a small model: every scoring shape the predictor answers with.
SPECS: dict[str, dict[str, Any]] = {
    "linear-named": {"type": "linear", "n_features": 3, "feature_names": NAMES},
    "logistic-labels": {
        "type": "logistic",
        "n_features": 3,
        "feature_names": NAMES,
        "class_names": ["stays", "churns"],
    },
    "softmax-labels": {
        "type": "softmax",
        "n_features": 3,
        "n_classes": 3,
        "feature_names": NAMES,
        "class_names": ["low", "mid", "high"],
    },
    "forest-labels": {
        "type": "random_forest",
        "n_features": 3,
        "n_classes": 2,
        "n_trees": 3,
        "grace_period": 20,
        "feature_names": NAMES,
        "class_names": ["no", "yes"],
    },
    "tree-regressor": {"type": "hoeffding_tree_regressor", "n_features": 3, "grace_period": 20},
    "logistic-hashed": {"type": "logistic", "n_features": 16, "features": "hashed"},
}


class Trained:
    """A model of one of :data:`SPECS` after learning 400 samples: its published spec and
    weights, and instances of its features as a client would send them."""

    def __init__(self, name: str) -> None:
        spec = SPECS[name]
        rng = np.random.default_rng(7)
        X = rng.normal(scale=2.0, size=(400, 3))
        hashed = spec.get("features") == "hashed"
        if hashed:
            self.instances: list[Any] = [
                {"amount": float(x[0]), "tenure": float(x[1]), "plan": f"p{int(x[2] > 0)}"}
                for x in X
            ]
        elif spec.get("feature_names"):
            self.instances = [dict(zip(NAMES, map(float, x), strict=True)) for x in X]
        else:
            self.instances = X.tolist()
        model = build_model(spec)
        self.spec_json = published_spec(model, spec)
        self.spec = json.loads(self.spec_json)
        features = rows_of(self.instances, self.spec)  # as the job reads them
        score = X @ np.array([1.0, -2.0, 0.5])
        if spec["type"] in ("linear", "hoeffding_tree_regressor"):
            y: np.ndarray = score
        elif spec.get("n_classes", 2) == 3:
            y = np.digitize(score, [-1.0, 1.0])
        else:
            y = (score > 0).astype(np.int64)
        for s in range(0, len(y), 50):
            model.learn_many(features[s : s + 50], y[s : s + 50])
        self.weights = model.weights_vector()
        if hashed:  # some instances lack a feature, as records may
            del self.instances[0]["tenure"]

    def predictor_answer(self, instances: list[Any]) -> tuple[np.ndarray, list[str] | None]:
        """What the predictor computes for these instances: its scores and labels."""
        scores = scorer(self.spec, self.weights)(served_rows(instances, self.spec))
        return scores, _labels(self.spec, scores).get("labels")
