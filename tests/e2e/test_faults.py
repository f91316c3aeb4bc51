"""The fault matrix of issue #9, end to end on the real local stack.

Each test breaks one component while data flows and checks the invariants at the end:

- ``samples_applied`` equals the number of distinct samples sent and the version equals the
  number of batches (nothing lost, nothing trained twice), and the published weights equal,
  bit for bit, those of training the same batches once, in order, without a failure
  (training is deterministic and each bulk record here is exactly one batch);
- every ``(epoch, version)`` a predictor answers with is in the model's delta stream, and the
  prediction equals scoring the weights that the stream gives for that version.

The times each test measures are printed (``pytest -s``) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from flowlearn.contracts.redis_contract import DeltaEntry, Keys, read_snapshot, redis_client
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.core import codec
from flowlearn.core.training import ModelTrainer, batch_plan
from flowlearn.devstack import flink_cluster, processes
from flowlearn.devstack.producer import DriftingStream, produce
from flowlearn.jobs import python_worker_pool
from flowlearn.serving.scoring import scorer
from tests.ports import free_port

from .conftest import flowlearn, job_restarts, wait_until

pytestmark = pytest.mark.e2e

#: The instance every prediction here scores.
X_PROBE = [0.25, -0.5, 1.0, 0.0, 0.75, -1.0, 0.5, -0.25, 0.125, 2.0]


#: A failover may restart the job twice, the second time within seconds when no slot was
#: free yet: a restart count unchanged this long has settled.
RESTARTS_QUIET_S = 11.0


def report(msg: str) -> None:
    print(f"[faults] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- helpers


class Job:
    """The running job as Flink's REST API shows it."""

    def __init__(self, settings: Any, job_id: str) -> None:
        self.settings = settings
        self.id = job_id

    def rest(self, path: str) -> Any:
        return flink_cluster.flink_rest(self.settings, f"/jobs/{self.id}{path}")

    def restarts(self) -> int:
        return job_restarts(self.settings, self.id)

    def settled_restarts(self) -> int:
        """``numRestarts`` once earlier failovers are over: the same value on reads more
        than ``RESTARTS_QUIET_S`` apart."""
        first = [self.restarts(), time.monotonic()]

        def settled() -> tuple[int] | None:
            value = self.restarts()
            if value != first[0]:
                first[:] = [value, time.monotonic()]
                return None
            return (value,) if time.monotonic() - first[1] > RESTARTS_QUIET_S else None

        return int(wait_until("the restart count to settle", settled, timeout_s=120)[0])

    def exceptions(self) -> list[dict[str, Any]]:
        return self.rest("/exceptions")["exceptionHistory"]["entries"]

    def task_states(self) -> dict[str, int]:
        """How many tasks are in each state, over every vertex."""
        counts: dict[str, int] = {}
        for vertex in self.rest("")["vertices"]:
            for state, n in vertex["tasks"].items():
                if n:
                    counts[state] = counts.get(state, 0) + n
        return counts

    def running(self) -> bool:
        """The job and every one of its tasks RUNNING."""
        return self.rest("")["state"] == "RUNNING" and set(self.task_states()) == {"RUNNING"}


def redis_of(settings: Any) -> Any:
    return redis_client(settings.redis, timeout_s=5)


def snapshot_where(settings: Any, model_id: str, check: Callable[[Any], bool]) -> Any:
    """The model's snapshot if ``check`` holds for it (None while Redis is unreachable)."""
    try:
        snap = read_snapshot(redis_of(settings), Keys(settings.redis.prefix), model_id)
    except redis.RedisError:
        return None
    return snap if snap is not None and check(snap) else None


