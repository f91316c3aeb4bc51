"""The local stack as plain processes: Kafka (KRaft, from Maven jars), Redis, a Flink session
cluster from the pip package, and the predictor.

Everything lives under ``settings.stack.home``: ``jars/`` (Maven downloads), ``data/`` (Kafka
log dirs, Redis dump, Flink checkpoints and savepoints), ``logs/`` and ``run/`` (pid files).
``up`` is idempotent: a component whose pid is alive is left alone. ``down`` stops what ``up``
started, by pid, after checking the pid still belongs to this stack.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowlearn.conf import KafkaConf, Settings, versions

COMPONENTS = ("kafka", "redis", "jobmanager", "taskmanager", "predictor", "prometheus",
              "producer")


class StackError(RuntimeError):
    """A one-line, actionable reason why the stack cannot do what was asked."""


def log(msg: str) -> None:
    print(f"[flowlearn] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def pid_file(settings: Settings, name: str) -> Path:
    return settings.stack.run / f"{name}.pid"


def child_pid_file(settings: Settings, name: str) -> Path:
    """Where a supervised component's supervisor writes its current child's pid."""
    return settings.stack.run / f"{name}-child.pid"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _environ(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode(
            errors="replace")
    except OSError:
        return ""


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def running_pid(settings: Settings, name: str) -> int | None:
    """The pid of component ``name`` if its pid file names a live process of this stack."""
    path = pid_file(settings, name)
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    # A recycled pid belongs to someone else: only trust it if the process still carries
    # this stack's home in its command line or in the environment we started it with.
    if _is_zombie(pid):
        return None
    marker = str(settings.stack.home)
    if marker in _cmdline(pid) or f"FLOWLEARN_HOME={marker}" in _environ(pid):
        return pid
    return None


def start_process(
    settings: Settings,
    name: str,
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    settings.stack.logs.mkdir(parents=True, exist_ok=True)
    settings.stack.run.mkdir(parents=True, exist_ok=True)
    out = (settings.stack.logs / f"{name}.out").open("ab")
    proc = subprocess.Popen(
        list(argv),
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {}), "FLOWLEARN_HOME": str(settings.stack.home)},
        cwd=cwd,
        start_new_session=True,  # survives the CLI; a Ctrl-C in the shell does not reach it
    )
    out.close()
    pid_file(settings, name).write_text(f"{proc.pid}\n")
    return proc.pid


def stop_process(settings: Settings, name: str, timeout_s: float = 30.0) -> bool:
    """SIGTERM, wait, then SIGKILL. Returns True if something was stopped."""
    pid = running_pid(settings, name)
    pid_file(settings, name).unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return True
        time.sleep(0.2)
    log(f"{name} (pid {pid}) did not stop within {timeout_s:.0f}s; killing it")
    os.kill(pid, signal.SIGKILL)
    return True


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def require_free_port(host: str, port: int, setting: str) -> None:
    if port_open(host, port):
        env_name = "FLOWLEARN__" + setting.upper().replace(".", "__")
        raise StackError(
            f"port {port} ({setting}) is already taken by another process: stop it, "
            f"or choose another port with {env_name}=..."
        )


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, logfile: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise StackError(f"{what} did not come up within {timeout_s:.0f}s; see {logfile}")


def require_tool(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StackError(f"'{tool}' is not on PATH: {hint}")
    return path


# --------------------------------------------------------------------------- Maven jars


#: The one script that fetches jars, shared with the job image's build (flink-docker/).
FETCH_JARS = Path(__file__).resolve().parents[2] / "flink-docker" / "fetch-jars.sh"


def fetch_jars(settings: Settings, label: str, constant: str, transitive: bool) -> Path:
    """Fetch the artifact named by ``flowlearn.conf.versions.<constant>`` (and, if ``transitive``,
    its
    runtime dependencies) into ``jars/<label>``, once."""
    target = settings.stack.jars / label
    require_tool("mvn", "install Maven (apt-get install -y maven) to fetch the jars")
    if not (target / ".complete").exists():
        log(f"fetching {getattr(versions, constant)} with Maven into {target} ...")
    cmd = ["bash", str(FETCH_JARS), "--artifact", constant,
           *(["--transitive"] if transitive else []), str(target)]
    result = subprocess.run(cmd, capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable})
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise StackError(f"fetching {constant} failed: {lines[-1]}")
    return target


def kafka_connector_jar(settings: Settings) -> Path:
    folder = fetch_jars(settings, "flink-kafka", "KAFKA_CONNECTOR_ARTIFACT", False)
    jars = sorted(folder.glob("flink-sql-connector-kafka-*.jar"))
    if not jars:
        raise StackError(f"no Kafka connector jar in {folder}; delete it and run again")
    return jars[0]


#: Builds the job's Java operators (``operators/java``), shared with the job image's build.
BUILD_OPERATORS_JAR = FETCH_JARS.parent / "build-operators-jar.sh"
OPERATORS_JAVA = FETCH_JARS.parent.parent / "operators" / "java"


def operators_jar(settings: Settings) -> Path:
    """The jar of the job's Java operators, compiled against this Flink into
    ``jars/flowlearn-operators`` once per version of their sources (a second or two)."""
    digest = hashlib.sha256()
    for path in [*sorted(OPERATORS_JAVA.rglob("*.java")), BUILD_OPERATORS_JAR]:
        digest.update(path.relative_to(OPERATORS_JAVA.parent.parent).as_posix().encode())
        digest.update(path.read_bytes())
    digest.update(versions.FLINK_VERSION.encode())
    folder = settings.stack.jars / "flowlearn-operators"
    target = folder / f"operators-{digest.hexdigest()[:16]}.jar"
    if target.exists():
        return target
    require_tool("javac", "install a JDK 17 (apt-get install -y openjdk-17-jdk-headless)")
    result = subprocess.run(["bash", str(BUILD_OPERATORS_JAR), str(flink_home() / "lib"),
                             str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"building the operators jar failed:\n{result.stderr.strip()}")
    for old in folder.glob("operators-*.jar"):
        if old != target:
            old.unlink(missing_ok=True)
    return target


# --------------------------------------------------------------------------- Kafka


def _kafka_dirs(settings: Settings) -> tuple[Path, Path]:
    return settings.stack.home / "kafka", settings.stack.data / "kafka"


def _java() -> str:
    return require_tool("java", "install a JDK 17 (apt-get install -y openjdk-17-jre-headless)")


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
            f"that signed it (kafka.ssl_ca_file)")
    if k.security_protocol == "SSL" and not k.ssl_cert_file:
        raise StackError("kafka.security_protocol SSL: the local broker requires client "
                         "certificates: set kafka.ssl_cert_file and kafka.ssl_key_file")
    keystore = conf_dir / "broker-keystore.pem"
    keystore.touch(mode=0o600)
    keystore.chmod(0o600)
    keystore.write_text(Path(k.broker_ssl_key_file).read_text().rstrip("\n") + "\n"
                        + Path(k.broker_ssl_cert_file).read_text())
    return keystore


def start_kafka(settings: Settings) -> None:
    if running_pid(settings, "kafka"):
        return
    k = settings.kafka
    if k.sasl and k.sasl_mechanism == "PLAIN":
        raise StackError("the local stack's broker takes SCRAM logins: set "
                         "kafka.sasl_mechanism to SCRAM-SHA-512 or SCRAM-SHA-256")
    require_free_port(k.host, k.port, "kafka.port")
    require_free_port(k.host, k.controller_port, "kafka.controller_port")
    java = _java()
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
    if (log_dir / "meta.properties").exists() and k.sasl and (
            not scram_marker.exists() or scram_marker.read_text() != k.sasl_username):
        raise StackError(f"the Kafka storage in {log_dir} was formatted without the SCRAM user "
                         f"{k.sasl_username!r} (users are created when it is formatted): "
                         f"`flowlearn down`, delete {log_dir}, `flowlearn up`")
    if not (log_dir / "meta.properties").exists():
        cluster_id = subprocess.run(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "random-uuid"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        log(f"formatting Kafka storage in {log_dir} (cluster id {cluster_id})")
        result = subprocess.run(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "format", "--standalone",
             "-t", cluster_id, "-c", str(props),
             *(["--add-scram", f"{k.sasl_mechanism}=[name={k.sasl_username},"
                               f"password={k.sasl_password}]"] if k.sasl else [])],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise StackError(f"Kafka storage format failed: {result.stdout}{result.stderr}")
        if k.sasl:
            scram_marker.write_text(k.sasl_username)
    start_process(
        settings,
        "kafka",
        [java, f"-Xmx{k.heap}", f"-Xms{k.heap}", "-cp", classpath,
         f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={settings.stack.logs}",
         "kafka.Kafka", str(props)],
    )
    wait_for("Kafka", lambda: port_open(k.host, k.port), 90, settings.stack.logs / "kafka.out")
    create_topics(settings)


def create_topics(settings: Settings, timeout_s: float = 60.0) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(**settings.kafka.client_options(),
                                     client_id="flowlearn-admin", request_timeout_ms=10000)
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


# --------------------------------------------------------------------------- Redis


def debian_binary(binary: str, package: str) -> str:
    """The path of ``binary``, installing Debian's ``package`` first when missing (as root)."""
    path = shutil.which(binary)
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"installing {package} with apt-get ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False,
                       stdout=subprocess.DEVNULL)
        result = subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env,
                                capture_output=True, text=True)
        path = shutil.which(binary)
        if result.returncode == 0 and path:
            # Debian may start its own service on install; ours runs on our port, by our pid.
            subprocess.run(["service", package, "stop"], capture_output=True)
            return path
        raise StackError(f"apt-get install {package} failed: {result.stderr.strip()[-300:]}")
    raise StackError(f"{binary} is not on PATH: install it (apt-get install -y {package})")


