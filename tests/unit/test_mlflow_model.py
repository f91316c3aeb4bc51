"""Registered versions as MLflow sees them: pyfunc models that score as the predictor does,
the aliases the job maintains (live, best), and retention; against real SQLite stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flowlearn.core.codec import encode_array
from flowlearn.registry.mlflow_store import BEST, KEEP_TAG, LIVE, PYFUNC_LOADER, Registry
from tests.unit.trained_models import NAMES, SPECS, Trained


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module; tests use their own model ids."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow-model') / 'mlflow.db'}"


@pytest.fixture
def mlflow_env(uri: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``models:/`` URIs resolve against the test store, as MLFLOW_TRACKING_URI makes them."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_the_loader_module_is_the_one_the_registry_names() -> None:
    import importlib

    loader = importlib.import_module(PYFUNC_LOADER)
    assert callable(loader._load_pyfunc)


@pytest.mark.parametrize("name", list(SPECS))
def test_a_registered_version_is_a_pyfunc_model_scoring_as_the_predictor(
    name: str, mlflow_env: str
) -> None:
    import mlflow.pyfunc

    trained = Trained(name)
    entry = Registry(mlflow_env).register(
        name, 40, encode_array(trained.weights), trained.spec_json, 400, {}
    )
    assert entry.model_uri == f"models:/flowlearn-{name}/{entry.registry_version}"
    model = mlflow.pyfunc.load_model(entry.model_uri)
    expected, labels = trained.predictor_answer(trained.instances)

    givens: list[Any] = [pd.DataFrame(trained.instances)]
    if isinstance(trained.instances[0], dict):
        givens.append(trained.instances)  # a list of maps as well
    for given in givens:
        got = model.predict(given)
        if labels is None:
            assert isinstance(got, np.ndarray) and same_bits(got, expected)
        else:
            assert list(got.columns) == ["prediction", "label"]
            assert same_bits(np.array(got["prediction"].tolist()), expected)
            assert got["label"].tolist() == labels

    signature = model.metadata.signature
    assert signature is not None
    if trained.spec["feature_names"]:
        assert signature.inputs.input_names() == NAMES


def test_a_dense_model_without_names_takes_rows_of_numbers(mlflow_env: str) -> None:
    import mlflow.pyfunc

    trained = Trained("tree-regressor")
    Registry(mlflow_env).register(
        "unnamed", 1, encode_array(trained.weights), trained.spec_json, 400, {}
    )
    model = mlflow.pyfunc.load_model("models:/flowlearn-unnamed/1")
    expected, _ = trained.predictor_answer(trained.instances)
    assert same_bits(model.predict(np.array(trained.instances)), expected)
    (tensor,) = model.metadata.signature.inputs.inputs
    assert tensor.shape == (-1, 3)


def test_missing_and_integer_features_are_read_as_by_the_predictor(mlflow_env: str) -> None:
    import mlflow.pyfunc

    trained = Trained("logistic-labels")
    entry = Registry(mlflow_env).register(
        "imputed", 1, encode_array(trained.weights), trained.spec_json, 400, {}
    )
    # Missing features are imputed; an all-int column (int64 in pandas) is read as numbers.
    instances = [{"age": 2, "income": -0.5}, {"age": -1, "tenure": 2.0}, {"age": 0, "tenure": 1}]
    expected, labels = trained.predictor_answer(instances)
    got = mlflow.pyfunc.load_model(entry.model_uri).predict(pd.DataFrame(instances))
    assert same_bits(np.array(got["prediction"].tolist()), expected)
    assert got["label"].tolist() == labels


def test_weights_and_spec_still_load_from_the_registry(mlflow_env: str) -> None:
    trained = Trained("softmax-labels")
    reg = Registry(mlflow_env)
    payload = encode_array(trained.weights)
    reg.register("reload", 9, payload, trained.spec_json, 400, {})
    assert reg.load_weights("reload", 9) == payload
    assert reg.load_spec("reload", 9) == trained.spec


def weights(value: float) -> bytes:
    return encode_array(np.full(4, value))


SPEC = json.dumps({"type": "logistic", "n_features": 3, "intercept": True})


def loss(value: float) -> dict[str, float]:
    return {"windowed_loss": value, "window_samples": 100.0}


def test_the_job_moves_live_and_best(uri: str) -> None:
    reg = Registry(uri)
    for version, value in ((10, 0.5), (20, 0.3), (30, 0.4)):
        reg.register("aliases", version, weights(version), SPEC, version, loss(value), live=True)
    assert reg.aliases("aliases") == {LIVE: 3, BEST: 2}

    # An automatic rollback to version 10, registered already: live goes back to it.
    again = reg.register("aliases", 10, weights(10), SPEC, 10, loss(0.5), restored=True)
    assert again.registry_version == 1
    assert reg.aliases("aliases") == {LIVE: 1, BEST: 2}

    # Baselines and registrations outside the job move nothing.
    reg.register("aliases", 1, weights(-1), SPEC, 9000, loss(0.01), kind="baseline")
    reg.register("aliases", 40, weights(40), SPEC, 40, {"windowed_loss": 0.6})
    assert reg.aliases("aliases") == {LIVE: 1, BEST: 2}
    reg.register("aliases", 50, weights(50), SPEC, 50, loss(0.2))
    assert reg.aliases("aliases") == {LIVE: 1, BEST: 6}
    with pytest.raises(ValueError, match="only online versions are served"):
        reg.register("aliases", 2, weights(-2), SPEC, 1, {}, kind="baseline", live=True)


def test_an_alias_loads_its_version(mlflow_env: str) -> None:
    import mlflow.pyfunc

    trained = Trained("linear-named")
    reg = Registry(mlflow_env)
    reg.register("by-alias", 1, encode_array(trained.weights), trained.spec_json, 1, loss(0.2))
    reg.register(
        "by-alias", 2, encode_array(trained.weights * 2), trained.spec_json, 2, loss(0.3), live=True
    )
    expected, _ = trained.predictor_answer(trained.instances[:5])
    best = mlflow.pyfunc.load_model("models:/flowlearn-by-alias@best")
    assert same_bits(best.predict(pd.DataFrame(trained.instances[:5])), expected)
    live = mlflow.pyfunc.load_model("models:/flowlearn-by-alias@live")
    assert not same_bits(live.predict(pd.DataFrame(trained.instances[:5])), expected)


def mlflow_versions(uri: str, name: str) -> dict[int, dict[str, str]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {int(mv.version): mv.tags for mv in client.search_model_versions(f"name = '{name}'")}


def test_retention_keeps_the_last_versions_and_every_alias_holder(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    reg = Registry(uri, keep_versions=3)
    reg.register("kept", 1, weights(-1), SPEC, 1, {}, kind="baseline")  # never retained
    losses = {1: 1.0, 2: 0.5, 3: 0.6, 4: 0.7, 5: 0.8, 6: 0.9}
    for version, value in losses.items():
        reg.register("kept", version, weights(version), SPEC, version, loss(value), live=True)
    # MLflow numbers: 1 the baseline, 2..7 the online versions 1..6; 2 and 3 held best.
    assert sorted(mlflow_versions(uri, "flowlearn-kept")) == [1, 2, 3, 5, 6, 7]

    # An automatic rollback to online version 4 (MLflow 5), then, after a restart (a new
    # Registry: the rule lives in the store), three more versions.
    reg.register("kept", 4, weights(4), SPEC, 4, loss(0.7), restored=True)
    reg = Registry(uri, keep_versions=3)
    for version in (7, 8, 9):
        reg.register("kept", version, weights(version), SPEC, version, loss(0.95), live=True)

    left = mlflow_versions(uri, "flowlearn-kept")
    assert sorted(left) == [1, 2, 3, 5, 8, 9, 10]
    assert {v: left[v][KEEP_TAG] for v in (2, 3, 5)} == {
        2: "held best",
        3: "held best",
        5: "rollback target",
    }
    assert [e.version for e in reg.versions("kept", kind="online")] == [1, 2, 4, 7, 8, 9]
    assert reg.aliases("kept") == {LIVE: 10, BEST: 3}

    client = MlflowClient(tracking_uri=uri)
    remaining = {e.run_id for e in Registry(uri).versions("kept")}
    assert all(client.get_run(r).info.lifecycle_stage == "active" for r in remaining)
    runs = client.search_runs(
        [client.get_experiment_by_name("flowlearn").experiment_id],
        "tags.`flowlearn.model_id` = 'kept'",
        run_view_type=2,  # deleted only
    )
    assert sorted(int(r.data.params["version"]) for r in runs) == [3, 5, 6]


def test_a_version_holding_an_alias_is_never_deleted(uri: str) -> None:
    reg = Registry(uri, keep_versions=1)
    reg.register("held", 1, weights(1), SPEC, 1, loss(0.1), live=True)
    reg.register("held", 2, weights(2), SPEC, 2, {}, live=True)  # no metric: best stays
    reg.register("held", 3, weights(3), SPEC, 3, {}, live=True)
    assert sorted(mlflow_versions(uri, "flowlearn-held")) == [1, 3]
    assert reg.aliases("held") == {LIVE: 3, BEST: 1}


def test_keep_versions_zero_keeps_everything(uri: str) -> None:
    reg = Registry(uri, keep_versions=0)
    for version in range(1, 6):
        reg.register("all", version, weights(version), SPEC, version, {}, live=True)
    assert sorted(mlflow_versions(uri, "flowlearn-all")) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="keep_versions"):
        Registry(uri, keep_versions=-1)


def test_keep_versions_is_a_validated_setting(tmp_path: Path) -> None:
    from flowlearn.conf import ConfigError, load_settings

    assert load_settings(env={}).mlflow.keep_versions == 100
    settings = load_settings(env={"FLOWLEARN__MLFLOW__KEEP_VERSIONS": "7"})
    assert Registry.from_settings(settings)._keep_versions == 7
    with pytest.raises(ConfigError, match=r"mlflow\.keep_versions"):
        load_settings(env={"FLOWLEARN__MLFLOW__KEEP_VERSIONS": "-1"})
