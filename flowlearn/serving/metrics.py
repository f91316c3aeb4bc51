"""The predictor's Prometheus metrics, in a registry of their own per process or test app.

A registry per :class:`Metrics` (rather than prometheus-client's global one) lets several
predictor apps live in one process, as the tests do, each with exact counts.

With several workers (flowlearn.serving.workers), prometheus-client's multiprocess mode is on
(``PROMETHEUS_MULTIPROC_DIR``, set by the master before a worker imports anything): every
worker writes its values to files there, and ``/metrics`` on any worker adds them up.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

#: Where the workers' metric files are (prometheus-client's own variable).
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

#: Latency buckets in seconds: the predictor answers in well under a millisecond, so the
#: low end is fine-grained; 10 ms is the issue's p95 bound.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """Every metric the predictor exposes on ``/metrics``."""

    def __init__(self) -> None:
        #: Multiprocess mode: prometheus-client decided it when it was imported.
        self.multiprocess = MULTIPROC_DIR in os.environ
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "flowlearn_predictor_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "flowlearn_predictor_request_seconds",
            "Time spent answering a request, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "flowlearn_predictor_predictions",
            "Instances scored, by model and served variant",
            ["model", "variant"],
            registry=r,
        )
        self.unknown_features = Counter(
            "flowlearn_predictor_unknown_features",
            "Feature names in requests that the model does not have (ignored), by model",
            ["model"],
            registry=r,
        )
        self.fallbacks = Counter(
            "flowlearn_predictor_fallbacks",
            "Requests answered in a degraded way, by model and reason "
            "(stale, degraded, pin_missing, baseline)",
            ["model", "reason"],
            registry=r,
        )
        self.redis_up = Gauge(
            "flowlearn_predictor_redis_up",
            "1 while Redis answers",
            registry=r,
            multiprocess_mode="livemin",  # across workers: 0 when any of them lost Redis
        )
        self.reloads = Counter(
            "flowlearn_predictor_snapshot_loads",
            "Snapshots loaded, by model and reason (start, epoch, gap, behind, reset)",
            ["model", "reason"],
            registry=r,
        )
        self.deltas_applied = Counter(
            "flowlearn_predictor_deltas_applied",
            "Delta stream entries applied",
            ["model"],
            registry=r,
        )
        self.stream_errors = Counter(
            "flowlearn_predictor_stream_errors",
            "Unusable snapshots or stream entries, by model and kind",
            ["model", "kind"],
            registry=r,
        )
        self.log_sent = Counter(
            "flowlearn_predictor_log_sent",
            "Prediction log records acknowledged by Kafka",
            registry=r,
        )
        self.log_dropped = Counter(
            "flowlearn_predictor_log_dropped",
            "Prediction log records dropped, by reason (queue_full, kafka)",
            ["reason"],
            registry=r,
        )
        self.log_queue = Gauge(
            "flowlearn_predictor_log_queue",
            "Prediction log records queued or waiting for Kafka's acknowledgement",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.worker_restarts = Counter(
            "flowlearn_predictor_worker_restarts",
            "Worker processes started again after one exited unexpectedly",
            registry=r,
        )
        self.auth_refused = Counter(
            "flowlearn_predictor_auth_refused",
            "Requests refused for their bearer token, by reason (missing, invalid, scope)",
            ["reason"],
            registry=r,
        )
        if self.multiprocess:
            # Counters and histograms add up over every worker, live or gone; the gauges
            # above as their multiprocess_mode says. The model gauges are the answering
            # worker's own (they are read from its replicas at each scrape).
            self._scraped = CollectorRegistry()
            MultiProcessCollector(self._scraped)
        else:
            self._scraped = r

    def watch_models(self, read: Callable[[], Iterable[ModelState]]) -> None:
        """Expose the per-model gauges of the models ``read`` returns at each scrape."""
        self._scraped.register(_ModelGauges(read))

    def exposition(self) -> bytes:
        """What ``/metrics`` answers: Prometheus text, over every worker in multiprocess mode."""
        return generate_latest(self._scraped)


class ModelState(NamedTuple):
    """A served model as the per-model gauges show it."""

    model: str
    version: int
    latest_version: int
    epoch: int
    age_s: float
    stale: bool
    pin_missing: bool


#: The per-model gauges: (name, help, the ModelState field).
MODEL_GAUGES = (
    (
        "flowlearn_predictor_model_version",
        "Version served (the pinned one when a pin is honoured)",
        "version",
    ),
    ("flowlearn_predictor_model_latest_version", "Newest version held", "latest_version"),
    ("flowlearn_predictor_model_epoch", "Epoch of the served version", "epoch"),
    (
        "flowlearn_predictor_model_age_seconds",
        "Seconds since the newest held version was published",
        "age_s",
    ),
    (
        "flowlearn_predictor_model_stale",
        "1 when the newest held version is older than stale_after_s",
        "stale",
    ),
    (
        "flowlearn_predictor_pin_missing",
        "1 when the pinned version is not held (the latest is served)",
        "pin_missing",
    ),
)


class _ModelGauges(Collector):
    """The per-model gauges, read at each scrape: a model deleted (or not loaded yet) has
    none, with nothing to remove (multiprocess mode could not remove a label set)."""

    def __init__(self, read: Callable[[], Iterable[ModelState]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = list(self._read())
        for name, documentation, field in MODEL_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=["model"])
            for state in states:
                family.add_metric([state.model], float(getattr(state, field)))
            yield family