def redis_auth_lines(username: str, password: str, prefix: str) -> list[str]:
    """redis.conf lines for the configured login: the default user's password, or an ACL
    user limited to the prefix's keys and without the dangerous commands (FLUSHALL,
    CONFIG, KEYS, ...) while the default user is off.

    >>> redis_auth_lines("fl", "pw", "fl:")
    ['user default off', 'user fl on >pw resetkeys ~fl:* resetchannels +@all -@dangerous']
    """
    if not username:
        return [f"requirepass {password}"]
    return ["user default off",
            f"user {username} on >{password} resetkeys ~{prefix}* resetchannels "
            f"+@all -@dangerous"]


def start_redis(settings: Settings) -> None:
    if running_pid(settings, "redis"):
        return
    r = settings.redis
    if r.tls:
        raise StackError("the local stack runs Redis without TLS: set redis.tls = false, or "
                         "point redis.host at a Redis server that has TLS")
    require_free_port(r.host, r.port, "redis.port")
    server = debian_binary("redis-server", "redis-server")
    data = settings.stack.data / "redis"
    data.mkdir(parents=True, exist_ok=True)
    conf_file = settings.stack.home / "redis" / "redis.conf"
    conf_file.parent.mkdir(parents=True, exist_ok=True)
    conf_file.write_text(
        "\n".join(
            [
                f"bind {r.host}",
                f"port {r.port}",
                "protected-mode yes",
                *redis_auth_lines(r.username, r.password, r.prefix),
                f"dir {data}",
                "daemonize no",
                # Keep the config path in the process title: running_pid() recognises it.
                'proc-title-template "{title} {listen-addr} {config-file}"',
                "save 60 1000",
                "appendonly no",
                "",
            ]
        )
    )
    conf_file.chmod(0o600)  # it holds the password
    start_process(settings, "redis", [server, str(conf_file)])
    wait_for("Redis", lambda: port_open(r.host, r.port), 30, settings.stack.logs / "redis.out")


