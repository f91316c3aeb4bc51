"""The prediction log never blocks a request, counts what it drops, and sends JSON records."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from flowlearn.serving.metrics import Metrics
from flowlearn.serving.prediction_log import Batch, PredictionLog, Shadow


def batch(n: int = 2, body_bytes: int = 0) -> Batch:
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
        body_bytes,
    )


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def wait_for(what: str, check: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class Producer:
    """A producer whose sends wait for ``gate`` and whose deliveries succeed or fail."""

    def __init__(self, fail: bool = False) -> None:
        self.gate = threading.Event()
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.fail = fail
        self.closed = False

    def send(self, topic: str, value: bytes, key: bytes) -> Any:
        self.gate.wait()
        self.sent.append((topic, key, value))
        return self

    def add_callback(self, fn: Any) -> None:
        if not self.fail:
            fn(None)

    def add_errback(self, fn: Any) -> None:
        if self.fail:
            fn(RuntimeError("broker said no"))

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def test_records_are_one_json_object_per_instance_keyed_by_model():
    producer, metrics = Producer(), Metrics()
    producer.gate.set()
    log = PredictionLog("fl.events", lambda: producer, metrics)
    log.start()
    log.offer(batch())
    log.close()
    assert producer.closed and [(t, k) for t, k, _ in producer.sent] == [("fl.events", b"m")] * 2
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
    assert sample(metrics, "flowlearn_predictor_log_sent_total") == 2


def test_a_full_queue_drops_and_counts_without_blocking():
    producer, metrics = Producer(), Metrics()  # stuck: its gate stays closed
    log = PredictionLog("fl.events", lambda: producer, metrics, maxsize=3)
    log.start()
    log.offer(batch(2))
    wait_for("the thread to hold the first batch", lambda: log.depth() == 0)
    started = time.perf_counter()
    for _ in range(20):
        log.offer(batch(2))
    assert time.perf_counter() - started < 0.1
    # Three batches wait in the queue, the other 17 are dropped.
    assert sample(metrics, "flowlearn_predictor_log_dropped_total", reason="queue_full") == 34
    producer.gate.set()
    log.close()
    assert len(producer.sent) == 2 * 4


def test_the_queue_is_bounded_in_bytes_of_request_bodies():
    """#23: the queue held 10,000 requests whatever their size (up to 10 GB of 1 MiB
    bodies while Kafka was slow); now their bodies' bytes are bounded too."""
    producer, metrics = Producer(), Metrics()  # stuck: its gate stays closed
    log = PredictionLog("fl.events", lambda: producer, metrics, max_bytes=1000)
    log.start()
    log.offer(batch(2, body_bytes=400))
    wait_for("the thread to hold the first batch", lambda: log.depth() == 0)
    for _ in range(5):
        log.offer(batch(2, body_bytes=400))
    # 400 (being sent) + 400 queued fit in 1000; the other four are dropped.
    assert log.depth() == 1 and log.queued_bytes() == 800
    assert sample(metrics, "flowlearn_predictor_log_dropped_total", reason="queue_full") == 8
    producer.gate.set()
    wait_for("the queue to drain", lambda: log.queued_bytes() == 0)
    log.offer(batch(2, body_bytes=400))  # room again
    log.close()
    assert len(producer.sent) == 2 * 3
    assert log.queued_bytes() == 0


def test_kafka_unreachable_retries_and_failed_deliveries_are_counted():
    attempts = []
    producer, metrics = Producer(fail=True), Metrics()
    producer.gate.set()

    def factory() -> Producer:
        attempts.append(1)
        if len(attempts) < 2:
            raise ConnectionError("no brokers")
        return producer

    log = PredictionLog("fl.events", factory, metrics)
    log.start()
    log.offer(batch(3))
    wait_for(
        "delivery failures",
        lambda: sample(metrics, "flowlearn_predictor_log_dropped_total", reason="kafka") == 3,
    )
    log.close()
    assert len(attempts) == 2 and sample(metrics, "flowlearn_predictor_log_sent_total") == 0


def test_closing_while_kafka_is_down_returns_promptly():
    def factory() -> Producer:
        raise ConnectionError("no brokers")

    log = PredictionLog("fl.events", factory, Metrics())
    log.start()
    log.offer(batch())
    started = time.perf_counter()
    log.close(timeout=5)
    assert time.perf_counter() - started < 1.0
