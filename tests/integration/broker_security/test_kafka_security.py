"""Kafka logins and TLS from configuration, on brokers of the local stack's own making
(`flowlearn.devstack.kafka_broker.start_kafka`): SASL/SCRAM, SASL/SCRAM over TLS, and TLS with
client certificates. The kafka-python clients and the job's Flink connector get in; a client
without the password, the CA or its certificate does not."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowlearn.conf import KafkaConf, Settings, load_settings
from flowlearn.devstack import jars, kafka_broker, processes
from flowlearn.devstack.producer import send_raw
from tests.ports import free_ports

ROOT = Path(__file__).resolve().parents[3]
#: Its own home (the jars are kept between runs, like the e2e stack's).
HOME = ROOT / ".flowlearn-test-broker-security"


@pytest.fixture(scope="module", params=["SASL_PLAINTEXT", "SASL_SSL", "SSL"])
def broker(request, test_ca) -> Iterator[Settings]:
    """A running broker whose only client listener speaks ``request.param``."""
    protocol = request.param
    if HOME.exists():
        for child in HOME.iterdir():
            if child.name != "jars":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    kafka_port, controller_port = free_ports(2)
    env = {
        "FLOWLEARN__STACK__HOME": str(HOME),
        "FLOWLEARN__KAFKA__PORT": str(kafka_port),
        "FLOWLEARN__KAFKA__CONTROLLER_PORT": str(controller_port),
        "FLOWLEARN__KAFKA__PARTITIONS": "1",
        "FLOWLEARN__KAFKA__SECURITY_PROTOCOL": protocol,
    }
    if protocol.startswith("SASL_"):
        env.update(
            FLOWLEARN__KAFKA__SASL_USERNAME="flowlearn-job",
            FLOWLEARN__KAFKA__SASL_PASSWORD="scram-secret",
        )
    if protocol.endswith("SSL"):
        broker_cert, broker_key = test_ca.issue("kafka-broker")
        env.update(
            FLOWLEARN__KAFKA__SSL_CA_FILE=str(test_ca.cert),
            FLOWLEARN__KAFKA__BROKER_SSL_CERT_FILE=str(broker_cert),
            FLOWLEARN__KAFKA__BROKER_SSL_KEY_FILE=str(broker_key),
        )
    if protocol == "SSL":
        client_cert, client_key = test_ca.issue("flowlearn-job")
        env.update(
            FLOWLEARN__KAFKA__SSL_CERT_FILE=str(client_cert),
            FLOWLEARN__KAFKA__SSL_KEY_FILE=str(client_key),
        )
    settings = load_settings(env=env)
    try:
        kafka_broker.start_kafka(settings)  # also creates the topics, as its client
        yield settings
    finally:
        processes.stop_process(settings, "kafka")


def read_all(kafka: KafkaConf, topic: str) -> list[bytes]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        **kafka.client_options(),
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    try:
        return [m.value for m in consumer]
    finally:
        consumer.close()


def refused_variants(kafka: KafkaConf) -> dict[str, KafkaConf]:
    """Clients that must not get in: each lacks one thing the broker asks for."""
    out = {
        "plaintext": dataclasses.replace(
            kafka, security_protocol="PLAINTEXT", ssl_ca_file="", ssl_cert_file="", ssl_key_file=""
        )
    }
    if kafka.sasl:
        out["wrong password"] = dataclasses.replace(kafka, sasl_password="not-the-secret")
    if kafka.ssl:
        # The system's CAs did not sign the broker's certificate.
        out["not trusting the CA"] = dataclasses.replace(kafka, ssl_ca_file="")
    if kafka.security_protocol == "SSL":
        out["no client certificate"] = dataclasses.replace(kafka, ssl_cert_file="", ssl_key_file="")
    return out


def test_clients_get_in_and_others_are_refused(broker):
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    kafka = broker.kafka
    topic = kafka.topics.samples
    send_raw(kafka, topic, [b"one", b"two"], key="m")
    assert read_all(kafka, topic) == [b"one", b"two"]

    for what, conf in refused_variants(kafka).items():
        with pytest.raises(KafkaError):
            KafkaAdminClient(
                **conf.client_options(), request_timeout_ms=3000, api_version_auto_timeout_ms=3000
            ).list_topics()
            pytest.fail(f"a client with {what} got in")


@pytest.mark.minicluster
def test_the_jobs_kafka_connector_gets_in(broker):
    from pyflink.common import Types, WatermarkStrategy
    from pyflink.common.serialization import SimpleStringSchema
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource

    from flowlearn.connectors.kafka import with_security
    from flowlearn.jobs.local import local_environment

    kafka = broker.kafka
    topic = kafka.topics.labels
    send_raw(kafka, topic, [b"a", b"b", b"c"], key="m")
    env = local_environment(jars.operators_jar(broker))
    env.add_jars(jars.kafka_connector_jar(broker).resolve().as_uri())
    source = (
        with_security(KafkaSource.builder(), broker)
        .set_bootstrap_servers(kafka.bootstrap)
        .set_topics(topic)
        .set_starting_offsets(KafkaOffsetsInitializer.earliest())
        .set_bounded(KafkaOffsetsInitializer.latest())
        .set_value_only_deserializer(SimpleStringSchema())
        .build()
    )
    stream = env.from_source(source, WatermarkStrategy.no_watermarks(), "secured-source")
    with stream.map(lambda v: v, output_type=Types.STRING()).execute_and_collect() as rows:
        assert sorted(rows) == ["a", "b", "c"]


def test_the_prediction_logs_producer_gets_in_and_others_are_counted(broker):
    """The predictor's confluent-kafka producer (librdkafka options from the same [kafka])
    delivers its records; one that lacks what the broker asks for delivers nothing, and its
    records are counted as dropped rather than raised."""
    import json

    from flowlearn.serving.metrics import Metrics
    from flowlearn.serving.prediction_log import Batch, PredictionLog, producer_config

    def log_two(kafka: KafkaConf, timeout: float) -> Metrics:
        metrics = Metrics()
        log = PredictionLog(kafka.topics.events, producer_config(kafka, broker.predictor), metrics)
        log.start()
        log.offer(Batch("m", 1, ["e1", "e2"], [[1.0], [2.0]], [0.5, 0.25], 3, 1, "online", None))
        log.close(timeout)
        return metrics

    def count(metrics: Metrics, name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    kafka = broker.kafka
    metrics = log_two(kafka, 30)
    assert count(metrics, "flowlearn_predictor_log_sent_total") == 2
    records = [json.loads(value) for value in read_all(kafka, kafka.topics.events)]
    assert [r["event_id"] for r in records] == ["e1", "e2"]

    for what, conf in refused_variants(kafka).items():
        metrics = log_two(conf, 3)
        assert count(metrics, "flowlearn_predictor_log_sent_total") == 0, what
        assert count(metrics, "flowlearn_predictor_log_dropped_total", reason="kafka") == 2, what
