"""Rollback end to end: automatic (a poisoned stream) and job-level (a savepoint)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid

import numpy as np
import pytest

from flowlearn.contracts.redis_contract import (
    DeltaEntry,
    Keys,
    delta_stream_id,
    read_snapshot,
    redis_client,
)
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.core import codec, model_types
from flowlearn.core.training import ModelTrainer, batch_plan
from flowlearn.devstack.producer import DriftingStream, produce, send_raw
from flowlearn.registry.mlflow_store import Registry

from .conftest import flowlearn, wait_until
from .test_drift import alerts_of

pytestmark = pytest.mark.e2e


def accuracy(spec, weights, X, y):
    """Of the model a published spec and weights vector serve (its feature pipeline too)."""
    return float((model_types.from_spec(spec, weights).predict_many(X) == y).mean())


def weights_published_at(client, keys, model, snap, version):
    """The weights the trainer published as ``version`` of the snapshot's epoch.

    The rollback may fire while the last poisoned batch is still on its way, so the snapshot
    can already be newer. The rollback's delta then says what ``version`` held: poisoned
    training moved every coordinate away from the checkpoint, so it overwrites all of them.
    """
    if snap.version == version:
        return snap.weights
    sid = delta_stream_id(snap.epoch, version)
    entries = client.xrange(keys.deltas(model), min=sid, max=sid)
    assert entries, f"the delta of version {version} is no longer in the stream"
    entry = DeltaEntry.from_entry(*entries[0])
    assert entry.delta.indices.size == snap.weights.size, "the rollback left coordinates alone"
    weights = np.zeros_like(snap.weights)
    codec.apply_delta(weights, entry.delta)
    return weights


def test_a_poisoned_model_is_rolled_back_to_its_registered_checkpoint(stack):
    settings, _ = stack
    model = "poison-e2e"  # auto_rollback = true in the e2e config
    stream = DriftingStream(n_features=10, seed=31, model_id=model)
    clean, poisoned = stream.take(3200, 1000), stream.take(1600, 4200)
    for r in poisoned:
        r["label"] = 1 - r["label"]
    send_raw(
        settings.kafka.bootstrap,
        settings.kafka.topics.samples,
        [json.dumps(r).encode() for r in clean + poisoned],
        key=model,
    )

    def rollback_done():
        return next(
            (
                a
                for a in alerts_of(settings, model)
                if a["kind"] == "rollback" and a["detail"].get("ok")
            ),
            None,
        )

    done = wait_until("the trainer's rollback alert", rollback_done, timeout_s=120, every_s=1)
    assert done["detail"]["source"] == "checkpoint:auto-rollback"
    target, new_version = done["detail"]["args"]["version"], done["detail"]["new_version"]
    degraded = [a for a in alerts_of(settings, model) if a["kind"] == "degraded"]
    assert degraded and degraded[0]["detail"]["to_version"] == target

    client = redis_client(settings.redis, timeout_s=5)
    keys = Keys(settings.redis.prefix)
    snap = wait_until(
        f"{model} at version {new_version}",
        lambda: (s := read_snapshot(client, keys, model)) and s.version >= new_version and s,
        timeout_s=60,
    )
    registry = Registry.from_settings(settings)
    registered = wait_until(
        f"checkpoint {target} registered", lambda: registry.get(model, target), timeout_s=60
    )
    assert registered.samples_applied <= 3200  # a checkpoint from before the poison
    served = weights_published_at(client, keys, model, snap, new_version)
    assert codec.encode_array(served) == registry.load_weights(model, target)
    assert registered.metrics["windowed_accuracy"] > 0.75

    # Accuracy recovers: the restored model against what training on the poison gave.
    held_out = DriftingStream(n_features=10, seed=31, model_id=model)
    held_out.take(4800, 0)
    test = held_out.take(3000, 0)
    X = np.array([r["features"] for r in test])
    y = np.array([r["label"] for r in test])
    trainer = ModelTrainer.create(model, ModelSpecs(settings).models[model].as_dict())
    data = clean + poisoned
    Xs = np.array([r["features"] for r in data])
    ys = np.array([r["label"] for r in data], dtype=float)
    trainer.train_samples(Xs, ys)
    poisoned_accuracy = accuracy(snap.spec, trainer.model.weights_vector(), X, y)
    restored_accuracy = accuracy(snap.spec, served, X, y)
    assert restored_accuracy > poisoned_accuracy + 0.2, (restored_accuracy, poisoned_accuracy)
    assert restored_accuracy > 0.75


class Poller(threading.Thread):
    """Asks the predictor for one fixed instance as fast as it answers."""

    def __init__(self, settings, model_ids):
        super().__init__(daemon=True)
        self.url = settings.predictor.url
        self.model_ids = model_ids
        self.seen: list[tuple[str, int, int, float]] = []
        self.stop = threading.Event()

    def run(self):
        body = json.dumps({"instances": [[0.3] * 10]}).encode()
        while not self.stop.is_set():
            for m in self.model_ids:
                req = urllib.request.Request(
                    f"{self.url}/v1/models/{m}:predict",
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(req, timeout=2) as resp:
                        a = json.loads(resp.read())
                except OSError:
                    continue
                self.seen.append((m, a["epoch"], a["model_version"], a["predictions"][0]))
            time.sleep(0.02)


def test_savepoint_rollback_resumes_a_new_epoch_and_never_mixes_lineages(stack):
    settings, config = stack
    tag = uuid.uuid4().hex[:6]
    quiet, busy = f"sp-quiet-{tag}", f"sp-busy-{tag}"
    client = redis_client(settings.redis, timeout_s=5)
    keys = Keys(settings.redis.prefix)

    def applied(model, n):
        return wait_until(
            f"{model}: {n} samples applied",
            lambda: (s := read_snapshot(client, keys, model)) and s.samples_applied == n and s,
            timeout_s=120,
        )

    # Bulk records of one batch each: batch boundaries, hence versions, replay identically.
    for model in (quiet, busy):
        produce(
            settings.kafka.bootstrap,
            settings.kafka.topics,
            model_id=model,
            count=640,
            rate=1e9,
            seed=3,
            bulk=settings.job.batch_size,
            quiet=True,
        )
    before = {m: applied(m, 640) for m in (quiet, busy)}
    out = flowlearn("savepoint", "--reason", "e2e", config=config)
    assert out.returncode == 0, out.stderr
    entry = json.loads(flowlearn("savepoints", "--json", config=config).stdout)[-1]
    assert entry["models"][quiet]["version"] == before[quiet].version
    # After the savepoint only the busy model learns more (replayed after the rollback).
    produce(
        settings.kafka.bootstrap,
        settings.kafka.topics,
        model_id=busy,
        count=640,
        rate=1e9,
        seed=4,
        bulk=settings.job.batch_size,
        quiet=True,
    )
    busy_final = applied(busy, 1280)

    poller = Poller(settings, [quiet, busy])
    poller.start()
    try:
        t0 = time.monotonic()
        out = flowlearn("rollback", "--savepoint", entry["path"], config=config)
        assert out.returncode == 0, out.stdout + out.stderr
        rollback_s = time.monotonic() - t0
        assert "stop with savepoint" in out.stdout and "total" in out.stdout
        wait_until(
            "both models served under the new epoch",
            lambda: (
                {m for m, e, _, _ in poller.seen[-20:] if e > before[quiet].epoch} == {quiet, busy}
            ),
            timeout_s=90,
        )
        wait_until(
            "the busy model replayed to its final version",
            lambda: any(
                m == busy and e > busy_final.epoch and v == busy_final.version
                for m, e, v, _ in poller.seen
            ),
            timeout_s=90,
        )
    finally:
        poller.stop.set()
        poller.join()
    print(f"savepoint rollback took {rollback_s:.1f}s")

    quiet_now = read_snapshot(client, keys, quiet)
    assert quiet_now.epoch > before[quiet].epoch and quiet_now.version == before[quiet].version
    assert quiet_now.weights.tobytes() == before[quiet].weights.tobytes()
    assert read_snapshot(client, keys, busy).samples_applied == 1280  # replayed exactly once
    # No mixed lineage: one version number always answers with the same prediction, in
    # whichever epoch it was served; and within an epoch versions never go back.
    by_version: dict[tuple[str, int], set[float]] = {}
    last: dict[tuple[str, int], int] = {}
    for m, e, v, p in poller.seen:
        by_version.setdefault((m, v), set()).add(p)
        assert v >= last.get((m, e), v), f"{m} went back within epoch {e}"
        last[(m, e)] = v
    mixed = {k: ps for k, ps in by_version.items() if len(ps) > 1}
    assert not mixed, mixed


def test_a_batch_baseline_is_registered_and_warm_starts_the_online_model(stack, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flowlearn.serving.baseline import load_baseline

    settings, config = stack
    model = f"warm-{uuid.uuid4().hex[:6]}"
    history = DriftingStream(n_features=10, seed=41, model_id=model).take(3000, 0)
    data = tmp_path / "history.parquet"
    pq.write_table(
        pa.table(
            {
                "model_id": [r["model_id"] for r in history],
                "features": [r["features"] for r in history],
                "label": [float(r["label"]) for r in history],
            }
        ),
        data,
    )
    baseline_file = tmp_path / "baseline.flc"
    out = flowlearn(
        "train-batch",
        "--model",
        model,
        "--data",
        str(data),
        "--warm-start",
        "--out",
        str(baseline_file),
        config=config,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "registered baseline 1" in out.stdout

    done = wait_until(
        "the warm start alert",
        lambda: next(
            (a for a in alerts_of(settings, model) if a["detail"].get("command") == "warm_start"),
            None,
        ),
        timeout_s=120,
        every_s=1,
    )
    assert done["detail"]["ok"], done
    client = redis_client(settings.redis, timeout_s=5)
    snap = wait_until(
        f"{model} published",
        lambda: read_snapshot(client, Keys(settings.redis.prefix), model),
        timeout_s=60,
    )
    assert snap.version == done["detail"]["new_version"] == 1
    registry = Registry.from_settings(settings)
    baseline = registry.latest_baseline(model)
    assert baseline is not None and baseline.metrics["holdout_accuracy"] > 0.75
    registered = registry.load_weights(model, 1, kind="baseline")
    assert codec.encode_array(snap.weights) == registered  # bit for bit
    assert load_baseline(baseline_file).weights.tobytes() == snap.weights.tobytes()


def test_a_savepoint_restores_into_changed_operator_code(stack, tmp_path):
    """docs/architecture.md: uids and state descriptors unchanged -> the savepoint restores into
    new code."""
    import shutil

    from flowlearn.devstack import jobctl

    settings, _ = stack
    model = f"upgrade-{uuid.uuid4().hex[:6]}"
    client = redis_client(settings.redis, timeout_s=5)
    keys = Keys(settings.redis.prefix)

    def applied(n):
        return wait_until(
            f"{model}: {n} samples applied",
            lambda: (s := read_snapshot(client, keys, model)) and s.samples_applied == n and s,
            timeout_s=120,
        )

    produce(
        settings.kafka.bootstrap,
        settings.kafka.topics,
        model_id=model,
        count=320,
        rate=1e9,
        seed=5,
        bulk=settings.job.batch_size,
        quiet=True,
    )
    before = applied(320)
    # "Version 2" of the job: its alerts carry a new field; state layout unchanged.
    v2 = tmp_path / "job-v2"
    shutil.copytree(jobctl.stage_job_sources(settings), v2)
    records = v2 / "flowlearn" / "contracts" / "records.py"
    code = records.read_text()
    line = '"ts": now_ms() if ts is None else ts}'
    assert line in code
    records.write_text(code.replace(line, line[:-1] + ', "code": "v2"}'))
    job = jobctl.find_job(settings)
    path = jobctl.stop_with_savepoint(settings, job, reason="upgrade test")
    try:
        jobctl.submit(settings, from_savepoint=path, job_sources=v2)
        produce(
            settings.kafka.bootstrap,
            settings.kafka.topics,
            model_id=model,
            count=320,
            rate=1e9,
            seed=6,
            bulk=settings.job.batch_size,
            quiet=True,
        )
        after = applied(640)  # the restored state went on counting
        batch = settings.job.batch_size
        assert after.version == before.version + len(batch_plan(320, batch, samples_learnt=320))
        send_raw(
            settings.kafka.bootstrap,
            settings.kafka.topics.control,
            [
                json.dumps(
                    {
                        "model_id": model,
                        "command": "set_learning_rate",
                        "args": {"learning_rate": 0.01},
                        "ts": 1,
                        "source": "test",
                    }
                ).encode()
            ],
            key=model,
        )
        alert = wait_until(
            "the set_learning_rate alert",
            lambda: next(
                (
                    a
                    for a in alerts_of(settings, model)
                    if a["detail"].get("command") == "set_learning_rate"
                ),
                None,
            ),
            timeout_s=60,
            every_s=1,
        )
        assert alert["detail"]["ok"] and alert.get("code") == "v2", alert  # the new code
    finally:  # back to this checkout's code for the tests that follow
        running = jobctl.find_job(settings)
        back = (
            jobctl.stop_with_savepoint(settings, running, reason="upgrade test done")
            if running
            else path
        )
        jobctl.submit(settings, from_savepoint=back)
