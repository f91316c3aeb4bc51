"""Sparse rows (flowlearn.core.sparse): a hashed model's features are hashed, scaled, learnt
and scored without ever becoming an ``n x n_features`` matrix, to the dense path's results
(up to the order of sums), deterministically, and a row scores the same bits in any batch.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from flowlearn.core import model_types
from flowlearn.core.features import FeatureError, rows_of, vectorize
from flowlearn.core.pipeline import FeatureTransform
from flowlearn.core.preprocessing import FeatureHasher
from flowlearn.core.sparse import SparseRows, concat_rows, leading_columns, replace_rows
from flowlearn.core.training import ModelTrainer

#: The types whose spec may say ``features = "hashed"`` and that learn sparse.
LINEAR_TYPES = ("logistic", "softmax", "linear", "auto_logistic", "auto_softmax", "auto_linear")

names = st.sampled_from(["country", "device", "age", "clicks", "hour", "ref"])
values = st.one_of(
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    st.sampled_from(["fr", "de", "us", "ios", "web"]),
    st.none(),
    st.booleans(),
)
maps = st.lists(st.dictionaries(names, values, max_size=6), min_size=1, max_size=40)


def spec(kind: str, n_features: int = 64, **fields) -> dict:
    s = {"type": kind, "n_features": n_features, "features": "hashed", "batch_size": 8, **fields}
    if "softmax" in kind:
        s["n_classes"] = 3
    return s


def labels_for(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if "softmax" in kind:
        return rng.integers(0, 3, n).astype(np.float64)
    if "logistic" in kind:
        return rng.integers(0, 2, n).astype(np.float64)
    return rng.normal(5.0, 2.0, n)


# ---------------------------------------------------------------------------- the class


def test_rows_round_trip_slice_take_and_join():
    X = np.array([[0.0, 1.5, 0.0, -2.0], [0.0] * 4, [3.0, 0.0, 0.0, 0.25]])
    S = SparseRows.from_dense(X)
    assert S.shape == (3, 4) and S.nnz == 4 and S.indices.dtype == np.int32
    assert np.array_equal(S.dense(), X)
    assert np.array_equal(S[1:].dense(), X[1:])
    assert np.array_equal(S[np.array([2, 0, 2])].dense(), X[[2, 0, 2]])
    joined = concat_rows([S[:1], X[1:]])
    assert isinstance(joined, SparseRows) and np.array_equal(joined.dense(), X)
    swapped = replace_rows(S, np.array([0, 2]), SparseRows.from_dense(X[[1, 1]]))
    assert np.array_equal(swapped.dense(), X[[1, 1, 1]])
    assert np.array_equal(leading_columns(S, 2), X[:, :2])
    assert S.nbytes == 4 * 8 + 4 * 4 + 4 * 8


@pytest.mark.parametrize(
    ("offsets", "indices", "vals", "message"),
    [
        ([0, 2], [1, 1], [1.0, 2.0], "strictly increase"),
        ([0, 1], [4], [1.0], "outside"),
        ([0, 1], [0], [np.inf], "finite"),
        ([0, 3], [0, 1], [1.0, 2.0], "rise to"),
        ([1, 1], [], [], "start at 0"),
    ],
)
def test_malformed_rows_are_refused(offsets, indices, vals, message):
    with pytest.raises(ValueError, match=message):
        SparseRows(np.array(offsets), np.array(indices), np.array(vals), width=4)


def test_indices_fall_only_where_a_row_starts():
    S = SparseRows(np.array([0, 2, 4]), np.array([1, 3, 0, 2]), np.ones(4), width=4)
    assert S.dense().tolist() == [[0, 1, 0, 1], [1, 0, 1, 0]]


# ---------------------------------------------------------------------------- hashing


@settings(max_examples=100, deadline=None)
@given(maps, st.integers(0, 3))
def test_hashed_sparse_rows_are_the_dense_rows_exactly(rows, seed):
    s = {"features": "hashed", "n_features": 16, "hash_seed": seed}
    S = rows_of(rows, s)
    assert isinstance(S, SparseRows)
    assert np.array_equal(S.dense(), vectorize(rows, s))  # the same sums, in the same order


def test_a_large_model_costs_its_features_not_its_columns():
    rows = [{"country": "fr", "age": 31.0, "device": "ios"}] * 1000
    S = rows_of(rows, {"features": "hashed", "n_features": 2**18})
    # 12 bytes a feature, 8 a row (its offset); dense: 2 GiB.
    assert S.shape == (1000, 2**18) and S.nbytes == 3000 * 12 + 1001 * 8


def test_hashed_overflow_is_named_as_on_the_dense_path():
    hasher = FeatureHasher(1)
    row = {"a": 1e308, "b": 1e308, "c": 1e308}
    signs = {hasher._locate(n, None)[1] for n in row}
    s = {"features": "hashed", "n_features": 1}
    if len(signs) == 1:  # they add up in one column: beyond float64's range
        with pytest.raises(FeatureError, match="add up beyond"):
            rows_of([row], s)
        with pytest.raises(FeatureError, match="add up beyond"):
            vectorize([row], s)


# ---------------------------------------------------------------------------- the transform


@settings(max_examples=60, deadline=None)
@given(maps, st.sampled_from(["rms", "none"]), st.sampled_from([0.0, 1.5]))
def test_statistics_and_transform_match_the_dense_path(rows, scale, clip):
    s = {"features": "hashed", "n_features": 16}
    S, X = rows_of(rows, s), vectorize(rows, s)
    sparse, dense = FeatureTransform(16, scale, clip=clip), FeatureTransform(16, scale, clip=clip)
    half = len(rows) // 2
    for part in (slice(0, half), slice(half, None)):
        sparse.learn_many(S[part])
        dense.learn_many(X[part])
    assert_allclose(sparse.vector(), dense.vector(), rtol=1e-9, atol=1e-9)
    assert_allclose(sparse.transform_many(S).dense(), dense.transform_many(X), rtol=1e-9, atol=1e-9)


def test_standard_scaling_of_sparse_rows_is_refused_not_densified():
    t = FeatureTransform(4, "standard")
    with pytest.raises(ValueError, match="does not keep sparse rows sparse"):
        t.transform_many(SparseRows.from_dense(np.eye(4)))


# ---------------------------------------------------------------------------- training


def hashed_stream(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        row = {
            "country": str(rng.choice(["fr", "de", "us", "it"])),
            "age": float(rng.normal(40, 9)),
        }
        if rng.random() < 0.5:
            row["device"] = str(rng.choice(["ios", "android", "web"]))
        if rng.random() < 0.3:
            row["clicks"] = int(rng.integers(0, 20))
        out.append(row)
    return out


@pytest.mark.parametrize("kind", LINEAR_TYPES)
@pytest.mark.parametrize(
    "extra",
    [{}, {"optimizer": "adam", "l2": 0.01, "clip": 3.0}, {"optimizer": "ftrl", "l1": 0.01}],
)
def test_a_hashed_model_trains_sparse_to_the_dense_weights(kind, extra):
    rows = hashed_stream(300, seed=1)
    s = spec(kind, **extra)
    y = labels_for(kind, len(rows), seed=2)
    sparse, dense = ModelTrainer.create("m", s), ModelTrainer.create("m", s)
    sparse.train_samples(rows_of(rows, s), y)
    dense.train_samples(vectorize(rows, s), y)
    assert sparse.version == dense.version > 10
    assert_allclose(
        sparse.model.weights_vector(), dense.model.weights_vector(), rtol=1e-7, atol=1e-9
    )
    # And it predicts, sparse, as the dense model does.
    test = hashed_stream(50, seed=3)
    got = sparse.model.predict_many(rows_of(test, s))
    assert_allclose(got, dense.model.predict_many(vectorize(test, s)), rtol=1e-7, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(LINEAR_TYPES), st.lists(st.integers(1, 40), min_size=1, max_size=6))
def test_sparse_training_is_deterministic_and_independent_of_bundling(kind, bundle_sizes):
    """However the samples arrive bundled, the batches and so the bits are the same; and a
    row scores the same bits alone or in any batch (trainer and predictor agree)."""
    rows = hashed_stream(sum(bundle_sizes), seed=len(bundle_sizes))
    s = spec(kind)
    y = labels_for(kind, len(rows), seed=5)
    whole = ModelTrainer.create("m", s)
    whole.train_samples(rows_of(rows, s), y)
    bundled = ModelTrainer.create("m", s)
    parts, at = [], 0
    for size in bundle_sizes:
        parts.append(rows_of(rows[at : at + size], s))
        at += size
    bundled.train_samples(concat_rows(parts), y)
    assert np.array_equal(whole.model.weights_vector(), bundled.model.weights_vector())
    S = rows_of(rows, s)
    together = whole.model.predict_many(S)
    alone = np.array([whole.model.predict_many(S[i : i + 1])[0] for i in range(len(S))])
    assert np.array_equal(together, alone)


@pytest.mark.parametrize("kind", ["logistic", "auto_linear"])
def test_holdout_and_replay_keep_sparse_rows_through_a_restore(kind):
    s = spec(kind, holdout_size=40, replay_size=30, holdout_margin=10.0)
    rows = hashed_stream(200, seed=7)
    y = labels_for(kind, len(rows), seed=8)
    S = rows_of(rows, s)
    trainer = ModelTrainer.create("m", s)
    trainer.train_samples(S[:120], y[:120])
    assert isinstance(trainer._holdout.X, SparseRows) and isinstance(trainer._replay.X, SparseRows)
    state = trainer.state_bytes()
    restored = ModelTrainer.restore("m", s, state, trainer.version, trainer.samples_applied)
    for t in (trainer, restored):
        t.train_samples(S[120:], y[120:])
    assert np.array_equal(trainer.model.weights_vector(), restored.model.weights_vector())
    dense = ModelTrainer.create("m", s)
    dense.train_samples(vectorize(rows, s), y)
    assert dense.version == trainer.version
    assert_allclose(
        trainer.model.weights_vector(), dense.model.weights_vector(), rtol=1e-7, atol=1e-9
    )


def test_a_large_hashed_model_keeps_its_holdout_small(monkeypatch):
    def densified(self):
        raise AssertionError("a linear hashed model's rows were made dense")

    monkeypatch.setattr(SparseRows, "dense", densified)
    s = spec("logistic", n_features=2**18, holdout_size=500, replay_size=500)
    rows = hashed_stream(600, seed=9)
    trainer = ModelTrainer.create("m", s)
    trainer.train_samples(rows_of(rows, s), labels_for("logistic", 600, seed=1))
    # The weights, statistics and missing-value counts: 5 x 2**18 floats (10 MiB); the
    # 1,000 kept rows, dense, would be 2 GiB.
    assert len(trainer.state_bytes()) < 10.2 * 2**20


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "hoeffding_tree", "max_features": 8},
        {"type": "logistic", "scale": "standard"},
        {"type": "contextual_bandit", "n_actions": 2},
    ],
)
def test_models_that_need_dense_rows_get_them_batch_by_batch(fields):
    """Trees, bandits and standard scaling: sparse rows become dense one batch at a time,
    with the dense path's bits."""
    s = {"n_features": 16, "features": "hashed", "batch_size": 8, **fields}
    rows = hashed_stream(64, seed=3)
    X = vectorize(rows, s)
    y = labels_for("logistic", len(rows), seed=4)
    if fields["type"] == "contextual_bandit":  # feedback rows: context, action, propensity
        tail = np.column_stack([np.arange(len(rows)) % 2, np.full(len(rows), 0.5)])
        X = np.hstack([X, tail])
    S = SparseRows.from_dense(X)
    sparse, dense = ModelTrainer.create("m", s), ModelTrainer.create("m", s)
    sparse.train_samples(S, y)
    dense.train_samples(X, y)
    assert np.array_equal(sparse.model.weights_vector(), dense.model.weights_vector())


def test_the_served_model_scores_sparse_rows_as_the_trainer():
    s = spec("auto_softmax")
    rows = hashed_stream(100, seed=11)
    trainer = ModelTrainer.create("m", s)
    trainer.train_samples(rows_of(rows, s), labels_for("auto_softmax", 100, seed=1))
    import json

    published = json.loads(trainer.published_spec)
    served = model_types.from_spec(published, trainer.model.weights_vector())
    S = rows_of(hashed_stream(20, seed=12), published)
    assert np.array_equal(served.predict_proba_many(S), trainer.model.predict_proba_many(S))
