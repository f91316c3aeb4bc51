"""One real local stack (Kafka, Redis, Flink, predictor, the job) for the whole e2e session.

It runs under its own home (.flowlearn-test) and ports, so a `make run` stack can stay up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flowlearn.conf import Settings, load_settings
from flowlearn.contracts.redis_contract import Keys, Snapshot, read_snapshot, redis_client

ROOT = Path(__file__).resolve().parents[2]
#: Ports are the defaults plus this offset (FLOWLEARN_E2E_PORT_OFFSET, default 10000), and the
#: home is per offset, so that two e2e sessions can run side by side.
PORT_OFFSET = int(os.environ.get("FLOWLEARN_E2E_PORT_OFFSET", "10000"))
TEST_HOME = ROOT / (".flowlearn-test" if PORT_OFFSET == 10000 else f".flowlearn-test-{PORT_OFFSET}")
TEST_CONFIG = f"""
[stack]
home = "{TEST_HOME}"
[kafka]
port = {9092 + PORT_OFFSET}
controller_port = {9093 + PORT_OFFSET}
[redis]
port = {6379 + PORT_OFFSET}
[flink]
rest_port = {8081 + PORT_OFFSET}
rpc_port = {6123 + PORT_OFFSET}
prometheus_ports = "{9249 + PORT_OFFSET}-{9252 + PORT_OFFSET}"
checkpoint_interval_ms = 2000
# Not the local stack's nice 10: the tests' clients stand for other machines, and at nice
# 10 the job would yield the cores to them (a model loaded with requests stopped learning).
taskmanager_nice = 0
[predictor]
port = {8080 + PORT_OFFSET}
[prometheus]
port = {9090 + PORT_OFFSET}
scrape_interval_s = 2
[job]
# Models made up by tests take [model_defaults] at once (their shape is the defaults'): the
# "infer" policy's round trip through fl.control is covered by the MiniCluster tests.
unknown_model_policy = "create"
batch_size = 32
batch_timeout_ms = 200
checkpoint_every_versions = 10
rollback_window_samples = 512
rollback_min_samples = 512
# Windows of a few hundred samples: a 10% margin is within the noise of a converged model's
# loss; the poison test's flipped labels more than double it.
rollback_margin = 0.5
rollback_cooldown_versions = 50
[mlflow]
register_min_interval_s = 0
# Models made up by tests train undisturbed (the exactly-once test compares final weights
# with a plain replay); the drift and rollback tests name their models below.
[model_defaults]
auto_rollback = false
[models.drift-e2e]
drift_action = "reset"
auto_rollback = false
[models.poison-e2e]
auto_rollback = true
"""


def wait_until(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.5):
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


def wait_applied(settings: Settings, model_id: str, n: int, timeout_s: float = 120) -> Snapshot:
    """``model_id``'s snapshot in Redis once it shows ``n`` samples applied; fails with a
    clear message at the deadline."""
    client = redis_client(settings.redis, timeout_s=5)
    keys = Keys(settings.redis.prefix)
    try:
        return wait_until(
            f"{model_id}: {n} samples applied",
            lambda: (s := read_snapshot(client, keys, model_id)) and s.samples_applied == n and s,
            timeout_s,
        )
    finally:
        client.close()


def job_restarts(settings: Settings, job_id: str) -> int:
    """The job's ``numRestarts`` as the JobManager's Prometheus reporter shows it now.

    Not through Flink's REST API: that serves metrics fetched in rounds, and a round that
    asked a TaskManager killed while answering waits ``flink.web_timeout_ms`` before the next.
    """
    for port in settings.flink.prometheus_port_list():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            continue  # a port of the range no process holds, or a TaskManager going away
        for family in text_string_to_metric_families(text):
            if family.name == "flink_jobmanager_job_numRestarts":
                for sample in family.samples:
                    if sample.labels.get("job_id") == job_id:
                        return int(sample.value)
    raise AssertionError(f"no numRestarts of job {job_id} on the JobManager's reporter")


def on_every_worker(check: Callable[[], Any], tries: int = 10) -> Any:
    """``check``'s last answer if it held ``tries`` times in a row, else None: the
    predictor's workers follow Redis each on its own, and requests on new connections spread
    over them, so one answer says what one worker holds."""
    last: Any = None
    for _ in range(tries):
        last = check()
        if not last:
            return None
    return last


def flowlearn(
    *args: str, config: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """The CLI on ``config``; ``env`` adds variables (``FLOWLEARN__...`` overrides)."""
    return subprocess.run(
        [sys.executable, "-m", "flowlearn.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=None if env is None else {**os.environ, **env},
    )


def taskmanagers_of(settings: Settings, job_id: str, vertex: str) -> set[str]:
    """The resource ids (the local stack's process names: ``taskmanager``,
    ``taskmanager-2``) of the TaskManagers running the subtasks of the job's vertex whose
    name contains ``vertex``."""
    from flowlearn.devstack.flink_cluster import flink_rest

    found: set[str] = set()
    for v in flink_rest(settings, f"/jobs/{job_id}")["vertices"]:
        if vertex in v["name"]:
            hosts = flink_rest(settings, f"/jobs/{job_id}/vertices/{v['id']}/taskmanagers")
            found |= {tm["taskmanager-id"] for tm in hosts["taskmanagers"]}
    return found


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Path]]:
    # Start clean but keep downloaded jars (Maven cache of this stack).
    if TEST_HOME.exists():
        for child in TEST_HOME.iterdir():
            if child.name != "jars":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    config = tmp_path_factory.mktemp("conf") / "e2e.toml"
    config.write_text(TEST_CONFIG)
    settings = load_settings(config, env={})
    os.environ["FLOWLEARN_CONFIG"] = str(config)
    try:
        up = flowlearn("up", config=config)
        assert up.returncode == 0, f"flowlearn up failed:\n{up.stdout}\n{up.stderr}"
        submit = flowlearn("submit", "--fresh", config=config)
        assert submit.returncode == 0, f"submit failed:\n{submit.stdout}\n{submit.stderr}"
        yield settings, config
    finally:
        down = flowlearn("down", config=config)
        print(down.stdout, down.stderr)


@pytest.fixture(scope="session")
def status(stack) -> Callable[[], dict[str, Any]]:
    _, config = stack

    def read() -> dict[str, Any]:
        out = flowlearn("status", "--json", config=config, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    return read
