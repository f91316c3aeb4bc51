"""Tree models through the trainer: spec, versions, exact deltas, served scores, rollback
and restore, as every model type goes through them (flowlearn.core.trees holds the
algorithm's own tests)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flowlearn.core import codec
from flowlearn.core.model_types import from_spec, model_type, n_weights
from flowlearn.core.spec import ModelSpec, SpecError, pipeline_scale, target_scaled
from flowlearn.core.training import ModelTrainer, batch_plan

SPECS = {
    "hoeffding_tree": {"type": "hoeffding_tree", "n_features": 4, "n_classes": 3, "batch_size": 64},
    "random_forest": {
        "type": "random_forest",
        "n_features": 4,
        "n_classes": 3,
        "n_trees": 3,
        "max_nodes": 63,
        "batch_size": 64,
    },
    "hoeffding_tree_regressor": {
        "type": "hoeffding_tree_regressor",
        "n_features": 4,
        "grace_period": 50,
        "batch_size": 64,
    },
}


def scores(name, model, X):
    """What the predictor serves: probabilities of a classifier, values of a regressor."""
    return model.predict_proba_many(X) if model_type(name).classifier else model.predict_many(X)


def hits(model, X, y):
    """The share of samples predicted right: the class, or a value within 0.5 of the
    target (the regression stream's levels are 1 apart)."""
    p = model.predict_many(X)
    return np.mean(np.abs(p - y) < 0.5)


def stream(n: int, seed: int = 0, flip_at: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Three classes cut by thresholds on two of four features (a concept a linear model
    cannot draw), the labels swapped after ``flip_at`` (a regressor learns them as levels
    0, 1, 2)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, 4))
    y = np.where(X[:, 0] > 0.3, 2, np.where(X[:, 1] > 0.0, 1, 0)).astype(np.float64)
    if flip_at is not None:
        y[flip_at:] = (y[flip_at:] + 1) % 3
    return X, y


@pytest.mark.parametrize("name", SPECS)
def test_versions_deltas_and_served_scores_are_the_trainers_bit_for_bit(name):
    trainer = ModelTrainer.create("m", SPECS[name])
    X, y = stream(3000)
    published = None
    weights = np.zeros(0)
    for mv in (r.version for r in trainer.train_samples(X, y)):
        assert mv is not None
        published = json.loads(mv.spec_json)
        if mv.weights is not None:
            weights = codec.decode_array(mv.weights)
        else:
            codec.apply_delta(weights, codec.decode_delta(mv.delta))
    assert published is not None
    assert weights.shape == (n_weights(published),)
    assert weights.tobytes() == trainer.model.weights_vector().tobytes()
    served = from_spec(published, weights)
    probe = stream(500, seed=1)[0]
    assert scores(name, served, probe).tobytes() == scores(name, trainer.model, probe).tobytes()
    # It learnt the thresholds a linear model cannot.
    X_test, y_test = stream(2000, seed=2)
    assert hits(served, X_test, y_test) > 0.9


@pytest.mark.parametrize("name", SPECS)
def test_rollback_restores_an_old_version_exactly_and_training_goes_on(name):
    trainer = ModelTrainer.create("m", SPECS[name])
    X, y = stream(4000, flip_at=2000)
    trainer.train_samples(X[:1000], y[:1000])
    old = trainer.model.weights_vector()
    trainer.train_samples(X[1000:3000], y[1000:3000])
    assert old.tobytes() != trainer.model.weights_vector().tobytes()
    mv = trainer.restore_weights(old)
    assert trainer.model.weights_vector().tobytes() == old.tobytes()
    assert mv.version == trainer.version
    results = trainer.train_samples(X[3000:], y[3000:])
    assert all(r.version is not None for r in results)
    # The restored forest learns the new concept from where it was.
    X_test, y_test = stream(1000, seed=3, flip_at=0)
    assert hits(trainer.model, X_test, y_test) > 0.6


