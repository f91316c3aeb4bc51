"""The local Flink session cluster from the pip package: its distribution, configuration,
environment, REST API, JobManager and (supervised) TaskManager."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowlearn.conf import Settings
from flowlearn.devstack.processes import (
    StackError,
    child_pid_file,
    log,
    require_free_port,
    require_java,
    running_pid,
    spare_pid_file,
    start_process,
    wait_for,
)
from flowlearn.jobs import python_worker_pool

#: The pool that forks the TaskManagers' Python workers (run as a file: it must not import
#: flowlearn, whose modules the workers take from the job's own code).
PYTHON_WORKER_POOL = Path(python_worker_pool.__file__).resolve()
#: A Unix socket's path must fit in sun_path (108 bytes on Linux).
_MAX_SOCKET_PATH = 100


def flink_home() -> Path:
    """The Flink distribution inside the pyflink package (found, not imported: only the job
    layer imports pyflink)."""
    spec = importlib.util.find_spec("pyflink")
    if spec is None or spec.origin is None:
        raise StackError("pyflink is not installed; run `make install` first")
    return Path(spec.origin).resolve().parent


def flink_conf_dir(settings: Settings) -> Path:
    return settings.stack.home / "flink" / "conf"


def taskmanager_lib(settings: Settings, extra_jars: Sequence[Path]) -> Path:
    """The TaskManagers' ``lib/`` (FLINK_LIB_DIR): Flink's own jars, flink-python, whose
    classes the TaskManagers' Java agent loads at start-up (PythonRunnerWarmup), and
    ``extra_jars``, as links."""
    home = flink_home()
    lib = settings.stack.home / "flink" / "lib"
    if lib.exists():
        shutil.rmtree(lib)
    lib.mkdir(parents=True)
    for jar in [
        *sorted((home / "lib").glob("*.jar")),
        *(home / "opt").glob("flink-python-*.jar"),
        *extra_jars,
    ]:
        (lib / jar.name).symlink_to(jar)
    return lib


def write_flink_conf(settings: Settings, taskmanager_agent: Path) -> Path:
    f = settings.flink
    conf_dir = flink_conf_dir(settings)
    conf_dir.mkdir(parents=True, exist_ok=True)
    shipped = flink_home() / "conf"
    for name in (
        "log4j-console.properties",
        "log4j-cli.properties",
        "log4j.properties",
        "logback-console.xml",
    ):
        shutil.copy(shipped / name, conf_dir / name)
    java_opts = _shipped_java_opts(shipped / "config.yaml")
    checkpoints = settings.stack.data / "flink" / "checkpoints"
    savepoints = settings.stack.data / "flink" / "savepoints"
    # The processes' scratch space and working directories (a TaskManager's is
    # tm_<resource id>, the same name for every local stack), in this stack's own tree and not
    # /tmp: a TaskManager hash-checks every job's cached jars (~50 MB a submission) in its
    # working directory before it registers, and one machine's stacks shared /tmp/tm_taskmanager.
    scratch = settings.stack.data / "flink" / "tmp"
    for folder in (checkpoints, savepoints, scratch):
        folder.mkdir(parents=True, exist_ok=True)
    python = python_worker_executable(settings)
    entries: dict[str, Any] = {
        "env.java.opts.all": java_opts,
        # The job's tasks take Beam's classes from flink-python in the TaskManagers' lib/,
        # loaded once per JVM (by the agent below), not a copy of their own per job.
        "classloader.parent-first-patterns.additional": "org.apache.beam.",
        "jobmanager.rpc.address": "127.0.0.1",
        "jobmanager.rpc.port": f.rpc_port,
        "jobmanager.bind-host": "127.0.0.1",
        "jobmanager.memory.process.size": f.process_memory_jobmanager,
        "taskmanager.bind-host": "127.0.0.1",
        "taskmanager.host": "127.0.0.1",
        "taskmanager.memory.process.size": f.process_memory_taskmanager,
        "taskmanager.numberOfTaskSlots": f.taskmanager_slots,
        "parallelism.default": f.parallelism,
        "pipeline.max-parallelism": f.max_parallelism,
        "rest.address": f.rest_host,
        "rest.bind-address": f.rest_host,
        "rest.port": f.rest_port,
        "io.tmp.dirs": str(scratch),
        "execution.checkpointing.interval": f"{f.checkpoint_interval_ms}ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.dir": f"file://{checkpoints}",
        "execution.checkpointing.savepoint-dir": f"file://{savepoints}",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": 3,
        "state.backend.type": f.state_backend,
        # RocksDB uploads only the files that changed since the last checkpoint.
        "execution.checkpointing.incremental": f.state_backend == "rocksdb",
        "restart-strategy.type": "exponential-delay",
        # Recovery in seconds (conf/settings.py FlinkConf says why each value).
        "restart-strategy.exponential-delay.initial-backoff": f"{f.restart_backoff_ms}ms",
        "restart-strategy.exponential-delay.max-backoff": f"{f.restart_max_backoff_ms}ms",
        "restart-strategy.exponential-delay.reset-backoff-threshold": (
            f"{f.restart_reset_backoff_ms}ms"
        ),
        "heartbeat.interval": f"{f.heartbeat_interval_ms}ms",
        "heartbeat.timeout": f"{f.heartbeat_timeout_ms}ms",
        "web.timeout": f"{f.web_timeout_ms}ms",
        "metrics.reporter.prom.factory.class": (
            "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
        ),
        "metrics.reporter.prom.port": f.prometheus_ports,
        "metrics.reporter.prom.host": "127.0.0.1",
        "python.executable": python,
        "python.client.executable": sys.executable,
        "python.fn-execution.bundle.size": f.python_bundle_size,
        "python.fn-execution.bundle.time": f.python_bundle_time_ms,
        "env.java.opts.taskmanager": f"-javaagent:{taskmanager_agent}",
    }
    (conf_dir / "config.yaml").write_text(
        "".join(f"{key}: {json.dumps(value)}\n" for key, value in entries.items())
    )
    return conf_dir


#: The TaskManager's main class, and the operators jar's class that stands in for it in a
#: spare TaskManager JVM (``flink.spare_taskmanager``).
TASKMANAGER_MAIN = "org.apache.flink.runtime.taskexecutor.TaskManagerRunner"
SPARE_TASKMANAGER_MAIN = "dev.flowlearn.flink.SpareTaskManager"


def spare_options(settings: Settings, name: str) -> list[str]:
    """The supervisor's options for a spare of TaskManager ``name`` (``flink.spare_taskmanager``):
    its class comes from the operators jar, on the classpath as the Java agent."""
    if not settings.flink.spare_taskmanager:
        return []
    return [
        "--spare",
        f"{TASKMANAGER_MAIN}={SPARE_TASKMANAGER_MAIN}",
        "--spare-pid-file",
        str(spare_pid_file(settings, name)),
    ]


def python_worker_pool_socket(settings: Settings) -> Path | None:
    """The socket of the local stack's Python worker pool, or None when the pool is off
    (``flink.python_worker_pool``) or the stack's path is too long for a Unix socket."""
    if not settings.flink.python_worker_pool:
        return None
    path = settings.stack.run / "python-worker-pool.sock"
    return path if len(str(path)) <= _MAX_SOCKET_PATH else None


