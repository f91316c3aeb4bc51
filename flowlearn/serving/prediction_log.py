"""The prediction log: every served prediction to the events topic, off the request path.

A request hands one :class:`Batch` to :meth:`PredictionLog.offer`, which never
blocks: when the queue holds :data:`QUEUE_SIZE` requests, or their bodies' bytes would pass
``max_bytes`` (``predictor.log_queue_bytes``), the batch is dropped and counted. A thread turns
batches into JSON records (one per instance, keyed by model id) and gives them to a
kafka-python producer; while Kafka is unreachable the thread retries the connection with
backoff, the queue fills, and later batches are dropped — requests are never slowed.

A record is what the label join needs (docs/architecture.md: ``fl.events``) plus what was served::

    {"event_id", "model_id", "ts", "features", "score", "model_version", "epoch",
     "variant", "shadow": {"variant", "model_version", "score"} | null}

and, for a contextual bandit's choice, ``"action"`` and ``"propensity"`` (the reward sent
later on ``fl.labels`` with the event id trains the bandit on them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from flowlearn.conf import KafkaConf
from flowlearn.serving.metrics import Metrics

log = logging.getLogger("flowlearn.serving.log")

#: Requests (not records) the queue holds before it drops.
QUEUE_SIZE = 10_000
#: Connection retry backoff (seconds) while Kafka is unreachable.
RETRY_MIN_S, RETRY_MAX_S = 0.5, 10.0


class Producer(Protocol):
    """The part of ``kafka.KafkaProducer`` the log uses."""

    def send(self, topic: str, value: bytes, key: bytes) -> Any: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


class Shadow(NamedTuple):
    """The variant scored beside the served one."""

    variant: str
    model_version: int
    scores: list[Any]


class Batch(NamedTuple):
    """One answered request: a record per instance."""

    model_id: str
    ts: int
    event_ids: list[str]
    features: Sequence[Any]
    scores: list[Any]
    model_version: int
    epoch: int
    variant: str
    shadow: Shadow | None
    #: The size of the request body the batch was read from: what the queue bounds.
    body_bytes: int = 0
    #: A contextual bandit's choices: per instance, ``{"action", "propensity"}`` (the
    #: action as its feedback names it: an index, or the chosen action's features).
    choices: Sequence[Mapping[str, Any]] | None = None

    def records(self) -> Iterator[bytes]:
        shadow = self.shadow
        choices = self.choices
        for i, event_id in enumerate(self.event_ids):
            yield json.dumps(
                {
                    **({} if choices is None else choices[i]),
                    "event_id": event_id,
                    "model_id": self.model_id,
                    "ts": self.ts,
                    "features": self.features[i],
                    "score": self.scores[i],
                    "model_version": self.model_version,
                    "epoch": self.epoch,
                    "variant": self.variant,
                    "shadow": None
                    if shadow is None
                    else {
                        "variant": shadow.variant,
                        "model_version": shadow.model_version,
                        "score": shadow.scores[i],
                    },
                }
            ).encode()


def kafka_producer(kafka: KafkaConf) -> Callable[[], Producer]:
    """A factory of kafka-python producers whose calls are all bounded in time."""

    def make() -> Producer:
        from kafka import KafkaProducer

        producer: Producer = KafkaProducer(
            **kafka.client_options(),
            client_id="flowlearn-predictor",
            acks=1,
            linger_ms=20,
            max_block_ms=2000,
            request_timeout_ms=5000,
            retries=3,
        )
        return producer

    return make


class PredictionLog:
    """Bounded queue plus one producer thread; see the module docstring."""

    def __init__(
        self,
        topic: str,
        producer_factory: Callable[[], Producer],
        metrics: Metrics,
        maxsize: int = QUEUE_SIZE,
        max_bytes: int = 64 * 2**20,
    ) -> None:
        self.topic = topic
        self._factory = producer_factory
        self._metrics = metrics
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize)
        #: The queued batches' body bytes, and their bound.
        self._bytes = 0
        self.max_bytes = max_bytes
        self._bytes_lock = threading.Lock()
        self._stop = threading.Event()
        self._connecting = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, batch: Batch) -> None:
        """Queue a batch, or drop and count it when the queue is full (in requests or in
        bytes); never blocks."""
        with self._bytes_lock:
            fits = self._bytes + batch.body_bytes <= self.max_bytes
            if fits:
                self._bytes += batch.body_bytes
        if fits:
            try:
                self._queue.put_nowait(batch)
                return
            except queue.Full:
                self._release(batch)
        self._metrics.log_dropped.labels("queue_full").inc(len(batch.event_ids))

    def queued_bytes(self) -> int:
        """The body bytes of the batches queued or being sent."""
        with self._bytes_lock:
            return self._bytes

    def _release(self, batch: Batch) -> None:
        with self._bytes_lock:
            self._bytes -= batch.body_bytes

    def depth(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within ``timeout``) and stop the thread."""
        self._stop.set()
        # A full queue here means the thread is stuck on Kafka: it is a daemon and dies
        # with the process.
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(0.05)
            if self._connecting.is_set():
                # kafka-python's constructor cannot be interrupted (it may try to bootstrap
                # for 30 s), and without a connection there is nothing to flush.
                break

    def _connect(self) -> Producer | None:
        backoff = RETRY_MIN_S
        while True:  # at least one attempt, even when closing: what is queued may go out
            self._connecting.set()
            try:
                return self._factory()
            except Exception as exc:  # kafka-python raises several unrelated types
                log.warning(
                    "prediction log: Kafka unreachable (%s); retrying in %.1fs", exc, backoff
                )
            finally:
                self._connecting.clear()
            if self._stop.wait(backoff):
                return None
            backoff = min(backoff * 2, RETRY_MAX_S)

    def _run(self) -> None:
        producer: Producer | None = None
        while True:
            batch = self._queue.get()
            if batch is None:
                break
            if producer is None:
                producer = self._connect()
                if producer is None:  # stopping while Kafka is down: what is queued is lost
                    self._metrics.log_dropped.labels("kafka").inc(len(batch.event_ids))
                    self._release(batch)
                    continue
            self._send(producer, batch)
            self._release(batch)  # its records are the producer's (bounded buffer) now
        if producer is not None:
            try:
                producer.flush(timeout=2.0)
                producer.close(timeout=2.0)
            except Exception as exc:
                log.warning("prediction log: closing the producer: %s", exc)

    def _send(self, producer: Producer, batch: Batch) -> None:
        key = batch.model_id.encode()
        for record in batch.records():
            try:
                future = producer.send(self.topic, value=record, key=key)
            except Exception as exc:  # buffer full or metadata timeout (bounded by max_block_ms)
                log.debug("prediction log: send failed: %s", exc)
                self._metrics.log_dropped.labels("kafka").inc()
                continue
            future.add_callback(self._delivered)
            future.add_errback(self._delivery_failed)

    def _delivered(self, _metadata: Any) -> None:
        self._metrics.log_sent.inc()

    def _delivery_failed(self, exc: BaseException) -> None:
        log.debug("prediction log: delivery failed: %s", exc)
        self._metrics.log_dropped.labels("kafka").inc()
