"""State size per model and per pending label-join entry; job memory at steady state.

1. Offline, from the code the trainer runs (``ModelTrainer.state_bytes()``,
   ``codec.encode_array`` of the weights): the managed state of one model — its state
   bytes, ``job.keep_versions`` recent versions, ``job.keep_checkpoints`` checkpoint
   versions (kept by the trainer and again by the checkpoint operator), a full batch
   buffer — for the demo spec (10 dense features) and a hashed 2**18 model.
2. On the running job (its own stack: home ``.flowlearn-bench-fresh``, ports 3xxxx,
   stopped at the end), from Flink's REST checkpoint statistics
   (``/jobs/{id}/checkpoints/details/{cid}``, per-vertex checkpointed size; the hashmap
   backend writes full checkpoints, so a size is all of the vertex's state):
   - the growth of the trainer's (and the drift and checkpoint operators') state when one
     10-feature model has trained, and when one hashed 2**18 model has trained 25
     versions (batch size 1: the parse step densifies hashed features, 2 MB a sample);
   - the label join: N events without labels (pending entries), checkpoint, divide the
     growth by N; then their labels (a joined pair keeps its event until the label window
     closes, to ignore duplicates), checkpoint again.
3. Memory: RSS (and PSS) of the TaskManager JVM, each Python worker process (found under
   the TaskManager in /proc) and the JobManager after ``--steady-s`` of steady input
   (events + labels at ``--rate``), sampled three times, 10 s apart; then the naive peer
   of bench_freshness.py (kafka-python + River ``learn_one`` + Redis) on the same input.

    python bench/bench_state.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import tempfile
import time
import urllib.error
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench_freshness import (
    N_FEATURES,
    BenchStack,
    log,
    start_naive,
    start_producer,
    trigger_checkpoint,
)

from flowlearn.conf import Settings
from flowlearn.contracts.redis_contract import Keys, redis_client
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.core import codec
from flowlearn.devstack import jobctl
from flowlearn.devstack.flink_cluster import flink_rest
from flowlearn.devstack.processes import running_pid

HASHED_MODEL = "state-hashed"
HASHED_DIM = 2**18
HASHED_EXTRA = f"""
[models.{HASHED_MODEL}]
features = "hashed"
n_features = {HASHED_DIM}
batch_size = 1
"""
KB = 1024


# --------------------------------------------------------------------------- offline


def offline_state(spec: dict[str, Any], settings: Settings, batch_size: int) -> dict[str, int]:
    """Bytes of one model's trainer state as the trainer writes it (after one batch)."""
    from flowlearn.core.training import ModelTrainer

    trainer = ModelTrainer.create("m", spec)
    n = int(spec["n_features"])
    rng = np.random.default_rng(0)
    X = np.zeros((4, n))
    for row in X:  # a few non-zero columns, as hashed features give
        row[rng.integers(0, n, size=min(n, 10))] = rng.normal(size=min(n, 10))
    trainer.train_batch(X, np.array([0.0, 1.0, 0.0, 1.0]))
    job = settings.job
    version = len(codec.encode_array(trainer.model.weights_vector()))
    keep_checkpoints = getattr(job, "keep_checkpoints", 0)
    out = {
        "model state": len(trainer.state_bytes()),
        "one version's weights": version,
        f"recent versions (x{job.keep_versions})": job.keep_versions * version,
        f"checkpoint versions (x{keep_checkpoints})": keep_checkpoints * version,
        # The checkpoint operator keeps the same weights again, to register them.
        f"checkpoint operator's copy (x{keep_checkpoints})": keep_checkpoints * version,
        # BUFFERED_SAMPLE_TYPE rows as raw numbers: ts, features, one label.
        f"full batch buffer ({batch_size - 1} samples, raw)": (batch_size - 1) * (8 + 8 * n + 8),
    }
    out["total"] = sum(v for k, v in out.items() if k != "one version's weights")
    return out


# --------------------------------------------------------------------------- Flink REST


def vertices(settings: Settings, job_id: str) -> dict[str, str]:
    """First operator name of each vertex -> vertex id."""
    detail = flink_rest(settings, f"/jobs/{job_id}")
    return {
        v["name"].split(" -> ")[0].removeprefix("Source: "): v["id"] for v in detail["vertices"]
    }


