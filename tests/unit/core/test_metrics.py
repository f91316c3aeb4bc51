from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from flowlearn.core import linear, metrics, optim
from flowlearn.core.pipeline import FeatureTransform, Pipeline


@pytest.fixture
def binary():
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.4).astype(float)
    p = np.clip(0.35 * y + 0.65 * rng.random(500), 0, 1)
    return y, p


def feed(metric, y, p, batch=37):
    for s in range(0, len(y), batch):
        metric.update_many(y[s : s + batch], p[s : s + batch])
    return metric.get()


def test_classification_metrics_match_sklearn(binary):
    y, p = binary
    yhat = (p > 0.5).astype(float)
    assert feed(metrics.Accuracy(), y, yhat) == pytest.approx(skm.accuracy_score(y, yhat))
    assert feed(metrics.LogLoss(), y, p) == pytest.approx(skm.log_loss(y, p))
    assert feed(metrics.Precision(), y, yhat) == pytest.approx(skm.precision_score(y, yhat))
    assert feed(metrics.Recall(), y, yhat) == pytest.approx(skm.recall_score(y, yhat))
    assert feed(metrics.F1(), y, yhat) == pytest.approx(skm.f1_score(y, yhat))
    assert feed(metrics.ROCAUC(), y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=2e-3)
    # With scores on the bin grid, the binned AUC is exact (ties counted as halves).
    q = np.round(p * 10) / 10 - 1e-9
    assert feed(metrics.ROCAUC(n_bins=10), y, np.clip(q, 0, 1)) == pytest.approx(
        skm.roc_auc_score(y, np.floor(np.clip(q, 0, 1) * 10))
    )


def test_multiclass_log_loss_and_ece():
    rng = np.random.default_rng(1)
    P = rng.dirichlet(np.ones(3), size=200)
    y = rng.integers(0, 3, 200).astype(float)
    assert feed(metrics.LogLoss(), y, P) == pytest.approx(skm.log_loss(y, P, labels=[0, 1, 2]))
    conf, pred = P.max(axis=1), P.argmax(axis=1)
    bins = np.minimum((conf * 10).astype(int), 9)
    expected = (
        sum(
            abs((pred[bins == b] == y[bins == b]).mean() - conf[bins == b].mean())
            * (bins == b).sum()
            for b in range(10)
            if (bins == b).any()
        )
        / 200
    )
    assert feed(metrics.ExpectedCalibrationError(), y, P) == pytest.approx(expected)


def test_calibrated_predictions_have_small_ece():
    rng = np.random.default_rng(2)
    p = rng.random(20_000)
    y = (rng.random(20_000) < p).astype(float)
    assert feed(metrics.ExpectedCalibrationError(), y, p, batch=1000) < 0.02
    assert feed(metrics.ExpectedCalibrationError(), y, np.clip(p + 0.3, 0, 1), 1000) > 0.1


def test_regression_metrics_match_sklearn():
    rng = np.random.default_rng(3)
    y = rng.normal(size=300) * 5 + 2
    yhat = y + rng.normal(size=300)
    assert feed(metrics.MAE(), y, yhat) == pytest.approx(skm.mean_absolute_error(y, yhat))
    assert feed(metrics.RMSE(), y, yhat) == pytest.approx(np.sqrt(skm.mean_squared_error(y, yhat)))
    assert feed(metrics.R2(), y, yhat) == pytest.approx(skm.r2_score(y, yhat))


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 30),
    st.lists(st.integers(0, 25), min_size=1, max_size=8),
    st.integers(0, 2**32 - 1),
)
def test_window_equals_cumulative_on_the_last_window(window, sizes, seed):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    y = (rng.random(n) < 0.5).astype(float)
    p = rng.random(n)
    for make in (metrics.LogLoss, metrics.MAE, metrics.ROCAUC):
        windowed = make(window_size=window)
        start = 0
        for size in sizes:
            windowed.update_many(y[start : start + size], p[start : start + size])
            start += size
        tail = make().update_many(y[-window:], p[-window:]) if n else make()
        got, want = windowed.get(), tail.get()
        assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want)


def test_undefined_values_are_nan():
    assert np.isnan(metrics.ROCAUC().update_many([1, 1], [0.2, 0.9]).get())
    assert np.isnan(metrics.Precision().update_many([1, 0], [0, 0]).get())
    assert np.isnan(metrics.R2().update_many([2, 2], [1, 3]).get())
    assert metrics.Accuracy(window_size=3).name == "Accuracy@3"
    with pytest.raises(ValueError):
        metrics.Accuracy(window_size=0)


def test_prequential_tests_before_training():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(640, 3)) * 10 + 5
    y = (X[:, 0] > 5).astype(int)
    model = Pipeline(FeatureTransform(3), linear.LogisticRegression(3, optimizer=optim.SGD(0.5)))
    ev = metrics.Prequential(model, [metrics.Accuracy(), metrics.LogLoss(window_size=64)])
    ev.step(X[:64], y[:64])
    # First batch scored by the untrained model: log loss exactly log 2.
    assert ev.get()["LogLoss@64"] == pytest.approx(np.log(2))
    for s in range(64, 640, 64):
        ev.step(X[s : s + 64], y[s : s + 64])
    result = ev.get()
    assert ev.n_seen == 640 and result["Accuracy"] > 0.85 and result["LogLoss@64"] < 0.5
    assert ev.step(np.empty((0, 3)), np.empty(0)).n_seen == 640
    with pytest.raises(ValueError, match="unique"):
        metrics.Prequential(model, [metrics.MAE(), metrics.MAE()])
