"""The prediction log never blocks a request, counts what it drops, and sends JSON records."""

from __future__ import annotations

import json
import time
from typing import Any

from flowlearn.serving.metrics import Metrics
from flowlearn.serving.prediction_log import PENDING_RECORDS, Batch, PredictionLog, Shadow
from tests.ports import free_port


def batch(n: int = 2) -> Batch:
    return Batch(
        "m",
        1700000000000,
        [f"e{i}" for i in range(n)],
        [[float(i)] for i in range(n)],
        [0.5] * n,
        4,
        2,
        "online",
        Shadow("baseline", 0, [0.25] * n),
    )


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def wait_for(what: str, check: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class Producer:
    """confluent-kafka's producer as the log uses it: a queue of at most ``capacity`` records
    (BufferError past it) that poll() and flush() send to a broker that acknowledges them
    (``up``), refuses them (``fail``: reported to the configuration's ``on_delivery``, the
    only reports it asks for), or is away."""

    def __init__(self, capacity: int = 1000, up: bool = True, fail: bool = False) -> None:
        self.capacity, self.up, self.fail = capacity, up, fail
        self.config: dict[str, Any] = {}
        self.queued: list[tuple[str, bytes, bytes]] = []
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.purged = False

    def __call__(self, config: dict[str, Any]) -> Producer:
        """The producer factory: the log gives its configuration."""
        assert config["delivery.report.only.error"] is True
        self.config = config
        return self

    def produce(self, topic: str, *, value: bytes, key: bytes) -> None:
        if len(self.queued) >= self.capacity:
            raise BufferError("Local: Queue full")
        self.queued.append((topic, key, value))

    def poll(self, timeout: float) -> int:
        if not self.up:
            return 0
        served, self.queued = self.queued, []
        for record in served:
            if self.fail:
                self.config["on_delivery"](RuntimeError("broker said no"), None)
            else:
                self.sent.append(record)
        return len(served)

    def flush(self, timeout: float) -> int:
        self.poll(timeout)
        return len(self.queued)

    def purge(self) -> None:
        self.purged = True
        self.up, self.fail = True, True  # purged records are reported as failed

    def __len__(self) -> int:
        return len(self.queued)


def test_records_are_one_json_object_per_instance_keyed_by_model():
    producer, metrics = Producer(), Metrics()
    log = PredictionLog("fl.events", {}, metrics, producer)
    log.start()
    log.offer(batch())
    wait_for("two records sent", lambda: sample(metrics, "flowlearn_predictor_log_sent_total") == 2)
    log.close()
    assert [(t, k) for t, k, _ in producer.sent] == [("fl.events", b"m")] * 2
    assert json.loads(producer.sent[1][2]) == {
        "event_id": "e1",
        "model_id": "m",
        "ts": 1700000000000,
        "features": [1.0],
        "score": 0.5,
        "model_version": 4,
        "epoch": 2,
        "variant": "online",
        "shadow": {"variant": "baseline", "model_version": 0, "score": 0.25},
    }
    assert sample(metrics, "flowlearn_predictor_log_queue") == 0


def test_a_full_queue_drops_and_counts_without_blocking():
    producer, metrics = Producer(capacity=5, up=False), Metrics()  # Kafka away
    log = PredictionLog("fl.events", {}, metrics, producer)
    log.start()
    started = time.perf_counter()
    for _ in range(20):
        log.offer(batch(2))
    assert time.perf_counter() - started < 0.1
    # Five records fit (two batches and half of the third); the other 35 are dropped.
    wait_for(
        "35 records dropped",
        lambda: sample(metrics, "flowlearn_predictor_log_dropped_total", reason="queue_full") == 35,
    )
    wait_for("the queue gauge", lambda: sample(metrics, "flowlearn_predictor_log_queue") == 5)
    assert log.depth() == 5
    producer.up = True
    wait_for("five records sent", lambda: len(producer.sent) == 5)
    log.close()
    assert sample(metrics, "flowlearn_predictor_log_sent_total") == 5


def test_records_not_yet_taken_by_the_logs_thread_are_bounded_too():
    producer, metrics = Producer(capacity=2 * PENDING_RECORDS), Metrics()
    log = PredictionLog("fl.events", {}, metrics, producer)  # its thread not started yet
    log.offer(batch(PENDING_RECORDS - 1))
    log.offer(batch(2))  # one record too many: the whole batch is dropped
    log.offer(batch(1))
    assert sample(metrics, "flowlearn_predictor_log_dropped_total", reason="queue_full") == 2
    assert log.depth() == PENDING_RECORDS
    log.start()
    wait_for(
        "every record handed over sent",
        lambda: sample(metrics, "flowlearn_predictor_log_sent_total") == PENDING_RECORDS,
    )
    log.close()
    assert log.depth() == 0


def test_failed_deliveries_are_counted_never_raised():
    producer, metrics = Producer(fail=True), Metrics()
    log = PredictionLog("fl.events", {}, metrics, producer)
    log.start()
    log.offer(batch(3))
    wait_for(
        "delivery failures",
        lambda: sample(metrics, "flowlearn_predictor_log_dropped_total", reason="kafka") == 3,
    )
    log.close()
    assert sample(metrics, "flowlearn_predictor_log_sent_total") == 0


def test_a_producer_that_cannot_be_made_is_retried_and_its_batches_counted():
    attempts = []
    producer, metrics = Producer(), Metrics()

    def factory(config: dict[str, Any]) -> Producer:
        attempts.append(1)
        if len(attempts) < 2:
            raise ValueError("ssl.ca.location failed: no such file")
        return producer(config)

    log = PredictionLog("fl.events", {}, metrics, factory)
    log.start()
    log.offer(batch(3))  # no producer yet
    wait_for(
        "3 records dropped",
        lambda: sample(metrics, "flowlearn_predictor_log_dropped_total", reason="kafka") == 3,
    )

    offered = [3]

    def offered_and_sent() -> bool:
        log.offer(batch(1))
        offered.append(1)
        return bool(producer.sent)

    wait_for("a record sent once the producer is made", offered_and_sent)
    log.close()
    assert len(attempts) == 2
    sent = sample(metrics, "flowlearn_predictor_log_sent_total")
    dropped = sample(metrics, "flowlearn_predictor_log_dropped_total", reason="kafka")
    assert sent == len(producer.sent) >= 1 and sent + dropped == sum(offered)


def test_closing_while_kafka_is_down_returns_promptly_and_counts_what_is_left():
    producer, metrics = Producer(up=False), Metrics()
    log = PredictionLog("fl.events", {}, metrics, producer)
    log.start()
    log.offer(batch(4))
    started = time.perf_counter()
    log.close(timeout=0.5)
    assert time.perf_counter() - started < 1.0
    assert producer.purged
    assert sample(metrics, "flowlearn_predictor_log_dropped_total", reason="kafka") == 4
    log.offer(batch(1))  # after close: dropped, not raised
    assert sample(metrics, "flowlearn_predictor_log_dropped_total", reason="kafka") == 5


def test_the_confluent_producer_with_kafka_away_counts_what_it_could_not_send():
    """The real client, configured from [kafka] and [predictor], behind the log: it makes
    no connection at once, and what it could not deliver by close() is counted."""
    from flowlearn.conf import load_settings
    from flowlearn.serving.prediction_log import producer_config

    port = free_port()  # nothing listens there
    settings = load_settings(
        env={"FLOWLEARN__KAFKA__PORT": str(port), "FLOWLEARN__PREDICTOR__LOG_ACKS": "all"}
    )
    metrics = Metrics()
    log = PredictionLog("fl.events", producer_config(settings.kafka, settings.predictor), metrics)
    log.start()
    log.offer(batch(3))
    assert log.depth() >= 3  # and librdkafka's log lines (connection refused), not served yet
    started = time.perf_counter()
    log.close(timeout=0.5)
    assert time.perf_counter() - started < 2.0
    assert sample(metrics, "flowlearn_predictor_log_dropped_total", reason="kafka") == 3
    assert sample(metrics, "flowlearn_predictor_log_sent_total") == 0
