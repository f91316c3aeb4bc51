"""A contextual bandit on the real stack: created at runtime, choosing in the predictor
(``:choose``, each choice logged to fl.events), its rewards sent on fl.labels after a
TaskManager was SIGKILLed while the choices waited in the label join: every reward is joined
and learnt exactly once, and the served posterior is the one a trainer that learnt the same
feedback once, in order, holds, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
import uuid
from typing import Any

import numpy as np
import pytest

from flowlearn.contracts.records import now_ms
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.core.model_types import n_model_weights
from flowlearn.core.training import ModelTrainer
from flowlearn.devstack.producer import send_raw

from .conftest import flowlearn, on_every_worker, wait_until
from .test_faults import Job, snapshot_where, taskmanager_pid, wait_for_a_checkpoint

pytestmark = pytest.mark.e2e

SPEC = {"type": "contextual_bandit", "n_features": 3, "n_actions": 3, "scale": "none"}


def choose(url: str, model_id: str, contexts: np.ndarray, ids: list[str]) -> list[Any]:
    body = {
        "instances": [
            {"features": c.tolist(), "event_id": e} for c, e in zip(contexts, ids, strict=True)
        ]
    }
    req = urllib.request.Request(
        f"{url}/v1/models/{model_id}:choose",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer = json.loads(resp.read())
    assert answer["logged"] and answer["event_ids"] == ids
    return list(answer["choices"])


def test_rewards_join_choices_exactly_once_through_a_taskmanager_kill(stack, status):
    settings, config = stack
    model_id = f"bandit-{uuid.uuid4().hex[:8]}"
    created = flowlearn(
        "models",
        "create",
        "--model",
        model_id,
        "--type",
        SPEC["type"],
        "--n-features",
        str(SPEC["n_features"]),
        f"--set=n_actions={SPEC['n_actions']}",
        '--set=scale="none"',
        config=config,
    )
    assert created.returncode == 0, created.stderr
    url = settings.predictor.url

    def loaded() -> bool:
        try:
            choose(url, model_id, np.zeros((1, 3)), [f"{model_id}-probe"])
        except OSError:  # 404 or 503 until the predictor holds version 1
            return False
        return True

    wait_until(
        f"every predictor worker choosing for {model_id}", lambda: on_every_worker(loaded), 60
    )

    rng = np.random.default_rng(61)
    n = 200
    contexts = rng.normal(size=(n, 3))
    ids = [f"{model_id}-{i}" for i in range(n)]
    choices = []
    for start in range(0, n, 25):
        part = slice(start, start + 25)
        choices += choose(url, model_id, contexts[part], ids[part])
    actions = np.array([c["action"] for c in choices], dtype=np.float64)
    propensities = np.array([c["propensity"] for c in choices])
    # Action 0 pays when the first feature is positive, action 1 when it is not.
    rewards = np.where(contexts[:, 0] > 0, actions == 0, actions == 1).astype(np.float64)

    # The choices wait in the join's state (two checkpoints: the second began after they
    # all were there), then the TaskManager dies.
    job = Job(settings, status()["job"]["id"])
    restarts_before = job.restarts()
    wait_for_a_checkpoint(job)
    wait_for_a_checkpoint(job)
    pid = taskmanager_pid(settings)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until("the restart count to grow", lambda: job.restarts() > restarts_before, 120, 1)
    wait_until("every task RUNNING again", job.running, timeout_s=120, every_s=0.5)

    base = now_ms()
    send_raw(
        settings.kafka.bootstrap,
        settings.kafka.topics.labels,
        [
            json.dumps(
                {"model_id": model_id, "event_id": e, "ts": base + i, "label": float(r)}
            ).encode()
            for i, (e, r) in enumerate(zip(ids, rewards, strict=True))
        ],
        key=model_id,
    )
    final = wait_until(
        f"{n} rewards learnt",
        lambda: snapshot_where(settings, model_id, lambda s: s.samples_applied >= n),
        timeout_s=120,
        every_s=0.2,
    )
    assert final.samples_applied == n  # the probe's choice got no reward: not learnt

    # The posterior is cut-independent (each sample added in order): whatever batches the
    # live job cut, and whatever it replayed after the kill, it equals one pass in order.
    spec = json.loads(ModelSpecs(settings).runtime_entry(SPEC))
    reference = ModelTrainer.create(model_id, spec)
    rows = np.column_stack([contexts, actions, propensities])
    reference.train_samples(rows, rewards)
    expected = reference.model.weights_vector()
    size = n_model_weights(final.spec, final.weights)
    assert final.weights[:size].tobytes() == expected[:size].tobytes()
    # The learnt posterior prefers the paying action on either side.
    after = choose(url, model_id, np.array([[2.0, 0.0, 0.0], [-2.0, 0.0, 0.0]]), ["x", "y"])
    assert [int(np.argmax(c["probabilities"])) for c in after] == [0, 1]
