"""Several worker processes on one port (flowlearn.serving.workers): each serves, ``/metrics``
on any of them answers for all, a worker that dies is replaced, SIGTERM drains them all, and
a port in use or a worker that cannot start is an error rather than a respawn loop."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest

from flowlearn.contracts.redis_contract import Keys

from .conftest import RedisServer, Trainer, free_port, launch, predictor_config, wait_for

#: A worker drains within 15 s at worst (three 5 s bounds); here nothing is in flight.
STOP_DEADLINE_S = 20


class Connection:
    """One keep-alive connection: every request on it is answered by the same worker."""

    def __init__(self, port: int) -> None:
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def get(self, path: str) -> tuple[int, bytes]:
        self.http.request("GET", path)
        response = self.http.getresponse()
        return response.status, response.read()

    def pid(self) -> int:
        return int(json.loads(self.get("/healthz")[1])["pid"])

    def predict(self) -> int:
        body = json.dumps({"instances": [[1, 0, 0]]})
        headers = {"Content-Type": "application/json"}
        self.http.request("POST", "/v1/models/m:predict", body, headers)
        response = self.http.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self.http.close()


def worker_pid(port: int) -> int | None:
    """The pid of the worker a new connection reaches (None: nobody answers)."""
    connection = Connection(port)
    try:
        return connection.pid()
    except OSError:
        return None
    finally:
        connection.close()


def pids_answering(port: int, count: int, timeout_s: float = 30) -> set[int]:
    """New connections until ``count`` distinct workers answered (the kernel spreads them)."""
    seen: set[int] = set()

    def all_seen() -> bool:
        pid = worker_pid(port)
        if pid is not None:
            seen.add(pid)
        return len(seen) >= count

    wait_for(f"{count} workers to answer", all_seen, timeout_s)
    return seen


def counter(text: str, line: str) -> float:
    match = re.search(rf"^{re.escape(line)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


PREDICT_200 = 'flowlearn_predictor_requests_total{route="predict",status="200"}'


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def model(serving_redis: RedisServer, prefix: str) -> Iterator[None]:
    client = serving_redis.client()
    Trainer(client, Keys(prefix), "m").publish(np.array([1.0, 0.0, 0.0, 0.0]))
    yield
    client.close()


def stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.kill()
    out, _ = proc.communicate()
    return out


def test_workers_share_the_port_add_up_their_metrics_are_replaced_and_drain(
    serving_redis: RedisServer, prefix, tmp_path, model
):
    port = free_port()
    proc = launch(predictor_config(serving_redis, prefix, tmp_path, port, "workers = 2"))
    try:
        workers = pids_answering(port, 2)
        assert proc.pid not in workers

        # Requests until both workers have answered some (which one did: same connection).
        served: dict[int, int] = {}

        def both_served() -> bool:
            connection = Connection(port)
            try:
                assert connection.predict() == 200
                pid = connection.pid()
            finally:
                connection.close()
            served[pid] = served.get(pid, 0) + 1
            return len(served) == 2 and min(served.values()) >= 2

        wait_for("both workers to answer predictions", both_served, 30)
        total = sum(served.values())
        # /metrics on each worker adds up every worker's requests.
        for pid in workers:

            def scraped_from(pid: int = pid) -> str | None:
                connection = Connection(port)
                try:
                    if connection.pid() != pid:
                        return None
                    return connection.get("/metrics")[1].decode()
                finally:
                    connection.close()

            text = wait_for(f"a scrape answered by {pid}", scraped_from, 30)
            assert counter(text, PREDICT_200) == total
            assert 'flowlearn_predictor_model_version{model="m"} 1.0' in text
            assert "flowlearn_predictor_redis_up 1.0" in text
            assert "flowlearn_predictor_worker_restarts_total 0.0" in text

        # A worker killed is replaced; what it counted is still counted.
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        survivor = (workers - {killed}).pop()
        # Connections the kernel gives the dead worker's socket wait for its replacement.
        after = pids_answering(port, 2)
        assert survivor in after and killed not in after
        text = Connection(port).get("/metrics")[1].decode()
        assert counter(text, PREDICT_200) == total
        assert "flowlearn_predictor_worker_restarts_total 1.0" in text

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=STOP_DEADLINE_S)
    except BaseException:
        print(stop(proc))
        raise
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    assert "was killed by SIGKILL; starting it again" in out
    assert not any(alive(pid) for pid in after)


def test_a_port_in_use_fails_fast_naming_the_setting(serving_redis, prefix, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = launch(predictor_config(serving_redis, prefix, tmp_path, port, "workers = 2"))
        try:
            out, _ = proc.communicate(timeout=30)
        finally:
            stop(proc)
    assert proc.returncode != 0
    assert "predictor.port" in out and "in use" in out, out
    assert "worker 0 started" not in out, out


def test_workers_that_cannot_start_stop_the_master(serving_redis, prefix, tmp_path):
    """A bad baseline file fails every worker before it is ready: the master stops with an
    error instead of starting them again and again."""
    port = free_port()
    proc = launch(
        predictor_config(serving_redis, prefix, tmp_path, port, "workers = 2"),
        "--baseline",
        f"m={tmp_path / 'missing.flc'}",
    )
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == 1, out
    assert "before it was ready: stopping" in out, out
    assert "starting it again" not in out, out


def test_workers_stop_when_the_master_is_killed(serving_redis, prefix, tmp_path, model):
    port = free_port()
    proc = launch(predictor_config(serving_redis, prefix, tmp_path, port, "workers = 2"))
    try:
        workers = pids_answering(port, 2)
        proc.kill()
        proc.wait()
        wait_for("the workers to stop", lambda: not any(alive(pid) for pid in workers), 30)
    finally:
        stop(proc)
