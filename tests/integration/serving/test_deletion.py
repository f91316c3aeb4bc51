"""Deleting a model while the job runs, against a real Redis: the publisher's keys, the
follower forgetting the model (and keeping one that merely went missing), the 404s.

The follower is driven by the tests (``sync``), never by its thread: each step is then
exact, with no waiting.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from flowlearn.contracts.records import now_ms
from flowlearn.contracts.redis_contract import Keys, ModelVersion, PublishOutcome, model_versions
from flowlearn.core import codec
from flowlearn.serving.app import PREDICTOR, make_app
from flowlearn.serving.baseline import write_baseline
from flowlearn.serving.metrics import Metrics
from flowlearn.serving.replica import Follower

from .conftest import RedisServer, Trainer, spec_json


@pytest.fixture
def trainer(serving_redis: RedisServer, prefix: str) -> Iterator[Trainer]:
    client = serving_redis.client()
    yield Trainer(client, Keys(prefix), "m")
    client.close()


def follower(server: RedisServer, trainer: Trainer) -> Follower:
    return Follower(server.client(), trainer.keys, Metrics())


def recreate(trainer: Trainer) -> None:
    """The job creates the model again under the same epoch: its versions start at 1."""
    trainer.version, trainer.weights, trainer.first = 0, np.zeros(len(trainer.weights)), True


def model_keys(trainer: Trainer) -> list[str]:
    k = trainer.keys
    return [k.snapshot(trainer.model_id), k.deltas(trainer.model_id), k.pin(trainer.model_id)]


def test_delete_removes_the_keys_and_records_when(trainer):
    client, keys = trainer.client, trainer.keys
    trainer.publish(np.ones(4))
    trainer.publish(np.full(4, 2.0))
    client.set(keys.pin("m"), "1")
    assert client.exists(*model_keys(trainer)) == 3
    before = now_ms()
    trainer.publisher.delete("m")
    after = now_ms()
    assert client.exists(*model_keys(trainer)) == 0
    assert not client.sismember(keys.models, "m")
    deleted_at = int(client.hget(keys.deleted, "m"))
    assert before <= deleted_at <= after
    assert model_versions(client, keys) == {}
    trainer.publisher.delete("m")  # a retry changes nothing but the time
    assert client.exists(*model_keys(trainer)) == 0
    assert client.hexists(keys.deleted, "m") and not client.sismember(keys.models, "m")


def test_publishing_a_deleted_model_again_makes_it_live(trainer):
    client, keys = trainer.client, trainer.keys
    trainer.publish(np.ones(4))
    trainer.publisher.delete("m")
    recreate(trainer)
    trainer.publish(np.full(4, 3.0))
    assert not client.hexists(keys.deleted, "m")
    assert client.sismember(keys.models, "m")
    assert model_versions(client, keys)["m"]["version"] == 1
    # A retried write of a version already written is still refused, and still live.
    retry = ModelVersion(
        "m", 1, 0, 10, trainer.spec, codec.make_delta(np.zeros(4), trainer.weights), None
    )
    assert trainer.publisher.publish(retry) is PublishOutcome.ALREADY_WRITTEN
    assert not client.hexists(keys.deleted, "m")


def test_the_follower_forgets_a_deleted_model(serving_redis, trainer):
    other = Trainer(trainer.client, trainer.keys, "other")
    trainer.publish(np.ones(4))
    other.publish(np.ones(4))
    f = follower(serving_redis, trainer)
    f.sync()
    assert set(f.replicas) == {"m", "other"} and f.deleted == {}
    trainer.publisher.delete("m")
    f.sync()
    assert set(f.replicas) == {"other"}
    assert f.deleted == {"m": int(trainer.client.hget(trainer.keys.deleted, "m"))}
    other.publish(np.full(4, 2.0))  # the streams still read: none of a dropped model
    f.sync()
    latest = f.replicas["other"].latest
    assert latest is not None and latest.version == 2


def test_an_unreadable_deletion_time_still_deletes(serving_redis, trainer):
    trainer.publish(np.ones(4))
    f = follower(serving_redis, trainer)
    f.sync()
    trainer.publisher.delete("m")
    trainer.client.hset(trainer.keys.deleted, "m", "yesterday")
    f.sync()  # must not raise: every other model's refresh depends on it
    assert "m" not in f.replicas and f.deleted == {"m": 0}
    errors = f.metrics.registry.get_sample_value(
        "flowlearn_predictor_stream_errors_total", {"model": "m", "kind": "bad_deleted"}
    )
    assert errors == 1


def test_a_model_missing_but_not_deleted_is_kept(serving_redis, trainer):
    trainer.publish(np.ones(4))
    f = follower(serving_redis, trainer)
    f.sync()
    # Lost, not deleted (what a Redis restart without persistence looks like for one model).
    trainer.client.delete(*model_keys(trainer))
    trainer.client.srem(trainer.keys.models, "m")
    f.sync()
    served = f.replicas["m"].served
    assert served is not None and served.version.weights.tolist() == [1.0] * 4
    assert f.deleted == {}


def test_a_recreated_model_is_served_again(serving_redis, trainer):
    trainer.publish(np.ones(4))
    f = follower(serving_redis, trainer)
    f.sync()
    trainer.publisher.delete("m")
    f.sync()
    assert "m" not in f.replicas
    recreate(trainer)
    trainer.publish(np.full(4, 5.0))
    trainer.publish(np.full(4, 6.0))
    f.sync()
    latest = f.replicas["m"].latest
    assert latest is not None and (latest.epoch, latest.version) == (trainer.epoch, 2)
    assert latest.weights.tolist() == [6.0] * 4
    assert f.deleted == {}


def test_a_listed_model_is_live_whatever_the_deleted_hash_says(serving_redis, trainer):
    trainer.publish(np.ones(4))
    f = follower(serving_redis, trainer)
    f.sync()
    # What the follower reads when a publish lands between its two reads (the deleted hash,
    # then the models set): the model in both. It was created again: live.
    trainer.client.hset(trainer.keys.deleted, "m", now_ms())
    f.sync()
    assert f.replicas["m"].served is not None and f.deleted == {}


def test_a_model_recreated_between_two_refreshes_starts_its_new_lineage(serving_redis, trainer):
    for i in range(3):
        trainer.publish(np.full(4, float(i)), snapshot=True)
    f = follower(serving_redis, trainer)
    f.sync()
    # The follower never sees the deletion: the snapshot moving back within the epoch is
    # what tells it the lineage is a new one.
    trainer.publisher.delete("m")
    recreate(trainer)
    trainer.publish(np.full(4, 9.0))
    f.sync()
    latest = f.replicas["m"].latest
    assert latest is not None and latest.version == 1 and latest.weights.tolist() == [9.0] * 4
    assert f.deleted == {}


Scenario = Callable[[TestClient, Follower, Trainer], Awaitable[None]]


def serve(server: RedisServer, prefix: str, scenario: Scenario, **options: Any) -> None:
    """Run ``scenario`` against a predictor app whose follower the scenario drives."""
    settings = server.settings(prefix)

    async def main() -> None:
        client = server.client()
        trainer = Trainer(client, Keys(prefix), "m")
        app = make_app(settings, log_predictions=False, **options)
        app.cleanup_ctx.clear()  # no follower thread: the scenario calls sync() itself
        f = app[PREDICTOR].follower
        try:
            async with TestClient(TestServer(app)) as http:
                await scenario(http, f, trainer)
        finally:
            f.client.close()
            client.close()

    asyncio.run(main())


async def answer(http: TestClient, method: str, path: str, status: int, **kw: Any) -> Any:
    resp = await http.request(method, path, **kw)
    body = await resp.json()
    assert resp.status == status, body
    return body


def gauges_of_m(metrics: str) -> list[str]:
    """The lines of ``/metrics`` that are model m's gauges (its counters stay)."""
    gauges = ("flowlearn_predictor_model_", "flowlearn_predictor_pin_missing")
    return [
        line for line in metrics.splitlines() if line.startswith(gauges) and 'model="m"' in line
    ]


