"""The feature pipeline (flowlearn.core.pipeline) in the trainer and the predictor: the served
transform and scores equal the trainer's bit for bit, statistics come from training data only,
missing values follow the declared policy, and a spec that names a new feature keeps the model.
"""

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowlearn.core import codec, linear, model_types
from flowlearn.core.features import FeatureError, vectorize
from flowlearn.core.pipeline import FeatureTransform, Pipeline, TargetScaler
from flowlearn.core.spec import ModelSpec, SpecError
from flowlearn.core.training import ModelTrainer
from flowlearn.serving.scoring import n_weights, scorer

NAMES = ("age", "income", "tenure", "score")


def named_rows(rng: np.random.Generator, n: int, names=NAMES, p_missing=0.2) -> list[dict]:
    rows = []
    for _ in range(n):
        row = {}
        for i, name in enumerate(names):
            u = rng.random()
            if u < p_missing / 2:
                continue  # absent
            row[name] = None if u < p_missing else float(rng.normal(10.0 * i, 1.0 + i))
        rows.append(row)
    return rows


def labels(kind: str, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    z = np.nan_to_num(X) @ np.linspace(-1.0, 1.0, X.shape[1])
    kind = kind.removeprefix("auto_")
    if kind == "logistic":
        return (z > np.median(z)).astype(float)
    if kind == "softmax":
        return np.digitize(z, np.quantile(z, [1 / 3, 2 / 3])).astype(float)
    return 3.0 * z + 100.0 + rng.normal(size=len(z))


def replay_versions(trainer: ModelTrainer, batches) -> np.ndarray:
    """What a predictor holds after following every version's delta from the start."""
    replica = np.zeros(trainer.model.weights_vector().size)
    for X, y in batches:
        mv = trainer.train_batch(X, y).version
        assert mv is not None
        codec.apply_delta(replica, codec.decode_delta(mv.delta))
    return replica


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(
        ["logistic", "softmax", "linear", "auto_logistic", "auto_softmax", "auto_linear"]
    ),
    clip=st.sampled_from([0.0, 2.5]),
    defaults=st.sampled_from([{}, {"income": 55.0}]),
    p_missing=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_served_scores_equal_the_trainers_bit_for_bit(kind, clip, defaults, p_missing, seed):
    rng = np.random.default_rng(seed)
    spec = ModelSpec(
        type=kind,
        n_features=len(NAMES),
        n_classes=3,
        feature_names=NAMES,
        feature_defaults=defaults,
        clip=clip,
    ).as_dict()
    trainer = ModelTrainer.create("m", spec)
    batches = []
    for _ in range(4):
        X = vectorize(named_rows(rng, 32, p_missing=p_missing), spec)
        batches.append((X, labels(kind, X, rng)))
    replica = replay_versions(trainer, batches)
    assert replica.tobytes() == trainer.model.weights_vector().tobytes()
    published = json.loads(trainer._published_spec)
    assert n_weights(published) == replica.size
    requests = named_rows(rng, 16, p_missing=0.3)
    X_served = vectorize(requests, published)
    X_trained = vectorize(requests, spec)
    assert np.array_equal(X_served, X_trained, equal_nan=True)
    served = scorer(published, replica)(X_served)
    model = trainer.model
    expected = model.predict_many(X_trained) if kind.endswith("linear") else None
    if expected is None:
        expected = model.predict_proba_many(X_trained)
    assert served.tobytes() == expected.tobytes()
    rebuilt = model_types.from_spec(published, replica)
    assert rebuilt.predict_many(X_served).tobytes() == model.predict_many(X_trained).tobytes()


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 20), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_statistics_are_those_of_the_observed_training_values(sizes, seed):
    rng = np.random.default_rng(seed)
    t = FeatureTransform(3)
    seen = []
    for n in sizes:
        X = rng.normal(5.0, 3.0, size=(n, 3))
        X[rng.random(size=X.shape) < 0.25] = np.nan
        t.learn_many(X)
        seen.append(X)
    everything = np.concatenate(seen)
    observed = (~np.isnan(everything)).sum(axis=0)
    assert t.count.tolist() == observed.tolist()
    assert t.missing.tolist() == (len(everything) - observed).tolist()
    has = observed > 0
    for col in np.flatnonzero(has):
        values = everything[~np.isnan(everything[:, col]), col]
        assert t.mean[col] == pytest.approx(values.mean(), rel=1e-9, abs=1e-12)
        assert t.var[col] == pytest.approx(values.var(), rel=1e-9, abs=1e-12)
    assert (t.count[~has] == 0).all() and (t.mean[~has] == 0).all()


