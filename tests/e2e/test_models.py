"""A model's lifecycle on the real local stack (docs/models.md): two models of different
shapes created while the job runs, trained, one's learning rate changed, the TaskManager
killed (the created specs are in the job's state, the parsers' included), both continuing
exactly, then one deleted: Redis and the predictor forget it, the other is still served;
that one pinned through the job, then reset under another shape."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
import uuid
from typing import Any

import numpy as np
import pytest

from flowlearn.contracts.records import encode_sample_batch
from flowlearn.contracts.redis_contract import Keys, read_pinned, read_snapshot
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.core.training import ModelTrainer
from flowlearn.devstack.producer import send_raw

from .conftest import flowlearn, wait_until
from .test_faults import Job, redis_of, taskmanager_pid, wait_for_a_checkpoint

pytestmark = pytest.mark.e2e

#: Bulk records of one batch each (the job then cuts batches at their boundaries).
RECORDS_A_PART = 12


def data(spec: dict[str, Any], seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples of the model's shape: a linear target, or classes by the sign pattern."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, spec["n_features"]))
    if spec["type"] == "linear":
        return X, X @ np.arange(1.0, spec["n_features"] + 1) + 3.0
    return X, ((X[:, 0] > 0).astype(int) + (X[:, 1] > 0).astype(int)).astype(float)


def send(settings: Any, model_id: str, X: np.ndarray, y: np.ndarray) -> None:
    batch = settings.job.batch_size
    records = [
        encode_sample_batch(model_id, np.full(batch, 1000), X[i : i + batch], y[i : i + batch])
        for i in range(0, len(y), batch)
    ]
    send_raw(settings.kafka, settings.kafka.topics.samples, records, key=model_id)


def applied(settings: Any, model_id: str, n: int) -> Any:
    snap = read_snapshot(redis_of(settings), Keys(settings.redis.prefix), model_id)
    return snap if snap is not None and snap.samples_applied >= n else None


def served(settings: Any, model_id: str, width: int) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{settings.predictor.url}/v1/models/{model_id}:predict",
        data=json.dumps({"instances": [[0.5] * width]}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def alert_keys(settings: Any, model_id: str) -> list[bytes | None]:
    """The Kafka keys of the model's alerts so far (the job keys them by model id)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        **settings.kafka.client_options(), group_id=None, isolation_level="read_committed"
    )
    try:
        topic = settings.kafka.topics.alerts
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        keys = []
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for messages in consumer.poll(timeout_ms=1000).values():
                keys += [m.key for m in messages if json.loads(m.value)["model_id"] == model_id]
        return keys
    finally:
        consumer.close()


