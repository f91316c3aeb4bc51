"""Self-tuning models (flowlearn.core.ensemble): members at several learning rates, mixed by
their discounted prequential loss; trained, saved, restored, published and served like any
model."""

import json

import numpy as np
import pytest

from flowlearn.core import codec, linear, model_types, optim
from flowlearn.core.control import apply_command
from flowlearn.core.ensemble import DEFAULT_RATE_FACTORS, HALF_LIFE, SelfTuning
from flowlearn.core.spec import ModelSpec, SpecError, default_learning_rate
from flowlearn.core.training import ModelTrainer


def stream(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    X = rng.normal(size=(n, 3))
    return X, ((X @ np.array([1.0, -2.0, 0.5]) + shift) > 0).astype(float)


def members(*rates: float) -> list[linear.Model]:
    return [linear.LogisticRegression(3, optimizer=optim.SGD(lr)) for lr in rates]


def test_the_mixture_follows_the_member_that_predicts_better():
    rng = np.random.default_rng(0)
    model = SelfTuning(members(1e-4, 1.0))
    for _ in range(40):
        model.learn_many(*stream(rng, 64))
    slow, fast = model.mixture_weights
    assert fast > 0.99 and slow < 0.01 and model.mixture_weights.sum() == pytest.approx(1.0)
    X, y = stream(rng, 500)
    p_fast = model.members[1].predict_proba_many(X)
    # It predicts as the mixture of its members' probabilities, by these weights.
    mixed = slow * model.members[0].predict_proba_many(X) + fast * p_fast
    assert model.predict_proba_many(X) == pytest.approx(mixed, abs=1e-15)
    assert np.mean(model.predict_many(X) == y) > 0.9


def test_old_evidence_is_forgotten_so_another_member_can_take_over():
    """Discounted losses: after a long stretch where the slow member predicts better, it
    leads again, however far behind the fast one's early lead left it."""
    # Without an intercept, zero features score 0 whatever the rate: both members see the
    # same losses from here, and only forgetting acts on the past.
    alike = [
        linear.LogisticRegression(3, optimizer=optim.SGD(lr), intercept=False) for lr in (0.01, 1.0)
    ]
    model = SelfTuning(alike, half_life=50)
    model.losses = np.array([1000.0, 0.0])  # the fast member far ahead once
    for _ in range(20):
        model.learn_many(np.zeros((64, 3)), np.ones(64))
    assert model.losses[0] - model.losses[1] < 1e-4  # 1000 * 0.5 ** (1280 / 50)
    assert model.mixture_weights[0] == pytest.approx(0.5, abs=1e-4)


def test_a_regressor_mixes_predictions():
    rng = np.random.default_rng(1)
    model = SelfTuning(
        [linear.LinearRegression(2, optimizer=optim.SGD(lr)) for lr in (0.01, 0.1, 0.3)]
    )
    for _ in range(50):
        X = rng.normal(size=(32, 2))
        model.learn_many(X, X @ np.array([2.0, -1.0]))
    X = rng.normal(size=(10, 2))
    expected = sum(
        a * m.predict_many(X) for a, m in zip(model.mixture_weights, model.members, strict=True)
    )
    assert model.predict_many(X) == pytest.approx(expected, abs=1e-12)
    assert np.abs(model.predict_many(X) - X @ np.array([2.0, -1.0])).max() < 0.1
    with pytest.raises(ValueError, match="no probabilities"):
        model.predict_proba_many(X)


def test_members_must_be_alike():
    with pytest.raises(ValueError, match="one type and shape"):
        SelfTuning([linear.LogisticRegression(3), linear.LogisticRegression(4)])
    with pytest.raises(ValueError, match="at least one member"):
        SelfTuning([])


# ---------------------------------------------------------------------------- as a model type


@pytest.mark.parametrize("kind", ["auto_logistic", "auto_softmax", "auto_linear"])
def test_a_self_tuning_spec_trains_members_around_the_default_rate(kind):
    spec = ModelSpec(type=kind, n_features=3, n_classes=3, batch_size=64).as_dict()
    t = ModelTrainer.create("m", spec)
    default = default_learning_rate(kind, "sgd")
    assert t.model.model.learning_rates == [default * f for f in DEFAULT_RATE_FACTORS]
    published = json.loads(t._published_spec)
    assert published["type"] == kind and published["members"] == len(DEFAULT_RATE_FACTORS)
    chosen = ModelTrainer.create("m", {**spec, "learning_rates": [0.1, 0.2]})
    assert chosen.model.model.learning_rates == [0.1, 0.2]
    assert chosen.model.model.half_life == HALF_LIFE


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "logistic", "learning_rates": (0.1,)}, "only a self-tuning type"),
        ({"type": "auto_logistic", "learning_rates": (0.1, 0.0)}, "must all be > 0"),
    ],
)
def test_learning_rates_are_checked(fields, message):
    with pytest.raises(SpecError, match=message):
        ModelSpec(n_features=3, **fields).validate("models.m")


def test_state_restores_exactly_and_training_goes_on_identically():
    rng = np.random.default_rng(2)
    spec = ModelSpec(type="auto_logistic", n_features=3, batch_size=16, holdout_size=32).as_dict()
    t = ModelTrainer.create("m", spec)
    batches = [stream(rng, 16) for _ in range(12)]
    for X, y in batches[:6]:
        t.train_batch(X, y)
    restored = ModelTrainer.restore("m", spec, t.state_bytes(), t.version, t.samples_applied)
    for X, y in batches[6:]:
        a, b = t.train_batch(X, y), restored.train_batch(X, y)
        assert a.version is not None and b.version is not None
        assert a.version.delta == b.version.delta
    assert restored.model.weights_vector().tobytes() == t.model.weights_vector().tobytes()
    assert restored.model.model.losses.tobytes() == t.model.model.losses.tobytes()


def test_rollback_restores_the_members_and_their_mixture():
    rng = np.random.default_rng(3)
    t = ModelTrainer.create("m", {"type": "auto_logistic", "n_features": 3})
    t.train_batch(*stream(rng, 64))
    kept = t.model.weights_vector()
    kept_mix = t.model.model.mixture_weights.copy()
    for _ in range(5):
        t.train_batch(*stream(rng, 64, shift=2.0))
    mv = t.restore_weights(kept)
    assert t.model.weights_vector().tobytes() == kept.tobytes()
    assert t.model.model.mixture_weights.tolist() == kept_mix.tolist()
    replica = kept.copy()
    codec.apply_delta(replica, codec.decode_delta(mv.delta))
    assert replica.tobytes() == kept.tobytes()


def test_a_learning_rate_command_is_refused_with_the_reason():
    t = ModelTrainer.create("m", {"type": "auto_logistic", "n_features": 3})
    outcome = apply_command(t, "set_learning_rate", {"learning_rate": 0.3}, "test", None, None)
    assert not outcome.ok
    assert "weighs its own learning rates" in outcome.detail["reason"]


def test_served_model_from_the_published_version_mixes_as_the_trainer():
    rng = np.random.default_rng(4)
    t = ModelTrainer.create("m", {"type": "auto_softmax", "n_features": 3, "n_classes": 3})
    for _ in range(10):
        X = rng.normal(size=(64, 3))
        t.train_batch(X, np.digitize(X[:, 0], [-0.5, 0.5]).astype(float))
    served = model_types.from_spec(json.loads(t._published_spec), t.model.weights_vector())
    X = rng.normal(size=(100, 3))
    assert served.predict_proba_many(X).tobytes() == t.model.predict_proba_many(X).tobytes()
