"""``:choose``: a contextual bandit published by the trainer chooses in the predictor as it
would in the trainer (same seeds, same bits), and each choice is logged as the event its
reward will join."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from flowlearn.contracts.records import parse_event
from flowlearn.core.bandits import event_seed
from flowlearn.core.spec import ModelSpec
from flowlearn.core.training import ModelTrainer

from .conftest import Trainer
from .test_app import FakeProducer, at_version, predict, serve, until

RNG = np.random.default_rng(5)
CONTEXTS = RNG.normal(size=(200, 3)) * [1.0, 10.0, 100.0]


def trained(**form: Any) -> ModelTrainer:
    spec = ModelSpec(type="contextual_bandit", n_features=3, batch_size=32, **form).as_dict()
    trainer = ModelTrainer.create("b", spec)
    n = len(CONTEXTS)
    if "n_actions" in form:
        actions = RNG.integers(0, form["n_actions"], n).astype(np.float64)[:, None]
        rewards = (actions[:, 0] == (CONTEXTS[:, 0] > 0)).astype(np.float64)
    else:
        actions = RNG.normal(size=(n, form["n_action_features"]))
        rewards = (actions[:, 0] * CONTEXTS[:, 0] > 0).astype(np.float64)
    trainer.train_samples(np.column_stack([CONTEXTS, actions, np.full(n, 0.5)]), rewards)
    return trainer


def publish_bandit(trainer: Trainer, model: ModelTrainer) -> None:
    """Publish ``model``'s current weights as version 1 of model ``b``."""
    weights = model.model.weights_vector()
    b = Trainer(trainer.client, trainer.keys, "b", size=len(weights), spec=model.published_spec)
    b.publish(weights)


async def publish(http: TestClient, trainer: Trainer, model: ModelTrainer) -> None:
    """:func:`publish_bandit`, then wait until the predictor serves it."""
    publish_bandit(trainer, model)
    await at_version(http, 1, "b")


async def choose(http: TestClient, body: Any, status: int = 200, model: str = "b") -> Any:
    resp = await http.post(f"/v1/models/{model}:choose", json=body)
    answer = await resp.json()
    assert resp.status == status, answer
    return answer


@pytest.mark.parametrize("policy", ["thompson", "linucb", "epsilon_greedy"])
def test_choices_are_the_trainers_and_are_logged_as_feedback_events(serving_redis, prefix, policy):
    model = trained(n_actions=3, policy=policy)
    producer = FakeProducer()

    async def scenario(http: TestClient, trainer: Trainer) -> None:
        await publish(http, trainer, model)
        ids = [f"req-{i}" for i in range(6)]
        instances = [{"features": CONTEXTS[i].tolist(), "event_id": ids[i]} for i in range(6)]
        body = await choose(http, {"instances": instances})
        expected = model.model.choose_many(
            CONTEXTS[:6], seeds=np.array([event_seed(e) for e in ids])
        )
        assert [c["action"] for c in body["choices"]] == expected.actions.tolist()
        assert [c["propensity"] for c in body["choices"]] == expected.propensities.tolist()
        assert [c["probabilities"] for c in body["choices"]] == expected.probabilities.tolist()
        assert body["event_ids"] == ids and body["model_version"] == 1
        # A context without an event id gets one (and its seed from it).
        again = await choose(http, {"instances": [CONTEXTS[0].tolist()]})
        assert len(again["event_ids"][0]) == 32
        await until("7 log records", lambda: asyncio.sleep(0, len(producer.sent) == 7))
        spec = json.loads(model.published_spec)
        for i, (_topic, key, value) in enumerate(producer.sent[:6]):
            event = parse_event(value, lambda _m: {**ModelSpec().as_dict(), **spec})
            assert key == b"b" and event.event_id == ids[i]
            choice = body["choices"][i]
            assert event.features.tolist() == [
                *CONTEXTS[i].tolist(),
                float(choice["action"]),
                choice["propensity"],
            ]

    serve(serving_redis, prefix, scenario, producer_factory=producer.factory)


