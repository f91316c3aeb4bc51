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

No transcendental function is computed here: numpy's SIMD ``log`` and ``exp`` may differ
in the last bit from a compiled loop's, so the log densities, entropies and the like stay
numpy (tests/unit/core/test_trees.py records the learnt states' hashes).

Only :mod:`flowlearn.core.trees` imports this module, on first use: importing the core or
the job's operators does not load numba (a Python worker's start-up is part of recovery).
The compiled code is cached on disk (``cache=True``) in ``NUMBA_CACHE_DIR``, by default a
folder of the temporary directory (the job's sources may be installed where the worker
cannot write): a worker compiles once per machine, the next ones load (:func:`warm_up`
does both, and says how long it took).
"""

from __future__ import annotations

import math
import os
import tempfile
import time

# Before numba reads its configuration.
os.environ.setdefault(
    "NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"flowlearn-numba-{os.getuid()}")
)

import numba
import numpy as np

__all__ = ["accumulate", "gaussian_terms", "numpy_sum", "route", "sum_terms", "warm_up"]

#: ``2.0 * math.pi`` as the numpy expression ``2.0 * math.pi * var`` computes it.
TWO_PI = 2.0 * math.pi


@numba.njit(cache=True, nogil=True)
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


@numba.njit(cache=True, nogil=True)
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


@numba.njit(cache=True, nogil=True)
def numpy_sum(a: np.ndarray) -> float:  # pragma: no cover - compiled
    """The sum of a contiguous 1-D array as numpy's ``a.sum()`` (and a reduction along a
    contiguous last axis) adds it, bit for bit: its pairwise summation (from -0.0; under 8
    values in order; then 8 running sums combined pairwise, the rest in order; over 128
    values the two halves, the first a multiple of 8 long)."""
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
    return numpy_sum(a[:half]) + numpy_sum(a[half:])


@numba.njit(cache=True, nogil=True)
def gaussian_terms(
    w: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
    shift: np.ndarray,
    q: np.ndarray,
    x: np.ndarray,
    arg: np.ndarray,
    dd: np.ndarray,
    ok: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Naive Bayes' Gaussian terms of values ``x[p]`` at NB rows ``q[p]`` (weights ``w``,
    shifted sums ``s1``, ``s2``, shifts), per class ``k`` and feature ``j`` (``[p, k,
    j]``): whether the class has a (ddof=1) variance (``ok``), ``2 pi var`` (whose log numpy
    takes) and ``d * d / (2 var)``, ``d`` the distance to the class's mean."""
    P, J = x.shape
    K = w.shape[1]
    for p in range(P):
        row = q[p]
        for k in range(K):
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


@numba.njit(cache=True, nogil=True)
def sum_terms(log_arg: np.ndarray, dd: np.ndarray, ok: np.ndarray, out: np.ndarray) -> None:
    """``out[p, k]``: the sum over ``j`` (numpy's, :func:`numpy_sum`) of the log densities
    ``-0.5 * log_arg - dd`` where ``ok``, 0 elsewhere."""
    P, K, J = dd.shape
    term = np.empty(J)
    for p in range(P):
        for k in range(K):
            for j in range(J):
                term[j] = -0.5 * log_arg[p, k, j] - dd[p, k, j] if ok[p, k, j] else 0.0
            out[p, k] = numpy_sum(term)


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
        np.zeros((1, 1)), cube, cube, np.zeros((1, 1)), i64, np.zeros((1, 1)), cube.copy(),
        cube.copy(), np.zeros((1, 1, 1), dtype=bool),
    )  # fmt: skip
    sum_terms(cube, cube, np.zeros((1, 1, 1), dtype=bool), np.zeros((1, 1)))
    return time.perf_counter() - start
