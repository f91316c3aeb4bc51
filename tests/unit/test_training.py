import numpy as np
import pytest

from flowlearn import codec
from flowlearn.training import ModelTrainer

SPEC = {"type": "logistic", "n_features": 3, "learning_rate": 0.1}


def batch(seed, n=16):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return X, (X @ np.array([1.0, -2.0, 0.5]) > 0).astype(float)


def replay(weights, mv):
    codec.apply_delta(weights, codec.decode_delta(mv.delta))
    return weights


def test_versions_count_up_and_deltas_rebuild_the_weights():
    t = ModelTrainer.create("m", SPEC)
    replica = np.zeros(4)
    for i in range(5):
        mv = t.train_batch(*batch(i)).version
        assert (mv.version, mv.base_version, mv.samples_applied) == (i + 1, i, 16 * (i + 1))
        replay(replica, mv)
        assert replica.tobytes() == t.model.weights_vector().tobytes()


def test_first_version_after_restore_carries_a_snapshot():
    t = ModelTrainer.create("m", SPEC)
    t.train_batch(*batch(0))
    restored = ModelTrainer.restore("m", SPEC, t.state_bytes(), t.version, t.samples_applied)
    mv = restored.train_batch(*batch(1)).version
    assert mv.weights is not None and mv.version == 2


def test_training_is_deterministic_across_restore():
    a = ModelTrainer.create("m", SPEC)
    b = ModelTrainer.create("m", SPEC)
    a.train_batch(*batch(0))
    b.train_batch(*batch(0))
    b = ModelTrainer.restore("m", SPEC, b.state_bytes(), b.version, b.samples_applied)
    a.train_batch(*batch(1))
    b.train_batch(*batch(1))
    assert a.model.weights_vector().tobytes() == b.model.weights_vector().tobytes()


def test_rollback_makes_a_new_version_with_the_old_weights_bit_for_bit():
    t = ModelTrainer.create("m", SPEC)
    t.train_batch(*batch(0))
    v1 = t.model.weights_vector()
    t.train_batch(*batch(1))
    mv = t.restore_weights(v1)
    assert mv.version == 3 and mv.samples_applied == 32
    assert t.model.weights_vector().tobytes() == v1.tobytes()


def test_reset_and_learning_rate():
    t = ModelTrainer.create("m", SPEC)
    t.train_batch(*batch(0))
    mv = t.reset()
    assert mv.version == 2 and not t.model.weights_vector().any()
    t.set_learning_rate(0.5)
    with pytest.raises(ValueError, match="positive"):
        t.set_learning_rate(float("nan"))


def test_a_batch_with_non_finite_input_is_rejected_and_changes_nothing():
    t = ModelTrainer.create("m", SPEC)
    t.train_batch(*batch(0))
    before = t.model.weights_vector()
    X, y = batch(1)
    X[0, 0] = np.inf
    result = t.train_batch(X, y)
    assert result.version is None and result.rejected
    assert t.version == 1 and t.model.weights_vector().tobytes() == before.tobytes()
