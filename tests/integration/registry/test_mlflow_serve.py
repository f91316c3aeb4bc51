"""``mlflow models serve`` on a registered version answers what the predictor answers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from flowlearn.core.codec import encode_array
from flowlearn.registry.mlflow_store import Registry
from tests.ports import free_port
from tests.unit.trained_models import Trained

REPO = Path(__file__).resolve().parents[3]
#: Starting the server imports mlflow and flowlearn and loads the model: seconds.
START_DEADLINE_S = 120.0


def ping(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


class Served:
    """An ``mlflow models serve`` process and its port."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def invocations(self, body: dict[str, object]) -> dict[str, object]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read()))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[Trained, Served]]:
    """A forest with named features and classes, registered; MLflow serving it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trained = Trained("forest-labels")
    Registry(uri).register(
        "served", 30, encode_array(trained.weights), trained.spec_json, 400, {}, live=True
    )
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        # MLflow runs uvicorn by name, as from an activated environment.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "models", "serve"),
                *("-m", "models:/flowlearn-served@live", "--env-manager", "local"),
                *("-h", "127.0.0.1", "-p", str(port), "-w", "1"),
            ],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its server workers go with it, by process group
        )
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while not ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow models serve did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield trained, Served(proc, port, log)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_mlflow_serves_a_registered_version_as_the_predictor_scores_it(serve) -> None:
    trained, served = serve
    instances = trained.instances[:50]
    expected, labels = trained.predictor_answer(instances)

    answer = served.invocations({"dataframe_records": instances})
    predictions = answer["predictions"]
    assert isinstance(predictions, list)
    got = np.array([p["prediction"] for p in predictions], dtype=np.float64)
    assert got.tobytes() == expected.tobytes()  # JSON floats round-trip float64 exactly
    assert [p["label"] for p in predictions] == labels

    # A record lacking a feature: imputed, as by the predictor.
    partial = [{"age": 1.0, "tenure": -2.0}]
    expected, labels = trained.predictor_answer(partial)
    (only,) = served.invocations({"dataframe_records": partial})["predictions"]
    assert np.array(only["prediction"]).tobytes() == expected[0].tobytes()
    assert only["label"] == labels[0]
