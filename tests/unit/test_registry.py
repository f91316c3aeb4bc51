"""flowlearn.registry.mlflow_store against real SQLite MLflow stores (and a stub server for http
URIs)."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import textwrap
import threading
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from flowlearn.core.codec import decode_array, encode_array
from flowlearn.registry.mlflow_store import (
    RegisteredVersion,
    Registry,
    RegistryError,
    mask_uri,
)
from tests.ports import free_port

SPEC = '{"type": "logistic", "n_features": 3}'
#: Where a version's weights and spec are in its run's artifacts: the MLflow model's data.
DATA = "model/data/version"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite store for the module (a fresh one costs ~0.75 s); tests use own model ids."""
    return tmp_path_factory.mktemp("registry") / "mlflow" / "mlflow.db"


@pytest.fixture(scope="module")
def reg(store: Path) -> Registry:
    return Registry(f"sqlite:///{store}")


@pytest.fixture
def model_id(request: pytest.FixtureRequest) -> str:
    return request.node.name


def weights(*values: float) -> bytes:
    return encode_array(np.array(values, dtype=np.float64))


def mlflow_versions(reg: Registry, model_id: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=reg.tracking_uri, registry_uri=reg.tracking_uri)
    found = client.search_model_versions(f"name = '{reg.model_name(model_id)}'")
    return sorted(int(mv.version) for mv in found)


