"""Thousands of models in one job: what each costs, and how fast they train together.

10,000 models (``--models``) share one job on the bench stack:

- half dense (10 features), each created by its first record (``job.unknown_model_policy =
  "infer"``, the default: the job infers the spec and creates the model through
  ``fl.control``);
- half hashed (1,024 columns, a few string tokens per sample), each created first by a
  ``create`` command, as ``flowlearn models create`` sends it.

Traffic is skewed: every model gets one sample, then the rest go to models drawn from a Zipf
law (exponent 1.1), so a few models are hot and most are cold. The bench reports:

- samples/s from the first sample sent to the last one trained (the creates included);
- the job's state: the last checkpoint's size and duration, and per model;
- memory: the TaskManager JVM and its Python workers, and one predictor holding every model;
- the predictor's latency over random models (sequential requests);
- the per-model Prometheus series the TaskManager exports (bounded by
  ``job.model_metrics_limit``);

The job keeps its state in RocksDB and 4 versions and 2 checkpoints of each model for
rollbacks (``job.keep_versions``, ``job.keep_checkpoints``);
- the named peer in the same run: River's default pipeline (``StandardScaler |
  LogisticRegression``), one per model in a dict, learning the same samples in one process
  (no Kafka, no state, no checkpoints): samples/s and memory, and the ratios.

It starts its own stack (home ``.flowlearn-bench-fresh``, ports 3xxxx) and stops it.

    python bench/bench_models.py [--models 10000] [--samples 200000] [--quick] [--hot-models N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from bench_freshness import BenchStack, log
from bench_state import job_processes, memory_kb, wait_until

from flowlearn.contracts.records import control_record
from flowlearn.contracts.redis_contract import Keys, redis_client
from flowlearn.devstack import jobctl, processes
from flowlearn.devstack.flink_cluster import flink_rest

DENSE_FEATURES = 10
#: A prediction slower than this counts as timed out.
REQUEST_TIMEOUT_S = 10.0
HASHED_COLUMNS = 1024
TOKENS = [f"t{i}" for i in range(200)]
ZIPF_EXPONENT = 1.1
#: Thousands of models on one 2-core machine: state on disk (RocksDB), and a short rollback
#: history per model (the defaults keep 20 versions and 20 checkpoints of each: 41 copies
#: of its weights).
JOB_CONFIG = """[job]
keep_versions = 4
keep_checkpoints = 2
"""


def model_ids(n: int) -> list[str]:
    return [f"m{i:05d}" for i in range(n)]


def is_hashed(model_id: str) -> bool:
    return int(model_id[1:]) % 2 == 1


def traffic(models: list[str], n: int, seed: int) -> list[str]:
    """The model of each sample: every model once, then Zipf-skewed draws."""
    rng = np.random.default_rng(seed)
    ranks = rng.permutation(len(models))  # which model is how hot
    weights = 1.0 / (ranks + 1.0) ** ZIPF_EXPONENT
    rest = rng.choice(len(models), size=max(n - len(models), 0), p=weights / weights.sum())
    return models + [models[i] for i in rest]


def sample(model_id: str, i: int, rng: random.Random) -> dict[str, Any]:
    """A labelled sample: a linear concept of the model's own over its features."""
    salt = int(model_id[1:])
    if is_hashed(model_id):
        tokens = rng.sample(TOKENS, 4)
        features: Any = {f"f{j}": token for j, token in enumerate(tokens)}
        label = int(sum(int(t[1:]) * (salt % 7 + 1) for t in tokens) % 3 == 0)
    else:
        features = [rng.gauss(0, 1) for _ in range(DENSE_FEATURES)]
        label = int(sum(x * ((salt + j) % 5 - 2) for j, x in enumerate(features)) > 0)
    return {"model_id": model_id, "ts": 1_700_000_000_000 + i, "features": features, "label": label}


