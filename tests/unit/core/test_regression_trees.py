"""The Hoeffding tree regressor: parameters, the served vector's layout, determinism, cut
independence, rollbacks, column remapping, memory bounds, and River's regressor as the
reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import tree as river_tree
from river.datasets import synth
from river.tree.nodes.branch import DTBranch

from flowlearn.core import linear
from flowlearn.core.regression_trees import HoeffdingTreeRegressor

from .conftest import learn, same_bits


def friedman(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    pairs = list(itertools.islice(synth.Friedman(seed=seed), n))
    X = np.array([[float(v) for v in x.values()] for x, _ in pairs])
    return X, np.array([float(t) for _, t in pairs])


@pytest.fixture(scope="module")
def stream() -> tuple[np.ndarray, np.ndarray]:
    return friedman(4000)


def handmade() -> np.ndarray:
    """Five nodes over two features: the root splits feature 1 at 0.5, its right child
    (node 2) feature 0 at 0; leaves 1 (weight 2, mean 1), 3 (weight 1, mean 5) and 4
    (weight 4, mean 3), all around a shift of 10."""
    split = [2, 0, 1, 0, 0]
    threshold = [0.5, 0, 0.0, 0, 0]
    left = [1, 0, 3, 0, 0]
    weight = [0, 2, 0, 1, 4]
    sums = [0, -18, 0, -5, -28]
    squares = [0, 170, 0, 25, 200]
    return np.array([*split, *threshold, *left, *weight, *sums, *squares, 10.0], dtype=float)


# ----------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    "name,value",
    [
        ("grace_period", 0),
        ("split_confidence", 1.0),
        ("tie_threshold", -0.1),
        ("max_depth", -1),
        ("max_nodes", 16),
        ("max_features", 10),
        ("leaf_prediction", "nba"),
    ],
)
def test_bad_parameters_name_themselves(name, value):
    with pytest.raises(ValueError, match=name):
        HoeffdingTreeRegressor(5, **{name: value})


@pytest.mark.parametrize("leaf_prediction,per_node", [("mean", 6), ("model", 10), ("adaptive", 12)])
def test_fresh_vector_is_the_documented_layout(leaf_prediction, per_node):
    """Per node: split, threshold, left, weight, sum, sum_sq (+ coef: 3 features and the
    intercept; + err_mean, err_model), then the shift."""
    model = HoeffdingTreeRegressor(3, max_nodes=7, leaf_prediction=leaf_prediction)
    v = model.weights_vector()
    assert v.shape == (per_node * 7 + 1,) and not v.any()
    assert model.predict_many(np.zeros((2, 3))).tolist() == [0.0, 0.0]


def test_fresh_spec():
    model = HoeffdingTreeRegressor(3, max_nodes=7)
    assert model.spec() == {
        "type": "hoeffding_tree_regressor",
        "n_features": 3,
        "grace_period": 200,
        "split_confidence": 1e-7,
        "tie_threshold": 0.05,
        "max_depth": 0,
        "max_nodes": 7,
        "max_features": 0,
        "leaf_prediction": "adaptive",
    }


def test_traversal_by_hand():
    model = HoeffdingTreeRegressor(2, max_nodes=5, leaf_prediction="mean")
    model.set_weights_vector(handmade())
    X = np.array([[9.0, 0.2], [-1.0, 0.9], [0.0, 0.5], [0.1, 0.6]])
    # Node 1 (x1 <= 0.5), node 3 (x1 > 0.5, x0 <= 0), node 4 (x0 > 0): shift + sum / weight.
    assert model.predict_many(X).tolist() == [1.0, 5.0, 1.0, 3.0]
    assert model.loss_many(X, np.array([0.0, 5.0, 1.0, 1.0])).tolist() == [1.0, 0.0, 0.0, 4.0]


def test_leaf_models_predict_as_the_documented_layout_says():
    """Leaves 3 and 4 of the handmade tree get models over (x0, x1, 1); adaptive: leaf 3's
    mean has the smaller error (it predicts its mean), leaf 4's model has."""
    base = handmade()
    M = 5
    coef = np.zeros((M, 3))
    coef[3] = [1.0, 0.0, 2.0]
    coef[4] = [0.0, 2.0, -1.0]
    err_mean, err_model = np.zeros(M), np.zeros(M)
    err_mean[3], err_model[3] = 1.0, 2.0
    err_mean[4], err_model[4] = 2.0, 1.0
    v = np.concatenate([base[:-1], coef.reshape(-1), err_mean, err_model, base[-1:]])
    model = HoeffdingTreeRegressor(2, max_nodes=5)
    model.set_weights_vector(v)
    assert same_bits(model.weights_vector(), v)
    X = np.array([[-1.0, 0.9], [0.5, 0.75]])
    # Leaf 3: its mean 5; leaf 4: 10 + 2 * 0.75 - 1.
    assert model.predict_many(X).tolist() == [5.0, 10.5]
    as_models = HoeffdingTreeRegressor(2, max_nodes=5, leaf_prediction="model")
    as_models.set_weights_vector(np.concatenate([base[:-1], coef.reshape(-1), base[-1:]]))
    # Leaf 3's model: 10 - 1 + 2; leaf 1 (no model yet): 10 + 0.
    assert as_models.predict_many(np.array([[-1.0, 0.9], [3.0, 0.1]])).tolist() == [11.0, 10.0]
    coef[1] = 1.0  # a model at the root's left leaf is fine, at the split node 2 is not
    model.set_weights_vector(
        np.concatenate([v[: -1 - 2 * M - 3 * M], coef.reshape(-1), v[-1 - 2 * M :]])
    )
    coef[2] = 1.0
    with pytest.raises(ValueError, match="leaves hold"):
        model.set_weights_vector(
            np.concatenate([v[: -1 - 2 * M - 3 * M], coef.reshape(-1), v[-1 - 2 * M :]])
        )