def test_module_imports_neither_mlflow_nor_pyflink() -> None:
    code = (
        "import sys, flowlearn.registry.mlflow_store; "
        "print(sorted({'mlflow', 'pyflink'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_round_trip_is_bit_exact(reg: Registry, model_id: str) -> None:
    w = np.array([0.5, -0.0, np.nan, np.inf, 1e-310, -3.25])
    w.view(np.uint64)[2] |= 0xBEEF  # a NaN with a payload
    payload = encode_array(w)
    got = reg.register(
        model_id, 7, payload, SPEC, 700, {"logloss": 0.25}, epoch=2, tags={"source": "test"}
    )

    assert got == reg.get(model_id, 7)
    assert reg.versions(model_id) == [got]
    assert (got.model_id, got.version, got.kind, got.samples_applied, got.epoch) == (
        model_id,
        7,
        "online",
        700,
        2,
    )
    assert got.registry_version == 1 and got.run_id and got.created_ms > 1_600_000_000_000
    loaded = reg.load_weights(model_id, 7)
    assert loaded == payload
    decoded = decode_array(loaded)
    assert decoded.dtype == w.dtype and decoded.tobytes() == w.tobytes()
    assert reg.load_spec(model_id, 7) == json.loads(SPEC)
    assert got.link.startswith(f"{reg.tracking_uri}#/experiments/")
    assert got.link.endswith(f"/runs/{got.run_id}")


def test_re_registering_the_same_weights_creates_nothing(reg: Registry, model_id: str) -> None:
    first = reg.register(model_id, 1, weights(1, 2), SPEC, 10, {"loss": 1.0})
    again = reg.register(model_id, 1, weights(1, 2), SPEC, 10, {"loss": 1.0})
    assert again == first
    assert mlflow_versions(reg, model_id) == [1]


def test_new_weights_for_a_version_make_a_new_entry(reg: Registry, model_id: str) -> None:
    old = reg.register(model_id, 3, weights(1, 2), SPEC, 30, {})
    new = reg.register(model_id, 3, weights(1, 2.5), SPEC, 30, {})
    assert new.registry_version > old.registry_version
    assert new.weights_sha256 != old.weights_sha256
    assert reg.get(model_id, 3) == new
    assert reg.versions(model_id) == [old, new]
    assert reg.load_weights(model_id, 3) == weights(1, 2.5)
    assert mlflow_versions(reg, model_id) == [1, 2]


def test_tampered_weights_are_detected(reg: Registry, store: Path, model_id: str) -> None:
    entry = reg.register(model_id, 1, weights(4, 5, 6), SPEC, 3, {})
    artifact = store.parent / "artifacts" / entry.run_id / "artifacts" / DATA / "weights.flc"
    artifact.write_bytes(weights(4, 5, 6.5))
    with pytest.raises(RegistryError, match="sha256"):
        reg.load_weights(model_id, 1)
    artifact.unlink()
    with pytest.raises(RegistryError, match=rf"download {DATA}/weights\.flc"):
        reg.load_weights(model_id, 1)


def test_missing_versions(reg: Registry, model_id: str) -> None:
    assert reg.versions(model_id) == []
    assert reg.get(model_id, 1) is None
    assert reg.latest_baseline(model_id) is None
    with pytest.raises(RegistryError, match="no online version 1"):
        reg.load_weights(model_id, 1)


def test_baselines_are_kept_apart_from_online_versions(reg: Registry, model_id: str) -> None:
    online = [reg.register(model_id, v, weights(v), SPEC, 10 * v, {}) for v in (2, 1)]
    base1 = reg.register(model_id, 1, weights(-1), SPEC, 5000, {"auc": 0.8}, kind="baseline")
    base2 = reg.register(model_id, 2, weights(-2), SPEC, 9000, {"auc": 0.9}, kind="baseline")

    assert reg.versions(model_id, kind="online") == online[::-1]
    assert reg.versions(model_id, kind="baseline") == [base1, base2]
    assert reg.versions(model_id) == [base1, base2, *online[::-1]]
    assert reg.get(model_id, 1) == online[1]
    assert reg.get(model_id, 1, kind="baseline") == base1
    assert reg.latest_baseline(model_id) == base2
    assert reg.load_weights(model_id, 2, kind="baseline") == weights(-2)
    assert reg.load_weights(model_id, 2) == weights(2)


def test_metrics_round_trip_and_non_finite_ones_are_skipped(reg: Registry, model_id: str) -> None:
    from mlflow.tracking import MlflowClient

    metrics = {"logloss": 0.1 + 0.2, "acc": 1 / 3, "bad": math.nan, "worse": -math.inf}
    entry = reg.register(model_id, 4, weights(0), SPEC, 40, metrics)
    assert entry.metrics == {"logloss": 0.1 + 0.2, "acc": 1 / 3}
    assert reg.get(model_id, 4) == entry

    run = MlflowClient(tracking_uri=reg.tracking_uri).get_run(entry.run_id)
    assert run.data.metrics == {"logloss": 0.1 + 0.2, "acc": 1 / 3}
    assert run.data.tags["flowlearn.skipped_metrics"] == "bad,worse"
    assert run.data.params["weights_sha256"] == entry.weights_sha256
    assert run.data.params["samples_applied"] == "40"
    assert run.info.status == "FINISHED"


def test_awkward_model_ids(reg: Registry) -> None:
    for model_id in ("it's", 'say "hi"', "naïve model"):
        entry = reg.register(model_id, 1, weights(1), SPEC, 1, {})
        assert reg.versions(model_id) == [entry]


def test_mlflow_errors_become_registry_errors(reg: Registry) -> None:
    with pytest.raises(RegistryError) as err:
        reg.register("a/b", 1, weights(1), SPEC, 1, {})  # MLflow forbids "/" in names
    assert "create registered model on sqlite:///" in str(err.value)


def test_bad_arguments_are_rejected(reg: Registry) -> None:
    with pytest.raises(ValueError, match="codec"):
        reg.register("m", 1, b"not codec bytes", SPEC, 1, {})
    with pytest.raises(ValueError, match="JSON object"):
        reg.register("m", 1, weights(1), "[1, 2]", 1, {})
    with pytest.raises(ValueError, match="reserved"):
        reg.register("m", 1, weights(1), SPEC, 1, {}, tags={"flowlearn.version": "9"})
    with pytest.raises(ValueError, match="kind"):
        reg.register("m", 1, weights(1), SPEC, 1, {}, kind="on line")
    with pytest.raises(ValueError, match="version"):
        reg.register("m", -1, weights(1), SPEC, 1, {})
    with pytest.raises(ValueError, match="in-memory"):
        Registry("sqlite:///:memory:")


def test_artifacts_land_beside_the_db_and_never_in_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(home)
    reg = Registry("sqlite:///state/mlflow.db")  # relative: resolved now, against home
    monkeypatch.chdir(elsewhere)  # a Flink worker's unrelated cwd

    entry = reg.register("m", 1, weights(1, 2, 3), SPEC, 3, {"loss": 0.5})
    assert reg.load_weights("m", 1) == weights(1, 2, 3)
    assert reg.load_spec("m", 1) == json.loads(SPEC)

    assert list(elsewhere.iterdir()) == []
    db_folder = home / "state"
    assert (db_folder / "mlflow.db").is_file()
    files = {p.relative_to(db_folder).as_posix() for p in db_folder.rglob("*") if p.is_file()}
    run_folder = f"artifacts/{entry.run_id}/artifacts"
    model_files = {"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt"}
    run_files = {f"{run_folder}/{DATA}/{n}" for n in ("weights.flc", "spec.json")}
    run_files |= {f"{run_folder}/model/{n}" for n in model_files}
    assert {f for f in files if f.startswith("artifacts/")} == run_files


def test_two_processes_share_one_sqlite_store(tmp_path: Path) -> None:
    db = tmp_path / "shared" / "mlflow.db"
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from flowlearn.core.codec import encode_array
        from flowlearn.registry.mlflow_store import Registry
        reg = Registry({f"sqlite:///{db}"!r})
        for v in range(1, 6):
            w = encode_array(np.full(4, float(v)))
            reg.register("shared", v, w, "{{}}", v, {{"loss": 1.0 / v}})
            reg.register("own-" + sys.argv[1], v, w, "{{}}", v, {{}})
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, name], stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err

    reg = Registry(f"sqlite:///{db}")
    assert [e.version for e in reg.versions("shared")] == [1, 2, 3, 4, 5]
    assert [e.version for e in reg.versions("own-a")] == [e.version for e in reg.versions("own-b")]
    assert reg.load_weights("shared", 5) == encode_array(np.full(4, 5.0))
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_mask_uri() -> None:
    assert mask_uri("https://ann:s3cret@host:5000/mlflow") == "https://ann:***@host:5000/mlflow"
    assert mask_uri("postgresql://u:p%40ss@db/mlflow?sslmode=require&password=x") == (
        "postgresql://u:***@db/mlflow?sslmode=require&password=***"
    )
    assert mask_uri("http://token@host") == "http://token@host"
    assert mask_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


