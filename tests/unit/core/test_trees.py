"""Hoeffding trees and the adaptive random forest: parameters, the served vector's layout,
determinism, cut independence, rollbacks, column remapping, memory bounds, River as the
reference, and the forest's gain on a drifting stream."""

from __future__ import annotations

import inspect
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import tree as river_tree
from river.datasets import synth
from river.tree.nodes.branch import DTBranch

from flowlearn.core import linear
from flowlearn.core.trees import HoeffdingTreeClassifier, RandomForestClassifier

TREE_CLASSES = (HoeffdingTreeClassifier, RandomForestClassifier)


def agrawal(n: int, function: int = 0, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    pairs = list(itertools.islice(synth.Agrawal(classification_function=function, seed=seed), n))
    keys = list(pairs[0][0])
    X = np.array([[float(x[k]) for k in keys] for x, _ in pairs])
    return X, np.array([int(t) for _, t in pairs])


@pytest.fixture(scope="module")
def stream() -> tuple[np.ndarray, np.ndarray]:
    return agrawal(4000)


def learn(model, X, y, batch: int = 64):
    for s in range(0, len(y), batch):
        model.learn_many(X[s : s + batch], y[s : s + batch])
    return model


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def small_forest(**kw) -> RandomForestClassifier:
    return RandomForestClassifier(9, 2, n_trees=4, seed=3, **kw)


# ----------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("cls", TREE_CLASSES)
@pytest.mark.parametrize(
    "name,value",
    [
        ("n_classes", 1),
        ("grace_period", 0),
        ("grace_period", 1.5),
        ("split_confidence", 0.0),
        ("split_confidence", 1.0),
        ("tie_threshold", -0.1),
        ("tie_threshold", float("nan")),
        ("max_depth", -1),
        ("max_nodes", 0),
        ("max_nodes", 16),
        ("max_features", 5),
        ("max_features", -1),
        ("seed", "x"),
    ],
)
def test_bad_parameters_name_themselves(cls, name, value):
    kwargs = {"n_features": 4, "n_classes": 2, name: value}
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


@pytest.mark.parametrize(
    "name,value",
    [
        ("n_trees", 0),
        ("poisson_lambda", 0.0),
        ("poisson_lambda", float("inf")),
        ("warning_confidence", 1.0),
        ("drift_confidence", 0.0),
    ],
)
def test_bad_forest_parameters(name, value):
    with pytest.raises(ValueError, match=name):
        RandomForestClassifier(4, 2, **{name: value})


@pytest.mark.parametrize("cls", TREE_CLASSES)
def test_interface_and_spec_rebuild(cls):
    model = cls(5, 3, max_nodes=7)
    assert model.last_grad_norm == 0.0 and model.clip_grad_norm is None
    with pytest.raises(ValueError, match="no learning rate"):
        model.set_learning_rate(0.1)
    spec = model.spec()
    assert spec["classes"] == [0, 1, 2] and spec["n_features"] == 5
    params = [p for p in inspect.signature(cls).parameters if p not in ("seed", "n_classes")]
    assert set(params) <= set(spec)
    twin = cls(n_classes=len(spec["classes"]), **{k: spec[k] for k in params})
    assert twin.weights_vector().size == model.weights_vector().size


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("cls", TREE_CLASSES)
def test_fresh_vector_is_zeros_of_the_documented_length(cls):
    model = cls(4, 3, max_nodes=15)
    trees = getattr(model, "n_trees", 1)
    v = model.weights_vector()
    expected = trees * 15 * (3 + 3) + (trees if cls is RandomForestClassifier else 0)
    assert v.shape == (expected,) and not v.any()
    assert np.allclose(model.predict_proba_many(np.zeros((2, 4))), 1 / 3)


def handmade(M: int = 5, K: int = 2) -> np.ndarray:
    """Root: x1 <= 0.5 ? node 1 : node 2; node 2: x0 <= -1 ? node 3 : node 4."""
    split, thr, left = np.zeros(M), np.zeros(M), np.zeros(M)
    counts = np.zeros((M, K))
    split[0], thr[0], left[0] = 2, 0.5, 1
    split[2], thr[2], left[2] = 1, -1.0, 3
    counts[1], counts[3], counts[4] = [3, 1], [0, 2], [1, 1]
    return np.concatenate([split, thr, left, counts.ravel()])


def test_traversal_by_hand():
    model = HoeffdingTreeClassifier(2, 2, max_nodes=5)
    model.set_weights_vector(handmade())
    X = np.array([[9.0, 0.5], [-2.0, 0.6], [0.0, 0.7]])
    assert model.predict_proba_many(X).tolist() == [[0.75, 0.25], [0.0, 1.0], [0.5, 0.5]]
    assert model.predict_many(X).tolist() == [0, 1, 0]  # the lowest class on a tie
    assert np.allclose(model.loss_many(X, [1, 0, 1]), -np.log([0.25, 1e-15, 0.5]))


def test_traversal_of_a_learnt_tree_by_hand(stream):
    X, y = stream
    model = learn(HoeffdingTreeClassifier(9, 2, max_nodes=31), X, y)
    M, K = 31, 2
    v = model.weights_vector()
    split, thr, left = v[:M], v[M : 2 * M], v[2 * M : 3 * M]
    counts = v[3 * M :].reshape(M, K)
    assert split[0] > 0
    for x, p in zip(X[:50], model.predict_proba_many(X[:50]), strict=True):
        node = 0
        while split[node]:
            node = int(left[node]) + int(x[int(split[node]) - 1] > thr[node])
        assert np.array_equal(p, counts[node] / counts[node].sum())


def test_forest_vote_weights_are_served_and_used(stream):
    X, y = stream
    model = learn(small_forest(), X[:2000], y[:2000])
    T, block = 4, 255 * 5
    vote = model.weights_vector()[T * block :]
    assert ((vote > 0.5) & (vote <= 1.0)).all()
    twin = RandomForestClassifier(9, 2, n_trees=4)
    v = model.weights_vector()
    twin.set_weights_vector(v)
    v[T * block :] = [1.0, 0.0, 0.0, 0.0]  # only the first tree votes
    twin.set_weights_vector(v)
    first = HoeffdingTreeClassifier(9, 2, max_nodes=255)
    first.set_weights_vector(v[:block])
    assert np.allclose(twin.predict_proba_many(X[:100]), first.predict_proba_many(X[:100]))


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("factory", [lambda: HoeffdingTreeClassifier(9, 2), small_forest])
def test_deterministic_and_rebuilt_from_the_vector_bit_for_bit(stream, factory):
    X, y = stream
    a, b = learn(factory(), X, y), learn(factory(), X, y)
    assert same_bits(a.weights_vector(), b.weights_vector())
    assert linear.to_bytes(a) == linear.to_bytes(b)
    spec = a.spec()
    params = [p for p in inspect.signature(type(a)).parameters if p not in ("seed", "n_classes")]
    served = type(a)(n_classes=len(spec["classes"]), **{k: spec[k] for k in params})
    served.set_weights_vector(a.weights_vector(), finite=False)
    Xt = agrawal(500, seed=9)[0]
    assert same_bits(served.predict_proba_many(Xt), a.predict_proba_many(Xt))
    assert same_bits(served.loss_many(Xt, y[:500]), a.loss_many(Xt, y[:500]))


@pytest.mark.parametrize("factory", [lambda: HoeffdingTreeClassifier(9, 2), small_forest])
def test_codec_round_trip_continues_identically(stream, factory):
    X, y = stream
    model = learn(factory(), X[:2000], y[:2000], batch=50)
    restored = linear.from_bytes(linear.to_bytes(model))
    for m in (model, restored):
        learn(m, X[2000:], y[2000:], batch=50)
    assert same_bits(restored.weights_vector(), model.weights_vector())
    assert linear.to_bytes(restored) == linear.to_bytes(model)


CUT_STREAM = agrawal(3000, function=2, seed=5)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=30))
def test_a_single_tree_is_independent_of_the_batch_cuts(cuts):
    X, y = CUT_STREAM
    reference = learn(HoeffdingTreeClassifier(9, 2, grace_period=40), X, y, batch=len(y))
    model = HoeffdingTreeClassifier(9, 2, grace_period=40)
    bounds = [0, *sorted(set(cuts)), len(y)]
    for a, b in itertools.pairwise(bounds):
        model.learn_many(X[a:b], y[a:b])
    assert linear.to_bytes(model) == linear.to_bytes(reference)


