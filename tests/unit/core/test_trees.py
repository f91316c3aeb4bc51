"""Hoeffding trees and the adaptive random forest: parameters, the served vector's layout,
determinism, cut independence, rollbacks, column remapping, memory bounds, River as the
reference (majority-class and naive-Bayes-adaptive leaves), and the forest's gain on a
drifting stream."""

from __future__ import annotations

import inspect
import itertools
import json
import os
import platform
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import tree as river_tree
from river.datasets import synth
from river.tree.nodes.branch import DTBranch

from flowlearn.core import codec, linear
from flowlearn.core.trees import HoeffdingTreeClassifier, RandomForestClassifier

from .conftest import learn, same_bits

TREE_CLASSES = (HoeffdingTreeClassifier, RandomForestClassifier)


def agrawal(n: int, function: int = 0, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    pairs = list(itertools.islice(synth.Agrawal(classification_function=function, seed=seed), n))
    keys = list(pairs[0][0])
    X = np.array([[float(x[k]) for k in keys] for x, _ in pairs])
    return X, np.array([int(t) for _, t in pairs])


@pytest.fixture(scope="module")
def stream() -> tuple[np.ndarray, np.ndarray]:
    return agrawal(4000)


def small_forest(**kw) -> RandomForestClassifier:
    return RandomForestClassifier(9, 2, n_trees=4, seed=3, **kw)


def nb_block(M: int, K: int, J: int, F: int) -> int:
    """The NB arrays of a tree's block, as the module docstring lays them out."""
    H = (M + 1) // 2
    return H * (K + 2 * J * K + J + (J if J < F else 0) + 2)


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
        ("leaf_prediction", "nb"),
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
    assert spec["leaf_prediction"] == "nba"
    params = [p for p in inspect.signature(cls).parameters if p not in ("seed", "n_classes")]
    assert set(params) <= set(spec)
    twin = cls(n_classes=len(spec["classes"]), **{k: spec[k] for k in params})
    assert twin.weights_vector().size == model.weights_vector().size


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("leaf_prediction", ["mc", "nba"])
@pytest.mark.parametrize("cls", TREE_CLASSES)
def test_fresh_vector_is_zeros_of_the_documented_length(cls, leaf_prediction):
    model = cls(4, 3, max_nodes=15, leaf_prediction=leaf_prediction)
    trees = getattr(model, "n_trees", 1)
    v = model.weights_vector()
    block = 15 * (3 + 3)  # majority-class leaves: today's layout, unchanged
    if leaf_prediction == "nba":
        block += nb_block(15, 3, 2 if cls is RandomForestClassifier else 4, 4)
    expected = trees * block + (trees if cls is RandomForestClassifier else 0)
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
    model = HoeffdingTreeClassifier(2, 2, max_nodes=5, leaf_prediction="mc")
    model.set_weights_vector(handmade())
    X = np.array([[9.0, 0.5], [-2.0, 0.6], [0.0, 0.7]])
    assert model.predict_proba_many(X).tolist() == [[0.75, 0.25], [0.0, 1.0], [0.5, 0.5]]
    assert model.predict_many(X).tolist() == [0, 1, 0]  # the lowest class on a tie
    assert np.allclose(model.loss_many(X, [1, 0, 1]), -np.log([0.25, 1e-15, 0.5]))


def test_traversal_of_a_learnt_tree_by_hand(stream):
    X, y = stream
    model = learn(HoeffdingTreeClassifier(9, 2, max_nodes=31, leaf_prediction="mc"), X, y)
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
    T, block = 4, 255 * 5 + nb_block(255, 2, 3, 9)
    vote = model.weights_vector()[T * block :]
    assert ((vote > 0.5) & (vote <= 1.0)).all()
    twin = RandomForestClassifier(9, 2, n_trees=4)
    v = model.weights_vector()
    twin.set_weights_vector(v)
    v[T * block :] = [1.0, 0.0, 0.0, 0.0]  # only the first tree votes
    twin.set_weights_vector(v)
    first = HoeffdingTreeClassifier(9, 2, max_nodes=255, max_features=3)
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
    """Majority-class leaves: the whole state. NBA leaves: all but the two NBA counters
    (their predictions come from the statistics as of the start of a segment)."""
    X, y = CUT_STREAM
    bounds = [0, *sorted(set(cuts)), len(y)]
    for lp in ("mc", "nba"):
        reference = HoeffdingTreeClassifier(9, 2, grace_period=40, leaf_prediction=lp)
        reference.learn_many(X, y)
        model = HoeffdingTreeClassifier(9, 2, grace_period=40, leaf_prediction=lp)
        for a, b in itertools.pairwise(bounds):
            model.learn_many(X[a:b], y[a:b])
        if lp == "mc":
            assert linear.to_bytes(model) == linear.to_bytes(reference)
            continue
        ours, theirs = model.state_dict()[0], reference.state_dict()[0]
        assert ours.keys() == theirs.keys()
        for key in ours:
            if key not in ("grove.rows.mc", "grove.rows.nb"):
                assert same_bits(ours[key], theirs[key]), key


def test_one_sample_at_a_time_equals_one_batch(stream):
    X, y = stream
    one = HoeffdingTreeClassifier(9, 2, grace_period=40, leaf_prediction="mc")
    for i in range(1500):
        one.learn_many(X[i : i + 1], y[i : i + 1])
    whole = HoeffdingTreeClassifier(9, 2, grace_period=40, leaf_prediction="mc")
    whole.learn_many(X[:1500], y[:1500])
    assert int(whole._grove.size[0]) > 1
    assert linear.to_bytes(one) == linear.to_bytes(whole)


def forest_trees(model: RandomForestClassifier) -> dict[str, np.ndarray]:
    """The served trees' node arrays and NB rows, without the NBA counters."""
    g, T = model._grove, model.n_trees
    arrays = {name: getattr(g, name)[:T] for name in ("split", "threshold", "left", "counts")}
    if g.nb:
        rows = g.served_rows(np.arange(T))
        arrays.update({k: v for k, v in rows.items() if k not in ("mc", "nb")})
    return arrays


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 2000), min_size=1, max_size=30))
def test_forest_splits_do_not_depend_on_the_cut(cuts):
    """Split attempts happen at the ticks of the split clock, the statistics accumulate in
    sample order and leaves draw their features in the order of their first samples: with
    the detectors silent, the trees are the same for any cut (NBA: but the counters)."""
    X, y = CUT_STREAM
    X, y = X[:2000], y[:2000]
    bounds = [0, *sorted(set(cuts)), len(y)]
    quiet = {"warning_confidence": 1e-300, "drift_confidence": 1e-300}
    for lp in ("mc", "nba"):
        reference = RandomForestClassifier(9, 2, n_trees=3, seed=2, leaf_prediction=lp, **quiet)
        reference.learn_many(X, y)
        model = RandomForestClassifier(9, 2, n_trees=3, seed=2, leaf_prediction=lp, **quiet)
        for a, b in itertools.pairwise(bounds):
            model.learn_many(X[a:b], y[a:b])
        ours, theirs = forest_trees(model), forest_trees(reference)
        assert int(model._grove.size[: model.n_trees].min()) > 5
        for key in theirs:
            assert same_bits(ours[key], theirs[key]), (lp, key)


