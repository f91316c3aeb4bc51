"""Kafka SASL/SCRAM from configuration, on a broker of the local stack's own making
(`flowlearn.stack.start_kafka` with ``security_protocol = "SASL_PLAINTEXT"``): the kafka-python
clients and the job's Flink connector log in; without credentials nothing gets through."""

from __future__ import annotations

import dataclasses
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from conf import KafkaConf, Settings, load_settings
from flowlearn import stack
from flowlearn.producer import send_raw

ROOT = Path(__file__).resolve().parents[3]
#: Its own home (the jars are kept between runs, like the e2e stack's).
HOME = ROOT / ".flowlearn-test-sasl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sasl_settings() -> Iterator[Settings]:
    if HOME.exists():
        for child in HOME.iterdir():
            if child.name != "jars":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    settings = load_settings(env={
        "FLOWLEARN__STACK__HOME": str(HOME),
        "FLOWLEARN__KAFKA__PORT": str(free_port()),
        "FLOWLEARN__KAFKA__CONTROLLER_PORT": str(free_port()),
        "FLOWLEARN__KAFKA__PARTITIONS": "1",
        "FLOWLEARN__KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "FLOWLEARN__KAFKA__SASL_USERNAME": "flowlearn-job",
        "FLOWLEARN__KAFKA__SASL_PASSWORD": "scram-secret",
    })
    try:
        stack.start_kafka(settings)  # also creates the topics, logged in
        yield settings
    finally:
        stack.stop_process(settings, "kafka")


def read_all(kafka: KafkaConf, topic: str) -> list[bytes]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, **kafka.client_options(), group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    try:
        return [m.value for m in consumer]
    finally:
        consumer.close()


def test_clients_log_in_with_scram_and_others_are_refused(sasl_settings):
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    kafka = sasl_settings.kafka
    topic = kafka.topics.samples
    send_raw(kafka, topic, [b"one", b"two"], key="m")
    assert read_all(kafka, topic) == [b"one", b"two"]

    plaintext = dataclasses.replace(kafka, security_protocol="PLAINTEXT")
    wrong = dataclasses.replace(kafka, sasl_password="not-the-secret")
    for conf in (plaintext, wrong):
        with pytest.raises(KafkaError):
            KafkaAdminClient(**conf.client_options(), request_timeout_ms=3000,
                             api_version_auto_timeout_ms=3000).list_topics()


@pytest.mark.minicluster
def test_the_jobs_kafka_connector_logs_in_with_scram(sasl_settings):
    from pyflink.common import Types, WatermarkStrategy
    from pyflink.common.serialization import SimpleStringSchema
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource

    from connectors.kafka import with_security
    from flowlearn.replay import local_environment

    kafka = sasl_settings.kafka
    topic = kafka.topics.labels
    send_raw(kafka, topic, [b"a", b"b", b"c"], key="m")
    env = local_environment()
    env.add_jars(stack.kafka_connector_jar(sasl_settings).resolve().as_uri())
    source = (with_security(KafkaSource.builder(), sasl_settings)
              .set_bootstrap_servers(kafka.bootstrap)
              .set_topics(topic)
              .set_starting_offsets(KafkaOffsetsInitializer.earliest())
              .set_bounded(KafkaOffsetsInitializer.latest())
              .set_value_only_deserializer(SimpleStringSchema())
              .build())
    stream = env.from_source(source, WatermarkStrategy.no_watermarks(), "sasl-source")
    with stream.map(lambda v: v, output_type=Types.STRING()).execute_and_collect() as rows:
        assert sorted(rows) == ["a", "b", "c"]
