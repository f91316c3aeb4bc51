"""Publishes each model version to Redis (docs/architecture.md, "Redis") under a fresh epoch,
removes a deleted model from it, and writes a model's pin."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import redis
from pyflink.common import Row
from pyflink.datastream import ProcessFunction, RuntimeContext

from flowlearn.conf import Settings
from flowlearn.contracts.redis_contract import Keys, Publisher, redis_client
from flowlearn.operators.types import Published, Version
from flowlearn.state.rows import to_row

#: Redis write attempts before the operator fails (and Flink restarts from a checkpoint,
#: which opens a new epoch and republishes a snapshot).
PUBLISH_ATTEMPTS = 8


class RedisPublisher(ProcessFunction):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        r = self.settings.redis
        self.client = redis_client(r, timeout_s=10, connect_timeout_s=5)
        group = runtime_context.get_metrics_group()
        self.published = group.counter("versions_published")
        self.retries = group.counter("publish_retries")
        self.deleted = group.counter("models_deleted")
        self.last_version = 0
        group.gauge("last_published_version", lambda: self.last_version)
        self.publisher = self._with_retries(
            lambda: Publisher(self.client, Keys(r.prefix), r.deltas_maxlen)
        )

    def close(self) -> None:
        self.client.close()

    def _with_retries(self, write: Any) -> Any:
        delay = 0.1
        attempt = 1
        while True:
            try:
                return write()
            except (redis.ConnectionError, redis.TimeoutError):
                if attempt == PUBLISH_ATTEMPTS:
                    raise
                self.retries.inc()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                attempt += 1

    def process_element(self, value: Any, ctx: ProcessFunction.Context) -> Iterator[Row]:
        # By field order: a Row handed over inside a fused Python chain has no names.
        version = Version._make(value)
        if version.action == "delete":
            self._with_retries(lambda: self.publisher.delete(version.model_id))
            self.deleted.inc()
            return
        if version.action == "pin" and version.version:
            self._with_retries(
                lambda: self.publisher.pin(
                    version.model_id, version.version, version.spec, bytes(version.weights)
                )
            )
            return
        if version.action == "pin":
            self._with_retries(lambda: self.publisher.unpin(version.model_id))
            return
        mv = version.model_version()
        self._with_retries(lambda: self.publisher.publish(mv))
        self.published.inc()
        self.last_version = mv.version
        yield to_row(Published(mv.model_id, self.publisher.epoch, mv.version, mv.samples_applied))