def test_forest_splits_at_the_clock_ticks_within_a_batch(stream):
    """A forest learning one long batch splits as often as one learning it in small ones
    (its leaves attempt every few samples, not once a batch)."""
    X, y = stream
    whole = RandomForestClassifier(9, 2, n_trees=3, seed=1).learn_many(X[:1000], y[:1000])
    small = learn(RandomForestClassifier(9, 2, n_trees=3, seed=1), X[:1000], y[:1000], batch=8)
    assert int(whole._grove.size[:3].sum()) >= 0.8 * int(small._grove.size[:3].sum())


def test_the_detectors_fire_on_a_rise_of_the_error_rate_not_a_fall():
    """A tree whose error rate falls got better: no warning, no drift (a two-sided ADWIN
    would replace it). A rise is detected."""
    from flowlearn.core.trees import _CLOCK, _ErrorWindows

    def fired(first: float, then: float) -> bool:
        windows = _ErrorWindows(np.array([0.01, 0.001]))
        out = False
        for rate in [first] * 40 + [then] * 40:
            windows.pending[:] = rate * _CLOCK
            windows.n_pending = _CLOCK
            out |= bool(windows.close_block().any())
        return out

    assert not fired(0.6, 0.1)
    assert fired(0.1, 0.6)


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


@pytest.mark.parametrize("factory", [lambda: HoeffdingTreeClassifier(9, 2), small_forest])
def test_the_weights_vector_is_a_fresh_copy_of_the_current_model(stream, factory):
    X, y = stream
    model = learn(factory(), X[:1000], y[:1000])
    v = model.weights_vector()
    v[:] = -1.0  # the caller's copy: the model's next vector is intact
    w = model.weights_vector()
    assert w is not v and (w != -1.0).any()
    learn(model, X[1000:2000], y[1000:2000])
    assert not same_bits(model.weights_vector(), w)
    assert same_bits(model.weights_vector(), model._build_vector())


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
    # (A 4-tree forest learning on after a rollback: 0.80 to 0.96 over seeds 0-5.)
    assert (model.predict_many(X[:500]) == y[:500]).mean() > 0.75


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
    model = HoeffdingTreeClassifier(2, 2, max_nodes=5, leaf_prediction="mc")
    with pytest.raises(ValueError, match=match):
        model.set_weights_vector(v)
    assert not model.weights_vector().any()


