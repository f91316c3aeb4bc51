"""Our linear models reach River's prequential accuracy on the same small streams."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from river import datasets, linear_model
from river import preprocessing as river_pre
from river.datasets import synth

from flowlearn.core import linear, metrics, optim
from flowlearn.core.pipeline import FeatureTransform, Pipeline


def materialise(dataset, n):
    pairs = list(itertools.islice(dataset, n))
    keys = list(pairs[0][0])
    X = np.array([[float(x[k]) for k in keys] for x, _ in pairs])
    y = np.array([int(bool(t)) for _, t in pairs])
    return X, y, [dict(zip(keys, row, strict=True)) for row in X.tolist()]


def river_accuracy(dicts, y) -> float:
    model = river_pre.StandardScaler() | linear_model.LogisticRegression()
    hits = 0
    for x, t in zip(dicts, y.tolist(), strict=True):
        hits += model.predict_one(x) == bool(t)
        model.learn_one(x, bool(t))
    return hits / len(y)


def our_accuracy(X, y, batch=32) -> float:
    d = X.shape[1]
    ev = metrics.Prequential(
        Pipeline(FeatureTransform(d), linear.LogisticRegression(d, optimizer=optim.SGD(lr=0.64))),
        [metrics.Accuracy()],
    )
    for s in range(0, len(y), batch):
        ev.step(X[s : s + batch], y[s : s + batch])
    return ev.get()["Accuracy"]


@pytest.mark.parametrize(
    "name,dataset",
    [
        (
            "hyperplane",
            lambda: synth.Hyperplane(
                seed=42, n_features=10, n_drift_features=4, mag_change=0.001, noise_percentage=0.05
            ),
        ),
        (
            "sea-abrupt",
            lambda: itertools.chain(
                itertools.islice(synth.SEA(variant=0, seed=1), 1500), synth.SEA(variant=2, seed=2)
            ),
        ),
        ("phishing", datasets.Phishing),
    ],
)
def test_prequential_accuracy_reaches_river(name, dataset):
    X, y, dicts = materialise(dataset(), 3000)
    assert our_accuracy(X, y) >= river_accuracy(dicts, y) - 0.005
