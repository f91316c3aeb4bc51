"""The prediction log: every served prediction to the events topic, off the serving path's CPU.

A request hands one :class:`Batch` to :meth:`PredictionLog.offer`: an append to a queue,
nothing more. The log's thread takes the queued batches every :data:`DRAIN_EVERY_S`, encodes
their records (JSON, one per instance, keyed by model id) and gives each to a confluent-kafka
producer in one C call; librdkafka batches and sends them on its own threads, outside the
interpreter's lock. The request never waits on Kafka, and the hand-off in bursts costs a
request less than producing from the request did (the producer woke librdkafka's thread
about every third record). At most :data:`PENDING_RECORDS` records wait for the thread, and
librdkafka's queue is bounded by ``predictor.log_queue_bytes`` bytes of records (and
:data:`QUEUE_RECORDS` records): past either, records are dropped and counted
(``queue_full``). While Kafka is unreachable librdkafka reconnects on its own and its queue
fills; a record not delivered within :data:`DELIVERY_TIMEOUT_MS` (or refused by the broker)
is dropped and counted (``kafka``). Nothing the log does is ever raised into a request.

librdkafka reports the records it could not deliver (only those: a report per record would
cost a Python call each); the same thread serves them at each drain and counts them in
``flowlearn_predictor_log_dropped_total{reason="kafka"}``. The records handed over, less
those and those still queued, were acknowledged: ``flowlearn_predictor_log_sent_total``.

A record is what the label join needs (docs/architecture.md: ``fl.events``) plus what was served::

    {"event_id", "model_id", "ts", "features", "score", "model_version", "epoch",
     "variant", "shadow": {"variant", "model_version", "score"} | null}

and, for a contextual bandit's choice, ``"action"`` and ``"propensity"`` (the reward sent
later on ``fl.labels`` with the event id trains the bandit on them).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import orjson

from flowlearn.conf import KafkaConf, PredictorConf
from flowlearn.serving.metrics import Metrics

log = logging.getLogger("flowlearn.serving.log")

#: Records (not requests) librdkafka queues before the log drops, whatever their bytes.
QUEUE_RECORDS = 100_000
#: A record not acknowledged this long after it was logged (Kafka down, say) is dropped.
DELIVERY_TIMEOUT_MS = 60_000
#: How often the log's thread takes the batches the requests handed over (and serves the
#: delivery reports): each drain takes the interpreter's lock once for all of them. Short
#: beside librdkafka's own wait for a batch to fill (``predictor.log_linger_ms``).
DRAIN_EVERY_S = 0.005
#: Records handed over and not yet drained, at most: the thread drains 2 million a second
#: at this bound, so only a thread starved of the interpreter's lock reaches it.
PENDING_RECORDS = 10_000
#: Retry backoff (seconds) while the producer cannot be made (a bad TLS file, say).
RETRY_MIN_S, RETRY_MAX_S = 0.5, 10.0


class _FreshIds:
    """Ids no other process makes: a random 64-bit prefix drawn once per process (again in
    a forked child) and a counter, as 32 hex digits like ``uuid4().hex``. A uuid4 costs a
    system call for its 16 random bytes; at one id per logged prediction that was a third
    of the log's cost to a request."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


#: A new event id (or request id) for an answer that was sent none.
fresh_id = _FreshIds()


class Producer(Protocol):
    """The part of ``confluent_kafka.Producer`` the log uses. It is made from a librdkafka
    configuration whose ``on_delivery`` is called, as ``(error, message)``, for each record
    that could not be delivered (``delivery.report.only.error``)."""

    def produce(self, topic: str, *, value: bytes, key: bytes) -> None:
        """Queue a record (BufferError: the queue is full); never blocks."""

    def poll(self, timeout: float) -> int:
        """Serve the delivery reports that are ready (waiting up to ``timeout``)."""

    def flush(self, timeout: float) -> int:
        """Send what is queued, within ``timeout``; returns how many records are left."""

    def purge(self) -> None:
        """Give up on what is queued (their reports say so at the next poll)."""

    def __len__(self) -> int:
        """Records queued or waiting for their acknowledgement (and reports not served)."""


#: Makes a producer from a librdkafka configuration (``confluent_kafka.Producer``; tests
#: give a fake).
ProducerFactory = Callable[[dict[str, Any]], Producer]


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
    #: A contextual bandit's choices: per instance, ``{"action", "propensity"}`` (the
    #: action as its feedback names it: an index, or the chosen action's features).
    choices: Sequence[Mapping[str, Any]] | None = None

    def records(self) -> Iterator[bytes]:
        shadow = self.shadow
        choices = self.choices
        for i, event_id in enumerate(self.event_ids):
            yield orjson.dumps(
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
            )