def test_non_finite_vector_is_served_as_nan():
    v = handmade()
    v[15] = np.nan
    model = HoeffdingTreeClassifier(2, 2, max_nodes=5, leaf_prediction="mc")
    with pytest.raises(ValueError, match="NaN"):
        model.set_weights_vector(v)
    model.set_weights_vector(v, finite=False)
    assert np.isnan(model.predict_proba_many(np.zeros((3, 2)))).all()
    model.set_weights_vector(handmade())
    assert np.isfinite(model.predict_proba_many(np.zeros((3, 2)))).all()


# ----------------------------------------------------------------------------- columns


def test_with_columns_renumbers_and_collapses():
    model = HoeffdingTreeClassifier(2, 2, max_nodes=5, leaf_prediction="mc")
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
    # (A 4-tree forest: its accuracy varies with the seed.)
    assert (moved.predict_many(Xm[:500]) == y[:500]).mean() > 0.8


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


@pytest.mark.parametrize("lp", ["mc", "nba"])
def test_the_bound_ranges_over_the_classes_a_leaf_has(stream, lp):
    """Information gain's range is log2 of the classes present at the leaf (at least 2),
    as River's: classes that never occur do not slow the splits down."""
    X, y = stream
    two = HoeffdingTreeClassifier(9, 2, leaf_prediction=lp).learn_many(X, y)
    four = HoeffdingTreeClassifier(9, 4, leaf_prediction=lp).learn_many(X, y)
    g2, g4 = two._grove, four._grove
    assert int(g4.size[0]) == int(g2.size[0]) > 3
    for name in ("split", "threshold", "left"):
        assert same_bits(getattr(g4, name), getattr(g2, name))
    assert same_bits(g4.counts[..., :2], g2.counts)


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

    # Majority-class leaves: the gain of the forest itself (bagging, drift detection).
    assert (
        prequential(RandomForestClassifier(9, 2, leaf_prediction="mc"))
        > prequential(HoeffdingTreeClassifier(9, 2, leaf_prediction="mc")) + 0.05
    )


