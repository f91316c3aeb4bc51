"""An online regression tree: a Hoeffding tree regressor (River's
``tree.HoeffdingTreeRegressor``), learning mini-batches with numpy.

Each leaf keeps the weight, the sum and the sum of squares of the targets it learnt, all
taken relative to one shift per tree (the first target the tree learns: the sums of squares
do not cancel however large the targets). Its prediction (``leaf_prediction``):

- ``"mean"``: the mean of its targets;
- ``"model"``: a linear model of the features (and an intercept), learnt by normalised
  least mean squares, one sample at a time: ``coef += 0.2 * e * x1 / (x1 . x1)`` with ``x1 =
  [x, 1]`` and ``e`` the error of the shifted target (a step in (0, 2) converges whatever
  the features' scale; 0.2 was best on River's Friedman and Planes2D streams); a split's
  children start with their parent's model;
- ``"adaptive"`` (the default, River's): both, predicting with the mean when its faded
  squared error (each sample's error before it is learnt, the sum faded by 0.95 a sample,
  River's ``model_selector_decay``) is below the model's, with the model otherwise; the
  children start with their parent's errors.

A leaf that may still
split has an *observer*: per feature it considers (``max_features``; 0: all), candidate
thresholds and per bin between them the same three sums. Candidate thresholds are
quantiles: a fresh leaf keeps its first ``min(grace_period, 64)`` samples, then fixes per
feature ten thresholds, each the midpoint of two neighbouring order statistics of those
samples at the eleventh-quantiles, and from then on adds each sample to its bin (the kept
samples first). River's default observer (an extended binary search tree over every distinct
value) is exact but grows with the values seen; bins keep a leaf's statistics fixed in size
and the split search vectorised.

A leaf's split attempt (whenever the weight it learnt since its last attempt reaches
``grace_period``) follows River: the merit of a threshold is its variance reduction
``var(all) - w_left / w var(left) - w_right / w var(right)`` (ddof=1 variances of the
observer's samples; a threshold that leaves fewer than 5 samples on a side has none), the
best threshold per feature competes with the other features and with not splitting; the
leaf splits on the best when its merit is positive and the runner-up's merit over the best's
is below ``1 - bound`` or the bound is below ``tie_threshold``, the Hoeffding bound
``sqrt(ln(1 / split_confidence) / (2 n))`` taken with range 1 (merits are compared as a
ratio) and ``n`` the leaf's weight. The children start with the observer's sums on their
side of the threshold; the split node keeps none.

A batch is learnt in segments that end where a leaf is due for an attempt; every sum
accumulates in sample order and every leaf model steps through its samples in order (all
leaves at once: their first samples, then their second ones...): any cut of a stream into
batches gives a bit-identical tree, predictions and errors included.

Served: the weights vector is ``split`` (feature + 1; 0 for a leaf or an unused node),
``threshold`` (``x[feature] <= threshold`` goes left), ``left`` (the left child; the right
one is ``left + 1``), ``weight``, ``sum`` and ``sum_sq`` (the node's shifted sums), each
``max_nodes`` long; with leaf models ``coef`` (``max_nodes x (n_features + 1)``, C order,
the intercept last) and, adaptive, ``err_mean`` and ``err_model``; then the shift. Split
nodes hold zeros but for the first three. A leaf's mean is ``shift + sum / weight``
(``shift`` without weight), its model's prediction ``shift + (coef * [x, 1]).sum()`` (numpy
sums the row along its contiguous axis).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.random((2000, 2))
>>> y = np.where(X[:, 1] > 0.5, 10.0, 5.0) + rng.normal(0.0, 0.1, 2000)
>>> tree = HoeffdingTreeRegressor(n_features=2, grace_period=100).learn_many(X, y)
>>> np.round(tree.predict_many(np.array([[0.5, 0.1], [0.5, 0.9]])), 1).tolist()
[5.0, 10.0]
>>> int(tree.weights_vector()[0])  # the root splits on feature 1 (stored as 1 + 1)
2
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Self

import numpy as np

from flowlearn.core.trees import (
    TreeBase,
    compact_records,
    group_rank,
    parse_nodes,
    release_records,
    route_nodes,
    take_records,
)
from flowlearn.core.validation import (
    Arrays,
    Meta,
    Stateful,
    check_array,
    check_matrix,
    check_vector,
)

__all__ = ["CLASSES", "HoeffdingTreeRegressor"]

#: Leaf predictions: the better (by recent error) of a linear model and the mean, the
#: linear model, the mean of the leaf's targets.
_LEAF_PREDICTIONS = ("adaptive", "model", "mean")
#: A leaf model's normalised-LMS step: stable for any step in (0, 2), whatever the scale
#: of the features.
_NLMS_STEP = 0.2
#: Adaptive leaves fade their two squared errors by this factor a sample (River's
#: model_selector_decay).
_SELECTOR_DECAY = 0.95
#: Candidate thresholds per feature and leaf.
_N_THRESHOLDS = 10
#: A leaf fixes its thresholds from at most this many of its first samples.
_EDGE_SAMPLES = 64
#: A threshold must leave at least this many samples on each side (River's
#: min_samples_split).
_MIN_SAMPLES_SPLIT = 5
#: The node arrays of the served vector, in order.
_SERVED = ("split", "threshold", "left", "weight", "sum", "sum_sq")


def _variance(w: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """The ddof=1 variance of shifted sums (0 with a weight of at most 1)."""
    ok = w > 1.0
    safe = np.where(ok, w, 2.0)
    return np.where(ok, (s2 - s1 * s1 / safe) / (safe - 1.0), 0.0)


class HoeffdingTreeRegressor(TreeBase):
    """A Hoeffding tree regressor (FIMT-DD's split rule without its drift handling, River's
    ``tree.HoeffdingTreeRegressor``): see the module docstring.

    ``max_depth`` (0: unbounded) and ``max_nodes`` (odd: a binary tree's node count) bound
    the tree; a leaf that may no longer split frees its observer and keeps learning its
    mean and model. ``max_features`` (0: all) is the number of features a leaf considers (a random
    subset, drawn when the leaf is made).

    Memory, ``J`` the features a leaf considers and ``C = min(grace_period, 64)``: ``(13 +
    n_features) * max_nodes * 8`` bytes of node arrays, and per leaf that may still split
    an observer of ``(C J + C + 44 J + 1) * 8`` bytes (its first samples, thresholds, three
    sums per bin, the feature indices and a count): 10 features and the default grace
    period, 8.7 KB.
    :attr:`max_observer_bytes` bounds the observers of a full tree.
    """

    _type = "hoeffding_tree_regressor"

    def __init__(
        self,
        n_features: int,
        *,
        grace_period: int = 200,
        split_confidence: float = 1e-7,
        tie_threshold: float = 0.05,
        max_depth: int = 0,
        max_nodes: int = 1023,
        max_features: int = 0,
        leaf_prediction: str = "adaptive",
        seed: int = 0,
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
        self._n_sub = self.max_features or self.n_features
        self._kept = min(self.grace_period, _EDGE_SAMPLES)
        self._bound_numerator = math.log(1.0 / self.split_confidence)
        self._rng = np.random.default_rng(self.seed)
        M = self.max_nodes
        self._split = np.zeros(M, dtype=np.int64)
        self._threshold = np.zeros(M)
        self._left = np.zeros(M, dtype=np.int64)
        self._w = np.zeros(M)
        self._s1 = np.zeros(M)
        self._s2 = np.zeros(M)
        self._depth = np.zeros(M, dtype=np.int64)
        self._last = np.zeros(M)
        self._record = np.full(M, -1, dtype=np.int64)
        #: Leaf models: coefficients (the last one the intercept) predicting the shifted
        #: target, and (adaptive) the faded squared errors of the mean and of the model.
        self._coef = np.zeros((M, self.n_features + 1))
        self._err_mean = np.zeros(M)
        self._err_model = np.zeros(M)
        self._size = 1
        self._shift = 0.0
        # False after a non-finite vector was adopted for serving: every prediction is NaN.
        self._finite = True
        self._pool = self._new_pool(0)
        self._activate(np.array([0]))

    # ------------------------------------------------------------------ observers

    @property
    def max_observer_bytes(self) -> int:
        """The most the observers can take: every leaf of a full tree still splitting."""
        J, C, S = self._n_sub, self._kept, _N_THRESHOLDS
        per_leaf = (C * J + C + S * J + 3 * J * (S + 1) + J + 1) * 8
        return (self.max_nodes + 1) // 2 * per_leaf

    def _new_pool(self, n: int) -> dict[str, np.ndarray]:
        J, C, S = self._n_sub, self._kept, _N_THRESHOLDS
        return {
            "feat": np.zeros((n, J), dtype=np.int64),
            "seen": np.zeros(n, dtype=np.int64),
            "kept_x": np.zeros((n, C, J)),
            "kept_y": np.zeros((n, C)),
            "edges": np.zeros((n, J, S)),
            "w": np.zeros((n, J, S + 1)),
            "s1": np.zeros((n, J, S + 1)),
            "s2": np.zeros((n, J, S + 1)),
            "used": np.zeros(n, dtype=bool),
        }

    def _alloc(self, k: int) -> np.ndarray:
        """``k`` fresh observers (the lowest free ones), each with its features drawn."""
        self._pool, idx = take_records(self._pool, k, self._new_pool)
        for name, arr in self._pool.items():
            if name != "used":
                arr[idx] = 0
        F, J = self.n_features, self._n_sub
        if J == F:
            self._pool["feat"][idx] = np.arange(F)
        else:
            draw = self._rng.random((k, F)).argsort(axis=1)[:, :J]
            self._pool["feat"][idx] = np.sort(draw, axis=1)
        return idx

    def _free(self, nodes: np.ndarray) -> None:
        """Drop the observers of these nodes (their leaves stop splitting)."""
        self._pool, self._record = release_records(self._pool, self._record, nodes)

    def _activate(self, nodes: np.ndarray) -> None:
        """Give these leaves observers where they may still split (depth and room allow)."""
        if self._size + 2 > self.max_nodes:
            return
        if self.max_depth:
            nodes = nodes[self._depth[nodes] < self.max_depth]
        if len(nodes):
            self._record[nodes] = self._alloc(len(nodes))

    # ------------------------------------------------------------------ learning

    def _route(self, X: np.ndarray) -> np.ndarray:
        """The leaf each sample reaches, one numpy step per level."""
        return route_nodes(X, self._split, self._threshold, self._left, np.zeros(1, np.int64))[0]

    def learn_many(self, X: Any, y: Any) -> Self:
        """Learn a batch, sample by sample in effect: bit-identical to any other cut."""
        X = check_matrix(X, self.n_features)
        y = check_vector(y, len(X))
        if not len(y):
            return self
        if not (self._w[: self._size] > 0.0).any():
            self._shift = float(y[0])
        d = y - self._shift
        start = 0
        while start < len(y):
            leaf = self._route(X[start:])
            stop = self._first_due(leaf)
            self._accumulate(X[start : start + stop], d[start : start + stop], leaf[:stop])
            self._attempt(np.unique(leaf[:stop]))
            start += stop
        return self

    def _first_due(self, leaf: np.ndarray) -> int:
        """Samples up to and including the first after which a leaf is due for an attempt
        (all of them when none is)."""
        sel = np.flatnonzero(self._record[leaf] >= 0)
        if not sel.size:
            return len(leaf)
        order = np.argsort(leaf[sel], kind="stable")
        k = leaf[sel][order]
        need = self.grace_period - (self._w[k] - self._last[k])
        hit = group_rank(k) + 1 >= need
        if not hit.any():
            return len(leaf)
        return int(sel[order][hit].min()) + 1

    def _accumulate(self, X: np.ndarray, d: np.ndarray, leaf: np.ndarray) -> None:
        if self.leaf_prediction == "mean":
            np.add.at(self._w, leaf, 1.0)
            np.add.at(self._s1, leaf, d)
            np.add.at(self._s2, leaf, d * d)
        else:
            self._learn_leaf_models(X, d, leaf)
        i = np.flatnonzero(self._record[leaf] >= 0)
        if not i.size:
            return
        pool, C = self._pool, self._kept
        r, d = self._record[leaf[i]], d[i]
        x = X[i[:, None], pool["feat"][r]]
        # Each sample's position in its observer's stream: the first C are kept.
        order = np.argsort(r, kind="stable")
        position = np.empty(len(r), dtype=np.int64)
        position[order] = pool["seen"][r[order]] + group_rank(r[order])
        np.add.at(pool["seen"], r, 1)
        kept = position < C
        pool["kept_x"][r[kept], position[kept]] = x[kept]
        pool["kept_y"][r[kept], position[kept]] = d[kept]
        filled = np.unique(r[position == C - 1])
        if filled.size:
            self._fix_thresholds(filled)
        binned = ~kept
        if binned.any():
            self._bin(r[binned], x[binned], d[binned])

    def _learn_leaf_models(self, X: np.ndarray, d: np.ndarray, leaf: np.ndarray) -> None:
        """The leaves' sums, models and (adaptive) errors, sample by sample per leaf: step
        ``r`` takes every leaf's ``r``-th sample at once (a leaf's samples in order)."""
        order = np.argsort(leaf, kind="stable")
        rank = group_rank(leaf[order])
        # The samples by rank, each rank's in leaf order: step r is one slice.
        by_rank = order[np.argsort(rank, kind="stable")]
        ends = np.cumsum(np.bincount(rank))
        X1 = np.concatenate([X, np.ones((len(X), 1))], axis=1)
        for start, end in zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True):
            i = by_rank[start:end]
            node, x, t = leaf[i], X1[i], d[i]
            w = self._w[node]
            mean = np.where(w > 0.0, self._s1[node] / np.where(w > 0.0, w, 1.0), 0.0)
            model = (self._coef[node] * x).sum(axis=1)
            if self.leaf_prediction == "adaptive":
                self._err_mean[node] = _SELECTOR_DECAY * self._err_mean[node] + (t - mean) ** 2
                self._err_model[node] = _SELECTOR_DECAY * self._err_model[node] + (t - model) ** 2
            step = _NLMS_STEP * (t - model) / (x * x).sum(axis=1)
            self._coef[node] += step[:, None] * x
            self._w[node] = w + 1.0
            self._s1[node] += t
            self._s2[node] += t * t

    def _fix_thresholds(self, records: np.ndarray) -> None:
        """Thresholds from the kept samples of these observers, then those samples binned."""
        C, J, S = self._kept, self._n_sub, _N_THRESHOLDS
        pool = self._pool
        kept_x = pool["kept_x"][records]
        ordered = np.sort(kept_x, axis=1)
        upper = np.clip(np.arange(1, S + 1) * C // (S + 1), 0, C - 1)
        lower = np.maximum(upper - 1, 0)
        edges = (ordered[:, lower] + ordered[:, upper]) / 2.0  # (k, S, J)
        pool["edges"][records] = edges.transpose(0, 2, 1)
        self._bin(np.repeat(records, C), kept_x.reshape(-1, J), pool["kept_y"][records].reshape(-1))

    def _bin(self, r: np.ndarray, x: np.ndarray, d: np.ndarray) -> None:
        """Add samples (their features' values ``x``, shifted targets ``d``) to the bins of
        observers ``r``, in order."""
        pool, J, S = self._pool, self._n_sub, _N_THRESHOLDS
        b = (x[:, :, None] > pool["edges"][r]).sum(axis=2)
        flat = (r[:, None] * J + np.arange(J)) * (S + 1) + b
        dd = np.broadcast_to(d[:, None], flat.shape)
        np.add.at(pool["w"].reshape(-1), flat, 1.0)
        np.add.at(pool["s1"].reshape(-1), flat, dd)
        np.add.at(pool["s2"].reshape(-1), flat, dd * dd)

    def _attempt(self, nodes: np.ndarray) -> None:
        """Split attempts at the due leaves among ``nodes``, all at once."""
        nodes = nodes[self._record[nodes] >= 0]
        nodes = nodes[self._w[nodes] - self._last[nodes] >= self.grace_period]
        if not nodes.size:
            return
        self._last[nodes] = self._w[nodes]
        pool, r, S = self._pool, self._record[nodes], _N_THRESHOLDS
        w, s1, s2 = (np.cumsum(pool[name][r], axis=2) for name in ("w", "s1", "s2"))
        lw, l1, l2 = w[..., :S], s1[..., :S], s2[..., :S]
        tw, t1, t2 = w[..., S:], s1[..., S:], s2[..., S:]
        rw, r1, r2 = tw - lw, t1 - l1, t2 - l2
        with np.errstate(divide="ignore", invalid="ignore"):
            merit = (
                _variance(tw, t1, t2)
                - lw / tw * _variance(lw, l1, l2)
                - rw / tw * _variance(rw, r1, r2)
            )
        merit = np.where((lw >= _MIN_SAMPLES_SPLIT) & (rw >= _MIN_SAMPLES_SPLIT), merit, -np.inf)
        best_t = merit.argmax(axis=2)  # the first best threshold
        per_feature = np.take_along_axis(merit, best_t[..., None], axis=2)[..., 0]
        # River sorts [no split, features...] stably by merit: the best is the last of the
        # ties, the runner-up the entry before it.
        L = len(nodes)
        cand = np.concatenate([np.full((L, 1), -np.inf), per_feature], axis=1)
        order = np.argsort(cand, axis=1, kind="stable")
        rows = np.arange(L)
        best, second = cand[rows, order[:, -1]], cand[rows, order[:, -2]]
        bound = np.sqrt(self._bound_numerator / (2.0 * self._w[nodes]))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(best > 0.0, second / np.where(best > 0.0, best, 1.0), 1.0)
        split = (best > 0.0) & ((ratio < 1.0 - bound) | (bound < self.tie_threshold))
        if not split.any():
            return
        nodes, rows = nodes[split], rows[split]
        fpos = order[rows, -1] - 1
        tpos = best_t[rows, fpos]
        self._grow(
            nodes,
            pool["feat"][r[rows], fpos],
            pool["edges"][r[rows], fpos, tpos],
            np.stack([lw, l1, l2])[:, rows, fpos, tpos],
            np.stack([rw, r1, r2])[:, rows, fpos, tpos],
        )

    def _grow(
        self,
        nodes: np.ndarray,
        feature: np.ndarray,
        thr: np.ndarray,
        lhs: np.ndarray,
        rhs: np.ndarray,
    ) -> None:
        """Turn these leaves (ascending) into split nodes while the tree has room for two
        more nodes; ``lhs``/``rhs`` ``(3, k)``: the children's weights and shifted sums."""
        fits = self._size + 2 * np.arange(len(nodes)) + 2 <= self.max_nodes
        self._free(nodes)
        nodes, feature, thr, lhs, rhs = (
            nodes[fits],
            feature[fits],
            thr[fits],
            lhs[:, fits],
            rhs[:, fits],
        )
        if not nodes.size:
            return
        left = self._size + 2 * np.arange(len(nodes))
        self._split[nodes], self._threshold[nodes], self._left[nodes] = feature + 1, thr, left
        children = np.stack([left, left + 1], axis=1).reshape(-1)
        for arr, pos in ((self._w, 0), (self._s1, 1), (self._s2, 2)):
            arr[nodes] = 0.0
            arr[children] = np.stack([lhs[pos], rhs[pos]], axis=1).reshape(-1)
        for arr in (self._coef, self._err_mean, self._err_model):
            arr[children] = np.repeat(arr[nodes], 2, axis=0)
            arr[nodes] = 0.0
        self._depth[children] = np.repeat(self._depth[nodes] + 1, 2)
        self._last[children] = self._w[children]
        self._size += 2 * len(nodes)
        self._activate(children)
        if self._size + 2 > self.max_nodes:
            # No room for another split: no leaf will split again.
            self._free(np.flatnonzero(self._record >= 0))

    # ------------------------------------------------------------------ prediction

    def predict_many(self, X: Any) -> np.ndarray:
        """Each sample's leaf prediction plus the shift: the leaf's mean ``sum / weight`` (0
        without weight), its model's ``coef . [x, 1]``, or (adaptive) the model unless the
        mean's faded error is the smaller."""
        X = check_matrix(X, self.n_features)
        if not self._finite:
            return np.full(len(X), np.nan)
        leaf = self._route(X)
        w = self._w[leaf]
        out = np.where(w > 0.0, self._s1[leaf] / np.where(w > 0.0, w, 1.0), 0.0)
        if self.leaf_prediction != "mean":
            X1 = np.concatenate([X, np.ones((len(X), 1))], axis=1)
            # Summed along each row's contiguous axis: a sample's value does not depend on
            # the other samples of the call.
            model = (self._coef[leaf] * X1).sum(axis=1)
            if self.leaf_prediction == "model":
                out = model
            else:
                out = np.where(self._err_mean[leaf] < self._err_model[leaf], out, model)
        return self._shift + out

    def loss_many(self, X: Any, y: Any) -> np.ndarray:
        """Per-sample squared error."""
        return self.test_many(X, y)[0]

    def test_many(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`loss_many` and :meth:`predict_many` of one batch, predicted once."""
        p = self.predict_many(X)
        e = p - check_vector(y, len(p))
        return e * e, p

    # ------------------------------------------------------------------ served vector

    @property
    def _served(self) -> tuple[str, ...]:
        """The node arrays the vector holds, in order (the module docstring's names)."""
        models = {"mean": (), "model": ("coef",), "adaptive": ("coef", "err_mean", "err_model")}
        return (*_SERVED, *models[self.leaf_prediction])

    def _served_arrays(self) -> list[np.ndarray]:
        own = {"split": "_split", "threshold": "_threshold", "left": "_left", "weight": "_w"}
        own |= {"sum": "_s1", "sum_sq": "_s2"}
        return [getattr(self, own.get(name, f"_{name}")) for name in self._served]

    def weights_vector(self) -> np.ndarray:
        """The node arrays (see the module docstring), then the shift."""
        parts = [a.astype(np.float64).reshape(-1) for a in self._served_arrays()]
        return np.concatenate([*parts, np.array([self._shift])])

    def set_weights_vector(self, v: np.ndarray, *, finite: bool = True) -> None:
        """Adopt a vector (a rollback): its nodes, every leaf that may split with a fresh
        observer (its grace period counting from now); an unchanged vector changes nothing.

        ``finite=False`` serves a vector as published: non-finite values are accepted and
        the model then predicts NaN (which the predictor refuses)."""
        M, F = self.max_nodes, self.n_features
        widths = [F + 1 if name == "coef" else 1 for name in self._served]
        size = sum(widths) * M + 1
        if finite:
            v = check_vector(v, size, "weights vector")
        else:
            v = np.asarray(v, dtype=np.float64)
            if v.shape != (size,):
                raise ValueError(f"weights vector must have shape ({size},), got {v.shape}")
            if not np.isfinite(v).all():
                self._finite = False
                return
        if self._finite and self.weights_vector().tobytes() == v.tobytes():
            return
        arrays, pos = {}, 0
        for name, width in zip(self._served, widths, strict=True):
            arrays[name] = v[pos : pos + M * width].reshape((M, width) if width > 1 else (M,))
            pos += M * width
        split, left, depth, tree = parse_nodes(
            arrays["split"], arrays["left"], arrays["threshold"], F
        )
        w, s1, s2 = arrays["weight"], arrays["sum"], arrays["sum_sq"]
        stats = (w != 0.0) | (s1 != 0.0) | (s2 != 0.0)
        if (w < 0.0).any() or (s2 < 0.0).any() or (stats & (w == 0.0)).any():
            raise ValueError(
                "weights vector: weights and sums of squares must be >= 0, sums need weight"
            )
        models = {
            name: arrays.get(name, np.zeros_like(old)) for name, old in self._models().items()
        }
        if (models["err_mean"] < 0.0).any() or (models["err_model"] < 0.0).any():
            raise ValueError("weights vector: the leaves' errors must be >= 0")
        held = stats | (models["coef"] != 0.0).any(axis=1)
        held |= (models["err_mean"] != 0.0) | (models["err_model"] != 0.0)
        if (held & ~(tree & (split == 0))).any():
            raise ValueError("weights vector: only the tree's leaves hold sums and models")
        self._finite = True
        self._adopt(split, arrays["threshold"], left, (w, s1, s2), models, depth, tree)
        self._shift = float(v[-1])

    def _models(self) -> dict[str, np.ndarray]:
        return {"coef": self._coef, "err_mean": self._err_mean, "err_model": self._err_model}

    def _adopt(
        self,
        split: np.ndarray,
        thr: np.ndarray,
        left: np.ndarray,
        sums: tuple[np.ndarray, np.ndarray, np.ndarray],
        models: Mapping[str, np.ndarray],
        depth: np.ndarray,
        tree: np.ndarray,
    ) -> None:
        """Become this tree (``tree`` marks its nodes): fresh observers for every leaf
        that may split, their grace periods counting from now."""
        self._free(np.flatnonzero(self._record >= 0))
        self._split, self._threshold, self._left = split.copy(), thr.copy(), left.copy()
        self._w, self._s1, self._s2 = (a.copy() for a in sums)
        self._coef = models["coef"].copy()
        self._err_mean, self._err_model = models["err_mean"].copy(), models["err_model"].copy()
        self._depth = depth.copy()
        self._last = self._w.copy()
        # New nodes go after the last one in use (a hole before it stays unused).
        self._size = int(np.flatnonzero(tree).max()) + 1
        self._activate(np.flatnonzero(tree & (split == 0)))

    # ------------------------------------------------------------------ model interface

    def spec(self) -> dict[str, Any]:
        """What a server needs besides the weights vector: every constructor argument but
        the seed."""
        params = {k: v for k, v in self._params().items() if k != "seed"}
        return {"type": self._type, **params}

    def with_columns(self, source: np.ndarray) -> Self:
        """This model over new feature columns (``source[j]``: the old column of new column
        ``j``, -1 for a new feature). Splits on kept features are renumbered; a node that
        splits on a dropped feature becomes a leaf holding its subtree's sums and a fresh
        model (the nodes are renumbered); a kept leaf's model keeps its kept features'
        coefficients (a new feature's: 0); every leaf's observer restarts."""
        source = np.asarray(source, dtype=np.int64)
        params = {
            **self._params(),
            "n_features": len(source),
            "max_features": min(self.max_features, len(source)),
        }
        moved = self._from_params(params)
        moved._rng.bit_generator.state = self._rng.bit_generator.state
        new_of = np.full(self.n_features, -1, dtype=np.int64)
        kept = source >= 0
        new_of[source[kept]] = np.flatnonzero(kept)
        M = self.max_nodes
        # Subtree sums bottom-up: children always have higher indices than parents.
        sub = np.stack([self._w, self._s1, self._s2], axis=1)
        for i in np.flatnonzero(self._split > 0)[::-1].tolist():
            sub[i] = sub[self._left[i]] + sub[self._left[i] + 1]
        split, thr = np.zeros(M, dtype=np.int64), np.zeros(M)
        left, sums = np.zeros(M, dtype=np.int64), np.zeros((M, 3))
        depth = np.zeros(M, dtype=np.int64)
        models = {name: np.zeros_like(arr) for name, arr in moved._models().items()}
        columns = np.append(source, self.n_features)  # the intercept stays last
        queue, size = [(0, 0, 0)], 1  # (old node, new node, depth)
        while queue:
            old, new, level = queue.pop(0)
            depth[new] = level
            f = int(self._split[old]) - 1
            if f < 0 or new_of[f] < 0:
                sums[new] = sub[old]
                if f < 0:
                    models["coef"][new] = np.where(columns >= 0, self._coef[old][columns], 0.0)
                    models["err_mean"][new] = self._err_mean[old]
                    models["err_model"][new] = self._err_model[old]
                continue
            split[new], thr[new], left[new] = new_of[f] + 1, self._threshold[old], size
            child = int(self._left[old])
            queue += [(child, size, level + 1), (child + 1, size + 1, level + 1)]
            size += 2
        moved._shift = self._shift
        moved._adopt(
            split,
            thr,
            left,
            (sums[:, 0], sums[:, 1], sums[:, 2]),
            models,
            depth,
            np.arange(M) < size,
        )
        moved._finite = self._finite
        return moved

    # ------------------------------------------------------------------ state

    _NODE_ARRAYS = (
        "split",
        "threshold",
        "left",
        "w",
        "s1",
        "s2",
        "coef",
        "err_mean",
        "err_model",
        "depth",
        "last",
        "record",
    )

    def _params(self) -> dict[str, Any]:
        return {
            "n_features": self.n_features,
            "grace_period": self.grace_period,
            "split_confidence": self.split_confidence,
            "tie_threshold": self.tie_threshold,
            "max_depth": self.max_depth,
            "max_nodes": self.max_nodes,
            "max_features": self.max_features,
            "leaf_prediction": self.leaf_prediction,
            "seed": self.seed,
        }

    def _state(self) -> tuple[Arrays, Meta]:
        self._pool, self._record = compact_records(self._pool, self._record)
        arrays = {f"node.{name}": getattr(self, f"_{name}") for name in self._NODE_ARRAYS}
        arrays.update({f"pool.{k}": a for k, a in self._pool.items() if k != "used"})
        arrays["shift"] = np.array([self._shift])
        meta = {"rng": self._rng.bit_generator.state, "finite": self._finite, "size": self._size}
        return arrays, meta

    def _load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        for name in self._NODE_ARRAYS:
            old = getattr(self, f"_{name}")
            new = check_array(arrays, f"node.{name}", old.shape).astype(old.dtype)
            setattr(self, f"_{name}", new)
        n = len(np.asarray(arrays["pool.seen"]))
        pool = self._new_pool(n)
        for name, arr in pool.items():
            if name != "used":
                pool[name] = check_array(arrays, f"pool.{name}", arr.shape).astype(arr.dtype)
        pool["used"][:] = True
        r = self._record
        if r.min() < -1 or r.max() >= n or len(np.unique(r[r >= 0])) != n:
            raise ValueError("corrupt tree state: observers do not match their leaves")
        feat = pool["feat"]
        if feat.size and ((feat < 0) | (feat >= self.n_features)).any():
            raise ValueError("corrupt tree state: feature indices out of range")
        self._pool = pool
        self._shift = float(check_array(arrays, "shift", (1,))[0])
        self._rng.bit_generator.state = meta["rng"]
        self._finite = bool(meta["finite"])
        self._size = int(meta["size"])
        if not 1 <= self._size <= self.max_nodes:
            raise ValueError("corrupt tree state: node count out of range")


CLASSES: tuple[type[Stateful], ...] = (HoeffdingTreeRegressor,)
