"""The predictor's HTTP API against a real Redis fed by the trainer-side Publisher."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp.test_utils import TestClient, TestServer

from flowlearn.contracts.redis_contract import Keys
from flowlearn.core import model_types
from flowlearn.serving.app import make_app
from flowlearn.serving.baseline import write_baseline

from .conftest import RedisServer, Trainer, spec_json

W = np.array([1.0, -1.0, 0.5, 0.25])  # logistic, 3 features: coef then intercept


class FakeProducer:
    """Records what the prediction log produces, as confluent-kafka's producer would take it
    (every record delivered: no report); ``factory`` is the log's producer_factory."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    def factory(self, _config: dict[str, Any]) -> FakeProducer:
        return self

    def produce(self, topic: str, *, value: bytes, key: bytes) -> None:
        self.sent.append((topic, key, value))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def purge(self) -> None:
        pass

    def __len__(self) -> int:
        return 0


Scenario = Callable[[TestClient, Trainer], Awaitable[None]]


async def has(http: TestClient, line: str) -> bool:
    """Whether ``/metrics`` shows ``line``."""
    return line in await metrics_text(http)


def serve(server: RedisServer, prefix: str, scenario: Scenario, **options: Any) -> None:
    """Run ``scenario`` against a predictor app, with a trainer publishing model ``m``."""
    predictor = options.pop("predictor", {})
    settings = server.settings(prefix, **predictor)

    async def main() -> None:
        client = server.client()
        trainer = Trainer(client, Keys(prefix), "m")
        try:
            async with TestClient(TestServer(make_app(settings, **options))) as http:
                await scenario(http, trainer)
        finally:
            client.close()

    asyncio.run(main())


