"""A real redis-server for the predictor's integration tests, plus helpers to play the trainer.

The server listens on a free loopback port with a password and keeps nothing on disk. It can
be stopped and started again on the same port, which is how the tests cut Redis off.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from flowlearn.conf import Settings, load_settings
from flowlearn.contracts.redis_contract import Keys, ModelVersion, Publisher
from flowlearn.core import codec
from tests.ports import free_port

PASSWORD = "serving-test-password"


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)


ROOT = Path(__file__).resolve().parents[3]


def predictor_config(
    redis_server: RedisServer, prefix: str, tmp_path: Path, port: int, predictor_conf: str = ""
) -> Path:
    """A config file for ``python -m flowlearn.serving``: this Redis under ``prefix``, the
    predictor on ``port`` (plus ``predictor_conf`` lines), a Kafka that is not there."""
    path = tmp_path / "flowlearn.toml"
    path.write_text(f"""
[redis]
port = {redis_server.port}
password = "{PASSWORD}"
prefix = "{prefix}"
[predictor]
port = {port}
{predictor_conf}
[kafka]
port = {free_port()}
""")
    return path


def launch(config_path: Path, *args: str) -> subprocess.Popen[str]:
    """``python -m flowlearn.serving --config config_path *args``, its output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "flowlearn.serving", "--config", str(config_path), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class RedisServer:
    """One redis-server process on a fixed port; :meth:`stop` and :meth:`start` at will."""

    def __init__(self, binary: str, data: Path) -> None:
        self.binary = binary
        self.data = data
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD, socket_timeout=5)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--requirepass",
                PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.data),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        client = self.client()

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                assert self.proc is not None and self.proc.poll() is None, "redis-server exited"
                return False

        try:
            wait_for("redis-server to answer", answers, 20)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def settings(self, prefix: str, **predictor: Any) -> Settings:
        """Settings pointing at this server under ``prefix`` (predictor fields overridable)."""
        env = {
            "FLOWLEARN__REDIS__HOST": "127.0.0.1",
            "FLOWLEARN__REDIS__PORT": str(self.port),
            "FLOWLEARN__REDIS__PASSWORD": PASSWORD,
            "FLOWLEARN__REDIS__PREFIX": prefix,
            # Nothing listens there: the prediction log must cope with a Kafka that is down.
            "FLOWLEARN__KAFKA__PORT": str(free_port()),
        }
        env |= {f"FLOWLEARN__PREDICTOR__{k.upper()}": str(v) for k, v in predictor.items()}
        return load_settings(env=env)


def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH (apt-get install -y redis-server)")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def serving_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server shared by the session: tests isolate themselves by key prefix."""
    yield from _server(tmp_path_factory)


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop it."""
    yield from _server(tmp_path_factory)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


def spec_json(kind: str = "logistic", n_features: int = 3, classes: list[int] | None = None) -> str:
    return json.dumps(
        {
            "type": kind,
            "n_features": n_features,
            "classes": classes if kind == "softmax" else ([0, 1] if kind == "logistic" else None),
            "intercept": True,
            "features": "dense",
            "hash_seed": 0,
        }
    )


class Trainer:
    """Plays the job's publisher: versions with overwrite deltas, snapshots and epochs.

    ``published`` maps every ``(epoch, version)`` written to its weights' bytes.
    """

    def __init__(
        self, client: redis.Redis, keys: Keys, model_id: str, size: int = 4, spec: str | None = None
    ) -> None:
        self.client, self.keys, self.model_id = client, keys, model_id
        self.spec = spec or spec_json(n_features=size - 1)
        self.publisher = Publisher(client, keys, maxlen=1000)
        self.weights = np.zeros(size)
        self.version = 0
        self.first = True
        self.published: dict[tuple[int, int], bytes] = {}

    @property
    def epoch(self) -> int:
        return self.publisher.epoch

    def publish(self, weights: np.ndarray, snapshot: bool = False) -> int:
        """Publish ``weights`` as the next version; returns the version number."""
        before, self.weights = self.weights, np.array(weights, dtype=np.float64)
        self.version += 1
        self.publisher.publish(
            ModelVersion(
                self.model_id,
                self.version,
                self.version - 1,
                self.version * 10,
                self.spec,
                codec.make_delta(before, self.weights),
                codec.encode_array(self.weights) if snapshot or self.first else None,
            )
        )
        self.first = False
        self.published[(self.epoch, self.version)] = self.weights.tobytes()
        return self.version

    def restart(self, version: int, weights: np.ndarray) -> None:
        """The job restarts from a checkpoint at ``version``: a new epoch."""
        self.version, self.weights = version, np.array(weights, dtype=np.float64)
        self.publisher = Publisher(self.client, self.keys, maxlen=1000)
        self.first = True
