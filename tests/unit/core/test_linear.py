from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flowlearn.core import linear, model_types, optim


def numeric_grad(model, X, y, eps=1e-6):
    """Central differences of the mean loss (plus the L2 term) over the flat weights."""
    w0 = model.weights_vector()
    g = np.zeros_like(w0)
    for i in range(w0.size):
        for sign in (1, -1):
            w = w0.copy()
            w[i] += sign * eps
            model.set_weights_vector(w)
            coef = model.coef.ravel()
            g[i] += sign * (model.loss_many(X, y).mean() + 0.5 * model.l2 * coef @ coef)
    model.set_weights_vector(w0)
    return g / (2 * eps)


@pytest.mark.parametrize(
    "model,y",
    [
        (linear.LogisticRegression(3, l2=0.1), np.array([1, 0, 1, 1, 0])),
        (linear.SoftmaxRegression(3, 4, l2=0.1), np.array([0, 3, 1, 2, 2])),
        (linear.LinearRegression(3, l2=0.1), np.array([0.5, -1.0, 2.0, 0.0, 3.0])),
    ],
)
def test_gradient_step_matches_finite_differences(model, y):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 3))
    model.set_weights_vector(rng.normal(size=model.weights_vector().size))
    expected = numeric_grad(model, X, y)
    w0 = model.weights_vector()
    model.optimizer = optim.SGD(lr=1.0)
    model.learn_many(X, y)
    np.testing.assert_allclose(w0 - model.weights_vector(), expected, rtol=1e-5, atol=1e-7)
    assert model.last_grad_norm == pytest.approx(np.linalg.norm(expected), rel=1e-5)


def test_weights_vector_layout_is_coef_c_order_then_intercepts():
    model = linear.SoftmaxRegression(2, 3)
    v = np.arange(9.0)
    model.set_weights_vector(v)
    assert model.coef.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert model.intercept_.tolist() == [6.0, 7.0, 8.0]
    assert model.spec() == {
        "type": "softmax",
        "n_features": 2,
        "classes": [0, 1, 2],
        "intercept": True,
    }
    z = np.array([[1.0, 1.0]]) @ model.coef + model.intercept_
    np.testing.assert_allclose(model.predict_proba_many([[1.0, 1.0]]), np.exp(z) / np.exp(z).sum())


def test_spec_of_each_model():
    assert linear.LogisticRegression(3).spec() == {
        "type": "logistic",
        "n_features": 3,
        "classes": [0, 1],
        "intercept": True,
    }
    assert linear.LinearRegression(3, intercept=False).spec() == {
        "type": "linear",
        "n_features": 3,
        "classes": None,
        "intercept": False,
    }
    assert linear.LinearRegression(3, intercept=False).weights_vector().shape == (3,)


def test_logistic_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 5))
    y = (X @ np.array([2.0, -1.0, 0.0, 0.5, 1.0]) + 0.5 > 0).astype(int)
    model = linear.LogisticRegression(5, optimizer=optim.Adam(lr=0.1))
    for _ in range(3):
        for start in range(0, 2000, 64):
            model.learn_many(X[start : start + 64], y[start : start + 64])
    assert (model.predict_many(X) == y).mean() > 0.95
    loss = model.loss_many(X, y)
    p = model.predict_proba_many(X)
    np.testing.assert_allclose(loss, -np.log(np.where(y == 1, p, 1 - p)), rtol=1e-9, atol=1e-12)


def test_softmax_and_regression_learn():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 3))
    y = np.argmax(X @ rng.normal(size=(3, 4)), axis=1)
    soft = linear.SoftmaxRegression(3, 4, optimizer=optim.AdaGrad(lr=0.5))
    reg = linear.LinearRegression(3, optimizer=optim.SGD(lr=0.05, momentum=0.5))
    t = X @ np.array([1.0, 2.0, -3.0]) + 4.0
    for s in range(0, 3000, 50):
        soft.learn_many(X[s : s + 50], y[s : s + 50])
        reg.learn_many(X[s : s + 50], t[s : s + 50])
    assert (soft.predict_many(X) == y).mean() > 0.9
    np.testing.assert_allclose(soft.predict_proba_many(X).sum(axis=1), 1.0)
    np.testing.assert_allclose(reg.coef, [1.0, 2.0, -3.0], atol=0.05)
    np.testing.assert_allclose(reg.intercept_, [4.0], atol=0.05)