def test_one_sample_at_a_time_equals_one_batch(stream):
    X, y = stream
    one = HoeffdingTreeClassifier(9, 2, grace_period=40)
    for i in range(1500):
        one.learn_many(X[i : i + 1], y[i : i + 1])
    whole = HoeffdingTreeClassifier(9, 2, grace_period=40).learn_many(X[:1500], y[:1500])
    assert int(whole._grove.size[0]) > 1
    assert linear.to_bytes(one) == linear.to_bytes(whole)


def test_forest_bagging_weights_do_not_depend_on_the_cut(stream):
    X, y = stream
    a = RandomForestClassifier(9, 2, n_trees=3, seed=1)
    b = RandomForestClassifier(9, 2, n_trees=3, seed=1)
    learn(a, X[:640], y[:640], batch=64)
    learn(b, X[:640], y[:640], batch=10)
    assert a._bag_rng.bit_generator.state == b._bag_rng.bit_generator.state


# ----------------------------------------------------------------------------- rollback


def test_rollback_to_an_older_vector_then_learning_goes_on(stream):
    X, y = stream
    model = learn(HoeffdingTreeClassifier(9, 2), X[:1000], y[:1000])
    old = model.weights_vector()
    learn(model, X[1000:3000], y[1000:3000])
    assert not same_bits(model.weights_vector(), old)
    model.set_weights_vector(old)
    assert same_bits(model.weights_vector(), old)
    # A fresh model adopting the same vector restarts the same way: both learn alike.
    fresh = HoeffdingTreeClassifier(9, 2)
    fresh.set_weights_vector(old)
    for m in (model, fresh):
        learn(m, X[3000:], y[3000:])
    assert same_bits(model.weights_vector(), fresh.weights_vector())
    assert model._grove.size[0] > 1