def checkpoint_sizes(settings: Settings, job_id: str) -> dict[str, int]:
    """Trigger a checkpoint; checkpointed bytes per vertex (by first operator name)."""
    cid = trigger_checkpoint(settings, job_id)
    if cid is None:
        raise SystemExit("error: a checkpoint could not be taken")
    # The REST handlers serve a cached execution graph (web.refresh-interval): a checkpoint
    # that just completed may not be listed for a few seconds yet.
    deadline = time.monotonic() + 30
    while True:
        try:
            detail = flink_rest(settings, f"/jobs/{job_id}/checkpoints/details/{cid}")
            break
        except urllib.error.HTTPError as exc:
            if exc.code != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    names = {vid: name for name, vid in vertices(settings, job_id).items()}
    sizes = {
        names.get(vid, vid): int(t.get("checkpointed_size", 0))
        for vid, t in detail.get("tasks", {}).items()
    }
    sizes["(job)"] = int(detail.get("checkpointed_size", 0))
    return sizes


def records_in(settings: Settings, job_id: str, vertex_id: str) -> int:
    metrics = flink_rest(
        settings, f"/jobs/{job_id}/vertices/{vertex_id}/subtasks/metrics?get=numRecordsIn"
    )
    return int(sum(float(m.get("sum", 0)) for m in metrics))