def test_models_created_at_runtime_train_survive_a_kill_and_are_deleted(stack, status):
    settings, config = stack
    tag = uuid.uuid4().hex[:8]
    specs = {
        f"lc-linear-{tag}": {"type": "linear", "n_features": 3},
        f"lc-softmax-{tag}": {"type": "softmax", "n_features": 5, "n_classes": 3},
        f"lc-forest-{tag}": {
            "type": "random_forest",
            "n_features": 4,
            "n_classes": 3,
            "n_trees": 3,
            # Weights under 64 KiB: every version then rewrites the snapshot this test reads.
            "max_nodes": 31,
        },
    }
    shape_flags = ("type", "n_features", "n_classes")
    for model_id, spec in specs.items():
        flags = [
            f"--{key.replace('_', '-')}={value}" if key in shape_flags else f"--set={key}={value}"
            for key, value in spec.items()
        ]
        created = flowlearn("models", "create", "--model", model_id, *flags, config=config)
        assert created.returncode == 0, created.stderr
        assert "created" in created.stdout
    linear, softmax, forest = specs
    args = ("models", "create", "--model", linear, "--type", "linear", "--n-features", "4")
    refused = flowlearn(*args, config=config)  # by the CLI: the model is served
    assert refused.returncode == 1 and "--replace" in refused.stderr
    refused = flowlearn(*args, "--replace", config=config)  # by the job: created, another spec
    assert refused.returncode == 1 and "exists with another spec" in refused.stderr
    listed = json.loads(flowlearn("models", "list", "--json", config=config).stdout)
    for model_id, spec in specs.items():
        assert listed[model_id]["version"] == 1
        published = listed[model_id]["spec"]
        assert (published["type"], published["n_features"]) == (spec["type"], spec["n_features"])

    full = {m: ModelSpecs(settings).runtime_entry(s) for m, s in specs.items()}
    references = {m: ModelTrainer.create(m, json.loads(e)) for m, e in full.items()}
    n = settings.job.batch_size * RECORDS_A_PART

    def part(seed: int, count: int) -> None:
        for i, (model_id, spec) in enumerate(specs.items()):
            X, y = data(spec, seed + i, n)
            send(settings, model_id, X, y)
            references[model_id].train_samples(X, y)
        for model_id in specs:
            wait_until(
                f"{count} samples of {model_id}",
                lambda m=model_id: applied(settings, m, count),
                timeout_s=120,
            )

    part(seed=1, count=n)
    # A live change: the linear model's rate, with a new version that records it.
    updated = flowlearn(
        "models", "update", "--model", linear, "--learning-rate", "0.02", config=config
    )
    assert updated.returncode == 0 and "updated" in updated.stdout, updated.stderr
    references[linear].set_learning_rate(0.02)

    job = Job(settings, status()["job"]["id"])
    wait_for_a_checkpoint(job)
    pid = taskmanager_pid(settings)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(
        "a new TaskManager", lambda: taskmanager_pid(settings) not in (None, pid), timeout_s=120
    )
    wait_until("every task RUNNING again", job.running, timeout_s=180, every_s=0.5)
    part(seed=11, count=2 * n)  # parsed and trained under the specs restored from state

    last_versions = {}
    for model_id, spec in specs.items():
        snap = applied(settings, model_id, 2 * n)
        last_versions[model_id] = snap.version
        assert snap.samples_applied == 2 * n
        assert snap.spec["type"] == spec["type"]
        expected = references[model_id].model.weights_vector()
        assert snap.weights.tobytes() == expected.tobytes(), model_id
    # The forest is served as trained: its scores are the reference's, bit for bit.
    expected_scores = references[forest].model.predict_proba_many(np.full((1, 4), 0.5))
    _, body = wait_until(
        "the predictor to serve the forest's last version",
        lambda: (
            (a := served(settings, forest, 4))[1].get("model_version") == last_versions[forest]
            and a
        ),
        timeout_s=30,
    )
    assert np.array(body["predictions"]).tobytes() == expected_scores.tobytes()

    deleted = flowlearn("models", "delete", "--model", softmax, config=config)
    assert deleted.returncode == 0, deleted.stderr
    client, keys = redis_of(settings), Keys(settings.redis.prefix)
    assert not client.exists(keys.snapshot(softmax), keys.deltas(softmax))
    assert not client.sismember(keys.models, softmax)
    _, body = wait_until(
        "the predictor to forget the deleted model",
        lambda: (answer := served(settings, softmax, 5))[0] == 404 and answer,
        timeout_s=30,
    )
    assert "was deleted" in json.dumps(body)
    assert served(settings, linear, 3)[0] == 200
    kafka_keys = alert_keys(settings, linear)  # create, the refused create, update
    assert len(kafka_keys) >= 3 and set(kafka_keys) == {linear.encode()}
    listed = json.loads(flowlearn("models", "list", "--json", config=config).stdout)
    assert softmax not in listed and linear in listed
    again = flowlearn("models", "delete", "--model", softmax, config=config)
    assert again.returncode == 1 and "no such model" in again.stderr

    # Pinned through the job (a control command), then reset under another shape.
    latest = applied(settings, linear, 2 * n).version
    pinned = flowlearn("pin", "--model", linear, "--version", str(latest - 1), config=config)
    assert pinned.returncode == 0, pinned.stderr
    assert client.get(keys.pin(linear)) == str(latest - 1).encode()
    ahead = flowlearn("pin", "--model", linear, "--version", str(latest + 5), config=config)
    assert ahead.returncode == 1 and "neither the current one" in ahead.stderr
    assert read_pinned(client, keys, linear).version == latest - 1  # its weights, for predictors
    wait_until(
        "the predictor to serve the pinned version",
        lambda: served(settings, linear, 3)[1].get("model_version") == latest - 1,
        timeout_s=30,
    )
    reset = flowlearn(
        "models", "update", "--model", linear, "--reset", "--n-features", "4", config=config
    )
    assert reset.returncode == 0 and "reset under its new spec" in reset.stdout, reset.stderr
    assert not client.exists(keys.pin(linear), keys.pinned(linear))
    _, body = wait_until(
        "the predictor to serve the reset model's shape",
        lambda: (answer := served(settings, linear, 4))[0] == 200 and answer,
        timeout_s=30,
    )
    assert body["model_version"] == latest + 1, body
