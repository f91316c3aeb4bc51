"""Kafka sources and sinks of the job, all configured from :class:`flowlearn.conf.Settings`."""

from __future__ import annotations

from typing import Any

from pyflink.common import WatermarkStrategy
from pyflink.common.serialization import (
    DeserializationSchema,
    SerializationSchema,
    SimpleStringSchema,
)
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetResetStrategy,
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
)

from flowlearn.conf import Settings

#: Longer than the longest checkpoint plus a restart (EXACTLY_ONCE KafkaSink); the broker's
#: transaction.max.timeout.ms must allow it.
TRANSACTION_TIMEOUT_MS = 15 * 60 * 1000


def with_security(builder: Any, settings: Settings) -> Any:
    """``builder`` with the brokers' security settings (``kafka.security_protocol`` etc.)."""
    for key, value in settings.kafka.java_properties().items():
        builder = builder.set_property(key, value)
    return builder


def bytes_source(settings: Settings, topic: str, values: DeserializationSchema) -> KafkaSource:
    """A source of raw record values: bytes, so that a bad record reaches the DLQ intact.
    ``values`` reads them; the job's keeps a record without a value (a tombstone) as an empty
    one, where Flink's ``ByteArraySchema`` would drop it."""
    return (
        with_security(KafkaSource.builder(), settings)
        .set_bootstrap_servers(settings.kafka.bootstrap)
        .set_topics(topic)
        .set_group_id(f"{settings.job.name}-{topic}")
        # First start: from the beginning; afterwards the checkpointed offsets rule.
        .set_starting_offsets(
            KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST)
        )
        .set_value_only_deserializer(values)
        .set_property("isolation.level", "read_committed")
        .set_property("partition.discovery.interval.ms", "60000")
        .build()
    )


def source_watermarks() -> WatermarkStrategy:
    """Event time is in the record (``ts``): watermarks are assigned after parsing."""
    return WatermarkStrategy.no_watermarks()


def json_sink(
    settings: Settings, topic: str, name: str, key: SerializationSchema | None = None
) -> KafkaSink:
    """An exactly-once sink of JSON strings (visible to read_committed consumers after a
    checkpoint completes); ``key`` makes each record's Kafka key (none: no key)."""
    records = (
        KafkaRecordSerializationSchema.builder()
        .set_topic(topic)
        .set_value_serialization_schema(SimpleStringSchema())
    )
    if key is not None:
        records = records.set_key_serialization_schema(key)
    return (
        with_security(KafkaSink.builder(), settings)
        .set_bootstrap_servers(settings.kafka.bootstrap)
        .set_record_serializer(records.build())
        .set_delivery_guarantee(DeliveryGuarantee.EXACTLY_ONCE)
        .set_transactional_id_prefix(f"{settings.job.name}-{name}")
        .set_property("transaction.timeout.ms", str(TRANSACTION_TIMEOUT_MS))
        .build()
    )