# --------------------------------------------------------------------------- Flink


def flink_home() -> Path:
    """The Flink distribution inside the pyflink package (found, not imported: only the job
    layer imports pyflink)."""
    spec = importlib.util.find_spec("pyflink")
    if spec is None or spec.origin is None:
        raise StackError("pyflink is not installed; run `make install` first")
    return Path(spec.origin).resolve().parent


def flink_conf_dir(settings: Settings) -> Path:
    return settings.stack.home / "flink" / "conf"


def write_flink_conf(settings: Settings) -> Path:
    f = settings.flink
    conf_dir = flink_conf_dir(settings)
    conf_dir.mkdir(parents=True, exist_ok=True)
    shipped = flink_home() / "conf"
    for name in ("log4j-console.properties", "log4j-cli.properties", "log4j.properties",
                 "logback-console.xml"):
        shutil.copy(shipped / name, conf_dir / name)
    java_opts = _shipped_java_opts(shipped / "config.yaml")
    checkpoints = settings.stack.data / "flink" / "checkpoints"
    savepoints = settings.stack.data / "flink" / "savepoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    savepoints.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    entries: dict[str, Any] = {
        "env.java.opts.all": java_opts,
        "jobmanager.rpc.address": "127.0.0.1",
        "jobmanager.rpc.port": f.rpc_port,
        "jobmanager.bind-host": "127.0.0.1",
        "jobmanager.memory.process.size": f.process_memory_jobmanager,
        "taskmanager.bind-host": "127.0.0.1",
        "taskmanager.host": "127.0.0.1",
        "taskmanager.memory.process.size": f.process_memory_taskmanager,
        "taskmanager.numberOfTaskSlots": f.taskmanager_slots,
        "parallelism.default": f.parallelism,
        "rest.address": f.rest_host,
        "rest.bind-address": f.rest_host,
        "rest.port": f.rest_port,
        "execution.checkpointing.interval": f"{f.checkpoint_interval_ms}ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.dir": f"file://{checkpoints}",
        "execution.checkpointing.savepoint-dir": f"file://{savepoints}",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": 3,
        "state.backend.type": "hashmap",
        "restart-strategy.type": "exponential-delay",
        "metrics.reporter.prom.factory.class":
            "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
        "metrics.reporter.prom.port": f.prometheus_ports,
        "metrics.reporter.prom.host": "127.0.0.1",
        "python.executable": python,
        "python.client.executable": python,
        "python.fn-execution.bundle.size": f.python_bundle_size,
        "python.fn-execution.bundle.time": f.python_bundle_time_ms,
    }
    (conf_dir / "config.yaml").write_text(
        "".join(f"{key}: {json.dumps(value)}\n" for key, value in entries.items())
    )
    return conf_dir