# ----------------------------------------------------------------------------- NBA leaves


def read_nba_tree(v: np.ndarray, M: int, K: int, J: int, F: int):
    """A predictor written from the module docstring's layout alone (one tree's block)."""
    H = (M + 1) // 2
    split, thr, left = v[:M].astype(int), v[M : 2 * M], v[2 * M : 3 * M].astype(int)
    counts = v[3 * M : 3 * M + M * K].reshape(M, K)
    pos, arrays = 3 * M + M * K, {}
    sizes = [("w", K), ("s1", J * K), ("s2", J * K), ("shift", J)]
    sizes += [("feat", J)] if J < F else []
    for name, n in [*sizes, ("mc", 1), ("nb", 1)]:
        arrays[name] = v[pos : pos + H * n].reshape(H, n)
        pos += H * n
    assert pos == len(v)

    def predict(x: np.ndarray) -> np.ndarray:
        node, row = 0, 0  # a left child keeps its parent's row, a right child r: (r + 1) // 2
        while split[node]:
            right = x[split[node] - 1] > thr[node]
            node = left[node] + int(right)
            row = (node + 1) // 2 if right else row
        c = counts[node]
        if c.sum() == 0:
            return np.full(K, 1 / K)
        if arrays["nb"][row, 0] < arrays["mc"][row, 0]:
            return c / c.sum()
        feat = arrays["feat"][row].astype(int) if J < F else np.arange(F)
        w = arrays["w"][row]
        s1, s2 = arrays["s1"][row].reshape(J, K), arrays["s2"][row].reshape(J, K)
        with np.errstate(divide="ignore"):
            joint = np.log(c / c.sum())
        for j, f in enumerate(feat):
            for k in range(K):
                if w[k] <= 1:
                    continue
                mean = arrays["shift"][row, j] + s1[j, k] / w[k]
                var = (s2[j, k] - s1[j, k] ** 2 / w[k]) / (w[k] - 1)
                if var > 0:
                    joint[k] += -0.5 * np.log(2 * np.pi * var) - (x[f] - mean) ** 2 / (2 * var)
        e = np.exp(joint - joint.max())
        return e / e.sum()

    return predict


@pytest.mark.parametrize("max_features", [0, 3])
def test_nba_leaves_predict_as_the_documented_layout_says(stream, max_features):
    X, y = stream
    model = learn(HoeffdingTreeClassifier(9, 2, max_features=max_features), X, y)
    v = model.weights_vector()
    J = max_features or 9
    assert v.size == 1023 * 5 + nb_block(1023, 2, J, 9)
    predict = read_nba_tree(v, 1023, 2, J, 9)
    Xt = agrawal(300, seed=11)[0]
    got = model.predict_proba_many(Xt)
    assert np.allclose(got, [predict(x) for x in Xt], rtol=1e-9, atol=1e-12)
    # Some leaves predict naive Bayes (not their class frequencies).
    H = 512
    rows = v[1023 * 5 :]
    mc, nb = rows[-2 * H : -H], rows[-H:]
    assert ((nb >= mc) & (nb > 0)).any()


def test_nba_single_tree_predicts_as_river_one_sample_at_a_time():
    pairs = list(itertools.islice(synth.SEA(seed=3), 2000))
    keys = list(pairs[0][0])
    X = np.array([[float(x[k]) for k in keys] for x, _ in pairs])
    y = np.array([int(t) for _, t in pairs])
    river = river_tree.HoeffdingTreeClassifier()  # leaf_prediction="nba"
    ours = HoeffdingTreeClassifier(3, 2)
    agree = 0
    for i in range(1, len(y)):
        x = dict(zip(keys, X[i].tolist(), strict=True))
        if i > 1:
            agree += river.predict_one(x) == int(ours.predict_many(X[i : i + 1])[0])
        river.learn_one(x, int(y[i]))
        ours.learn_many(X[i : i + 1], y[i : i + 1])
    assert agree / (len(y) - 2) > 0.99