def test_statistics_stay_accurate_for_large_offsets():
    """Chan's pairwise update, not E[x^2] - E[x]^2, which cancels at 1e9 (variance 1)."""
    rng = np.random.default_rng(0)
    X = 1e9 + rng.normal(size=(10_000, 1))
    t = FeatureTransform(1)
    for s in range(0, 10_000, 64):
        t.learn_many(X[s : s + 64])
    assert t.var[0] == pytest.approx(X.var(), rel=1e-6)
    Z = t.transform_many(X[:5])
    assert Z[:, 0] == pytest.approx((X[:5, 0] - X.mean()) / X.std(), abs=1e-6)


def test_missing_values_take_the_default_else_the_running_mean():
    t = FeatureTransform(2, defaults={1: 7.0}).learn_many(np.array([[1.0, 2.0], [3.0, 6.0]]))
    Z = t.transform_many(np.array([[np.nan, np.nan]]))
    assert Z[0, 0] == 0.0  # the mean, standardised
    assert Z[0, 1] == (7.0 - 4.0) / 2.0
    unscaled = FeatureTransform(2, scale="none").learn_many(np.array([[1.0, 2.0], [3.0, 6.0]]))
    assert unscaled.transform_many(np.array([[np.nan, 5.0]])).tolist() == [[2.0, 5.0]]


def test_clipping_bounds_scaled_values_and_constant_columns_map_to_zero():
    t = FeatureTransform(2, clip=3.0).learn_many(np.array([[0.0, 1.0], [2.0, 1.0]]))
    assert t.transform_many(np.array([[100.0, 5.0], [-100.0, 1.0]])).tolist() == [
        [3.0, 0.0],
        [-3.0, 0.0],
    ]


def test_rms_scaling_keeps_hashed_columns_sparse_and_one_hot_columns_as_they_are():
    t = FeatureTransform(2, scale="rms")
    t.learn_many(np.array([[1.0, 30.0], [0.0, 40.0], [-1.0, 0.0]]))
    Z = t.transform_many(np.array([[1.0, 0.0], [0.0, 50.0]]))
    assert Z[0].tolist() == [1.0, 0.0] and Z[1, 0] == 0.0
    assert Z[1, 1] == pytest.approx(50.0 / math.sqrt((30.0**2 + 40.0**2) / 2))


def test_a_regression_target_is_learnt_standardised_and_predicted_in_its_units():
    rng = np.random.default_rng(0)
    t = ModelTrainer.create("m", {"type": "linear", "n_features": 2})
    assert isinstance(t.model.target, TargetScaler)
    for _ in range(30):
        X = rng.normal(size=(64, 2))
        t.train_batch(X, 1000.0 + 50.0 * X[:, 0])
    X = rng.normal(size=(200, 2))
    assert np.mean(np.abs(t.model.predict_many(X) - (1000.0 + 50.0 * X[:, 0]))) < 5.0
    y = 1000.0 + 50.0 * X[:, 0]
    assert t.model.loss_many(X, y).tolist() == ((t.model.predict_many(X) - y) ** 2).tolist()
    assert ModelTrainer.create("m", {"type": "logistic", "n_features": 2}).model.target is None


