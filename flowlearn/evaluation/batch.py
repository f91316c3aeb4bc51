"""A batch baseline: a model trained offline on a Parquet file of historical samples, with
the same core as the online trainer. It is registered in MLflow (kind ``baseline``), can be
served beside the online model (shadow or A/B), and can warm-start the online model.

The file holds one sample per row: ``features`` (a list of ``n_features`` numbers), ``label``
and, optionally, ``model_id`` (rows of other models are skipped) and ``ts``.

>>> import numpy as np, pyarrow as pa, pyarrow.parquet as pq, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "h.parquet"
>>> X = np.random.default_rng(0).normal(size=(400, 2))
>>> pq.write_table(pa.table({"features": list(X), "label": (X[:, 0] > 0) * 1.0}), path)
>>> result = train_baseline({"type": "logistic", "n_features": 2, "learning_rate": 0.5},
...                         *read_samples(path, "m", {"type": "logistic", "n_features": 2}))
>>> result.metrics["holdout_accuracy"] > 0.9
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flowlearn.core.training import Model, build_model

if TYPE_CHECKING:
    import pyarrow as pa

#: Share of the rows (the last ones, in file order: time order for a log) kept out of
#: training to measure the baseline.
HOLDOUT_FRACTION = 0.2


class BatchDataError(ValueError):
    """The Parquet file does not hold usable samples for the model; says what and where."""


@dataclass(frozen=True)
class BaselineResult:
    model: Model
    n_train: int
    metrics: dict[str, float]


def read_samples_table(path: Path) -> pa.Table:
    """The Parquet file of samples as an Arrow table, checked for its two required columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise BatchDataError(f"{path}: not a readable Parquet file: {exc}") from exc
    missing = {"features", "label"} - set(table.column_names)
    if missing:
        raise BatchDataError(f"{path}: missing column(s) {sorted(missing)}; has "
                             f"{table.column_names}")
    return table


def read_samples(path: Path, model_id: str, spec: Mapping[str, Any]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Features (n x n_features, float64) and labels of ``model_id`` from a Parquet file."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = read_samples_table(path)
    if "model_id" in table.column_names:
        table = table.filter(pc.equal(table["model_id"], model_id))
    if table.num_rows == 0:
        raise BatchDataError(f"{path}: no rows for model {model_id!r}")
    n_features = int(spec["n_features"])
    features = table["features"].combine_chunks()
    if not pa.types.is_list(features.type) and not pa.types.is_fixed_size_list(features.type):
        raise BatchDataError(f"{path}: 'features' must be a list column, not {features.type}")
    if features.null_count:
        raise BatchDataError(f"{path}: 'features' has {features.null_count} null row(s)")
    lengths = pc.list_value_length(features).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lengths != n_features)
    if bad.size:
        raise BatchDataError(f"{path}: row {int(bad[0])} has {int(lengths[bad[0]])} features, "
                             f"the model takes {n_features}")
    X = features.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(
        -1, n_features)
    y = table["label"].to_numpy(zero_copy_only=False).astype(np.float64)
    for name, values in (("features", X), ("label", y)):
        rows = np.flatnonzero(~np.isfinite(values).reshape(len(y), -1).all(axis=1))
        if rows.size:
            raise BatchDataError(f"{path}: row {int(rows[0])} has a non-finite {name}")
    kind = spec.get("type", "logistic")
    if kind != "linear":
        classes = 2 if kind == "logistic" else int(spec.get("n_classes", 2))
        rows = np.flatnonzero((y != np.floor(y)) | (y < 0) | (y >= classes))
        if rows.size:
            raise BatchDataError(f"{path}: row {int(rows[0])}: label {y[rows[0]]} is not a "
                                 f"class index in 0..{classes - 1}")
    return X, y


def train_baseline(spec: Mapping[str, Any], X: np.ndarray, y: np.ndarray, epochs: int = 3,
                   batch_size: int = 64, seed: int = 0) -> BaselineResult:
    """Train on the first rows for ``epochs`` shuffled passes; measure on the last
    :data:`HOLDOUT_FRACTION` (time order: the baseline is judged on what came after)."""
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    n_train = len(y) - int(len(y) * HOLDOUT_FRACTION)
    if n_train < 1:
        raise BatchDataError("too few rows to train on")
    model = build_model(spec)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(n_train)
        for start in range(0, n_train, batch_size):
            rows = order[start:start + batch_size]
            model.learn_many(X[rows], y[rows])
    X_test, y_test = X[n_train:], y[n_train:]
    scores: dict[str, float] = {"train_samples": float(n_train),
                                "holdout_samples": float(len(y_test))}
    if len(y_test):
        scores["holdout_loss"] = float(np.mean(model.loss_many(X_test, y_test)))
        if spec.get("type", "logistic") != "linear":
            scores["holdout_accuracy"] = float(np.mean(model.predict_many(X_test) == y_test))
    return BaselineResult(model, n_train, scores)