def test_forest_rollback_and_unchanged_vector_keeps_state(stream):
    X, y = stream
    model = learn(small_forest(), X[:1500], y[:1500])
    old = model.weights_vector()
    before = linear.to_bytes(model)
    model.set_weights_vector(old)  # the current vector: nothing to restart
    assert linear.to_bytes(model) == before
    learn(model, X[1500:3000], y[1500:3000])
    model.set_weights_vector(old)
    assert same_bits(model.weights_vector(), old)
    assert not model._background.any()
    learn(model, X[3000:], y[3000:])
    assert (model.predict_many(X[:500]) == y[:500]).mean() > 0.9


@pytest.mark.parametrize(
    "corrupt,match",
    [
        (lambda v: v[:-1], "shape"),
        (lambda v: v.__setitem__(10, 1.5), "integers"),  # left[0] not an integer
        (lambda v: v.__setitem__(10, 0.0), "out of range"),  # root's child is the root
        (lambda v: v.__setitem__(12, 1.0), "tree"),  # node 2's children are 1, 2: a cycle
        (lambda v: v.__setitem__(0, 3.0), "split"),  # feature 2 of 2 features
        (lambda v: v.__setitem__(15, -1.0), "counts"),
        (lambda v: v.__setitem__(14, 2.0), "out of range"),  # a leaf with a child
    ],
)
def test_malformed_vectors_raise(corrupt, match):
    v = handmade()
    result = corrupt(v)
    v = v if result is None else result
    model = HoeffdingTreeClassifier(2, 2, max_nodes=5)
    with pytest.raises(ValueError, match=match):
        model.set_weights_vector(v)
    assert not model.weights_vector().any()


def test_non_finite_vector_is_served_as_nan():
    v = handmade()
    v[15] = np.nan
    model = HoeffdingTreeClassifier(2, 2, max_nodes=5)
    with pytest.raises(ValueError, match="NaN"):
        model.set_weights_vector(v)
    model.set_weights_vector(v, finite=False)
    assert np.isnan(model.predict_proba_many(np.zeros((3, 2)))).all()
    model.set_weights_vector(handmade())
    assert np.isfinite(model.predict_proba_many(np.zeros((3, 2)))).all()


# ----------------------------------------------------------------------------- columns


def test_with_columns_renumbers_and_collapses():
    model = HoeffdingTreeClassifier(2, 2, max_nodes=5)
    model.set_weights_vector(handmade())
    X = np.array([[9.0, 0.5], [-2.0, 0.6], [0.0, 0.7]])
    swapped = model.with_columns(np.array([1, 0]))
    assert np.array_equal(swapped.predict_proba_many(X[:, ::-1]), model.predict_proba_many(X))
    # Feature 0 dropped: node 2 (splits on it) becomes a leaf of its subtree's counts.
    dropped = model.with_columns(np.array([1, -1, -1]))
    v = dropped.weights_vector()
    assert v[:5].tolist() == [1, 0, 0, 0, 0]
    assert v[15:].reshape(5, 2)[2].tolist() == [1.0, 3.0]
    assert dropped.predict_proba_many(np.array([[0.6, 7.0, 7.0]])).tolist() == [[0.25, 0.75]]
    # Feature 1 (the root's) dropped: the whole tree collapses to one leaf.
    root = model.with_columns(np.array([0])).weights_vector()
    assert root[15:17].tolist() == [4.0, 4.0] and not root[:15].any()


