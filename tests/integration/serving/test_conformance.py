"""The predictor against clients no one here wrote: Triton's ``tritonclient.http`` speaking
the Open Inference Protocol (V2 REST, its binary tensor extension by default), and KServe V1
requests as KServe documents them; ``:explain`` of a linear model."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from flowlearn.contracts.redis_contract import Keys
from flowlearn.core import linear, model_types
from flowlearn.core.training import ModelTrainer

from .conftest import RedisServer, Trainer, wait_for
from .test_main import start_predictor

httpclient = pytest.importorskip("tritonclient.http")

RNG = np.random.default_rng(7)
X = RNG.normal(size=(400, 3)) * [1.0, 10.0, 100.0] + [0.0, 5.0, -50.0]


def trained(kind: str) -> tuple[str, np.ndarray]:
    """A model trained through the core's pipeline: (published spec, weights)."""
    spec: dict[str, Any] = {"type": kind, "n_features": 3, "batch_size": 32}
    if kind == "softmax":
        spec["n_classes"] = 3
        y = np.digitize(X[:, 0], [-0.5, 0.5]).astype(np.float64)
    elif kind == "logistic":
        y = (X[:, 0] + X[:, 1] / 10 > 0.5).astype(np.float64)
    else:
        y = 100.0 + X @ [3.0, -0.2, 0.01]
    trainer = ModelTrainer.create("m", spec)
    trainer.train_samples(X, y)
    return trainer.published_spec, trainer.model.weights_vector()


@pytest.fixture(scope="module")
def predictor(
    serving_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, tuple[str, np.ndarray]]]]:
    """A ``python -m flowlearn.serving`` serving three trained models: (url, models)."""
    prefix = "conformance:"
    client = serving_redis.client()
    models = {kind: trained(kind) for kind in ("logistic", "softmax", "linear")}
    for kind, (spec, weights) in models.items():
        Trainer(client, Keys(prefix), kind, size=len(weights), spec=spec).publish(weights)
    proc, url = start_predictor(serving_redis, prefix, tmp_path_factory.mktemp("conformance"))

    def all_loaded() -> bool:
        return all(loaded(url, kind) for kind in models)

    try:
        wait_for("the three models to load", all_loaded, 30)
        yield url, models
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        client.close()


def loaded(url: str, model: str) -> bool:
    status, body = get(f"{url}/v1/models/{model}")
    return status == 200 and body["ready"] is True


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def post(url: str, body: Any) -> tuple[int, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def served(models: dict[str, tuple[str, np.ndarray]], kind: str) -> Any:
    spec, weights = models[kind]
    return model_types.from_spec(json.loads(spec), weights)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("dtype", ["FP64", "FP32"])
def test_tritonclient_infers_what_the_trainer_predicts(predictor, binary, dtype):
    url, models = predictor
    triton = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        assert triton.is_server_live() and triton.is_server_ready()
        assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
        for kind in models:
            assert triton.is_model_ready(kind)
            meta = triton.get_model_metadata(kind)
            assert meta["name"] == kind and meta["inputs"][0]["shape"] == [-1, 3]
            rows = X[-5:].astype(np.float32 if dtype == "FP32" else np.float64)
            tensor = httpclient.InferInput(meta["inputs"][0]["name"], list(rows.shape), dtype)
            tensor.set_data_from_numpy(rows, binary_data=binary)
            wanted = "predict" if kind == "linear" else "proba"
            result = triton.infer(
                kind,
                inputs=[tensor],
                outputs=[httpclient.InferRequestedOutput(wanted, binary_data=binary)],
            )
            model = served(models, kind)
            # FP32 rows are read as the float64 values they hold: the same scores as those.
            X64 = rows.astype(np.float64)
            expected = (
                model.predict_many(X64) if kind == "linear" else model.predict_proba_many(X64)
            )
            if kind == "logistic":  # V2's proba is [n, 2]
                expected = np.stack([1.0 - expected, expected], axis=1)
            np.testing.assert_array_equal(result.as_numpy(wanted), expected)
            assert result.get_response()["model_version"] == "1"
    finally:
        triton.close()


def test_tritonclient_errors_are_raised_as_triton_errors(predictor):
    url, _models = predictor
    triton = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        assert not triton.is_model_ready("nope")
        tensor = httpclient.InferInput("input-0", [1, 2], "FP64")
        tensor.set_data_from_numpy(np.zeros((1, 2)))
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match=r"expected \[n, 3\]"):
            triton.infer("logistic", inputs=[tensor])
    finally:
        triton.close()


