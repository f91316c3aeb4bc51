"""A model's lifecycle from outside the job (docs/models.md): ``create`` and ``delete``
commands sent to ``fl.control`` keyed by the model id, and the job's answer read back from
``fl.alerts``; the models the predictors can serve, from Redis."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from flowlearn.conf import Settings
from flowlearn.contracts.records import control_record
from flowlearn.contracts.redis_contract import Keys, redis_client


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
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
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
        producer = KafkaProducer(**settings.kafka.client_options(), acks="all")
        try:
            record = control_record(model_id, command, {**args, "request": request}, source)
            producer.send(topics.control, key=model_id.encode(), value=record.encode())
        finally:
            producer.flush()
            producer.close()
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


def served_models(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every model in Redis with its version, samples applied and spec (what
    ``flowlearn models list`` shows)."""
    keys = Keys(settings.redis.prefix)
    client = redis_client(settings.redis)
    try:
        model_ids = sorted(raw.decode() for raw in client.smembers(keys.models))
        pipe = client.pipeline(transaction=False)
        for model_id in model_ids:  # the header only: weights can be megabytes a model
            pipe.hmget(keys.snapshot(model_id), "version", "samples_applied", "spec")
        models = {}
        for model_id, (version, applied, spec) in zip(model_ids, pipe.execute(), strict=True):
            if version is not None and applied is not None and spec is not None:
                models[model_id] = {
                    "version": int(version),
                    "samples_applied": int(applied),
                    "spec": json.loads(spec),
                }
        return models
    except redis.RedisError as exc:
        raise LifecycleError(
            f"Redis at {settings.redis.host}:{settings.redis.port} is unreachable ({exc}): "
            "is the stack up (flowlearn up)?"
        ) from None
    finally:
        client.close()
