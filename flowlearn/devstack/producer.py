"""A demo producer: a synthetic, drifting, labelled stream for one model, into Kafka.

Each sample's features are standard normal; its label is drawn from a logistic model whose
true weights are redrawn at each drift point (abrupt concept drift). With a label delay of
zero the samples go to ``fl.samples``; otherwise the features go to ``fl.events`` at once
and each label to ``fl.labels`` that much later (the label join of the job pairs them).

>>> stream = DriftingStream(n_features=3, seed=1, drift_at=(2,))
>>> [len(r["features"]) for r in stream.take(3, start_ts=0)]
[3, 3, 3]
"""

from __future__ import annotations

import heapq
import json
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flowlearn.conf import KafkaConf
from flowlearn.contracts.records import encode_sample_batch, now_ms


def kafka_client_options(target: str | KafkaConf) -> dict[str, Any]:
    """kafka-python client options for a broker address (plaintext) or a :class:`KafkaConf`
    (its security settings too)."""
    if isinstance(target, KafkaConf):
        return target.client_options()
    return {"bootstrap_servers": target}


@dataclass
class DriftingStream:
    n_features: int = 10
    seed: int = 0
    drift_at: Sequence[int] = ()
    model_id: str = "demo"
    #: Also redraw the concept every this many samples (0: never).
    drift_every: int = 0
    #: Event ids are ``<id_prefix>-<index>``; "" stands for ``<model_id>-<seed>``.
    id_prefix: str = ""
    _rng: np.random.Generator = field(init=False, repr=False)
    _weights: np.ndarray = field(init=False, repr=False)
    _index: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.id_prefix = self.id_prefix or f"{self.model_id}-{self.seed}"
        self._rng = np.random.default_rng(self.seed)
        self._weights = self._rng.normal(size=self.n_features)

    def take(self, n: int, start_ts: int, step_ms: int = 1) -> list[dict[str, Any]]:
        """The next ``n`` labelled samples, event times from ``start_ts`` by ``step_ms``."""
        out = []
        for k in range(n):
            if self._index in self.drift_at or (
                self.drift_every and self._index and self._index % self.drift_every == 0
            ):
                self._weights = self._rng.normal(size=self.n_features)
            x = self._rng.normal(size=self.n_features)
            p = 1.0 / (1.0 + np.exp(-float(x @ self._weights)))
            label = int(self._rng.random() < p)
            out.append(
                {
                    "event_id": f"{self.id_prefix}-{self._index}",
                    "model_id": self.model_id,
                    "ts": start_ts + k * step_ms,
                    "features": [round(float(v), 6) for v in x],
                    "label": label,
                }
            )
            self._index += 1
        return out


def _progress(sent: int, total: int | None, started: float, final: bool = False) -> None:
    rate = sent / max(time.monotonic() - started, 1e-9)
    of = f"/{total}" if total else ""
    end = "\n" if final else "\r"
    print(f"[produce] {sent}{of} samples, {rate:,.0f}/s", end=end, file=sys.stderr, flush=True)


def produce(
    bootstrap: str | KafkaConf,
    topics: Any,
    model_id: str = "demo",
    count: int | None = 10_000,
    rate: float = 1000.0,
    seed: int = 0,
    n_features: int = 10,
    drift_at: Sequence[int] = (),
    drift_every: int = 0,
    label_delay_ms: int = 0,
    bulk: int = 0,
    quiet: bool = False,
) -> int:
    """Send ``count`` samples (forever if None) at ``rate`` per second; returns how many.

    ``bulk`` > 0 sends them as bulk records (Arrow IPC) of that many samples each.
    """
    if bulk and label_delay_ms > 0:
        raise ValueError("bulk records carry labelled samples: use label_delay_ms=0")
    from kafka import KafkaProducer

    # Keys and values are encoded here, not by serializer callables: kafka-python 3
    # deprecates those (a Serializer class of its own would be the other way).
    producer = KafkaProducer(
        **kafka_client_options(bootstrap),
        acks="all",
        linger_ms=20,
        client_id=f"flowlearn-producer-{uuid.uuid4().hex[:8]}",
    )
    stream = DriftingStream(
        n_features=n_features,
        seed=seed,
        drift_at=drift_at,
        model_id=model_id,
        drift_every=drift_every,
        # The same seed sends the same samples, under new event ids: a run's ids would
        # otherwise repeat the last run's, and the job rightly drops repeated ids as
        # duplicates (for the label window: `make stop`, then `make run`, trained nothing).
        id_prefix=f"{model_id}-{seed}-{uuid.uuid4().hex[:8]}",
    )
    delayed: list[tuple[int, int, dict[str, Any]]] = []  # (due ms, seq, label record)
    sent = 0
    started = time.monotonic()
    last_report = started
    chunk = bulk or max(1, min(500, int(rate / 20) or 1))
    try:
        while count is None or sent < count:
            n = chunk if count is None else min(chunk, count - sent)
            now = now_ms()
            records = stream.take(n, start_ts=now, step_ms=0)
            if bulk:
                producer.send(
                    topics.samples,
                    key=model_id.encode(),
                    timestamp_ms=now,
                    value=_bulk_value(model_id, records),
                )
                records = []
                sent += n
            for rec in records:
                if label_delay_ms <= 0:
                    _send(producer, topics.samples, model_id, rec)
                else:
                    event = {k: rec[k] for k in ("event_id", "model_id", "ts", "features")}
                    _send(producer, topics.events, model_id, event)
                    label = {
                        "event_id": rec["event_id"],
                        "model_id": model_id,
                        "ts": rec["ts"] + label_delay_ms,
                        "label": rec["label"],
                    }
                    heapq.heappush(delayed, (label["ts"], sent, label))
                sent += 1
            _send_due(producer, topics.labels, delayed, model_id, now_ms())
            # Pace to the requested rate.
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
            if not quiet and time.monotonic() - last_report >= 1.0:
                _progress(sent, count, started)
                last_report = time.monotonic()
        while delayed:  # the labels still owed
            time.sleep(max(0.0, (delayed[0][0] - now_ms()) / 1000))
            _send_due(producer, topics.labels, delayed, model_id, now_ms())
    finally:
        producer.flush()
        producer.close()
        if not quiet:
            _progress(sent, count, started, final=True)
    return sent


def _bulk_value(model_id: str, records: list[dict[str, Any]]) -> bytes:
    return encode_sample_batch(
        model_id,
        np.array([r["ts"] for r in records]),
        np.array([r["features"] for r in records]),
        np.array([r["label"] for r in records], dtype=np.float64),
    )


def _send(producer: Any, topic: str, model_id: str, record: dict[str, Any]) -> None:
    """Send a JSON record keyed by its model, stamped with its ``ts``."""
    producer.send(
        topic, key=model_id.encode(), value=json.dumps(record).encode(), timestamp_ms=record["ts"]
    )


def _send_due(
    producer: Any,
    topic: str,
    delayed: list[tuple[int, int, dict[str, Any]]],
    model_id: str,
    now: int,
) -> None:
    while delayed and delayed[0][0] <= now:
        _, _, label = heapq.heappop(delayed)
        _send(producer, topic, model_id, label)


def send_raw(
    bootstrap: str | KafkaConf, topic: str, records: Sequence[bytes], key: str = "demo"
) -> None:
    """Send raw record values as they are (used to feed malformed input on purpose)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**kafka_client_options(bootstrap), acks="all")
    try:
        for raw in records:
            producer.send(topic, key=key.encode(), value=raw)
    finally:
        producer.flush()
        producer.close()
