"""Online Hoeffding-tree classifiers: a VFDT and an adaptive random forest of them, learning
mini-batches with numpy.

Both classes run on one engine, :class:`_Grove`: a fixed number of tree *slots*, each a set
of node arrays with room for ``max_nodes`` nodes, and a pool of attribute observers, one per
leaf that may still split. A batch is routed through every slot at once (one numpy step per
depth level), its class counts and observer statistics are accumulated with ``np.add.at`` in
sample order, and the leaves whose weight since their last split attempt reached
``grace_period`` attempt a split, all at once (the single tree: right after the sample
that makes one due; the forest: at the next tick of its split clock): River's Gaussian
splitter (per leaf, feature and class a weight, mean, variance, min and max; ten thresholds
evenly between the min and max; the class weights left of a threshold from the normal
CDF), information gain, and the Hoeffding bound with range ``log2(m)``, ``m`` the number
of classes with weight at the leaf (at least 2): an information gain is at most the
leaf's entropy, at most ``log2(m)`` (River's range counts the classes in the leaf's
class dict: those plus any its parent's split handed it with weight 0).

Leaves predict with naive Bayes adaptive (``leaf_prediction="nba"``, the default, River's
``"nba"``) or their majority class (``"mc"``). An NBA leaf keeps per class, and per feature
it considers and class, a Gaussian (the split evaluation's: one set of statistics serves
both), and two counters: before it learns a sample, the sample's weight is added to the MC
counter if the leaf's class counts' argmax is its class (or the leaf has no counts), to the
NB counter if naive Bayes' argmax is (and the leaf has counts). It predicts naive Bayes
when its NB counter is >= its MC counter (River's rule), its class frequencies otherwise.
Unlike River, a leaf that stops splitting keeps learning its Gaussians and counters (River
drops them and predicts its majority class): a full tree's leaves keep improving.

Serving reads nothing but the weights vector: for each tree a block of
``max_nodes * (3 + n_classes)`` floats, ``split`` (feature + 1; 0 for a leaf or an unused
node), ``threshold`` (``x[feature] <= threshold`` goes left), ``left`` (the left child; the
right one is ``left + 1``) and ``counts`` (``(max_nodes, n_classes)``, a leaf's weighted
class counts; a leaf predicts ``counts / counts.sum()``, uniform when empty). Internal
nodes hold no counts: a split hands its leaf's counts to the two children.

With ``leaf_prediction="nba"`` the block goes on with the NB arrays, each of ``H =
(max_nodes + 1) // 2`` rows (a tree has at most H leaves), ``J`` the features a leaf
considers (``max_features``; with 0 all of them for the single tree, ``round(sqrt(
n_features))`` for the forest), ``K = n_classes``:

- ``nb_w`` ``(H, K)``: per class the weight the leaf learnt since it became a leaf;
- ``nb_s1``, ``nb_s2`` ``(H, J, K)``: per feature and class the weighted sums of
  ``x - shift`` and of ``(x - shift) ** 2`` over those samples;
- ``nb_shift`` ``(H, J)``: per feature the value of the leaf's first such sample;
- ``nb_feat`` ``(H, J)``: the features (0-based, distinct, in the order of the other
  arrays), only when ``J < n_features`` (otherwise entry ``j`` is feature ``j``);
- ``nb_mc``, ``nb_nb`` ``(H,)``: the MC and NB counters.

A leaf's row: the root's is 0; a split node's left child takes its parent's row, its right
child ``r`` takes row ``(r + 1) // 2`` (so a split leaves its leaf's row to its left child
and touches one new row). A row that is no leaf's, or whose ``nb_w`` is all 0, holds zeros.
A leaf with counts whose ``nb_nb >= nb_mc`` predicts the softmax over classes of
``log(counts[k] / counts.sum())`` (-inf for a class without counts) plus, for each feature
``j`` and class with ``w = nb_w[k] > 1`` and ``var = (s2 - s1**2 / w) / (w - 1) > 0``, the
Gaussian log density ``-log(2 pi var) / 2 - (x[feat_j] - shift_j - s1 / w)**2 / (2 var)``
(numpy sums a class's J terms along the contiguous axis: a predictor that wants the
trainer's bits runs this module). A leaf without NB statistics (fresh after a split)
therefore predicts its counts. A forest then appends one vote weight per tree.

What depends on how the stream is cut into batches:

- :class:`HoeffdingTreeClassifier`: nothing with ``"mc"``; with ``"nba"`` only the two
  counters. A batch is learnt in segments that end where a leaf's weight since its last
  attempt reaches the grace period, so every split is attempted at the very sample
  one-by-one learning (and River) attempts it; statistics accumulate in sample order. Any
  cut gives a bit-identical state, but for the counters: a segment's NB and MC predictions
  use the leaf statistics as of the segment's start (one sample at a time: River's).
- :class:`RandomForestClassifier`: split attempts happen at the ticks of a clock of
  ``_SPLIT_CLOCK`` (16) samples of the stream, every leaf that is due then attempting
  (River attempts right after the sample that makes a leaf due: here up to 15 samples
  later), and a leaf draws its feature subspace (NBA) when it meets its first
  sample, in the order of those first samples: neither depends on the cut. The
  predictions that feed the vote weights, the drift detectors and the NBA counters are
  made by the trees as they were when the batch began (NBA counters: by the leaves as
  they were when the segment began; a batch is learnt in segments that end at the ticks),
  so those, and the trees the detectors replace, depend on it.
  The bagging weights (their own generator) and the detectors' block structure do not.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.random((2000, 2))
>>> y = (X[:, 0] > 0.5).astype(np.int64)
>>> tree = HoeffdingTreeClassifier(n_features=2, n_classes=2, grace_period=100)
>>> tree = tree.learn_many(X, y)
>>> tree.predict_many(np.array([[0.2, 0.9], [0.8, 0.1]])).tolist()
[0, 1]
>>> int(tree.weights_vector()[0])  # the root splits on feature 0 (stored as 0 + 1)
1
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self

import numpy as np

from flowlearn.core.validation import (
    Arrays,
    Meta,
    Stateful,
    check_array,
    check_labels,
    check_matrix,
    check_vector,
)

__all__ = ["CLASSES", "HoeffdingTreeClassifier", "RandomForestClassifier"]

#: Leaf predictions: naive Bayes adaptive, majority class.
_LEAF_PREDICTIONS = ("nba", "mc")
#: Candidate thresholds per feature and split attempt (River's GaussianSplitter).
_N_SPLITS = 10
#: A leaf whose majority class holds more of its weight than this skips its split attempt
#: (River's max_share_to_split). River then deactivates the leaf for good; here it keeps its
#: observers, so a leaf that was nearly pure can still split when the concept drifts.
_MAX_SHARE = 0.99
#: A split must send more than this fraction of the weight down each branch (River's
#: min_branch_fraction).
_MIN_BRANCH_FRACTION = 0.01
#: A forest's leaves attempt their splits at the ticks of a clock of this many samples (a
#: leaf with all of a tree's samples, Poisson(6)-weighted, is due every ~50/6 samples with
#: the default grace period). Measured on six streams (seeds 0-4), 8 and 16 give the same
#: accuracy within the seeds' spread, 16 learns 1.5x faster; 32 loses ~1 point on some,
#: once a batch (64) ~1-3. A power of two that divides the detectors' clock: the job's
#: batches are cut on its ticks, and the detectors' phase is the clock's.
_SPLIT_CLOCK = 16
#: Probabilities are clipped to this before a log loss is taken.
_PROBA_FLOOR = 1e-15
#: The drift detectors read the errors in blocks of this many samples (ADWIN's clock).
_CLOCK = 32
#: ADWIN's exponential histogram keeps at most this many buckets of each size.
_MAX_BUCKETS = 5
#: ADWIN's minimum sub-window length.
_MIN_WINDOW = 5
#: A pool of observers shrinks when fewer than a quarter of its records are in use.
_MIN_POOL = 64


def _entropy(d: np.ndarray) -> np.ndarray:
    """Entropy (bits) of the class distributions along the last axis, as River computes it
    (:func:`flowlearn.core.tree_kernels.merits` computes a split's sides' alike)."""
    total = d.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(d > 0.0, d * np.log2(np.where(d > 0.0, d, 1.0)), 0.0).sum(axis=-1)
        return np.where(total > 0.0, (total * np.log2(total) - plogp) / total, 0.0)


def group_rank(keys: np.ndarray) -> np.ndarray:
    """For sorted ``keys``, each entry's position within its run of equal keys."""
    idx = np.arange(len(keys))
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return idx - np.maximum.accumulate(np.where(first, idx, 0))


def leaf_rows(split: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Each node's NB row (a tree's nodes; 0 elsewhere): the root's is 0; a split node's
    left child takes its row, its right child ``r`` takes row ``(r + 1) // 2``. Two leaves
    never share a row: the right children of distinct splits are distinct nodes, at least
    two apart, and a left child's row is that of an internal node, its ancestor."""
    rows = np.zeros(len(split), dtype=np.int64)
    frontier = np.array([0])
    while frontier.size:
        frontier = frontier[split[frontier] > 0]
        lefts = left[frontier]
        rows[lefts] = rows[frontier]
        rows[lefts + 1] = (lefts + 2) // 2
        frontier = np.concatenate([lefts, lefts + 1])
    return rows


