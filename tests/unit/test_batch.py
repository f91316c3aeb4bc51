import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowlearn.evaluation.batch import BatchDataError, read_samples, train_baseline

SPEC = {"type": "logistic", "n_features": 3, "learning_rate": 0.3}


def write(tmp_path, **columns):
    path = tmp_path / "h.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def stream(n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return X, (X @ np.array([2.0, -1.0, 0.5]) > 0).astype(float)


def test_rows_of_the_model_are_read_and_a_good_baseline_is_trained(tmp_path):
    X, y = stream(2000)
    ids = np.where(np.arange(2000) % 4 == 0, "other", "m")
    path = write(tmp_path, model_id=ids, features=list(X), label=y)
    Xm, ym = read_samples(path, "m", SPEC)
    assert Xm.shape == (1500, 3) and np.array_equal(Xm, X[ids == "m"])
    result = train_baseline(SPEC, Xm, ym, epochs=3, seed=1)
    assert result.n_train == 1200
    assert result.metrics["holdout_accuracy"] > 0.95
    again = train_baseline(SPEC, Xm, ym, epochs=3, seed=1)
    assert again.model.weights_vector().tobytes() == result.model.weights_vector().tobytes()


@pytest.mark.parametrize(
    "columns, message",
    [
        (lambda X, y: {"features": list(X)}, "missing column"),
        (lambda X, y: {"features": list(X[:, :2]), "label": y}, "has 2 features"),
        (
            lambda X, y: {
                "features": list(np.where(np.arange(30)[:, None] == 7, np.nan, X)),
                "label": y,
            },
            "row 7 has a non-finite features",
        ),
        (
            lambda X, y: {"features": list(X), "label": np.where(np.arange(30) == 3, 2.0, y)},
            "row 3: label 2.0",
        ),
        (lambda X, y: {"features": X[:, 0], "label": y}, "must be a list column"),
        (lambda X, y: {"model_id": ["x"] * 30, "features": list(X), "label": y}, "no rows"),
    ],
)
def test_unusable_files_are_refused_saying_what_and_where(tmp_path, columns, message):
    X, y = stream(30)
    path = write(tmp_path, **columns(X, y))
    with pytest.raises(BatchDataError, match=message):
        read_samples(path, "m", SPEC)


def test_a_file_that_is_not_parquet_is_refused(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"nope")
    with pytest.raises(BatchDataError, match="not a readable Parquet"):
        read_samples(path, "m", SPEC)
