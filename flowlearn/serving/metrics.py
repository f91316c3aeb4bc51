"""The predictor's Prometheus metrics, in a registry of their own per process or test app.

A registry per :class:`Metrics` (rather than prometheus-client's global one) lets several
predictor apps live in one process, as the tests do, each with exact counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Latency buckets in seconds: the predictor answers in well under a millisecond, so the
#: low end is fine-grained; 10 ms is the issue's p95 bound.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """Every metric the predictor exposes on ``/metrics``."""

    def __init__(self) -> None:
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
        self.model_version = Gauge(
            "flowlearn_predictor_model_version",
            "Version served (the pinned one when a pin is honoured)",
            ["model"],
            registry=r,
        )
        self.model_latest_version = Gauge(
            "flowlearn_predictor_model_latest_version", "Newest version held", ["model"], registry=r
        )
        self.model_epoch = Gauge(
            "flowlearn_predictor_model_epoch", "Epoch of the served version", ["model"], registry=r
        )
        self.model_age = Gauge(
            "flowlearn_predictor_model_age_seconds",
            "Seconds since the newest held version was published",
            ["model"],
            registry=r,
        )
        self.model_stale = Gauge(
            "flowlearn_predictor_model_stale",
            "1 when the newest held version is older than stale_after_s",
            ["model"],
            registry=r,
        )
        self.pin_missing = Gauge(
            "flowlearn_predictor_pin_missing",
            "1 when the pinned version is not held (the latest is served)",
            ["model"],
            registry=r,
        )
        self.redis_up = Gauge("flowlearn_predictor_redis_up", "1 while Redis answers", registry=r)
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
            "Requests waiting in the prediction log queue",
            registry=r,
        )
        self.auth_refused = Counter(
            "flowlearn_predictor_auth_refused",
            "Requests refused for their bearer token, by reason (missing, invalid, scope)",
            ["reason"],
            registry=r,
        )