@pytest.mark.parametrize("name", SPECS)
def test_a_restored_trainer_continues_bit_for_bit(name):
    X, y = stream(3000)
    straight = ModelTrainer.create("m", SPECS[name])
    straight.train_samples(X, y)
    # Stopped at a batch boundary (the job checkpoints between batches).
    cut = int(np.cumsum(batch_plan(len(y), 64))[20])
    first = ModelTrainer.create("m", SPECS[name])
    first.train_samples(X[:cut], y[:cut])
    resumed = ModelTrainer.restore(
        "m", SPECS[name], first.state_bytes(), first.version, first.samples_applied
    )
    resumed.train_samples(X[cut:], y[cut:])
    assert resumed.model.weights_vector().tobytes() == straight.model.weights_vector().tobytes()
    assert resumed.version == straight.version


def test_trees_take_their_features_unscaled_unless_told():
    assert pipeline_scale({"type": "random_forest", "scale": "auto"}) == "none"
    assert pipeline_scale({"type": "hoeffding_tree_regressor", "scale": "auto"}) == "none"
    assert not target_scaled({"type": "hoeffding_tree_regressor", "target_scale": "auto"})
    assert target_scaled({"type": "linear", "target_scale": "auto"})
    assert pipeline_scale({"type": "random_forest", "scale": "standard"}) == "standard"
    assert pipeline_scale({"type": "logistic", "scale": "auto"}) == "standard"


def test_tree_parameters_reach_the_model_and_its_published_spec():
    spec = {
        **SPECS["random_forest"],
        "grace_period": 25,
        "max_depth": 5,
        "max_features": 2,
        "leaf_prediction": "mc",
    }
    trainer = ModelTrainer.create("m", spec)
    published = json.loads(trainer.published_spec)
    assert published["n_trees"] == 3
    assert published["grace_period"] == 25
    assert published["max_depth"] == 5
    assert published["max_features"] == 2
    assert published["leaf_prediction"] == "mc"
    assert (
        json.loads(ModelTrainer.create("m", SPECS["random_forest"]).published_spec)[
            "leaf_prediction"
        ]
        == "nba"
    )
    assert published["classes"] == [0, 1, 2]
    assert model_type("random_forest").unfitted(published).weights_vector().size == len(
        trainer.model.model.weights_vector()
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "random_forest", "learning_rate": 0.1}, "m.learning_rate: a random_forest"),
        ({"type": "hoeffding_tree", "optimizer": "adam"}, "m.optimizer: a hoeffding_tree"),
        ({"type": "logistic", "n_trees": 5}, r"m.n_trees: a logistic model \(linear\)"),
        ({"type": "hoeffding_tree", "n_trees": 5}, "m.n_trees: only a random_forest"),
        ({"type": "random_forest", "split_confidence": 1.5}, "m.split_confidence: must be in"),
        ({"type": "random_forest", "max_depth": -1}, "m.max_depth: must be >= 0"),
        ({"type": "random_forest", "max_features": 11}, "m.max_features: at most n_features"),
        ({"type": "hoeffding_tree", "poisson_lambda": 2.0}, "m.poisson_lambda: only a"),
        ({"type": "random_forest", "max_nodes": 100}, "m.max_nodes: max_nodes must be odd"),
        ({"type": "logistic", "leaf_prediction": "mc"}, "m.leaf_prediction: a logistic"),
        (
            {"type": "hoeffding_tree_regressor", "leaf_prediction": "nba"},
            "m.leaf_prediction: leaf_prediction must be one of adaptive, model, mean",
        ),
        (
            {"type": "hoeffding_tree_regressor", "target_scale": "standard"},
            "m.target_scale: a hoeffding_tree_regressor averages raw targets",
        ),
        (
            {"type": "hoeffding_tree", "features": "hashed", "n_features": 2**20},
            "m.max_features: a hoeffding_tree of 1048576 features could hold",
        ),
    ],
)
def test_a_setting_the_model_would_ignore_or_refuse_is_named(fields, message):
    with pytest.raises(SpecError, match=message):
        ModelSpec(**{"n_features": 10, **fields}).validate("m")