def _shipped_java_opts(config_yaml: Path) -> str:
    """The JVM flags Flink's own config.yaml sets for Java 17 (``env.java.opts.all``)."""
    lines = config_yaml.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "opts:" and i + 1 < len(lines) and "all:" in lines[i + 1]:
            return lines[i + 1].split("all:", 1)[1].strip()
    return ""


def flink_env(settings: Settings) -> dict[str, str]:
    home = flink_home()
    venv_bin = str(Path(sys.executable).parent)
    return {
        "FLINK_HOME": str(home),
        "FLINK_CONF_DIR": str(flink_conf_dir(settings)),
        "FLINK_LOG_DIR": str(settings.stack.logs),
        "FLINK_PID_DIR": str(settings.stack.run),
        "FLINK_PLUGINS_DIR": str(home / "plugins"),
        # Scripts and Python workers must find this venv's python first.
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
    }


def flink_rest(settings: Settings, path: str, method: str = "GET",
               body: dict[str, Any] | None = None, timeout_s: float = 5.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"{settings.flink.web_ui}{path}", data=data, method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read() or b"null")


def _flink_ready(settings: Settings) -> bool:
    try:
        overview = flink_rest(settings, "/overview", timeout_s=2)
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return int(overview.get("taskmanagers", 0)) >= 1


def start_flink(settings: Settings) -> None:
    _java()
    write_flink_conf(settings)
    env = flink_env(settings)
    bin_dir = flink_home() / "bin"
    if not running_pid(settings, "jobmanager"):
        require_free_port(settings.flink.rest_host, settings.flink.rest_port, "flink.rest_port")
        require_free_port("127.0.0.1", settings.flink.rpc_port, "flink.rpc_port")
        # Not the project root: Python workers run with their cwd on sys.path, where the
        # checkout's packages would shadow the job's own (-pyfs), say a new build of it.
        start_process(settings, "jobmanager",
                      ["bash", str(bin_dir / "jobmanager.sh"), "start-foreground"], env=env,
                      cwd=settings.stack.run)
    if not running_pid(settings, "taskmanager"):
        # Supervised: a TaskManager that dies comes back, as a cluster's resource manager
        # would bring one back, and the job recovers from its last checkpoint.
        start_process(settings, "taskmanager",
                      [sys.executable, "-m", "flowlearn.devstack.supervise",
                       "--pid-file", str(child_pid_file(settings, "taskmanager")), "--",
                       "bash", str(bin_dir / "taskmanager.sh"), "start-foreground"], env=env,
                      cwd=settings.stack.run)
    wait_for("Flink (JobManager with a TaskManager)", lambda: _flink_ready(settings), 120,
             settings.stack.logs / "jobmanager.out")


