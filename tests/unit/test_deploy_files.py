"""The deployment files under flink-docker/: compose stack, images, Prometheus, Grafana and the
Kubernetes manifests are parsed and checked against the project they deploy (versions, metric
names, settings), so that a rename in the code breaks here rather than in a cluster.

External validators run when they are installed and skip with the reason otherwise:
``promtool`` (Debian's ``prometheus`` package), ``docker compose`` (needs the Compose plugin,
not an engine), ``kubectl`` (its built-in kustomize) and ``shellcheck``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowlearn.conf import load_settings, versions
from flowlearn.conf.settings import SLOT_GROUPS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "flink-docker"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "flowlearn.json"
OP = "flink_taskmanager_job_task_operator_"

#: Flink's own metrics the dashboard and the alerts use, as its Prometheus reporter names them
#: (checked against a running Flink 2.2.1 with the Kafka connector 5.0.0-2.2).
FLINK_BUILTIN_METRICS = {
    "flink_jobmanager_numRunningJobs",
    "flink_jobmanager_numRegisteredTaskManagers",
    "flink_jobmanager_taskSlotsAvailable",
    "flink_jobmanager_taskSlotsTotal",
    "flink_jobmanager_job_numRestarts",
    "flink_jobmanager_job_lastCheckpointDuration",
    "flink_jobmanager_job_lastCheckpointCompletedTimestamp",
    "flink_jobmanager_job_numberOfFailedCheckpoints",
    "flink_taskmanager_job_task_busyTimeMsPerSecond",
    "flink_taskmanager_job_task_backPressuredTimeMsPerSecond",
    f"{OP}pendingRecords",
    f"{OP}KafkaSourceReader_KafkaConsumer_records_lag_max",
}
#: Series Prometheus itself adds to every scrape target.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@cache
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(DEPLOY / "docker-compose.yml")
    return data


@cache
def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d.get("kind") == kind]


def flink_deployment() -> dict[str, Any]:
    (fd,) = k8s_kind("FlinkDeployment")
    return fd


def dockerfile_flink_options(text: str) -> dict[str, str]:
    """The ``-Dkey=value`` options the job Dockerfile writes into the image's Flink config."""
    return dict(re.findall(r"-D([\w.\-]+)=(\S+?)(?=\s|\\|;|$)", text))


def flink_properties(service: dict[str, Any]) -> dict[str, str]:
    """FLINK_PROPERTIES of a compose service, with ``${VAR:-default}`` read as its default."""
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", service["environment"]["FLINK_PROPERTIES"])
    return dict(line.split(": ", 1) for line in text.strip().splitlines())


# --------------------------------------------------------------------------- parse everything


def test_every_yaml_and_json_file_parses() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml", ".json")]
    assert len(files) >= 10
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            assert list(yaml.safe_load_all(path.read_text())), f"{path} is empty"


# --------------------------------------------------------------------------- the shared jar script