def test_l1_gives_exact_zeros_on_noise_features():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(4000, 6))
    y = (X[:, 0] - X[:, 1] > 0).astype(int)
    for opt in (optim.SGD(lr=0.2), optim.AdaGrad(lr=0.2), optim.FTRL(alpha=0.2, l1=2.0, l2=0.0)):
        # FTRL's own l1 acts on summed gradients, hence its larger scale.
        model = linear.LogisticRegression(6, optimizer=opt, l1=0.1)
        for s in range(0, 4000, 64):
            model.learn_many(X[s : s + 64], y[s : s + 64])
        # Proximal steps leave the noise features at (almost always exactly) zero.
        assert np.count_nonzero(model.coef[2:]) <= 1, type(opt).__name__
        assert np.all(np.abs(model.coef[2:]) < 0.01)
        assert np.all(np.abs(model.coef[:2]) > 0.1)


def test_clip_grad_norm_bounds_the_step_and_reports_the_raw_norm():
    model = linear.LinearRegression(2, optimizer=optim.SGD(lr=1.0), clip_grad_norm=0.5)
    model.learn_many(np.array([[10.0, 0.0]]), np.array([100.0]))
    assert np.linalg.norm(model.weights_vector()) == pytest.approx(0.5)
    assert model.last_grad_norm == pytest.approx(np.hypot(2000.0, 200.0))


def test_labels_are_validated():
    with pytest.raises(ValueError, match=r"class labels in 0\.\.1"):
        linear.LogisticRegression(1).learn_many([[1.0]], [2])
    with pytest.raises(ValueError, match=r"class labels in 0\.\.2"):
        linear.SoftmaxRegression(1, 3).learn_many([[1.0]], [1.5])
    with pytest.raises(ValueError):
        linear.LogisticRegression(1).learn_many([[1.0]], ["a"])
    # Floats and bools holding 0/1 are fine.
    linear.LogisticRegression(1).learn_many([[1.0], [2.0]], np.array([True, False]))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError):
        linear.LogisticRegression(0)
    with pytest.raises(ValueError):
        linear.LogisticRegression(2, l2=-1.0)
    with pytest.raises(ValueError):
        linear.SoftmaxRegression(2, 1)
    with pytest.raises(ValueError):
        linear.LogisticRegression(2, clip_grad_norm=0.0)


def test_from_spec_validates():
    with pytest.raises(ValueError, match="unknown model type"):
        model_types.from_spec({"type": "tree", "n_features": 2}, np.zeros(3))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        model_types.from_spec({"type": "logistic", "n_features": 2}, np.zeros(4))
    # A version is served as published: a NaN weight (never published by the trainer, whose
    # gate refuses it) gives a NaN score, which the predictor refuses per request.
    served = model_types.from_spec(
        {"type": "logistic", "n_features": 2}, np.array([0.0, np.nan, 0.0])
    )
    assert np.isnan(served.predict_proba_many(np.ones((1, 2)))).all()
    with pytest.raises(ValueError, match="NaN or infinity"):
        linear.LogisticRegression(2).set_weights_vector(np.array([0.0, np.nan, 0.0]))


def test_huge_inputs_are_rejected_before_corrupting_weights():
    model = linear.LinearRegression(1)
    with pytest.raises(ValueError, match="not finite"):
        model.learn_many([[1e200]], [1e200])
    assert np.all(model.weights_vector() == 0)


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(
        np.float64, st.tuples(st.integers(0, 20), st.just(3)), elements=st.floats(-1e3, 1e3)
    ),
    st.integers(0, 2**32 - 1),
)
def test_logistic_outputs_are_sane_and_batching_of_predictions_is_irrelevant(X, seed):
    rng = np.random.default_rng(seed)
    model = linear.LogisticRegression(3, optimizer=optim.SGD(lr=0.1), clip_grad_norm=10.0)
    y = rng.integers(0, 2, len(X))
    model.learn_many(X, y)
    assert np.all(np.isfinite(model.weights_vector()))
    p = model.predict_proba_many(X)
    assert np.all((p >= 0) & (p <= 1))
    assert np.all(model.loss_many(X, y) >= 0)
    for i in range(len(X)):
        assert model.predict_proba_many(X[i : i + 1])[0] == pytest.approx(
            p[i], rel=1e-12, abs=1e-15
        )
