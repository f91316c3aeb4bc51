"""The job at parallelism 2 on two TaskManagers: rescaled from a savepoint (1 -> 2 -> 1),
and through a TaskManager kill in between, every model's versions, sample counts and weights
go on bit for bit as if it had trained once, in order, at parallelism 1.

The shared stack runs one TaskManager; this module starts a second one for its test (as
``flink.taskmanagers = 2`` would) and stops it at the end, leaving the job at parallelism 1
on the first, as the other modules expect it.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowlearn.conf import Settings, load_settings
from flowlearn.core.training import batch_plan
from flowlearn.devstack import jobctl, processes
from flowlearn.devstack.flink_cluster import flink_rest, start_flink

from .conftest import flowlearn, taskmanagers_of, wait_until
from .test_faults import (
    Job,
    Producer,
    reference_weights,
    report,
    snapshot_where,
    wait_for_a_checkpoint,
)

pytestmark = pytest.mark.e2e

TWO = {"FLOWLEARN__FLINK__TASKMANAGERS": "2"}
SECOND = "taskmanager-2"


def trainer_parallelism(settings: Settings, job_id: str) -> int:
    vertices = flink_rest(settings, f"/jobs/{job_id}")["vertices"]
    return int(next(v["parallelism"] for v in vertices if "trainer" in v["name"]))


def running_job(settings: Settings) -> Job:
    info = wait_until("a running job", lambda: jobctl.find_job(settings), timeout_s=60)
    job = Job(settings, info.id)
    wait_until("every task RUNNING", job.running, timeout_s=120, every_s=0.5)
    return job


def rescale(config: Path, parallelism: int) -> None:
    out = flowlearn("rescale", "--parallelism", str(parallelism), config=config, env=TWO)
    assert out.returncode == 0, f"rescale failed:\n{out.stdout}\n{out.stderr}"
    report(" | ".join(out.stdout.strip().splitlines()))


@pytest.fixture
def two_taskmanagers(stack) -> Iterator[tuple[Settings, Path]]:
    """The shared stack with a second TaskManager; afterwards the job is back at
    parallelism 1 and the second TaskManager is gone."""
    _, config = stack
    wide = load_settings(config, env=TWO)
    start_flink(wide)  # starts what is missing: the second TaskManager
    try:
        yield wide, config
    finally:
        info = jobctl.find_job(wide)
        if info is not None and trainer_parallelism(wide, info.id) != 1:
            rescale(config, 1)
        # Its slots may hold the job: then it fails over to the first TaskManager's slots.
        processes.stop_process(wide, SECOND)
        processes.stop_process(wide, f"{SECOND}-child")
        running_job(wide)


def test_rescale_and_a_taskmanager_kill_at_parallelism_2_keep_every_model_exact(
    two_taskmanagers,
):
    settings, config = two_taskmanagers
    batch = settings.job.batch_size
    # Several models, so that both subtasks of the trainer own some (their key groups).
    models = [f"par{i}-{uuid.uuid4().hex[:6]}" for i in range(4)]
    phases: list[tuple[int, int]] = []  # (seed, count), the same for every model

    def send(seed: int, count: int, rate: float) -> list[Producer]:
        phases.append((seed, count))
        producers = [
            Producer(settings, m, count, rate=rate, seed=seed + i) for i, m in enumerate(models)
        ]
        for p in producers:
            p.start()
        return producers

    def sent_so_far(i: int) -> list[tuple[int, int]]:
        return [(seed + i, n) for seed, n in phases]

    def all_applied(what: str) -> dict[str, Any]:
        total = sum(n for _, n in phases)
        return {
            m: wait_until(
                f"{m}: {total} samples applied ({what})",
                lambda m=m: snapshot_where(settings, m, lambda s: s.samples_applied >= total),
                timeout_s=240,
                every_s=0.2,
            )
            for m in models
        }

    # Parallelism 1.
    for p in send(100, batch * 8, rate=batch * 20):
        p.finish(120)
    before = all_applied("parallelism 1")
    job = running_job(settings)
    assert trainer_parallelism(settings, job.id) == 1

    # 1 -> 2 from a savepoint: nothing trained meanwhile, every model where it was.
    rescale(config, 2)
    job = running_job(settings)
    assert trainer_parallelism(settings, job.id) == 2
    hosts = taskmanagers_of(settings, job.id, "trainer")
    report(f"trainer subtasks on {sorted(hosts)}")
    for m in models:
        snap = snapshot_where(settings, m, lambda s: True)
        assert (snap.version, snap.samples_applied) == (
            before[m].version,
            before[m].samples_applied,
        )

    # Parallelism 2, through a SIGKILL of a TaskManager running a trainer subtask while
    # samples flow (15 s of them).
    producers = send(200, batch * 60, rate=batch * 4)
    wait_until(
        "every model training at parallelism 2",
        lambda: all(
            snapshot_where(settings, m, lambda s: s.samples_applied >= batch * 12) for m in models
        ),
        timeout_s=120,
        every_s=0.2,
    )
    wait_for_a_checkpoint(job)
    epochs_before = {m: snapshot_where(settings, m, lambda s: True).epoch for m in models}
    victim = sorted(hosts)[-1]
    pid = processes.running_pid(settings, f"{victim}-child")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    for p in producers:
        p.finish(180)
    # A few batches more for every model: a model restored from the checkpoint publishes under
    # its new epoch with its next version, also when the kill came after the flow's last
    # sample was trained (on a busy machine the checkpoint before the kill can take that long).
    for p in send(250, batch * 4, rate=batch * 20):
        p.finish(120)
    after_kill = all_applied("after the kill at parallelism 2")
    report(f"parallelism 2: all samples applied {time.monotonic() - killed_at:.1f}s after the kill")
    job = running_job(settings)
    # The restarted publishers opened new lineages: the models of the killed TaskManager's
    # subtasks (here every model whose trainer subtask ran there) were restored from the
    # checkpoint and republished under a new epoch.
    restored = [m for m in models if after_kill[m].epoch > epochs_before[m]]
    assert restored, f"no model was restored after killing {victim}"
    assert job.exceptions(), "the job's exception history shows no failure"

    # 2 -> 1, then more training.
    rescale(config, 1)
    job = running_job(settings)
    assert trainer_parallelism(settings, job.id) == 1
    for p in send(300, batch * 8, rate=batch * 20):
        p.finish(120)
    final = all_applied("back at parallelism 1")

    for i, m in enumerate(models):
        total, versions = 0, 0
        for _, n in sent_so_far(i):
            versions += len(batch_plan(n, batch, samples_learnt=total))
            total += n
        snap = final[m]
        assert (snap.samples_applied, snap.version) == (total, versions), m
        expected = reference_weights(settings, m, sent_so_far(i))
        assert snap.weights.tobytes() == expected.tobytes(), m