def predict(url: str, model_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{url}/v1/models/{model_id}:predict",
        data=json.dumps({"instances": [X_PROBE]}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def try_predict(url: str, model_id: str) -> dict[str, Any] | None:
    try:
        return predict(url, model_id)
    except OSError:  # URLError and HTTPError (404 until the model is loaded) included
        return None


def history(settings: Any, model_id: str) -> dict[tuple[int, int], np.ndarray]:
    """The weights of every ``(epoch, version)`` in the model's delta stream.

    Deltas overwrite coordinates, so replaying an epoch's entries from its base version
    rebuilds each version. A new epoch starts from a version restored from a checkpoint,
    published earlier by the newest epoch that had it (version 0: zeros).
    """
    client = redis_of(settings)
    keys = Keys(settings.redis.prefix)
    snap = read_snapshot(client, keys, model_id)
    assert snap is not None
    known: dict[int, np.ndarray] = {0: np.zeros(snap.weights.size)}
    out: dict[tuple[int, int], np.ndarray] = {}
    epoch, weights, version = None, np.zeros(0), 0
    for stream_id, fields in client.xrange(keys.deltas(model_id)):
        entry = DeltaEntry.from_entry(stream_id, fields)
        if entry.epoch != epoch:
            assert entry.base_version in known, f"{stream_id!r}: base version never published"
            epoch, weights = entry.epoch, known[entry.base_version].copy()
        else:
            assert entry.base_version == version, f"{stream_id!r}: a gap within the epoch"
        codec.apply_delta(weights, entry.delta)
        version = entry.version
        out[(epoch, version)] = known[version] = weights.copy()
    # The snapshot is one of them, bit for bit.
    assert out[(snap.epoch, snap.version)].tobytes() == snap.weights.tobytes()
    return out


def assert_served_was_published(
    settings: Any, model_id: str, answers: list[dict[str, Any]]
) -> None:
    """Every answer's (epoch, version) was published, and its prediction is that version's."""
    published = history(settings, model_id)
    spec = read_snapshot(redis_of(settings), Keys(settings.redis.prefix), model_id).spec
    expected: dict[tuple[int, int], list[float]] = {}
    for answer in answers:
        key = (answer["epoch"], answer["model_version"])
        assert key in published, f"served {key}, never published ({sorted(published)[-5:]})"
        if key not in expected:
            expected[key] = scorer(spec, published[key])(np.array([X_PROBE])).tolist()
        assert answer["predictions"] == expected[key], key


def reference_weights(
    settings: Any, model_id: str, seeds_counts: list[tuple[int, int]]
) -> np.ndarray:
    """Train what ``produce(seed=s, count=n, bulk=batch)`` sent, once, without failures
    (the job cuts batches at the bulk records' boundaries: ``train_samples`` cuts alike)."""
    trainer = ModelTrainer.create(model_id, ModelSpecs(settings).defaults.as_dict())
    for seed, n in seeds_counts:
        records = DriftingStream(n_features=10, seed=seed, model_id=model_id).take(n, 0)
        X = np.array([r["features"] for r in records])
        y = np.array([r["label"] for r in records], dtype=float)
        trainer.train_samples(X, y)
    return trainer.model.weights_vector()


class Producer(threading.Thread):
    """``produce`` bulk records (one batch each) in the background; keeps its error."""

    def __init__(self, settings: Any, model_id: str, count: int, rate: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.kwargs = dict(
            bootstrap=settings.kafka.bootstrap,
            topics=settings.kafka.topics,
            model_id=model_id,
            count=count,
            rate=rate,
            seed=seed,
            bulk=settings.job.batch_size,
            quiet=True,
        )
        self.count = count
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.sent = produce(**self.kwargs)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, timeout_s: float) -> int:
        self.join(timeout_s)
        assert not self.is_alive(), f"the producer did not finish within {timeout_s:.0f}s"
        assert self.error is None, f"the producer failed: {self.error!r}"
        assert self.sent == self.count
        return self.sent


def wait_for_a_checkpoint(job: Job) -> None:
    def completed() -> int:
        return int(job.rest("/checkpoints")["counts"]["completed"])

    seen = completed()
    wait_until("a completed checkpoint", lambda: completed() > seen, timeout_s=60, every_s=0.2)


def warm_rpc_takeovers(settings: Any) -> int:
    """How many TaskManagers of the stack started with the RPC system their JVM warmed up
    while it was a spare (their logs say so)."""
    return sum(
        p.read_text(errors="replace").count(
            "Using the RPC system this JVM warmed up while it was a spare"
        )
        for p in settings.stack.logs.glob("flink--taskexecutor-*.log*")
    )


def taskmanager_pid(settings: Any) -> int | None:
    """The supervised TaskManager's current pid (the supervisor's child)."""
    return processes.running_pid(settings, "taskmanager-child")


# --------------------------------------------------------------------------- TaskManager


def test_the_job_starts_warm_workers_from_the_pool_and_warmed_up_taskmanagers(stack, status):
    """What a recovery no longer waits for: the job's Python workers are forked from the
    stack's worker pool (modules imported once, before any task), and each TaskManager's Java
    agent has loaded PyFlink's runner classes when it started."""
    settings, _ = stack
    wait_until("the job running", Job(settings, status()["job"]["id"]).running, timeout_s=120)
    pool = processes.running_pid(settings, "python-worker-pool")
    assert pool is not None, "the stack starts the Python worker pool"

    socket = flink_cluster.python_worker_pool_socket(settings)
    mark = f"{python_worker_pool.POOL_SOCKET_ENV}={socket}".encode()

    def cmdlines() -> list[str]:
        """The command lines of this stack's processes (their environment names its pool)."""
        out = []
        for proc in Path("/proc").iterdir():
            try:
                if mark in (proc / "environ").read_bytes().split(b"\0"):
                    out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except (OSError, ValueError):
                continue
        return out

    def workers() -> tuple[list[str], list[str]] | None:
        children = Path(f"/proc/{pool}/task/{pool}/children").read_text().split()
        boots = [c for c in cmdlines() if "-m pyflink.fn_execution.beam.beam_boot" in c]
        return (children, boots) if children else None

    children, boots = wait_until("the job's workers under the pool", workers, timeout_s=60)
    # Every worker Flink started went through the launcher, and the pool forked one for each
    # (none fell back to starting the interpreter).
    assert boots and all(" launch -m " in c for c in boots), boots
    assert len(children) == len(boots)
    log = "".join(
        p.read_text(errors="replace")
        for p in settings.stack.logs.glob("flink--taskexecutor-*.log*")
    )
    assert "PyFlink's runner classes loaded in" in log


def test_exactly_once_through_two_taskmanager_kills_the_second_during_recovery(stack, status):
    """SIGKILL the TaskManager while it trains, then SIGKILL its replacement while the job
    is restoring its tasks on it. The supervisor brings a third one; the job recovers from
    its last completed checkpoint, once, with nothing lost or trained twice."""
    settings, _ = stack
    batch = settings.job.batch_size
    n_batches = 60
    n = batch * n_batches
    model_id = f"eo2-{uuid.uuid4().hex[:8]}"
    job = Job(settings, status()["job"]["id"])
    restarts_before = job.restarts()
    producer = Producer(settings, model_id, n, rate=batch * 8, seed=41)
    producer.start()
    wait_until(
        "a few versions",
        lambda: snapshot_where(settings, model_id, lambda s: s.version >= 10),
        timeout_s=60,
        every_s=0.1,
    )
    wait_for_a_checkpoint(job)
    epoch_before = snapshot_where(settings, model_id, lambda s: True).epoch
    # The stack keeps a spare JVM beside a TaskManager that has run a while: the first
    # replacement is the spare, whose RPC system is warm (WarmRpcSystem); the second, killed
    # before a new spare is there, is a new JVM that loads its own.
    wait_until(
        "the TaskManager's spare JVM",
        lambda: processes.running_pid(settings, "taskmanager-spare"),
        timeout_s=60,
        every_s=0.2,
    )
    warm_before = warm_rpc_takeovers(settings)

    first = taskmanager_pid(settings)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    killed_at = time.monotonic()

    def restoring() -> dict[str, int] | None:
        """Task states once a new TaskManager restores the job's tasks: it has started their
        Python workers (its only child processes), which its tasks do while INITIALIZING.
        Not from the REST API alone: its view of the job is up to 3 s old
        (web.refresh-interval), and a restore now takes about that long."""
        pid = taskmanager_pid(settings)
        if pid is None or pid == first:
            return None
        threads = Path(f"/proc/{pid}/task").glob("*/children")
        with contextlib.suppress(OSError):
            if any(t.read_text().strip() for t in threads):
                return job.task_states()
        return None

    states = wait_until(
        "the job restoring its tasks on a new TaskManager", restoring, timeout_s=120, every_s=0.2
    )
    second = taskmanager_pid(settings)
    assert second is not None and second != first
    os.kill(second, signal.SIGKILL)
    second_killed_at = time.monotonic()
    report(
        f"double kill: first SIGKILL, then the replacement (pid {second}) "
        f"{second_killed_at - killed_at:.1f}s later while restoring {states}"
    )

    producer.finish(120)
    final = wait_until(
        f"{n} samples applied after recovery",
        lambda: snapshot_where(settings, model_id, lambda s: s.samples_applied >= n),
        timeout_s=240,
        every_s=0.2,
    )
    applied_at = time.monotonic()
    wait_until("every task RUNNING again", job.running, timeout_s=120, every_s=0.5)
    report(
        f"double kill: all {n} samples applied {applied_at - second_killed_at:.1f}s after "
        f"the second kill ({applied_at - killed_at:.1f}s after the first)"
    )
    assert final.samples_applied == n
    assert final.version == len(batch_plan(n, batch))
    assert final.epoch > epoch_before
    assert warm_rpc_takeovers(settings) == warm_before + 1
    # The feature pipeline's statistics are at the end of the weights vector: they came
    # through the two kills exactly too.
    assert final.weights.tobytes() == reference_weights(settings, model_id, [(41, n)]).tobytes()
    # Both failures were failovers of the job (the first restore was cut short).
    wait_until(
        "the restart count to show both failovers",
        lambda: job.restarts() >= restarts_before + 2,
        timeout_s=60,
        every_s=1,
    )
    answer = wait_until(
        "the predictor serving the final version",
        lambda: (
            (a := try_predict(settings.predictor.url, model_id))
            and (a["epoch"], a["model_version"]) == (final.epoch, final.version)
            and a
        ),
        timeout_s=30,
    )
    assert_served_was_published(settings, model_id, [answer])


def test_events_waiting_in_the_join_survive_a_taskmanager_kill(stack, status):
    """Events wait in the label join (managed state, mirrored in the Python worker) when the
    TaskManager is SIGKILLed; after recovery their labels arrive and every one is joined:
    the worker's mirror is rebuilt from the restored state, nothing is dead-lettered."""
    from flowlearn.contracts.records import now_ms
    from flowlearn.devstack.producer import send_raw

    settings, _ = stack
    n = 300
    model_id = f"join-kill-{uuid.uuid4().hex[:8]}"
    job = Job(settings, status()["job"]["id"])
    restarts_before = job.restarts()
    ts = now_ms()
    samples = DriftingStream(n_features=10, seed=47, model_id=model_id).take(n, ts, step_ms=0)
    send_raw(
        settings.kafka.bootstrap,
        settings.kafka.topics.events,
        [
            json.dumps({k: r[k] for k in ("event_id", "model_id", "ts", "features")}).encode()
            for r in samples
        ],
        key=model_id,
    )
    # Twice: the second checkpoint surely began after every event was in the join's state.
    wait_for_a_checkpoint(job)
    wait_for_a_checkpoint(job)
    pid = taskmanager_pid(settings)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(
        "the restart count to grow",
        lambda: job.restarts() > restarts_before,
        timeout_s=120,
        every_s=1,
    )
    wait_until("every task RUNNING again", job.running, timeout_s=120, every_s=0.5)
    send_raw(
        settings.kafka.bootstrap,
        settings.kafka.topics.labels,
        [
            json.dumps(
                {
                    "event_id": r["event_id"],
                    "model_id": model_id,
                    "ts": ts + 10,
                    "label": r["label"],
                }
            ).encode()
            for r in samples
        ],
        key=model_id,
    )
    final = wait_until(
        f"{n} samples applied",
        lambda: snapshot_where(settings, model_id, lambda s: s.samples_applied >= n),
        timeout_s=120,
        every_s=0.2,
    )
    assert final.samples_applied == n


# --------------------------------------------------------------------------- Kafka


def test_kafka_broker_restart_mid_stream(stack, status):
    """Stop the broker while a producer sends and the job reads, start it again the way
    ``flowlearn up`` does (only what is missing); producer and job carry on by themselves."""
    settings, config = stack
    batch = settings.job.batch_size
    n_batches = 60
    n = batch * n_batches
    model_id = f"kafka-{uuid.uuid4().hex[:8]}"
    before = status()
    job = Job(settings, before["job"]["id"])
    restarts_before = job.restarts()
    producer = Producer(settings, model_id, n, rate=batch * 6, seed=43)
    producer.start()
    wait_until(
        "a few versions",
        lambda: snapshot_where(settings, model_id, lambda s: s.version >= 10),
        timeout_s=60,
        every_s=0.1,
    )

    stopped_at = time.monotonic()
    assert processes.stop_process(settings, "kafka")
    k = settings.kafka
    wait_until("the broker's port closed", lambda: not processes.port_open(k.host, k.port), 30)
    mid = snapshot_where(settings, model_id, lambda s: True)
    assert mid.samples_applied < n, "the stream was over before the broker stopped"
    up = flowlearn("up", config=config)
    assert up.returncode == 0, up.stderr
    up_at = time.monotonic()
    after = status()
    # `up` started the broker and nothing else.
    for name in ("redis", "jobmanager", "taskmanager", "predictor"):
        assert after["components"][name]["pids"][0] == before["components"][name]["pids"][0]
    assert after["components"]["kafka"]["pids"] != before["components"]["kafka"]["pids"]

    producer.finish(180)
    final = wait_until(
        f"{n} samples applied",
        lambda: snapshot_where(settings, model_id, lambda s: s.samples_applied >= n),
        timeout_s=180,
        every_s=0.2,
    )
    done_at = time.monotonic()
    report(
        f"kafka restart: broker down {up_at - stopped_at:.1f}s (stop + start); all {n} "
        f"samples applied {done_at - up_at:.1f}s after it was back"
    )
    assert final.samples_applied == n
    assert final.version == len(batch_plan(n, batch))
    assert final.weights.tobytes() == reference_weights(settings, model_id, [(43, n)]).tobytes()
    wait_until("every task RUNNING", job.running, timeout_s=120, every_s=0.5)
    report(
        f"kafka restart: job restarts during the outage: {job.restarts() - restarts_before} "
        f"(REST metric, up to 10 s old)"
    )


# --------------------------------------------------------------------------- Redis


def test_redis_outage_predictor_keeps_serving_and_replicas_converge(stack, status):
    """Stop Redis longer than the publisher's retries while samples keep coming.

    The predictor keeps answering with the last weights it has, flagged ``degraded``; the
    publisher gives up after its retries, the job fails over and keeps restarting (Flink's
    exponential delay) until Redis is back; then it catches up from Kafka and the predictor
    converges on the trainer's latest version. Nothing is lost or trained twice.
    """
    settings, config = stack
    batch = settings.job.batch_size
    model_id = f"redis-{uuid.uuid4().hex[:8]}"
    url = settings.predictor.url
    n_a, n_b = batch * 10, batch * 40
    produce(
        settings.kafka.bootstrap,
        settings.kafka.topics,
        model_id=model_id,
        count=n_a,
        rate=batch * 40,
        seed=45,
        bulk=batch,
        quiet=True,
    )
    first = wait_until(
        "the first batches published",
        lambda: snapshot_where(settings, model_id, lambda s: s.samples_applied == n_a),
        timeout_s=60,
        every_s=0.2,
    )
    wait_until(
        "the predictor serving them",
        lambda: (a := try_predict(url, model_id)) and a["model_version"] == first.version,
        timeout_s=30,
        every_s=0.2,
    )
    job = Job(settings, status()["job"]["id"])
    restarts_before = job.restarts()

    producer = Producer(settings, model_id, n_b, rate=batch * 8, seed=46)
    producer.start()
    down_ms = time.time_ns() // 1_000_000
    assert processes.stop_process(settings, "redis")
    down_at = time.monotonic()

    degraded = wait_until(
        "the predictor answering degraded",
        lambda: (a := try_predict(url, model_id)) and a["degraded"] and a,
        timeout_s=20,
        every_s=0.2,
    )
    answers = [degraded]

    def failed_over() -> list[dict[str, Any]]:
        answers.append(predict(url, model_id))  # keeps answering all along
        return [
            e
            for e in job.exceptions()
            if e["timestamp"] >= down_ms and "redis" in e["stacktrace"].lower()
        ]

    failures = wait_until(
        "the job failing over on Redis errors", failed_over, timeout_s=90, every_s=1
    )
    failed_at = time.monotonic()
    report(
        f"redis outage: the job failed over {failed_at - down_at:.1f}s after Redis stopped "
        f"({failures[0]['exceptionName']})"
    )
    for answer in answers:
        assert (answer["epoch"], answer["model_version"]) == (first.epoch, first.version)
        assert answer["degraded"] is True
    with urllib.request.urlopen(f"{url}/v1/models/{model_id}", timeout=5) as resp:
        state = json.loads(resp.read())
    assert state["state"] == "degraded" and state["version"] == first.version

    up = flowlearn("up", config=config)
    assert up.returncode == 0, up.stderr
    up_at = time.monotonic()
    producer.finish(120)
    n = n_a + n_b
    final = wait_until(
        f"{n} samples applied",
        lambda: snapshot_where(settings, model_id, lambda s: s.samples_applied >= n),
        timeout_s=180,
        every_s=0.2,
    )
    applied_at = time.monotonic()
    converged = wait_until(
        "the predictor on the trainer's latest version",
        lambda: (
            (a := try_predict(url, model_id))
            and not a["degraded"]
            and (a["epoch"], a["model_version"]) == (final.epoch, final.version)
            and a
        ),
        timeout_s=60,
        every_s=0.2,
    )
    converged_at = time.monotonic()
    report(
        f"redis outage: down {up_at - down_at:.1f}s; after it came back, all samples "
        f"applied in {applied_at - up_at:.1f}s and the predictor converged in "
        f"{converged_at - up_at:.1f}s"
    )
    assert final.samples_applied == n
    assert final.version == len(batch_plan(n, batch))
    assert final.epoch > first.epoch
    assert (
        final.weights.tobytes()
        == reference_weights(settings, model_id, [(45, n_a), (46, n_b)]).tobytes()
    )
    assert_served_was_published(settings, model_id, [*answers, converged])
    wait_until("every task RUNNING", job.running, timeout_s=120, every_s=0.5)
    restarts = wait_until(
        "the restart count to show the failover",
        lambda: (r := job.restarts() - restarts_before) >= 1 and r,
        60,
        1,
    )
    report(f"redis outage: {restarts} job restart(s) (failed attempts included)")


# --------------------------------------------------------------------------- predictor


def test_killing_one_predictor_replica_under_load_leaves_the_other_answering(stack):
    """Two predictor processes on one config (the stack's and a second on another port),
    clients spread over both with fail-over; SIGKILL the second under load while the model
    keeps changing. The first never fails, and no client request goes unanswered."""
    settings, config = stack
    batch = settings.job.batch_size
    model_id = f"replicas-{uuid.uuid4().hex[:8]}"
    produce(
        settings.kafka.bootstrap,
        settings.kafka.topics,
        model_id=model_id,
        count=batch * 5,
        rate=batch * 40,
        seed=47,
        bulk=batch,
        quiet=True,
    )
    wait_until(
        "the model published",
        lambda: snapshot_where(settings, model_id, lambda s: s.version >= 5),
        60,
    )
    port = free_port(settings.predictor.host)
    second_url = f"http://{settings.predictor.host}:{port}"
    pid = processes.start_process(
        settings,
        "predictor-2",
        [sys.executable, "-m", "flowlearn.serving", "--config", str(config)],
        env={"FLOWLEARN__PREDICTOR__PORT": str(port)},
    )
    try:
        urls = [settings.predictor.url, second_url]
        for url in urls:
            wait_until(
                f"{url} serving the model", lambda u=url: try_predict(u, model_id), 60, every_s=0.2
            )
        # The model keeps changing under the load: 10 more versions a second.
        producer = Producer(settings, model_id, batch * 60, rate=batch * 10, seed=48)
        producer.start()
        answers: list[dict[str, Any]] = []
        outcomes: list[tuple[int, float, bool]] = []  # (replica, when, ok)
        unanswered: list[str] = []
        stop = threading.Event()
        killed_at: list[float] = []

        def client(k: int) -> None:
            i = k
            while not stop.is_set():
                for attempt in range(2):  # the other replica on failure
                    replica = (i + attempt) % 2
                    try:
                        answer = predict(urls[replica], model_id, timeout_s=10)
                    except OSError as exc:
                        outcomes.append((replica, time.monotonic(), False))
                        if attempt == 1:
                            unanswered.append(repr(exc))
                        continue
                    outcomes.append((replica, time.monotonic(), True))
                    answers.append(answer)
                    break
                i += 1

        clients = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
        for t in clients:
            t.start()
        wait_until(
            "load on both replicas",
            lambda: {r for r, _, ok in outcomes if ok} == {0, 1} and len(outcomes) > 200,
            timeout_s=30,
            every_s=0.1,
        )
        os.kill(pid, signal.SIGKILL)
        killed_at.append(time.monotonic())
        wait_until(
            "load after the kill",
            lambda: sum(1 for _, when, _ in outcomes if when > killed_at[0] + 1) > 300,
            timeout_s=60,
            every_s=0.1,
        )
        stop.set()
        for t in clients:
            t.join(10)
        producer.finish(60)
    finally:
        # Killed: this only removes its pid file; otherwise (a failure above) it stops it.
        processes.stop_process(settings, "predictor-2")
    first_ok = [ok for r, _, ok in outcomes if r == 0]
    second_after = [ok for r, when, ok in outcomes if r == 1 and when > killed_at[0] + 0.5]
    report(
        f"replica kill: {len(answers)} answers, replica 1: {len(first_ok)} requests "
        f"({first_ok.count(False)} failed); replica 2: "
        f"{sum(1 for r, _, ok in outcomes if r == 1 and ok)} answered, "
        f"{sum(1 for r, _, ok in outcomes if r == 1 and not ok)} failed after its kill"
    )
    assert unanswered == []
    assert first_ok and all(first_ok), "the surviving replica failed requests"
    assert second_after and not any(second_after), "the killed replica kept answering?"
    versions = {a["model_version"] for a in answers}
    assert len(versions) > 1, "the model did not change under the load"
    assert_served_was_published(settings, model_id, answers)
