"""A 2^18 hashed model in the job (MiniCluster): its events wait in the label join and its
samples in the trainer's buffer as sparse rows, and it trains sparse: the published weights
are those of the learning core alone on the same sparse rows, bit for bit (trained dense,
as the job did before, they differ in the last bits). What a join entry holds (the sparse
row only) is tests/unit/test_label_join.py's."""

import json

import numpy as np
import pytest

from flowlearn.conf import load_settings
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.core.features import rows_of
from flowlearn.core.training import ModelTrainer
from flowlearn.evaluation.replay import final_weights
from tests.minicluster.test_pipeline import label, run_pipeline

pytestmark = pytest.mark.minicluster

N = 200
#: Two models of one 2^18 hashed spec: "joined" fed by events and labels, "direct" by
#: samples (one model fed both ways would train in an order the two inputs' interleaving
#: decides; each alone has one order).
ENV = {
    "FLOWLEARN__JOB__BATCH_SIZE": "16",
    "FLOWLEARN__JOB__LABEL_WINDOW_MS": "60000",
    # Batches cut by size only, as the core-only run cuts them.
    "FLOWLEARN__JOB__BATCH_TIMEOUT_MS": "3600000",
    **{
        f"FLOWLEARN__MODELS__{m}__{field}": value
        for m in ("JOINED", "DIRECT")
        for field, value in (
            ("TYPE", "logistic"),
            ("N_FEATURES", str(2**18)),
            ("FEATURES", "hashed"),
            ("OPTIMIZER", "adagrad"),
            ("CLIP", "5.0"),
        )
    },
}


def features(i: int, rng: np.random.Generator) -> dict:
    return {
        "country": str(rng.choice(["fr", "de", "us", "it"])),
        "device": str(rng.choice(["ios", "android", "web"])),
        "age": float(rng.integers(18, 90)),
        f"user_{i % 37}": 1,
    }


def test_a_hashed_model_trains_sparse_through_the_join_and_from_samples():
    rng = np.random.default_rng(5)
    rows = [features(i, rng) for i in range(N)]
    y = (rng.random(N) < 0.4).astype(float)
    events = [
        json.dumps(
            {"model_id": "joined", "event_id": f"e{i}", "ts": 1_000 + i, "features": rows[i]}
        ).encode()
        for i in range(N)
    ]
    labels = [label("joined", f"e{i}", 5_000 + i, int(y[i])) for i in range(N)]
    samples = [
        json.dumps(
            {"model_id": "direct", "ts": 1_000 + i, "features": rows[i], "label": int(y[i])}
        ).encode()
        for i in range(N)
    ]
    out = run_pipeline(samples, events=events, labels=labels, **ENV)
    assert not [r for r in out if "reason" in r], "nothing dead-lettered"
    settings = load_settings(env={**ENV, "FLOWLEARN__MLFLOW__ENABLED": "false"})
    for model_id in ("joined", "direct"):
        versions = [r for r in out if r.get("kind") == "version" and r["model_id"] == model_id]
        assert versions[-1]["applied"] == N
        spec = ModelSpecs(settings).spec_of(model_id).as_dict()
        core = ModelTrainer.create(model_id, spec)
        core.train_samples(rows_of(rows, spec), y)  # sparse, in the records' order
        weights = final_weights(versions)
        assert weights is not None
        assert weights.tobytes() == core.model.weights_vector().tobytes(), model_id