@pytest.mark.parametrize(
    "corrupt,match",
    [
        (lambda v: v[:-1], "shape"),
        (lambda v: v.__setitem__(10, 1.5), "integers"),
        (lambda v: v.__setitem__(10, 0.0), "out of range"),
        (lambda v: v.__setitem__(12, 1.0), "tree"),
        (lambda v: v.__setitem__(0, 3.0), "split"),
        (lambda v: v.__setitem__(16, -1.0), ">= 0"),
        (lambda v: v.__setitem__(15, 1.0), "leaves"),  # the root (a split node) has weight
        (lambda v: v.__setitem__(19, 0.0), "sums need weight"),  # node 4 without weight
    ],
)
def test_malformed_vectors_raise(corrupt, match):
    v = handmade()
    result = corrupt(v)
    v = v if result is None else result
    model = HoeffdingTreeRegressor(2, max_nodes=5, leaf_prediction="mean")
    with pytest.raises(ValueError, match=match):
        model.set_weights_vector(v)
    assert not model.weights_vector().any()


def test_non_finite_vector_is_served_as_nan():
    v = handmade()
    v[16] = np.inf
    model = HoeffdingTreeRegressor(2, max_nodes=5, leaf_prediction="mean")
    with pytest.raises(ValueError, match="inf"):
        model.set_weights_vector(v)
    model.set_weights_vector(v, finite=False)
    assert np.isnan(model.predict_many(np.zeros((3, 2)))).all()
    model.set_weights_vector(handmade())
    assert np.isfinite(model.predict_many(np.zeros((3, 2)))).all()


# ----------------------------------------------------------------------------- learning


@pytest.mark.parametrize(
    "leaf_prediction,share", [("mean", 0.75), ("model", 0.6), ("adaptive", 0.6)]
)
def test_learns_friedman_and_serves_from_the_vector_bit_for_bit(stream, leaf_prediction, share):
    X, y = stream
    model = learn(HoeffdingTreeRegressor(10, leaf_prediction=leaf_prediction), X, y)
    Xt, yt = friedman(1000, seed=2)
    # Better than the mean by far (River's mean-leaf tree: about 0.6 of the baseline, its
    # adaptive one 0.45).
    assert np.abs(model.predict_many(Xt) - yt).mean() < share * np.abs(yt - y.mean()).mean()
    spec = {k: v for k, v in model.spec().items() if k != "type"}
    served = HoeffdingTreeRegressor(**spec)
    served.set_weights_vector(model.weights_vector(), finite=False)
    assert same_bits(served.predict_many(Xt), model.predict_many(Xt))
    assert same_bits(served.weights_vector(), model.weights_vector())
    # One instance at a time: the same bits as the batch.
    one = np.concatenate([model.predict_many(Xt[i : i + 1]) for i in range(50)])
    assert same_bits(one, model.predict_many(Xt[:50]))


def test_codec_round_trip_continues_identically(stream):
    X, y = stream
    model = learn(
        HoeffdingTreeRegressor(10, grace_period=50, max_features=4, seed=3), X[:2000], y[:2000]
    )
    restored = linear.from_bytes(linear.to_bytes(model))
    for m in (model, restored):
        learn(m, X[2000:], y[2000:], batch=50)
    assert same_bits(restored.weights_vector(), model.weights_vector())
    assert linear.to_bytes(restored) == linear.to_bytes(model)


CUT_STREAM = friedman(3000, seed=5)


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.integers(1, 3000), min_size=1, max_size=30),
    st.sampled_from([0, 3]),
    st.sampled_from(["mean", "model", "adaptive"]),
)
def test_any_cut_of_the_stream_gives_the_same_tree(cuts, max_features, leaf_prediction):
    X, y = CUT_STREAM
    bounds = [0, *sorted(set(cuts)), len(y)]
    params = {"grace_period": 40, "max_features": max_features, "leaf_prediction": leaf_prediction}
    reference = HoeffdingTreeRegressor(10, **params)
    reference.learn_many(X, y)
    model = HoeffdingTreeRegressor(10, **params)
    for a, b in itertools.pairwise(bounds):
        model.learn_many(X[a:b], y[a:b])
    assert linear.to_bytes(model) == linear.to_bytes(reference)
    assert int((reference.weights_vector()[:1023] > 0).sum()) >= 5  # it did split
    # And one sample at a time (what River does).
    if len(bounds) == 2:
        single = HoeffdingTreeRegressor(10, **params)
        for i in range(len(y)):
            single.learn_many(X[i : i + 1], y[i : i + 1])
        assert linear.to_bytes(single) == linear.to_bytes(reference)