# --------------------------------------------------------------------------- Prometheus


def start_prometheus(settings: Settings) -> None:
    if running_pid(settings, "prometheus"):
        return
    p = settings.prometheus
    require_free_port(p.host, p.port, "prometheus.port")
    binary = debian_binary("prometheus", "prometheus")
    conf_dir = settings.stack.home / "prometheus"
    conf_dir.mkdir(parents=True, exist_ok=True)
    flink_targets = [f"127.0.0.1:{port}" for port in settings.flink.prometheus_port_list()]
    config = {
        "global": {"scrape_interval": f"{p.scrape_interval_s}s",
                   "evaluation_interval": f"{p.scrape_interval_s}s"},
        "scrape_configs": [
            # One reporter port per Flink process, taken in start order from the range.
            {"job_name": "flink", "static_configs": [{"targets": flink_targets}]},
            {"job_name": "predictor", "metrics_path": "/metrics",
             "static_configs": [{"targets": [f"{settings.predictor.host}:"
                                             f"{settings.predictor.port}"]}]},
        ],
    }
    config_file = conf_dir / "prometheus.yml"
    config_file.write_text(json.dumps(config, indent=2))  # JSON is YAML
    start_process(settings, "prometheus", [
        binary, f"--config.file={config_file}",
        f"--storage.tsdb.path={settings.stack.data / 'prometheus'}",
        f"--web.listen-address={p.host}:{p.port}",
        "--storage.tsdb.retention.time=7d",
    ])
    wait_for("Prometheus", lambda: port_open(p.host, p.port), 60,
             settings.stack.logs / "prometheus.out")


# --------------------------------------------------------------------------- predictor


def start_predictor(settings: Settings, config_path: Path | None) -> None:
    if running_pid(settings, "predictor"):
        return
    p = settings.predictor
    require_free_port(p.host, p.port, "predictor.port")
    argv = [sys.executable, "-m", "flowlearn.serving"]
    if config_path:
        argv += ["--config", str(config_path)]
    start_process(settings, "predictor", argv)
    wait_for("predictor", lambda: port_open(p.host, p.port), 60,
             settings.stack.logs / "predictor.out")


# --------------------------------------------------------------------------- up / down


@dataclass(frozen=True)
class Step:
    name: str
    seconds: float


def up(settings: Settings, config_path: Path | None = None) -> list[Step]:
    """Start every component that is not running; returns how long each step took."""
    steps: list[Step] = []
    for name, start in (
        ("kafka", lambda: start_kafka(settings)),
        ("redis", lambda: start_redis(settings)),
        ("flink", lambda: start_flink(settings)),
        ("predictor", lambda: start_predictor(settings, config_path)),
        ("prometheus", lambda: start_prometheus(settings)),
    ):
        t0 = time.monotonic()
        log(f"starting {name} ...")
        start()
        steps.append(Step(name, time.monotonic() - t0))
        log(f"{name} up ({steps[-1].seconds:.1f}s)")
    return steps


def down(settings: Settings) -> list[str]:
    """Stop everything this stack started, in dependency order; returns what was stopped."""
    stopped = []
    for name in ("producer", "prometheus", "predictor", "taskmanager", "jobmanager", "redis",
                 "kafka"):
        if stop_process(settings, name):
            stopped.append(name)
            log(f"stopped {name}")
    return stopped


def component_status(settings: Settings) -> dict[str, dict[str, Any]]:
    urls = {
        "kafka": f"kafka://{settings.kafka.bootstrap}",
        "redis": settings.redis.url,
        "jobmanager": settings.flink.web_ui,
        "taskmanager": None,
        "predictor": settings.predictor.url,
        "prometheus": settings.prometheus.url,
        "producer": None,
    }
    out: dict[str, dict[str, Any]] = {}
    for name in COMPONENTS:
        pid = running_pid(settings, name)
        pids = [pid] if pid else []
        child = running_pid(settings, f"{name}-child") if pid else None
        if child:  # a supervised component: the supervisor and its current child
            pids.append(child)
        out[name] = {
            "state": "running" if pid else "stopped",
            "pids": pids,
            "url": urls[name],
        }
    return out
