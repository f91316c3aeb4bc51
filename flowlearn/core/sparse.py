"""Sparse rows: what a hashed model's features are from the parser to the weights.

A hashed model has ``n_features`` columns (2**18, say) and a record sets a handful of them.
Held dense, one record costs ``8 x n_features`` bytes (2 MiB at 2**18) in every row, state
and matrix it passes through; held sparse, 12 bytes per feature it sets. :class:`SparseRows`
is that batch (compressed sparse rows: per-row offsets, column indices, values), and this
module holds the operations a hashed model needs on it: products with a weight matrix both
ways (scores, gradients), row selection and concatenation (buffers, holdout, replay).

Each row's indices are strictly increasing and its values finite; a value may be zero. The
operations are deterministic and each row's result depends on that row alone (a score sums
its row's products in column order), so a sample scores the same bits in any batch: in the
trainer's test step and in the predictor.

>>> X = SparseRows.from_dense(np.array([[0.0, 2.0, 0.0], [1.0, 0.0, -1.0]]))
>>> X.offsets.tolist(), X.indices.tolist(), X.values.tolist()
([0, 1, 3], [1, 0, 2], [2.0, 1.0, -1.0])
>>> X.dot(np.array([1.0, 10.0, 100.0])).tolist()
[20.0, -99.0]
>>> X.dense().tolist() == [[0.0, 2.0, 0.0], [1.0, 0.0, -1.0]]
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from flowlearn.core.validation import check_matrix

__all__ = [
    "INDEX_DTYPE",
    "Rows",
    "SparseRows",
    "as_dense",
    "bin_sums",
    "check_rows",
    "concat_rows",
    "from_fields",
    "leading_columns",
    "replace_rows",
    "to_fields",
    "with_columns",
]

#: Column indices are 32-bit: a hashed model of 2**31 columns would need 16 GiB of weights.
INDEX_DTYPE = np.int32
_MAX_WIDTH = int(np.iinfo(INDEX_DTYPE).max)


class SparseRows:
    """``n`` rows of ``width`` columns, compressed: row ``i``'s columns are
    ``indices[offsets[i]:offsets[i + 1]]`` (int32, strictly increasing) and its values
    ``values[offsets[i]:offsets[i + 1]]`` (float64, finite); every other column is 0.

    >>> X = SparseRows(np.array([0, 2, 2]), np.array([0, 3]), np.array([0.5, -1.0]), width=4)
    >>> len(X), X.shape, X.nnz, X[1:].dense().tolist()
    (2, (2, 4), 2, [[0.0, 0.0, 0.0, 0.0]])
    """

    __slots__ = ("indices", "offsets", "values", "width")

    #: A batch of rows is two-dimensional, as a dense matrix is (the checks that read
    #: ``ndim`` and ``shape`` take either).
    ndim = 2

    def __init__(self, offsets: Any, indices: Any, values: Any, width: int) -> None:
        self.width = int(width)
        if not 1 <= self.width <= _MAX_WIDTH:
            raise ValueError(f"sparse rows have 1 to {_MAX_WIDTH} columns, got {width}")
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=INDEX_DTYPE)
        self.values = np.asarray(values, dtype=np.float64)
        o, idx = self.offsets, self.indices
        if (
            o.ndim != 1
            or o.size < 1
            or o[0] != 0
            or idx.ndim != 1
            or self.values.shape != idx.shape
        ):
            raise ValueError("sparse rows: offsets must start at 0, one index per value")
        if o[-1] != idx.size or (o.size > 1 and np.any(np.diff(o) < 0)):
            raise ValueError(f"sparse rows: offsets must rise to the {idx.size} values")
        if idx.size:
            if idx.min() < 0 or idx.max() >= self.width:
                raise ValueError(f"sparse rows: a column index outside 0..{self.width - 1}")
            # Within a row the indices rise; a fall is allowed only where a row starts.
            falls = np.flatnonzero(np.diff(idx.astype(np.int64)) <= 0) + 1
            if falls.size and not np.isin(falls, o).all():
                raise ValueError("sparse rows: a row's column indices must strictly increase")
            if not np.isfinite(self.values).all():
                raise ValueError("sparse rows: values must be finite")

    # ------------------------------------------------------------------ construction

    @classmethod
    def empty(cls, width: int) -> Self:
        """No rows."""
        return cls(np.zeros(1, np.int64), np.zeros(0, INDEX_DTYPE), np.zeros(0), width)

    @classmethod
    def from_dense(cls, X: Any) -> Self:
        """The non-zero entries of a dense matrix (finite values)."""
        arr = np.asarray(X, dtype=np.float64)
        if arr.ndim != 2:
            raise ValueError(f"expected a matrix, got shape {arr.shape}")
        rows, cols = np.nonzero(arr)
        offsets = np.zeros(len(arr) + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=len(arr)), out=offsets[1:])
        return cls(offsets, cols, arr[rows, cols], max(arr.shape[1], 1))

    def _with(self, offsets: np.ndarray, indices: np.ndarray, values: np.ndarray) -> Self:
        """Rows built from parts known valid (no checks again)."""
        out = object.__new__(type(self))
        out.offsets, out.indices, out.values, out.width = offsets, indices, values, self.width
        return out

    def with_values(self, values: np.ndarray) -> Self:
        """The same entries with other values (a transform of each value)."""
        return self._with(self.offsets, self.indices, values)

    # ------------------------------------------------------------------ shape and rows

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.width

    @property
    def nnz(self) -> int:
        """Stored entries."""
        return int(self.indices.size)

    @property
    def nbytes(self) -> int:
        """Bytes of the three arrays."""
        return int(self.offsets.nbytes + self.indices.nbytes + self.values.nbytes)

    def row_ids(self) -> np.ndarray:
        """The row of each stored entry."""
        return np.repeat(np.arange(len(self)), np.diff(self.offsets))

    def __getitem__(self, rows: slice | np.ndarray | Sequence[int]) -> Self:
        """The rows of a slice (step 1) or of an array of row numbers, in that order."""
        if isinstance(rows, slice):
            start, stop, step = rows.indices(len(self))
            if step != 1:
                raise ValueError("sparse rows take slices of step 1")
            stop = max(start, stop)
            lo, hi = int(self.offsets[start]), int(self.offsets[stop])
            return self._with(
                self.offsets[start : stop + 1] - lo, self.indices[lo:hi], self.values[lo:hi]
            )
        take = np.asarray(rows, dtype=np.int64)
        starts, ends = self.offsets[take], self.offsets[take + 1]
        lengths = ends - starts
        offsets = np.zeros(len(take) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # Each taken entry's position: its row's start plus its rank within the row.
        entry = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return self._with(offsets, self.indices[entry], self.values[entry])

    def dense(self) -> np.ndarray:
        """The ``(n, width)`` float64 matrix (what the model types that need one get)."""
        out = np.zeros((len(self), self.width))
        out[self.row_ids(), self.indices] = self.values
        return out

    # ------------------------------------------------------------------ products

    def dot(self, M: np.ndarray) -> np.ndarray:
        """``X @ M`` for ``M`` of shape ``(width,)`` or ``(width, k)``: each row's sum of its
        products, in column order (so a row's result never depends on the other rows)."""
        rows, n = self.row_ids(), len(self)
        if M.ndim == 1:
            return bin_sums(rows, self.values * M[self.indices], n)
        products = self.values[:, None] * M[self.indices]
        return np.stack(
            [bin_sums(rows, products[:, j], n) for j in range(M.shape[1])], axis=1
        ).reshape(n, M.shape[1])

    def t_dot(self, R: np.ndarray) -> np.ndarray:
        """``X.T @ R`` for ``R`` of shape ``(n,)`` or ``(n, k)`` (a gradient's coefficients):
        each column's sum over the rows, in row order."""
        if R.ndim == 1:
            return bin_sums(self.indices, self.values * R[self.row_ids()], self.width)
        products = self.values[:, None] * R[self.row_ids()]
        return np.stack(
            [bin_sums(self.indices, products[:, j], self.width) for j in range(R.shape[1])],
            axis=1,
        ).reshape(self.width, R.shape[1])

    def __repr__(self) -> str:
        return f"SparseRows({len(self)} x {self.width}, {self.nnz} stored)"


def bin_sums(bins: np.ndarray, weights: np.ndarray, n_bins: int) -> np.ndarray:
    """``out[b]``: the sum of the weights in bin ``b``, added in the order given (float64,
    also when there are none: numpy's ``bincount`` then answers integers)."""
    return np.bincount(bins, weights=weights, minlength=n_bins).astype(np.float64, copy=False)


#: A batch of feature rows: a dense ``(n, d)`` float64 matrix or sparse rows.
Rows = np.ndarray | SparseRows


def as_dense(X: Any) -> Any:
    """``X`` as a dense matrix when it is sparse rows; anything else as it is."""
    return X.dense() if isinstance(X, SparseRows) else X


def concat_rows(parts: Sequence[Rows]) -> Rows:
    """The rows of ``parts`` in order: sparse when any part is (a dense part is taken
    sparse), else one dense matrix.

    >>> both = concat_rows([np.zeros((1, 2)), SparseRows.from_dense([[0.0, 3.0]])])
    >>> both.dense().tolist()
    [[0.0, 0.0], [0.0, 3.0]]
    """
    if not any(isinstance(p, SparseRows) for p in parts):
        return np.concatenate([np.asarray(p) for p in parts])
    sparse = [p if isinstance(p, SparseRows) else SparseRows.from_dense(p) for p in parts]
    widths = {p.width for p in sparse}
    if len(widths) != 1:
        raise ValueError(f"rows of different widths cannot be joined: {sorted(widths)}")
    offsets = [np.zeros(1, dtype=np.int64)]
    at = 0
    for p in sparse:
        offsets.append(p.offsets[1:] + at)
        at += p.nnz
    return sparse[0]._with(
        np.concatenate(offsets),
        np.concatenate([p.indices for p in sparse]),
        np.concatenate([p.values for p in sparse]),
    )


def replace_rows(X: Rows, slots: np.ndarray, new: Rows) -> Rows:
    """``X`` with its rows ``slots`` (distinct) replaced by the rows of ``new``, in order."""
    if not isinstance(X, SparseRows) and not isinstance(new, SparseRows):
        out = np.array(X)
        out[slots] = new
        return out
    order = np.arange(len(X))
    order[slots] = len(X) + np.arange(len(new))
    joined = concat_rows([X, new])
    assert isinstance(joined, SparseRows)
    return joined[order]


def leading_columns(X: Rows, k: int) -> np.ndarray:
    """The first ``k`` columns of ``X``, dense (what the drift monitors watch)."""
    if not isinstance(X, SparseRows):
        return X[:, :k]
    k = min(k, X.width)
    keep = X.indices < k
    out = np.zeros((len(X), k))
    out[X.row_ids()[keep], X.indices[keep]] = X.values[keep]
    return out


def with_columns(X: SparseRows, tail: np.ndarray) -> SparseRows:
    """One sparse row with ``tail``'s values appended as columns ``width, width + 1, ...``
    (a bandit's feedback row: the context, then the action and the propensity).

    >>> with_columns(SparseRows.from_dense([[0.0, 2.0]]), np.array([0.0, 0.5])).dense().tolist()
    [[0.0, 2.0, 0.0, 0.5]]
    """
    if len(X) != 1:
        raise ValueError("columns are appended to one row")
    return SparseRows(
        np.array([0, X.nnz + len(tail)]),
        np.concatenate([X.indices, np.arange(X.width, X.width + len(tail), dtype=INDEX_DTYPE)]),
        np.concatenate([X.values, np.asarray(tail, dtype=np.float64)]),
        X.width + len(tail),
    )


def to_fields(X: Rows) -> tuple[list[float], list[int], list[int]]:
    """Rows as the job's rows carry them: ``(values, indices, offsets)``; a dense matrix as
    its values (row-major) and no indices or offsets, sparse rows as their three arrays
    (``offsets`` never empty). :func:`from_fields` reads them back.

    >>> to_fields(np.array([[1.0, 2.0]])), to_fields(SparseRows.from_dense([[0.0, 2.0]]))
    (([1.0, 2.0], [], []), ([2.0], [1], [0, 1]))
    """
    if isinstance(X, SparseRows):
        return X.values.tolist(), X.indices.tolist(), X.offsets.tolist()
    return np.asarray(X, dtype=np.float64).ravel().tolist(), [], []


def from_fields(values: Any, indices: Any, offsets: Any, width: int) -> Rows:
    """The rows :func:`to_fields` gave (dense ones of ``width`` columns); ValueError for
    fields that do not fit."""
    if len(offsets):
        return SparseRows(offsets, indices, values, width)
    X = np.asarray(values, dtype=np.float64)
    if X.size % width:
        raise ValueError(f"{X.size} values are no rows of {width}")
    return X.reshape(-1, width)


def check_rows(X: Any, n_features: int, name: str = "X") -> Rows:
    """Sparse rows of ``n_features`` columns as they are, else ``X`` as a finite float64
    matrix of that shape (:func:`flowlearn.core.validation.check_matrix`)."""
    if isinstance(X, SparseRows):
        if X.width != n_features:
            raise ValueError(f"{name} must have shape (n, {n_features}), got {X.shape}")
        return X
    return check_matrix(X, n_features, name)
