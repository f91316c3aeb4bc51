"""Publishes each model version to Redis (docs/architecture.md, "Redis") under a fresh epoch,
removes a deleted model from it, and writes a model's pin.

Redis refuses a version older than the one the model holds (the fence in
:class:`flowlearn.contracts.redis_contract.Publisher`): this instance is then a zombie, left
running by a failover that already started a newer epoch elsewhere. Its refused writes are
counted (``publish_refused``) and logged, and it goes on: Flink cancels it soon enough."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import redis
from pyflink.common import Row
from pyflink.datastream import ProcessFunction, RuntimeContext

from flowlearn.conf import Settings
from flowlearn.contracts.redis_contract import Keys, Publisher, PublishOutcome, redis_client
from flowlearn.operators.types import Published, Version
from flowlearn.state.rows import to_row

#: Redis write attempts before the operator fails (and Flink restarts from a checkpoint,
#: which opens a new epoch and republishes a snapshot).
PUBLISH_ATTEMPTS = 8

log = logging.getLogger(__name__)


class RedisPublisher(ProcessFunction):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        r = self.settings.redis
        self.client = redis_client(r, timeout_s=10, connect_timeout_s=5)
        group = runtime_context.get_metrics_group()
        self.published = group.counter("versions_published")
        self.retries = group.counter("publish_retries")
        self.refused = group.counter("publish_refused")
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
            pinned = self._with_retries(
                lambda: self.publisher.pin(
                    version.model_id, version.version, version.spec, bytes(version.weights)
                )
            )
            if not pinned:
                self._refused(version.model_id, f"pin of version {version.version}")
            return
        if version.action == "pin":
            self._with_retries(lambda: self.publisher.unpin(version.model_id))
            return
        mv = version.model_version()
        if self._with_retries(lambda: self.publisher.publish(mv)) is PublishOutcome.REFUSED:
            self._refused(mv.model_id, f"version {mv.version}")
            return
        self.published.inc()
        self.last_version = mv.version
        yield to_row(Published(mv.model_id, self.publisher.epoch, mv.version, mv.samples_applied))

    def _refused(self, model_id: str, what: str) -> None:
        self.refused.inc()
        log.warning(
            "Redis refused %s of model %s from epoch %d: the model holds a newer epoch's "
            "version (this publisher outlived a failover)",
            what,
            model_id,
            self.publisher.epoch,
        )