class _StubMlflow(BaseHTTPRequestHandler):
    """The two REST calls ``versions()`` makes, with a second page to follow."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path.endswith("/experiments/get-by-name"):
            body: dict[str, object] = {
                "experiment": {
                    "experiment_id": "7",
                    "name": "flowlearn",
                    "lifecycle_stage": "active",
                }
            }
        elif url.path.endswith("/model-versions/search"):
            page = query.get("page_token", [""])[0]
            version = 2 if page else 1
            tags = {
                "model_id": "m",
                "version": version,
                "kind": "online",
                "samples_applied": 10,
                "weights_sha256": "ab",
                "metric.loss": 0.5,
            }
            body = {
                "model_versions": [
                    {
                        "name": "flowlearn-m",
                        "version": str(version),
                        "run_id": f"run{version}",
                        "creation_timestamp": 1_700_000_000_000,
                        "status": "READY",
                        "tags": [
                            {"key": f"flowlearn.{k}", "value": str(v)} for k, v in tags.items()
                        ],
                    }
                ],
                "next_page_token": "" if page else "page2",
            }
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubMlflow)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_server_links_are_ui_urls_without_the_password(stub_server: str) -> None:
    reg = Registry(f"http://ann:s3cret@{stub_server}/")
    assert reg.tracking_uri == f"http://ann:***@{stub_server}"
    found = reg.versions("m")
    assert [(e.version, e.registry_version) for e in found] == [(1, 1), (2, 2)]  # both pages
    assert found[0] == RegisteredVersion(
        model_id="m",
        version=1,
        registry_version=1,
        kind="online",
        run_id="run1",
        samples_applied=10,
        epoch=None,
        metrics={"loss": 0.5},
        created_ms=1_700_000_000_000,
        weights_sha256="ab",
        link=f"http://ann:***@{stub_server}/#/experiments/7/runs/run1",
    )


def test_errors_never_show_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port = free_port()  # nobody listens there
    reg = Registry(f"http://ann:s3cret@127.0.0.1:{port}")
    with pytest.raises(RegistryError) as err:
        reg.versions("m")
    shown = "".join(traceback.format_exception(err.value))
    assert f"http://ann:***@127.0.0.1:{port}" in str(err.value)
    assert "open experiment 'flowlearn'" in str(err.value)
    assert "s3cret" not in shown


def test_a_name_mlflow_refuses_is_a_permanent_error(store: Path) -> None:
    """MLflow refuses '/' and ':' in a registered model's name: retrying cannot help, so the
    error says it is permanent (the job's settings refuse such a prefix up front)."""
    bad = Registry(f"sqlite:///{store}", name_prefix="team/")
    with pytest.raises(RegistryError, match="create registered model") as caught:
        bad.register("m", 1, weights(1.0), SPEC, 1, {})
    assert caught.value.permanent


def test_a_prefix_mlflow_would_refuse_is_refused_by_the_settings() -> None:
    from flowlearn.conf import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"mlflow\.name_prefix"):
        load_settings(env={"FLOWLEARN__MLFLOW__NAME_PREFIX": "team:"})
