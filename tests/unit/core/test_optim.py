from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowlearn.core import linear, optim

OPTIMIZERS = {
    "sgd": lambda: optim.SGD(lr=0.1),
    "momentum": lambda: optim.SGD(lr=0.05, momentum=0.9),
    "nesterov": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "inverse-scaling": lambda: optim.SGD(lr=optim.InverseScaling(0.5, power=0.25)),
    "adagrad": lambda: optim.AdaGrad(lr=0.5),
    "adam": lambda: optim.Adam(lr=0.1),
    "ftrl": lambda: optim.FTRL(alpha=0.5, l2=0.0),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_minimises_a_quadratic(name):
    target = np.array([1.0, -2.0, 3.0])
    opt, w = OPTIMIZERS[name](), np.zeros(3)
    for _ in range(500):
        opt.step(w, w - target)
    np.testing.assert_allclose(w, target, atol=0.05)
    assert opt.n_iterations == 500


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_round_trip_and_size_check(name):
    opt, w = OPTIMIZERS[name](), np.zeros(2)
    opt.step(w, np.array([1.0, -1.0]))
    restored = linear.from_bytes(linear.to_bytes(opt))
    w2 = w.copy()
    for _ in range(3):
        opt.step(w, np.array([0.5, 2.0]))
        restored.step(w2, np.array([0.5, 2.0]))
    assert w.tobytes() == w2.tobytes()
    with pytest.raises(ValueError, match="updates 2 parameters"):
        opt.step(np.zeros(3), np.zeros(3))


def test_adam_first_step_is_lr_times_sign():
    w = np.zeros(2)
    optim.Adam(lr=0.01).step(w, np.array([3.0, -0.2]))
    np.testing.assert_allclose(w, [-0.01, 0.01], rtol=1e-5)


def test_adagrad_first_step_is_lr_times_sign():
    w = np.zeros(2)
    optim.AdaGrad(lr=0.1).step(w, np.array([4.0, -0.5]))
    np.testing.assert_allclose(w, [-0.1, 0.1], rtol=1e-6)


def test_ftrl_closed_form_and_l1_sparsity():
    opt, w = optim.FTRL(alpha=1.0, beta=1.0, l1=1.0, l2=0.0), np.zeros(2)
    opt.step(w, np.array([0.5, 3.0]))
    # |z| = 0.5 <= l1 -> 0; z = 3 -> -(3 - 1) / ((1 + 3) / 1)
    np.testing.assert_allclose(w, [0.0, -0.5])


def test_schedules():
    assert optim.Constant(0.3)(100) == 0.3
    assert optim.InverseScaling(1.0, power=1.0)(3) == 0.25
    assert optim.ExponentialDecay(1.0, 0.5)(2) == 0.25
    opt = optim.SGD(lr=optim.InverseScaling(1.0, power=1.0))
    opt.step(np.zeros(1), np.zeros(1))
    assert opt.learning_rate == 0.5
    opt.set_learning_rate(0.2)
    assert opt.learning_rate == 0.2 and opt.n_iterations == 1


def test_bad_hyperparameters():
    for make in (
        lambda: optim.SGD(lr=-1.0),
        lambda: optim.SGD(momentum=1.0),
        lambda: optim.SGD(nesterov=True),
        lambda: optim.Adam(beta1=1.0),
        lambda: optim.FTRL(alpha=0.0),
        lambda: optim.SGD(lr=float("nan")),
    ):
        with pytest.raises(ValueError):
            make()
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.optimizer_from_params({"class": "Nope", "params": {}})


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=1, max_size=8), st.floats(0.0, 5.0))
def test_soft_threshold_never_flips_a_sign(values, l1):
    w = np.array(values)
    before = w.copy()
    optim.SGD(lr=1.0).step(w, np.zeros_like(w), l1)
    assert np.all(np.abs(w) <= np.abs(before))
    assert np.all(w * before >= 0)


@pytest.mark.parametrize("l1", [0.0, 0.01])
def test_an_ftrl_rollback_is_not_undone_by_the_next_step(l1):
    """#23: FTRL's weights are a function of its (z, n); weights set from outside used to be
    replaced by the old ones at the next step. After set_weights_vector a step with a zero
    gradient now keeps the adopted weights, and training goes on from them."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = (X @ np.array([1.0, -2.0, 0.5]) > 0).astype(float)
    model = linear.LogisticRegression(3, optimizer=optim.FTRL(alpha=0.5, l1=0.1), l1=l1)
    model.learn_many(X[:100], y[:100])
    old = model.weights_vector()
    model.learn_many(X[100:], 1.0 - y[100:])  # a poisoned stretch moves it far away
    assert not np.allclose(model.weights_vector(), old, atol=1e-3)
    model.set_weights_vector(old)
    w = model._w.copy()
    model.optimizer.step(w, np.zeros_like(w), model._l1)
    np.testing.assert_allclose(w, old, rtol=1e-12, atol=1e-15)
    assert (w == 0.0).sum() == (old == 0.0).sum()
    model.learn_many(X[:10], y[:10])
    assert np.abs(model.weights_vector() - old).max() < 0.5