def test_the_default_spec_learns_unscaled_features_quickly():
    """The measured gap of the issue: unscaled features, default spec (0.77 before)."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=5)
    scale = np.array([1.0, 100.0, 0.01, 1000.0, 5.0])
    offset = np.array([0.0, 500.0, 3.0, -2000.0, 50.0])
    t = ModelTrainer.create("m", {"type": "logistic", "n_features": 5})

    def draw(n):
        Z = rng.normal(size=(n, 5))
        return Z * scale + offset, (Z @ w > 0).astype(float)

    for _ in range(100):
        t.train_batch(*draw(64))
    X, y = draw(2000)
    assert np.mean(t.model.predict_many(X) == y) > 0.95


@pytest.mark.parametrize("kind", ["logistic", "softmax", "linear", "random_forest"])
def test_the_test_step_scores_as_loss_many_and_predict_many(kind):
    # The trainer's test step transforms a batch once: the same bits as the two calls,
    # missing values and a scaled target included.
    rng = np.random.default_rng(5)
    rows = named_rows(rng, 300)
    X = np.array([[math.nan if row.get(n) is None else row[n] for n in NAMES] for row in rows])
    y = labels(kind if kind != "random_forest" else "softmax", X, rng)
    spec = {"type": kind, "n_features": 4, "n_classes": 3, "batch_size": 64}
    trainer = ModelTrainer.create("m", spec)
    trainer.train_samples(X[:200], y[:200])
    model = trainer.model
    losses, predicted = model.test_many(X[200:], y[200:])
    assert losses.tobytes() == model.loss_many(X[200:], y[200:]).tobytes()
    assert predicted is not None
    assert predicted.tobytes() == model.predict_many(X[200:]).tobytes()
    assert model.test_many(X[200:], y[200:], predict=False)[1] is None


def test_statistics_learn_from_training_data_only_not_from_scoring():
    t = ModelTrainer.create("m", {"type": "logistic", "n_features": 2})
    t.train_batch(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.0, 1.0]))
    before = t.model.weights_vector()
    t.model.predict_proba_many(np.array([[100.0, 100.0]]))
    t.model.loss_many(np.array([[100.0, 100.0]]), np.array([1.0]))
    assert t.model.weights_vector().tobytes() == before.tobytes()


def test_a_rollback_restores_the_statistics_with_the_weights():
    t = ModelTrainer.create("m", {"type": "logistic", "n_features": 2})
    rng = np.random.default_rng(2)
    t.train_batch(rng.normal(size=(32, 2)), rng.integers(0, 2, 32).astype(float))
    kept, kept_mean = t.model.weights_vector(), t.model.features.mean
    t.train_batch(rng.normal(50.0, 9.0, size=(32, 2)), rng.integers(0, 2, 32).astype(float))
    assert t.model.features.count.tolist() == [64.0, 64.0]
    t.restore_weights(kept)
    assert t.model.weights_vector().tobytes() == kept.tobytes()
    assert t.model.features.count.tolist() == [32.0, 32.0]
    assert t.model.features.mean.tolist() == kept_mean.tolist()


# ---------------------------------------------------------------------------- spec changes


def trained(names, seed=3, kind="logistic"):
    spec = ModelSpec(type=kind, n_features=len(names), feature_names=names).as_dict()
    t = ModelTrainer.create("m", spec)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        X = vectorize(named_rows(rng, 32, names, p_missing=0.0), spec)
        t.train_batch(X, labels("logistic", X, rng))
    return t, spec


@pytest.mark.parametrize("kind", ["logistic", "auto_logistic"])
def test_a_new_feature_name_keeps_the_model_and_starts_the_feature_empty(kind):
    t, spec = trained(("age", "income"), kind=kind)
    grown = ModelSpec(
        type=kind, n_features=3, feature_names=("income", "city_size", "age")
    ).as_dict()
    restored = ModelTrainer.restore("m", grown, t.state_bytes(), t.version, t.samples_applied)
    assert restored.version == t.version and restored.model.n_features == 3
    requests = [{"age": 31.0, "income": 12.0}, {"age": 50.0, "income": 3.0, "city_size": 9.0}]
    before = t.model.predict_proba_many(vectorize(requests, spec))
    after = restored.model.predict_proba_many(vectorize(requests, grown))
    assert after.tobytes() == before.tobytes()  # a new feature weighs nothing yet
    assert restored.model.features.count.tolist()[1] == 0.0
    # ...and it learns from there, holdout and optimizer included.
    rng = np.random.default_rng(4)
    X = vectorize(named_rows(rng, 32, ("income", "city_size", "age"), p_missing=0.0), grown)
    assert restored.train_batch(X, labels("logistic", X, rng)).version.version == t.version + 1


def test_a_state_from_before_the_pipeline_keeps_its_raw_features():
    legacy = linear.LogisticRegression(2)
    legacy.learn_many(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1, 0]))
    state = codec.encode_state(*legacy.state_dict())
    t = ModelTrainer.restore("m", {"type": "logistic", "n_features": 2}, state, 1, 2)
    assert t.model.features.scale == "none"
    X = np.array([[3.0, -1.0]])
    assert t.model.predict_proba_many(X).tobytes() == legacy.predict_proba_many(X).tobytes()
    assert json.loads(t._published_spec)["pipeline"]["scale"] == "none"
    t.reset()  # adopts the spec's pipeline
    assert json.loads(t._published_spec)["pipeline"]["scale"] == "standard"


# ---------------------------------------------------------------------------- bad input


DENSE_NAMED = {"features": "dense", "n_features": 2, "feature_names": ["a", "b"]}


def test_unknown_names_are_counted_and_ignored():
    heard = []
    X = vectorize(
        [{"a": 1.0, "zz": 2.0, "b": True}], DENSE_NAMED | {"missing": "impute"}, heard.append
    )
    assert heard == ["zz"] and X.tolist() == [[1.0, 1.0]]


@pytest.mark.parametrize(
    ("row", "policy", "message"),
    [
        ({"a": "Paris", "b": 1.0}, "impute", "features.a: expected a number, got str"),
        ({"a": 1.0}, "dlq", "features.b: missing"),
        ({"a": float("inf"), "b": 1.0}, "impute", "features.a: not a finite number (inf)"),
        ([1.0, None], "dlq", "features[1]: missing (null)"),
    ],
)
def test_bad_named_features_are_errors_naming_the_feature(row, policy, message):
    with pytest.raises(FeatureError, match=re.escape(message)):
        vectorize([row], DENSE_NAMED | {"missing": policy})


def test_nan_and_null_are_missing_values_under_the_impute_policy():
    X = vectorize([[float("nan"), None], {"a": None}], DENSE_NAMED | {"missing": "impute"})
    assert np.isnan(X).all()


def test_a_map_needs_the_models_feature_names():
    with pytest.raises(FeatureError, match="needs the model's feature_names"):
        vectorize([{"a": 1.0}], {"features": "dense", "n_features": 1})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n_features": 3, "feature_names": ("a", "b")}, "2 names for n_features = 3"),
        ({"n_features": 2, "feature_names": ("a", "a")}, "must be unique"),
        ({"n_features": 2, "feature_defaults": {"zz": 1.0}}, "'zz' is not a feature"),
        ({"clip": -1.0}, "clip: must be a finite number >= 0"),
        ({"target_scale": "standard"}, "only a regression model scales its target"),
        ({"learning_rate": -0.1}, "learning_rate: must be > 0"),
    ],
)
def test_bad_pipeline_specs_name_the_field(fields, message):
    with pytest.raises(SpecError, match=message):
        ModelSpec(**fields).validate("models.m")


def test_pipeline_refuses_a_model_of_another_width():
    with pytest.raises(ValueError, match="cannot feed a model of 3 features"):
        Pipeline(FeatureTransform(2), linear.LogisticRegression(3))


# ---------------------------------------------------------------------------- class names


def test_labels_may_be_class_names_which_the_published_spec_keeps_in_order():
    from flowlearn.contracts.records import RecordError, parse_sample

    spec = ModelSpec(type="softmax", n_classes=3, n_features=1, class_names=("cat", "dog", "owl"))
    spec.validate("models.m")

    def spec_for(model_id):
        return spec.as_dict()

    raw = b'{"model_id": "m", "ts": 1, "features": [0.5], "label": "owl"}'
    assert parse_sample(raw, spec_for).label == 2.0
    assert parse_sample(raw.replace(b'"owl"', b"1"), spec_for).label == 1.0
    with pytest.raises(RecordError, match=r"'emu' is not one of the classes"):
        parse_sample(raw.replace(b"owl", b"emu"), spec_for)
    t = ModelTrainer.create("m", spec.as_dict())
    assert json.loads(t._published_spec)["class_names"] == ["cat", "dog", "owl"]


def test_class_names_must_match_the_classes():
    with pytest.raises(SpecError, match="3 unique names needed"):
        ModelSpec(type="softmax", n_classes=3, class_names=("a", "b")).validate("m")
    with pytest.raises(SpecError, match="a linear model has no classes"):
        ModelSpec(type="linear", class_names=("a", "b")).validate("m")


# ---------------------------------------------------------------------------- explanations


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(["logistic", "softmax", "linear"]),
    seed=st.integers(0, 2**16),
    clip=st.sampled_from([0.0, 1.5]),
)
def test_contributions_add_up_to_the_served_score(kind, seed, clip):
    """Each feature's share plus the base is the raw score the predictor serves: through
    missing-value filling, scaling, clipping and the target's scale."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, 3)) * [1.0, 10.0, 100.0] + [0.0, 5.0, -50.0]
    y = rng.integers(0, 3 if kind == "softmax" else 2, size=200).astype(np.float64)
    if kind == "linear":
        y = 1000.0 + X @ [3.0, -0.2, 0.01] + rng.normal(size=200)
    spec = {"type": kind, "n_features": 3, "batch_size": 32, "pipeline": {"clip": clip}}
    if kind == "softmax":
        spec["n_classes"] = 3
    trainer = ModelTrainer.create("m", spec)
    trainer.train_samples(X, y)
    published = json.loads(trainer.published_spec)
    served = model_types.from_spec(published, trainer.model.weights_vector())
    probe = X[:20].copy()
    probe[0, 1] = np.nan  # filled like a missing value
    c = served.contributions_many(probe)
    k = 3 if kind == "softmax" else 1
    assert c.per_feature.shape == (20, 3, k) and c.base.shape == (k,)
    raw = c.per_feature.sum(axis=1) + c.base
    if kind == "logistic":
        np.testing.assert_allclose(linear.sigmoid(raw[:, 0]), served.predict_proba_many(probe))
    elif kind == "softmax":
        np.testing.assert_allclose(linear.softmax(raw), served.predict_proba_many(probe))
    else:
        np.testing.assert_allclose(raw[:, 0], served.predict_many(probe), rtol=1e-12)


def test_only_linear_models_explain():
    from flowlearn.serving.scoring import explainer

    spec = {"type": "hoeffding_tree", "n_features": 2, "n_classes": 2, "batch_size": 8}
    trainer = ModelTrainer.create("m", spec)
    published = json.loads(trainer.published_spec)
    with pytest.raises(ValueError, match="not a sum of per-feature shares"):
        explainer(published, trainer.model.weights_vector())
