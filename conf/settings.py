"""The sections of flowlearn's configuration, typed and validated; :mod:`.loader` reads
them from ``defaults.toml``, a file and the environment.

>>> KafkaConf(host="kafka", port=9093).bootstrap
'kafka:9093'
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

#: Flink's limit on key groups (``pipeline.max-parallelism``).
MAX_KEY_GROUPS = 32768
#: Slot sharing groups of the job (parse; training with drift and checkpoint): slots per
#: parallelism, and Python worker processes per unit of parallelism.
SLOT_GROUPS = 2


class ConfigError(ValueError):
    """A configuration value that is missing, of the wrong type, or out of range."""


def _check_port(where: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where}: port {port} is outside 1..65535")


def _check_positive(where: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{where}: must be positive, got {value}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only.

    >>> [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "predictor")]
    [True, True, True, False, False]
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class StackConf:
    home: Path = Path(".flowlearn")

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def run(self) -> Path:
        """Pid files."""
        return self.home / "run"

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def jars(self) -> Path:
        return self.home / "jars"


@dataclass(frozen=True)
class TopicsConf:
    events: str = "fl.events"
    labels: str = "fl.labels"
    samples: str = "fl.samples"
    control: str = "fl.control"
    alerts: str = "fl.alerts"
    dlq: str = "fl.dlq"

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]


@dataclass(frozen=True)
class KafkaConf:
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    partitions: int = 2
    heap: str = "512m"
    topics: TopicsConf = field(default_factory=TopicsConf)
    #: How every client (the job's connectors, producers, the predictor's log, the CLI)
    #: talks to the brokers: Kafka's ``security.protocol``.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    #: PEM files: the CA that signed the brokers' certificates (else the system's), and the
    #: client's certificate and key when the brokers ask for one.
    ssl_ca_file: str = ""
    ssl_cert_file: str = ""
    ssl_key_file: str = ""
    #: PEM files of the local stack's broker (``flowlearn up``) when the protocol has TLS:
    #: its certificate, signed by ``ssl_ca_file``'s CA and valid for ``host``, and its
    #: unencrypted PKCS#8 key. Brokers the stack does not start ignore them.
    broker_ssl_cert_file: str = ""
    broker_ssl_key_file: str = ""

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def ssl(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of every kafka-python client (bootstrap servers included).

        >>> KafkaConf(security_protocol="SASL_PLAINTEXT", sasl_username="u",
        ...           sasl_password="p").client_options()["sasl_mechanism"]
        'SCRAM-SHA-512'
        """
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
        }
        if self.sasl:
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if self.ssl:
            options.update(
                ssl_cafile=self.ssl_ca_file or None,
                ssl_certfile=self.ssl_cert_file or None,
                ssl_keyfile=self.ssl_key_file or None,
            )
        return options

    def librdkafka_options(self) -> dict[str, str]:
        """The same connection in librdkafka's terms (confluent-kafka clients).

        >>> KafkaConf(security_protocol="SSL").librdkafka_options()["ssl.ca.location"]
        'probe'
        """
        options = {"bootstrap.servers": self.bootstrap, "security.protocol": self.security_protocol}
        if self.sasl:
            options.update(
                {
                    "sasl.mechanisms": self.sasl_mechanism,
                    "sasl.username": self.sasl_username,
                    "sasl.password": self.sasl_password,
                }
            )
        if self.ssl:
            # "probe": the system's CAs (librdkafka's wheel does not know where they are).
            options["ssl.ca.location"] = self.ssl_ca_file or "probe"
            if self.ssl_cert_file:
                options["ssl.certificate.location"] = self.ssl_cert_file
            if self.ssl_key_file:
                options["ssl.key.location"] = self.ssl_key_file
        return options

    def java_properties(self) -> dict[str, str]:
        """Client properties of the job's Kafka connectors (Java). The SQL connector jar
        relocates Kafka's classes, so the login module is named by its shaded name; PEM
        client certificates go inline (``ssl.keystore.type=PEM`` takes them as values).

        >>> KafkaConf().java_properties()
        {'security.protocol': 'PLAINTEXT'}
        """
        props: dict[str, str] = {"security.protocol": self.security_protocol}
        if self.sasl:
            module = (
                "plain.PlainLoginModule"
                if self.sasl_mechanism == "PLAIN"
                else "scram.ScramLoginModule"
            )
            props["sasl.mechanism"] = self.sasl_mechanism
            props["sasl.jaas.config"] = (
                f"org.apache.flink.kafka.shaded.org.apache.kafka.common.security.{module} "
                f"required username={json.dumps(self.sasl_username)} "
                f"password={json.dumps(self.sasl_password)};"
            )
        if self.ssl and self.ssl_ca_file:
            props["ssl.truststore.type"] = "PEM"
            props["ssl.truststore.location"] = self.ssl_ca_file
        if self.ssl and self.ssl_cert_file:
            props["ssl.keystore.type"] = "PEM"
            props["ssl.keystore.certificate.chain"] = Path(self.ssl_cert_file).read_text()
            props["ssl.keystore.key"] = Path(self.ssl_key_file).read_text()
        return props

    def validate(self) -> None:
        _check_port("kafka.port", self.port)
        _check_port("kafka.controller_port", self.controller_port)
        if self.port == self.controller_port:
            raise ConfigError("kafka.port and kafka.controller_port must differ")
        _check_positive("kafka.partitions", self.partitions)
        if self.sasl and not (self.sasl_username and self.sasl_password):
            raise ConfigError(
                f"kafka.security_protocol {self.security_protocol} needs "
                f"kafka.sasl_username and kafka.sasl_password"
            )
        for cert, key in (
            ("ssl_cert_file", "ssl_key_file"),
            ("broker_ssl_cert_file", "broker_ssl_key_file"),
        ):
            if bool(getattr(self, cert)) != bool(getattr(self, key)):
                raise ConfigError(f"kafka.{cert} and kafka.{key} go together")
        for name in (
            "ssl_ca_file",
            "ssl_cert_file",
            "ssl_key_file",
            "broker_ssl_cert_file",
            "broker_ssl_key_file",
        ):
            path = getattr(self, name)
            if path and not self.ssl:
                raise ConfigError(
                    f"kafka.{name} is set but kafka.security_protocol "
                    f"{self.security_protocol} has no TLS"
                )
            if path and not Path(path).is_file():
                raise ConfigError(f"kafka.{name}: no such file: {path}")