def python_worker_executable(settings: Settings) -> str:
    """The ``python.executable`` of the local stack's workers: the pool's launcher (which
    starts the interpreter itself when the pool does not answer), or the interpreter."""
    if python_worker_pool_socket(settings) is None:
        return sys.executable
    return str(settings.stack.run / "python-worker")


def start_python_worker_pool(settings: Settings) -> None:
    """Start the pool the TaskManagers' Python workers are forked from, and write its
    launcher (jobs/python_worker_pool.py says why)."""
    socket_path = python_worker_pool_socket(settings)
    if socket_path is None:
        if settings.flink.python_worker_pool:
            log(f"no Python worker pool: {settings.stack.run} is too deep for a Unix socket")
        return
    python_worker_pool.write_launcher(Path(python_worker_executable(settings)), sys.executable)
    if running_pid(settings, "python-worker-pool"):
        return
    # At the TaskManagers' nice value: the workers it forks inherit it (and its session).
    start_process(
        settings,
        "python-worker-pool",
        [
            sys.executable,
            str(PYTHON_WORKER_POOL),
            "serve",
            "--socket",
            str(socket_path),
        ],
        env=flink_env(settings),
        cwd=settings.stack.run,
        nice=settings.flink.taskmanager_nice,
    )


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
        # The launcher (python.executable) forks the workers from this pool.
        python_worker_pool.POOL_SOCKET_ENV: str(python_worker_pool_socket(settings) or ""),
    }


