"""Epoch fencing on the running stack (docs/architecture.md, "Redis"): a writer of an older
epoch (a zombie left over from a failover) cannot overwrite what the job published, and after
Redis lost a model's data and the epoch counter, the job's next epoch still publishes.

Before the fence, the snapshot write and the delta ``XADD`` ran in one ``MULTI``, which wrote
the zombie's snapshot even though Redis refused its delta; and a job restarted after the
counter was lost took epoch 1, older than the entries its previous run had written since, so
Redis refused every later delta while the job counted them published.
"""

from __future__ import annotations

import json
import os
import signal
import uuid

import numpy as np
import pytest

from flowlearn.contracts.redis_contract import (
    Keys,
    ModelVersion,
    Publisher,
    PublishOutcome,
    read_snapshot,
    redis_client,
)
from flowlearn.core import codec
from flowlearn.core.training import batch_plan
from flowlearn.devstack.producer import produce
from flowlearn.serving.scoring import scorer

from .conftest import wait_until
from .test_faults import (
    X_PROBE,
    Job,
    reference_weights,
    report,
    snapshot_where,
    taskmanager_pid,
    try_predict,
    wait_for_a_checkpoint,
)

pytestmark = pytest.mark.e2e


def test_a_zombie_writer_is_refused_and_a_lost_epoch_counter_does_not_stop_publication(
    stack, status
):
    settings, _ = stack
    batch = settings.job.batch_size
    model_id = f"fence-{uuid.uuid4().hex[:8]}"
    url = settings.predictor.url
    client = redis_client(settings.redis, timeout_s=5)
    keys = Keys(settings.redis.prefix)
    job = Job(settings, status()["job"]["id"])
    phases = [(61, batch * 10), (62, batch * 10), (63, batch * 10)]

    def send(seed: int, count: int) -> None:
        produce(
            bootstrap=settings.kafka.bootstrap,
            topics=settings.kafka.topics,
            model_id=model_id,
            count=count,
            rate=batch * 40,
            seed=seed,
            bulk=batch,
            quiet=True,
        )

    def applied(n: int) -> object:
        return snapshot_where(settings, model_id, lambda s: s.samples_applied >= n)

    # 1. The job trains and publishes; a predictor serves it.
    send(*phases[0])
    first = wait_until("the first phase published", lambda: applied(batch * 10), 60, 0.2)
    wait_until(
        "the predictor serving it",
        lambda: (a := try_predict(url, model_id)) and a["model_version"] == first.version,
        30,
        0.2,
    )

    # 2. A zombie: a publisher of an epoch older than the job's writes a later version.
    zombie = Publisher(client, keys, settings.redis.deltas_maxlen)
    zombie.epoch = first.epoch - 1
    garbage = np.full(first.weights.size, 1e6)
    stale = ModelVersion(
        model_id,
        first.version + 1000,
        first.version,
        first.samples_applied + 1,
        json.dumps(first.spec),
        codec.make_delta(first.weights, garbage),
        codec.encode_array(garbage),
    )
    assert zombie.publish(stale) is PublishOutcome.REFUSED
    held = read_snapshot(client, keys, model_id)
    assert held is not None and (held.epoch, held.version) == (first.epoch, first.version)
    assert held.weights.tobytes() == first.weights.tobytes()
    answer = wait_until("the predictor answering", lambda: try_predict(url, model_id), 30, 0.2)
    assert (answer["epoch"], answer["model_version"]) == (first.epoch, first.version)

    # 3. Redis loses the model's keys and the epoch counter (as a restart without
    # persistence would); the running job publishes on under its epoch...
    client.delete(keys.snapshot(model_id), keys.deltas(model_id), keys.epoch)
    send(*phases[1])
    mid = wait_until("the second phase published", lambda: applied(batch * 20), 60, 0.2)
    # ... and is then killed: its next epoch must still publish.
    wait_for_a_checkpoint(job)
    pid = taskmanager_pid(settings)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until("a new TaskManager", lambda: taskmanager_pid(settings) not in (None, pid), 60, 0.5)
    wait_until("every task RUNNING again", job.running, 120, 0.5)
    send(*phases[2])
    n = sum(count for _, count in phases)
    final = wait_until(f"{n} samples applied after the restart", lambda: applied(n), 120, 0.2)

    assert final.samples_applied == n
    assert final.version == len(batch_plan(n, batch))
    assert mid.epoch == first.epoch and final.epoch > mid.epoch
    assert final.weights.tobytes() == reference_weights(settings, model_id, phases).tobytes()
    # The delta stream goes on with the new epoch: its last entry is the snapshot's version.
    last = client.xrevrange(keys.deltas(model_id), count=1)
    assert last and bytes(last[0][0]) == f"{final.epoch}-{final.version}".encode()
    expected = scorer(final.spec, final.weights)(np.array([X_PROBE])).tolist()
    served = wait_until(
        "the predictor on the new epoch's final version",
        lambda: (
            (a := try_predict(url, model_id))
            and (a["epoch"], a["model_version"]) == (final.epoch, final.version)
            and a
        ),
        60,
        0.2,
    )
    assert served["predictions"] == expected
    report(f"fencing: epochs {first.epoch} -> {final.epoch}, final version {final.version}")
