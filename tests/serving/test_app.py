"""The predictor's HTTP API against a real Redis fed by the trainer-side Publisher."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import numpy as np
from aiohttp.test_utils import TestClient, TestServer

from conf import load_settings
from flowlearn import codec
from flowlearn.redis_contract import Keys, ModelVersion, Publisher
from flowlearn.serving.app import make_app

from ..conftest import REDIS_PASSWORD

SPEC = json.dumps({"type": "logistic", "n_features": 3, "classes": [0, 1], "intercept": True,
                   "features": "dense", "hash_seed": 0})


def publish(client, keys, model_id, version, weights):
    Publisher(client, keys, 100).publish(ModelVersion(
        model_id, version, version - 1, version * 8, SPEC,
        codec.make_delta(np.zeros_like(weights), weights), codec.encode_array(weights)))


def run(redis_server, scenario):
    port = redis_server.connection_pool.connection_kwargs["port"]
    prefix = f"a{uuid.uuid4().hex[:6]}:"
    settings = load_settings(env={"FLOWLEARN__REDIS__PORT": str(port),
                                  "FLOWLEARN__REDIS__PASSWORD": REDIS_PASSWORD,
                                  "FLOWLEARN__REDIS__PREFIX": prefix,
                                  "FLOWLEARN__PREDICTOR__MAX_INSTANCES": "5"})
    keys = Keys(prefix)

    async def main():
        async with TestClient(TestServer(make_app(settings))) as client:
            await scenario(client, keys)

    asyncio.run(main())


async def wait_ready(client, model_id, version, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        resp = await client.get(f"/v1/models/{model_id}")
        if resp.status == 200 and (await resp.json()).get("version") == version:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{model_id} not at version {version} within {timeout_s}s")


def test_predict_serves_the_published_version(redis_server):
    weights = np.array([1.0, -1.0, 0.5, 0.25])

    async def scenario(client, keys):
        publish(redis_server, keys, "m", 1, weights)
        await wait_ready(client, "m", 1)
        resp = await client.post("/v1/models/m:predict",
                                 json={"instances": [[1, 0, 0], {"features": [0, 1, 0]}]})
        assert resp.status == 200
        body = await resp.json()
        expected = 1 / (1 + np.exp(-(np.array([1.0, -1.0]) + 0.25)))
        assert np.allclose(body["predictions"], expected)
        assert body["model_version"] == 1 and body["epoch"] >= 1
        listed = await (await client.get("/v1/models")).json()
        assert [m["name"] for m in listed["models"]] == ["m"]
        assert listed["models"][0]["spec"]["n_features"] == 3
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 200
        metrics = await (await client.get("/metrics")).text()
        assert 'flowlearn_predictor_model_version{model="m"} 1.0' in metrics

    run(redis_server, scenario)


def test_errors_are_clear(redis_server):
    async def scenario(client, keys):
        publish(redis_server, keys, "m", 1, np.zeros(4))
        await wait_ready(client, "m", 1)
        resp = await client.post("/v1/models/nope:predict", json={"instances": [[1, 2, 3]]})
        assert resp.status == 404 and "nope" in (await resp.json())["error"]
        resp = await client.post("/v1/models/m:predict", json={"instances": [[1, "x", 3]]})
        assert resp.status == 400 and "[1]" in (await resp.json())["error"]
        resp = await client.post("/v1/models/m:predict", json={"instances": [[1, 2]]})
        assert resp.status == 400 and "expected 3 values" in (await resp.json())["error"]
        resp = await client.post("/v1/models/m:predict", json={"instances": [[1, 2, 3]] * 6})
        assert resp.status == 413
        resp = await client.post("/v1/models/m:predict", data=b"{not json")
        assert resp.status == 400

    run(redis_server, scenario)