def wait_until(what: str, check: Callable[[], Any], timeout_s: float, poll_s: float = 0.5) -> float:
    """Seconds it took (checked every ``poll_s``); SystemExit when it does not happen in
    time."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            if check():
                return time.monotonic() - t0
        except (OSError, urllib.error.URLError, ValueError):
            pass
        time.sleep(poll_s)
    raise SystemExit(f"error: {what} did not happen within {timeout_s:.0f}s")


def latest_version(settings: Settings, model_id: str) -> int:
    """The newest version in the model's delta stream (a large model's snapshot is only
    rewritten every SNAPSHOT_INTERVAL versions)."""
    entries = redis_client(settings.redis).xrevrange(
        Keys(settings.redis.prefix).deltas(model_id), count=1
    )
    return int(entries[0][1][b"version"]) if entries else 0


def snapshot_applied(settings: Settings, model_id: str) -> int:
    raw = redis_client(settings.redis).hget(
        Keys(settings.redis.prefix).snapshot(model_id), "samples_applied"
    )
    return int(raw) if raw is not None else 0


# --------------------------------------------------------------------------- producing


def kafka_producer(settings: Settings) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap,
        acks="all",
        linger_ms=20,
        key_serializer=str.encode,
        value_serializer=lambda v: json.dumps(v).encode(),
    )


def send_events(settings: Settings, model_id: str, start: int, n: int, labels: bool) -> None:
    """Events ``start..start+n`` of ``model_id`` (or their labels) as fast as possible."""
    from flowlearn.devstack.producer import DriftingStream

    producer = kafka_producer(settings)
    now = int(time.time() * 1000)
    records = DriftingStream(n_features=N_FEATURES, seed=7, model_id=model_id).take(
        start + n, now, step_ms=0
    )[start:]
    topics = settings.kafka.topics
    for rec in records:
        if labels:
            producer.send(
                topics.labels,
                key=model_id,
                value={
                    "event_id": rec["event_id"],
                    "model_id": model_id,
                    "ts": now + 1,
                    "label": rec["label"],
                },
            )
        else:
            producer.send(
                topics.events,
                key=model_id,
                value={k: rec[k] for k in ("event_id", "model_id", "ts", "features")},
            )
    producer.flush()
    producer.close()


def send_hashed_samples(settings: Settings, n: int) -> None:
    producer = kafka_producer(settings)
    rng = np.random.default_rng(3)
    now = int(time.time() * 1000)
    for i in range(n):
        features = {f"f{int(k)}": float(rng.normal()) for k in rng.integers(0, 10**6, size=20)}
        producer.send(
            settings.kafka.topics.samples,
            key=HASHED_MODEL,
            value={
                "model_id": HASHED_MODEL,
                "ts": now + i,
                "features": features,
                "label": int(rng.random() < 0.5),
            },
        )
    producer.flush()
    producer.close()


# --------------------------------------------------------------------------- processes


def _ppids() -> dict[int, int]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                out[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(") ", 1)[1].split()[1]
                )
    return out


def descendants(pid: int) -> list[int]:
    parents = _ppids()
    found, frontier = [pid], [pid]
    while frontier:
        children = [p for p, pp in parents.items() if pp in frontier]
        found += children
        frontier = children
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB; (0, 0) when gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, clock ticks


def job_processes(settings: Settings) -> dict[str, int]:
    """Name -> pid: the TaskManager JVM, its Python workers, the JobManager JVM."""
    out: dict[str, int] = {}
    tm = running_pid(settings, "taskmanager")
    if tm is not None:
        workers = 0
        for pid in descendants(tm):
            cmd = cmdline(pid)
            if "TaskManagerRunner" in cmd:
                out["TaskManager JVM"] = pid
            elif "beam_boot" in cmd and "python" in cmd.split(" ", 1)[0]:
                workers += 1
                out[f"Python worker {workers}"] = pid
    jm = running_pid(settings, "jobmanager")
    if jm is not None:
        for pid in descendants(jm):
            if "StandaloneSessionClusterEntrypoint" in cmdline(pid):
                out["JobManager JVM"] = pid
    return out


def taskmanager_heap(settings: Settings) -> dict[str, float]:
    try:
        tms = flink_rest(settings, "/taskmanagers")["taskmanagers"]
        metrics = flink_rest(
            settings,
            f"/taskmanagers/{tms[0]['id']}/metrics?get=Status.JVM.Memory.Heap.Used,"
            "Status.JVM.Memory.Heap.Max,Status.Flink.Memory.Managed.Used",
        )
    except (OSError, urllib.error.URLError, ValueError, IndexError, KeyError):
        return {}
    return {m["id"]: float(m["value"]) for m in metrics}


def sample_memory(
    pids: dict[str, int],
    at_s: list[float],
    started: float,
    extra: Callable[[], dict[str, float]] | None = None,
) -> tuple[list[dict[str, tuple[int, int]]], dict[str, float], list[Any]]:
    """RSS/PSS of ``pids`` at ``at_s`` seconds after ``started``; CPU % of a core over the
    window; ``extra()`` at each sample."""
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    samples, extras = [], []
    for at in at_s:
        time.sleep(max(0.0, started + at - time.monotonic()))
        log(f"  memory sample at {at:.0f}s")
        samples.append({name: memory_kb(pid) for name, pid in pids.items()})
        extras.append(extra() if extra else {})
    elapsed = time.monotonic() - t0
    cpu = {
        name: 100 * (cpu_seconds(pid) - cpu0[name]) / max(elapsed, 1e-9)
        for name, pid in pids.items()
    }
    return samples, cpu, extras


# --------------------------------------------------------------------------- report


def mib(kb: float) -> str:
    return f"{kb / 1024:7.0f}"


def size(n: float) -> str:
    if abs(n) >= 10 * KB * KB:
        return f"{n / KB / KB:8.1f} MiB"
    if abs(n) >= 10 * KB:
        return f"{n / KB:8.1f} KiB"
    return f"{n:8.0f} B  "


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=19_200,
        help="labelled samples the 10-feature model trains (default 19,200)",
    )
    parser.add_argument(
        "--pending", default="10000,50000", help="cumulative pending-event counts to checkpoint at"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=150.0,
        help="labelled samples/s of the steady input, events + labels (default "
        "150: the label join kept up with it on the 2-core machine)",
    )
    parser.add_argument(
        "--steady-s",
        type=float,
        default=60.0,
        help="seconds of steady input before the first memory sample (60)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="6,400 samples, 2,000/10,000 pending events, 20 s steady input",
    )
    parser.add_argument("--no-naive", action="store_true", help="skip the naive peer")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.pending, args.steady_s = 6_400, "2000,10000", 20.0
    pending_steps = [int(x) for x in args.pending.split(",") if x]
    sample_at = [args.steady_s, args.steady_s + 10, args.steady_s + 20]

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bench = BenchStack(tmp, extra=HASHED_EXTRA)
        settings = bench.settings
        specs = ModelSpecs(settings)
        demo_spec = specs.spec_of("demo").as_dict()
        hashed_spec = specs.models[HASHED_MODEL].as_dict()
        batch = settings.job.batch_size
        log("offline state sizes ...")
        offline = {
            "demo spec (10 dense features, SGD)": offline_state(demo_spec, settings, batch),
            f"hashed 2**18, SGD (job.batch_size {batch})": offline_state(
                {**hashed_spec, "batch_size": 0}, settings, batch
            ),
            f"hashed 2**18, Adam (job.batch_size {batch})": offline_state(
                {**hashed_spec, "batch_size": 0, "optimizer": "adam"}, settings, batch
            ),
        }
        live: dict[str, Any] = {}
        with bench.running():
            job = bench.submit(settings, bench.config)
            ids = vertices(settings, job.id)
            base = checkpoint_sizes(settings, job.id)

            # Two 10-feature models, one after the other: the first one's growth also holds
            # what a vertex writes once per state (its meta information and serializers,
            # registered at first use); the second one's is the cost of one more model.
            from flowlearn.devstack.producer import produce

            demo_sizes = [base]
            for i in range(2):
                model = f"state-demo{i + 1}-{uuid.uuid4().hex[:4]}"
                log(f"training {args.samples:,} samples into {model} ...")
                produce(
                    settings.kafka.bootstrap,
                    settings.kafka.topics,
                    model_id=model,
                    count=args.samples,
                    rate=1e12,
                    seed=1 + i,
                    quiet=True,
                )
                wait_until(
                    f"{model} trained on every sample",
                    lambda model=model: snapshot_applied(settings, model) >= args.samples,
                    600,
                )
                demo_sizes.append(checkpoint_sizes(settings, job.id))
            demo = demo_sizes[-1]
            live["demo"] = (demo_sizes, args.samples // batch)

            # One hashed 2**18 model, 25 versions (batch size 1).
            log(f"training 25 hashed samples into {HASHED_MODEL} (2 MB rows) ...")
            send_hashed_samples(settings, 25)
            try:
                took = wait_until(
                    f"{HASHED_MODEL} trained",
                    lambda: latest_version(settings, HASHED_MODEL) >= 25,
                    600,
                )
                live["hashed"] = (demo, checkpoint_sizes(settings, job.id), 25, took)
            except SystemExit as exc:
                log(f"warning: {exc}; the hashed model is reported offline only")
                live["hashed"] = None

            # Label join: pending events, then their labels.
            join_id = ids["label-join"]
            join_model = f"state-join-{uuid.uuid4().hex[:4]}"
            before = checkpoint_sizes(settings, job.id)
            steps = [(0, before["label-join"], 0.0)]
            sent = 0
            for target in pending_steps:
                n = target - sent
                log(f"label join: {n:,} more events without labels ({target:,} pending) ...")
                seen = records_in(settings, job.id, join_id)
                t0 = time.monotonic()
                send_events(settings, join_model, sent, n, labels=False)
                wait_until(
                    "the label join receiving the events",
                    lambda seen=seen, n=n: records_in(settings, job.id, join_id) >= seen + n,
                    900,
                )
                took = time.monotonic() - t0
                sent = target
                steps.append((target, checkpoint_sizes(settings, job.id)["label-join"], took))
            log(f"label join: the {sent:,} labels ...")
            seen = records_in(settings, job.id, join_id)
            t0 = time.monotonic()
            send_events(settings, join_model, 0, sent, labels=True)
            wait_until(
                "the label join receiving the labels",
                lambda: records_in(settings, job.id, join_id) >= seen + sent,
                900,
            )
            labels_took = time.monotonic() - t0
            wait_until(
                "the joined samples trained",
                lambda: snapshot_applied(settings, join_model) >= sent,
                600,
            )
            joined = checkpoint_sizes(settings, job.id)["label-join"]
            live["join"] = (steps, joined, labels_took)

            # Memory at steady state.
            steady_model = f"state-steady-{uuid.uuid4().hex[:4]}"
            total_s = sample_at[-1] + 2
            n = int(args.rate * total_s)
            log(
                f"steady input: {args.rate:,.0f} labelled samples/s into {steady_model}, memory "
                f"at {', '.join(f'{s:.0f}' for s in sample_at)}s ..."
            )
            pids = job_processes(settings)
            producer = start_producer(
                settings, steady_model, args.rate, n, 500, 5, tmp / "steady.npz"
            )
            started = time.monotonic()
            samples, cpu, heaps = sample_memory(
                pids, sample_at, started, lambda: taskmanager_heap(settings)
            )
            producer.join()
            behind = n - snapshot_applied(settings, steady_model)
            context = {
                name: memory_kb(pid)
                for name in ("kafka", "redis", "predictor")
                if (pid := running_pid(settings, name)) is not None
            }
            live["memory"] = (pids, samples, cpu, heaps, behind, n, context)
            jobctl.cancel(settings, job)

            if not args.no_naive:
                naive_model = f"naive-{uuid.uuid4().hex[:4]}"
                log(f"naive loop on the same input for {total_s:.0f}s ...")
                naive = start_naive(
                    settings,
                    f"naive:model:{naive_model}",
                    naive_model,
                    batch,
                    n,
                    timeout_s=total_s + 60,
                )
                producer = start_producer(
                    settings, naive_model, args.rate, n, 500, 6, tmp / "naive.npz"
                )
                started = time.monotonic()
                n_samples, n_cpu, _ = sample_memory({"naive loop": naive.pid}, sample_at, started)
                producer.join()
                stdout, _ = naive.communicate(timeout=120)
                summary = json.loads(stdout.strip().splitlines()[-1])
                live["naive"] = (n_samples, n_cpu, summary)

    report(offline, live, settings, args, sample_at)


def report(
    offline: dict[str, dict[str, int]],
    live: dict[str, Any],
    settings: Settings,
    args: argparse.Namespace,
    sample_at: list[float],
) -> None:
    job = settings.job
    print(
        "\nState size per model (offline, the trainer's own code: ModelTrainer.state_bytes(), "
        "codec.encode_array)"
    )
    rows = list(next(iter(offline.values())).keys())
    names = list(offline)
    print(f"  {'':44s}" + "".join(f"{n[:30]:>32s}" for n in names))
    for row in rows:
        print(f"  {row:44s}" + "".join(f"{size(offline[n][row]):>32s}" for n in names))

    print(
        "\nConfirmed on the running job (checkpointed bytes per vertex, full checkpoints of "
        "the hashmap backend)"
    )
    demo_sizes, versions = live["demo"]
    est = offline["demo spec (10 dense features, SGD)"]
    kept_ckpts = min(versions // job.checkpoint_every_versions, getattr(job, "keep_checkpoints", 0))
    expected = (
        est["model state"]
        + min(versions, job.keep_versions) * est["one version's weights"]
        + kept_ckpts * est["one version's weights"]
    )
    print(
        f"  10-feature models, {args.samples:,} samples = {versions} versions each "
        f"({min(versions, job.keep_versions)} recent + {kept_ckpts} checkpoint versions kept; "
        f"offline estimate {size(expected).strip()} a model)"
    )
    print(
        f"    {'vertex':30s} {'first model':>14s} {'second model':>14s}   (the first one also "
        f"registers the states)"
    )
    for vertex in ("trainer", "drift", "checkpoint", "(job)"):
        if vertex in demo_sizes[-1]:
            growth = [
                after[vertex] - before.get(vertex, 0)
                for before, after in itertools.pairwise(demo_sizes)
            ]
            print(f"    {vertex:30s} " + " ".join(f"{'+' + size(g).strip():>14s}" for g in growth))
    if live.get("hashed"):
        before, after, nver, took = live["hashed"]
        h = offline[f"hashed 2**18, SGD (job.batch_size {job.batch_size})"]
        kept = min(nver, job.keep_versions)
        expected = h["model state"] + kept * h["one version's weights"]
        print(
            f"  hashed 2**18 model, {nver} versions of one sample ({kept} recent kept; offline "
            f"estimate {size(expected).strip()}; trained in {took:.0f}s):"
        )
        for vertex in ("trainer", "drift", "checkpoint", "(job)"):
            if vertex in after:
                print(f"    {vertex:40s} +{size(after[vertex] - before.get(vertex, 0))}")
    else:
        print("  hashed 2**18 model: not confirmed on the job (see the warning above)")

    steps, joined, labels_took = live["join"]
    print("\nLabel join state (label-join vertex, checkpointed)")
    print(
        f"  {'events waiting for a label':30s} {'state':>13s} {'per entry':>12s} "
        f"{'events in/s':>12s}"
    )
    previous_n, previous_size = 0, steps[0][1]
    for n, state, took in steps:
        # Per entry: the growth since the previous step over the entries added.
        per = f"{(state - previous_size) / (n - previous_n):,.0f} B" if n else "-"
        rate = f"{(n - previous_n) / took:,.0f}" if n and took else "-"
        print(f"  {n:>30,} {size(state):>13s} {per:>12s} {rate:>12s}")
        previous_n, previous_size = n, state
    n_last, base_size = steps[-1][0], steps[0][1]
    print(
        f"  {'+ their labels (joined, kept)':30s} {size(joined):>13s} "
        f"{(joined - base_size) / n_last:>10,.0f} B {f'{n_last / labels_took:,.0f}':>12s}"
    )
    print(
        "  (per entry: growth over the entries added since the row above; the joined row: "
        "over all of them. events in/s: how fast the label join took them in, the whole "
        "batch sent at once)"
    )
    print(
        f"  (a joined entry keeps its event and a done flag until label_window_ms = "
        f"{job.label_window_ms:,} ms has passed, so duplicates stay ignored)"
    )

    pids, samples, cpu, heaps, behind, n, context = live["memory"]
    print(
        f"\nMemory at steady state: {args.rate:,.0f} labelled samples/s (events + labels), "
        f"samples at {', '.join(f'{s:.0f}' for s in sample_at)}s; RSS MiB (PSS of the "
        f"last sample), CPU % of one core over the sampling window"
    )
    print(
        f"  {'process':22s}"
        + "".join(f"{f'{s:.0f}s':>8s}" for s in sample_at)
        + f"{'PSS':>8s}{'CPU %':>8s}"
    )
    for name in pids:
        print(
            f"  {name:22s}"
            + "".join(mib(s[name][0]) + " " for s in samples)
            + mib(samples[-1][name][1])
            + f" {cpu[name]:7.0f}"
        )
    totals = [sum(s[name][0] for name in pids) for s in samples]
    print(
        f"  {'job total':22s}"
        + "".join(mib(t) + " " for t in totals)
        + mib(sum(samples[-1][name][1] for name in pids))
        + f" {sum(cpu.values()):7.0f}"
    )
    for i, heap in enumerate(heaps):
        if heap:
            print(
                f"  TaskManager heap used at {sample_at[i]:.0f}s: "
                f"{heap.get('Status.JVM.Memory.Heap.Used', 0) / KB / KB:.0f} MiB of "
                f"{heap.get('Status.JVM.Memory.Heap.Max', 0) / KB / KB:.0f} MiB; managed "
                f"memory used {heap.get('Status.Flink.Memory.Managed.Used', 0) / KB / KB:.0f}"
                f" MiB"
            )
    if behind > 0:
        print(f"  note: the job was {behind:,} of {n:,} samples behind when the input ended")
    print(
        "  beside the job: "
        + ", ".join(f"{name} {mib(kb[0]).strip()} MiB" for name, kb in context.items())
    )
    if "naive" in live:
        n_samples, n_cpu, summary = live["naive"]
        print(
            f"  {'naive loop (peer)':22s}"
            + "".join(mib(s["naive loop"][0]) + " " for s in n_samples)
            + mib(n_samples[-1]["naive loop"][1])
            + f" {n_cpu['naive loop']:7.0f}"
        )
        ratio = totals[-1] / max(n_samples[-1]["naive loop"][0], 1)
        print(
            f"  job total / naive loop RSS: {ratio:.1f}x (the naive loop trained "
            f"{summary['n']:,} samples; it has no state backend, checkpoints or exactly-once)"
        )
    print("  2 shared cores, other work running: figures are noisy.")


if __name__ == "__main__":
    sys.exit(main())
