"""A model's lifecycle from outside the job (docs/models.md): ``create`` and ``delete``
commands sent to ``fl.control`` keyed by the model id, and the job's answer read back from
``fl.alerts``; the models the predictors can serve, from Redis."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from flowlearn.conf import Settings
from flowlearn.contracts.records import control_record
from flowlearn.contracts.redis_contract import Keys, model_headers, redis_client
from flowlearn.devstack.producer import send_raw


class LifecycleError(RuntimeError):
    """The job did not answer a command in time (is it running?)."""


@dataclass(frozen=True)
class Answer:
    """The job's alert for one command: ``ok``, and ``reason`` when it was refused."""

    ok: bool
    detail: dict[str, Any]

    @property
    def reason(self) -> str:
        return str(self.detail.get("reason", ""))


def send_and_wait(
    settings: Settings,
    model_id: str,
    command: str,
    args: dict[str, Any],
    source: str,
    timeout_s: float = 60.0,
) -> Answer:
    """Send ``command`` for ``model_id`` and wait for the trainer's answer on ``fl.alerts``
    (matched by a request id in the args). The job's alerts are written transactionally, so
    an answer shows once the checkpoint after the command completes."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    topics = settings.kafka.topics
    request = uuid.uuid4().hex
    try:
        consumer = KafkaConsumer(
            **settings.kafka.client_options(),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            client_id="flowlearn-lifecycle",
        )
    except KafkaError as exc:
        raise LifecycleError(
            f"Kafka at {settings.kafka.bootstrap} is unreachable ({exc}): is the stack up "
            "(flowlearn up)?"
        ) from None
    try:
        partitions = consumer.partitions_for_topic(topics.alerts) or set()
        tps = [TopicPartition(topics.alerts, p) for p in sorted(partitions)]
        consumer.assign(tps)
        for tp, offset in consumer.end_offsets(tps).items():
            consumer.seek(tp, offset)  # answers come after the command
        record = control_record(model_id, command, {**args, "request": request}, source)
        send_raw(settings.kafka, topics.control, [record.encode()], key=model_id)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for messages in consumer.poll(timeout_ms=500).values():
                for message in messages:
                    answer = _answer(message.value, model_id, request)
                    if answer is not None:
                        return answer
    finally:
        consumer.close()
    raise LifecycleError(
        f"no answer to '{command}' for model {model_id!r} on {topics.alerts} within "
        f"{timeout_s:.0f} s: is the job running (flowlearn status)?"
    )


def _answer(value: bytes, model_id: str, request: str) -> Answer | None:
    try:
        alert = json.loads(value)
        detail = alert["detail"]
        if alert["model_id"] == model_id and detail["args"]["request"] == request:
            return Answer(bool(detail.get("ok")), detail)
    except (ValueError, KeyError, TypeError):
        pass  # another kind of alert
    return None


def served_models(
    settings: Settings, model_ids: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The models in Redis (of ``model_ids``, default all) with their version, samples
    applied and published spec (what ``flowlearn models list`` shows)."""
    client = redis_client(settings.redis)
    try:
        headers = model_headers(client, Keys(settings.redis.prefix), model_ids)
    except redis.RedisError as exc:
        raise LifecycleError(
            f"Redis at {settings.redis.host}:{settings.redis.port} is unreachable ({exc}): "
            "is the stack up (flowlearn up)?"
        ) from None
    finally:
        client.close()
    return {
        model_id: {name: header[name] for name in ("version", "samples_applied", "spec")}
        for model_id, header in headers.items()
    }
