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

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flowlearn.conf import Settings
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.core import codec
from flowlearn.core.model_types import model_type
from flowlearn.core.training import Model, build_model, published_spec

if TYPE_CHECKING:
    import pyarrow as pa

    from flowlearn.registry.mlflow_store import RegisteredVersion

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
        raise BatchDataError(
            f"{path}: missing column(s) {sorted(missing)}; has {table.column_names}"
        )
    return table


def read_samples(
    path: Path, model_id: str, spec: Mapping[str, Any]
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
        raise BatchDataError(
            f"{path}: row {int(bad[0])} has {int(lengths[bad[0]])} features, "
            f"the model takes {n_features}"
        )
    X = features.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, n_features)
    y = table["label"].to_numpy(zero_copy_only=False).astype(np.float64)
    for name, values in (("features", X), ("label", y)):
        rows = np.flatnonzero(~np.isfinite(values).reshape(len(y), -1).all(axis=1))
        if rows.size:
            raise BatchDataError(f"{path}: row {int(rows[0])} has a non-finite {name}")
    kind = model_type(spec.get("type", "logistic"))
    if kind.classifier:
        classes = int(spec.get("n_classes", 2)) if kind.multiclass else 2
        rows = np.flatnonzero((y != np.floor(y)) | (y < 0) | (y >= classes))
        if rows.size:
            raise BatchDataError(
                f"{path}: row {int(rows[0])}: label {y[rows[0]]} is not a "
                f"class index in 0..{classes - 1}"
            )
    return X, y


def train_baseline(
    spec: Mapping[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    epochs: int = 3,
    batch_size: int = 64,
    seed: int = 0,
) -> BaselineResult:
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
            rows = order[start : start + batch_size]
            model.learn_many(X[rows], y[rows])
    X_test, y_test = X[n_train:], y[n_train:]
    scores: dict[str, float] = {
        "train_samples": float(n_train),
        "holdout_samples": float(len(y_test)),
    }
    if len(y_test):
        scores["holdout_loss"] = float(np.mean(model.loss_many(X_test, y_test)))
        if model_type(spec.get("type", "logistic")).classifier:
            scores["holdout_accuracy"] = float(np.mean(model.predict_many(X_test) == y_test))
    return BaselineResult(model, n_train, scores)


@dataclass(frozen=True)
class RegisteredBaseline:
    """What :func:`train_and_register_baseline` did."""

    result: BaselineResult
    #: Rows of the model read from the file (training and holdout).
    rows: int
    #: Seconds spent reading the file and training.
    train_seconds: float
    #: The baseline's version (kind ``baseline`` in MLflow) and its registry entry.
    version: int
    entry: RegisteredVersion
    #: The predictor's baseline file that was written.
    baseline_file: Path


def train_and_register_baseline(
    settings: Settings,
    model_id: str,
    data: Path,
    *,
    epochs: int = 3,
    batch_size: int = 64,
    seed: int = 0,
    out: Path | None = None,
) -> RegisteredBaseline:
    """The ``flowlearn train-batch`` use case: train a batch baseline of ``model_id`` (its
    configured spec) on a Parquet file of samples (:func:`read_samples`,
    :func:`train_baseline`), register it in MLflow as the next baseline version (kind
    ``baseline``, tagged with the source file), and write it as the predictor's baseline file
    (``out``, default ``<stack home>/baselines/<model>.flc``).

    Raises :class:`BatchDataError` for an unusable file and
    :class:`flowlearn.registry.mlflow_store.RegistryError` when MLflow fails.
    """
    from flowlearn.registry.mlflow_store import Registry
    from flowlearn.serving.baseline import write_baseline

    spec = ModelSpecs(settings).spec_of(model_id).as_dict()
    t0 = time.monotonic()
    X, y = read_samples(data, model_id, spec)
    result = train_baseline(spec, X, y, epochs=epochs, batch_size=batch_size, seed=seed)
    train_seconds = time.monotonic() - t0
    registry = Registry.from_settings(settings)
    latest = registry.latest_baseline(model_id)
    version = (latest.version if latest else 0) + 1
    weights = result.model.weights_vector()
    spec_json = published_spec(result.model, spec)
    entry = registry.register(
        model_id,
        version,
        codec.encode_array(weights),
        spec_json,
        result.n_train,
        result.metrics,
        kind="baseline",
        tags={"source_file": str(data)},
    )
    baseline_file = out or settings.stack.home / "baselines" / f"{model_id}.flc"
    baseline_file.parent.mkdir(parents=True, exist_ok=True)
    write_baseline(baseline_file, json.loads(spec_json), weights, version=version)
    return RegisteredBaseline(result, len(y), train_seconds, version, entry, baseline_file)