@pytest.mark.parametrize("factory", [lambda: HoeffdingTreeClassifier(9, 2), small_forest])
def test_one_instance_predictions_equal_the_batch_bit_for_bit(stream, factory):
    X, y = stream
    model = learn(factory(), X[:3000], y[:3000])
    batch = model.predict_proba_many(X[3000:3200])
    ones = np.concatenate([model.predict_proba_many(X[i : i + 1]) for i in range(3000, 3200)])
    assert same_bits(batch, ones)


def test_a_batch_changes_only_the_rows_of_the_leaves_it_reaches(stream):
    X, y = stream
    model = learn(HoeffdingTreeClassifier(9, 2, grace_period=10**6), X[:2000], y[:2000])
    g = model._grove
    # A fixed structure (no split attempt yet): force a few splits by hand for leaves.
    model.set_weights_vector(model.weights_vector())
    before = model.weights_vector()
    model.learn_many(X[2000:2010], y[2000:2010])
    changed = np.flatnonzero(before != model.weights_vector())
    M, K = 1023, 2
    # Only the root leaf: its counts and its row 0 of each NB array.
    H, J = 512, 9
    allowed = set(range(3 * M, 3 * M + K))
    pos = M * (3 + K)
    for n in (K, J * K, J * K, J, 1, 1):
        allowed |= set(range(pos, pos + n))
        pos += H * n
    assert changed.size and set(changed.tolist()) <= allowed
    assert int(g.size[0]) == 1


def test_nba_memory_bound_and_pool(stream):
    X, y = stream
    for lp in ("mc", "nba"):
        model = learn(small_forest(leaf_prediction=lp), X, y)
        g = model._grove
        held = sum(a.nbytes for k, a in g.pool.items() if k != "used")
        held += sum(a.nbytes for a in g.rows.values())
        assert held <= model.max_observer_bytes
        assert set(g.pool) == (
            {"lo", "hi", "used"}
            if lp == "nba"
            else {"lo", "hi", "used", "w", "s1", "s2", "shift", "feat"}
        )


@pytest.mark.parametrize(
    "corrupt,match",
    [
        (lambda v, o: v.__setitem__(o, -1.0), "NB weights"),  # w of row 0, class 0
        (lambda v, o: v.__setitem__(o + 2, 5.0), "NB row of no leaf"),  # w of row 1
        (lambda v, o: v.__setitem__(o, 0.0), "sums without weight"),  # class 0's sums stay
        (lambda v, o: v.__setitem__(o + 96, 3.0), "features"),  # feature 3 of 3
        (lambda v, o: v.__setitem__(o + 97, v[o + 96]), "distinct"),
        (lambda v, o: v.__setitem__(o + 96, 0.5), "integers"),
    ],
)
def test_malformed_nb_arrays_raise(corrupt, match):
    # A root leaf considering 2 of 3 features (served), M = 15: H = 8 rows; the NB arrays
    # start at 15 * 5: w 8 x 2, s1 and s2 8 x 4 each, shift 8 x 2, then feat.
    model = HoeffdingTreeClassifier(3, 2, max_nodes=15, max_features=2)
    rng = np.random.default_rng(0)
    X = rng.random((50, 3))
    model.learn_many(X, (X[:, 0] > 0.5).astype(int))
    assert int(model._grove.size[0]) == 1
    v = model.weights_vector()
    offset = 15 * 5
    corrupt(v, offset)
    fresh = HoeffdingTreeClassifier(3, 2, max_nodes=15, max_features=2)
    with pytest.raises(ValueError, match=match):
        fresh.set_weights_vector(v)
    assert not fresh.weights_vector().any()


