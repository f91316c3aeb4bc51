"""The local stack as plain processes: Kafka (KRaft, from Maven jars), Redis, a Flink session
cluster from the pip package, and the predictor.

Everything lives under ``settings.stack.home``: ``jars/`` (Maven downloads), ``data/`` (Kafka
log dirs, Redis dump, Flink checkpoints and savepoints), ``logs/`` and ``run/`` (pid files).
``up`` is idempotent: a component whose pid is alive is left alone. ``down`` stops what ``up``
started, by pid, after checking the pid still belongs to this stack.

This module runs the whole stack (up, down, status) and starts the predictor; each other
component has a module of its own (``kafka_broker``, ``redis_server``, ``flink_cluster``,
``prometheus_server``), on ``processes`` (pid files, ports, waiting) and ``jars``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowlearn.conf import Settings
from flowlearn.devstack.flink_cluster import start_flink, taskmanager_names
from flowlearn.devstack.kafka_broker import start_kafka
from flowlearn.devstack.processes import (
    log,
    port_open,
    require_free_port,
    running_pid,
    start_process,
    stop_process,
    wait_for,
)
from flowlearn.devstack.prometheus_server import start_prometheus
from flowlearn.devstack.redis_server import start_redis

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
    wait_for(
        "predictor", lambda: port_open(p.host, p.port), 60, settings.stack.logs / "predictor.out"
    )


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
    taskmanagers = [
        process
        for name in taskmanager_names(settings)
        # The supervisor stops its TaskManager and its spare; those of a supervisor that was
        # killed (SIGKILL leaves the child running) are stopped here.
        for process in (name, f"{name}-child", f"{name}-spare")
    ]
    for name in (
        "producer",
        "prometheus",
        "predictor",
        *taskmanagers,
        "python-worker-pool",
        "jobmanager",
        "redis",
        "kafka",
    ):
        # A TaskManager JVM leads a process group of its own (its supervisor's doing): its
        # Python workers go with it, also when the JVM had to be killed.
        if stop_process(settings, name, group=name.endswith(("-child", "-spare"))):
            stopped.append(name)
            log(f"stopped {name}")
    return stopped


def component_status(settings: Settings) -> dict[str, dict[str, Any]]:
    urls = {
        "kafka": f"kafka://{settings.kafka.bootstrap}",
        "redis": settings.redis.url,
        "jobmanager": settings.flink.web_ui,
        **dict.fromkeys(taskmanager_names(settings)),
        "python-worker-pool": None,
        "predictor": settings.predictor.url,
        "prometheus": settings.prometheus.url,
        "producer": None,
    }
    out: dict[str, dict[str, Any]] = {}
    for name in urls:
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
        spare = running_pid(settings, f"{name}-spare") if pid else None
        if spare:  # a TaskManager's spare JVM, waiting to take over
            out[name]["spare_pid"] = spare
    return out