@dataclass(frozen=True)
class RedisConf:
    host: str = "127.0.0.1"
    port: int = 6379
    #: An ACL user (Redis 6+); "" is the default user, which ``password`` alone logs in as.
    username: str = ""
    password: str = field(default="", repr=False)
    prefix: str = "fl:"
    deltas_maxlen: int = 1000
    #: TLS to the server; ``tls_ca_file`` verifies it (else the system's CAs), and
    #: ``tls_cert_file`` with ``tls_key_file`` is the client's certificate when the server
    #: asks for one (``tls-auth-clients``).
    tls: bool = False
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""

    @property
    def url(self) -> str:
        """Connection URL without the password (safe to print)."""
        user = f"{self.username}@" if self.username else ""
        return f"{'rediss' if self.tls else 'redis'}://{user}{self.host}:{self.port}/0"

    def validate(self) -> None:
        _check_port("redis.port", self.port)
        _check_positive("redis.deltas_maxlen", self.deltas_maxlen)
        if not self.prefix:
            raise ConfigError("redis.prefix must not be empty")
        if self.username and not self.password:
            raise ConfigError("redis.username needs redis.password (an ACL user's password)")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("redis.tls_cert_file and redis.tls_key_file go together")
        files = (
            ("tls_ca_file", self.tls_ca_file),
            ("tls_cert_file", self.tls_cert_file),
            ("tls_key_file", self.tls_key_file),
        )
        for name, path in files:
            if path and not self.tls:
                raise ConfigError(f"redis.{name} is set but redis.tls is false")
            if path and not Path(path).is_file():
                raise ConfigError(f"redis.{name}: no such file: {path}")