def test_fetch_jars_reads_versions_py_and_skips_what_is_fetched(tmp_path: Path) -> None:
    script = DEPLOY / "fetch-jars.sh"
    text = script.read_text()
    # The coordinates live in conf/versions.py only.
    assert versions.KAFKA_CONNECTOR_ARTIFACT.split(":")[-1] not in text
    assert "conf/versions.py" in text
    out = tmp_path / "flink-kafka"
    out.mkdir()
    (out / ".complete").write_text(versions.KAFKA_CONNECTOR_ARTIFACT + "\n")
    # Already fetched: done without Maven (MVN points nowhere) and without the network.
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "MVN": "/nonexistent/mvn"}
    done = subprocess.run(
        ["bash", str(script), str(out)], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert versions.KAFKA_CONNECTOR_ARTIFACT in done.stderr
    bad = subprocess.run(
        ["bash", str(script), "--artifact", "NO_SUCH_CONSTANT", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode != 0 and "NO_SUCH_CONSTANT" in bad.stderr


def test_the_operators_jar_script_builds_the_java_operators(tmp_path: Path) -> None:
    from flowlearn.devstack.flink_cluster import SPARE_TASKMANAGER_MAIN, flink_home

    out = tmp_path / "operators.jar"
    done = subprocess.run(
        ["bash", str(DEPLOY / "build-operators-jar.sh"), str(flink_home() / "lib"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "dev/flowlearn/flink/RecordBundler.class" in zipfile.ZipFile(out).namelist()
    # The same jar is the TaskManagers' Java agent, and its warm-up runs against this Flink's
    # flink-python (reflection: a renamed class or method would only be logged at run time).
    manifest = zipfile.ZipFile(out).read("META-INF/MANIFEST.MF").decode()
    assert "Premain-Class: dev.flowlearn.flink.PythonRunnerWarmup" in manifest
    (python_jar,) = (flink_home() / "opt").glob("flink-python-*.jar")
    for classpath, code in (
        (f"{flink_home() / 'lib'}/*:{python_jar}:{out}", 0),
        (f"{flink_home() / 'lib'}/*:{out}", 1),  # no flink-python: nothing to warm up
    ):
        warm = subprocess.run(
            ["java", "-cp", classpath, "dev.flowlearn.flink.PythonRunnerWarmup"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert warm.returncode == code, warm.stderr
    # A spare TaskManager (flowlearn.devstack.supervise --spare) ends on the end of its
    # standard input, and on "start" is Flink's TaskManagerRunner, its arguments and all.
    classpath = f"{flink_home() / 'lib'}/*:{out}"
    spare = ["java", "-cp", classpath, SPARE_TASKMANAGER_MAIN]
    ended = subprocess.run(spare, input="", capture_output=True, text=True, timeout=60)
    assert ended.returncode == 0 and "TaskManagerRunner" not in ended.stderr, ended.stderr
    # While it waits, a spare has loaded Flink's RPC system and run a service of it once
    # (WarmRpcSystem, which its TaskManager then uses: Flink finds it by the jar's service
    # file); a spare ended unused closes it, leaving no copy of its jar in the temporary folder.
    assert "META-INF/services/org.apache.flink.runtime.rpc.RpcSystemLoader" in (
        zipfile.ZipFile(out).namelist()
    )
    conf, io_tmp = tmp_path / "conf", tmp_path / "io"
    conf.mkdir()
    io_tmp.mkdir()
    (conf / "config.yaml").write_text(f"io.tmp.dirs: {io_tmp}\n")
    log4j = tmp_path / "log4j.properties"
    log4j.write_text(
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.console.ref = console\n"
        "appender.console.name = console\n"
        "appender.console.type = CONSOLE\n"
        "appender.console.layout.type = PatternLayout\n"
        "appender.console.layout.pattern = %m%n\n"
    )
    warm = subprocess.run(
        [*spare[:1], f"-Dlog4j.configurationFile={log4j}", *spare[1:], "--configDir", str(conf)],
        input="",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert warm.returncode == 0, warm.stderr
    assert "Spare TaskManager: RPC system warmed up in" in warm.stdout, warm.stdout
    assert list(io_tmp.iterdir()) == []
    started = subprocess.run(
        [*spare, "--configDir", str(tmp_path / "no-conf")],
        input="start\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode != 0 and "TaskManagerRunner.main" in started.stderr, started.stderr
    # Not against a folder without Flink: a clear refusal, nothing written.
    bad = subprocess.run(
        ["bash", str(DEPLOY / "build-operators-jar.sh"), str(tmp_path), str(tmp_path / "none.jar")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode != 0 and "no flink-dist jar" in bad.stderr
    assert not (tmp_path / "none.jar").exists()


@pytest.mark.parametrize(
    "script", ["fetch-jars.sh", "submit-job.sh", "build-operators-jar.sh", "entrypoint.sh"]
)
def test_shell_scripts_lint(script: str) -> None:
    path = DEPLOY / script
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# --------------------------------------------------------------------------- images


def test_job_image_matches_the_project() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^ARG FLINK_IMAGE=(\S+)$", text, re.M)
    assert base, "the Flink base image is a build ARG"
    assert base.group(1).startswith(f"flink:{versions.FLINK_VERSION}-")
    assert base.group(1).endswith("-java17")
    # The connector and the zstd codec of its client come from the script the local stack
    # runs, into Flink's lib/.
    for artifact in ("", "--artifact ZSTD_JNI_ARTIFACT "):
        fetched = re.search(rf"^RUN bash flink-docker/fetch-jars\.sh {artifact}(\S+)$", text, re.M)
        assert fetched, artifact
        copy = rf"^COPY --from=jars \S+ {re.escape(fetched.group(1))}/\*\.jar /opt/flink/lib/$"
        assert re.search(copy, text, re.M), artifact
    # So does the operators jar.
    assert re.search(r"^RUN bash flink-docker/build-operators-jar\.sh \S+ (\S+)$", text, re.M)
    assert re.search(r"^COPY --from=operators .*\.jar /opt/flink/lib/$", text, re.M)
    python = re.search(r"^ARG PYTHON_VERSION=(\d+)\.(\d+)\.\d+$", text, re.M)
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python and f"{python.group(1)}.{python.group(2)}" == "3.11" and "<3.12" in requires
    assert re.search(r"^ARG PYTHON_SHA256=[0-9a-f]{64}$", text, re.M)
    options = dockerfile_flink_options(text)
    assert options["metrics.reporter.prom.factory.class"] == (
        "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
    )
    assert options["metrics.reporter.prom.port"] == "9249"
    defaults = load_settings(env={}).flink
    assert int(options["python.fn-execution.bundle.size"]) == defaults.python_bundle_size
    assert int(options["python.fn-execution.bundle.time"]) == defaults.python_bundle_time_ms
    assert re.search(r"^USER flink$", text, re.M)


def test_job_image_forks_workers_from_the_pool_and_warms_up_its_taskmanagers() -> None:
    """The image's python.executable is the pool's launcher, its entrypoint starts the pool in
    TaskManager containers (compose's and the operator's), and its TaskManagers run the
    operators jar as their Java agent with flink-python beside it in lib/; the FlinkDeployment
    points at the same entrypoint."""
    text = (DEPLOY / "Dockerfile").read_text()
    options = dockerfile_flink_options(text)
    launcher = re.search(r"write-launcher (\S+)", text)
    assert launcher and options["python.executable"] == launcher.group(1)
    assert options["python.client.executable"] == "/usr/local/bin/python3"
    pool_socket = re.search(r"^ENV FLOWLEARN_WORKER_POOL=(\S+)$", text, re.M)
    assert pool_socket
    entrypoint = re.search(r'^ENTRYPOINT \["(\S+)"\]$', text, re.M)
    assert entrypoint and f"flink-docker/entrypoint.sh {entrypoint.group(1)}" in text
    script = (DEPLOY / "entrypoint.sh").read_text()
    assert "*taskmanager*)" in script and 'serve --socket "$FLOWLEARN_WORKER_POOL"' in script
    assert script.rstrip().endswith('exec /docker-entrypoint.sh "$@"')
    assert (
        options["env.java.opts.taskmanager"] == "-javaagent:/opt/flink/lib/flowlearn-operators.jar"
    )
    assert re.search(r"^RUN cp /opt/flink/opt/flink-python-\*\.jar /opt/flink/lib/", text, re.M)
    assert "org.apache.beam." in options["classloader.parent-first-patterns.additional"]
    conf = flink_deployment()["spec"]["flinkConfiguration"]
    assert conf["kubernetes.entry.path"] == entrypoint.group(1)


def test_docker_contexts_hold_what_the_images_copy() -> None:
    for dockerfile in ("Dockerfile", "Dockerfile.predictor"):
        text = (DEPLOY / dockerfile).read_text()
        ignore = (DEPLOY / f"{dockerfile}.dockerignore").read_text().splitlines()
        allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
        assert "*" in ignore, f"{dockerfile}: the context should be an allow-list"
        for src in re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+) ", text, re.M):
            assert (ROOT / src).exists(), f"{dockerfile} copies missing {src}"
            assert any(src == a or src.startswith(a + "/") for a in allowed), (
                f"{dockerfile} copies {src}, which its .dockerignore leaves out"
            )
        for package in ("conf", "flowlearn"):
            assert package in allowed


def test_predictor_image_is_small_and_unprivileged() -> None:
    text = (DEPLOY / "Dockerfile.predictor").read_text()
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}$", text, re.M)
    assert "python:3.11-slim" in text
    user = re.search(r"^USER (\d+):(\d+)$", text, re.M)
    assert user and int(user.group(1)) > 0
    assert 'ENTRYPOINT ["python", "-m", "flowlearn.serving"]' in text
    assert '"apache-flink", "mlflow"' in text  # the job's dependencies stay out


def test_predictor_imports_without_the_job_dependencies() -> None:
    """The predictor image installs neither apache-flink nor mlflow."""
    if not (ROOT / "flowlearn" / "serving").exists():
        pytest.skip("flowlearn/serving is not in the tree yet")
    code = "import sys; sys.modules.update(pyflink=None, mlflow=None); import flowlearn.serving"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]


# --------------------------------------------------------------------------- compose


def test_compose_services_and_images() -> None:
    services = compose()["services"]
    assert {
        "kafka",
        "kafka-init",
        "redis",
        "mlflow",
        "jobmanager",
        "taskmanager",
        "job-submitter",
        "predictor",
        "prometheus",
        "grafana",
    } <= set(services)
    for name, service in services.items():
        image = service["image"]
        if "build" in service:
            assert service["build"]["dockerfile"] in (
                "flink-docker/Dockerfile",
                "flink-docker/Dockerfile.predictor",
            ), name
        else:
            tag = image.rsplit(":", 1)
            assert len(tag) == 2 and tag[1] not in ("latest", ""), f"{name}: pin {image}"
    for name in ("jobmanager", "taskmanager", "job-submitter", "kafka-init"):
        assert services[name]["build"]["dockerfile"] == "flink-docker/Dockerfile"
    broker_version = versions.KAFKA_BROKER_ARTIFACT.rsplit(":", 1)[1]
    assert services["kafka"]["image"] == f"apache/kafka:{broker_version}"


def test_compose_kafka_is_single_node_kraft_fit_for_transactions() -> None:
    env = compose()["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for key in (
        "OFFSETS_TOPIC_REPLICATION_FACTOR",
        "TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "TRANSACTION_STATE_LOG_MIN_ISR",
        "SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
        "SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
    ):
        assert env[f"KAFKA_{key}"] == 1, key


def test_compose_job_runs_with_flink_run_on_enough_slots() -> None:
    services = compose()["services"]
    assert services["job-submitter"]["command"] == ["/opt/flowlearn/bin/submit-job.sh"]
    submit = (DEPLOY / "submit-job.sh").read_text()
    assert "run -d -pym flowlearn.jobs.online_learning" in submit
    assert (ROOT / "jobs" / "online_learning.py").exists()
    props = flink_properties(services["taskmanager"])
    slots = int(props["taskmanager.numberOfTaskSlots"])
    assert slots >= SLOT_GROUPS * int(props["parallelism.default"])
    assert props["execution.checkpointing.dir"].startswith("file:///flink-data/")
    mounts = {v.split(":")[1] for v in services["taskmanager"]["volumes"]}
    assert "/flink-data" in mounts
    # kafka-init calls the local stack's own topic creation.
    from flowlearn.devstack import kafka_broker

    assert "create_topics(load_settings())" in " ".join(services["kafka-init"]["command"])
    assert callable(kafka_broker.create_topics)


def test_compose_secrets_come_from_the_env_file() -> None:
    secret = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$")
    reference = re.compile(r"\$\{\w+:\?[^}]+\}")
    checked = 0
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secret.search(key):
                checked += 1
                # References to .env, with nothing but token scopes and separators between.
                rest = reference.sub("", str(value))
                assert reference.search(str(value)) and re.fullmatch(r"[ ,a-z]*", rest), (
                    f"{name}.{key} must be ${{VAR:?...}} from .env, not {value!r}"
                )
    for name, declared in compose()["secrets"].items():
        assert set(declared) == {"environment"}, f"secret {name} must come from .env"
    assert checked >= 4
    example = (DEPLOY / ".env.example").read_text()
    for line in example.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#") and secret.search(key):
            assert value == "", f".env.example must not carry a value for {key}"
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()
    redis = compose()["services"]["redis"]
    assert "requirepass" in " ".join(redis["command"])


def test_compose_networks_keep_data_services_internal() -> None:
    data = compose()
    assert data["networks"]["backend"]["internal"] is True
    for name in ("kafka", "redis", "taskmanager"):
        assert data["services"][name]["networks"] == ["backend"], name
    for name, service in data["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_mounts_exist() -> None:
    for name in ("prometheus", "grafana"):
        for volume in compose()["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"


def test_docker_compose_config() -> None:
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0
    ):
        pytest.skip("the docker compose plugin is not installed")
    env = {
        "PATH": "/usr/bin:/bin:/usr/local/bin",
        "REDIS_PASSWORD": "x",
        "GRAFANA_ADMIN_PASSWORD": "x",
        "PREDICTOR_ADMIN_TOKEN": "x",
        "PREDICTOR_READ_TOKEN": "x",
    }
    result = subprocess.run(
        [
            docker,
            "compose",
            "-f",
            str(DEPLOY / "docker-compose.yml"),
            "--profile",
            "demo",
            "config",
            "--quiet",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_flink_and_predictors() -> None:
    config = load_yaml(DEPLOY / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["flink-jobmanager"]["static_configs"][0]["targets"] == ["jobmanager:9249"]
    assert jobs["flink-taskmanager"]["dns_sd_configs"][0]["names"] == ["taskmanager"]
    assert jobs["flink-taskmanager"]["dns_sd_configs"][0]["port"] == 9249
    assert jobs["predictor"]["dns_sd_configs"][0]["port"] == 8080
    assert jobs["predictor"]["metrics_path"] == "/metrics"
    # The predictors ask for an admin token on /metrics: the compose secret made of the
    # token the predictors take as admin.
    auth = jobs["predictor"]["authorization"]
    assert auth["type"] == "Bearer"
    secret = Path(auth["credentials_file"]).name
    assert auth["credentials_file"] == f"/run/secrets/{secret}"
    assert secret in compose()["services"]["prometheus"]["secrets"]
    variable = compose()["secrets"][secret]["environment"]
    tokens = compose()["services"]["predictor"]["environment"]["FLOWLEARN__PREDICTOR__TOKENS"]
    assert re.search(rf"\$\{{{variable}:\?[^}}]+\}} admin", tokens)


def test_compose_predictor_settings_ask_for_tokens_and_have_them() -> None:
    """The predictor container's settings (the image's ENV, the compose environment with
    .env filled in) load, ask for tokens, and hold an admin and a read one."""
    from flowlearn.conf.tokens import read_tokens
    from flowlearn.serving.auth import OPEN_ROUTES

    text = (DEPLOY / "Dockerfile.predictor").read_text()
    env = dict(re.findall(r"(FLOWLEARN__\w+)=(\S+)", text))
    fill = iter(f"compose-test-token-{i:02d}-0123456789" for i in range(100))
    for key, value in compose()["services"]["predictor"]["environment"].items():
        value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))
        env[key] = re.sub(r"\$\{\w+:\?[^}]+\}", lambda _m: next(fill), value)
    predictor = load_settings(env=env).predictor
    assert predictor.host == "0.0.0.0" and predictor.auth_required
    assert sorted(t.scope for t in read_tokens(predictor)) == ["admin", "read"]
    healthcheck = re.search(r"urlopen\('http://127\.0\.0\.1:8080(/[\w/]+)'", text)
    assert healthcheck and healthcheck.group(1) in OPEN_ROUTES


def test_promtool_check_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    # The rules path inside the container, made relative to check the files as they are.
    # The token file compose mounts, stood in for: promtool checks that it exists.
    token = tmp_path / "predictor_admin_token"
    token.write_text("stand-in")
    config = (
        (DEPLOY / "prometheus.yml")
        .read_text()
        .replace("/etc/prometheus/prometheus-rules.yml", "prometheus-rules.yml")
        .replace("/run/secrets/predictor_admin_token", str(token))
    )
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(DEPLOY / "prometheus-rules.yml", tmp_path / "prometheus-rules.yml")
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- metric names


def job_metric_names() -> set[str]:
    """The operator metrics the job registers, read from operators/ (f-string prefixes
    expanded with the ``what = "..."`` class attributes of the same file). Counters declared
    through ``ModelMetrics(group, (names...))`` exist both as operator totals where the
    operator registers them, and per model as ``..._operator_model_<name>``."""
    names = set()
    per_model = set()
    for path in (ROOT / "operators").glob("*.py"):
        text = path.read_text()
        whats = re.findall(r'^\s+what = "(\w+)"', text, re.M)
        for is_f, name in re.findall(
            r'\.(?:counter|gauge|meter|distribution)\(\s*(f?)"([^"]+)"', text
        ):
            if is_f:
                names |= {re.sub(r"\{self\.what\}", w, name) for w in whats}
            else:
                names.add(name)
        for declared in re.findall(r"ModelMetrics\(\s*\w+,\s*\(([^()]*)\)", text):
            model_names = set(re.findall(r'"(\w+)"', declared))
            per_model |= model_names
            if "self.metrics.names" in text:  # totals registered from the same tuple
                names |= model_names
        per_model |= set(re.findall(r'per_model\.gauge\(\s*model_id,\s*"(\w+)"', text))
    return {OP + n for n in names} | {OP + "model_" + n for n in per_model}


def predictor_metric_names() -> set[str]:
    """The predictor's metrics, with the suffixes they are exposed as (from its registry)."""
    from flowlearn.serving.metrics import Metrics

    metrics = Metrics()
    metrics.watch_models(list)  # the per-model gauges, with no model
    names = set()
    for family in metrics.registry.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "gauge":
            names.add(family.name)
        else:
            names |= {family.name + "_sum", family.name + "_count", family.name + "_created"}
            if family.type == "histogram":
                names.add(family.name + "_bucket")
    return names


def known_metric_names() -> set[str]:
    return (
        job_metric_names() | predictor_metric_names() | FLINK_BUILTIN_METRICS | PROMETHEUS_SYNTHETIC
    )


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, labels, durations or keywords)."""
    e = re.sub(r'"[^"]*"', "", expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", "", e)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        if e[match.end() :].lstrip().startswith("(") or match.group(0) in PROMQL_WORDS:
            continue
        names.add(match.group(0))
    return names


def test_promql_metric_name_extraction() -> None:
    assert promql_metric_names(
        'sum by (operator_name) (rate(a_b[1m])) / 1e6 + max(up{job="x"}) and c'
    ) == {"a_b", "up", "c"}


def test_job_metrics_are_found_in_operators() -> None:
    assert {
        OP + n
        for n in (
            "samples_parsed",
            "samples_dlq",
            "samples_trained",
            "versions",
            "gate_rejected",
            "prequential_loss",
            "versions_published",
            "publish_retries",
            "last_published_version",
        )
    } <= job_metric_names()


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_dashboard_queries_name_metrics_that_exist() -> None:
    known = known_metric_names()
    for panel in dashboard_panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            unknown = promql_metric_names(target["expr"]) - known
            assert not unknown, f"panel {panel['title']!r} queries unknown metrics {unknown}"


def test_alert_rules_name_metrics_that_exist() -> None:
    known = known_metric_names()
    rules = load_yaml(DEPLOY / "prometheus-rules.yml")
    for group in rules["groups"]:
        for rule in group["rules"]:
            unknown = promql_metric_names(rule["expr"]) - known
            assert not unknown, f"alert {rule['alert']} uses unknown metrics {unknown}"


def test_dashboard_structure_and_coverage() -> None:
    data = dashboard()
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    datasource = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    uid = datasource["datasources"][0]["uid"]
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
    titles = " | ".join(p["title"].lower() for p in dashboard_panels())
    for topic in (
        "samples/s",
        "consumer lag",
        "model version",
        "staleness",
        "loss",
        "drift",
        "gate rejections",
        "dead letters",
        "predictor",
    ):
        assert topic in titles, f"no panel about {topic}"
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/flowlearn.yml")
    mounts = dict(v.split(":")[:2] for v in compose()["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]


# --------------------------------------------------------------------------- Kubernetes


def test_flink_deployment() -> None:
    fd = flink_deployment()
    assert fd["apiVersion"] == "flink.apache.org/v1beta1"
    spec = fd["spec"]
    major, minor, _ = versions.FLINK_VERSION.split(".")
    assert spec["flinkVersion"] == f"v{major}_{minor}"
    job = spec["job"]
    assert job["upgradeMode"] == "savepoint"
    assert job["state"] == "running"
    assert job["jarURI"] == f"local:///opt/flink/opt/flink-python-{versions.FLINK_VERSION}.jar"
    assert job["entryClass"] == "org.apache.flink.client.python.PythonDriver"
    module = job["args"][job["args"].index("-pym") + 1]
    assert (ROOT / (module.replace(".", "/") + ".py")).exists()
    conf = spec["flinkConfiguration"]
    # One TaskManager holds a whole unit of parallelism: a slot per slot sharing group.
    assert int(conf["taskmanager.numberOfTaskSlots"]) == SLOT_GROUPS
    # What the image sets is repeated, since the operator replaces the image's conf/.
    image_options = dockerfile_flink_options((DEPLOY / "Dockerfile").read_text())
    for key, value in image_options.items():
        assert str(conf[key]) == value, key
    # Checkpoints, savepoints and HA on the mounted volume.
    (container,) = spec["podTemplate"]["spec"]["containers"]
    assert container["name"] == "flink-main-container"
    mount = container["volumeMounts"][0]["mountPath"]
    for key in (
        "execution.checkpointing.dir",
        "execution.checkpointing.savepoint-dir",
        "high-availability.storageDir",
    ):
        assert conf[key].startswith(f"file://{mount}/"), key
    claim = spec["podTemplate"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    (pvc,) = k8s_kind("PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_predictor_deployment_and_service() -> None:
    (deployment,) = k8s_kind("Deployment")
    (service,) = k8s_kind("Service")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in port_names
    # The probes carry no token: they call the routes that ask for none.
    from flowlearn.serving.auth import OPEN_ROUTES

    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in OPEN_ROUTES
    # The tokens file is the Secret's predictor-tokens key, mounted unreadable to others.
    env = {e["name"]: e for e in container["env"]}
    tokens_file = Path(env["FLOWLEARN__PREDICTOR__TOKENS_FILE"]["value"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (volume,) = [volumes[n] for n, path in mounts.items() if Path(path) == tokens_file.parent]
    assert volume["secret"]["secretName"] == "flowlearn-secrets"
    assert volume["secret"]["items"] == [{"key": "predictor-tokens", "path": tokens_file.name}]
    assert volume["secret"]["defaultMode"] & 0o007 == 0
    assert pod["spec"]["securityContext"]["fsGroup"] == pod["spec"]["securityContext"]["runAsGroup"]
    security = pod["spec"]["securityContext"]
    user = re.search(r"^USER (\d+):", (DEPLOY / "Dockerfile.predictor").read_text(), re.M)
    assert security["runAsNonRoot"] is True and user
    assert security["runAsUser"] == int(user.group(1))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_k8s_secrets_are_referenced_not_inlined() -> None:
    assert not k8s_kind("Secret"), "create the Secret out of band (docs/operations.md)"
    containers = [
        flink_deployment()["spec"]["podTemplate"]["spec"]["containers"][0],
        k8s_kind("Deployment")[0]["spec"]["template"]["spec"]["containers"][0],
    ]
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        ref = env["FLOWLEARN__REDIS__PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "flowlearn-secrets", "key": "redis-password"}
        for item in container["env"]:
            # A *_FILE setting names a mounted Secret's file: a path, not a secret.
            if re.search(r"PASSWORD|SECRET|TOKEN", item["name"]) and not item["name"].endswith(
                "_FILE"
            ):
                assert "value" not in item, item["name"]
    (config_map,) = k8s_kind("ConfigMap")
    assert not [k for k in config_map["data"] if re.search(r"PASSWORD|SECRET|TOKEN", k)]
    # Every key is a setting that conf/ knows.
    settings = load_settings(env={**config_map["data"], "FLOWLEARN__REDIS__PASSWORD": "x"})
    assert settings.kafka.host == config_map["data"]["FLOWLEARN__KAFKA__HOST"]


def test_kustomize_renders_with_images_rewritten() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kustomization = load_yaml(K8S / "kustomization.yaml")
    registry = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization["images"]}
    (fd,) = [d for d in docs if d["kind"] == "FlinkDeployment"]
    assert fd["spec"]["image"] == registry["flowlearn-flink"]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert (
        deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        == registry["flowlearn-predictor"]
    )
    assert {d["metadata"]["namespace"] for d in docs} == {kustomization["namespace"]}


def test_compose_and_kubernetes_recover_as_the_local_stack_does() -> None:
    """The restart strategy, heartbeats and REST timeout of conf/defaults.toml's [flink] (what the
    local stack's Flink runs with) are the compose file's and the FlinkDeployment's."""
    from flowlearn.conf import load_settings

    f = load_settings(env={}).flink
    ms = {"ms": 1, "s": 1000, "min": 60_000}

    def millis(value: Any) -> int:
        text = str(value).strip()
        number, _, unit = text.partition(" ")
        return int(number) * ms[unit] if unit else int(number)

    expected = {
        "restart-strategy.exponential-delay.initial-backoff": f.restart_backoff_ms,
        "restart-strategy.exponential-delay.max-backoff": f.restart_max_backoff_ms,
        "restart-strategy.exponential-delay.reset-backoff-threshold": f.restart_reset_backoff_ms,
        "heartbeat.interval": f.heartbeat_interval_ms,
        "heartbeat.timeout": f.heartbeat_timeout_ms,
        "web.timeout": f.web_timeout_ms,
    }
    compose_conf = flink_properties(compose()["services"]["taskmanager"])
    k8s_conf = flink_deployment()["spec"]["flinkConfiguration"]
    for conf in (compose_conf, k8s_conf):
        assert conf["restart-strategy.type"] == "exponential-delay"
        assert {key: millis(conf[key]) for key in expected} == expected


def test_the_predictors_grpc_port_is_exposed_where_its_http_port_is() -> None:
    """The image serves gRPC on its predictor.grpc_port; the image, compose and the k8s
    Deployment and Service expose that port beside the HTTP one."""
    text = (DEPLOY / "Dockerfile.predictor").read_text()
    grpc_port = int(re.search(r"FLOWLEARN__PREDICTOR__GRPC_PORT=(\d+)", text).group(1))
    http_port = int(re.search(r"FLOWLEARN__PREDICTOR__PORT=(\d+)", text).group(1))
    assert re.search(rf"^EXPOSE {http_port} {grpc_port}$", text, re.M)
    targets = [str(p).rsplit(":", 1)[1] for p in compose()["services"]["predictor"]["ports"]]
    assert targets == [str(http_port), str(grpc_port)]
    (deployment,) = k8s_kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": http_port, "grpc": grpc_port}
    (service,) = k8s_kind("Service")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "http",
        "grpc": "grpc",
    }


def test_the_job_image_compiles_the_trees_loops_for_its_workers() -> None:
    """A worker on a fresh container loads the compiled loops, from a folder it may write."""
    text = (DEPLOY / "Dockerfile").read_text()
    folder = re.search(r"^ENV NUMBA_CACHE_DIR=(\S+)$", text, re.M)
    assert folder
    warm = text.index("tree_kernels.warm_up()")
    assert text.index("pip install --no-deps /src") < warm < text.index("USER flink")
    assert 'chown -R flink:flink "$NUMBA_CACHE_DIR"' in text
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("numba") for d in deps), "the image installs pyproject's dependencies"
