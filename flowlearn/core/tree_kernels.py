"""Compiled loops of the tree learners (numba): integer routing and the per-sample
accumulations that numpy would do with one ``ufunc.at`` call each.

A young model learns small batches, where numpy's fixed cost per call, times the calls per
tree and batch, is most of a forest's learning time. These loops do what the numpy calls
they replace did, in the same order and with the same IEEE operations (no fastmath, so no
reassociation and no fused multiply-add), so the learnt state is the same bits:

- routing compares values with thresholds (exact);
- an accumulation adds each sample's terms to its record in sample order, as
  ``np.add.at`` does, and takes minima and maxima as ``np.minimum.at`` and
  ``np.maximum.at`` do (NaN wins; on a tie the value already there stays).

- a sum that numpy took along an axis is taken as numpy's pairwise summation takes it
  (:func:`numpy_sum`).

The logs and exps stay numpy: its SIMD ``log`` and ``exp`` may differ in the last bit from a
compiled loop's. The exceptions are IEEE's exact ``sqrt`` and the normal CDF's ``erf``, which
River's and the numpy code's ``math.erf`` took from the C library, where numba takes it too.
tests/unit/core/test_trees.py records the learnt states' hashes, and checks the last two.

Only :mod:`flowlearn.core.trees` imports this module, on first use: importing the core or
the job's operators does not load numba (a Python worker's start-up is part of recovery).
The compiled code is cached on disk (``cache=True``) in ``NUMBA_CACHE_DIR``, by default a
folder of the temporary directory (the job's sources may be installed where the worker
cannot write): a worker compiles once per machine, the next ones load (:func:`warm_up`
does both, and says how long it took). Where that folder cannot be written, every process
compiles.
"""

from __future__ import annotations

import builtins
import math
import os
import sys
import tempfile
import time

# Before numba reads its configuration.
os.environ.setdefault(
    "NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"flowlearn-numba-{os.getuid()}")
)


def _cache_writable() -> bool:
    """Whether the cache folder can be written: numba refuses to compile a cached function
    without one, and compiling every process beats failing."""
    try:
        os.makedirs(os.environ["NUMBA_CACHE_DIR"], exist_ok=True)
    except OSError:
        return False
    return os.access(os.environ["NUMBA_CACHE_DIR"], os.W_OK)


def _print_reachable() -> None:
    """numba's import registers ``print`` under the module its ``__module__`` names, and
    fails when that module has no such name. PyFlink's Python worker replaces
    ``builtins.print`` with a bound method of an object of
    ``pyflink.fn_execution.beam.beam_sdk_worker_main``, which has none: the first tree in a
    job on a cluster failed its task with "has no attribute 'print'" on every restart. (A
    MiniCluster runs its Python code in the client's process, where print is Python's.)"""
    current = builtins.print
    module = sys.modules.get(getattr(current, "__module__", None) or "")
    name = getattr(current, "__name__", "print")
    if module is not None and getattr(module, name, None) is not current:
        setattr(module, name, current)


_print_reachable()

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba.core import caching  # noqa: E402

_CACHE = _cache_writable()


class _WhereverTheSourceIs(caching.UserProvidedCacheLocator):
    """numba's cache locator for this module's loops, one folder of ``NUMBA_CACHE_DIR``
    wherever the module lies. numba's own puts the source's folder in the cache path, and
    PyFlink unpacks the job's sources into a new folder for each task it deploys: every
    restart compiled again (seconds, on the first batch of a tree, in the middle of a
    recovery) and left another folder behind. Entries are still checked against the
    source's content hash (numba's stamp), so another version of this file compiles anew."""

    def __init__(self, py_func: object, py_file: str) -> None:
        super().__init__(py_func, py_file)
        self._cache_path = os.path.join(os.environ["NUMBA_CACHE_DIR"], "flowlearn-tree-kernels")

    @classmethod
    def from_function(cls, py_func: object, py_file: str) -> caching._CacheLocator | None:
        if os.path.abspath(py_file) != os.path.abspath(__file__):
            return None  # another module's function: numba's own locators
        return super().from_function(py_func, py_file)