def test_a_nearly_pure_leaf_keeps_its_observers_and_splits_when_the_concept_changes():
    """River deactivates a leaf whose majority class passes 99% for good; such a leaf here
    only skips its split attempts, so after a drift it learns the new concept's split."""
    rng = np.random.default_rng(5)
    X = rng.random((12000, 2))
    y = (X[:, 0] > 0.5).astype(np.int64)
    noisy = rng.random(6000) < 0.004  # a few labels off: the leaves are 99.6% pure, not 100%
    y[:6000][noisy] = 1 - y[:6000][noisy]
    y[6000:] = (X[6000:, 1] > 0.5).astype(np.int64)
    tree = HoeffdingTreeClassifier(2, 2, grace_period=100, leaf_prediction="mc")
    tree.learn_many(X[:6000], y[:6000])
    splits = tree.weights_vector()[: tree.max_nodes]
    assert set(splits[splits > 0].tolist()) == {1.0}  # only feature 0 so far
    tree.learn_many(X[6000:], y[6000:])
    splits = tree.weights_vector()[: tree.max_nodes]
    assert 2.0 in splits.tolist()  # feature 1 (stored + 1)
    probe = rng.random((2000, 2))
    assert np.mean(tree.predict_many(probe) == (probe[:, 1] > 0.5)) > 0.9


# ----------------------------------------------------------------------------- golden states

#: The learnt states recorded by :func:`golden_states` (``FLOWLEARN_WRITE_GOLDEN=1`` rewrites
#: it). A change to the trees' learning code must leave them bit for bit as they are: the
#: same stream and cut give the same trees after a restart, whatever version trained them.
GOLDEN = Path(__file__).with_name("golden_trees.json")


def golden_platform() -> dict[str, str]:
    """What the recorded bits depend on besides this code: numpy's transcendental functions
    take SIMD paths chosen by its version and the CPU (AVX512 vs AVX2 logs differ in the
    last bit)."""
    from numpy._core._multiarray_umath import __cpu_features__

    simd = [f for f in ("AVX512_SKX", "AVX512F", "AVX2", "FMA3") if __cpu_features__.get(f)]
    return {"numpy": np.__version__, "machine": platform.machine(), "simd": ",".join(simd)}


def golden_streams() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The benchmark's streams (bench/bench_trees.py), offline and short: River's two bundled
    datasets and three synthetic generators (labels as indices of the sorted label set)."""
    from river import datasets

    def take(dataset, n: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = list(itertools.islice(dataset, n))
        keys = list(pairs[0][0])
        labels = sorted({t for _, t in pairs}, key=str)
        X = np.array([[float(x[k]) for k in keys] for x, _ in pairs])
        return X, np.array([labels.index(t) for _, t in pairs])

    rbf = synth.RandomRBFDrift(
        seed_model=42, seed_sample=42, n_classes=4, n_features=4, n_centroids=20,
        change_speed=0.87, n_drift_centroids=10,
    )  # fmt: skip
    return {
        "phishing": take(datasets.Phishing(), 1250),
        "segments": take(datasets.ImageSegments(), 1200),
        "agrawal": take(synth.Agrawal(classification_function=2, seed=42), 1500),
        "sea": take(synth.SEA(variant=1, seed=42), 1500),
        "rbf": take(rbf, 1500),
    }


def golden_cuts(n: int, seed: int) -> dict[str, list[int]]:
    """Batch boundaries: the trainer's ramp of powers of two, batches of 9, random cuts."""
    from flowlearn.core.training import batch_plan

    random = np.random.default_rng(seed).integers(1, n, size=25).tolist()
    return {
        "ramp": np.cumsum([0, *batch_plan(n, 64)]).tolist(),
        "nine": [*range(0, n, 9), n],
        "random": [0, *sorted(set(random)), n],
    }