def test_rollback_restores_nodes_and_learning_goes_on(stream):
    X, y = stream
    model = learn(HoeffdingTreeRegressor(10, grace_period=50), X[:1000], y[:1000])
    old = model.weights_vector()
    learn(model, X[1000:3000], y[1000:3000])
    assert not same_bits(old, model.weights_vector())
    model.set_weights_vector(old)
    assert same_bits(model.weights_vector(), old)
    # Every leaf that may split has a fresh observer; learning splits them further.
    leaves = np.flatnonzero((old[:1023] == 0) & (old[3 * 1023 : 4 * 1023] > 0))
    assert (model._record[leaves] >= 0).all()
    assert not model._pool["seen"][model._pool["used"]].any()
    learn(model, X[3000:], y[3000:])
    assert (model.weights_vector()[:1023] > 0).sum() > (old[:1023] > 0).sum()


def test_with_columns_renumbers_and_collapses():
    model = HoeffdingTreeRegressor(2, max_nodes=5, leaf_prediction="mean")
    model.set_weights_vector(handmade())
    X = np.array([[9.0, 0.2], [-1.0, 0.9], [0.1, 0.6]])
    swapped = model.with_columns(np.array([1, 0]))
    assert np.array_equal(swapped.predict_many(X[:, ::-1]), model.predict_many(X))
    # Feature 0 dropped: node 2 becomes a leaf of its subtree's sums (5 samples, -33).
    dropped = model.with_columns(np.array([1, -1, -1]))
    v = dropped.weights_vector()
    assert v[:5].tolist() == [1, 0, 0, 0, 0]
    assert v[15:20].tolist() == [0, 2, 5, 0, 0]
    assert dropped.predict_many(np.array([[0.6, 7.0, 7.0]])).tolist() == [10.0 - 33.0 / 5.0]
    # Feature 1 (the root's) dropped: one leaf of every sum.
    root = model.with_columns(np.array([0])).weights_vector()
    assert root[15] == 7.0 and not root[:15].any() and root[-1] == 10.0


def test_with_columns_keeps_the_leaf_models_kept_columns(stream):
    X, y = stream
    model = learn(HoeffdingTreeRegressor(10, grace_period=50), X[:2000], y[:2000])
    source = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0, -1])
    moved = model.with_columns(source)
    Xm = np.concatenate([X[:, ::-1], np.zeros((len(X), 1))], axis=1)
    assert np.allclose(moved.predict_many(Xm[:500]), model.predict_many(X[:500]))
    assert (moved._coef[:, -2] == 0.0).all()  # the new column
    learn(moved, Xm[2000:], y[2000:])


# ----------------------------------------------------------------------------- memory


@pytest.mark.parametrize("max_nodes,max_depth", [(15, 0), (255, 3)])
def test_node_budget_and_depth_hold_on_a_long_stream(max_nodes, max_depth):
    X, y = friedman(6000, seed=3)
    model = learn(
        HoeffdingTreeRegressor(10, grace_period=20, max_nodes=max_nodes, max_depth=max_depth),
        X,
        y,
        200,
    )
    assert model._size <= max_nodes
    if max_depth:
        assert model._depth.max() <= max_depth
        assert (model._record[model._depth == max_depth] < 0).all()
    active = model._record >= 0
    assert not (active & (model._split > 0)).any()
    assert int(model._pool["used"].sum()) == int(active.sum())
    if model._size + 2 > max_nodes:
        assert not active.any()
    assert len(model._pool["used"]) <= max(64, 4 * int(active.sum()) + 8)
    observers = sum(a[model._pool["used"]].nbytes for k, a in model._pool.items() if k != "used")
    assert observers <= model.max_observer_bytes


# ----------------------------------------------------------------------------- reference


@pytest.mark.parametrize("seed", [1, 7])
def test_first_split_as_river_on_the_same_attribute_at_the_same_sample(seed):
    """River's observer tries every distinct value rounded to one decimal, ours ten
    quantiles: the first split falls at the same attempt, on the same feature, at a nearby
    threshold."""
    X, y = friedman(3000, seed=seed)
    keys = [f"{j}" for j in range(X.shape[1])]
    river = river_tree.HoeffdingTreeRegressor(leaf_prediction="mean")
    ours = HoeffdingTreeRegressor(10)
    river_at = ours_at = None
    for i in range(len(y)):
        river.learn_one(dict(zip(keys, X[i].tolist(), strict=True)), float(y[i]))
        if river_at is None and isinstance(river._root, DTBranch):
            river_at = i
        ours.learn_many(X[i : i + 1], y[i : i + 1])
        if ours_at is None and ours._split[0]:
            ours_at = i
    assert river_at is not None and river_at == ours_at
    root = river._root
    assert keys.index(root.feature) == ours._split[0] - 1
    assert ours._threshold[0] == pytest.approx(root.threshold, abs=0.15)