def test_kserve_v1_requests_as_kserve_documents_them(predictor):
    url, models = predictor
    status, listed = get(f"{url}/v1/models")
    assert status == 200 and sorted(listed["models"]) == sorted(models)
    status, model = get(f"{url}/v1/models/logistic")
    assert status == 200 and model["name"] == "logistic" and model["ready"] is True
    rows = X[:4].tolist()
    for key in ("instances", "inputs"):
        status, body = post(f"{url}/v1/models/softmax:predict", {key: rows})
        assert status == 200
        assert body["predictions"] == served(models, "softmax").predict_proba_many(X[:4]).tolist()
    status, body = post(f"{url}/v1/models/nope:predict", {"instances": rows})
    assert status == 404 and "error" in body


@pytest.mark.parametrize("kind", ["logistic", "softmax", "linear"])
def test_explain_answers_each_features_share_of_the_score(predictor, kind):
    url, models = predictor
    rows = X[:3].tolist()
    status, body = post(f"{url}/v1/models/{kind}:explain", {"instances": rows})
    assert status == 200, body
    assert body["model_version"] == 1
    assert (
        body["output"] == {"logistic": "logit", "softmax": "class_scores", "linear": "value"}[kind]
    )
    model = served(models, kind)
    for i, explanation in enumerate(body["explanations"]):
        shares = np.asarray(explanation["contributions"])
        assert shares.shape == ((3, 3) if kind == "softmax" else (3,))
        raw = shares.sum(axis=0) + np.asarray(body["base"])
        np.testing.assert_allclose(explanation["score"], raw)
        x = X[i : i + 1]
        if kind == "logistic":
            np.testing.assert_allclose(linear.sigmoid(raw), model.predict_proba_many(x)[0])
        elif kind == "softmax":
            np.testing.assert_allclose(linear.softmax(raw[None])[0], model.predict_proba_many(x)[0])
        else:
            np.testing.assert_allclose(raw, model.predict_many(x)[0], rtol=1e-12)


def test_explain_refuses_what_it_cannot_explain(predictor, serving_redis: RedisServer):
    url, _models = predictor
    status, body = post(f"{url}/v1/models/logistic:explain", {"instances": [[1.0, 2.0]]})
    assert status == 400 and "3" in body["error"]
    status, body = post(f"{url}/v1/models/nope:explain", {"instances": [[1.0, 2.0, 3.0]]})
    assert status == 404
    # A tree's score is no sum of shares.
    client = serving_redis.client()
    try:
        trainer = ModelTrainer.create(
            "tree", {"type": "hoeffding_tree", "n_features": 3, "n_classes": 2, "batch_size": 8}
        )
        weights = trainer.model.weights_vector()
        Trainer(
            client, Keys("conformance:"), "tree", size=len(weights), spec=trainer.published_spec
        ).publish(weights)
        # Every worker of the predictor follows Redis on its own: ten answers in a row, on
        # new connections spread over them, say they all hold the tree.
        wait_for(
            "every worker to load the tree", lambda: all(loaded(url, "tree") for _ in range(10)), 30
        )
        status, body = post(f"{url}/v1/models/tree:explain", {"instances": [[1.0, 2.0, 3.0]]})
        assert status == 400 and "not a sum of per-feature shares" in body["error"], body
    finally:
        client.close()