def test_action_features_choose_among_each_requests_candidates(serving_redis, prefix):
    model = trained(n_action_features=2)
    producer = FakeProducer()

    async def scenario(http: TestClient, trainer: Trainer) -> None:
        await publish(http, trainer, model)
        three = RNG.normal(size=(3, 2)).tolist()
        two = RNG.normal(size=(2, 2)).tolist()
        instances = [
            {"features": CONTEXTS[0].tolist(), "event_id": "x0", "actions": three},
            {"features": CONTEXTS[1].tolist(), "event_id": "x1", "actions": two},
        ]
        body = await choose(http, {"instances": instances})
        for i, (candidates, n) in enumerate(((three, 3), (two, 2))):
            expected = model.model.choose_many(
                CONTEXTS[i : i + 1], np.array([candidates]), seeds=[event_seed(f"x{i}")]
            )
            assert body["choices"][i]["action"] == int(expected.actions[0])
            assert len(body["choices"][i]["probabilities"]) == n
        await until("2 log records", lambda: asyncio.sleep(0, len(producer.sent) == 2))
        logged = json.loads(producer.sent[0][2])
        assert logged["action"] == three[body["choices"][0]["action"]]
        # Candidates are required, of the declared width.
        missing = await choose(http, {"instances": [CONTEXTS[0].tolist()]}, status=400)
        assert "instances[0].actions" in missing["error"]
        wrong = [{"features": CONTEXTS[0].tolist(), "actions": [[1.0]]}]
        assert "2 numbers each" in (await choose(http, {"instances": wrong}, 400))["error"]

    serve(serving_redis, prefix, scenario, producer_factory=producer.factory)


def test_a_bandit_does_not_predict_and_a_predictor_model_does_not_choose(serving_redis, prefix):
    model = trained(n_actions=2)

    async def scenario(http: TestClient, trainer: Trainer) -> None:
        publish_bandit(trainer, model)
        trainer.publish(np.array([1.0, -1.0, 0.5, 0.25]))
        await at_version(http, 1, "b")
        await at_version(http, 1, "m")
        refused = await predict(http, [CONTEXTS[0].tolist()], model="b", status=400)
        assert ":choose" in refused["error"]
        refused = await choose(http, {"instances": [[1.0, 0.0, 0.0]]}, status=400, model="m")
        assert "is a logistic model" in refused["error"]
        bad = await choose(http, {"instances": [[1.0, "x", 0.0]]}, status=400)
        assert "features[1]: expected a number" in bad["error"]

    serve(serving_redis, prefix, scenario, log_predictions=False)


def test_v2_infer_on_a_bandit_is_choose_in_tensors(serving_redis, prefix):
    model = trained(n_action_features=2)

    async def scenario(http: TestClient, trainer: Trainer) -> None:
        await publish(http, trainer, model)
        meta = await (await http.get("/v2/models/b")).json()
        assert [i["name"] for i in meta["inputs"]] == ["input-0", "actions"]
        assert [o["name"] for o in meta["outputs"]] == [
            "action",
            "propensity",
            "probabilities",
            "event_id",
        ]
        candidates = RNG.normal(size=(2, 3, 2))
        body = {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [2, 3],
                    "datatype": "FP64",
                    "data": CONTEXTS[:2].reshape(-1).tolist(),
                },
                {
                    "name": "actions",
                    "shape": [2, 3, 2],
                    "datatype": "FP64",
                    "data": candidates.reshape(-1).tolist(),
                },
                {"name": "event_id", "shape": [2], "datatype": "BYTES", "data": ["v0", "v1"]},
            ]
        }
        resp = await http.post("/v2/models/b/infer", json=body)
        answer = await resp.json()
        assert resp.status == 200, answer
        out = {o["name"]: o for o in answer["outputs"]}
        expected = model.model.choose_many(
            CONTEXTS[:2], candidates, seeds=np.array([event_seed("v0"), event_seed("v1")])
        )
        assert out["action"]["data"] == expected.actions.tolist()
        assert out["propensity"]["data"] == expected.propensities.tolist()
        assert out["probabilities"]["shape"] == [2, 3]
        assert out["event_id"]["data"] == ["v0", "v1"]
        no_candidates = {"inputs": body["inputs"][:1]}
        resp = await http.post("/v2/models/b/infer", json=no_candidates)
        assert resp.status == 400 and "'actions'" in (await resp.json())["error"]

    serve(serving_redis, prefix, scenario, log_predictions=False)
