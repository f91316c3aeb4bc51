"""End to end on the real local stack: Kafka -> PyFlink job -> Redis -> predictor."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
import uuid

import numpy as np
import pytest
import redis

from flowlearn.contracts.redis_contract import Keys, read_snapshot
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.devstack.producer import produce, send_raw

from .conftest import flowlearn, job_restarts, wait_applied, wait_until

pytestmark = pytest.mark.e2e


def redis_client(settings):
    r = settings.redis
    return redis.Redis(host=r.host, port=r.port, password=r.password)


def predict(settings, model_id, instances):
    req = urllib.request.Request(
        f"{settings.predictor.url}/v1/models/{model_id}:predict",
        data=json.dumps({"instances": instances}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def try_predict(settings, model_id, instances):
    try:
        return predict(settings, model_id, instances)
    except OSError:
        return None


def test_samples_are_trained_published_and_served(stack):
    settings, _ = stack
    model_id = f"e2e-{uuid.uuid4().hex[:8]}"
    n = 2000
    sent = produce(
        settings.kafka.bootstrap,
        settings.kafka.topics,
        model_id=model_id,
        count=n,
        rate=20_000,
        seed=7,
        quiet=True,
    )
    assert sent == n
    snap = wait_applied(settings, model_id, n)
    assert snap.version >= n // settings.job.batch_size
    assert snap.spec["n_features"] == 10
    answer = wait_until(
        f"predictor serving version {snap.version}",
        lambda: (
            (a := try_predict(settings, model_id, [[0.1] * 10]))
            and a["model_version"] == snap.version
            and a
        ),
        timeout_s=30,
    )
    assert answer["epoch"] == snap.epoch
    assert 0.0 <= answer["predictions"][0] <= 1.0


def test_events_joined_with_delayed_labels_are_trained_once(stack):
    settings, _ = stack
    model_id = f"join-{uuid.uuid4().hex[:8]}"
    n = 600
    produce(
        settings.kafka.bootstrap,
        settings.kafka.topics,
        model_id=model_id,
        count=n,
        rate=2_000,
        seed=11,
        label_delay_ms=1_000,
        quiet=True,
    )
    wait_applied(settings, model_id, n)


def test_samples_in_every_kafka_codec_are_trained_and_read_back(stack, status):
    """Producers choose their compression: records in each of Kafka's codecs (sent by
    librdkafka, as confluent-kafka clients send them) are all trained without a restart of the
    job (its Kafka client needs zstd-jni beside Flink's jars), and kafka-python, which
    `flowlearn report` reads topics with, reads them back."""
    from confluent_kafka import Producer

    from flowlearn.contracts.records import now_ms
    from flowlearn.devstack.producer import DriftingStream
    from flowlearn.evaluation.recorded import kafka_consumer, read_topic

    settings, _ = stack
    job_id = status()["job"]["id"]
    restarts_before = job_restarts(settings, job_id)
    model_id = f"codecs-{uuid.uuid4().hex[:8]}"
    stream = DriftingStream(model_id=model_id, seed=13, id_prefix=model_id)
    codecs = ("gzip", "snappy", "lz4", "zstd")
    per_codec = 100
    started = now_ms()
    for codec in codecs:
        producer = Producer({**settings.kafka.librdkafka_options(), "compression.type": codec})
        for record in stream.take(per_codec, start_ts=now_ms()):
            producer.produce(
                settings.kafka.topics.samples,
                key=model_id.encode(),
                value=json.dumps(record).encode(),
            )
        assert producer.flush(30) == 0, f"{codec}: records not delivered"
    wait_applied(settings, model_id, per_codec * len(codecs))
    assert job_restarts(settings, job_id) == restarts_before
    consumer = kafka_consumer(settings.kafka)()
    try:
        read = read_topic(
            consumer,
            settings.kafka.topics.samples,
            keep=lambda key, _value: key == model_id.encode(),
            since_ms=started - 60_000,
        )
    finally:
        consumer.close()
    assert len(read.records) == per_codec * len(codecs)


def test_samples_in_the_schema_registry_wire_format_are_trained(stack):
    """Confluent's JSON Schema serializer puts a zero byte and a 4-byte schema id before
    each record's JSON: the job trains such samples as it trains plain JSON ones."""
    from flowlearn.contracts.records import now_ms
    from flowlearn.devstack.producer import DriftingStream

    settings, _ = stack
    model_id = f"registry-{uuid.uuid4().hex[:8]}"
    header = b"\x00" + (17).to_bytes(4, "big")
    records = DriftingStream(model_id=model_id, seed=19, id_prefix=model_id).take(
        200, start_ts=now_ms(), step_ms=0
    )
    send_raw(
        settings.kafka.bootstrap,
        settings.kafka.topics.samples,
        [header + json.dumps(r).encode() for r in records],
        key=model_id,
    )
    wait_applied(settings, model_id, len(records))


def weights_at(client, keys, model_id, version, size):
    """Replay the delta stream from zeros up to ``version`` (one epoch, as published)."""
    from flowlearn.contracts.redis_contract import DeltaEntry
    from flowlearn.core import codec

    weights = np.zeros(size)
    for stream_id, fields in client.xrange(keys.deltas(model_id)):
        entry = DeltaEntry.from_entry(stream_id, fields)
        codec.apply_delta(weights, entry.delta)
        if entry.version == version:
            return weights
    raise AssertionError(f"version {version} not in the delta stream")


def test_model_rollback_republishes_old_weights_bit_for_bit(stack):
    settings, config = stack
    model_id = f"rb-{uuid.uuid4().hex[:8]}"
    produce(
        settings.kafka.bootstrap,
        settings.kafka.topics,
        model_id=model_id,
        count=320,
        rate=10_000,
        seed=3,
        quiet=True,
    )
    client = redis_client(settings)
    keys = Keys(settings.redis.prefix)
    snap = wait_until(
        "320 samples applied",
        lambda: (s := read_snapshot(client, keys, model_id)) and s.samples_applied == 320 and s,
        timeout_s=90,
    )
    version = snap.version - 5  # among the last job.keep_versions, kept for rollbacks
    target = weights_at(client, keys, model_id, version, snap.weights.size)
    t0 = time.monotonic()
    out = flowlearn("rollback", "--model", model_id, "--to-version", str(version), config=config)
    assert out.returncode == 0, out.stderr
    rolled = wait_until(
        "the rollback version",
        lambda: (
            (s := read_snapshot(client, keys, model_id)) and s.version == snap.version + 1 and s
        ),
        timeout_s=60,
        every_s=0.05,
    )
    served = wait_until(
        "the predictor serving it",
        lambda: (
            (a := try_predict(settings, model_id, [[0.1] * 10]))
            and a["model_version"] == rolled.version
        ),
        timeout_s=30,
        every_s=0.05,
    )
    # The command's path: the CLI process (Python start-up included), Kafka, the trainer,
    # Redis, the predictor.
    print(f"model rollback: command to served version in {time.monotonic() - t0:.2f}s")
    assert served and rolled.weights.tobytes() == target.tobytes()
    assert rolled.samples_applied == 320


BAD = {
    b"this is not json": "not_json",
    b'{"model_id": "demo", "ts": 5, "label": 1}': "missing_field",
    b'{"model_id": "demo", "ts": 5, "features": [1,2,3], "label": 1}': "bad_features",
    (
        # (NaN or null is a missing value, which the model's pipeline fills.)
        b'{"model_id": "demo", "ts": 5, "features": [Infinity,0,0,0,0,0,0,0,0,0], "label": 1}'
    ): "bad_features",
}


def dlq_consumer(settings):
    """A consumer of fl.dlq's committed records from the start; iterating it ends when none
    came for a second."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        settings.kafka.topics.dlq,
        bootstrap_servers=settings.kafka.bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        consumer_timeout_ms=1000,
        group_id=None,
    )


def test_malformed_records_reach_the_dlq_and_the_job_keeps_running(stack, status):
    settings, _ = stack
    marker = uuid.uuid4().hex.encode()
    records = {
        raw.replace(b"demo", b"demo-" + marker) if b"demo" in raw else raw + marker: reason
        for raw, reason in BAD.items()
    }
    send_raw(settings.kafka.bootstrap, settings.kafka.topics.samples, list(records))
    consumer = dlq_consumer(settings)
    found: dict[bytes, str] = {}

    def all_found():
        for msg in consumer:
            d = json.loads(msg.value)
            raw = base64.b64decode(d["raw"])
            if raw in records:
                found[raw] = d["reason"]
                assert d["source_topic"] == settings.kafka.topics.samples
        return len(found) == len(records)

    try:
        wait_until("every malformed record in the DLQ", all_found, timeout_s=90, every_s=0.1)
    finally:
        consumer.close()
    assert found == records
    assert status()["job"]["state"] == "RUNNING"


def test_a_record_without_a_value_is_dead_lettered_on_every_input_topic(stack, status):
    """A tombstone (a Kafka record whose value is null) is no sample, event, label or
    command: each input topic's parser dead-letters it as ``not_json`` with an empty ``raw``,
    where Flink's byte-array schema used to drop it without a trace, and the job keeps
    running without a restart."""
    from kafka import KafkaProducer

    settings, _ = stack
    topics = settings.kafka.topics
    inputs = (topics.samples, topics.events, topics.labels, topics.control)
    job_id = status()["job"]["id"]
    restarts_before = job_restarts(settings, job_id)
    consumer = dlq_consumer(settings)
    without_value = dict.fromkeys(inputs, 0)

    def count_new() -> dict[str, int]:
        for msg in consumer:
            d = json.loads(msg.value)
            if d["source_topic"] in without_value and "no value" in d["detail"]:
                assert (d["reason"], d["raw"]) == ("not_json", "")
                without_value[d["source_topic"]] += 1
        return dict(without_value)

    try:
        before = count_new()
        producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
        try:
            for topic in inputs:
                producer.send(topic, key=f"tombstone-{uuid.uuid4().hex[:8]}".encode(), value=None)
        finally:
            producer.flush()
            producer.close()
        wait_until(
            "a dead letter for the tombstone of every input topic",
            lambda: all(n == before[t] + 1 for t, n in count_new().items()),
            timeout_s=90,
        )
    finally:
        consumer.close()
    assert job_restarts(settings, job_id) == restarts_before
    assert status()["job"]["state"] == "RUNNING"


def test_status_json_shows_components_job_and_models(stack, status):
    s = wait_until("a model in status", lambda: (st := status())["models"] and st, 120)
    for name in ("kafka", "redis", "jobmanager", "taskmanager", "predictor"):
        assert s["components"][name]["state"] == "running", name
        assert s["components"][name]["pids"], name
    assert s["job"]["state"] == "RUNNING" and len(s["job"]["id"]) == 32
    assert s["predictor"]["url"] == stack[0].predictor.url
    for m in s["models"].values():
        assert set(m) == {"version", "epoch", "samples_applied"}


def test_job_and_predictor_metrics_reach_prometheus(stack):
    settings, _ = stack
    job = {
        f"flink_taskmanager_job_task_operator_{name}"
        for name in (
            "samples_parsed",
            "samples_trained",
            "versions_published",
            "model_version",
            "model_samples_trained",
        )
    }
    predictor = {
        "flowlearn_predictor_requests_total",
        "flowlearn_predictor_model_version",
        "flowlearn_predictor_request_seconds_bucket",
    }

    def missing():
        url = f"{settings.prometheus.url}/api/v1/label/__name__/values"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return (job | predictor) - set(json.loads(resp.read())["data"])

    wait_until(
        "the job's and the predictor's metrics in Prometheus",
        lambda: not missing(),
        timeout_s=90,
        every_s=1,
    )


def test_exactly_once_through_a_taskmanager_sigkill(stack, status):
    """Kill the TaskManager mid-stream; the supervisor brings it back, the job recovers from
    its last checkpoint, and at the end:

    - ``samples_applied`` equals the number of distinct samples sent (none lost, none
      trained twice), and the version equals the number of batches;
    - the published weights equal, bit for bit, those of training the same batches in the
      same order from scratch without a failure (flowlearn's training is deterministic,
      and the batches are cut at the bulk records' boundaries, so they cannot be cut
      differently on replay).
    """
    import os
    import signal
    import threading

    from flowlearn.core.training import ModelTrainer, batch_plan
    from flowlearn.devstack.flink_cluster import flink_rest
    from flowlearn.devstack.producer import DriftingStream

    settings, _ = stack
    batch = settings.job.batch_size
    n_batches = 80
    n = batch * n_batches
    model_id = f"eo-{uuid.uuid4().hex[:8]}"
    before = status()
    job_id = before["job"]["id"]

    def restarts() -> int:
        return job_restarts(settings, job_id)

    restarts_before = restarts()
    producer = threading.Thread(
        target=produce,
        kwargs=dict(
            bootstrap=settings.kafka.bootstrap,
            topics=settings.kafka.topics,
            model_id=model_id,
            count=n,
            rate=batch * 8,
            seed=21,
            bulk=batch,
            quiet=True,
        ),
    )
    producer.start()
    client = redis_client(settings)
    keys = Keys(settings.redis.prefix)
    # Kill once a few versions are out and a checkpoint has completed since.
    wait_until(
        "a few versions",
        lambda: (s := read_snapshot(client, keys, model_id)) and s.version >= 10,
        timeout_s=60,
        every_s=0.1,
    )

    def completed_checkpoints() -> int:
        return int(flink_rest(settings, f"/jobs/{job_id}/checkpoints")["counts"]["completed"])

    seen = completed_checkpoints()
    wait_until(
        "a checkpoint with some of this model's versions",
        lambda: completed_checkpoints() > seen,
        timeout_s=60,
        every_s=0.2,
    )
    epoch_before = read_snapshot(client, keys, model_id).epoch
    tm_java = status()["components"]["taskmanager"]["pids"][-1]
    os.kill(tm_java, signal.SIGKILL)
    producer.join(timeout=120)
    final = wait_until(
        f"{n} samples applied after recovery",
        lambda: (s := read_snapshot(client, keys, model_id)) and s.samples_applied >= n and s,
        timeout_s=240,
    )
    assert final.samples_applied == n
    assert final.version == len(batch_plan(n, batch))
    # The REST metrics are fetched every 10 s by default: wait for them to show the restart.
    wait_until("the job's restart count to grow", lambda: restarts() > restarts_before, 60, 1)
    assert final.epoch > epoch_before  # the restarted publisher opened a new lineage
    reference = ModelTrainer.create(model_id, ModelSpecs(settings).defaults.as_dict())
    records = DriftingStream(n_features=10, seed=21, model_id=model_id).take(n, 0)
    X = np.array([r["features"] for r in records])
    y = np.array([r["label"] for r in records], dtype=float)
    reference.train_samples(X, y)
    assert final.weights.tobytes() == reference.model.weights_vector().tobytes()
    wait_until("the job RUNNING again", lambda: status()["job"]["state"] == "RUNNING", 120)