async def until(what: str, check: Callable[[], Awaitable[Any]], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


async def at_version(http: TestClient, version: int, model: str = "m") -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        resp = await http.get(f"/v1/models/{model}")
        body = await resp.json()
        return body if resp.status == 200 and body.get("version") == version else None

    answer: dict[str, Any] = await until(f"{model} at version {version}", check)
    return answer


async def predict(
    http: TestClient, instances: Any, model: str = "m", status: int = 200
) -> dict[str, Any]:
    resp = await http.post(f"/v1/models/{model}:predict", json={"instances": instances})
    body: dict[str, Any] = await resp.json()
    assert resp.status == status, body
    return body


async def metrics_text(http: TestClient) -> str:
    return await (await http.get("/metrics")).text()


def test_predict_follows_published_versions(serving_redis, prefix):
    async def scenario(http: TestClient, trainer: Trainer) -> None:
        assert (await http.get("/readyz")).status in (200, 503)
        trainer.publish(W)
        await at_version(http, 1)
        body = await predict(http, [[1, 0, 0], {"features": [0, 1, 0], "event_id": "e-1"}])
        model = model_types.from_spec(json.loads(trainer.spec), W)
        assert (
            body["predictions"]
            == model.predict_proba_many(np.array([[1.0, 0, 0], [0, 1.0, 0]])).tolist()
        )
        assert (body["model_version"], body["epoch"], body["variant"]) == (
            1,
            trainer.epoch,
            "online",
        )
        assert body["stale"] is body["degraded"] is body["fallback"] is False
        assert body["event_ids"][1] == "e-1" and len(body["event_ids"][0]) == 32
        # A new version is served as soon as it is published.
        trainer.publish(W * 2)
        await at_version(http, 2)
        body = await predict(http, [[1, 0, 0]])
        assert body["model_version"] == 2
        assert (
            body["predictions"]
            == model_types.from_spec(json.loads(trainer.spec), W * 2)
            .predict_proba_many(np.array([[1.0, 0, 0]]))
            .tolist()
        )
        assert await (await http.get("/v1/models")).json() == {"models": ["m"]}
        listed = await (await http.get("/v1/models?detail=true")).json()
        assert [m["name"] for m in listed["models"]] == ["m"]
        described = listed["models"][0]
        assert described["spec"]["n_features"] == 3 and described["state"] == "ready"
        assert described["age_s"] >= 0 and described["epoch"] == trainer.epoch
        assert (await http.get("/healthz")).status == 200
        assert (await http.get("/readyz")).status == 200
        doc = await (await http.get("/openapi.json")).json()
        assert "/v1/models/{model}:predict" in doc["paths"]
        text = await metrics_text(http)
        assert 'flowlearn_predictor_model_version{model="m"} 2.0' in text
        assert "flowlearn_predictor_redis_up 1.0" in text
        assert 'flowlearn_predictor_requests_total{route="predict",status="200"} 2.0' in text
        assert 'flowlearn_predictor_predictions_total{model="m",variant="online"} 3.0' in text
        assert 'flowlearn_predictor_request_seconds_count{route="predict"} 2.0' in text

    serve(serving_redis, prefix, scenario, producer_factory=FakeProducer().factory)


def test_softmax_and_linear_models(serving_redis, prefix):
    async def scenario(http: TestClient, trainer: Trainer) -> None:
        softmax = Trainer(
            trainer.client,
            trainer.keys,
            "s",
            size=9,
            spec=spec_json("softmax", 2, classes=[0, 1, 2]),
        )
        weights = np.arange(9.0) / 10  # (2, 3) coef then 3 intercepts
        softmax.publish(weights)
        regression = Trainer(trainer.client, trainer.keys, "r", size=3, spec=spec_json("linear", 2))
        regression.publish(np.array([2.0, -1.0, 0.5]))
        await at_version(http, 1, "s")
        await at_version(http, 1, "r")
        body = await predict(http, [[1.0, 2.0]], model="s")
        assert (
            body["predictions"]
            == model_types.from_spec(json.loads(softmax.spec), weights)
            .predict_proba_many([[1.0, 2.0]])
            .tolist()
        )
        assert (await predict(http, [[1.0, 2.0]], model="r"))["predictions"] == [0.5]

    serve(serving_redis, prefix, scenario, log_predictions=False)


def test_input_errors(serving_redis, prefix):
    async def scenario(http: TestClient, trainer: Trainer) -> None:
        trainer.publish(W)
        await at_version(http, 1)
        body = await predict(http, [[1, 2, 3]], model="nope", status=404)
        assert "nope" in body["error"]
        assert (await http.get("/v1/models/nope")).status == 404
        assert (
            "instances[1][1]"
            in (await predict(http, [[1, 2, 3], [1, "x", 3]], status=400))["error"]
        )
        assert "expected 3 values" in (await predict(http, [[1, 2]], status=400))["error"]
        assert (
            "event_id"
            in (await predict(http, [{"features": [1, 2, 3], "event_id": 5}], status=400))["error"]
        )
        assert "instances" in (await predict(http, [], status=400))["error"]
        assert "at most 5" in (await predict(http, [[1, 2, 3]] * 6, status=413))["error"]
        resp = await http.post("/v1/models/m:predict", data=b"x" * 5000)
        assert resp.status == 413 and "bytes" in (await resp.json())["error"]
        resp = await http.post("/v1/models/m:predict", data=b"{not json")
        assert resp.status == 400 and (await resp.json())["error"] == "body is not JSON"
        text = await metrics_text(http)
        assert 'flowlearn_predictor_requests_total{route="predict",status="413"} 2.0' in text

    serve(
        serving_redis,
        prefix,
        scenario,
        log_predictions=False,
        predictor={"max_instances": 5, "max_body_bytes": 4096},
    )


def test_pin_and_staleness_are_flagged(serving_redis, prefix):
    async def scenario(http: TestClient, trainer: Trainer) -> None:
        for i in range(3):
            trainer.publish(W + i)
        await at_version(http, 3)
        trainer.client.set(trainer.keys.pin("m"), 2)
        described = await at_version(http, 2)
        assert described["pinned"] == 2 and described["latest_version"] == 3
        body = await predict(http, [[0, 0, 0]])
        assert (body["model_version"], body["pinned"], body["pin_missing"]) == (2, 2, False)
        trainer.client.set(trainer.keys.pin("m"), 99)
        described = await at_version(http, 3)
        assert described["pin_missing"] is True
        body = await predict(http, [[0, 0, 0]])
        assert body["pin_missing"] is True and body["model_version"] == 3
        # stale_after_s is 0.2: with nothing new published, the model turns stale.
        await until("stale", lambda: predict(http, [[0, 0, 0]]), 5)

        async def stale() -> bool:
            return bool((await predict(http, [[0, 0, 0]]))["stale"])

        await until("the stale flag", stale, 5)
        text = await metrics_text(http)
        assert 'flowlearn_predictor_model_stale{model="m"} 1.0' in text
        assert 'flowlearn_predictor_pin_missing{model="m"} 1.0' in text
        assert 'flowlearn_predictor_fallbacks_total{model="m",reason="stale"}' in text
        assert 'flowlearn_predictor_fallbacks_total{model="m",reason="pin_missing"}' in text

    serve(serving_redis, prefix, scenario, log_predictions=False, predictor={"stale_after_s": 0.2})


def test_redis_outage_serves_last_good_weights_and_recovers(own_redis, prefix):
    async def scenario(http: TestClient, trainer: Trainer) -> None:
        trainer.publish(W)
        await at_version(http, 1)
        own_redis.stop()

        async def degraded() -> dict[str, Any] | None:
            body = await predict(http, [[1, 0, 0]])
            return body if body["degraded"] else None

        body = await until("the degraded flag", degraded)
        assert body["model_version"] == 1 and len(body["predictions"]) == 1
        assert "flowlearn_predictor_redis_up 0.0" in await metrics_text(http)
        assert (await http.get("/readyz")).status == 200  # it still serves
        own_redis.start()  # empty: no persistence
        client = own_redis.client()
        fresh = Trainer(client, trainer.keys, "m")  # the job republishes everything
        fresh.publish(W * 3)
        fresh.publish(W * 4)

        async def recovered() -> dict[str, Any] | None:
            body = await predict(http, [[1, 0, 0]])
            return body if not body["degraded"] and body["model_version"] == 2 else None

        body = await until("recovery", recovered)
        assert (
            body["predictions"]
            == model_types.from_spec(json.loads(fresh.spec), W * 4)
            .predict_proba_many(np.array([[1.0, 0, 0]]))
            .tolist()
        )
        client.close()

    serve(own_redis, prefix, scenario, log_predictions=False)


def test_prediction_log_records_what_was_served(serving_redis, prefix, tmp_path: Path):
    producer = FakeProducer()
    baseline_w = np.array([0.0, 0.0, 0.0, 2.0])
    write_baseline(tmp_path / "m.flc", json.loads(spec_json()), baseline_w, version=7)

    async def scenario(http: TestClient, trainer: Trainer) -> None:
        trainer.publish(W)
        await at_version(http, 1)
        body = await predict(http, [{"features": [1, 0, 0], "event_id": "ev-9"}, [0, 1, 0]])
        assert body["variant"] == "online"
        expected_shadow = (1 / (1 + np.exp(-np.array([2.0, 2.0])))).tolist()
        assert body["shadow"] == {
            "variant": "baseline",
            "model_version": 7,
            "predictions": expected_shadow,
        }
        await until("two log records", lambda: asyncio.sleep(0, len(producer.sent) == 2))
        topic, key, value = producer.sent[0]
        record = json.loads(value)
        assert (topic, key) == ("fl.events", b"m")
        assert record["event_id"] == "ev-9" and record["model_id"] == "m"
        assert record["features"] == [1, 0, 0] and record["score"] == body["predictions"][0]
        assert (record["model_version"], record["epoch"], record["variant"]) == (
            1,
            trainer.epoch,
            "online",
        )
        assert record["shadow"] == {
            "variant": "baseline",
            "model_version": 7,
            "score": expected_shadow[0],
        }
        assert abs(record["ts"] - time.time() * 1000) < 60_000
        second = json.loads(producer.sent[1][2])
        assert second["event_id"] == body["event_ids"][1] != "ev-9"
        await until(
            "two records acknowledged",
            lambda: has(http, "flowlearn_predictor_log_sent_total 2.0"),
        )

    serve(
        serving_redis,
        prefix,
        scenario,
        baselines={"m": tmp_path / "m.flc"},
        producer_factory=producer.factory,
    )


def test_ab_split_and_baseline_fallback(serving_redis, prefix, tmp_path: Path):
    write_baseline(tmp_path / "m.flc", json.loads(spec_json()), np.zeros(4), version=3)
    write_baseline(tmp_path / "only.flc", json.loads(spec_json()), np.zeros(4))

    async def scenario(http: TestClient, trainer: Trainer) -> None:
        # A model only a baseline knows is served from it, flagged as a fallback.
        body = await predict(http, [[1, 2, 3]], model="only")
        assert (body["variant"], body["fallback"], body["predictions"]) == ("baseline", True, [0.5])
        trainer.publish(W)
        await at_version(http, 1)
        variants = set()
        for i in range(40):
            body = await predict(http, [{"features": [1, 0, 0], "event_id": f"user-{i}"}])
            variants.add(body["variant"])
            other = "online" if body["variant"] == "baseline" else "baseline"
            assert body["shadow"]["variant"] == other
            again = await predict(http, [{"features": [1, 0, 0], "event_id": f"user-{i}"}])
            assert again["variant"] == body["variant"]  # stable per event id
        assert variants == {"online", "baseline"}

    serve(
        serving_redis,
        prefix,
        scenario,
        baselines={"m": tmp_path / "m.flc", "only": tmp_path / "only.flc"},
        ab_fraction=0.5,
        log_predictions=False,
    )


def test_kafka_down_never_slows_requests(serving_redis, prefix):
    """The settings point the log at a port where nothing listens (see conftest)."""

    async def scenario(http: TestClient, trainer: Trainer) -> None:
        trainer.publish(W)
        await at_version(http, 1)
        started = time.perf_counter()
        for _ in range(200):
            await predict(http, [[1, 0, 0]])
        per_request = (time.perf_counter() - started) / 200
        assert per_request < 0.02, f"{per_request * 1000:.1f} ms a request"

    serve(serving_redis, prefix, scenario)


def test_large_feature_matrices_are_bounded_and_scored_off_the_event_loop(
    serving_redis, prefix, monkeypatch
):
    """#23: 1,000 instances of a 2^18-feature hashed model allocated 2 GiB and held the
    event loop half a second. A request whose features pass predictor.max_matrix_bytes
    (for a hashed model: its sparse rows, 12 bytes a feature) is refused (413); one of more
    than OFF_LOOP_VALUES x 8 bytes is scored on a worker thread, with the same answer."""
    from flowlearn.serving import app as app_module

    d = 1 << 18
    hashed = json.dumps({**json.loads(spec_json(n_features=d)), "features": "hashed"})
    threaded: list[int] = []
    to_thread = asyncio.to_thread

    async def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
        if fn is app_module.answer:
            threaded.append(len(args[4]))  # the rows
        return await to_thread(fn, *args, **kwargs)

    monkeypatch.setattr(app_module.asyncio, "to_thread", counting)
    monkeypatch.setattr(app_module, "OFF_LOOP_VALUES", 1000)
    row = {f"f{i}": 0.1 * i for i in range(50)}  # 50 features: 608 bytes a row
    row_bytes = 50 * 12 + 8

    async def scenario(http: TestClient, trainer: Trainer) -> None:
        h = Trainer(trainer.client, trainer.keys, "h", size=d + 1, spec=hashed)
        h.publish(np.linspace(-1.0, 1.0, d + 1))
        await at_version(http, 1, "h")
        one = (await predict(http, [row], model="h"))["predictions"]
        assert threaded == []  # 76 values' worth: on the loop
        many = (await predict(http, [row] * 20, model="h"))["predictions"]
        assert threaded == [20]  # 1,521: on a worker thread
        assert many == one * 20
        body = await predict(http, [row] * 40, model="h", status=413)
        assert "predictor.max_matrix_bytes" in body["error"] and "40 instances" in body["error"]

    serve(
        serving_redis,
        prefix,
        scenario,
        log_predictions=False,
        predictor={"max_matrix_bytes": 30 * row_bytes + 8},
    )


def test_a_thousand_instances_of_a_2_18_hashed_model_are_scored_sparse_as_the_trainer(
    serving_redis, prefix
):
    """#23: the request was refused (413: its dense matrix, 2 GiB, passed
    max_matrix_bytes). Scored sparse, it is answered, with the trainer's scores bit for bit
    (the trainer's model and the predictor's share the sparse code)."""
    from flowlearn.core.features import rows_of
    from flowlearn.core.training import ModelTrainer

    spec = {"type": "logistic", "n_features": 2**18, "features": "hashed", "batch_size": 64}
    rng = np.random.default_rng(3)

    def rows(n: int) -> list[dict[str, Any]]:
        return [
            {
                "country": str(rng.choice(["fr", "de", "us"])),
                "device": str(rng.choice(["ios", "web"])),
                "age": float(rng.integers(18, 90)),
                "clicks": int(rng.integers(0, 30)),
            }
            for _ in range(n)
        ]

    train = rows(2000)
    model = ModelTrainer.create("h", spec)
    model.train_samples(rows_of(train, spec), rng.integers(0, 2, 2000).astype(np.float64))
    requested = rows(1000)
    expected = model.model.predict_proba_many(rows_of(requested, spec)).tolist()

    async def scenario(http: TestClient, trainer: Trainer) -> None:
        weights = model.model.weights_vector()
        h = Trainer(trainer.client, trainer.keys, "h", size=weights.size, spec=model.published_spec)
        h.publish(weights)
        await at_version(http, 1, "h")
        assert (await predict(http, requested, model="h"))["predictions"] == expected

    serve(serving_redis, prefix, scenario, log_predictions=False)
