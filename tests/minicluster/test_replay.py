"""flowlearn replay: the job graph on a bounded file gives the weights of training the same
batches directly, prequential records equal to the trainer's, and a report in which the
online model recovers from a drift that a batch baseline does not."""

import json

import numpy as np
import pytest

from flowlearn.conf import load_settings
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.core.training import ModelTrainer, batch_plan
from flowlearn.devstack.producer import DriftingStream
from flowlearn.evaluation.replay import BaselineOptions, replay
from flowlearn.evaluation.report import render
from flowlearn.evaluation.statistics import Stats

pytestmark = pytest.mark.minicluster

MODEL = "replayed"
N, CHANGE = 6400, 3200


def test_replay_equals_direct_training_and_the_online_model_recovers_first(tmp_path):
    settings = load_settings(env={"FLOWLEARN__MODEL_DEFAULTS__LEARNING_RATE": "0.25"})
    records = DriftingStream(n_features=10, seed=2, model_id=MODEL, drift_at=(CHANGE,)).take(
        N, 1_700_000_000_000
    )
    lines = [json.dumps(r) for r in records]
    bad = ["not json", json.dumps({**records[0], "features": [1.0, 2.0]})]
    lines[1000:1000] = bad  # dead-lettered; the trainer never sees them
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(lines) + "\n")

    result = replay(path, settings, baseline=BaselineOptions(train=CHANGE))

    # The same batches trained directly with the core give the same weights, bit for bit,
    # and the same prequential records.
    spec = ModelSpecs(settings).spec_of(MODEL).as_dict()  # the defaults: the inferred shape
    trainer = ModelTrainer.create(MODEL, spec)
    X = np.array([r["features"] for r in records], dtype=np.float64)
    y = np.array([r["label"] for r in records], dtype=np.float64)
    batches = trainer.train_samples(X, y)
    errors = [batch.errors for batch in batches]
    losses = [batch.losses for batch in batches]
    assert result.weights[MODEL].tobytes() == trainer.model.weights_vector().tobytes()
    data = result.data[MODEL]
    online = data.samples.online
    assert np.array_equal(online.correct, 1.0 - np.concatenate(errors))
    assert online.loss.tobytes() == np.concatenate(losses).tobytes()
    assert data.dlq == {"bad_features": 1, "not_json": 1}
    assert data.input_records == N + 2

    # The checkpoint operator's windowed metrics (what it registers in MLflow) for
    # checkpoint 50: the samples that versions 51..100 scored.
    ends = np.cumsum(batch_plan(N, settings.job.batch_size))
    checkpoint = data.checkpoints[0]
    assert checkpoint.version == 50
    scored = slice(int(ends[49]), int(ends[99]))
    assert checkpoint.accuracy == pytest.approx(Stats.of(online.take(scored)).accuracy)

    # The drift is detected after the change; the online model recovers, the baseline
    # trained once on the first concept does not (or later).
    files = render(data, tmp_path / "report", window=400)
    assert files.index.exists() and len(files.pngs) >= 4
    first = files.headline.episodes[0]
    assert CHANGE < first.episode.alert < CHANGE + 1000
    assert abs(first.episode.change - CHANGE) < 200
    assert first.online.recovered
    assert not first.baseline.recovered or first.baseline.samples > first.online.samples
    on, base = files.headline.post_drift
    assert on.accuracy > base.accuracy + 0.1
