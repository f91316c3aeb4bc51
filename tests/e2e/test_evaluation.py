"""Evaluation end to end: `flowlearn report` on what the live stack recorded, and `flowlearn
replay` against the live job over the same samples."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from html.parser import HTMLParser

import numpy as np
import pytest
from matplotlib.image import imread

from flowlearn.contracts.records import encode_sample_batch, now_ms
from flowlearn.contracts.redis_contract import Keys, read_snapshot, redis_client
from flowlearn.core.training import batch_plan
from flowlearn.devstack.producer import DriftingStream, send_raw

from .conftest import ROOT, flowlearn, on_every_worker, wait_until

pytestmark = pytest.mark.e2e

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WINDOW = 100


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def bulk_records(model_id, samples, batch):
    """The samples as bulk records of one batch each: the live job then trains exactly the
    batches a size-cut run (the reference, a replay) trains."""
    out = []
    for i in range(0, len(samples), batch):
        chunk = samples[i : i + batch]
        out.append(
            encode_sample_batch(
                model_id,
                np.array([r["ts"] for r in chunk]),
                np.array([r["features"] for r in chunk], dtype=np.float64),
                np.array([r["label"] for r in chunk], dtype=np.float64),
            )
        )
    return out


def predict(url, model_id, features, event_id):
    body = json.dumps({"instances": [{"features": features, "event_id": event_id}]}).encode()
    req = urllib.request.Request(
        f"{url}/v1/models/{model_id}:predict",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def test_the_live_report_renders_and_its_numbers_are_the_recorded_predictions(stack, tmp_path):
    settings, config = stack
    model = f"report-{uuid.uuid4().hex[:6]}"
    stream = DriftingStream(n_features=10, seed=51, model_id=model)
    send_raw(
        settings.kafka.bootstrap,
        settings.kafka.topics.samples,
        bulk_records(model, stream.take(640, 1000), settings.job.batch_size),
        key=model,
    )
    client = redis_client(settings.redis, timeout_s=5)
    keys = Keys(settings.redis.prefix)
    wait_until(
        f"{model} trained",
        lambda: (s := read_snapshot(client, keys, model)) and s.samples_applied == 640,
        timeout_s=60,
    )

    def served():
        try:
            return predict(settings.predictor.url, model, [0.0] * 10, "probe")
        except urllib.error.HTTPError:
            return None

    wait_until(f"every predictor worker serving {model}", lambda: on_every_worker(served), 30)

    # Predictions with event ids, then their labels: the predictor logs each to fl.events.
    asked = stream.take(3 * WINDOW, 0)
    scores = []
    for i, r in enumerate(asked):
        answer = predict(settings.predictor.url, model, r["features"], f"{model}-{i}")
        scores.append(answer["predictions"][0])
    labels = [r["label"] for r in asked]
    send_raw(
        settings.kafka.bootstrap,
        settings.kafka.topics.labels,
        [
            json.dumps(
                {"model_id": model, "event_id": f"{model}-{i}", "label": y, "ts": now_ms()}
            ).encode()
            for i, y in enumerate(labels)
        ],
        key=model,
    )

    out = tmp_path / "report"

    def report():
        done = flowlearn(
            "report",
            "--model",
            model,
            "--out",
            str(out),
            "--window",
            str(WINDOW),
            config=config,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr
        summary = json.loads((out / "summary.json").read_text())
        return summary if sum(w["online"]["n"] for w in summary["windows"]) == len(asked) else None

    summary = wait_until(
        "every logged prediction joined with its label in the report",
        report,
        timeout_s=90,
        every_s=2,
    )

    page = Images()
    page.feed((out / "index.html").read_text())
    assert page.sources and all((out / src).is_file() for src in page.sources)
    for src in page.sources:
        raw = (out / src).read_bytes()
        assert raw.startswith(PNG_SIGNATURE)
        image = imread(out / src)
        assert image.ndim == 3 and min(image.shape[:2]) > 100

    # The report's windows are the recorded predictions scored against the labels.
    p = np.array(scores)
    y = np.array(labels, dtype=np.float64)
    p_true = np.clip(np.where(y == 1, p, 1 - p), 1e-15, 1 - 1e-15)
    assert [w["online"]["n"] for w in summary["windows"]] == [WINDOW] * 3
    # Windows follow the events' timestamps: two workers of the predictor answering in the
    # same millisecond log in either order, so which window holds such a pair is not fixed,
    # but every prediction is in one window, once.
    windows = summary["windows"]
    assert np.mean([w["online"]["accuracy"] for w in windows]) == pytest.approx(
        np.mean((p > 0.5) == y), rel=1e-12
    )
    assert np.mean([w["online"]["log_loss"] for w in windows]) == pytest.approx(
        np.mean(-np.log(p_true)), rel=1e-12
    )
    assert summary["labels"] == len(asked)


def test_a_replay_gives_the_live_jobs_final_weights(stack, tmp_path):
    settings, config = stack
    model = f"replay-{uuid.uuid4().hex[:6]}"
    batch = settings.job.batch_size
    samples = DriftingStream(n_features=10, seed=53, model_id=model, drift_at=(1600,)).take(
        100 * batch, 1_700_000_000_000
    )
    send_raw(
        settings.kafka.bootstrap,
        settings.kafka.topics.samples,
        bulk_records(model, samples, batch),
        key=model,
    )
    history = tmp_path / "history.jsonl"
    history.write_text("".join(json.dumps(r) + "\n" for r in samples))

    # The replay in a process of its own (it starts a MiniCluster), with the stack's config.
    script = (
        "import sys; from pathlib import Path; from flowlearn.conf import load_settings; "
        "from flowlearn.evaluation.replay import replay; "
        "r = replay(Path(sys.argv[1]), load_settings(Path(sys.argv[2])), sys.argv[3], "
        "baseline=None); print(r.weights[sys.argv[3]].tobytes().hex())"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(history), str(config), model],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    replayed = bytes.fromhex(done.stdout.strip().splitlines()[-1])

    client = redis_client(settings.redis, timeout_s=5)
    keys = Keys(settings.redis.prefix)
    live = wait_until(
        f"{model}: every sample applied",
        lambda: (
            (s := read_snapshot(client, keys, model)) and s.samples_applied == len(samples) and s
        ),
        timeout_s=120,
    )
    assert live.version == len(batch_plan(len(samples), batch))
    assert live.weights.tobytes() == replayed