def parse_nodes(
    split_f: np.ndarray, left_f: np.ndarray, threshold: np.ndarray, n_features: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A served tree's ``split`` (feature + 1 or 0) and ``left`` (the left child) as
    integers, each node's depth and which nodes belong to the tree, from the vector's
    floats, its structure checked (ValueError): integers, features in range, children in
    range, thresholds only at split nodes, every node reached at most once from the root
    (no cycle, no shared child), nothing split outside the tree."""
    if (split_f != np.round(split_f)).any() or (left_f != np.round(left_f)).any():
        raise ValueError("weights vector: split and left must hold integers")
    split, left = split_f.astype(np.int64), left_f.astype(np.int64)
    if (split < 0).any() or (split > n_features).any():
        raise ValueError(f"weights vector: split must be in 0..{n_features}")
    M = len(split)
    inner = split > 0
    if ((left < 1) | (left > M - 2))[inner].any() or (left[~inner] != 0).any():
        raise ValueError("weights vector: a child index is out of range")
    if (threshold[~inner] != 0.0).any():
        raise ValueError("weights vector: a leaf has a threshold")
    # Walk from the root, a level at a time.
    depth = np.zeros(M, dtype=np.int64)
    seen = np.zeros(M, dtype=bool)
    seen[0] = True
    frontier, level = np.array([0]), 0
    while frontier.size:
        frontier = frontier[inner[frontier]]
        kids = np.stack([left[frontier], left[frontier] + 1], axis=1).reshape(-1)
        level += 1
        if seen[kids].any() or len(np.unique(kids)) != len(kids):
            raise ValueError("weights vector: the nodes do not form a tree (cycle?)")
        seen[kids] = True
        depth[kids] = level
        frontier = kids
    if (~seen & inner).any():
        raise ValueError("weights vector: a node outside the tree holds values")
    return split, left, depth, seen


class _Grove:
    """The shared engine: ``n_slots`` trees of at most ``max_nodes`` nodes each, the
    observers of their splittable leaves, and the learning step.

    Per node (fixed, ``n_slots x max_nodes``): split, threshold, left, counts (the served
    arrays), depth, the weight at the last split attempt, the leaf's observer record and
    (NBA) its NB row number. NBA: a table ``rowid`` (``n_slots x H``) of each slot's NB rows
    in the pool ``rows`` (the served NB arrays, feature indices kept even when all features
    make them derivable), a row taken when a leaf meets its first sample. The observer
    pool holds one record per splittable leaf: its min and max per feature and class, and
    with majority-class leaves also the Gaussians and feature indices (which NBA keeps in
    the rows). Both pools grow by doubling and shrink when mostly free, so they stay
    proportional to the splittable leaves, and the leaves that learnt.
    """

    _POOL = ("w", "s1", "s2", "lo", "hi", "shift", "feat", "used")

    def __init__(
        self,
        n_slots: int,
        n_features: int,
        n_classes: int,
        *,
        max_nodes: int,
        max_depth: int,
        n_sub: int,
        grace_period: float,
        split_confidence: float,
        tie_threshold: float,
        exact: bool,
        nb: bool,
        rng: np.random.Generator,
    ) -> None:
        self.F, self.K, self.M = n_features, n_classes, max_nodes
        #: Naive-Bayes-adaptive leaves: the Gaussian statistics live in the served per-leaf
        #: rows (``self.nb``), the pool keeps only each splittable leaf's min and max.
        self.nb = nb
        #: NB rows per slot: a tree of ``max_nodes`` nodes has at most this many leaves.
        self.H = (max_nodes + 1) // 2
        self.n_sub = n_sub
        self.max_depth = max_depth
        self.grace = float(grace_period)
        self.tau = tie_threshold
        # The Hoeffding bound is sqrt(R^2 ln(1/delta) / (2 n)), R = log2(the leaf's classes).
        self._log_inv_delta = math.log(1.0 / split_confidence)
        self.exact = exact
        self.rng = rng
        S, M, K = n_slots, max_nodes, n_classes
        self.split = np.zeros((S, M), dtype=np.int64)
        self.threshold = np.zeros((S, M))
        self.left = np.zeros((S, M), dtype=np.int64)
        self.counts = np.zeros((S, M, K))
        self.size = np.ones(S, dtype=np.int64)
        self.depth = np.zeros((S, M), dtype=np.int64)
        self.last = np.zeros((S, M))
        self.record = np.full((S, M), -1, dtype=np.int64)
        #: A leaf's NB row within its slot (meaningful for the nodes of a tree).
        self.nbs = np.zeros((S, M), dtype=np.int64)
        self.pool = self._new_pool(0)
        #: NBA: each slot's NB rows in :attr:`rows` (-1: none yet). A leaf's row is taken
        #: when it meets its first sample, so the rows grow with the leaves that learnt.
        self.rowid = np.full((S, self.H if nb else 0), -1, dtype=np.int64)
        self.rows = self._new_row_pool(0)

    # ------------------------------------------------------------------ observer pool

    def _new_pool(self, n: int) -> dict[str, np.ndarray]:
        shape = (n, self.n_sub, self.K)
        pool = {"lo": np.full(shape, np.inf), "hi": np.full(shape, -np.inf)}
        if not self.nb:
            pool.update(self._new_rows(n))
            del pool["mc"], pool["nb"]
        pool["used"] = np.zeros(n, dtype=bool)
        return pool

    def _new_rows(self, n: int) -> dict[str, np.ndarray]:
        """Gaussian statistics of ``n`` leaves: per class the weight, per feature and class
        the sums of ``x - shift`` and of its square, per feature the shift and the feature
        index; the NBA counters (MC right, NB right)."""
        J, K = self.n_sub, self.K
        return {
            "w": np.zeros((n, K)),
            "s1": np.zeros((n, J, K)),
            "s2": np.zeros((n, J, K)),
            "shift": np.zeros((n, J)),
            "feat": np.zeros((n, J), dtype=np.int64),
            "mc": np.zeros(n),
            "nb": np.zeros(n),
        }

    @property
    def gauss(self) -> dict[str, np.ndarray]:
        """Where the Gaussian statistics live: the NB rows, or (majority-class leaves) the pool."""
        return self.rows if self.nb else self.pool

    def gauss_index(self, nodes: np.ndarray) -> np.ndarray:
        """The row of :attr:`gauss` of these flat node ids (-1: none)."""
        if self.nb:
            return self.rowid[nodes // self.M, self.nbs.reshape(-1)[nodes]]
        return self.record.reshape(-1)[nodes]

    def _new_row_pool(self, n: int) -> dict[str, np.ndarray]:
        return {**self._new_rows(n), "used": np.zeros(n, dtype=bool)}

    def _rows_alloc(self, k: int) -> np.ndarray:
        """``k`` empty NB rows (the lowest free ones)."""
        self.rows, idx = take_records(self.rows, k, self._new_row_pool)
        for name, arr in self.rows.items():
            if name != "used":
                arr[idx] = 0
        return idx

    def _rows_free(self, slots: np.ndarray, h: np.ndarray) -> None:
        """Give back the NB rows of these (slot, row) pairs."""
        self.rows, self.rowid = release_records(self.rows, self.rowid, slots * self.H + h)

    def compact_rows(self) -> None:
        """Keep only the NB rows in use, renumbered in order."""
        self.rows, self.rowid = compact_records(self.rows, self.rowid)

    def dense_rows(self, slot: int) -> dict[str, np.ndarray]:
        """Slot ``slot``'s NB rows as served: ``H`` rows each, zeros where none."""
        return {name: arr[0] for name, arr in self.served_rows(np.array([slot])).items()}

    def served_rows(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """These slots' NB rows as served: ``(len(slots), H, ...)``, zeros where none."""
        r = self.rowid[slots]
        has = r >= 0
        out = {}
        for name, arr in self.rows.items():
            if name != "used":
                out[name] = np.zeros((*r.shape, *arr.shape[1:]), dtype=arr.dtype)
                out[name][has] = arr[r[has]]
        return out

    def put_rows(self, slot: int, dense: Mapping[str, np.ndarray]) -> None:
        """Slot ``slot``'s NB rows from served ones (``H`` rows each): a row with weight
        takes a row of :attr:`rows`, the others none."""
        self._rows_free(np.full(self.H, slot), np.arange(self.H))
        h = np.flatnonzero(np.asarray(dense["w"]).reshape(self.H, -1).sum(axis=1) > 0.0)
        r = self._rows_alloc(len(h))
        self.rowid[slot, h] = r
        for name, arr in dense.items():
            target = self.rows[name]
            target[r] = np.asarray(arr).reshape((self.H, *target.shape[1:]))[h]

    def _draw(self, k: int) -> np.ndarray:
        """``k`` feature subspaces: a uniform subset without replacement each, sorted (ties
        between equally good features go to the highest index, as with all features)."""
        if self.n_sub == self.F:
            return np.broadcast_to(np.arange(self.F), (k, self.F))
        return np.sort(self.rng.random((k, self.F)).argsort(axis=1)[:, : self.n_sub], axis=1)

    def _fresh_rows(self, slots: np.ndarray, nodes: np.ndarray) -> None:
        """New leaves (NB): no row (a leaf takes one, and draws its features, with its
        first sample)."""
        if self.nb and len(slots):
            self._rows_free(slots, self.nbs[slots, nodes])

    def _alloc(self, k: int) -> np.ndarray:
        """``k`` fresh records (the lowest free ones), each with its feature subspace."""
        self.pool, idx = take_records(self.pool, k, self._new_pool)
        fresh = self._new_pool(k)
        for name, arr in fresh.items():
            if name not in ("feat", "used"):
                self.pool[name][idx] = arr
        if not self.nb:
            self.pool["feat"][idx] = self._draw(k)
        return idx

    def _free(self, nodes: np.ndarray) -> None:
        """Drop the records of these flat node ids (their leaves stop splitting)."""
        self.pool, self.record = release_records(self.pool, self.record, nodes)

    def compact(self) -> None:
        """Keep only the records in use, renumbered in order."""
        self.pool, self.record = compact_records(self.pool, self.record)

    def _activate(self, slots: np.ndarray, nodes: np.ndarray) -> None:
        """Give these leaves observers where they may still split (depth and room allow)."""
        ok = self.size[slots] + 2 <= self.M
        if self.max_depth:
            ok &= self.depth[slots, nodes] < self.max_depth
        slots, nodes = slots[ok], nodes[ok]
        if len(slots):
            self.record[slots, nodes] = self._alloc(len(slots))

    # ------------------------------------------------------------------ slots

    def clear(self, slots: np.ndarray) -> None:
        """Empty these slots: a root leaf without counts or observers."""
        if not slots.size:
            return
        for s in slots.tolist():
            self._free(s * self.M + np.flatnonzero(self.record[s] >= 0))
        for arr in (self.split, self.threshold, self.left, self.counts, self.depth, self.last):
            arr[slots] = 0
        self.nbs[slots] = 0
        if self.nb:
            self._rows_free(np.repeat(slots, self.H), np.tile(np.arange(self.H), len(slots)))
        self.size[slots] = 1

    def plant(self, slots: np.ndarray) -> None:
        """A fresh tree in each of these slots: a root leaf that learns."""
        if not slots.size:
            return
        self.clear(slots)
        root = np.zeros(len(slots), dtype=np.int64)
        self._fresh_rows(slots, root)
        self._activate(slots, root)

    def move(self, src: int, dst: int) -> None:
        """Slot ``src``'s tree, observers included, replaces ``dst``'s; ``src`` is emptied."""
        self.clear(np.array([dst]))
        for arr in (
            self.split,
            self.threshold,
            self.left,
            self.counts,
            self.depth,
            self.last,
            self.nbs,
        ):
            arr[dst] = arr[src]
        self.rowid[dst] = self.rowid[src]
        self.rowid[src] = -1
        self.record[dst] = self.record[src]
        self.size[dst] = self.size[src]
        self.record[src] = -1
        self.clear(np.array([src]))

    def adopt(
        self, slot: int, split: np.ndarray, left: np.ndarray, depth: np.ndarray, tree: np.ndarray
    ) -> None:
        """Restart the training statistics of a slot whose threshold, counts (and NB rows)
        were just set: ``tree`` marks the nodes of the tree; every leaf that may split gets
        fresh observers (NB: its min and max; its Gaussian statistics are the adopted
        ones), its grace period counting from now."""
        self._free(slot * self.M + np.flatnonzero(self.record[slot] >= 0))
        self.split[slot], self.left[slot], self.depth[slot] = split, left, depth
        self.nbs[slot] = leaf_rows(split, left)
        # New nodes go after the last one in use (a hole before it stays unused).
        self.size[slot] = int(np.flatnonzero(tree).max()) + 1
        self.last[slot] = self.counts[slot].sum(axis=1)
        leaves = np.flatnonzero(tree & (split == 0))
        self._activate(np.full(len(leaves), slot), leaves)

    # ------------------------------------------------------------------ routing

    def route(self, X: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """The leaf each sample reaches in each slot: ``(len(slots), n)``, one step per level."""
        split, thr, left = self.split.reshape(-1), self.threshold.reshape(-1), self.left.reshape(-1)
        return route_nodes(X, split, thr, left, slots * self.M)

    # ------------------------------------------------------------------ learning

    def learn(
        self,
        X: np.ndarray,
        y: np.ndarray,
        W: np.ndarray,
        slots: np.ndarray,
        phase: int = 0,
        leaf: np.ndarray | None = None,
    ) -> None:
        """Learn samples ``X, y`` with weight ``W[j, i]`` in slot ``slots[j]`` (0: not at all),
        ``slots`` ascending. Exact: a leaf attempts its split right after the sample that
        makes it due. Otherwise the due leaves attempt at the ticks of a clock of
        :data:`_SPLIT_CLOCK` samples, the first sample of ``X`` being sample ``phase`` of
        the clock's cycle: after the sample that ends a cycle, every leaf of ``slots`` that
        is due then attempts (which does not depend on how the stream was cut). ``leaf``:
        the samples' leaves in ``slots`` (:meth:`route`'s), when known."""
        start, n = 0, len(y)
        X = np.ascontiguousarray(X, dtype=np.float64)
        node = slots[:, None] * self.M + (self.route(X, slots) if leaf is None else leaf)
        while start < n:
            end = n
            if self.exact:
                end = start + self._first_due(node[:, start:], W[:, start:])
            else:
                # Segments end at the ticks (a forest's many leaves make most ticks find
                # one due).
                end = min(n, start + _SPLIT_CLOCK - (phase + start) % _SPLIT_CLOCK)
            seg = slice(start, end)
            self._accumulate(X[seg], y[seg], W[:, seg], node[:, seg])
            size = self.size[slots].copy()
            if self.exact:
                self._attempt(np.unique(node[:, seg][W[:, seg] > 0]))
            elif (phase + end) % _SPLIT_CLOCK == 0:
                j, leaf = np.nonzero(self.record[slots] >= 0)
                self._attempt(slots[j] * self.M + leaf)
            start = end
            grown = np.flatnonzero(self.size[slots] != size)
            if grown.size and start < n:
                # Only the trees that split route the rest of the samples anew.
                node[grown, start:] = slots[grown, None] * self.M + self.route(
                    X[start:], slots[grown]
                )

    def _first_due(self, node: np.ndarray, W: np.ndarray) -> int:
        """Samples up to and including the first one after which some leaf may be due for a
        split attempt (all of them when none is). A candidate that rounding then finds not
        due costs a segment, never a missed attempt: the attempt checks the real weights."""
        m = node.shape[1]
        mask = (W > 0) & (self.record.reshape(-1)[node] >= 0)
        sel = np.flatnonzero(mask.reshape(-1))
        if not sel.size:
            return m
        keys = node.reshape(-1)[sel]
        order = np.argsort(keys, kind="stable")
        k, w = keys[order], W.reshape(-1)[sel][order]
        cs = np.cumsum(w)
        rank = group_rank(k)
        first = np.arange(len(k)) - rank
        running = cs - (cs[first] - w[first])
        seen = self.counts.reshape(-1, self.K)[k].sum(axis=1)
        need = self.grace - (seen - self.last.reshape(-1)[k])
        hit = running >= need - 1e-6
        if not hit.any():
            return m
        return int((sel[order][hit] % m).min()) + 1

    def _accumulate(self, X: np.ndarray, y: np.ndarray, W: np.ndarray, node: np.ndarray) -> None:
        # Pairs (slot, sample) in slot-major order: each node belongs to one slot, so every
        # node and record accumulates its samples in sample order, however the stream was cut.
        from flowlearn.core import tree_kernels

        flat = np.empty((6, W.size), dtype=np.int64)
        w = np.empty(W.size)
        n_pairs = tree_kernels.pairs(
            np.ascontiguousarray(W), np.ascontiguousarray(node), y, self.record.reshape(-1),
            self.nbs.reshape(-1), self.rowid, self.M, flat[0], w, *flat[1:],
        )  # fmt: skip
        if not n_pairs:
            return
        g, c, i, r, q, key = flat[:, :n_pairs]
        w = w[:n_pairs]
        if self.nb and (q < 0).any():
            # A leaf takes its row and draws its features with its first sample, the
            # leaves in the order of their first samples (then of their slot and row): the
            # order one-by-one learning meets them in, whatever the cut.
            key, first = np.unique(key[q < 0], return_index=True)
            key = key[np.argsort(i[q < 0][first], kind="stable")]
            rows = self._rows_alloc(len(key))
            self.rowid.reshape(-1)[key] = rows
            self.rows["feat"][rows] = self._draw(len(key))
            q = self.gauss_index(g)
        x, cnt = np.empty((n_pairs, self.n_sub)), np.empty((n_pairs, self.K))
        empty, mc_right = np.empty(n_pairs, dtype=bool), np.empty(n_pairs, dtype=bool)
        feat = self.gauss["feat"]
        counts = self.counts.reshape(-1, self.K)
        tree_kernels.pair_inputs(X, i, q, feat, counts, g, c, x, cnt, empty, mc_right)
        if self.nb:
            # NBA: before a leaf learns a sample, credit the weight to MC and NB if each was
            # right (from the statistics as of the start of this segment).
            nb_right = ~empty & (self.log_joint(x, q, cnt).argmax(axis=1) == c)
            mc, nb = self.rows["mc"], self.rows["nb"]
        else:
            # The Gaussians live in the observer records: only the leaves that may split
            # learn them.
            mc = nb = np.zeros(0)
            nb_right = mc_right  # no counters to credit
        # In the order of the pairs, one sample after another: what np.add.at,
        # np.minimum.at and np.maximum.at would do, without their cost per call.
        p, pool = self.gauss, self.pool
        tree_kernels.accumulate(
            self.counts.reshape(-1), g * self.K + c, w, c, x, q,
            p["w"], p["s1"], p["s2"], p["shift"], r, pool["lo"], pool["hi"],
            mc, mc_right, nb, nb_right,
        )  # fmt: skip

    def log_joint(self, x: np.ndarray, q: np.ndarray, cnt: np.ndarray) -> np.ndarray:
        """Naive Bayes' log joint ``(len(q), n_classes)`` of values ``x`` (``(len(q),
        n_sub)``, the row's features) at rows ``q``, with class counts ``cnt``: the log
        prior ``log(cnt / cnt.sum())`` (-inf for a class without weight) plus, per feature
        and class whose Gaussian has a positive (ddof=1) variance, the log density. A
        Gaussian without variance adds nothing (River's density is 0 and skipped)."""
        from flowlearn.core import tree_kernels

        p = self.rows
        P, J, K = len(q), x.shape[1], self.K
        arg, dd = np.empty((P, K, J + 1)), np.empty((P, K, J))
        ok = np.empty((P, K, J), dtype=bool)
        # The terms as numpy computed them elementwise (a class of weight <= 1 has no
        # (ddof=1) variance), their logs and the prior's by numpy (its SIMD log is not a
        # compiled loop's), each class's terms summed as numpy sums a contiguous axis: a
        # sample's sum does not depend on the other samples of the call.
        tree_kernels.gaussian_terms(
            p["w"], p["s1"], p["s2"], p["shift"], q, np.ascontiguousarray(x), cnt, arg, dd, ok
        )
        ll = np.empty((P, K))
        with np.errstate(divide="ignore"):
            tree_kernels.sum_terms(np.log(arg), dd, ok, ll)
        return ll

    def _attempt(self, nodes: np.ndarray) -> None:
        """Split attempts at the due leaves among ``nodes`` (flat ids), all at once."""
        from flowlearn.core import tree_kernels

        out, seen = np.empty(len(nodes), dtype=np.int64), np.empty(len(nodes))
        cnt = np.empty((len(nodes), self.K))
        n = tree_kernels.attempts(
            nodes, self.record.reshape(-1), self.counts.reshape(-1, self.K),
            self.last.reshape(-1), self.grace, out, cnt, seen,
        )  # fmt: skip
        if not n:
            return
        nodes, cnt, seen = out[:n], cnt[:n], seen[:n]
        drop, split, feature, thr, lhs, rhs = self._evaluate(nodes, cnt, seen)
        self._free(nodes[drop])
        self._split(nodes[split], feature[split], thr[split], lhs[split], rhs[split])

    def _evaluate(
        self, nodes: np.ndarray, cnt: np.ndarray, seen: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """River's split decision for each leaf: (deactivate?, split?, feature, threshold,
        left and right class weights)."""
        from flowlearn.core import tree_kernels

        L, J, K = len(nodes), self.n_sub, self.K
        p, pool = self.gauss, self.pool
        r, q = self.record.reshape(-1)[nodes], self.gauss_index(nodes)
        w = p["w"][q]
        # Both sides in one array: [0] left, [1] right.
        sides = np.empty((2, L, J, _N_SPLITS, K))
        positive = np.empty_like(sides)
        thr, valid = np.empty((L, J, _N_SPLITS)), np.empty((L, J, _N_SPLITS), dtype=bool)
        weights = np.empty((2, L, J, _N_SPLITS))
        # Compiled: the thresholds, the classes' sides and the sides' weights; numpy takes
        # the entropies' logs.
        tree_kernels.split_sides(
            pool["lo"][r], pool["hi"][r], w, p["s1"][q], p["s2"][q], p["shift"][q],
            thr, valid, sides, weights, positive,
        )  # fmt: skip
        merit = np.empty((L, J, _N_SPLITS))
        with np.errstate(divide="ignore"):
            log2_weights = np.log2(weights)
        tree_kernels.merits(
            sides, np.log2(positive), weights, log2_weights, valid, _entropy(cnt),
            _MIN_BRANCH_FRACTION, merit,
        )  # fmt: skip
        lhs = sides[0]
        best_t = merit.argmax(axis=2)  # the first best threshold, as River's strict ">"
        # River sorts [null split, features...] stably by merit: the best is the last of the
        # ties, the runner-up the entry before it.
        cand = np.empty((L, self.n_sub + 1))
        cand[:, 0] = -np.inf
        merit.max(axis=2, out=cand[:, 1:])
        order = np.argsort(cand, axis=1, kind="stable")
        rows = np.arange(L)
        best, second = cand[rows, order[:, -1]], cand[rows, order[:, -2]]
        with np.errstate(invalid="ignore", divide="ignore"):
            n_present = np.maximum((cnt > 0.0).sum(axis=1), 2)
            bound = np.sqrt(np.log2(n_present) ** 2 * self._log_inv_delta / (2.0 * seen))
            decide = (best - second > bound) | (bound < self.tau)
        null = best == -np.inf
        crowded = cnt.max(axis=1) / seen > _MAX_SHARE
        drop = decide & null
        split = decide & ~null & ~crowded
        fpos = np.maximum(order[:, -1] - 1, 0)
        tpos = best_t[rows, fpos]
        return (
            drop,
            split,
            p["feat"][q, fpos],
            thr[rows, fpos, tpos],
            lhs[rows, fpos, tpos],
            sides[1][rows, fpos, tpos],
        )

    def _split(
        self,
        nodes: np.ndarray,
        feature: np.ndarray,
        thr: np.ndarray,
        lhs: np.ndarray,
        rhs: np.ndarray,
    ) -> None:
        """Turn these leaves (flat ids, ascending) into split nodes, in order, while their
        tree has room for two more nodes; a leaf that does not fit stops splitting."""
        from flowlearn.core import tree_kernels

        if not nodes.size:
            return
        fits = np.empty(len(nodes), dtype=bool)
        cslot, children = np.empty((2, 2 * len(nodes)), dtype=np.int64)
        n = tree_kernels.grow(
            nodes, feature, thr, np.ascontiguousarray(lhs), np.ascontiguousarray(rhs), self.size,
            self.split, self.threshold, self.left, self.counts, self.depth, self.last, self.nbs,
            fits, cslot, children,
        )  # fmt: skip
        # Their observers go: a split node has none, a leaf that did not fit stops splitting.
        self._free(nodes[~fits])
        if not n:
            return
        self._free(nodes[fits])
        cslot, children = cslot[:n], children[:n]
        self._fresh_rows(cslot, children)
        self._activate(cslot, children)
        slot = nodes[fits] // self.M
        # A tree without room for another split: none of its leaves will split again.
        for s in np.unique(slot[self.size[slot] + 2 > self.M]).tolist():
            self._free(s * self.M + np.flatnonzero(self.record[s] >= 0))

    # ------------------------------------------------------------------ prediction

    def proba(self, X: np.ndarray, slots: np.ndarray, leaf: np.ndarray | None = None) -> np.ndarray:
        """Each slot's class probabilities: ``(len(slots), n, n_classes)`` (``leaf``: the
        samples' leaves, :meth:`route`'s, when known)."""
        from flowlearn.core import tree_kernels

        if leaf is None:
            leaf = self.route(X, slots)
        p = np.empty((*leaf.shape, self.K))
        q = np.empty(leaf.shape, dtype=np.int64)
        # The class frequencies, and which leaves predict naive Bayes: a leaf whose NB
        # counter is >= its MC counter (River's rule); the class frequencies otherwise (and
        # when it has no weight).
        rows = self.rows
        tree_kernels.leaf_frequencies(
            self.counts, slots, leaf, self.rowid, self.nbs, rows["mc"], rows["nb"], p, q
        )
        t, i = np.nonzero(q >= 0)
        if t.size:
            qu = q[t, i]
            cnt = self.counts[slots[t], leaf[t, i]]
            joint = self.log_joint(X[i[:, None], rows["feat"][qu]], qu, cnt)
            top = joint.max(axis=1, keepdims=True)
            # Only values so far out that every class's density underflows to -inf are
            # left to the class frequencies.
            fine = np.isfinite(top[:, 0])
            with np.errstate(invalid="ignore"):
                e = np.exp(joint - top)
                p[t[fine], i[fine]] = (e / e.sum(axis=1, keepdims=True))[fine]
        return p

    # ------------------------------------------------------------------ state

    _NODE_ARRAYS = ("split", "threshold", "left", "counts", "size", "depth", "last", "record")

    def _node_arrays(self) -> tuple[str, ...]:
        return (*self._NODE_ARRAYS, "nbs") if self.nb else self._NODE_ARRAYS

    def state(self) -> Arrays:
        self.compact()
        arrays = {f"node.{name}": getattr(self, name) for name in self._node_arrays()}
        arrays.update({f"pool.{name}": arr for name, arr in self.pool.items() if name != "used"})
        if self.nb:
            self.compact_rows()
            arrays.update({f"rows.{k}": a for k, a in self.rows.items() if k != "used"})
            arrays["rowid"] = self.rowid
        return arrays

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        for name in self._node_arrays():
            old = getattr(self, name)
            new = check_array(arrays, f"node.{name}", old.shape)
            setattr(self, name, new.astype(old.dtype))
        n = len(np.asarray(arrays["pool.lo"]))
        pool = self._new_pool(n)
        for name, arr in pool.items():
            if name != "used":
                pool[name] = check_array(arrays, f"pool.{name}", arr.shape).astype(arr.dtype)
        pool["used"][:] = True
        self.pool = pool
        if self.nb:
            rows = self._new_rows(len(np.asarray(arrays["rows.w"])))
            for name, arr in rows.items():
                rows[name] = check_array(arrays, f"rows.{name}", arr.shape).astype(arr.dtype)
            self.rows = {**rows, "used": np.ones(len(rows["w"]), dtype=bool)}
            rowid = check_array(arrays, "rowid", self.rowid.shape).astype(np.int64)
            used = rowid[rowid >= 0]
            if (
                rowid.min(initial=0) < -1
                or len(np.unique(used)) != len(used)
                or (len(used) != len(rows["w"]))
            ):
                raise ValueError("corrupt tree state: NB rows do not match their table")
            self.rowid = rowid
        r = self.record
        if r.min() < -1 or r.max() >= n or len(np.unique(r[r >= 0])) != n:
            raise ValueError("corrupt tree state: observer records do not match the pool")
        if self.nb and ((self.nbs < 0) | (self.nbs >= self.H)).any():
            raise ValueError("corrupt tree state: NB rows out of range")
        feat = self.gauss["feat"]
        if feat.size and ((feat < 0) | (feat >= self.F)).any():
            raise ValueError("corrupt tree state: feature indices out of range")


class _ErrorWindows:
    """ADWIN (River's defaults: clock 32, 5 buckets per size, minimum sub-window 5) over the
    0/1 errors of many detectors at once, one row per detector.

    The values come in blocks of ``_CLOCK`` (ADWIN tests only every ``clock`` values); the
    exponential histogram's finest buckets are whole blocks, so cuts fall on block
    boundaries. For 0/1 values a bucket's count and error sum determine its variance, and
    both are integers: the detector is exact and independent of how its input is cut.

    A row detects only a rise of the error rate: a cut whose recent sub-window errs more
    than its older one by more than ADWIN's bound (River's ADWIN, as MOA's, fires on a
    fall as well, and its ARF then replaces a tree that got better; MOA's ADWIN bagging
    reacts to rises only). A forest's predictions come from the trees as of the batch's
    start, so a young tree's errors fall in steps at batch boundaries, which a two-sided
    test takes for drifts.
    """

    def __init__(self, deltas: np.ndarray) -> None:
        self.delta = deltas
        D = len(deltas)
        # sums[d, i, k]: errors in the k-th oldest bucket of _CLOCK * 2**i values.
        self.sums = np.zeros((D, 1, _MAX_BUCKETS + 1))
        self.count = np.zeros((D, 1), dtype=np.int64)
        self.pending = np.zeros(D)
        self.n_pending = 0

    def reset(self, rows: np.ndarray) -> None:
        self.sums[rows] = 0.0
        self.count[rows] = 0
        self.pending[rows] = 0.0

    def close_block(self) -> np.ndarray:
        """Insert the pending block as a bucket and test every cut: which rows detect."""
        rows = np.arange(len(self.delta))
        self.sums[rows, 0, self.count[:, 0]] = self.pending
        self.count[:, 0] += 1
        self.pending[:] = 0.0
        self.n_pending = 0
        i = 0
        while (over := np.flatnonzero(self.count[:, i] > _MAX_BUCKETS)).size:
            if i + 1 == self.sums.shape[1]:
                self.sums = np.concatenate([self.sums, np.zeros_like(self.sums[:, :1])], axis=1)
                self.count = np.concatenate([self.count, np.zeros_like(self.count[:, :1])], axis=1)
            merged = self.sums[over, i, 0] + self.sums[over, i, 1]
            self.sums[over, i, :-2] = self.sums[over, i, 2:]
            self.sums[over, i, -2:] = 0.0
            self.count[over, i] -= 2
            self.sums[over, i + 1, self.count[over, i + 1]] = merged
            self.count[over, i + 1] += 1
            i += 1
        return self._scan()

    def _scan(self) -> np.ndarray:
        R = self.sums.shape[1]
        # Buckets oldest first: the largest size first, each row oldest first.
        valid = (np.arange(_MAX_BUCKETS) < self.count[:, ::-1, None]).reshape(len(self.delta), -1)
        sizes = np.repeat(_CLOCK * 2.0 ** np.arange(R - 1, -1, -1), _MAX_BUCKETS)
        n0 = np.cumsum(np.where(valid, sizes, 0.0), axis=1)
        u0 = np.cumsum(
            np.where(valid, self.sums[:, ::-1, :_MAX_BUCKETS].reshape(valid.shape), 0.0), axis=1
        )
        width, total = n0[:, -1:], u0[:, -1:]
        n1, u1 = width - n0, total - u0
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = total / width
            var = mean - mean * mean
            dprime = np.log(2.0 * np.log(width) / self.delta[:, None])
            m = 1.0 / (n0 - _MIN_WINDOW + 1.0) + 1.0 / (n1 - _MIN_WINDOW + 1.0)
            eps = np.sqrt(2.0 * m * var * dprime) + 2.0 / 3.0 * dprime * m
            cut = valid & (n1 > 0.0) & (u1 / n1 - u0 / n0 > eps)
        return cut.any(axis=1)

    def state(self) -> Arrays:
        return {"sums": self.sums, "count": self.count, "pending": self.pending}

    def load(self, arrays: Mapping[str, np.ndarray], n_pending: int) -> None:
        D = len(self.delta)
        rows = np.asarray(arrays["count"]).shape[1] if np.ndim(arrays["count"]) == 2 else 0
        if rows < 1:
            raise ValueError("corrupt forest state: detector buckets")
        self.sums = check_array(arrays, "sums", (D, rows, _MAX_BUCKETS + 1))
        self.count = check_array(arrays, "count", (D, rows)).astype(np.int64)
        self.pending = check_array(arrays, "pending", (D,))
        self.n_pending = n_pending


def route_nodes(
    X: np.ndarray,
    split: np.ndarray,
    threshold: np.ndarray,
    left: np.ndarray,
    base: np.ndarray,
) -> np.ndarray:
    """The leaf each sample reaches in each tree of flat node arrays (``split``,
    ``threshold``, ``left``: feature + 1 or 0, the threshold, the left child), a tree's
    nodes starting at ``base[j]``: ``(len(base), n)`` node ids within their tree (a
    compiled loop: routing is comparisons, the same whatever computes them)."""
    from flowlearn.core import tree_kernels

    out = np.empty((len(base), len(X)), dtype=np.int64)
    tree_kernels.route(
        np.ascontiguousarray(X, dtype=np.float64),
        np.ascontiguousarray(split, dtype=np.int64),
        np.ascontiguousarray(threshold, dtype=np.float64),
        np.ascontiguousarray(left, dtype=np.int64),
        np.ascontiguousarray(base, dtype=np.int64),
        out,
    )
    return out


def take_records(
    pool: dict[str, np.ndarray], k: int, new_pool: Callable[[int], dict[str, np.ndarray]]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``k`` free records of ``pool`` (the lowest free ones; named arrays with the records
    along the first axis and a ``used`` flag), the pool grown by doubling when it has too
    few; returns the pool and the records, marked used (their values as they were)."""
    free = np.flatnonzero(~pool["used"])
    if len(free) < k:
        cap = len(pool["used"])
        grown = new_pool(max(2 * cap, cap + k - len(free), 8))
        for name, arr in pool.items():
            grown[name][:cap] = arr
        pool = grown
        free = np.flatnonzero(~pool["used"])
    idx = free[:k]
    pool["used"][idx] = True
    return pool, idx


def release_records(
    pool: dict[str, np.ndarray], record: np.ndarray, nodes: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Free the records of these (flat) nodes of ``record`` (the table of each node's
    record, -1: none); the pool keeps only the records in use, renumbered in order, when
    fewer than a quarter of it are. Returns the pool and the table."""
    if not len(nodes):
        # Nothing to free, and nothing to compact: a pool is compacted when a release
        # leaves it mostly free, and taking records frees none.
        return pool, record
    flat = record.reshape(-1)
    r = flat[nodes]
    pool["used"][r[r >= 0]] = False
    flat[nodes] = -1
    cap = len(pool["used"])
    if cap > _MIN_POOL and 4 * int(pool["used"].sum()) < cap:
        return compact_records(pool, record)
    return pool, record


def compact_records(
    pool: dict[str, np.ndarray], record: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The pool's records in use only, renumbered in order, and the table renumbered."""
    keep = np.flatnonzero(pool["used"])
    new_of = np.full(len(pool["used"]) + 1, -1, dtype=np.int64)
    new_of[keep] = np.arange(len(keep))
    # -1 maps to the extra last entry, -1.
    return {name: arr[keep] for name, arr in pool.items()}, new_of[record]


def check_int(name: str, value: Any, low: int) -> int:
    try:
        ok = not isinstance(value, bool) and int(value) == value and value >= low
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_open_unit(name: str, value: Any) -> float:
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


class TreeBase(Stateful):
    """What every tree model shares: the checked parameters that bound and steer its
    splits, and no gradient or learning rate."""

    def _check_params(
        self,
        leaf_prediction: str,
        leaf_predictions: tuple[str, ...],
        n_features: int,
        grace_period: int,
        split_confidence: float,
        tie_threshold: float,
        max_depth: int,
        max_nodes: int,
        max_features: int,
        seed: int,
    ) -> None:
        if leaf_prediction not in leaf_predictions:
            raise ValueError(
                f"leaf_prediction must be one of {', '.join(leaf_predictions)}, "
                f"got {leaf_prediction!r}"
            )
        self.leaf_prediction = leaf_prediction
        self.n_features = check_int("n_features", n_features, 1)
        self.grace_period = check_int("grace_period", grace_period, 1)
        self.split_confidence = check_open_unit("split_confidence", split_confidence)
        if not (math.isfinite(float(tie_threshold)) and float(tie_threshold) >= 0.0):
            raise ValueError(f"tie_threshold must be finite and >= 0, got {tie_threshold!r}")
        self.tie_threshold = float(tie_threshold)
        self.max_depth = check_int("max_depth", max_depth, 0)
        self.max_nodes = check_int("max_nodes", max_nodes, 1)
        if self.max_nodes % 2 == 0:
            # A binary tree always has an odd number of nodes: an even budget's last node
            # could never be used.
            raise ValueError(f"max_nodes must be odd, got {max_nodes!r}")
        self.max_features = check_int("max_features", max_features, 0)
        if self.max_features > self.n_features:
            raise ValueError(
                f"max_features must be in 0..n_features={self.n_features}, got {max_features!r}"
            )
        self.seed = check_int("seed", seed, 0)
        #: Trees learn no gradient; the trainer's gates read these.
        self.last_grad_norm = 0.0
        self.clip_grad_norm: float | None = None

    def set_learning_rate(self, lr: float) -> None:
        raise ValueError(
            "a tree model has no learning rate; its splits are steered by grace_period, "
            "split_confidence and tie_threshold in its spec"
        )


class _TreeModel(TreeBase):
    """What both classifiers share: parameters, the served vector, prediction, state."""

    _type: ClassVar[str]
    #: Trees served (1 for the single tree).
    n_trees: int
    #: The forest appends one vote weight per tree to the vector.
    _voting: ClassVar[bool]

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        *,
        n_slots: int,
        grace_period: int,
        split_confidence: float,
        tie_threshold: float,
        max_depth: int,
        max_nodes: int,
        max_features: int,
        n_sub: int,
        exact: bool,
        leaf_prediction: str,
        seed: int,
    ) -> None:
        self._check_params(
            leaf_prediction,
            _LEAF_PREDICTIONS,
            n_features,
            grace_period,
            split_confidence,
            tie_threshold,
            max_depth,
            max_nodes,
            max_features,
            seed,
        )
        self.n_classes = check_int("n_classes", n_classes, 2)
        # Independent streams: the bagging weights stay the same whatever the splits draw.
        bag_seq, feat_seq = np.random.SeedSequence(self.seed).spawn(2)
        self._bag_rng = np.random.default_rng(bag_seq)
        self._grove = _Grove(
            n_slots,
            self.n_features,
            self.n_classes,
            max_nodes=self.max_nodes,
            max_depth=self.max_depth,
            n_sub=n_sub,
            grace_period=self.grace_period,
            split_confidence=self.split_confidence,
            tie_threshold=self.tie_threshold,
            exact=exact,
            nb=leaf_prediction == "nba",
            rng=np.random.default_rng(feat_seq),
        )
        self._served = np.arange(self.n_trees)
        self._grove.plant(self._served)
        #: Each tree's vote weight (forest), as served.
        self._vote = np.zeros(self.n_trees)
        # False after a non-finite vector was adopted for serving: every probability is NaN.
        self._finite = True
        # The last X the served trees predicted and their probabilities (see _served_proba);
        # every method that changes the trees drops it.
        self._memo: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        # The weights vector, until the model changes (see weights_vector).
        self._vector: np.ndarray | None = None

    # ------------------------------------------------------------------ served vector

    @property
    def max_observer_bytes(self) -> int:
        """The most its per-leaf statistics can take: every leaf of every tree slot (a
        forest's background trees included) still able to split. Majority-class leaves:
        the observer records; NBA: the NB rows (allocated for every possible leaf) plus
        the records' min and max."""
        g = self._grove
        J, K = g.n_sub, self.n_classes
        # Per leaf: weights, sums, squares, shifts, feature indices; min and max (records);
        # NBA adds the two counters.
        per_leaf = (K + 4 * J * K + 2 * J + (2 if g.nb else 0)) * 8
        return int(g.split.shape[0]) * g.H * per_leaf

    @property
    def _nb_served(self) -> tuple[tuple[str, int], ...]:
        """The NB arrays of a tree's block: (name, floats per row), in order."""
        g = self._grove
        if not g.nb:
            return ()
        J, K = g.n_sub, self.n_classes
        feat = (("feat", J),) if self.n_features > J else ()
        return (("w", K), ("s1", J * K), ("s2", J * K), ("shift", J), *feat, ("mc", 1), ("nb", 1))

    @property
    def _block(self) -> int:
        H = self._grove.H
        return self.max_nodes * (3 + self.n_classes) + H * sum(n for _, n in self._nb_served)

    def weights_vector(self) -> np.ndarray:
        """The served trees' node arrays (and NB arrays), tree by tree (then the vote
        weights of a forest): a copy of the vector built once per change of the model (a
        trainer reads it before and after each batch)."""
        if self._vector is None:
            self._vector = self._build_vector()
        return self._vector.copy()

    def _build_vector(self) -> np.ndarray:
        g, T, M, B = self._grove, self.n_trees, self.max_nodes, self._block
        out = np.empty(T * B + (T if self._voting else 0))
        blocks = out[: T * B].reshape(T, B)
        blocks[:, :M] = g.split[:T]
        blocks[:, M : 2 * M] = g.threshold[:T]
        blocks[:, 2 * M : 3 * M] = g.left[:T]
        pos = M * (3 + self.n_classes)
        blocks[:, 3 * M : pos] = g.counts[:T].reshape(T, -1)
        if g.nb:
            from flowlearn.core import tree_kernels

            # The NB rows straight from the pool; each NB array is an (H, n) block after the
            # node arrays, zeros where a row is no leaf's.
            first = dict.fromkeys(("w", "s1", "s2", "shift", "feat", "mc", "nb"), -1)
            for name, n in self._nb_served:
                first[name] = pos
                pos += g.H * n
            rows = [g.rows[name] for name in first]
            rows = [a.reshape(len(a), math.prod(a.shape[1:])) for a in rows]
            rowid = np.ascontiguousarray(g.rowid[:T])
            tree_kernels.put_rows(blocks, rowid, np.array(list(first.values())), *rows)
        if self._voting:
            out[T * B :] = self._vote
        return out

    def set_weights_vector(self, v: np.ndarray, *, finite: bool = True) -> None:
        """Adopt a vector (a rollback). A tree whose block (or vote weight) differs from the
        current one restarts its training statistics on the adopted nodes: fresh observers
        for its leaves (their grace periods counting from now; NB leaves keep the adopted
        Gaussians and counters, their min and max restart), no background tree, fresh
        drift detectors and vote counters; an unchanged tree keeps everything.

        ``finite=False`` serves a vector as published: non-finite values are accepted and
        the model then predicts NaN probabilities (which the predictor refuses)."""
        try:
            self._adopt_vector(v, finite)
        finally:
            self._memo = self._vector = None

    def _adopt_vector(self, v: np.ndarray, finite: bool) -> None:
        size = self.n_trees * self._block + (self.n_trees if self._voting else 0)
        if finite:
            v = check_vector(v, size, "weights vector")
        else:
            v = np.asarray(v, dtype=np.float64)
            if v.shape != (size,):
                raise ValueError(f"weights vector must have shape ({size},), got {v.shape}")
            if not np.isfinite(v).all():
                self._finite = False
                return
        current = self.weights_vector()
        if self._finite and current.tobytes() == v.tobytes():
            return
        M, K, T = self.max_nodes, self.n_classes, self.n_trees
        blocks = v[: T * self._block].reshape(T, self._block)
        parsed = [self._parse_tree(b) for b in blocks]
        vote = v[T * self._block :] if self._voting else np.zeros(T)
        if (vote < 0).any():
            raise ValueError("weights vector: vote weights must be >= 0")
        old = current[: T * self._block].reshape(T, self._block)
        old_vote = self._vote.copy()
        self._finite = True
        g = self._grove
        for t, (split, thr, left, counts, depth, tree, nb) in enumerate(parsed):
            if old[t].tobytes() == blocks[t].tobytes() and old_vote[t] == vote[t]:
                continue
            g.threshold[t] = thr
            g.counts[t] = counts.reshape(M, K)
            if g.nb:
                g.put_rows(t, nb)
            g.adopt(t, split, left, depth, tree)
            self._vote[t] = vote[t]
            self._restart_tree(t)

    def _restart_tree(self, t: int) -> None:
        """Forget what tree ``t`` learnt besides its nodes (forest: background, detectors)."""

    def _parse_tree(self, block: np.ndarray) -> tuple[Any, ...]:
        """One tree's split, threshold, left and counts from its block, its structure
        checked; its nodes' depths, which nodes belong to the tree, and its NB arrays
        (checked; the feature indices of all-feature leaves filled in)."""
        M, K = self.max_nodes, self.n_classes
        split_f, thr, left_f = block[:M], block[M : 2 * M], block[2 * M : 3 * M]
        counts = block[3 * M : 3 * M + M * K]
        split, left, depth, seen = parse_nodes(split_f, left_f, thr, self.n_features)
        if (counts < 0).any():
            raise ValueError("weights vector: class counts must be >= 0")
        if (~seen & (counts.reshape(M, K) != 0.0).any(axis=1)).any():
            raise ValueError("weights vector: a node outside the tree holds values")
        return split, thr, left, counts, depth, seen, self._parse_nb(block, split, left, seen)

    def _parse_nb(
        self, block: np.ndarray, split: np.ndarray, left: np.ndarray, seen: np.ndarray
    ) -> dict[str, np.ndarray]:
        """A tree's NB arrays from its block: a leaf's row holds non-negative weights and
        counters, no sums for a class without weight, and (feature subspaces) strictly
        increasing feature indices; a row of no leaf holds nothing."""
        g = self._grove
        if not g.nb:
            return {}
        H, J, F = g.H, g.n_sub, self.n_features
        pos = self.max_nodes * (3 + self.n_classes)
        nb: dict[str, np.ndarray] = {}
        for name, n in self._nb_served:
            nb[name] = block[pos : pos + H * n].reshape(H, n)
            pos += H * n
        # The rows of the tree's leaves that have learnt (a row without weight is empty).
        used = np.zeros(H, dtype=bool)
        used[leaf_rows(split, left)[seen & (split == 0)]] = True
        used &= nb["w"].sum(axis=1) > 0.0
        if (nb["w"] < 0).any() or (nb["mc"] < 0).any() or (nb["nb"] < 0).any():
            raise ValueError("weights vector: NB weights and counters must be >= 0")
        weightless = np.tile(nb["w"] == 0.0, J)  # (H, n_sub * n_classes) as s1 and s2
        if ((nb["s1"] != 0.0) | (nb["s2"] != 0.0))[weightless].any() or (nb["s2"] < 0.0).any():
            raise ValueError("weights vector: NB sums without weight, or negative squares")
        if "feat" in nb:
            f = nb["feat"]
            if (f != np.round(f)).any() or (f < 0).any() or (f >= F).any():
                raise ValueError(f"weights vector: NB features must be integers in 0..{F - 1}")
            if (np.diff(np.sort(f[used], axis=1), axis=1) == 0).any():
                raise ValueError("weights vector: a leaf's NB features must be distinct")
        else:
            nb["feat"] = np.where(used[:, None], np.arange(J), 0).astype(np.float64)
        if any((arr[~used] != 0.0).any() for arr in nb.values()):
            raise ValueError("weights vector: an NB row of no leaf holds values")
        return nb

    # ------------------------------------------------------------------ prediction

    def predict_proba_many(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n, n_classes)``: the leaf's class frequencies (a forest:
        their vote-weighted mean; all weights 0 means equal votes)."""
        X = check_matrix(X, self.n_features)
        if not self._finite:
            return np.full((len(X), self.n_classes), np.nan)
        p = self._served_proba(X)
        if self.n_trees == 1:
            return p[0].copy()
        vote = self._vote if self._vote.sum() > 0.0 else np.ones(self.n_trees)
        share = vote / vote.sum()
        # Tree by tree (not a matrix product, whose rounding depends on the batch size): a
        # sample's probabilities are the same bits whatever else is predicted with it.
        from flowlearn.core import tree_kernels

        out = np.empty(p.shape[1:])
        tree_kernels.mix_votes(share, p, out)
        return out

    def _served_proba(self, X: np.ndarray) -> np.ndarray:
        """The served trees' probabilities ``(n_trees, n, n_classes)``, remembered for the
        last ``X`` until the model changes (a trainer predicts, scores, then learns a batch:
        one routing for the three)."""
        return self._served_proba_leaf(X)[0]

    def _served_proba_leaf(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_served_proba` and the leaf each sample reaches in each served tree."""
        memo = self._memo
        if memo is not None and memo[0].shape == X.shape and np.array_equal(memo[0], X):
            return memo[1], memo[2]
        leaf = self._grove.route(X, self._served)
        p = self._grove.proba(X, self._served, leaf)
        self._memo = (X.copy(), p, leaf)
        return p, leaf

    def predict_many(self, X: Any) -> np.ndarray:
        """The most probable class (the lowest index on ties), int64."""
        return self.predict_proba_many(X).argmax(axis=1).astype(np.int64)

    def loss_many(self, X: Any, y: Any) -> np.ndarray:
        """Per-sample log loss, probabilities clipped to [1e-15, 1]."""
        return self._losses(self.predict_proba_many(X), y)

    def test_many(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`loss_many` and :meth:`predict_many` of one batch (the trainer's test
        step), its probabilities computed once."""
        p = self.predict_proba_many(X)
        return self._losses(p, y), p.argmax(axis=1).astype(np.int64)

    def _losses(self, p: np.ndarray, y: Any) -> np.ndarray:
        labels = check_labels(y, len(p), self.n_classes)
        chosen = p[np.arange(len(labels)), labels]
        return -np.log(np.clip(chosen, _PROBA_FLOOR, 1.0))

    # ------------------------------------------------------------------ model interface

    def spec(self) -> dict[str, Any]:
        """What a server needs besides the weights vector: every constructor argument but
        the seed, ``n_classes`` as ``classes`` (the published form of every classifier)."""
        params = {k: v for k, v in self._params().items() if k not in ("seed", "n_classes")}
        return {"type": self._type, "classes": list(range(self.n_classes)), **params}

    def with_columns(self, source: np.ndarray) -> Self:
        """This model over new feature columns (``source[j]``: the old column of new column
        ``j``, -1 for a new feature). Splits on kept features are renumbered; a node that
        splits on a dropped feature becomes a leaf holding its subtree's counts (the node
        arrays are compacted); every leaf's observers restart; a forest keeps its vote
        counters and detectors and drops its background trees."""
        source = np.asarray(source, dtype=np.int64)
        params = {
            **self._params(),
            "n_features": len(source),
            "max_features": min(self.max_features, len(source)),
        }
        moved = self._from_params(params)
        # The random streams go on where they were (the fresh model's restarted them).
        moved._bag_rng.bit_generator.state = self._bag_rng.bit_generator.state
        moved._grove.rng.bit_generator.state = self._grove.rng.bit_generator.state
        new_of = np.full(self.n_features, -1, dtype=np.int64)
        kept = source >= 0
        new_of[source[kept]] = np.flatnonzero(kept)
        g, m = self._grove, moved._grove
        M = self.max_nodes
        for t in range(self.n_trees):
            split, left, counts = g.split[t], g.left[t], g.counts[t]
            # Subtree counts bottom-up: children always have higher indices than parents.
            sub = np.where(split[:, None] == 0, counts, 0.0)
            for i in np.flatnonzero(split > 0)[::-1].tolist():
                sub[i] = sub[left[i]] + sub[left[i] + 1]
            new_split, new_thr = np.zeros(M, dtype=np.int64), np.zeros(M)
            new_left, new_counts = np.zeros(M, dtype=np.int64), np.zeros((M, self.n_classes))
            depth = np.zeros(M, dtype=np.int64)
            leaves: list[tuple[int, int]] = []  # (old node or -1 when collapsed, new node)
            queue, size = [(0, 0, 0)], 1  # (old node, new node, depth)
            while queue:
                old, new, d = queue.pop(0)
                depth[new] = d
                f = int(split[old]) - 1
                if f < 0 or new_of[f] < 0:
                    new_counts[new] = sub[old]
                    leaves.append((old if f < 0 else -1, new))
                    continue
                new_split[new], new_thr[new], new_left[new] = (
                    new_of[f] + 1,
                    g.threshold[t, old],
                    size,
                )
                queue += [(int(left[old]), size, d + 1), (int(left[old]) + 1, size + 1, d + 1)]
                size += 2
            m.threshold[t], m.counts[t] = new_thr, new_counts
            if m.nb:
                self._move_rows(t, moved, leaves, leaf_rows(new_split, new_left), new_of)
            m.adopt(t, new_split, new_left, depth, np.arange(M) < size)
        moved._vote = self._vote.copy()
        moved._finite = self._finite
        self._carry_over(moved)
        return moved

    def _move_rows(
        self,
        t: int,
        moved: Self,
        leaves: list[tuple[int, int]],
        new_rows: np.ndarray,
        new_of: np.ndarray,
    ) -> None:
        """Tree ``t``'s NB rows in ``moved`` (new columns ``new_of[old]``, nodes renumbered):
        a leaf of all features (before and after) keeps its Gaussians, a new feature's as if
        its past samples had 0 there; a leaf of a feature subspace keeps them, renumbered,
        when it keeps all its features and ``moved`` draws as many; any other leaf (a
        collapsed subtree, a lost feature) starts afresh. Kept leaves keep their counters."""
        g, m = self._grove, moved._grove
        J, J2 = g.n_sub, m.n_sub
        all_features = self.n_features == J and moved.n_features == J2
        old_rows = g.dense_rows(t)
        rows = {k: np.zeros_like(v) for k, v in m.dense_rows(t).items()}
        for old, new in leaves:
            if old < 0:
                continue
            q, q2 = int(g.nbs[t, old]), int(new_rows[new])
            if old_rows["w"][q].sum() == 0.0:
                continue
            feats = new_of[old_rows["feat"][q]]
            if all_features:
                kept = feats >= 0
                rows["feat"][q2] = np.arange(J2)
                for name in ("s1", "s2", "shift"):
                    rows[name][q2][feats[kept]] = old_rows[name][q][kept]
            elif J2 == J and (feats >= 0).all():
                # In the same order: the NB sums add the same terms in the same order.
                rows["feat"][q2] = feats
                for name in ("s1", "s2", "shift"):
                    rows[name][q2] = old_rows[name][q]
            else:
                continue
            for name in ("w", "mc", "nb"):
                rows[name][q2] = old_rows[name][q]
        m.put_rows(t, rows)

    def _carry_over(self, moved: Self) -> None:
        """What :meth:`with_columns` keeps besides the trees (forest: vote counters, detectors)."""

    # ------------------------------------------------------------------ state

    def _params(self) -> dict[str, Any]:
        raise NotImplementedError

    def _state(self) -> tuple[Arrays, Meta]:
        arrays = {f"grove.{k}": v for k, v in self._grove.state().items()}
        arrays["vote"] = self._vote
        meta = {
            "bag_rng": self._bag_rng.bit_generator.state,
            "feature_rng": self._grove.rng.bit_generator.state,
            "finite": self._finite,
        }
        return arrays, meta

    def _load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self._memo = self._vector = None
        prefix = "grove."
        self._grove.load({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})
        self._vote = check_array(arrays, "vote", (self.n_trees,))
        self._bag_rng.bit_generator.state = meta["bag_rng"]
        self._grove.rng.bit_generator.state = meta["feature_rng"]
        self._finite = bool(meta["finite"])


class HoeffdingTreeClassifier(_TreeModel):
    """A Hoeffding tree (VFDT, Domingos & Hulten 2000) as River's
    ``tree.HoeffdingTreeClassifier`` with majority-class leaves: Gaussian attribute
    observers, information gain, Hoeffding bound ``split_confidence`` (River's delta), tie
    threshold ``tie_threshold`` (tau), a split attempt whenever a leaf's weight since its
    last attempt reaches ``grace_period``; a leaf whose majority class holds more than 99%
    of its weight skips its attempts (River's max_share_to_split, which in River also
    deactivates the leaf for good; here it can split again after a drift).

    ``max_features`` (0: all) limits the features a leaf considers (a random subset).
    ``max_depth`` (0: unbounded) and ``max_nodes`` (odd: a binary tree's node count) bound
    the tree; a leaf that may no longer split frees its observers and keeps counting.

    ``leaf_prediction``: ``"nba"`` (naive Bayes adaptive, the default) or ``"mc"``
    (majority class); see the module docstring.

    Memory, ``J`` the features a leaf considers and ``K = n_classes``: ``max_nodes * (6 +
    K) * 8`` bytes of node arrays (NBA: ``+ 12`` per node: the NB row and its table entry);
    NBA: per leaf that learnt an NB row of ``(K + 2 J K + 2 J + 2) * 8`` bytes (weights,
    shifted sums and squares, shifts, feature indices, counters), and per splittable leaf
    an observer record of ``2 J K * 8`` bytes (min and max per feature and class);
    majority-class leaves: per splittable leaf a record of ``(K + 4 J K + 2 J) * 8`` bytes
    (the Gaussians and feature indices too). E.g. 9 features and 2 classes: NBA 464 B per
    leaf + 288 B while it may split, majority class 736 B while it may split (before this
    layout: 864 B). :attr:`max_observer_bytes` bounds all of it but the node arrays.
    """

    _type = "hoeffding_tree"
    _voting = False

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        *,
        grace_period: int = 200,
        split_confidence: float = 1e-7,
        tie_threshold: float = 0.05,
        max_depth: int = 0,
        max_nodes: int = 1023,
        max_features: int = 0,
        leaf_prediction: str = "nba",
        seed: int = 0,
    ) -> None:
        self.n_trees = 1
        n_sub = int(max_features) if max_features else int(n_features)
        super().__init__(
            n_features,
            n_classes,
            n_slots=1,
            grace_period=grace_period,
            split_confidence=split_confidence,
            tie_threshold=tie_threshold,
            max_depth=max_depth,
            max_nodes=max_nodes,
            max_features=max_features,
            n_sub=n_sub,
            exact=True,
            leaf_prediction=leaf_prediction,
            seed=seed,
        )

    def learn_many(self, X: Any, y: Any) -> Self:
        """Learn a batch, sample by sample in effect: bit-identical to any other cut."""
        X = check_matrix(X, self.n_features)
        y = check_labels(y, X.shape[0], self.n_classes)
        if len(y):
            self._memo = self._vector = None
            self._grove.learn(X, y, np.ones((1, len(y))), self._served)
        return self

    def _params(self) -> dict[str, Any]:
        return {
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "grace_period": self.grace_period,
            "split_confidence": self.split_confidence,
            "tie_threshold": self.tie_threshold,
            "max_depth": self.max_depth,
            "max_nodes": self.max_nodes,
            "max_features": self.max_features,
            "leaf_prediction": self.leaf_prediction,
            "seed": self.seed,
        }


class RandomForestClassifier(_TreeModel):
    """An adaptive random forest (Gomes et al. 2017) as River's ``forest.ARFClassifier``
    with majority-class leaves: ``n_trees`` Hoeffding trees, each sample weighing
    Poisson(``poisson_lambda``) in each tree, each leaf splitting on a random subset of
    ``max_features`` features (0: ``round(sqrt(n_features))``, at least 1). A tree's vote
    weight is its accuracy on the samples it predicted since it became a tree of the forest.
    Each tree's 0/1 errors feed two ADWIN detectors of a rise of its error rate (River's
    fire on a fall too; see :class:`_ErrorWindows`): at ``warning_confidence`` a background
    tree starts learning (afresh at each warning), at ``drift_confidence`` it replaces the
    tree (a fresh tree does when there is none) and the tree's counters restart.

    The detectors are :class:`_ErrorWindows`, not :class:`flowlearn.core.drift.ADWIN`: that
    one costs ~2 us per value in Python, i.e. 2 x n_trees x 2 us per sample, more than all
    the rest of learning; these test all trees' windows at once with numpy, every 32 errors,
    at a resolution of 32 samples.

    ``leaf_prediction``: ``"nba"`` (naive Bayes adaptive, the default) or ``"mc"``
    (majority class); see the module docstring.

    Memory per tree: two slots (the tree and its background tree), each of the single
    tree's node arrays, the detectors' ``O(log samples)`` buckets, and the single tree's
    per-leaf statistics (e.g. 3 of 9 features and 2 classes: NBA 176 B per leaf that learnt
    + 96 B while it may split; majority class 256 B while it may split, 288 B before).
    """

    _type = "random_forest"
    _voting = True

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        *,
        n_trees: int = 10,
        grace_period: int = 50,
        split_confidence: float = 0.01,
        tie_threshold: float = 0.05,
        max_depth: int = 0,
        max_nodes: int = 255,
        max_features: int = 0,
        poisson_lambda: float = 6.0,
        warning_confidence: float = 0.01,
        drift_confidence: float = 0.001,
        leaf_prediction: str = "nba",
        seed: int = 0,
    ) -> None:
        self.n_trees = check_int("n_trees", n_trees, 1)
        if not (math.isfinite(float(poisson_lambda)) and float(poisson_lambda) > 0.0):
            raise ValueError(f"poisson_lambda must be finite and > 0, got {poisson_lambda!r}")
        self.poisson_lambda = float(poisson_lambda)
        self.warning_confidence = check_open_unit("warning_confidence", warning_confidence)
        self.drift_confidence = check_open_unit("drift_confidence", drift_confidence)
        d = check_int("n_features", n_features, 1)
        n_sub = int(max_features) if max_features else max(1, round(math.sqrt(d)))
        super().__init__(
            n_features,
            n_classes,
            n_slots=2 * self.n_trees,
            grace_period=grace_period,
            split_confidence=split_confidence,
            tie_threshold=tie_threshold,
            max_depth=max_depth,
            max_nodes=max_nodes,
            max_features=max_features,
            n_sub=n_sub,
            exact=False,
            leaf_prediction=leaf_prediction,
            seed=seed,
        )
        T = self.n_trees
        #: Slot ``n_trees + t`` holds tree t's background tree while ``_background[t]``.
        self._background = np.zeros(T, dtype=bool)
        self._n_predicted = np.zeros(T)
        self._n_correct = np.zeros(T)
        # Rows 0..T-1 warn, rows T..2T-1 detect drift.
        self._windows = _ErrorWindows(
            np.concatenate([np.full(T, self.warning_confidence), np.full(T, self.drift_confidence)])
        )

    def learn_many(self, X: Any, y: Any) -> Self:
        """Test then train on a batch: every tree (and background tree) predicts it, the
        errors update the vote weights and the detectors, whose warnings and drifts take
        effect at the sample where they fire; then all trees learn it at once."""
        X = check_matrix(X, self.n_features)
        y = check_labels(y, X.shape[0], self.n_classes)
        n, T = len(y), self.n_trees
        if not n:
            return self
        g = self._grove
        # Samples learnt so far, modulo the detectors' clock (a multiple of the split clock).
        phase = self._windows.n_pending
        bags = self._bag_rng.poisson(self.poisson_lambda, size=(n, T)).T.astype(np.float64)
        # Errors by source: the tree, its background tree, a tree planted in this batch
        # (an empty tree predicts class 0).
        back = T + np.flatnonzero(self._background)
        served, leaf = self._served_proba_leaf(X)
        self._memo = self._vector = None
        # The leaves of every slot, reused by the learning below for the trees no event
        # changes (an empty slot: all at its root).
        leaves = np.zeros((2 * T, n), dtype=np.int64)
        leaves[:T] = leaf
        if back.size:
            leaves[back] = g.route(X, back)
            served = np.concatenate([served, g.proba(X, back, leaves[back])])
        wrong = served.argmax(axis=2) != y
        errors = np.ones((3, T, n), dtype=bool)
        errors[0] = wrong[:T]
        errors[1][self._background] = wrong[T:]
        errors[2] = y != 0
        background = self._background
        fg_src, fg_start, bg_src, bg_start = self._monitor(errors)
        if not fg_src.any() and (bg_src == np.where(background, 1, -1)).all():
            # No warning or drift in this batch (the common case): every tree and
            # background tree learns all of it where it is.
            slots = np.concatenate([self._served, T + np.flatnonzero(background)])
            g.learn(X, y, np.concatenate([bags, bags[background]]), slots, phase, leaves[slots])
            return self
        # Apply the events: promote background trees, plant fresh ones, drop the others.
        for t in np.flatnonzero(fg_src == 1).tolist():
            g.move(T + t, t)
            leaves[t] = leaves[T + t]
        leaves[np.flatnonzero(fg_src == 2)] = 0
        leaves[T + np.flatnonzero(bg_src == 2)] = 0
        g.plant(np.flatnonzero(fg_src == 2))
        g.plant(T + np.flatnonzero(bg_src == 2))
        g.clear(T + np.flatnonzero((bg_src < 0) & self._background))
        self._background = bg_src >= 0
        after = np.arange(n)
        W = np.concatenate(
            [
                bags * (after >= fg_start[:, None]),
                (bags * (after >= bg_start[:, None]))[self._background],
            ]
        )
        slots = np.concatenate([self._served, T + np.flatnonzero(self._background)])
        g.learn(X, y, W, slots, phase, leaves[slots])
        return self

    def _monitor(self, errors: np.ndarray) -> tuple[np.ndarray, ...]:
        """Feed the errors to the vote counters and detectors, block by block, following
        which tree each one's source is. Returns where each tree and background tree come
        from after the batch (0: the tree, 1: the background tree, 2: planted in this
        batch, -1: none) and the first sample of the batch each learns."""
        from flowlearn.core import tree_kernels

        T, n = self.n_trees, errors.shape[2]
        fg_src, fg_start = np.zeros(T, dtype=np.int64), np.zeros(T, dtype=np.int64)
        bg_src = np.where(self._background, 1, -1)
        bg_start = np.zeros(T, dtype=np.int64)
        win = self._windows
        pos = 0
        while pos < n:
            end = min(n, pos + _CLOCK - win.n_pending)
            tree_kernels.tally(
                errors, fg_src, pos, end, self._n_predicted, self._n_correct, win.pending
            )
            win.n_pending += end - pos
            pos = end
            if win.n_pending < _CLOCK:
                break
            fired = win.close_block()
            warn, drift = fired[:T], fired[T:]
            # River's order at one sample: the warning first (a fresh background tree),
            # then the drift (the background tree, even that fresh one, takes over).
            bg_src[warn], bg_start[warn] = 2, pos
            win.reset(np.flatnonzero(warn))
            if drift.any():
                has = drift & (bg_src >= 0)
                fg_src[has], fg_start[has] = bg_src[has], bg_start[has]
                fresh = drift & ~has
                fg_src[fresh], fg_start[fresh] = 2, pos
                bg_src[drift] = -1
                win.reset(np.concatenate([np.flatnonzero(drift), T + np.flatnonzero(drift)]))
                self._n_predicted[drift] = 0.0
                self._n_correct[drift] = 0.0
                self._vote[drift] = 0.0
        seen = self._n_predicted > 0
        self._vote[seen] = self._n_correct[seen] / self._n_predicted[seen]
        return fg_src, fg_start, bg_src, bg_start

    def _restart_tree(self, t: int) -> None:
        self._grove.clear(np.array([self.n_trees + t]))
        self._background[t] = False
        self._windows.reset(np.array([t, self.n_trees + t]))
        self._n_predicted[t] = self._n_correct[t] = 0.0

    def _carry_over(self, moved: Self) -> None:
        moved._n_predicted = self._n_predicted.copy()
        moved._n_correct = self._n_correct.copy()
        arrays = self._windows.state()
        moved._windows.load({k: v.copy() for k, v in arrays.items()}, self._windows.n_pending)

    def _params(self) -> dict[str, Any]:
        return {
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "n_trees": self.n_trees,
            "grace_period": self.grace_period,
            "split_confidence": self.split_confidence,
            "tie_threshold": self.tie_threshold,
            "max_depth": self.max_depth,
            "max_nodes": self.max_nodes,
            "max_features": self.max_features,
            "leaf_prediction": self.leaf_prediction,
            "poisson_lambda": self.poisson_lambda,
            "warning_confidence": self.warning_confidence,
            "drift_confidence": self.drift_confidence,
            "seed": self.seed,
        }

    def _state(self) -> tuple[Arrays, Meta]:
        arrays, meta = super()._state()
        arrays.update({f"windows.{k}": v for k, v in self._windows.state().items()})
        arrays["background"] = self._background.astype(np.float64)
        arrays["n_predicted"] = self._n_predicted
        arrays["n_correct"] = self._n_correct
        return arrays, {**meta, "n_pending": self._windows.n_pending}

    def _load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        super()._load_state(arrays, meta)
        T = self.n_trees
        prefix = "windows."
        self._windows.load(
            {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)},
            int(meta["n_pending"]),
        )
        self._background = check_array(arrays, "background", (T,)) != 0.0
        self._n_predicted = check_array(arrays, "n_predicted", (T,))
        self._n_correct = check_array(arrays, "n_correct", (T,))


CLASSES: tuple[type[Stateful], ...] = (HoeffdingTreeClassifier, RandomForestClassifier)