# First in line, before the decorators below look for a locator (numba's own come after,
# and NUMBA_CACHE_LOCATOR_CLASSES, when a user sets it, replaces the list).
caching.CacheImpl._locator_classes.insert(0, _WhereverTheSourceIs)

__all__ = [
    "accumulate",
    "attempts",
    "gaussian_terms",
    "grow",
    "leaf_frequencies",
    "merits",
    "mix_votes",
    "numpy_sum",
    "pair_inputs",
    "pairs",
    "put_rows",
    "route",
    "split_sides",
    "sum_terms",
    "tally",
    "warm_up",
]

#: ``2.0 * math.pi`` as the numpy expression ``2.0 * math.pi * var`` computes it.
TWO_PI = 2.0 * math.pi
#: ``math.sqrt(2.0)``, as the split evaluation scales a distance to a class's mean.
SQRT2 = math.sqrt(2.0)


@numba.njit(cache=_CACHE, nogil=True, error_model="numpy")
def route(
    X: np.ndarray,
    split: np.ndarray,
    threshold: np.ndarray,
    left: np.ndarray,
    base: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """``out[j, i]``: the node (within its tree) sample ``X[i]`` reaches in the tree whose
    nodes start at ``base[j]`` of the flat node arrays (``split``: feature + 1, 0 at a
    leaf; ``x[feature] > threshold`` goes right, to ``left + 1``)."""
    for j in range(len(base)):
        b = base[j]
        for i in range(X.shape[0]):
            node = 0
            f = split[b]
            while f > 0:
                node = left[b + node] + (1 if X[i, f - 1] > threshold[b + node] else 0)
                f = split[b + node]
            out[j, i] = node


@numba.njit(cache=_CACHE, nogil=True, error_model="numpy")
def pairs(
    W: np.ndarray,
    node: np.ndarray,
    y: np.ndarray,
    record: np.ndarray,
    nbs: np.ndarray,
    rowid: np.ndarray,
    M: int,
    g: np.ndarray,
    w: np.ndarray,
    c: np.ndarray,
    i: np.ndarray,
    r: np.ndarray,
    q: np.ndarray,
    key: np.ndarray,
) -> int:  # pragma: no cover - compiled
    """The pairs (slot ``j``, sample ``i``) with weight ``W[j, i] > 0``, slot-major (as
    ``np.nonzero``): their flat leaf ``g = node[j, i]``, weight, class ``y[i]``, sample,
    observer record, Gaussian row ``q`` (NB, ``rowid`` with columns: the leaf's row in its
    slot's table, else its record) and (NB) that table entry ``key``. Returns how many."""
    S, n = W.shape
    H = rowid.shape[1]
    P = 0
    for j in range(S):
        for ii in range(n):
            wt = W[j, ii]
            if wt > 0.0:
                leaf = node[j, ii]
                g[P], w[P], c[P], i[P] = leaf, wt, y[ii], ii
                r[P] = record[leaf]
                if H > 0:
                    slot, h = leaf // M, nbs[leaf]
                    key[P] = slot * H + h
                    q[P] = rowid[slot, h]
                else:
                    q[P] = r[P]
                P += 1
    return P


@numba.njit(cache=_CACHE, nogil=True, error_model="numpy")
def pair_inputs(
    X: np.ndarray,
    i: np.ndarray,
    q: np.ndarray,
    feat: np.ndarray,
    counts: np.ndarray,
    g: np.ndarray,
    c: np.ndarray,
    x: np.ndarray,
    cnt: np.ndarray,
    empty: np.ndarray,
    mc_right: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """For pairs ``p``: the sample's values of its row's features ``x[p]`` (0 without a
    row), its leaf's class counts ``cnt[p]`` (``counts``: ``(nodes, classes)``), whether
    they are empty (numpy's sum is 0) and whether the majority class (their first argmax)
    or an empty leaf is right, ``mc_right``."""
    P, J = x.shape
    K = counts.shape[1]
    for p in range(P):
        row = q[p]
        for j in range(J):
            x[p, j] = X[i[p], feat[row, j]] if row >= 0 else 0.0
        best = 0
        for k in range(K):
            cnt[p, k] = counts[g[p], k]
            if cnt[p, k] > cnt[p, best]:
                best = k
        empty[p] = numpy_sum(cnt[p]) == 0.0
        mc_right[p] = empty[p] or best == c[p]


@numba.njit(cache=_CACHE, nogil=True, error_model="numpy")
def accumulate(
    counts: np.ndarray,
    cell: np.ndarray,
    w: np.ndarray,
    c: np.ndarray,
    x: np.ndarray,
    q: np.ndarray,
    gw: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
    shift: np.ndarray,
    r: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    mc: np.ndarray,
    mc_right: np.ndarray,
    nb: np.ndarray,
    nb_right: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Learn pairs (leaf, sample) ``p`` of weight ``w[p]`` and class ``c[p]``, in order:

    - ``counts[cell[p]] += w[p]`` (the flat class counts);
    - Gaussian row ``q[p]`` (none when < 0) learns ``x[p]`` (its features' values): a row
      without weight takes them as its shift; the weight, the sums of ``d = x - shift``
      weighted, ``w * d``, and of ``(w * d) * d``, per feature and class;
    - observer record ``r[p]`` (none when < 0): the min and max of ``x[p]`` per feature and
      class;
    - the NBA counters (when ``mc`` has rows): ``mc[q[p]] += w[p]`` where ``mc_right[p]``,
      ``nb[q[p]]`` likewise.
    """
    P, J = x.shape
    K = gw.shape[1]
    for p in range(P):
        counts[cell[p]] += w[p]
    if len(mc):
        for p in range(P):
            if mc_right[p]:
                mc[q[p]] += w[p]
        for p in range(P):
            if nb_right[p]:
                nb[q[p]] += w[p]
    for p in range(P):
        row, k, wp = q[p], c[p], w[p]
        if row < 0:
            continue
        fresh = True
        for kk in range(K):
            if gw[row, kk] != 0.0:
                fresh = False
        if fresh:
            for j in range(J):
                shift[row, j] = x[p, j]
        for j in range(J):
            d = x[p, j] - shift[row, j]
            wd = wp * d
            s1[row, j, k] += wd
            s2[row, j, k] += wd * d
        gw[row, k] += wp
    for p in range(P):
        rec, k = r[p], c[p]
        if rec < 0:
            continue
        for j in range(J):
            v = x[p, j]
            a = lo[rec, j, k]
            if not (a <= v or a != a):
                lo[rec, j, k] = v
            b = hi[rec, j, k]
            if not (b >= v or b != b):
                hi[rec, j, k] = v


@numba.njit(cache=_CACHE, nogil=True, error_model="numpy")
def leaf_frequencies(
    counts: np.ndarray,
    slots: np.ndarray,
    leaf: np.ndarray,
    rowid: np.ndarray,
    nbs: np.ndarray,
    mc: np.ndarray,
    nb: np.ndarray,
    p: np.ndarray,
    q: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Each sample's class frequencies at its leaf ``leaf[j, i]`` of slot ``slots[j]``
    (``counts[slot, node]`` over their sum, numpy's; uniform when empty) in ``p[j, i]``,
    and in ``q[j, i]`` the leaf's NB row when it predicts naive Bayes instead (it has
    counts, a row, and an NB counter >= its MC counter; ``rowid`` without columns: no NB
    leaves), -1 otherwise."""
    S, n = leaf.shape
    K = counts.shape[2]
    with_nb = rowid.shape[1] > 0
    for j in range(S):
        slot = slots[j]
        for i in range(n):
            node = leaf[j, i]
            total = numpy_sum(counts[slot, node])
            for k in range(K):
                p[j, i, k] = counts[slot, node, k] / total if total > 0.0 else 1.0 / K
            row = -1
            if with_nb and total > 0.0:
                row = rowid[slot, nbs[slot, node]]
                if row >= 0 and not nb[row] >= mc[row]:
                    row = -1
            q[j, i] = row


@numba.njit(cache=_CACHE, nogil=True, error_model="numpy")
def numpy_sum(a: np.ndarray) -> float:  # pragma: no cover - compiled
    """The sum of a contiguous 1-D array as numpy's ``a.sum()`` (and a reduction along a
    contiguous last axis) adds it, bit for bit: 0 (the identity) plus its pairwise sum."""
    return 0.0 + _pairwise_sum(a)


@numba.njit(cache=_CACHE, nogil=True, error_model="numpy")
def _pairwise_sum(a: np.ndarray) -> float:  # pragma: no cover - compiled
    """numpy's pairwise summation: under 8 values in order from -0.0; then 8 running sums
    combined pairwise, the rest in order; over 128 values the sums of the two halves, the
    first a multiple of 8 long."""
    n = len(a)
    if n < 8:
        res = -0.0
        for i in range(n):
            res += a[i]
        return res
    if n <= 128:
        r0, r1, r2, r3, r4, r5, r6, r7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
        i = 8
        while i < n - n % 8:
            r0 += a[i]
            r1 += a[i + 1]
            r2 += a[i + 2]
            r3 += a[i + 3]
            r4 += a[i + 4]
            r5 += a[i + 5]
            r6 += a[i + 6]
            r7 += a[i + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += a[i]
            i += 1
        return res
    half = n // 2
    half -= half % 8
    return _pairwise_sum(a[:half]) + _pairwise_sum(a[half:])


@numba.njit(cache=_CACHE, nogil=True, error_model="numpy")
def gaussian_terms(
    w: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
    shift: np.ndarray,
    q: np.ndarray,
    x: np.ndarray,
    cnt: np.ndarray,
    arg: np.ndarray,
    dd: np.ndarray,
    ok: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Naive Bayes' terms of values ``x[p]`` at NB rows ``q[p]`` (weights ``w``, shifted
    sums ``s1``, ``s2``, shifts) with class counts ``cnt[p]``, per class ``k`` and feature
    ``j`` (``[p, k, j]``): whether the class has a (ddof=1) variance (``ok``), ``2 pi var``
    (whose log numpy takes) and ``d * d / (2 var)``, ``d`` the distance to the class's
    mean; and at ``arg[p, k, J]`` the class's share of the counts (its log is the prior)."""
    P, J = x.shape
    K = w.shape[1]
    for p in range(P):
        row = q[p]
        total = numpy_sum(cnt[p])
        for k in range(K):
            arg[p, k, J] = cnt[p, k] / (total if total > 0.0 else 1.0)
            wk = w[row, k]
            good = wk > 1.0
            safe = wk if good else 2.0
            for j in range(J):
                s = s1[row, j, k]
                var = (s2[row, j, k] - s * s / safe) / (safe - 1.0)
                fine = good and var > 0.0
                if not fine:
                    var = 1.0
                d = x[p, j] - (shift[row, j] + s / safe)
                arg[p, k, j] = TWO_PI * var
                dd[p, k, j] = d * d / (2.0 * var)
                ok[p, k, j] = fine


@numba.njit(cache=_CACHE, nogil=True, error_model="numpy")
def sum_terms(log_arg: np.ndarray, dd: np.ndarray, ok: np.ndarray, out: np.ndarray) -> None:
    """``out[p, k]``: the log prior ``log_arg[p, k, J]`` plus the sum over ``j`` (numpy's,
    :func:`numpy_sum`) of the log densities ``-0.5 * log_arg - dd`` where ``ok``, 0
    elsewhere."""
    P, K, J = dd.shape
    term = np.empty(J)
    for p in range(P):
        for k in range(K):
            for j in range(J):
                term[j] = -0.5 * log_arg[p, k, j] - dd[p, k, j] if ok[p, k, j] else 0.0
            out[p, k] = log_arg[p, k, J] + numpy_sum(term)


@numba.njit(cache=_CACHE, nogil=True, error_model="numpy")
def attempts(
    nodes: np.ndarray,
    record: np.ndarray,
    counts: np.ndarray,
    last: np.ndarray,
    grace: float,
    out: np.ndarray,
    cnt: np.ndarray,
    seen: np.ndarray,
) -> int:  # pragma: no cover - compiled
    """The leaves among ``nodes`` (flat ids) that attempt a split now: those with observers
    (``record >= 0``) whose weight (numpy's sum of their class counts) grew by ``grace``
    since ``last``, which is set to it; of those, the ones with two classes or more
    (a pure leaf has nothing to split) go to ``out``, their counts and weight to ``cnt``
    and ``seen``. Returns how many."""
    K = counts.shape[1]
    n = 0
    for node in nodes:
        if record[node] < 0:
            continue
        weight = numpy_sum(counts[node])
        if not weight - last[node] >= grace:
            continue
        last[node] = weight
        classes = 0
        for k in range(K):
            if counts[node, k] > 0.0:
                classes += 1
        if classes >= 2:
            out[n] = node
            cnt[n] = counts[node]
            seen[n] = weight
            n += 1
    return n


@numba.njit(cache=_CACHE, nogil=True, error_model="numpy")
def split_sides(
    lo_k: np.ndarray,
    hi_k: np.ndarray,
    w: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
    shift: np.ndarray,
    thr: np.ndarray,
    valid: np.ndarray,
    sides: np.ndarray,
    weights: np.ndarray,
    positive: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """River's Gaussian splitter for leaves ``leaf`` (observer min and max ``lo_k``,
    ``hi_k`` per feature and class; NB weights, shifted sums, shifts): the thresholds
    ``thr[leaf, j, s]`` evenly between the feature's min and max over the classes with
    weight (``valid``: strictly inside); the weight of each class left of each threshold,
    ``sides[0, leaf, j, s, k]``: all of it above the class's max, none below its min (a
    class with a range), otherwise its Gaussian's normal CDF (``math.erf``: CPython's is
    the C library's, which numba calls too); right of it, ``sides[1]``; each side's total
    ``weights`` (numpy's sum over the classes); ``positive``: the sides, non-positive
    values replaced by 1 (the argument of the entropies' log2)."""
    L, J, K = lo_k.shape
    S = thr.shape[2]
    for leaf in range(L):
        for j in range(J):
            # The min and max over the classes with weight (NaN wins, as numpy's).
            lo = np.inf
            hi = -np.inf
            for k in range(K):
                if w[leaf, k] > 0.0:
                    a, b = lo_k[leaf, j, k], hi_k[leaf, j, k]
                    if a < lo or a != a:
                        lo = a if lo == lo else lo
                    if b > hi or b != b:
                        hi = b if hi == hi else hi
            step = (hi - lo) / (S + 1.0)
            for s in range(S):
                t = lo + step * (s + 1.0)
                thr[leaf, j, s] = t
                valid[leaf, j, s] = lo < t and t < hi
            for k in range(K):
                wk = w[leaf, k]
                present = wk > 0.0
                safe = wk if present else 1.0
                mean = shift[leaf, j] + s1[leaf, j, k] / safe
                several = wk > 1.0
                var = 0.0
                if several:
                    v = s2[leaf, j, k] - s1[leaf, j, k] * s1[leaf, j, k] / safe
                    var = v if (v >= 0.0 or v != v) else 0.0
                sigma = np.sqrt(var / (wk - 1.0 if several else 1.0))
                ranged = lo_k[leaf, j, k] <= hi_k[leaf, j, k]
                for s in range(S):
                    t = thr[leaf, j, s]
                    below = t < lo_k[leaf, j, k] and ranged
                    above = t >= hi_k[leaf, j, k] and ranged
                    left = wk if above else 0.0
                    if not below and not above and valid[leaf, j, s] and present and sigma > 0.0:
                        z = (t - mean) / (sigma * SQRT2)
                        left = 0.5 * (1.0 + math.erf(z)) * wk
                    sides[0, leaf, j, s, k] = left
                    sides[1, leaf, j, s, k] = wk - left
            for s in range(S):
                for side in range(2):
                    weights[side, leaf, j, s] = numpy_sum(sides[side, leaf, j, s])
                    for k in range(K):
                        v = sides[side, leaf, j, s, k]
                        positive[side, leaf, j, s, k] = v if v > 0.0 else 1.0


@numba.njit(cache=_CACHE, nogil=True, error_model="numpy")
def merits(
    sides: np.ndarray,
    log2_sides: np.ndarray,
    weights: np.ndarray,
    log2_weights: np.ndarray,
    valid: np.ndarray,
    parent: np.ndarray,
    min_branch: float,
    merit: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Information gain of each candidate split ``merit[leaf, j, s]``: the leaf's entropy
    ``parent[leaf]`` minus the sides' entropies weighted by their weights (entropies as
    River computes them, from the logs numpy took), ``-inf`` for a threshold not strictly
    inside or sending at most ``min_branch`` of the weight down a side."""
    _, L, J, S, K = sides.shape
    plogp = np.empty(K)
    ent = np.empty(2)
    for leaf in range(L):
        for j in range(J):
            for s in range(S):
                for side in range(2):
                    for k in range(K):
                        d = sides[side, leaf, j, s, k]
                        plogp[k] = d * log2_sides[side, leaf, j, s, k] if d > 0.0 else 0.0
                    tw = weights[side, leaf, j, s]
                    pl = numpy_sum(plogp)
                    ent[side] = (tw * log2_weights[side, leaf, j, s] - pl) / tw if tw > 0.0 else 0.0
                lw, rw = weights[0, leaf, j, s], weights[1, leaf, j, s]
                total = lw + rw
                branches = (1 if lw / total > min_branch else 0) + (
                    1 if rw / total > min_branch else 0
                )
                post = (lw * ent[0] + rw * ent[1]) / total
                if valid[leaf, j, s] and branches >= 2:
                    merit[leaf, j, s] = parent[leaf] - post
                else:
                    merit[leaf, j, s] = -np.inf


@numba.njit(cache=_CACHE, nogil=True, error_model="numpy")
def grow(
    nodes: np.ndarray,
    feature: np.ndarray,
    thr: np.ndarray,
    lhs: np.ndarray,
    rhs: np.ndarray,
    size: np.ndarray,
    split: np.ndarray,
    threshold: np.ndarray,
    left: np.ndarray,
    counts: np.ndarray,
    depth: np.ndarray,
    last: np.ndarray,
    nbs: np.ndarray,
    fits: np.ndarray,
    cslot: np.ndarray,
    children: np.ndarray,
) -> int:  # pragma: no cover - compiled
    """Turn leaves ``nodes`` (flat ids, ascending) into split nodes (feature, threshold),
    in order, while their tree (``size`` nodes) has room for two more: their children are
    the next two nodes, holding the class weights ``lhs`` and ``rhs`` (their ``last``: the
    weights' numpy sum), one level deeper; the left child takes its parent's NB row, the
    right one ``r`` row ``(r + 1) // 2``. ``fits``: which did; ``cslot``, ``children``: the
    children, two per split. Returns how many children."""
    M, K = split.shape[1], counts.shape[2]
    n = 0
    rank, prev = 0, -1
    first = size.copy()
    for p in range(len(nodes)):
        slot, node = nodes[p] // M, nodes[p] % M
        rank = rank + 1 if slot == prev else 0
        prev = slot
        lc = first[slot] + 2 * rank
        fits[p] = lc + 2 <= M
        if not fits[p]:
            continue
        split[slot, node] = feature[p] + 1
        threshold[slot, node] = thr[p]
        left[slot, node] = lc
        for k in range(K):
            counts[slot, node, k] = 0.0
            counts[slot, lc, k] = lhs[p, k]
            counts[slot, lc + 1, k] = rhs[p, k]
        for c in (lc, lc + 1):
            depth[slot, c] = depth[slot, node] + 1
            last[slot, c] = numpy_sum(counts[slot, c])
            cslot[n], children[n] = slot, c
            n += 1
        nbs[slot, lc] = nbs[slot, node]
        nbs[slot, lc + 1] = (lc + 2) // 2
        size[slot] += 2
    return n


@numba.njit(cache=_CACHE, nogil=True, error_model="numpy")
def _put(
    blocks: np.ndarray, rowid: np.ndarray, values: np.ndarray, first: int
) -> None:  # pragma: no cover - compiled
    T, H = rowid.shape
    n = values.shape[1]
    for t in range(T):
        for h in range(H):
            r = rowid[t, h]
            col = first + h * n
            for c in range(n):
                blocks[t, col + c] = values[r, c] if r >= 0 else 0.0


@numba.njit(cache=_CACHE, nogil=True, error_model="numpy")
def put_rows(
    blocks: np.ndarray,
    rowid: np.ndarray,
    first: np.ndarray,
    w: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
    shift: np.ndarray,
    feat: np.ndarray,
    mc: np.ndarray,
    nb: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Tree ``t``'s NB rows (row ``rowid[t, h]`` of each array, reshaped to ``(rows, n)``;
    none when < 0: zeros) in ``blocks[t]``: array ``a``'s row ``h`` at columns
    ``first[a] + h * n`` onwards (``first[4]`` < 0: no feature indices)."""
    _put(blocks, rowid, w, first[0])
    _put(blocks, rowid, s1, first[1])
    _put(blocks, rowid, s2, first[2])
    _put(blocks, rowid, shift, first[3])
    if first[4] >= 0:
        _put(blocks, rowid, feat, first[4])
    _put(blocks, rowid, mc, first[5])
    _put(blocks, rowid, nb, first[6])


@numba.njit(cache=_CACHE, nogil=True, error_model="numpy")
def tally(
    errors: np.ndarray,
    source: np.ndarray,
    start: int,
    end: int,
    n_predicted: np.ndarray,
    n_correct: np.ndarray,
    pending: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Tree ``t``'s errors on samples ``start`` to ``end`` (``errors[source[t], t]``, 0/1)
    added to its vote counters (predicted, correct) and to its two detectors' pending block
    (``pending[t]`` and ``pending[T + t]``): whole numbers, exact in any order."""
    T = len(source)
    for t in range(T):
        wrong = 0
        for i in range(start, end):
            if errors[source[t], t, i]:
                wrong += 1
        n_predicted[t] += end - start
        n_correct[t] += (end - start) - wrong
        pending[t] += wrong
        pending[T + t] += wrong


@numba.njit(cache=_CACHE, nogil=True, error_model="numpy")
def mix_votes(share: np.ndarray, p: np.ndarray, out: np.ndarray) -> None:
    """``out``: the trees' probabilities ``p[t]`` weighted by ``share[t]``, added tree by
    tree as numpy's ``out = share[0] * p[0]; out += share[t] * p[t]`` (each product
    rounded, then the sum: no fused multiply-add)."""
    T, n, K = p.shape
    for i in range(n):
        for k in range(K):
            acc = share[0] * p[0, i, k]
            for t in range(1, T):
                acc = acc + share[t] * p[t, i, k]
            out[i, k] = acc


def warm_up() -> float:
    """Compile (or load from the cache) every kernel for the types the trees pass; returns
    the seconds it took."""
    start = time.perf_counter()
    i64, f64 = np.zeros(1, dtype=np.int64), np.zeros(1)
    route(np.zeros((1, 1)), i64, f64, i64, i64, np.zeros((1, 1), dtype=np.int64))
    flags = np.zeros(1, dtype=bool)
    grid = np.zeros((1, 1, 1))
    accumulate(
        f64, i64, f64, i64, np.zeros((1, 1)), i64, np.zeros((1, 1)), grid, grid.copy(),
        np.zeros((1, 1)), i64, grid.copy(), grid.copy(), f64.copy(), flags, f64.copy(), flags,
    )  # fmt: skip
    cube = np.zeros((1, 1, 1))
    gaussian_terms(
        np.zeros((1, 1)), cube, cube, np.zeros((1, 1)), i64, np.zeros((1, 1)), np.zeros((1, 1)),
        np.zeros((1, 1, 2)), cube.copy(), np.zeros((1, 1, 1), dtype=bool),
    )  # fmt: skip
    sum_terms(np.zeros((1, 1, 2)), cube, np.zeros((1, 1, 1), dtype=bool), np.zeros((1, 1)))
    attempts(i64, i64, np.zeros((1, 1)), f64.copy(), 1.0, i64.copy(), np.zeros((1, 1)), f64.copy())
    one, table2 = np.zeros((1, 1, 1)), np.zeros((1, 1))
    grow(
        i64, i64, f64, table2, table2, i64.copy(), np.zeros((1, 1), dtype=np.int64), table2,
        np.zeros((1, 1), dtype=np.int64), one, np.zeros((1, 1), dtype=np.int64), table2,
        np.zeros((1, 1), dtype=np.int64), flags.copy(), i64.copy(), i64.copy(),
    )  # fmt: skip
    tally(np.zeros((1, 1, 1), dtype=bool), i64, 0, 1, f64.copy(), f64.copy(), f64.copy())
    mix_votes(f64, np.zeros((1, 1, 1)), np.zeros((1, 1)))
    # A split attempt: one leaf, one feature, one threshold, one class.
    sides, table = np.zeros((2, 1, 1, 1, 1)), np.zeros((1, 1))
    grid3, flags3 = np.zeros((1, 1, 1)), np.zeros((1, 1, 1), dtype=bool)
    weights, positive = np.zeros((2, 1, 1, 1)), sides.copy()
    split_sides(
        cube, cube.copy(), table, cube.copy(), cube.copy(), table.copy(), grid3, flags3,
        sides, weights, positive,
    )  # fmt: skip
    merits(sides, positive, weights, weights.copy(), flags3, f64, 0.01, grid3.copy())
    nodes = np.zeros((1, 1), dtype=np.int64)
    leaf_frequencies(cube, i64, nodes, nodes, nodes, f64, f64, cube.copy(), nodes.copy())
    nodes1 = np.zeros(1, dtype=np.int64)
    pairs(
        np.zeros((1, 1)), np.zeros((1, 1), dtype=np.int64), i64, i64, i64,
        np.zeros((1, 1), dtype=np.int64), 1, nodes1, f64.copy(), nodes1.copy(), nodes1.copy(),
        nodes1.copy(), nodes1.copy(), nodes1.copy(),
    )  # fmt: skip
    pair_inputs(
        np.zeros((1, 1)), i64, i64, np.zeros((1, 1), dtype=np.int64), np.zeros((1, 1)), i64,
        i64, np.zeros((1, 1)), np.zeros((1, 1)), flags.copy(), flags.copy(),
    )  # fmt: skip
    # A served vector's NB arrays.
    rowid = np.zeros((1, 1), dtype=np.int64)
    rows = [table] * 4 + [rowid] + [table] * 2
    put_rows(table, rowid, np.zeros(7, dtype=np.int64), *rows)
    return time.perf_counter() - start
