"""Freshness: from a label's arrival in Kafka to the predictor serving a version that has
been trained on it; p50/p95/p99/max, at two checkpoint intervals, against a naive peer.

The issue's target: p95 <= 1 s, independent of the checkpoint interval.

Setup: its own stack (home ``.flowlearn-bench-fresh``, wiped but for the jars; ports 3xxxx;
one partition per topic), stopped at the end, also on errors. For each input path and
checkpoint interval (``flink.checkpoint_interval_ms``, default 5 s and 30 s, given to the
job by the config file it is submitted with) the job is submitted fresh and one new model
gets a steady stream from a producer process:

- path ``join`` (the issue's case): each event to ``fl.events`` at once and its label to
  ``fl.labels`` ``--label-delay-ms`` later, ``--join-rate`` (default ``--rate``) labelled
  samples/s; the job joins them, trains mini-batches, publishes each version to Redis;
- path ``samples``: already labelled samples to ``fl.samples`` at ``--rate``: the same
  trainer, publisher and predictor without the label join.

Measured, per label:

- arrival: the broker's append time. ``fl.labels`` and ``fl.samples`` are switched to
  ``message.timestamp.type=LogAppendTime``; the producer's acknowledgement then carries
  the broker's clock, and its offset (same host, same clock as the poller);
- served: the bench polls ``GET /v1/models/{m}`` every ``--poll-ms`` (aiohttp) and records
  (response time, epoch, version). The predictor does not know ``samples_applied`` (the
  delta stream does not carry it), so a version's ``samples_applied`` comes from the
  publisher's own writes: Redis ``MONITOR`` on the bench's Redis shows every snapshot
  ``HSET`` (a 10-feature model rewrites its snapshot with each version), with Redis's
  time — which also splits the freshness into job and serving parts;
- rank: with one partition and one producer, the labels' offsets are their send order;
  the job's label join (parallelism 1) pairs each label with its already waiting event
  in that order, so the label of rank r (1-based) is in the first version whose
  ``samples_applied`` >= r. Verified on the data: offsets contiguous in send order,
  ``samples_applied`` ends equal to the labels sent, every version seen, and an offline
  replay of the same samples in rank order with the observed batch boundaries (the same
  ``ModelTrainer``) reproduces the published weights bit for bit — any other join
  order would not.

freshness(label) = first poll time with served samples_applied >= rank - arrival time.
Labels of the first ``--warmup-s`` are left out (the predictor discovers a new model on
its 1 s refresh; Python workers warm up).

Peer, same producer, the join path at the same rates, run after the job is cancelled: a
naive loop (kafka-python consumer on fl.events + fl.labels, a dict join, River
``LogisticRegression.learn_one`` per sample, the weights written to a Redis hash every
batch, or when a poll comes back empty), with the poller reading that hash directly.
Its processing order is its label order too (checked: no label came before its event).

    python bench/bench_freshness.py [--quick] [--rate 2000] [--join-rate R] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import inspect
import json
import multiprocessing
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from flowlearn.conf import Settings, load_settings
from flowlearn.contracts.redis_contract import redis_client
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.devstack import jobctl
from flowlearn.devstack.flink_cluster import flink_rest

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / ".flowlearn-bench-fresh"
N_FEATURES = 10
CONFIG = """
[stack]
home = "{home}"
[kafka]
port = 39092
controller_port = 39093
partitions = 1
[redis]
port = 36379
[flink]
rest_port = 38081
rpc_port = 36123
# Not the local stack's nice 10: the producers here stand for clients on other machines,
# and at nice 10 the job would yield the cores to them, as a TaskManager of its own never does.
taskmanager_nice = 0
prometheus_ports = "39249-39252"
checkpoint_interval_ms = {checkpoint_interval_ms}
{flink_extra}[predictor]
port = 38080
[prometheus]
port = 39090
"""


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the stack


def _auto_rollback_off() -> str:
    """TOML that turns automatic rollback off (wherever the settings keep it): a rollback
    adds versions without samples and would break the offline replay check."""
    from flowlearn.conf import settings as conf_settings
    from flowlearn.core.spec import ModelSpec

    for table, cls in (("model_defaults", ModelSpec), ("job", conf_settings.JobConf)):
        if "auto_rollback" in {f.name for f in dataclasses.fields(cls)}:
            return f"[{table}]\nauto_rollback = false\n"
    return ""


class BenchStack:
    """The bench's own stack; config files for it live in a temporary folder."""

    def __init__(
        self,
        folder: Path,
        extra: str = "",
        bundle_time_ms: int | None = None,
        flink_extra: str = "",
    ) -> None:
        """``extra``: TOML tables appended; ``flink_extra``: keys of the ``[flink]`` table."""
        self.folder = folder
        self.extra = extra
        self.flink_extra = flink_extra + (
            "" if bundle_time_ms is None else f"python_bundle_time_ms = {bundle_time_ms}\n"
        )
        self.config = self.write_config(5000)
        self.settings = load_settings(self.config, env={})

    def write_config(self, checkpoint_interval_ms: int) -> Path:
        path = self.folder / f"bench-{checkpoint_interval_ms}.toml"
        path.write_text(
            CONFIG.format(
                home=HOME,
                checkpoint_interval_ms=checkpoint_interval_ms,
                flink_extra=self.flink_extra,
            )
            + _auto_rollback_off()
            + self.extra
        )
        return path

    def cli(self, *args: str, config: Path | None = None, timeout_s: float = 600) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "flowlearn.cli", "--config", str(config or self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise RuntimeError(f"flowlearn {' '.join(args)} failed:\n{tail}")
        return result.stdout

    @contextmanager
    def running(self) -> Iterator[BenchStack]:
        """Wipe the home (but for the jars), start everything, always stop it again."""
        if (HOME / "run").exists():  # a previous run that could not stop: stop it first
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.cli("down", timeout_s=300)
        if HOME.exists():
            for child in HOME.iterdir():
                if child.name != "jars":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        log(f"starting the bench stack in {HOME} (ports 3xxxx) ...")
        try:
            try:
                self.cli("up")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                raise SystemExit(f"error: the bench stack could not start: {exc}") from exc
            yield self
        finally:
            log("stopping the bench stack ...")
            try:
                self.cli("down", timeout_s=300)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log(f"warning: `flowlearn down` failed: {exc}")

    def submit(self, settings: Settings, config: Path) -> jobctl.JobInfo:
        t0 = time.monotonic()
        try:
            self.cli("submit", "--fresh", config=config)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            raise SystemExit(f"error: the job could not be submitted: {exc}") from exc
        job = jobctl.find_job(settings)
        if job is None:
            raise SystemExit("error: the job was submitted but is not running")
        log(f"job {job.id} running ({time.monotonic() - t0:.0f}s from submit)")
        return job


def set_log_append_time(settings: Settings, topic: str) -> None:
    """Make the broker stamp ``topic``'s records with its own clock at append."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap, client_id="bench-freshness-admin"
    )
    try:
        admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    topic,
                    configs={"message.timestamp.type": "LogAppendTime"},
                )
            ]
        )
        found = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs=["message.timestamp.type"])]
        )
    finally:
        admin.close()
    value = found.get("topic", {}).get(topic, {}).get("message.timestamp.type", {})
    if value.get("value") != "LogAppendTime":
        raise SystemExit(f"error: could not set LogAppendTime on {topic}: {found}")


def trigger_checkpoint(settings: Settings, job_id: str, timeout_s: float = 120.0) -> int | None:
    """Trigger a full checkpoint through the REST API and wait for it; its id or None."""
    try:
        trigger = flink_rest(
            settings, f"/jobs/{job_id}/checkpoints", method="POST", body={"checkpointType": "FULL"}
        )
    except (OSError, urllib.error.URLError, ValueError) as exc:
        log(f"warning: checkpoint trigger refused: {exc}")
        return None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = flink_rest(settings, f"/jobs/{job_id}/checkpoints/{trigger['request-id']}")
        if status["status"]["id"] == "COMPLETED":
            operation = status.get("operation", {})
            if "failure-cause" in operation:
                log(f"warning: checkpoint failed: {operation['failure-cause'].get('class')}")
                return None
            return int(operation["checkpointId"])
        time.sleep(0.2)
    log("warning: the triggered checkpoint did not complete in time")
    return None


# --------------------------------------------------------------------------- producing


@dataclasses.dataclass
class Sent:
    """What the producer sent: per label, in send order (= rank order)."""

    offsets: np.ndarray
    append_ms: np.ndarray
    send_s: np.ndarray
    ack_s: np.ndarray
    start_s: float
    end_s: float

    @property
    def n(self) -> int:
        return len(self.offsets)


def produce_labelled(
    bootstrap: str,
    topics: dict[str, str],
    path: str,
    model_id: str,
    rate: float,
    n: int,
    label_delay_ms: int,
    seed: int,
    out: str,
) -> None:
    """(A producer process) ``n`` labelled samples at ``rate``/s. Path "join": each event to
    ``fl.events`` at once and its label ``label_delay_ms`` later to ``fl.labels``; path
    "samples": each labelled sample to ``fl.samples``. Saves, per label (or sample), its
    offset, broker timestamp and send/ack times to ``out`` (.npz)."""
    from kafka import KafkaProducer

    from flowlearn.devstack.producer import DriftingStream

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=1,
        key_serializer=str.encode,
        value_serializer=lambda v: json.dumps(v).encode(),
        client_id=f"bench-freshness-{uuid.uuid4().hex[:6]}",
    )
    stream = DriftingStream(n_features=N_FEATURES, seed=seed, model_id=model_id)
    offsets = np.full(n, -1, dtype=np.int64)
    append_ms = np.zeros(n, dtype=np.int64)
    send_s = np.zeros(n)
    ack_s = np.zeros(n)

    def acked(i: int, metadata: Any) -> None:
        ack_s[i] = time.time()
        offsets[i] = metadata.offset
        append_ms[i] = metadata.timestamp

    pending: collections.deque[tuple[float, int, dict[str, Any]]] = collections.deque()
    delay = label_delay_ms / 1000
    produced = labelled = 0
    start = time.time()
    while labelled < n:
        now = time.time()
        due = min(n, int((now - start) * rate) + 1)
        if produced < due:
            for rec in stream.take(due - produced, start_ts=int(now * 1000), step_ms=0):
                if path == "samples":
                    send_s[produced] = time.time()
                    producer.send(topics["samples"], key=model_id, value=rec).add_callback(
                        acked, produced
                    )
                    labelled += 1
                else:
                    event = {k: rec[k] for k in ("event_id", "model_id", "ts", "features")}
                    producer.send(
                        topics["events"], key=model_id, value=event, timestamp_ms=rec["ts"]
                    )
                    label = {
                        "event_id": rec["event_id"],
                        "model_id": model_id,
                        "ts": rec["ts"] + label_delay_ms,
                        "label": rec["label"],
                    }
                    pending.append((now + delay, produced, label))
                produced += 1
        while pending and pending[0][0] <= now:
            _, i, label = pending.popleft()
            send_s[i] = time.time()
            producer.send(topics["labels"], key=model_id, value=label).add_callback(acked, i)
            labelled += 1
        time.sleep(0.002)
    producer.flush()
    producer.close()
    np.savez(
        out,
        offsets=offsets,
        append_ms=append_ms,
        send_s=send_s,
        ack_s=ack_s,
        span=np.array([start, time.time()]),
    )


def start_producer(
    settings: Settings,
    model_id: str,
    rate: float,
    n: int,
    label_delay_ms: int,
    seed: int,
    out: Path,
    path: str = "join",
) -> multiprocessing.Process:
    t = settings.kafka.topics
    topics = {"events": t.events, "labels": t.labels, "samples": t.samples}
    proc = multiprocessing.get_context("spawn").Process(
        target=produce_labelled,
        name="bench-producer",
        args=(
            settings.kafka.bootstrap,
            topics,
            path,
            model_id,
            rate,
            n,
            label_delay_ms,
            seed,
            str(out),
        ),
    )
    proc.start()
    return proc


def load_sent(path: Path) -> Sent:
    d = np.load(path)
    return Sent(
        d["offsets"],
        d["append_ms"],
        d["send_s"],
        d["ack_s"],
        float(d["span"][0]),
        float(d["span"][1]),
    )


# --------------------------------------------------------------------------- observing


class SnapshotTap(threading.Thread):
    """Redis ``MONITOR``: (Redis time, epoch, version, samples_applied) of every snapshot
    write of one model — the publisher rewrites a small model's snapshot with each version."""

    def __init__(self, settings: Settings, model_id: str) -> None:
        super().__init__(name="snapshot-tap", daemon=True)
        from flowlearn.contracts.redis_contract import Keys

        # MONITOR blocks between writes: a timeout far beyond any quiet spell of a run.
        self.client = redis_client(settings.redis, timeout_s=3600)
        key = re.escape(Keys(settings.redis.prefix).snapshot(model_id))
        self.pattern = re.compile(rf'^(\d+\.\d+) \[[^\]]*\] "HSET" "{key}" ')
        # Field values inside MONITOR's quoted arguments: a '"' in any argument is escaped,
        # so '"name" "123"' only matches a field and its value.
        self.fields = {
            name: re.compile(rf'"{name}" "(\d+)"')
            for name in ("epoch", "version", "samples_applied")
        }
        self.writes: list[tuple[float, int, int, int]] = []
        self._monitor: Any = None
        self.ready = threading.Event()

    def run(self) -> None:
        monitor = self.client.monitor()
        # stop() closes the connection under the blocking read: that ends the thread.
        with contextlib.suppress(Exception), monitor:
            self._monitor = monitor
            self.ready.set()
            while True:
                line = monitor.connection.read_response()
                text = line.decode(errors="replace") if isinstance(line, bytes) else line
                m = self.pattern.match(text)
                if m:
                    found = [f.search(text) for f in self.fields.values()]
                    if all(found):
                        epoch, version, applied = (int(f[1]) for f in found if f)
                        self.writes.append((float(m[1]), epoch, version, applied))
        self.ready.set()

    def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.connection.disconnect()
        self.join(5)

    def applied(self) -> dict[tuple[int, int], int]:
        return {(e, v): sa for _, e, v, sa in list(self.writes)}

    def max_applied(self) -> int:
        return max((sa for _, _, _, sa in list(self.writes)), default=0)


async def _poll(
    fetch: Callable[[], Any],
    poll_s: float,
    out: list[Any],
    done: Callable[[], bool],
    producer: multiprocessing.Process,
    drain_s: float,
) -> bool:
    """Call ``fetch`` every ``poll_s`` into ``out`` until ``done()`` after the producer
    ended, or ``drain_s`` after it; True when done."""
    drain_deadline = None
    while True:
        sample = await fetch()
        if sample is not None:
            out.append(sample)
        if not producer.is_alive():
            if done():
                return True
            if drain_deadline is None:
                drain_deadline = time.monotonic() + drain_s
            elif time.monotonic() > drain_deadline:
                return False
        await asyncio.sleep(poll_s)


async def poll_predictor(
    settings: Settings,
    model_id: str,
    poll_s: float,
    done: Callable[[list[Any]], bool],
    producer: multiprocessing.Process,
    drain_s: float,
) -> tuple[list[tuple[float, int, int]], bool]:
    """(response time, epoch, served version) of every poll of GET /v1/models/{m}."""
    import aiohttp

    url = f"{settings.predictor.url}/v1/models/{model_id}"
    polls: list[tuple[float, int, int]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

        async def fetch() -> tuple[float, int, int] | None:
            try:
                async with session.get(url) as resp:
                    body = await resp.json() if resp.status == 200 else {}
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return None
            if body.get("ready") and "version" in body and "epoch" in body:
                return time.time(), int(body["epoch"]), int(body["version"])
            return None

        ok = await _poll(fetch, poll_s, polls, lambda: done(polls), producer, drain_s)
    return polls, ok


async def poll_redis_counter(
    settings: Settings,
    key: str,
    poll_s: float,
    expected: int,
    producer: multiprocessing.Process,
    drain_s: float,
) -> tuple[list[tuple[float, int]], bool]:
    """(time, n) of every poll of the naive loop's hash field ``n`` (read directly)."""
    import redis.asyncio as aredis

    r = settings.redis
    client = aredis.Redis(host=r.host, port=r.port, password=r.password or None)
    polls: list[tuple[float, int]] = []

    async def fetch() -> tuple[float, int] | None:
        raw = await client.hget(key, "n")
        return None if raw is None else (time.time(), int(raw))

    try:
        ok = await _poll(
            fetch,
            poll_s,
            polls,
            lambda: bool(polls) and polls[-1][1] >= expected,
            producer,
            drain_s,
        )
    finally:
        await client.aclose()
    return polls, ok


# --------------------------------------------------------------------------- figures


def first_reaching(times: np.ndarray, counts: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """For each rank, the first time at which ``counts`` (running max) was >= it (NaN if
    never)."""
    if len(times) == 0:
        return np.full(len(ranks), np.nan)
    running = np.maximum.accumulate(counts)
    idx = np.searchsorted(running, ranks, side="left")
    out = np.full(len(ranks), np.nan)
    hit = idx < len(times)
    out[hit] = times[idx[hit]]
    return out


def stats(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {
            "n": 0,
            "p50": np.nan,
            "p95": np.nan,
            "p99": np.nan,
            "max": np.nan,
            "over_1s": np.nan,
        }
    return {
        "n": len(x),
        "p50": float(np.percentile(x, 50)),
        "p95": float(np.percentile(x, 95)),
        "p99": float(np.percentile(x, 99)),
        "max": float(x.max()),
        "over_1s": float(np.mean(x > 1.0)),
    }


@dataclasses.dataclass
class RunResult:
    name: str
    tag: str
    checkpoint_interval_ms: int | None
    path: str
    rate: float
    sent: Sent
    freshness: np.ndarray  # seconds, per measured label (after the warm-up)
    missing: int  # measured labels never seen served
    checks: list[tuple[str, bool | None, str]]
    breakdown: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    checkpoints: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    near_checkpoint: np.ndarray | None = None
    #: Busy and back-pressured ms/s of each vertex, half-way through the input.
    load: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    #: Samples applied per second while the input ran (after the warm-up): below the input
    #: rate, the system did not keep up and freshness grows with the backlog.
    applied_rate: float = float("nan")


def applied_rate(times: np.ndarray, counts: np.ndarray, start_s: float, end_s: float) -> float:
    """Growth of ``counts`` per second between ``start_s`` and ``end_s`` (running max)."""
    if len(times) == 0:
        return float("nan")
    running = np.maximum.accumulate(counts)

    def at(t: float) -> float:
        i = np.searchsorted(times, t, side="right") - 1
        return float(running[i]) if i >= 0 else 0.0

    return (at(end_s) - at(start_s)) / max(end_s - start_s, 1e-9)


def measured(sent: Sent, warmup_s: float) -> np.ndarray:
    """Indices of the labels measured: those sent after the warm-up."""
    return np.flatnonzero(sent.send_s >= sent.start_s + warmup_s)


def check_sent(sent: Sent) -> list[tuple[str, bool | None, str]]:
    acked = sent.offsets >= 0
    contiguous = bool(acked.all()) and bool(np.all(np.diff(sent.offsets) == 1))
    # Not part of the freshness: the producer's send call -> the broker's append.
    ingest = stats(sent.append_ms / 1000 - sent.send_s)
    return [
        (
            "labels acked, offsets contiguous in send order (rank = offset order)",
            contiguous,
            f"{int(acked.sum()):,}/{sent.n:,} acked; send call -> broker append "
            f"p50 {ingest['p50'] * 1000:.1f} ms, p95 {ingest['p95'] * 1000:.1f} ms, not counted",
        ),
    ]


# --------------------------------------------------------------------------- flowlearn run


def replay_check(
    settings: Settings,
    model_id: str,
    seed: int,
    n: int,
    boundaries: list[int],
    published: np.ndarray,
) -> tuple[bool, str]:
    """Train the same samples in rank order with the observed batch boundaries, offline,
    with the spec the job gave the model (a new model id: ``job.unknown_model_policy``
    "infer" makes it from its first record's features); compare with the published
    weights."""
    from flowlearn.core.training import ModelTrainer
    from flowlearn.devstack.producer import DriftingStream

    records = DriftingStream(n_features=N_FEATURES, seed=seed, model_id=model_id).take(n, 0)
    specs = ModelSpecs(settings)
    spec = specs.spec_of(model_id, specs.inferred_entry(records[0]["features"])).as_dict()
    X = np.array([r["features"] for r in records], dtype=np.float64)
    y = np.array([r["label"] for r in records], dtype=np.float64)
    trainer = ModelTrainer.create(model_id, spec)
    previous = 0
    for applied in boundaries:
        trainer.train_batch(X[previous:applied], y[previous:applied])
        previous = applied
    mine = trainer.model.weights_vector()
    same = mine.shape == published.shape and bool(np.array_equal(mine, published))
    diff = float(np.max(np.abs(mine - published))) if mine.shape == published.shape else np.nan
    return same, f"max |diff| {diff:.3g}"


def vertex_load(settings: Settings, job_id: str) -> dict[str, tuple[float, float]]:
    """Per vertex (by its first operator's name): busy and back-pressured ms per second."""
    out = {}
    try:
        for v in flink_rest(settings, f"/jobs/{job_id}")["vertices"]:
            metrics = flink_rest(
                settings,
                f"/jobs/{job_id}/vertices/{v['id']}/subtasks/metrics"
                "?get=busyTimeMsPerSecond,backPressuredTimeMsPerSecond",
            )
            d = {m["id"]: float(m.get("max", 0)) for m in metrics}
            name = v["name"].split(" -> ")[0].removeprefix("Source: ")
            out[name] = (
                d.get("busyTimeMsPerSecond", float("nan")),
                d.get("backPressuredTimeMsPerSecond", float("nan")),
            )
    except (OSError, urllib.error.URLError, ValueError, KeyError):
        pass
    return out


def last_acknowledged(
    settings: Settings, job_id: str, checkpoint: dict[str, Any]
) -> tuple[str, float] | None:
    """The vertex that acknowledged ``checkpoint`` last, and after how many ms."""
    try:
        detail = flink_rest(settings, f"/jobs/{job_id}/checkpoints/details/{checkpoint['id']}")
        names = {
            v["id"]: v["name"].split(" -> ")[0].removeprefix("Source: ")
            for v in flink_rest(settings, f"/jobs/{job_id}")["vertices"]
        }
    except (OSError, urllib.error.URLError, ValueError, KeyError):
        return None
    tasks = detail.get("tasks", {})
    if not tasks:
        return None
    vid, task = max(tasks.items(), key=lambda kv: kv[1].get("latest_ack_timestamp", 0))
    return (
        names.get(vid, vid),
        task.get("latest_ack_timestamp", 0) - checkpoint["trigger_timestamp"],
    )


def checkpoint_history(
    settings: Settings, job_id: str, start_s: float, end_s: float
) -> list[dict[str, Any]]:
    try:
        history = flink_rest(settings, f"/jobs/{job_id}/checkpoints").get("history", [])
    except (OSError, urllib.error.URLError, ValueError):
        return []
    return [h for h in history if start_s * 1000 <= h.get("trigger_timestamp", 0) <= end_s * 1000]


def run_flowlearn(
    bench: BenchStack,
    path: str,
    rate: float,
    interval_ms: int,
    args: argparse.Namespace,
    tmp: Path,
    seed: int,
    overload: bool = False,
) -> RunResult:
    """One measured run. ``overload``: a rate the job is known not to sustain, measured to
    show how far behind it falls (short drain; the run's offsets are not committed)."""
    drain_s = 10.0 if overload else args.drain_s
    config = bench.write_config(interval_ms)
    settings = load_settings(config, env={})
    log(
        f"{path} path, {rate:,.0f}/s, checkpoint interval {interval_ms / 1000:g}s: "
        f"submitting the job ..."
    )
    job = bench.submit(settings, config)
    model_id = f"fresh-{path}-{interval_ms // 1000}s-{uuid.uuid4().hex[:6]}"
    n = int(rate * (args.warmup_s + args.seconds))
    tap = SnapshotTap(settings, model_id)
    tap.start()
    tap.ready.wait(10)
    out = tmp / f"{model_id}.npz"
    what = "events + delayed labels" if path == "join" else "labelled samples"
    log(
        f"producing {n:,} {what} for {model_id} at {rate:,.0f}/s, polling the predictor every "
        f"{args.poll_ms:g} ms ..."
    )
    producer = start_producer(settings, model_id, rate, n, args.label_delay_ms, seed, out, path)
    # Which operators are busy: the median of 5 samples over the measured input.
    load: dict[str, tuple[float, float]] = {}

    def sample_load() -> None:
        t0 = time.monotonic()
        samples = []
        for k in range(5):
            time.sleep(
                max(0.0, t0 + args.warmup_s + args.seconds * (k + 0.5) / 5 - time.monotonic())
            )
            samples.append(vertex_load(settings, job.id))
        for name in samples[-1]:
            values = np.array([x[name] for x in samples if name in x])
            ok = np.isfinite(values).all(axis=1)
            if ok.any():
                busy, pressured = np.median(values[ok], axis=0)
                load[name] = (float(busy), float(pressured))

    timer = threading.Thread(target=sample_load, name="vertex-load", daemon=True)
    timer.start()

    def done(polls: list[tuple[float, int, int]]) -> bool:
        applied = tap.applied()
        return bool(polls) and applied.get(polls[-1][1:], 0) >= n

    polls, ok = asyncio.run(
        poll_predictor(settings, model_id, args.poll_ms / 1000, done, producer, drain_s)
    )
    producer.join()
    timer.join()
    tap.stop()
    if producer.exitcode != 0:
        raise SystemExit(f"error: the producer process failed (exit {producer.exitcode})")
    sent = load_sent(out)
    if not ok and not overload:
        log(
            f"warning: the predictor did not serve all {n:,} samples within "
            f"{drain_s:.0f}s of the last label"
        )
    checkpoints = checkpoint_history(settings, job.id, sent.start_s, sent.end_s)
    slowest = max(checkpoints, key=lambda h: h.get("end_to_end_duration", 0), default=None)
    if slowest is not None:
        slowest["last_ack"] = last_acknowledged(settings, job.id, slowest)
    if not overload:
        # Commit the source offsets, so that the next job starts after this run's records.
        trigger_checkpoint(settings, job.id)
    jobctl.cancel(settings, job)

    # Version -> samples_applied, from the snapshot writes (one epoch: one fresh job).
    writes = sorted(tap.writes, key=lambda w: (w[1], w[2]))
    applied = {(e, v): sa for _, e, v, sa in writes}
    epochs = {e for _, e, _, _ in writes}
    versions = [v for _, e, v, _ in writes if e == max(epochs, default=0)]
    complete = len(epochs) == 1 and versions == list(range(1, len(versions) + 1))
    final_applied = writes[-1][3] if writes else 0

    def served_applied(epoch: int, version: int) -> int:
        if (epoch, version) in applied:
            return applied[(epoch, version)]
        # Not seen (should not happen): the newest seen version below it, a lower bound.
        below = [sa for (e, v), sa in applied.items() if e == epoch and v <= version]
        return max(below, default=0)

    poll_t = np.array([p[0] for p in polls])
    poll_applied = np.array([served_applied(e, v) for _, e, v in polls])
    idx = measured(sent, args.warmup_s)
    ranks = idx + 1
    arrival = sent.append_ms / 1000
    served_at = first_reaching(poll_t, poll_applied, ranks)
    freshness = served_at - arrival[idx]

    # Where the time goes: the batch filling up, the job (last sample of the batch in
    # Kafka -> version in Redis), Redis -> served (follower + poll interval).
    w_t = np.array([w[0] for w in writes])
    w_sa = np.array([w[3] for w in writes])
    in_redis = first_reaching(w_t, w_sa, ranks)
    batch_of = np.searchsorted(np.maximum.accumulate(w_sa), ranks, side="left")
    batch_end = np.full(len(ranks), np.nan)
    found = batch_of < len(w_sa)
    batch_end[found] = arrival[np.minimum(w_sa[batch_of[found]], sent.n) - 1]
    breakdown = {
        "waiting for the batch to fill": batch_end - arrival[idx],
        "job: batch complete in Kafka -> version in Redis": in_redis - batch_end,
        "label in Kafka -> version in Redis": in_redis - arrival[idx],
        "Redis -> served by the predictor (incl. poll)": served_at - in_redis,
    }
    near = np.zeros(len(idx), dtype=bool)
    for h in checkpoints:
        start = h["trigger_timestamp"] / 1000 - 1.0
        end = h["trigger_timestamp"] / 1000 + h.get("end_to_end_duration", 0) / 1000
        near |= (arrival[idx] >= start) & (arrival[idx] <= end)

    checks = check_sent(sent)
    if overload:
        checks.append(
            (
                f"overload run: {sent.n - final_applied:,} of {sent.n:,} samples still "
                f"unapplied {drain_s:.0f}s after the last label (expected)",
                None,
                "freshness percentiles cover the served labels only",
            )
        )
        return RunResult(
            "flowlearn (overloaded)",
            f"flowlearn {path} {rate:g}/s {interval_ms / 1000:g}s (overload)",
            interval_ms,
            path,
            rate,
            sent,
            freshness,
            int(np.sum(~np.isfinite(freshness))),
            checks,
            breakdown,
            checkpoints,
            freshness[near],
            load=load,
            applied_rate=applied_rate(w_t, w_sa, sent.start_s + args.warmup_s, sent.end_s),
        )
    checks.append(
        (
            "final samples_applied == labels sent",
            final_applied == sent.n,
            f"{final_applied:,} vs {sent.n:,}",
        )
    )
    checks.append(
        (
            "every version's snapshot write seen (one epoch, versions 1..V)",
            complete,
            f"{len(versions)} versions, epochs {sorted(epochs)}",
        )
    )
    if complete and final_applied == sent.n:
        from flowlearn.contracts.redis_contract import Keys, read_snapshot

        snap = read_snapshot(redis_client(settings.redis), Keys(settings.redis.prefix), model_id)
        if snap is None or snap.version != versions[-1]:
            checks.append(
                ("offline replay in rank order == published weights", None, "snapshot moved on")
            )
        else:
            same, detail = replay_check(
                settings,
                model_id,
                seed,
                sent.n,
                [applied[(snap.epoch, v)] for v in versions],
                snap.weights.astype(np.float64).reshape(-1),
            )
            checks.append(
                ("offline replay in rank order == published weights (bit-exact)", same, detail)
            )
    else:
        checks.append(
            (
                "offline replay in rank order == published weights",
                None,
                "skipped: the version map is incomplete",
            )
        )
    return RunResult(
        "flowlearn job -> predictor",
        f"flowlearn {path} {rate:g}/s {interval_ms / 1000:g}s",
        interval_ms,
        path,
        rate,
        sent,
        freshness,
        int(np.sum(~np.isfinite(freshness))),
        checks,
        breakdown,
        checkpoints,
        freshness[near],
        load=load,
        applied_rate=applied_rate(w_t, w_sa, sent.start_s + args.warmup_s, sent.end_s),
    )


# --------------------------------------------------------------------------- naive peer


def naive_loop(
    bootstrap: str,
    events_topic: str,
    labels_topic: str,
    redis_host: str,
    redis_port: int,
    redis_password: str,
    key: str,
    model_id: str,
    batch: int,
    expected: int,
    timeout_s: float,
) -> None:
    """The naive peer, run by itself in a bare ``python -c`` (only what it imports here):
    prints ``ready`` once positioned at the end of both topics, then a JSON summary."""
    import json
    import time

    import redis
    from kafka import KafkaConsumer, TopicPartition
    from river import linear_model

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=5000,
        fetch_max_wait_ms=100,
    )
    parts = [TopicPartition(events_topic, 0), TopicPartition(labels_topic, 0)]
    consumer.assign(parts)
    consumer.seek_to_end()
    for tp in parts:
        consumer.position(tp)
    client = redis.Redis(host=redis_host, port=redis_port, password=redis_password or None)
    model = linear_model.LogisticRegression()
    events: dict[str, dict[int, float]] = {}
    waiting: dict[str, bool] = {}
    n = since_publish = labels_first = 0

    def learn(x: dict[int, float], y: bool) -> None:
        nonlocal n, since_publish
        model.learn_one(x, y)
        n += 1
        since_publish += 1

    def publish() -> None:
        nonlocal since_publish
        client.hset(
            key,
            mapping={"weights": json.dumps(model.weights), "n": n, "ts": int(time.time() * 1000)},
        )
        since_publish = 0

    print("ready", flush=True)
    deadline = time.monotonic() + timeout_s
    while n < expected and time.monotonic() < deadline:
        polled = consumer.poll(timeout_ms=50)
        records = {tp.topic: recs for tp, recs in polled.items()}
        for msg in records.get(events_topic, []):
            rec = json.loads(msg.value)
            if rec["model_id"] != model_id:
                continue
            x = dict(enumerate(rec["features"]))
            if rec["event_id"] in waiting:
                learn(x, waiting.pop(rec["event_id"]))
            else:
                events[rec["event_id"]] = x
        for msg in records.get(labels_topic, []):
            rec = json.loads(msg.value)
            if rec["model_id"] != model_id:
                continue
            x = events.pop(rec["event_id"], None)
            if x is None:
                waiting[rec["event_id"]] = bool(rec["label"])
                labels_first += 1
                continue
            learn(x, bool(rec["label"]))
            if since_publish >= batch:
                publish()
        if since_publish and not polled:
            publish()
    if since_publish:
        publish()
    with open("/proc/self/status") as status:
        mem = {
            k: v.split()[0]
            for k, v in (line.split(":", 1) for line in status)
            if k in ("VmRSS", "VmHWM")
        }
    print(
        json.dumps(
            {
                "n": n,
                "labels_first": labels_first,
                "rss_kb": int(mem["VmRSS"]),
                "hwm_kb": int(mem["VmHWM"]),
            }
        ),
        flush=True,
    )


def start_naive(
    settings: Settings, key: str, model_id: str, batch: int, expected: int, timeout_s: float
) -> subprocess.Popen[str]:
    """Start :func:`naive_loop` in a bare interpreter and wait until it is positioned."""
    r = settings.redis
    kwargs = {
        "bootstrap": settings.kafka.bootstrap,
        "events_topic": settings.kafka.topics.events,
        "labels_topic": settings.kafka.topics.labels,
        "redis_host": r.host,
        "redis_port": r.port,
        "redis_password": r.password,
        "key": key,
        "model_id": model_id,
        "batch": batch,
        "expected": expected,
        "timeout_s": timeout_s,
    }
    code = (
        textwrap.dedent(inspect.getsource(naive_loop))
        + "\nimport json, sys\nnaive_loop(**json.loads(sys.argv[1]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", code, json.dumps(kwargs)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise SystemExit(f"error: the naive loop did not start (said {line!r})")
    return proc


def run_naive(
    settings: Settings, rate: float, args: argparse.Namespace, tmp: Path, seed: int
) -> tuple[RunResult, dict[str, Any]]:
    model_id = f"naive-{uuid.uuid4().hex[:6]}"
    key = f"naive:model:{model_id}"
    n = int(rate * (args.warmup_s + args.seconds))
    naive = start_naive(
        settings,
        key,
        model_id,
        settings.job.batch_size,
        n,
        timeout_s=args.warmup_s + args.seconds + args.drain_s + 30,
    )
    out = tmp / f"{model_id}.npz"
    log(
        f"naive loop: producing {n:,} events + delayed labels at {rate:,.0f}/s, "
        f"polling Redis every {args.poll_ms:g} ms ..."
    )
    producer = start_producer(settings, model_id, rate, n, args.label_delay_ms, seed, out)
    polls, ok = asyncio.run(
        poll_redis_counter(settings, key, args.poll_ms / 1000, n, producer, args.drain_s)
    )
    producer.join()
    stdout, _ = naive.communicate(timeout=60)
    summary = json.loads(stdout.strip().splitlines()[-1])
    if producer.exitcode != 0:
        raise SystemExit(f"error: the producer process failed (exit {producer.exitcode})")
    sent = load_sent(out)
    idx = measured(sent, args.warmup_s)
    poll_t, poll_n = np.array([p[0] for p in polls]), np.array([p[1] for p in polls])
    served_at = first_reaching(poll_t, poll_n, idx + 1)
    freshness = served_at - sent.append_ms[idx] / 1000
    checks = check_sent(sent)
    checks.append(
        ("final n == labels sent", summary["n"] == sent.n, f"{summary['n']:,} vs {sent.n:,}")
    )
    checks.append(
        (
            "no label arrived before its event (rank = label order)",
            summary["labels_first"] == 0,
            f"{summary['labels_first']} did",
        )
    )
    if not ok:
        log("warning: the naive loop did not publish every sample in time")
    result = RunResult(
        "naive loop -> Redis",
        f"naive {rate:g}/s",
        None,
        "join",
        rate,
        sent,
        freshness,
        int(np.sum(~np.isfinite(freshness))),
        checks,
        applied_rate=applied_rate(poll_t, poll_n, sent.start_s + args.warmup_s, sent.end_s),
    )
    return result, summary


# --------------------------------------------------------------------------- report


def fmt_s(x: float) -> str:
    return "   n/a" if not np.isfinite(x) else f"{x:6.3f}"


def report(
    results: list[RunResult],
    naive_summaries: list[dict[str, Any]],
    args: argparse.Namespace,
    settings: Settings,
) -> None:
    f = settings.flink
    print(
        "\nFreshness: label (or labelled sample) appended to Kafka (broker LogAppendTime) -> "
        "the predictor serving a version trained on it"
    )
    print(
        f"  one model a run; path join: events + their labels {args.label_delay_ms} ms later "
        f"(fl.events + fl.labels, label join); path samples: labelled samples (fl.samples)"
    )
    print(
        f"  {args.seconds:g}s measured after {args.warmup_s:g}s warm-up; 1 partition, "
        f"parallelism 1, batch {settings.job.batch_size} / timeout "
        f"{settings.job.batch_timeout_ms} ms, Python bundle {f.python_bundle_time_ms} ms / "
        f"{f.python_bundle_size:,} records; poll every {args.poll_ms:g} ms"
    )
    print(
        "  2 shared, noisy cores run everything (Kafka, Redis, Flink with 3 Python workers, "
        "the predictor, producer, poller, and other people's work): read ratios"
    )
    head = (
        f"  {'system':27s} {'path':7s} {'in/s':>6s} {'ckpt':>5s} {'done/s':>7s} "
        f"{'labels':>7s} {'p50 s':>7s} {'p95 s':>7s} {'p99 s':>7s} {'max s':>7s} "
        f"{'>1 s':>6s} {'ckpts':>5s}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in results:
        st = stats(r.freshness)
        ckpt = "-" if r.checkpoint_interval_ms is None else f"{r.checkpoint_interval_ms / 1000:g}s"
        ckpts = "-" if r.checkpoint_interval_ms is None else str(len(r.checkpoints))
        over = f"{st['over_1s']:.1%}" if st["n"] else "-"
        print(
            f"  {r.name:27s} {r.path:7s} {r.rate:>6,.0f} {ckpt:>5s} {r.applied_rate:>7,.0f} "
            f"{st['n']:>7,} {fmt_s(st['p50']):>7s} {fmt_s(st['p95']):>7s} "
            f"{fmt_s(st['p99']):>7s} {fmt_s(st['max']):>7s} "
            f"{over:>6s} "
            f"{ckpts:>5s}"
        )
        if r.missing:
            print(
                f"  {'':27s} ({r.missing:,} measured labels not yet served when the run "
                f"ended; the percentiles are of the {st['n']:,} served)"
            )
    print(
        "  done/s: samples applied (flowlearn) or learnt (naive) per second while the input "
        "ran; below in/s the system fell behind and its freshness is its backlog"
    )
    naives = {r.rate: r for r in results if r.checkpoint_interval_ms is None}
    for r in results:
        peer = naives.get(r.rate)
        if r.checkpoint_interval_ms is None or peer is None:
            continue
        a, b = stats(r.freshness), stats(peer.freshness)
        if not (a["n"] and b["n"]) or r.name.endswith("(overloaded)"):
            continue
        print(
            f"  ratio flowlearn {r.path} (ckpt {r.checkpoint_interval_ms / 1000:g}s) / naive, "
            f"both at {r.rate:,.0f}/s: p50 {a['p50'] / b['p50']:.1f}x, "
            f"p95 {a['p95'] / b['p95']:.1f}x"
        )
    for r in results:
        if r.checkpoint_interval_ms is None:
            continue
        print(f"\n  Where the time goes: {r.tag} (per label, p50 / p95 s)")
        for name, values in r.breakdown.items():
            st = stats(values)
            print(f"    {name:52s} {fmt_s(st['p50'])} / {fmt_s(st['p95'])}")
        if r.load:
            # Sources are left out: with Python operators chained to them, Flink reports
            # them 1000 ms/s busy even without input.
            busiest = sorted(
                ((n, v) for n, v in r.load.items() if not n.endswith("-source")),
                key=lambda kv: -kv[1][0],
            )[:3]
            print(
                "    busiest non-source vertices half-way (busy / back-pressured ms per s): "
                + ", ".join(f"{name} {busy:.0f}/{bp:.0f}" for name, (busy, bp) in busiest)
            )
        if r.checkpoints:
            durations = [h.get("end_to_end_duration", 0) for h in r.checkpoints]
            near = stats(r.near_checkpoint if r.near_checkpoint is not None else np.array([]))
            print(
                f"    {len(r.checkpoints)} checkpoints during the input (end-to-end "
                f"{min(durations):,}-{max(durations):,} ms); labels arriving from 1 s before "
                f"a checkpoint to its end: {near['n']:,}, p95 {fmt_s(near['p95']).strip()} s"
            )
            last = max(r.checkpoints, key=lambda h: h.get("end_to_end_duration", 0)).get("last_ack")
            if last:
                print(
                    f"    slowest checkpoint: last acknowledged by {last[0]} after "
                    f"{last[1]:,.0f} ms"
                )
    print(
        "\n  Checks (fl.labels and fl.samples set to LogAppendTime, read back with "
        "describe_configs)"
    )
    for r in results:
        for what, ok, detail in r.checks:
            mark = "ok  " if ok else ("n/a " if ok is None else "FAIL")
            print(f"    [{mark}] {r.tag}: {what} ({detail})")
    for summary in naive_summaries:
        print(
            f"  naive loop at {summary['rate']:,.0f}/s: process RSS "
            f"{summary['rss_kb'] / 1024:.0f} MiB at the end (peak "
            f"{summary['hwm_kb'] / 1024:.0f} MiB)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rate", type=float, default=2000.0, help="labelled samples/s (default 2000)"
    )
    parser.add_argument(
        "--join-rate",
        type=float,
        default=50.0,
        help="labelled samples/s on the join path (default 50; the label join "
        "keeps up with about 800/s on the 2-core machine; without --quick "
        "one more join run at --rate shows the overload)",
    )
    parser.add_argument(
        "--paths",
        default="join,samples",
        help="input paths to measure the job on: join, samples (default both)",
    )
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="measured seconds of input per run (default 30)"
    )
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=5.0,
        help="seconds of input before the measured labels (default 5)",
    )
    parser.add_argument(
        "--label-delay-ms",
        type=int,
        default=500,
        help="each label is sent this long after its event (default 500)",
    )
    parser.add_argument(
        "--poll-ms",
        type=float,
        default=5.0,
        help="poll interval of the predictor / Redis: the resolution (5)",
    )
    parser.add_argument(
        "--checkpoint-intervals",
        default="5000,30000",
        help="flink.checkpoint_interval_ms values, comma-separated",
    )
    parser.add_argument(
        "--drain-s",
        type=float,
        default=60.0,
        help="how long to wait for the last label to be served (default 60)",
    )
    parser.add_argument(
        "--bundle-time-ms",
        type=int,
        default=None,
        help="flink.python_bundle_time_ms of the job (default: the settings')",
    )
    parser.add_argument(
        "--batch-timeout-ms",
        type=int,
        default=None,
        help="job.batch_timeout_ms of the job (default: the settings')",
    )
    parser.add_argument("--no-naive", action="store_true", help="skip the naive peer")
    parser.add_argument(
        "--quick", action="store_true", help="15 s measured after 3 s warm-up per run, 30 s drain"
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup_s, args.drain_s = 15.0, 3.0, 30.0
    intervals = [int(x) for x in args.checkpoint_intervals.split(",") if x]
    paths = [x for x in args.paths.split(",") if x]
    unknown = set(paths) - {"join", "samples"}
    if unknown:
        parser.error(f"--paths: unknown {sorted(unknown)}")
    join_rate = args.join_rate
    results: list[RunResult] = []
    naive_summaries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        extra = (
            ""
            if args.batch_timeout_ms is None
            else f"[job]\nbatch_timeout_ms = {args.batch_timeout_ms}\n"
        )
        bench = BenchStack(tmp, extra, bundle_time_ms=args.bundle_time_ms)
        settings = bench.settings
        with bench.running():
            for topic in (settings.kafka.topics.labels, settings.kafka.topics.samples):
                set_log_append_time(settings, topic)
            seed = 100
            for path in paths:
                for interval in intervals:
                    seed += 1
                    rate = join_rate if path == "join" else args.rate
                    results.append(run_flowlearn(bench, path, rate, interval, args, tmp, seed))
            if "join" in paths and join_rate < args.rate and not args.quick:
                # The rate on the join path, above what the label join sustains here.
                seed += 1
                results.append(
                    run_flowlearn(
                        bench, "join", args.rate, intervals[0], args, tmp, seed, overload=True
                    )
                )
            if not args.no_naive:
                for rate in sorted({join_rate, args.rate}):
                    seed += 1
                    naive, summary = run_naive(settings, rate, args, tmp, seed)
                    results.append(naive)
                    naive_summaries.append({**summary, "rate": rate})
    report(results, naive_summaries, args, settings)


if __name__ == "__main__":
    main()
