"""Factories shared by the learning-core tests: one fitted-able instance of every component."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from flowlearn.core import (
    bandits,
    drift,
    linear,
    metrics,
    optim,
    preprocessing,
    regression_trees,
    trees,
)
from flowlearn.core.pipeline import FeatureTransform

D = 4

#: name -> (factory, a function making a batch of inputs for it from a Generator)
ESTIMATORS: dict[str, Callable[[], Any]] = {
    "logistic-sgd": lambda: linear.LogisticRegression(D, optimizer=optim.SGD(lr=0.1)),
    "logistic-momentum-l1": lambda: linear.LogisticRegression(
        D, optimizer=optim.SGD(lr=optim.InverseScaling(0.2), momentum=0.9, nesterov=True), l1=0.01
    ),
    "logistic-adagrad-l2": lambda: linear.LogisticRegression(
        D, optimizer=optim.AdaGrad(lr=0.1), l2=0.01, clip_grad_norm=1.0
    ),
    "logistic-adam-noint": lambda: linear.LogisticRegression(
        D, optimizer=optim.Adam(lr=0.05), intercept=False
    ),
    "logistic-ftrl": lambda: linear.LogisticRegression(
        D, optimizer=optim.FTRL(alpha=0.1, l1=0.01), l1=0.001
    ),
    "softmax": lambda: linear.SoftmaxRegression(D, 3, optimizer=optim.Adam(lr=0.05)),
    "linear": lambda: linear.LinearRegression(
        D, optimizer=optim.SGD(lr=optim.ExponentialDecay(0.05, 0.99)), l2=0.001
    ),
    "hoeffding-tree": lambda: trees.HoeffdingTreeClassifier(D, 2, grace_period=20, max_nodes=31),
    "random-forest": lambda: trees.RandomForestClassifier(
        D, 2, n_trees=3, grace_period=10, max_nodes=31, seed=1
    ),
    "hoeffding-tree-regressor": lambda: regression_trees.HoeffdingTreeRegressor(
        D, grace_period=20, max_nodes=31
    ),
    "contextual-bandit": lambda: bandits.ContextualBandit(D, n_actions=3),
    "contextual-bandit-adf": lambda: bandits.ContextualBandit(
        D, n_action_features=2, policy="linucb", noise_variance=0.5
    ),
}
#: The estimators whose target is a number.
REGRESSORS = ("linear", "hoeffding-tree-regressor")
#: The estimators that learn from bandit feedback: a batch is ``(contexts, actions,
#: rewards, propensities)``, the actions indices or (``-adf``) the chosen actions' features.
BANDITS = ("contextual-bandit", "contextual-bandit-adf")


def learn(model: Any, X: np.ndarray, y: np.ndarray, batch: int = 64) -> Any:
    """``model`` after learning ``X, y`` in batches of ``batch``, in order."""
    for s in range(0, len(y), batch):
        model.learn_many(X[s : s + batch], y[s : s + batch])
    return model


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def make_batch(name: str, rng: np.random.Generator, n: int = 32) -> tuple[np.ndarray, ...]:
    """``(X, y)``, or for a bandit ``(X, actions, rewards, propensities)``: the label-like
    part is always the second item."""
    X = rng.normal(size=(n, D))
    score = X @ np.array([1.0, -2.0, 0.5, 0.0])
    if name in BANDITS:
        actions: np.ndarray = rng.integers(0, 3, size=n)
        if name.endswith("-adf"):
            actions = rng.normal(size=(n, 2))
        rewards = (score + 0.3 * rng.normal(size=n) > 0).astype(np.float64)
        return X, actions, rewards, np.full(n, 1 / 3)
    if name == "softmax":
        y = np.digitize(score, [-1.0, 1.0]).astype(np.int64)
    elif name in REGRESSORS:
        y = score + 0.1 * rng.normal(size=n)
    else:
        y = (score + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    return X, y


DETECTORS: dict[str, Callable[[], drift.DriftDetector]] = {
    "adwin": lambda: drift.ADWIN(clock=8),
    "page-hinkley": lambda: drift.PageHinkley(threshold=5.0),
    "ddm": lambda: drift.DDM(),
    "psi": lambda: drift.PSI(reference_size=50, window_size=50, clock=5),
    "ks": lambda: drift.KS(reference_size=50, window_size=50, clock=5),
}


def detector_stream(rng: np.random.Generator, n: int = 600) -> np.ndarray:
    """0/1 values whose rate jumps from 0.1 to 0.7 halfway: every detector fires on it."""
    rate = np.where(np.arange(n) < n // 2, 0.1, 0.7)
    return (rng.random(n) < rate).astype(np.float64)


METRICS: dict[str, Callable[[], metrics.Metric]] = {
    "accuracy": metrics.Accuracy,
    "accuracy@50": lambda: metrics.Accuracy(window_size=50),
    "logloss": metrics.LogLoss,
    "logloss@50": lambda: metrics.LogLoss(window_size=50),
    "rocauc": metrics.ROCAUC,
    "rocauc@50": lambda: metrics.ROCAUC(window_size=50, n_bins=100),
    "ece": metrics.ExpectedCalibrationError,
    "precision": metrics.Precision,
    "recall@50": lambda: metrics.Recall(window_size=50),
    "f1": metrics.F1,
    "mae": metrics.MAE,
    "rmse@50": lambda: metrics.RMSE(window_size=50),
    "r2": metrics.R2,
}


def metric_batch(metric: metrics.Metric, rng: np.random.Generator, n: int = 40):
    y = (rng.random(n) < 0.5).astype(np.float64)
    p = np.clip(0.6 * y + 0.4 * rng.random(n), 0.0, 1.0)
    if metric.requires_proba:
        return y, p
    if isinstance(metric, metrics.MAE | metrics.RMSE | metrics.R2):
        return y * 3.0, y * 3.0 + rng.normal(size=n)
    return y, (p > 0.5).astype(np.float64)


OTHERS: dict[str, Callable[[], Any]] = {
    "feature transform": lambda: FeatureTransform(16, defaults={2: 1.5}, clip=3.0),
    "hasher": lambda: preprocessing.FeatureHasher(16, seed=3, defaults={"x": 1.0}),
}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
