"""The local Kafka broker (KRaft, one node, from Maven jars): its listeners, TLS keystore,
storage, process and topics."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path

from flowlearn.conf import KafkaConf, Settings
from flowlearn.devstack.jars import fetch_jars
from flowlearn.devstack.processes import (
    StackError,
    log,
    port_open,
    require_free_port,
    require_java,
    running_pid,
    start_process,
    wait_for,
)


def _kafka_dirs(settings: Settings) -> tuple[Path, Path]:
    return settings.stack.home / "kafka", settings.stack.data / "kafka"


def kafka_listener_lines(k: KafkaConf, keystore: Path | None = None) -> list[str]:
    """server.properties lines of the local broker's listeners: the client listener in
    ``k.security_protocol`` (the broker also talks to itself there: with SASL it logs in
    with SCRAM as ``k.sasl_username``), the controller's plaintext on loopback. With TLS the
    broker presents ``keystore`` (its key and certificate chain in one PEM file) and trusts
    ``k.ssl_ca_file``; plain ``SSL`` also requires a client certificate, the only identity
    that protocol has.

    >>> kafka_listener_lines(KafkaConf())[0]
    'listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093'
    """
    client = k.security_protocol
    lines = [
        f"listeners={client}://{k.host}:{k.port},CONTROLLER://{k.host}:{k.controller_port}",
        f"advertised.listeners={client}://{k.host}:{k.port}",
        "controller.listener.names=CONTROLLER",
        f"listener.security.protocol.map={client}:{client},CONTROLLER:PLAINTEXT",
        f"inter.broker.listener.name={client}",
    ]
    if k.sasl:
        mechanism = k.sasl_mechanism
        lines += [
            f"sasl.enabled.mechanisms={mechanism}",
            f"sasl.mechanism.inter.broker.protocol={mechanism}",
            f"listener.name.{client.lower()}.{mechanism.lower()}.sasl.jaas.config="
            f"org.apache.kafka.common.security.scram.ScramLoginModule required "
            f"username={json.dumps(k.sasl_username)} password={json.dumps(k.sasl_password)};",
        ]
    if k.ssl:
        if keystore is None:
            raise StackError("a TLS listener needs the broker's keystore")
        lines += [
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={keystore}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={k.ssl_ca_file}",
            f"ssl.client.auth={'none' if k.sasl else 'required'}",
        ]
    return lines


def _broker_keystore(k: KafkaConf, conf_dir: Path) -> Path | None:
    """The broker's key and certificate chain in the one PEM file Kafka reads (0600)."""
    if not k.ssl:
        return None
    if not (k.broker_ssl_cert_file and k.ssl_ca_file):
        raise StackError(
            f"kafka.security_protocol {k.security_protocol}: the local broker needs its "
            f"certificate (kafka.broker_ssl_cert_file, kafka.broker_ssl_key_file) and the CA "
            f"that signed it (kafka.ssl_ca_file)"
        )
    if k.security_protocol == "SSL" and not k.ssl_cert_file:
        raise StackError(
            "kafka.security_protocol SSL: the local broker requires client "
            "certificates: set kafka.ssl_cert_file and kafka.ssl_key_file"
        )
    keystore = conf_dir / "broker-keystore.pem"
    keystore.touch(mode=0o600)
    keystore.chmod(0o600)
    keystore.write_text(
        Path(k.broker_ssl_key_file).read_text().rstrip("\n")
        + "\n"
        + Path(k.broker_ssl_cert_file).read_text()
    )
    return keystore


def start_kafka(settings: Settings) -> None:
    if running_pid(settings, "kafka"):
        return
    k = settings.kafka
    if k.sasl and k.sasl_mechanism == "PLAIN":
        raise StackError(
            "the local stack's broker takes SCRAM logins: set "
            "kafka.sasl_mechanism to SCRAM-SHA-512 or SCRAM-SHA-256"
        )
    require_free_port(k.host, k.port, "kafka.port")
    require_free_port(k.host, k.controller_port, "kafka.controller_port")
    java = require_java()
    jars = fetch_jars(settings, "kafka", "KAFKA_BROKER_ARTIFACT", True)
    conf_dir, log_dir = _kafka_dirs(settings)
    conf_dir.mkdir(parents=True, exist_ok=True)
    keystore = _broker_keystore(k, conf_dir)
    props = conf_dir / "server.properties"
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                *kafka_listener_lines(k, keystore),
                f"controller.quorum.bootstrap.servers={k.host}:{k.controller_port}",
                f"log.dirs={log_dir}",
                f"num.partitions={k.partitions}",
                # One node: every internal topic must live with replication factor 1, or
                # transactional producers (the exactly-once KafkaSink) hang.
                "offsets.topic.replication.factor=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                # Above the job's longest checkpoint + restart time (KafkaSink EXACTLY_ONCE).
                "transaction.max.timeout.ms=3600000",
                "auto.create.topics.enable=false",
                "",
            ]
        )
    )
    log4j = conf_dir / "log4j2.yaml"
    log4j.write_text(
        "Configuration:\n"
        "  Appenders:\n"
        "    Console: {name: STDOUT, PatternLayout: {Pattern: '[%d] %p %m (%c)%n'}}\n"
        "  Loggers:\n"
        "    Root: {level: INFO, AppenderRef: [{ref: STDOUT}]}\n"
    )
    props.chmod(0o600)  # with SASL it holds the broker's password
    classpath = f"{jars}/*"
    scram_marker = log_dir / "flowlearn-scram-user"
    if (
        (log_dir / "meta.properties").exists()
        and k.sasl
        and (not scram_marker.exists() or scram_marker.read_text() != k.sasl_username)
    ):
        raise StackError(
            f"the Kafka storage in {log_dir} was formatted without the SCRAM user "
            f"{k.sasl_username!r} (users are created when it is formatted): "
            f"`flowlearn down`, delete {log_dir}, `flowlearn up`"
        )
    if not (log_dir / "meta.properties").exists():
        cluster_id = subprocess.run(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "random-uuid"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        log(f"formatting Kafka storage in {log_dir} (cluster id {cluster_id})")
        result = subprocess.run(
            [
                java,
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(props),
                *(
                    [
                        "--add-scram",
                        f"{k.sasl_mechanism}=[name={k.sasl_username},password={k.sasl_password}]",
                    ]
                    if k.sasl
                    else []
                ),
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise StackError(f"Kafka storage format failed: {result.stdout}{result.stderr}")
        if k.sasl:
            scram_marker.write_text(k.sasl_username)
    start_process(
        settings,
        "kafka",
        [
            java,
            f"-Xmx{k.heap}",
            f"-Xms{k.heap}",
            "-cp",
            classpath,
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={settings.stack.logs}",
            "kafka.Kafka",
            str(props),
        ],
    )
    wait_for("Kafka", lambda: port_open(k.host, k.port), 90, settings.stack.logs / "kafka.out")
    create_topics(settings)


def create_topics(settings: Settings, timeout_s: float = 60.0) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(
                **settings.kafka.client_options(),
                client_id="flowlearn-admin",
                request_timeout_ms=10000,
            )
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise StackError(f"Kafka admin client cannot connect: {exc}") from exc
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in settings.kafka.topics.all() if t not in existing]
        if missing:
            # Another `up` may have created them meanwhile: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(t, settings.kafka.partitions, 1) for t in missing])
            log(f"created topics {', '.join(missing)}")
    finally:
        admin.close()
