"""The Open Inference Protocol (V2 REST) routes, and V1 made faithful to KServe, against a
real Redis fed by the trainer-side Publisher."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp.test_utils import TestClient

from flowlearn.serving.baseline import write_baseline

from .conftest import Trainer, spec_json
from .test_app import FakeProducer, W, at_version, has, metrics_text, predict, serve, until


async def infer(
    http: TestClient, body: Any, model: str = "m", status: int = 200, version: str | None = None
) -> dict[str, Any]:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    resp = await http.post(path, json=body)
    answer: dict[str, Any] = await resp.json()
    assert resp.status == status, answer
    return answer


def tensor(rows: Any, datatype: str = "FP64", **fields: Any) -> dict[str, Any]:
    rows = np.asarray(rows)
    return {
        "name": "input-0",
        "shape": list(rows.shape),
        "datatype": datatype,
        "data": rows.reshape(-1).tolist(),
        **fields,
    }


def outputs(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["name"]: o for o in answer["outputs"]}


def named_spec(**extra: Any) -> str:
    return json.dumps({**json.loads(spec_json()), **extra})


ROWS = [[1.0, 0.0, 0.0], [0.5, -2.0, 3.25], [1e3, 1e-3, -7.0]]


def test_health_server_and_model_metadata(serving_redis, prefix):
    async def scenario(http: TestClient, trainer: Trainer) -> None:
        assert (await http.get("/v2/health/live")).status == 200
        assert await (await http.get("/v2/health/live")).json() == {"live": True}
        assert await (await http.get("/v2")).json() == {
            "name": "flowlearn-predictor",
            "version": "1",
            "extensions": ["binary_tensor_data"],
        }
        # Known (in the models set) but not published yet: not ready, 503 like /readyz.
        trainer.client.sadd(trainer.keys.models, "m")

        async def loading() -> bool:
            resp = await http.get("/v2/models/m/ready")
            return resp.status == 503

        await until("m known, not loaded", loading)
        assert await (await http.get("/v2/models/m/ready")).json() == {"name": "m", "ready": False}
        ready = await http.get("/v2/health/ready")
        assert (ready.status, await ready.json()) == (503, {"ready": False})
        resp = await http.get("/v2/models/m")
        assert resp.status == 503 and "no weights" in (await resp.json())["error"]
        body = await infer(http, {"inputs": [tensor([[1, 2, 3]])]}, status=503)
        assert "no weights loaded yet" in body["error"]

        trainer.publish(W)
        await at_version(http, 1)
        assert (await http.get("/v2/health/ready")).status == 200
        resp = await http.get("/v2/models/m/ready")
        assert (resp.status, await resp.json()) == (200, {"name": "m", "ready": True})
        assert await (await http.get("/v2/models/m")).json() == {
            "name": "m",
            "versions": ["1"],
            "platform": "flowlearn",
            "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 3]}],
            "outputs": [
                {"name": "predict", "datatype": "INT64", "shape": [-1]},
                {"name": "proba", "datatype": "FP64", "shape": [-1, 2]},
            ],
        }
        for path in ("/v2/models/nope", "/v2/models/nope/ready"):
            resp = await http.get(path)
            assert resp.status == 404
            assert await resp.json() == {"error": "model 'nope' not found"}
        text = await metrics_text(http)
        assert 'flowlearn_predictor_requests_total{route="metadata",status="200"} 1.0' in text
        assert 'flowlearn_predictor_requests_total{route="infer",status="503"} 1.0' in text

    serve(serving_redis, prefix, scenario, log_predictions=False)


def test_v2_and_v1_give_bit_identical_scores(serving_redis, prefix):
    rng = np.random.default_rng(7)

    async def scenario(http: TestClient, trainer: Trainer) -> None:
        softmax = Trainer(
            trainer.client, trainer.keys, "s", size=9, spec=spec_json("softmax", 2, [0, 1, 2])
        )
        linear = Trainer(trainer.client, trainer.keys, "r", size=3, spec=spec_json("linear", 2))
        trainer.publish(rng.normal(size=4))
        softmax.publish(rng.normal(size=9))
        linear.publish(rng.normal(size=3))
        for model in ("m", "s", "r"):
            await at_version(http, 1, model)
        rows3 = rng.normal(scale=4, size=(20, 3)).tolist()
        rows2 = rng.normal(scale=4, size=(20, 2)).tolist()

        v1 = (await predict(http, rows3))["predictions"]
        v2 = outputs(await infer(http, {"inputs": [tensor(rows3)]}))
        proba = np.array(v2["proba"]["data"]).reshape(v2["proba"]["shape"])
        assert proba[:, 1].tolist() == v1  # bit for bit: JSON float64 round trips
        assert v2["predict"]["data"] == [int(p > 0.5) for p in v1]
        # Nested data, FP32 and INT64 tensors are read as the same float64 numbers.
        nested = {**tensor(rows3), "data": rows3}
        assert outputs(await infer(http, {"inputs": [nested]}))["proba"] == v2["proba"]
        fp32 = tensor(rows3, "FP32")
        assert outputs(await infer(http, {"inputs": [fp32]}))["proba"] == v2["proba"]
        ints = [[1, -2, 3], [0, 5, 7]]
        as_int = outputs(await infer(http, {"inputs": [tensor(ints, "INT64")]}))
        assert (
            np.array(as_int["proba"]["data"]).reshape(2, 2)[:, 1].tolist()
            == (await predict(http, ints))["predictions"]
        )

        v1 = (await predict(http, rows2, model="s"))["predictions"]
        v2 = outputs(await infer(http, {"inputs": [tensor(rows2)]}, model="s"))
        assert v2["proba"]["shape"] == [20, 3]
        assert np.array(v2["proba"]["data"]).reshape(20, 3).tolist() == v1
        assert v2["predict"]["data"] == np.argmax(v1, axis=1).tolist()

        v1 = (await predict(http, rows2, model="r"))["predictions"]
        v2 = outputs(await infer(http, {"inputs": [tensor(rows2)]}, model="r"))
        assert list(v2) == ["predict"]
        assert (v2["predict"]["datatype"], v2["predict"]["shape"]) == ("FP64", [20])
        assert v2["predict"]["data"] == v1

    serve(serving_redis, prefix, scenario, log_predictions=False)


def test_infer_answer_outputs_and_versions(serving_redis, prefix):
    async def scenario(http: TestClient, trainer: Trainer) -> None:
        trainer.publish(W)
        trainer.publish(W * 2)
        await at_version(http, 2)
        body = await infer(http, {"id": "req-1", "inputs": [tensor(ROWS)]})
        assert (body["model_name"], body["model_version"], body["id"]) == ("m", "2", "req-1")
        assert body["parameters"]["variant"] == "online"
        assert body["parameters"]["epoch"] == trainer.epoch
        assert body["parameters"]["stale"] is False
        assert [o["name"] for o in body["outputs"]] == ["predict", "proba"]
        assert len((await infer(http, {"inputs": [tensor(ROWS)]}))["id"]) == 32  # made up
        # Only the outputs asked for, in that order.
        body = await infer(
            http, {"inputs": [tensor(ROWS)], "outputs": [{"name": "proba"}, {"name": "predict"}]}
        )
        assert [o["name"] for o in body["outputs"]] == ["proba", "predict"]
        body = await infer(http, {"inputs": [tensor(ROWS)], "outputs": [{"name": "predict"}]})
        assert [o["name"] for o in body["outputs"]] == ["predict"]
        body = await infer(
            http, {"inputs": [tensor(ROWS)], "outputs": [{"name": "logits"}]}, status=400
        )
        assert "unknown output 'logits'" in body["error"]
        body = await infer(
            http, {"inputs": [tensor(ROWS)], "outputs": [{"name": "event_id"}]}, status=400
        )
        assert "only while predictions are logged" in body["error"]
        # The served version answers by its number; any other is not served here.
        body = await infer(http, {"inputs": [tensor(ROWS)]}, version="2")
        assert body["model_version"] == "2"
        body = await infer(http, {"inputs": [tensor(ROWS)]}, version="1", status=404)
        assert body["error"] == "model 'm' version '1' is not served here; version 2 is"
        # A pin serves an older version: that one then answers by its number.
        trainer.client.set(trainer.keys.pin("m"), 1)
        await at_version(http, 1)
        assert (await infer(http, {"inputs": [tensor(ROWS)]}, version="1"))["model_version"] == "1"
        body = await infer(http, {"inputs": [tensor(ROWS)]}, model="nope", status=404)
        assert body == {"error": "model 'nope' not found"}
        text = await metrics_text(http)
        assert 'flowlearn_predictor_requests_total{route="infer",status="200"} 6.0' in text
        assert 'flowlearn_predictor_requests_total{route="infer",status="404"} 2.0' in text
        assert 'flowlearn_predictor_requests_total{route="infer",status="400"} 2.0' in text
        assert 'flowlearn_predictor_request_seconds_count{route="infer"} 10.0' in text
        # 6 answered requests of 3 rows, through the same counter as V1.
        assert 'flowlearn_predictor_predictions_total{model="m",variant="online"} 18.0' in text

    serve(serving_redis, prefix, scenario, log_predictions=False)


def test_infer_input_errors(serving_redis, prefix):
    async def scenario(http: TestClient, trainer: Trainer) -> None:
        trainer.publish(W)
        await at_version(http, 1)

        async def refused(body: Any, *words: str, status: int = 400) -> None:
            message = (await infer(http, body, status=status))["error"]
            for word in words:
                assert word in message, message

        await refused({"inputs": [{**tensor(ROWS), "data": [1.0] * 8}]}, "holds 9 elements", "8")
        await refused({"inputs": [tensor([[1, 2]])]}, "expected [n, 3], got [1, 2]")
        await refused({"inputs": [tensor([1, 2, 3])]}, "expected [n, 3], got [3]")
        nested = {**tensor(ROWS), "data": [[1, 2, 3], [4, 5], [6, 7, 8]]}
        await refused({"inputs": [nested]}, "inputs[0].data[1]", "expected an array of 3")
        await refused({"inputs": [tensor(ROWS, "FP16")]}, "'FP16' not accepted", "FP64")
        await refused({"inputs": [tensor(ROWS, "BOOL")]}, "'BOOL' not accepted")
        bytes_ = {"name": "input-0", "shape": [1], "datatype": "BYTES", "data": ['{"a": 1}']}
        await refused({"inputs": [bytes_]}, "takes numbers", "hashed or named")
        await refused({"inputs": [tensor([[1.5, 2, 3]], "INT64")]}, "data[0]", "INT64 integer")
        await refused({"inputs": [tensor([[2**31, 2, 3]], "INT32")]}, "INT32 integer")
        await refused({"inputs": [{**tensor([[1, 2, 3]]), "data": [1, "x", 3]}]}, "data[1]", "str")
        await refused({"inputs": [{**tensor([[1, 2, 3]]), "data": [1, True, 3]}]}, "bool")
        await refused({"inputs": [{**tensor([[1, 2, 3]]), "data": [1, None, 3]}]}, "NoneType")
        await refused({"inputs": [tensor([[1, 2, 3]]), tensor([[1, 2, 3]])]}, "one feature tensor")
        await refused({"inputs": []}, "inputs")
        await refused({"instances": [[1, 2, 3]]}, "inputs")
        await refused(
            {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64"}]}, "data"
        )
        await refused({"inputs": [{**tensor([[1, 2, 3]]), "shape": [1, -3]}]}, "non-negative")
        await refused({"id": 5, "inputs": [tensor([[1, 2, 3]])]}, "id")
        await refused({"inputs": [tensor(np.zeros((0, 3)))]}, "at least one row")
        await refused({"inputs": [tensor([[1, 2, 3]] * 6)]}, "at most 5 rows", status=413)
        ids = {"name": "event_id", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}
        await refused({"inputs": [tensor([[1, 2, 3]]), ids]}, "2 rows, the features have 1")
        overflow = {"inputs": [tensor([[1e308, -1e308, 1e308], [1, 2, 3]])]}
        resp = await http.post("/v2/models/m/infer", json=overflow)  # a logistic saturates
        assert resp.status == 200
        resp = await http.post("/v2/models/m/infer", data=b"{not json")
        assert (resp.status, await resp.json()) == (400, {"error": "body is not JSON"})

    serve(serving_redis, prefix, scenario, log_predictions=False, predictor={"max_instances": 5})


def test_hashed_and_named_features_take_json_objects(serving_redis, prefix):
    hashed = json.dumps({**json.loads(spec_json(n_features=4)), "features": "hashed"})
    named = named_spec(feature_names=["a", "b", "c"])

    async def scenario(http: TestClient, trainer: Trainer) -> None:
        h = Trainer(trainer.client, trainer.keys, "h", size=5, spec=hashed)
        n = Trainer(trainer.client, trainer.keys, "n", size=4, spec=named)
        h.publish(np.array([0.5, -2.0, 1.5, 3.0, -0.1]))
        n.publish(W)
        await at_version(http, 1, "h")
        await at_version(http, 1, "n")
        maps = [{"user": "u1", "x": 2.5}, {"y": -1, "user": "u2"}]
        objects = {
            "name": "input-0",
            "shape": [2],
            "datatype": "BYTES",
            "data": [json.dumps(m) for m in maps],
        }
        v1 = (await predict(http, maps, model="h"))["predictions"]
        v2 = outputs(await infer(http, {"inputs": [objects]}, model="h"))
        assert np.array(v2["proba"]["data"]).reshape(2, 2)[:, 1].tolist() == v1
        meta = await (await http.get("/v2/models/h")).json()
        assert meta["inputs"] == [{"name": "input-0", "datatype": "BYTES", "shape": [-1]}]
        body = await infer(http, {"inputs": [tensor([[1, 2, 3, 4]])]}, model="h", status=400)
        assert "hashed features" in body["error"] and "/v1/models/h:predict" in body["error"]
        bad = {**objects, "data": ["[1, 2]", "{}"]}
        body = await infer(http, {"inputs": [bad]}, model="h", status=400)
        assert "inputs[0].data[0]: expected a JSON object" in body["error"]
        # A model with feature names takes both numbers in its column order and named maps.
        rows = [{"a": 1, "c": 3, "b": 0}, {"b": 2, "a": -1, "c": 0.5}]
        named_objects = {**objects, "data": [json.dumps(r) for r in rows]}
        v1 = (await predict(http, rows, model="n"))["predictions"]
        v2 = outputs(await infer(http, {"inputs": [named_objects]}, model="n"))
        assert np.array(v2["proba"]["data"]).reshape(2, 2)[:, 1].tolist() == v1
        dense = outputs(await infer(http, {"inputs": [tensor([[1, 0, 3]])]}, model="n"))
        assert (
            dense["proba"]["data"][1]
            == (await predict(http, [[1, 0, 3]], model="n"))["predictions"][0]
        )

    serve(serving_redis, prefix, scenario, log_predictions=False)


def test_prediction_log_gets_v2_predictions(serving_redis, prefix, tmp_path: Path):
    producer = FakeProducer()
    write_baseline(tmp_path / "m.flc", json.loads(spec_json()), np.array([0, 0, 0, 2.0]), 7)

    async def scenario(http: TestClient, trainer: Trainer) -> None:
        trainer.publish(W)
        await at_version(http, 1)
        ids = {"name": "event_id", "shape": [2], "datatype": "BYTES", "data": ["ev-1", "ev-2"]}
        body = await infer(http, {"inputs": [tensor(ROWS[:2]), ids]})
        out = outputs(body)
        assert out["event_id"]["data"] == ["ev-1", "ev-2"]
        assert body["parameters"]["shadow_variant"] == "baseline"
        assert body["parameters"]["shadow_model_version"] == 7
        v1 = await predict(http, [{"features": ROWS[0], "event_id": "ev-3"}])
        await until("three log records", lambda: asyncio.sleep(0, len(producer.sent) == 3))
        records = [json.loads(value) for _topic, _key, value in producer.sent]
        # The same record as V1's: features as rows, the score as V1 answers it.
        assert records[0]["event_id"] == "ev-1" and records[1]["event_id"] == "ev-2"
        assert records[0]["features"] == ROWS[0] and records[1]["features"] == ROWS[1]
        assert records[0]["score"] == out["proba"]["data"][1] == v1["predictions"][0]
        assert records[2]["score"] == records[0]["score"]
        for record in records[:2]:
            assert (record["model_id"], record["model_version"], record["variant"]) == (
                "m",
                1,
                "online",
            )
            assert record["shadow"]["variant"] == "baseline"
        assert set(records[0]) == set(records[2])
        # Without event ids, new ones are made up and answered.
        body = await infer(http, {"inputs": [tensor(ROWS)]})
        made = outputs(body)["event_id"]["data"]
        assert len(made) == 3 and all(len(e) == 32 for e in made)
        await until("six log records", lambda: asyncio.sleep(0, len(producer.sent) == 6))
        assert [json.loads(v)["event_id"] for _t, _k, v in producer.sent[3:]] == made
        text = await metrics_text(http)
        assert 'flowlearn_predictor_predictions_total{model="m",variant="online"} 6.0' in text
        await until(
            "six records acknowledged",
            lambda: has(http, "flowlearn_predictor_log_sent_total 6.0"),
        )
        meta = await (await http.get("/v2/models/m")).json()
        assert meta["outputs"][-1] == {"name": "event_id", "datatype": "BYTES", "shape": [-1]}

    serve(
        serving_redis,
        prefix,
        scenario,
        baselines={"m": tmp_path / "m.flc"},
        producer_factory=producer.factory,
    )


def test_baseline_only_model_and_ab_split_on_v2(serving_redis, prefix, tmp_path: Path):
    write_baseline(tmp_path / "only.flc", json.loads(spec_json()), np.zeros(4), version=3)
    write_baseline(tmp_path / "m.flc", json.loads(spec_json()), np.zeros(4), version=9)

    async def scenario(http: TestClient, trainer: Trainer) -> None:
        body = await infer(http, {"inputs": [tensor([[1, 2, 3]])]}, model="only")
        assert body["model_version"] == "3" and body["parameters"]["fallback"] is True
        assert outputs(body)["proba"]["data"] == [0.5, 0.5]
        assert (await infer(http, {"inputs": [tensor([[1, 2, 3]])]}, "only", version="3"))[
            "model_version"
        ] == "3"
        trainer.publish(W)
        await at_version(http, 1)
        variants = set()
        for i in range(30):
            ids = {"name": "event_id", "shape": [1], "datatype": "BYTES", "data": [f"u-{i}"]}
            body = await infer(http, {"inputs": [tensor([[1, 0, 0]]), ids]})
            variants.add(body["parameters"]["variant"])
            # The versioned route is answered by that version, never by the A/B baseline.
            body = await infer(http, {"inputs": [tensor([[1, 0, 0]]), ids]}, version="1")
            assert body["parameters"]["variant"] == "online"
        assert variants == {"online", "baseline"}

    serve(
        serving_redis,
        prefix,
        scenario,
        baselines={"only": tmp_path / "only.flc", "m": tmp_path / "m.flc"},
        ab_fraction=0.5,
        log_predictions=False,
    )


def test_v1_is_faithful_to_kserve(serving_redis, prefix):
    async def scenario(http: TestClient, trainer: Trainer) -> None:
        trainer.publish(W)
        Trainer(trainer.client, trainer.keys, "a").publish(W)
        await at_version(http, 1)
        await at_version(http, 1, "a")
        assert await (await http.get("/v1/models")).json() == {"models": ["a", "m"]}
        for query in ("?detail=false", "?detail=0"):
            assert await (await http.get(f"/v1/models{query}")).json() == {"models": ["a", "m"]}
        detailed = await (await http.get("/v1/models?detail=true")).json()
        assert [m["name"] for m in detailed["models"]] == ["a", "m"]
        assert detailed["models"][1]["version"] == 1
        resp = await http.get("/v1/models?detail=maybe")
        assert resp.status == 400 and "detail" in (await resp.json())["error"]
        # KServe's {"inputs": [...]} is the same as {"instances": [...]}.
        resp = await http.post("/v1/models/m:predict", json={"inputs": ROWS})
        assert resp.status == 200
        assert (await resp.json())["predictions"] == (await predict(http, ROWS))["predictions"]
        resp = await http.post("/v1/models/m:predict", json={"inputs": ROWS, "instances": ROWS})
        assert resp.status == 400 and "not both" in (await resp.json())["error"]
        resp = await http.post("/v1/models/m:predict", json={"inputs": []})
        assert (await resp.json())["error"] == "inputs: expected a non-empty list"

    serve(serving_redis, prefix, scenario, log_predictions=False)