def send(settings: Any, topic: str, records: list[tuple[str, bytes]]) -> float:
    """Send (key, value) records as fast as the producer goes; the seconds it took."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        **settings.kafka.client_options(), acks=1, linger_ms=20, batch_size=1 << 20
    )
    t0 = time.monotonic()
    for key, value in records:
        producer.send(topic, key=key.encode(), value=value)
    producer.flush()
    producer.close()
    return time.monotonic() - t0


def applied(client: Any, keys: Keys, models: list[str]) -> tuple[int, int]:
    """(samples applied, models published) over ``models``, from their snapshots."""
    pipe = client.pipeline(transaction=False)
    for model_id in models:
        pipe.hget(keys.snapshot(model_id), "samples_applied")
    values = pipe.execute()
    return sum(int(v) for v in values if v is not None), sum(v is not None for v in values)


def latest_checkpoint(settings: Any, job_id: str) -> dict[str, Any]:
    stats = flink_rest(settings, f"/jobs/{job_id}/checkpoints")
    return dict(stats["latest"]["completed"] or {})


def predictor_latency(url: str, models: list[str], n: int, seed: int) -> tuple[list[float], int]:
    """Seconds of ``n`` sequential predictions over random models (one connection), and how
    many of them took longer than REQUEST_TIMEOUT_S (left out of the seconds)."""
    rng = random.Random(seed)
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=REQUEST_TIMEOUT_S)
    times, timeouts = [], 0
    for i in range(n):
        model_id = rng.choice(models)
        body = json.dumps({"instances": [sample(model_id, i, rng)["features"]]})
        t0 = time.perf_counter()
        try:
            connection.request(
                "POST", f"/v1/models/{model_id}:predict", body, {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
        except TimeoutError:
            timeouts += 1
            connection.close()
            connection = http.client.HTTPConnection(host, int(port), timeout=REQUEST_TIMEOUT_S)
            continue
        times.append(time.perf_counter() - t0)
        if response.status != 200:
            raise SystemExit(f"the predictor answered {response.status} for {model_id}")
    connection.close()
    return times, timeouts


def model_series(settings: Any) -> tuple[int, set[str]]:
    """Series with a ``model`` label on the TaskManager's Prometheus endpoint, and the
    labels' values."""
    low, high = (int(p) for p in settings.flink.prometheus_ports.split("-"))
    series, labels = 0, set()
    for port in range(low, high + 1):
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        except OSError:
            continue
        for line in text.decode().splitlines():
            if line.startswith("#") or 'model="' not in line:
                continue
            series += 1
            labels.add(line.split('model="', 1)[1].split('"', 1)[0])
    return series, labels