def test_a_deleted_model_answers_404_saying_so(serving_redis, prefix):
    async def scenario(http: TestClient, f: Follower, trainer: Trainer) -> None:
        predict = {"json": {"instances": [[1, 0, 0]]}}
        trainer.publish(np.array([1.0, -1.0, 0.5, 0.25]))
        f.sync()
        await answer(http, "POST", "/v1/models/m:predict", 200, **predict)
        assert len(gauges_of_m(await (await http.get("/metrics")).text())) == 6
        trainer.publisher.delete("m")
        f.sync()
        gone = {"error": "model 'm' was deleted"}
        assert await answer(http, "POST", "/v1/models/m:predict", 404, **predict) == gone
        assert await answer(http, "GET", "/v1/models/m", 404) == gone
        assert await answer(http, "GET", "/v1/models/never", 404) == {
            "error": "model 'never' not found"
        }
        assert await answer(http, "GET", "/v1/models", 200) == {"models": []}
        assert gauges_of_m(await (await http.get("/metrics")).text()) == []
        recreate(trainer)
        trainer.publish(np.array([0.0, 0.0, 0.0, 2.0]))
        f.sync()
        body = await answer(http, "POST", "/v1/models/m:predict", 200, **predict)
        assert body["model_version"] == 1
        assert (await answer(http, "GET", "/v1/models/m", 200))["version"] == 1

    serve(serving_redis, prefix, scenario)


def test_a_deleted_model_is_not_served_from_its_baseline(serving_redis, prefix, tmp_path: Path):
    write_baseline(tmp_path / "m.flc", json.loads(spec_json()), np.zeros(4), version=3)

    async def scenario(http: TestClient, f: Follower, trainer: Trainer) -> None:
        predict = {"json": {"instances": [[1, 0, 0]]}}
        await answer(http, "POST", "/v1/models/m:predict", 200, **predict)  # baseline only
        trainer.publish(np.array([1.0, -1.0, 0.5, 0.25]))
        f.sync()
        trainer.publisher.delete("m")
        f.sync()
        gone = {"error": "model 'm' was deleted"}
        assert await answer(http, "POST", "/v1/models/m:predict", 404, **predict) == gone
        assert await answer(http, "GET", "/v1/models/m", 404) == gone
        assert await answer(http, "GET", "/v1/models", 200) == {"models": []}

    serve(serving_redis, prefix, scenario, baselines={"m": tmp_path / "m.flc"})