@dataclass(frozen=True)
class FlinkConf:
    rest_host: str = "127.0.0.1"
    rest_port: int = 8081
    rpc_port: int = 6123
    taskmanager_slots: int = 2
    #: TaskManager processes the local stack starts (a cluster sizes its own).
    taskmanagers: int = 1
    #: The local stack's TaskManagers (and their Python workers) run at this nice value
    #: (0-19): on one machine a prediction does not wait behind a training bundle, and
    #: training takes the CPU the predictor leaves. 0: the same priority as the rest.
    taskmanager_nice: int = 10
    parallelism: int = 1
    #: Key groups of the job's keyed state: the most subtasks its state can be split into
    #: when rescaled from a savepoint. Fixed for the life of the state (a savepoint restores
    #: only at the max parallelism it was taken with); 128 is what Flink chose for the job's
    #: savepoints before it was set, so they restore.
    max_parallelism: int = 128
    checkpoint_interval_ms: int = 5000
    prometheus_ports: str = "9249-9252"
    process_memory_jobmanager: str = "1024m"
    process_memory_taskmanager: str = "2048m"
    #: Where keyed state lives: "hashmap" (the TaskManager heap: fastest) or "rocksdb" (on
    #: local disk, incremental checkpoints: for state larger than the heap, e.g. thousands
    #: of models).
    state_backend: Literal["hashmap", "rocksdb"] = "hashmap"
    python_bundle_size: int = 10000
    python_bundle_time_ms: int = 50
    #: Restarts after a failure: exponential delay from ``restart_backoff_ms`` up to
    #: ``restart_max_backoff_ms``, back to the start after ``restart_reset_backoff_ms``
    #: without a failure. Flink's defaults (1 s, 1 min, 1 h) left a TaskManager killed a
    #: third time within the hour waiting a full minute; 10 s still spaces out a crash loop,
    #: and the first restart waits a quarter second, not a whole one.
    restart_backoff_ms: int = 250
    restart_max_backoff_ms: int = 10_000
    restart_reset_backoff_ms: int = 60_000
    #: Heartbeats every ``heartbeat_interval_ms`` (Flink: 10 s): a killed TaskManager is
    #: declared lost after two heartbeat RPCs to it fail (a refused connection, not a slow
    #: answer), which took ~11 s at Flink's interval, most of a recovery; a hung one after
    #: ``heartbeat_timeout_ms`` (Flink: 50 s).
    heartbeat_interval_ms: int = 1_000
    heartbeat_timeout_ms: int = 20_000
    #: How long the REST API waits for an answer from inside the cluster (Flink's
    #: ``web.timeout``: 10 min). The web UI's metrics are fetched one round at a time, so a
    #: TaskManager killed while answering one froze every metric of the web UI and REST
    #: API for the whole wait; job submission and savepoint triggers answer in seconds.
    web_timeout_ms: int = 20_000
    #: The local stack forks its TaskManagers' Python workers from a pool that has imported
    #: PyFlink's worker modules once (jobs/python_worker_pool.py): a worker starts in
    #: milliseconds instead of a CPU-second or more, which a recovery pays for every slot at
    #: once. false: Flink starts the interpreter for each worker.
    python_worker_pool: bool = True
    #: The local stack keeps a spare JVM beside each TaskManager that has run a while,
    #: started and warmed up, waiting: when the TaskManager dies the spare becomes its
    #: replacement at once, and a recovery does not wait seconds for a JVM to start
    #: (flowlearn/devstack/supervise.py). It costs the spare's memory (about 200 MB
    #: resident). false: a new JVM is started after the TaskManager died.
    spare_taskmanager: bool = True

    @property
    def web_ui(self) -> str:
        return f"http://{self.rest_host}:{self.rest_port}"

    def prometheus_port_list(self) -> list[int]:
        """The reporter's ports: one per JobManager/TaskManager process, from the range."""
        first, _, last = self.prometheus_ports.partition("-")
        return list(range(int(first), int(last or first) + 1))

    def validate(self) -> None:
        _check_port("flink.rest_port", self.rest_port)
        _check_port("flink.rpc_port", self.rpc_port)
        for name in (
            "restart_backoff_ms",
            "restart_max_backoff_ms",
            "restart_reset_backoff_ms",
            "heartbeat_interval_ms",
            "heartbeat_timeout_ms",
            "web_timeout_ms",
        ):
            _check_positive(f"flink.{name}", getattr(self, name))
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms:
            raise ConfigError(
                "flink.heartbeat_timeout_ms must be > flink.heartbeat_interval_ms, got "
                f"{self.heartbeat_timeout_ms} <= {self.heartbeat_interval_ms}"
            )
        if self.restart_max_backoff_ms < self.restart_backoff_ms:
            raise ConfigError(
                "flink.restart_max_backoff_ms must be >= flink.restart_backoff_ms, got "
                f"{self.restart_max_backoff_ms} < {self.restart_backoff_ms}"
            )
        # Parsing and training run in slot sharing groups of their own (SLOT_GROUPS Python
        # worker processes).
        for name in ("taskmanager_slots", "taskmanagers", "parallelism", "max_parallelism"):
            _check_positive(f"flink.{name}", getattr(self, name))
        if not 0 <= self.taskmanager_nice <= 19:
            raise ConfigError(
                f"flink.taskmanager_nice must be within 0-19, got {self.taskmanager_nice}"
            )
        slots = self.taskmanagers * self.taskmanager_slots
        if slots < SLOT_GROUPS * self.parallelism:
            raise ConfigError(
                f"flink.taskmanagers x flink.taskmanager_slots must be >= {SLOT_GROUPS} x "
                f"flink.parallelism ({SLOT_GROUPS * self.parallelism}), got "
                f"{self.taskmanagers} x {self.taskmanager_slots} = {slots}"
            )
        if not self.parallelism <= self.max_parallelism <= MAX_KEY_GROUPS:
            raise ConfigError(
                f"flink.max_parallelism must be within [flink.parallelism, {MAX_KEY_GROUPS}], "
                f"got {self.max_parallelism}"
            )
        try:
            ports = self.prometheus_port_list()
        except ValueError as exc:
            raise ConfigError(
                f"flink.prometheus_ports: expected 'FIRST-LAST', got {self.prometheus_ports!r}"
            ) from exc
        if not ports:
            raise ConfigError("flink.prometheus_ports: the range is empty")
        for port in (ports[0], ports[-1]):
            _check_port("flink.prometheus_ports", port)
        if len(ports) < self.taskmanagers + 1:
            raise ConfigError(
                f"flink.prometheus_ports: {len(ports)} ports for a JobManager and "
                f"{self.taskmanagers} TaskManagers (one each)"
            )
        for name in (
            "checkpoint_interval_ms",
            "python_bundle_size",
            "python_bundle_time_ms",
        ):
            _check_positive(f"flink.{name}", getattr(self, name))