@pytest.mark.parametrize("factory", [lambda: HoeffdingTreeClassifier(9, 2), small_forest])
def test_with_columns_then_learning(stream, factory):
    X, y = stream
    model = learn(factory(), X[:2000], y[:2000])
    source = np.array([8, 7, 6, 5, 4, 3, 2, 1, 0, -1])
    moved = model.with_columns(source)
    Xm = np.concatenate([X[:, ::-1], np.zeros((len(X), 1))], axis=1)
    assert np.array_equal(moved.predict_proba_many(Xm[:500]), model.predict_proba_many(X[:500]))
    learn(moved, Xm[2000:], y[2000:])
    assert (moved.predict_many(Xm[:500]) == y[:500]).mean() > 0.9


# ----------------------------------------------------------------------------- memory


@pytest.mark.parametrize("max_nodes,max_depth", [(15, 0), (255, 3)])
@pytest.mark.parametrize("cls", TREE_CLASSES)
def test_node_budget_and_depth_hold_on_a_long_stream(cls, max_nodes, max_depth):
    X, y = agrawal(6000, function=2, seed=3)
    kw = {"grace_period": 20} if cls is HoeffdingTreeClassifier else {"n_trees": 3}
    model = learn(cls(9, 2, max_nodes=max_nodes, max_depth=max_depth, **kw), X, y, batch=200)
    g = model._grove
    assert (g.size <= max_nodes).all()
    if max_depth:
        assert g.depth.max() <= max_depth
        assert (g.record[g.depth == max_depth] < 0).all()
    # Observers only for leaves that may split; a full tree has none.
    active = g.record >= 0
    assert not (active & (g.split > 0)).any()
    assert int(g.pool["used"].sum()) == int(active.sum())
    full = g.size + 2 > max_nodes
    assert not active[full].any()
    assert len(g.pool["used"]) <= max(64, 4 * int(active.sum()) + 8)


# ----------------------------------------------------------------------------- reference


@pytest.mark.parametrize("function,seed", [(0, 7), (2, 42)])
def test_same_splits_as_river_at_the_same_samples(function, seed):
    X, y = agrawal(4000, function=function, seed=seed)
    keys = [f"x{j}" for j in range(X.shape[1])]
    river = river_tree.HoeffdingTreeClassifier(leaf_prediction="mc")
    ours = HoeffdingTreeClassifier(9, 2)
    river_at, ours_at = [], []
    for i in range(len(y)):
        n = river.n_nodes or 1
        river.learn_one(dict(zip(keys, X[i].tolist(), strict=True)), int(y[i]))
        if (river.n_nodes or 1) != n:
            river_at.append(i)
        size = int(ours._grove.size[0])
        ours.learn_many(X[i : i + 1], y[i : i + 1])
        if int(ours._grove.size[0]) != size:
            ours_at.append(i)
    assert len(river_at) >= 3 and ours_at[:3] == river_at[:3]
    river_splits, queue = [], [river._root]
    while queue:
        node = queue.pop(0)
        if isinstance(node, DTBranch):
            river_splits.append((keys.index(node.feature), node.threshold))
            queue += node.children
    g = ours._grove
    our_splits, order = [], [0]
    while order:
        node = order.pop(0)
        if g.split[0, node]:
            our_splits.append((int(g.split[0, node]) - 1, float(g.threshold[0, node])))
            order += [int(g.left[0, node]), int(g.left[0, node]) + 1]
    for (rf, rt), (of, ot) in zip(river_splits[:3], our_splits[:3], strict=True):
        assert rf == of and ot == pytest.approx(rt, rel=1e-9)


def test_forest_beats_a_single_tree_on_a_drifting_stream():
    X1, y1 = agrawal(3000, function=0, seed=1)
    X2, y2 = agrawal(3000, function=2, seed=2)
    X, y = np.concatenate([X1, X2]), np.concatenate([y1, y2])

    def prequential(model) -> float:
        hits = 0
        for s in range(0, len(y), 64):
            hits += int((model.predict_many(X[s : s + 64]) == y[s : s + 64]).sum())
            model.learn_many(X[s : s + 64], y[s : s + 64])
        return hits / len(y)

    assert (
        prequential(RandomForestClassifier(9, 2))
        > prequential(HoeffdingTreeClassifier(9, 2)) + 0.05
    )