def producer_config(kafka: KafkaConf, predictor: PredictorConf) -> dict[str, Any]:
    """The log producer's librdkafka configuration: the connection from ``[kafka]``, the
    batching, acknowledgements and bound from ``[predictor]``."""
    return {
        **kafka.librdkafka_options(),
        "client.id": "flowlearn-predictor",
        "acks": predictor.log_acks,
        "linger.ms": predictor.log_linger_ms,
        "batch.size": predictor.log_batch_bytes,
        "queue.buffering.max.kbytes": max(1, predictor.log_queue_bytes // 1024),
        "queue.buffering.max.messages": QUEUE_RECORDS,
        "message.timeout.ms": DELIVERY_TIMEOUT_MS,
        # The JVM clients' partitioner: a model's records go where kafka-python and the
        # job's own producers would put them.
        "partitioner": "murmur2_random",
        # librdkafka's own messages (a broker down, say) go to this module's logger, served
        # by the reports thread.
        "logger": log,
    }


def confluent_producer(config: dict[str, Any]) -> Producer:
    from confluent_kafka import Producer as ConfluentProducer

    producer: Producer = ConfluentProducer(config)
    return producer


class PredictionLog:
    """A producer plus the thread that serves its delivery reports; see the module docstring."""

    def __init__(
        self,
        topic: str,
        config: dict[str, Any],
        metrics: Metrics,
        producer_factory: ProducerFactory = confluent_producer,
    ) -> None:
        self.topic = topic
        self._config = {
            **config,
            "on_delivery": self._report,
            "delivery.report.only.error": True,
        }
        self._factory = producer_factory
        self._metrics = metrics
        self._producer: Producer | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._queue_full = metrics.log_dropped.labels("queue_full")
        self._kafka_dropped = metrics.log_dropped.labels("kafka")
        # Batches handed over and their records (a request may be answered on a worker
        # thread too: hence the lock around the count).
        self._pending: deque[Batch] = deque()
        self._pending_records = 0
        self._closed = False
        self._lock = threading.Lock()
        # Records handed to the producer, and failed (both by the log's thread only); the
        # metrics are brought up to date at each drain.
        self._produced = 0
        self._failed = self._failed_counted = self._sent_counted = 0
        self._last_error: Any = None

    def start(self) -> None:
        """Make the producer (one attempt here; the thread retries) and start the thread."""
        self._producer = self._make()
        self._thread.start()

    def offer(self, batch: Batch) -> None:
        """Hand a batch's records to the log's thread, or drop and count them past
        :data:`PENDING_RECORDS`; never blocks, never raises."""
        n = len(batch.event_ids)
        with self._lock:
            closed = self._closed
            full = self._pending_records + n > PENDING_RECORDS
            if not (closed or full):
                self._pending_records += n
                self._pending.append(batch)
        if closed:
            self._kafka_dropped.inc(n)
        elif full:
            self._queue_full.inc(n)

    def depth(self) -> int:
        """Records handed over, queued in librdkafka or waiting for their acknowledgement."""
        producer = self._producer
        return self._pending_records + (len(producer) if producer is not None else 0)

    def _drain(self) -> None:
        """Give every batch handed over to the producer (on the log's thread)."""
        while self._pending:
            batch = self._pending.popleft()
            with self._lock:
                self._pending_records -= len(batch.event_ids)
            self._produce(batch)

    def _produce(self, batch: Batch) -> None:
        """Queue a batch's records in librdkafka, or drop and count them."""
        producer = self._producer
        if producer is None:
            self._kafka_dropped.inc(len(batch.event_ids))
            return
        key = batch.model_id.encode()
        for i, record in enumerate(batch.records()):
            try:
                producer.produce(self.topic, value=record, key=key)
                self._produced += 1
            except BufferError:  # librdkafka's queue is full: so are the next records
                self._queue_full.inc(len(batch.event_ids) - i)
                return
            except Exception as exc:  # nothing the log does may fail
                log.debug("prediction log: produce failed: %s", exc)
                self._kafka_dropped.inc()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and send what is handed over or queued (within ``timeout``; the
        rest is dropped and counted)."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            self._closed = True  # what is offered from now on is dropped at once
        self._drain()
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            if producer.flush(max(0.0, deadline - time.monotonic())):
                producer.purge()
                producer.poll(0)  # the purged records' reports: counted as dropped
        except Exception as exc:
            log.warning("prediction log: closing the producer: %s", exc)
        self._count(producer)

    def _report(self, error: Any, _message: Any) -> None:
        """A record not delivered (librdkafka reports no other)."""
        if error is not None:
            self._failed += 1
            self._last_error = error

    def _count(self, producer: Producer) -> None:
        """Bring the sent and dropped counts, and the queue's depth, up to date (on the
        thread that serves the reports)."""
        produced = self._produced
        queued = len(producer)
        failed = self._failed - self._failed_counted
        if failed:
            log.debug("prediction log: %d records not delivered: %s", failed, self._last_error)
            self._kafka_dropped.inc(failed)
            self._failed_counted += failed
        # What was handed over and neither failed nor is still queued was acknowledged.
        sent = produced - self._failed - queued - self._sent_counted
        if sent > 0:
            self._metrics.log_sent.inc(sent)
            self._sent_counted += sent
        self._metrics.log_queue.set(queued + self._pending_records)

    def _make(self) -> Producer | None:
        try:
            return self._factory(self._config)
        except Exception as exc:  # a bad setting librdkafka refuses, say
            log.warning("prediction log: cannot make the Kafka producer: %s", exc)
            return None

    def _run(self) -> None:
        backoff = RETRY_MIN_S
        retry_at = time.monotonic() + backoff
        while not self._stop.wait(DRAIN_EVERY_S):  # close() drains and serves the rest
            if self._producer is None and time.monotonic() >= retry_at:
                backoff = min(backoff * 2, RETRY_MAX_S)
                retry_at = time.monotonic() + backoff
                self._producer = self._make()
            self._drain()  # without a producer: the batches are counted as dropped
            producer = self._producer
            if producer is None:
                continue
            try:
                producer.poll(0)
            except Exception as exc:
                log.warning("prediction log: serving delivery reports: %s", exc)
            self._count(producer)