@dataclass(frozen=True)
class PrometheusConf:
    host: str = "127.0.0.1"
    port: int = 9090
    scrape_interval_s: int = 5

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def validate(self) -> None:
        _check_port("prometheus.port", self.port)
        _check_positive("prometheus.scrape_interval_s", self.scrape_interval_s)


@dataclass(frozen=True)
class PredictorConf:
    host: str = "127.0.0.1"
    port: int = 8080
    #: The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``) on this
    #: port of ``host``, beside HTTP, with the same tokens and TLS; 0: no gRPC.
    grpc_port: int = 0
    stale_after_s: float = 300.0
    max_instances: int = 1000
    max_body_bytes: int = 1_048_576
    #: The most one request's features may take to score (instances x n_features x 8 bytes;
    #: a hashed linear model's sparse rows: 12 bytes a feature given and 8 an instance); a
    #: larger request is refused (413).
    max_matrix_bytes: int = 256 * 2**20
    #: A connection that has not sent a whole request's headers this long after it opened,
    #: or after its previous answer, is closed: bounds idle keep-alive connections and
    #: clients that trickle their headers (slowloris).
    idle_timeout_s: float = 15.0
    log_predictions: bool = True
    #: The prediction log queues the records it has not sent yet up to this many bytes
    #: (and 100,000 records); past it, predictions are served but not logged
    #: (counted as dropped, ``queue_full``): while Kafka is slow the queue cannot grow
    #: without bound.
    log_queue_bytes: int = 64 * 2**20
    #: The prediction log's producer (librdkafka): how long a record may wait for others to
    #: fill a batch, a batch's largest size in bytes, and the acknowledgement it waits for
    #: ("0": none, "1": the partition leader's, "all": every in-sync replica's).
    log_linger_ms: int = 20
    log_batch_bytes: int = 1_000_000
    log_acks: Literal["0", "1", "all"] = "1"
    ab_fraction: float = 0.0
    baselines: dict[str, Path] = field(default_factory=dict)
    #: Bearer tokens on every route but the health probes: "on", "off", or "auto": on when
    #: tokens are configured or ``host`` is not loopback (docs/predictor.md).
    auth: Literal["auto", "on", "off"] = "auto"
    #: A file of ``TOKEN SCOPE`` lines (scope ``read`` or ``admin``; ``#`` comments), not
    #: readable by other users; re-read on ``POST /v1/admin/reload`` and SIGHUP.
    tokens_file: str = ""
    #: The same ``TOKEN SCOPE`` entries as a setting (a list; a comma-separated variable,
    #: ``FLOWLEARN__PREDICTOR__TOKENS``), beside the file's.
    tokens: tuple[str, ...] = field(default=(), repr=False)
    #: PEM files: the predictor serves HTTPS with this certificate (chain) and its key.
    tls_cert_file: str = ""
    tls_key_file: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    #: Worker processes serving the port (each follows Redis and logs on its own); 0: one per
    #: CPU this process may run on.
    workers: int = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def auth_required(self) -> bool:
        """Whether every route but the health probes asks for a bearer token."""
        if self.auth == "auto":
            return bool(self.tokens_file or self.tokens) or not is_loopback(self.host)
        return self.auth == "on"

    def validate(self) -> None:
        _check_port("predictor.port", self.port)
        if self.grpc_port:  # 0: no gRPC
            _check_port("predictor.grpc_port", self.grpc_port)
        for name in (
            "stale_after_s",
            "max_instances",
            "max_body_bytes",
            "max_matrix_bytes",
            "idle_timeout_s",
            "log_queue_bytes",
            "log_batch_bytes",
        ):
            _check_positive(f"predictor.{name}", getattr(self, name))
        if self.log_linger_ms < 0:
            raise ConfigError(f"predictor.log_linger_ms: must be >= 0, got {self.log_linger_ms}")
        if self.workers < 0:
            raise ConfigError(
                f"predictor.workers: must be >= 1, or 0 for one per CPU; got {self.workers}"
            )
        if not 0.0 <= self.ab_fraction <= 1.0:
            raise ConfigError(
                f"predictor.ab_fraction must be within [0, 1], got {self.ab_fraction}"
            )
        if self.auth_required and not (self.tokens_file or self.tokens):
            why = (
                'predictor.auth is "on"'
                if self.auth == "on"
                else f"predictor.host {self.host!r} is not loopback"
            )
            raise ConfigError(
                f"{why}, so requests need a bearer token, and none is configured: set "
                f'predictor.tokens_file (or predictor.tokens), or predictor.auth = "off"'
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("predictor.tls_cert_file and predictor.tls_key_file go together")
        for name in ("tokens_file", "tls_cert_file", "tls_key_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"predictor.{name}: no such file: {path}")


@dataclass(frozen=True)
class JobConf:
    name: str = "flowlearn-online-learning"
    out_of_orderness_ms: int = 2000
    idleness_ms: int = 5000
    batch_size: int = 64
    batch_timeout_ms: int = 200
    keep_versions: int = 20
    drift_features_monitored: int = 3
    drift_cooldown_versions: int = 50
    label_window_ms: int = 600_000
    #: A ``fl.samples`` record whose ``event_id`` the trainer saw among the samples of this
    #: much event time before the model's newest is a duplicate: counted, not trained
    #: (0: no deduplication). Memory grows with rate x window (about 100 bytes an id).
    sample_dedupe_window_ms: int = 60_000
    #: A model that waits (paused, or its inferred spec on the way) keeps at most this many
    #: samples in its buffer; past it the oldest go to the DLQ as ``paused_overflow``.
    paused_buffer_samples: int = 100_000
    #: The label join holds at most this many entries per model (events waiting for their
    #: label, labels for their event, recent pairs' tombstones; about 450 bytes an entry of
    #: ten features in the Python worker): past it the entries due first go, counted
    #: ``join_overflow`` (an event as expired, a label alone to the DLQ).
    join_buffer_entries: int = 1_000_000
    #: Kafka records go to the Python parsers in bundles of up to this many records
    #: (operators/java RecordBundler): one Python call per bundle instead of per record.
    input_bundle_records: int = 256
    #: ... and a record waits at most this long (processing time) for its bundle to fill
    #: (0: no wait, records go one by one).
    input_bundle_ms: int = 10
    expired_events: Literal["drop", "default_label"] = "drop"
    default_label: float = 0.0
    #: A record of a model that no spec names: "create" it from ``[model_defaults]``,
    #: "infer" its shape from its first record (dense count, or names), or "dlq" it.
    unknown_model_policy: Literal["create", "infer", "dlq"] = "infer"
    #: The job holds at most this many models (configured, created by a command or by the
    #: policy; deleted ones free their slot): past it a record of a new model id is
    #: dead-lettered as ``model_limit``, not made a model. Explicit creates count, and are
    #: applied whatever the count.
    max_models: int = 100_000
    checkpoint_every_versions: int = 50
    keep_checkpoints: int = 20
    rollback_window_samples: int = 2000
    rollback_margin: float = 0.1
    rollback_min_samples: int = 1000
    rollback_cooldown_versions: int = 100
    #: Per-model metrics (a ``model`` label) for at most this many models per operator
    #: instance, the first it sees; the others add up under ``model="(other)"``.
    model_metrics_limit: int = 100
    #: Models that get per-model metrics whatever the limit.
    model_metrics: tuple[str, ...] = ()
    #: Models whose trainer stays in Python memory between their records, per trainer
    #: instance (the most recently touched, and the labelled ones); the others are read back
    #: from Flink state when their next record or command comes.
    hot_models: int = 100_000

    def validate(self) -> None:
        for name in (
            "out_of_orderness_ms",
            "idleness_ms",
            "batch_size",
            "batch_timeout_ms",
            "label_window_ms",
            "keep_versions",
            "checkpoint_every_versions",
            "keep_checkpoints",
            "rollback_window_samples",
            "rollback_min_samples",
            "rollback_cooldown_versions",
            "input_bundle_records",
            "hot_models",
            "paused_buffer_samples",
            "join_buffer_entries",
            "max_models",
        ):
            _check_positive(f"job.{name}", getattr(self, name))
        for name in (
            "drift_features_monitored",
            "sample_dedupe_window_ms",
            "input_bundle_ms",
            "model_metrics_limit",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"job.{name} must be >= 0")
        _check_positive("job.drift_cooldown_versions", self.drift_cooldown_versions)
        if self.rollback_margin < 0:
            raise ConfigError(f"job.rollback_margin: must be >= 0, got {self.rollback_margin}")


@dataclass(frozen=True)
class MlflowConf:
    """Where versions are registered. An empty tracking URI means MLflow's own
    ``MLFLOW_TRACKING_URI`` when it is set, else a local SQLite store in the stack home (no
    server to start); set one (``http://host:5000``) to use a server."""

    tracking_uri: str = ""
    #: False: nothing is registered (checkpoints and automatic rollback work all the same);
    #: a replay without a registry directory runs so.
    enabled: bool = True
    #: Each model is the registered model ``{name_prefix}{model id}`` (letters, digits, ".",
    #: "_", "-", as model ids: MLflow refuses "/" and ":" in a name).
    name_prefix: str = "flowlearn-"
    #: Checkpoint versions are registered at most this often per model (0: every one).
    register_min_interval_s: float = 10.0
    #: Retention: after each registration, a model's online versions beyond the last
    #: keep_versions are deleted, except those holding an alias (live, best) and those
    #: tagged flowlearn.keep (rollback targets, former best ones). 0 keeps every version.
    keep_versions: int = 100

    def resolved_tracking_uri(self, stack: StackConf) -> str:
        return self.tracking_uri or f"sqlite:///{stack.home / 'mlflow' / 'mlflow.db'}"

    def validate(self) -> None:
        if self.register_min_interval_s < 0:
            raise ConfigError("mlflow.register_min_interval_s: must be >= 0")
        if self.keep_versions < 0:
            raise ConfigError(
                f"mlflow.keep_versions: must be >= 0 (0 keeps every version), got "
                f"{self.keep_versions}"
            )
        if re.fullmatch(r"[A-Za-z0-9._-]*", self.name_prefix) is None:
            raise ConfigError(
                f"mlflow.name_prefix: only letters, digits, '.', '_' and '-' (MLflow refuses "
                f"'/' and ':' in a registered model's name), got {self.name_prefix!r}"
            )


@dataclass(frozen=True)
class Settings:
    stack: StackConf = field(default_factory=StackConf)
    kafka: KafkaConf = field(default_factory=KafkaConf)
    redis: RedisConf = field(default_factory=RedisConf)
    flink: FlinkConf = field(default_factory=FlinkConf)
    predictor: PredictorConf = field(default_factory=PredictorConf)
    prometheus: PrometheusConf = field(default_factory=PrometheusConf)
    job: JobConf = field(default_factory=JobConf)
    mlflow: MlflowConf = field(default_factory=MlflowConf)
    #: Model spec tables (``[model_defaults]``, ``[models.ID]``), read and validated as
    #: specs by :class:`flowlearn.contracts.spec.ModelSpecs`: the spec's schema belongs to
    #: the learning core, which settings do not import.
    model_defaults: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> Settings:
        for part in (
            self.kafka,
            self.redis,
            self.flink,
            self.predictor,
            self.prometheus,
            self.job,
            self.mlflow,
        ):
            part.validate()
        ports = {
            "kafka.port": self.kafka.port,
            "kafka.controller_port": self.kafka.controller_port,
            "redis.port": self.redis.port,
            "flink.rest_port": self.flink.rest_port,
            "flink.rpc_port": self.flink.rpc_port,
            "predictor.port": self.predictor.port,
            "prometheus.port": self.prometheus.port,
        }
        if self.predictor.grpc_port:
            ports["predictor.grpc_port"] = self.predictor.grpc_port
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                raise ConfigError(f"{name} and {seen[port]} both use port {port}")
            seen[port] = name
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able form (with the Redis password): what a job is submitted with."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))