def flink_rest(
    settings: Settings,
    path: str,
    method: str = "GET",
    body: dict[str, Any] | None = None,
    timeout_s: float = 5.0,
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"{settings.flink.web_ui}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read() or b"null")


def _flink_ready(settings: Settings) -> bool:
    try:
        overview = flink_rest(settings, "/overview", timeout_s=2)
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return int(overview.get("taskmanagers", 0)) >= settings.flink.taskmanagers


def taskmanager_names(settings: Settings) -> list[str]:
    """The local stack's TaskManager processes: ``taskmanager``, ``taskmanager-2``, ...
    (each also its Flink resource id, which the web UI and REST API show)."""
    return ["taskmanager"] + [f"taskmanager-{i}" for i in range(2, settings.flink.taskmanagers + 1)]


def start_flink(settings: Settings) -> None:
    from flowlearn.devstack import jars  # (jars imports this module)

    require_java()
    start_python_worker_pool(settings)
    write_flink_conf(settings, jars.taskmanager_agent_jar(settings))
    env = flink_env(settings)
    # zstd-jni: the Kafka connector's client decompresses zstd records with it.
    lib = taskmanager_lib(settings, [jars.zstd_jni_jar(settings)])
    taskmanager_env = {**env, "FLINK_LIB_DIR": str(lib)}
    bin_dir = flink_home() / "bin"
    if not running_pid(settings, "jobmanager"):
        require_free_port(settings.flink.rest_host, settings.flink.rest_port, "flink.rest_port")
        require_free_port("127.0.0.1", settings.flink.rpc_port, "flink.rpc_port")
        # Not the project root: Python workers run with their cwd on sys.path, where the
        # checkout's packages would shadow the job's own (-pyfs), say a new build of it.
        start_process(
            settings,
            "jobmanager",
            ["bash", str(bin_dir / "jobmanager.sh"), "start-foreground"],
            env=env,
            cwd=settings.stack.run,
        )
    for name in taskmanager_names(settings):
        if running_pid(settings, name):
            continue
        # Supervised: a TaskManager that dies comes back, as a cluster's resource manager
        # would bring one back, and the job recovers from its last checkpoint. It comes back
        # under the same resource id, so the JobManager drops the dead one's slots as soon
        # as it registers, without waiting for the heartbeat to time out.
        start_process(
            settings,
            name,
            [
                sys.executable,
                "-m",
                "flowlearn.devstack.supervise",
                "--pid-file",
                str(child_pid_file(settings, name)),
                # Its replacements skip taskmanager.sh's two helper JVMs (seconds).
                "--replay-exec",
                *spare_options(settings, name),
                # Serving first on a shared machine (flink.taskmanager_nice).
                "--nice",
                str(settings.flink.taskmanager_nice),
                "--",
                "bash",
                str(bin_dir / "taskmanager.sh"),
                "start-foreground",
                "-D",
                f"taskmanager.resource-id={name}",
            ],
            env=taskmanager_env,
            cwd=settings.stack.run,
        )
    wait_for(
        f"Flink (JobManager with {settings.flink.taskmanagers} TaskManager(s))",
        lambda: _flink_ready(settings),
        120,
        settings.stack.logs / "jobmanager.out",
    )