def golden_states() -> dict[str, str]:
    """SHA-256 of the codec bytes and the weights vector of forests (NBA: two seeds, three
    cuts; majority class; a label shift) and single trees learnt on :func:`golden_streams`,
    and of a trainer's state, vector and test-step losses on Phishing."""
    import hashlib

    from flowlearn.core.training import ModelTrainer

    def digest(*parts: bytes) -> str:
        return hashlib.sha256(b"".join(parts)).hexdigest()

    out = {}
    for name, (X, y) in golden_streams().items():
        F, K = X.shape[1], int(y.max()) + 1
        # (model, the cuts it learns with)
        forest, tree = partial(RandomForestClassifier, F, K), partial(HoeffdingTreeClassifier, F, K)
        models = {f"forest-s{seed}": (partial(forest, seed=seed), "*") for seed in (0, 1)}
        models["forest-mc"] = (partial(forest, leaf_prediction="mc"), ("ramp", "nine"))
        # Learnt with the labels shifted halfway (below): warnings, background trees,
        # replacements.
        models["forest-drift"] = (forest, ("ramp", "nine"))
        models["tree"] = (partial(tree, grace_period=50), ("ramp",))
        for key, (make, cuts) in models.items():
            for cut, bounds in golden_cuts(len(y), seed=len(out)).items():
                if cuts != "*" and cut not in cuts:
                    continue
                model = make()
                labels = y.copy()
                if key == "forest-drift":
                    labels[len(y) // 2 :] = (labels[len(y) // 2 :] + 1) % K
                for a, b in itertools.pairwise(bounds):
                    model.learn_many(X[a:b], labels[a:b])
                out[f"{name}/{key}/{cut}"] = digest(
                    linear.to_bytes(model), model.weights_vector().tobytes()
                )
    X, y = golden_streams()["phishing"]
    trainer = ModelTrainer.create(
        "m", {"type": "random_forest", "n_features": 9, "n_classes": 2, "batch_size": 64}
    )
    losses = [r.losses.tobytes() for r in trainer.train_samples(X, y) if r.losses is not None]
    state = codec.encode_state(*trainer.model.state_dict())
    out["phishing/trainer"] = digest(state, trainer.model.weights_vector().tobytes(), *losses)
    return out


def test_learnt_states_are_the_recorded_ones_bit_for_bit():
    states = golden_states()
    if os.environ.get("FLOWLEARN_WRITE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"platform": golden_platform(), "states": states}, indent=1))
    recorded = json.loads(GOLDEN.read_text())
    if recorded["platform"] != golden_platform():
        pytest.skip(f"states recorded on {recorded['platform']}, not {golden_platform()}")
    changed = [k for k in states if states[k] != recorded["states"].get(k)]
    assert not changed and states.keys() == recorded["states"].keys(), changed


def _python(code: str, **kwargs: Any) -> str:
    """``code`` run by this interpreter in a process of its own: its stdout (the test fails
    with its stderr when it does)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_numba_loads_with_the_first_tree_not_with_the_core_or_the_operators():
    """A Python worker's start-up is part of a recovery: the compiled loops come with the
    first tree that learns or predicts."""
    code = (
        "import sys, numpy as np; import flowlearn.core.training, flowlearn.core.trees, "
        "flowlearn.operators.trainer; print('numba' in sys.modules); "
        "flowlearn.core.trees.RandomForestClassifier(2, 2).learn_many(np.zeros((4, 2)), "
        "np.zeros(4, dtype=int)); print('numba' in sys.modules)"
    )
    assert _python(code).split() == ["False", "True"]


def test_the_compiled_loops_sum_and_erf_as_numpy_and_math_do():
    """What the golden states rest on: the compiled loops' sums are numpy's (pairwise) for
    any length, and their erf is CPython's (both the C library's)."""
    import math

    from flowlearn.core import tree_kernels

    rng = np.random.default_rng(0)
    for n in [*range(20), 31, 32, 127, 128, 129, 200, 1000]:
        for _ in range(20):
            a = rng.standard_normal(n) * 10.0 ** rng.uniform(-8, 8, n)
            assert same_bits(np.float64(tree_kernels.numpy_sum(a)), a.sum()), n
        zeros = rng.choice([0.0, -0.0], n)
        assert same_bits(np.float64(tree_kernels.numpy_sum(zeros)), zeros.sum()), n
    # The left weight of one class at one threshold is 0.5 * (1 + erf(z)) * w.
    for z in [*rng.standard_normal(200) * 3.0, 0.0, 6.5, -6.5]:
        lo = np.array([[[-10.0]]])
        sides = np.empty((2, 1, 1, 10, 1))
        mean, sigma = -z * 2.0 * math.sqrt(2.0), 2.0
        w, s1 = 4.0, np.array([[[mean * 4.0]]])
        s2 = np.array([[[(sigma**2) * 3.0 + mean * mean * 4.0]]])
        thr, valid = np.empty((1, 1, 10)), np.empty((1, 1, 10), dtype=bool)
        tree_kernels.split_sides(
            lo, -lo, np.array([[w]]), s1, s2, np.zeros((1, 1)), thr, valid, sides,
            np.empty((2, 1, 1, 10)), np.empty_like(sides),
        )  # fmt: skip
        var = max(s2[0, 0, 0] - s1[0, 0, 0] * s1[0, 0, 0] / w, 0.0) / (w - 1.0)
        zz = (thr[0, 0, 5] - s1[0, 0, 0] / w) / (math.sqrt(var) * math.sqrt(2.0))
        assert sides[0, 0, 0, 5, 0] == 0.5 * (1.0 + math.erf(zz)) * w


def test_no_compiled_loop_may_reorder_or_fuse_floating_point_operations():
    """fastmath would let LLVM reassociate sums and fuse a * b + c: other bits than numpy's
    (without it numba emits neither; checked once on this machine's assembly)."""
    from flowlearn.core import tree_kernels

    kernels = [getattr(tree_kernels, name) for name in tree_kernels.__all__]
    compiled = [k for k in kernels if hasattr(k, "targetoptions")]
    assert len(compiled) == len(kernels) - 1  # all but warm_up
    assert not [k for k in compiled if k.targetoptions.get("fastmath")]


def test_the_compiled_loops_load_from_the_cache_wherever_the_sources_lie(tmp_path):
    """PyFlink unpacks the job's sources into a new folder for each task it deploys: a
    worker started after a restart, from another folder, loads the loops compiled before
    instead of compiling them again (seconds, in the middle of a recovery)."""
    import shutil

    import flowlearn

    package = Path(flowlearn.__file__).parent
    code = (
        "from flowlearn.core import tree_kernels as k; k.warm_up(); "
        "print(k.__file__); print(sum(k.route.stats.cache_misses.values()))"
    )
    runs = []
    for copy in ("first", "second"):
        shutil.copytree(package, tmp_path / copy / "flowlearn", symlinks=False)
        env = {**os.environ, "PYTHONPATH": str(tmp_path / copy)}
        runs.append(_python(code, cwd=tmp_path, env=env).split())
    assert [Path(path).parts[-4] for path, _ in runs] == ["first", "second"]
    assert runs[1][1] == "0"  # the second copy compiled nothing: it loaded


def test_the_compiled_loops_load_where_print_is_not_pythons():
    """PyFlink's Python worker replaces ``builtins.print`` with a bound method of an object
    whose module has no ``print``; numba's import failed there, and so did every tree in a
    job on a cluster."""
    code = (
        "import builtins\n"
        "class Worker:\n"
        "    def print(self, *args, **kwargs): pass\n"
        "builtins.print = Worker().print  # __main__ has no 'print'\n"
        "from flowlearn.core import tree_kernels\n"
        "tree_kernels.warm_up()\n"
    )
    _python(code)