def river_peer(records: list[dict[str, Any]]) -> tuple[float, float]:
    """River's default pipeline per model, learning the same samples in process:
    (samples/s, MiB of Python allocations held by the models)."""
    from river import linear_model, preprocessing

    tracemalloc.start()
    models: dict[str, Any] = {}
    t0 = time.monotonic()
    for r in records:
        model = models.get(r["model_id"])
        if model is None:
            model = models[r["model_id"]] = (
                preprocessing.StandardScaler() | linear_model.LogisticRegression()
            )
        features = r["features"]
        x = (
            {f"{k}={v}": 1.0 for k, v in features.items()}
            if isinstance(features, dict)
            else dict(enumerate(features))
        )
        model.learn_one(x, bool(r["label"]))
    rate = len(records) / (time.monotonic() - t0)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return rate, held / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=2_000, help="predictions timed")
    parser.add_argument("--quick", action="store_true", help="2,000 models, 40,000 samples")
    parser.add_argument(
        "--hot-models",
        type=int,
        default=None,
        help="job.hot_models (default: the job's): models kept in Python memory per operator",
    )
    args = parser.parse_args()
    n_models, n_samples = (2_000, 40_000) if args.quick else (args.models, args.samples)
    models = model_ids(n_models)
    hashed = [m for m in models if is_hashed(m)]
    rng = random.Random(7)
    records = [sample(m, i, rng) for i, m in enumerate(traffic(models, n_samples, seed=7))]
    hashed_spec = {"type": "logistic", "features": "hashed", "n_features": HASHED_COLUMNS}

    with tempfile.TemporaryDirectory() as tmp:
        job_config = JOB_CONFIG
        if args.hot_models is not None:
            job_config += f"hot_models = {args.hot_models}\n"
        bench = BenchStack(Path(tmp), extra=job_config, flink_extra='state_backend = "rocksdb"\n')
        settings = bench.settings
        with bench.running():
            bench.cli("submit", "--fresh")
            job = jobctl.find_job(settings)
            assert job is not None
            client = redis_client(settings.redis, timeout_s=30)
            keys = Keys(settings.redis.prefix)
            log(f"creating {len(hashed):,} hashed models with create commands ...")
            t_start = time.monotonic()
            creates = [
                (m, control_record(m, "create", {"spec": hashed_spec}, "bench").encode())
                for m in hashed
            ]
            send(settings, settings.kafka.topics.control, creates)
            wait_until(
                "every hashed model's version 1",
                lambda: applied(client, keys, hashed)[1] == len(hashed),
                timeout_s=600,
            )
            t_created = time.monotonic() - t_start
            log(f"created in {t_created:.1f}s; sending {len(records):,} samples ...")
            t0 = time.monotonic()
            t_send = send(
                settings,
                settings.kafka.topics.samples,
                [(r["model_id"], json.dumps(r).encode()) for r in records],
            )
            last_report = [0.0]

            def all_trained() -> bool:
                total, published = applied(client, keys, models)
                if time.monotonic() - last_report[0] > 15:
                    log(f"  {total:,} samples applied, {published:,} models published")
                    last_report[0] = time.monotonic()
                return total >= len(records)

            wait_until("every sample trained", all_trained, timeout_s=3600)
            t_train = time.monotonic() - t0
            log("waiting for a checkpoint after the last sample ...")
            before = latest_checkpoint(settings, job.id).get("id", -1)
            wait_until(
                "a checkpoint",
                lambda: latest_checkpoint(settings, job.id).get("id", -1) > before,
                timeout_s=120,
            )
            checkpoint = latest_checkpoint(settings, job.id)
            memory = {
                name: memory_kb(pid)[0] / 1024 for name, pid in job_processes(settings).items()
            }
            predictor_pid = processes.running_pid(settings, "predictor")
            log("predictor: waiting for every model to be loaded, then timing requests ...")
            t_ready = wait_until(
                "the predictor to load every model",
                lambda: urllib.request.urlopen(f"{settings.predictor.url}/readyz").status == 200,
                timeout_s=900,
            )
            predictor_rss = memory_kb(predictor_pid)[0] / 1024 if predictor_pid else 0.0
            latencies, timeouts = predictor_latency(
                settings.predictor.url, models, args.requests, seed=3
            )
            series, labels = model_series(settings)
    log("River peer: the same samples, one pipeline per model, in process ...")
    river_rate, river_mib = river_peer(records)

    size = float(checkpoint.get("state_size") or checkpoint.get("checkpointed_size") or 0)
    job_rate = len(records) / t_train
    jvm = sum(v for k, v in memory.items() if "TaskManager" in k)
    workers = sum(v for k, v in memory.items() if "Python worker" in k)
    p50, p99 = (statistics.quantiles(latencies, n=100)[i] * 1e3 for i in (49, 98))
    print(
        f"\n{n_models:,} models in one job ({len(hashed):,} hashed with {HASHED_COLUMNS} "
        f"columns, {n_models - len(hashed):,} dense with {DENSE_FEATURES} features), "
        f"{len(records):,} samples, Zipf {ZIPF_EXPONENT} traffic, 2 cores, job.hot_models "
        f"{'default' if args.hot_models is None else f'{args.hot_models:,}'}"
    )
    rows = [
        ("hashed models created (create commands)", f"{t_created:.1f} s"),
        ("samples sent (JSON, one producer)", f"{t_send:.1f} s"),
        ("job: samples/s, first sent to last trained", f"{job_rate:,.0f}"),
        ("River peer: samples/s (in process, no Kafka)", f"{river_rate:,.0f}"),
        ("checkpoint size", f"{size / 2**20:.1f} MiB ({size / n_models / 1024:.1f} KiB a model)"),
        ("checkpoint duration", f"{checkpoint.get('end_to_end_duration', 0) / 1e3:.1f} s"),
        ("TaskManager JVM RSS", f"{jvm:,.0f} MiB"),
        ("Python workers RSS", f"{workers:,.0f} MiB ({workers * 1024 / n_models:.1f} KiB a model)"),
        ("River peer: memory held by the models", f"{river_mib:,.0f} MiB"),
        ("predictor RSS, every model loaded", f"{predictor_rss:,.0f} MiB"),
        ("predictor: every model loaded, after the last sample", f"{t_ready:.0f} s"),
        (
            f"predictor latency p50 / p99 ({len(latencies):,} requests)",
            f"{p50:.2f} / {p99:.2f} ms, {timeouts} over {REQUEST_TIMEOUT_S:.0f} s",
        ),
        ("per-model Prometheus series (TaskManager)", f"{series:,} over {len(labels):,} labels"),
    ]
    for name, value in rows:
        print(f"  {name:58s} {value}")
    print(
        f"  ratios: job / River samples/s {job_rate / river_rate:.2f}x; "
        f"job Python workers / River memory {workers / max(river_mib, 1e-9):.2f}x"
    )


if __name__ == "__main__":
    sys.exit(main())
