"""End-to-end throughput of the training slice against a naive Kafka-consumer loop.

Each reads labelled samples from Kafka, trains a logistic model in mini-batches and
publishes to Redis:

- flowlearn: the PyFlink job (KafkaSource -> parse -> keyed trainer -> Redis publisher),
  submitted after the samples are in Kafka, timed from the job RUNNING to the Redis snapshot
  reporting every sample applied (the producer does not compete for the 2 cores); once with
  JSON samples, once with bulk Arrow records of 256 samples;
- Flink SQL over the same JSON samples, Java only: parse and count (the ceiling of the engine
  on this machine: what the job could reach if its Python cost nothing);
- naive loop (the issue's baseline): one kafka-python consumer, ``json.loads`` per record,
  River's ``LogisticRegression.learn_one`` per sample and a Redis ``HSET`` of the weights
  every batch (no state, no checkpoints, no exactly-once).

It starts its own stack (home ``.flowlearn-bench``, wiped but for the jars; its own ports)
and stops it at the end. ``--parallelism 2`` runs the job and the SQL ceiling at parallelism 2
(two TaskManagers, two partitions a topic); ``--models N`` spreads the samples over N models
(one model is trained by one subtask, whatever the parallelism).

    python bench/bench_pipeline.py [--samples 200000] [--quick] [--parallelism 1] [--models 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from flowlearn.conf import Settings, load_settings
from flowlearn.contracts.records import control_record
from flowlearn.contracts.redis_contract import Keys, read_snapshot
from flowlearn.devstack import jobctl
from flowlearn.devstack.producer import produce, send_raw

ROOT = Path(__file__).resolve().parents[1]


def bench_config(parallelism: int) -> str:
    """The bench stack's settings: one partition a topic and one TaskManager (two slots: the
    job's two slot groups) per unit of parallelism."""
    return f"""
[stack]
home = "{ROOT / ".flowlearn-bench"}"
[kafka]
port = 29092
controller_port = 29093
partitions = {parallelism}
[redis]
port = 26379
[flink]
rest_port = 28081
rpc_port = 26123
# Not the local stack's nice 10: the producers here stand for clients on other machines,
# and at nice 10 the job would yield the cores to them, as a TaskManager of its own never does.
taskmanager_nice = 0
prometheus_ports = "29249-29252"
parallelism = {parallelism}
taskmanagers = {parallelism}
[predictor]
port = 28080
[prometheus]
port = 29090
[job]
batch_size = 256
"""


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def cli(config: Path, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flowlearn.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"flowlearn {' '.join(args)} failed:\n{result.stdout}{result.stderr}")


def produce_all(settings: Settings, model_id: str, n: int, bulk: int = 0) -> float:
    """Send n samples as fast as the producer can; returns the seconds it took."""
    t0 = time.monotonic()
    produce(
        settings.kafka.bootstrap,
        settings.kafka.topics,
        model_id=model_id,
        count=n,
        rate=1e12,
        seed=1,
        bulk=bulk,
        quiet=True,
    )
    return time.monotonic() - t0


def create_model(settings: Settings, model_id: str) -> None:
    """Create the model before its samples, as a user would. Left to the "create" policy,
    the parser (decoding JSON in Java) can run more than ``job.paused_buffer_samples`` ahead
    of the create's round trip through fl.control (committed at a checkpoint), and the trainer
    then sends the oldest samples waiting for their spec to the DLQ (``paused_overflow``)."""
    spec = {"type": "logistic", "n_features": 10, "batch_size": settings.job.batch_size}
    record = control_record(model_id, "create", {"spec": spec}, source="bench")
    send_raw(settings.kafka, settings.kafka.topics.control, [record.encode()], key=model_id)


def job_rate(
    config: Path, settings: Settings, client: redis.Redis, n: int, bulk: int, models: int
) -> tuple[float, float, float]:
    """Produce n samples (JSON, or bulk records of ``bulk``) spread over ``models`` models,
    then run the job over them.

    Returns (samples/s once training runs: from the first published version to the last,
    seconds from submit to RUNNING, seconds from RUNNING to the first version). The start-up
    (Python workers, Kafka consumers) is reported apart, not spread over the samples: in a
    run of 800,000 bulk samples it was a fifth of the time."""
    run = f"bench-{'bulk' if bulk else 'json'}-{uuid.uuid4().hex[:6]}"
    model_ids = [f"{run}-{i}" for i in range(models)]
    log(f"producing {n:,} {'bulk' if bulk else 'JSON'} samples for {models} model(s) ...")
    for i, model_id in enumerate(model_ids):
        create_model(settings, model_id)
        produce_all(settings, model_id, n // models + (i < n % models), bulk)
    log("submitting the job ...")
    t0 = time.monotonic()
    cli(config, "submit")
    running = time.monotonic()
    keys = Keys(settings.redis.prefix)
    first, applied_first = wait_applied(client, keys, model_ids, 1, timeout_s=300)
    done, _ = wait_applied(client, keys, model_ids, n, timeout_s=900)
    job = jobctl.find_job(settings)
    if job is not None:
        jobctl.cancel(settings, job)
    return (n - applied_first) / (done - first), running - t0, first - running


def wait_applied(
    client: redis.Redis,
    keys: Keys,
    model_ids: list[str],
    n: int,
    timeout_s: float,
) -> tuple[float, int]:
    """When the models' snapshots first show n samples applied in all, and how many."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        snaps = [read_snapshot(client, keys, model_id) for model_id in model_ids]
        applied = sum(snap.samples_applied for snap in snaps if snap)
        if applied >= n:
            return time.monotonic(), applied
        time.sleep(0.05)
    raise SystemExit(f"the job did not apply {n} samples within {timeout_s:.0f}s")


def java_only_rate(settings: Settings, n: int) -> float:
    """The engine's ceiling here: Flink SQL, Java only, reads the topic's JSON samples from
    Kafka on the bench cluster, parses them and counts them (a bounded batch job at the
    stack's parallelism); samples/s from its first source subtask RUNNING to its last one
    FINISHED, which includes the Kafka consumers' connect: the ceiling is if anything higher."""
    from pyflink.common import Configuration
    from pyflink.table import EnvironmentSettings, TableEnvironment

    from flowlearn.devstack import jars
    from flowlearn.devstack.flink_cluster import flink_rest

    conf = Configuration()
    conf.set_string("execution.target", "remote")
    conf.set_string("rest.address", settings.flink.rest_host)
    conf.set_string("rest.port", str(settings.flink.rest_port))
    conf.set_string("parallelism.default", str(settings.flink.parallelism))
    conf.set_string("pipeline.jars", jars.kafka_connector_jar(settings).as_uri())
    env = EnvironmentSettings.new_instance().in_batch_mode().with_configuration(conf).build()
    t_env = TableEnvironment.create(env)
    t_env.execute_sql(
        f"""CREATE TEMPORARY TABLE samples (
            event_id STRING, model_id STRING, ts BIGINT, label DOUBLE, features ARRAY<DOUBLE>
        ) WITH (
            'connector' = 'kafka',
            'topic' = '{settings.kafka.topics.samples}',
            'properties.bootstrap.servers' = '{settings.kafka.bootstrap}',
            'properties.group.id' = 'bench-ceiling-{uuid.uuid4().hex[:6]}',
            'scan.startup.mode' = 'earliest-offset',
            'scan.bounded.mode' = 'latest-offset',
            'format' = 'json'
        )"""
    )
    # A sum over every feature: nothing of the parse is skipped as unused.
    result = t_env.execute_sql(
        "SELECT COUNT(*), SUM(CARDINALITY(features)) FROM samples "
        "WHERE model_id IS NOT NULL AND label IS NOT NULL AND ts IS NOT NULL"
    )
    client = result.get_job_client()
    assert client is not None
    job_id = str(client.get_job_id())
    with result.collect() as rows:
        counted = next(iter(rows))[0]
    if counted != n:
        raise SystemExit(f"the SQL job counted {counted:,} samples, not {n:,}")
    jobctl.wait_job_state(settings, job_id, {"FINISHED"}, timeout_s=60)
    for vertex in flink_rest(settings, f"/jobs/{job_id}")["vertices"]:
        if vertex["name"].startswith("Source"):
            times = flink_rest(settings, f"/jobs/{job_id}/vertices/{vertex['id']}/subtasktimes")
            stamps = [subtask["timestamps"] for subtask in times["subtasks"]]
            began = min(s["RUNNING"] for s in stamps)
            return n / ((max(s["FINISHED"] for s in stamps) - began) / 1000)
    raise SystemExit("the SQL job has no source task")


def naive_loop(settings: Settings, n: int, batch: int) -> float:
    """Consume n JSON samples from the start of the topic, train, publish; samples/s."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        settings.kafka.topics.samples,
        bootstrap_servers=settings.kafka.bootstrap,
        auto_offset_reset="earliest",
        group_id=f"naive-{uuid.uuid4()}",
        enable_auto_commit=False,
        max_poll_records=5000,
    )
    from river import linear_model

    r = settings.redis
    client = redis.Redis(host=r.host, port=r.port, password=r.password)
    model = linear_model.LogisticRegression()
    seen = 0
    t0 = None  # like the job's, its clock starts with its first sample (not its start-up)
    while seen < n:  # the JSON run's samples come first in the topic
        for records in consumer.poll(timeout_ms=500).values():
            for msg in records:
                if msg.value[:1] != b"{":
                    continue  # the bulk records of the second run
                if t0 is None:
                    t0 = time.monotonic()
                rec = json.loads(msg.value)
                model.learn_one(dict(enumerate(rec["features"])), bool(rec["label"]))
                seen += 1
                if seen % batch == 0:
                    client.hset(
                        "naive:model",
                        mapping={"weights": json.dumps(dict(model.weights)), "n": seen},
                    )
    elapsed = time.monotonic() - (t0 or 0.0)
    consumer.close()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--samples", type=int, default=200_000, help="JSON samples; the bulk run sends 4x as many"
    )
    parser.add_argument("--quick", action="store_true", help="50,000 samples (x4 in bulk)")
    parser.add_argument("--keep", action="store_true", help="leave the bench stack running")
    parser.add_argument(
        "--parallelism", type=int, default=1, help="of the job and the SQL ceiling (default 1)"
    )
    parser.add_argument(
        "--models", type=int, default=1, help="models the samples are spread over (default 1)"
    )
    args = parser.parse_args()
    if args.parallelism < 1 or args.models < 1:
        parser.error("--parallelism and --models must be >= 1")
    n = 50_000 if args.quick else args.samples
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(bench_config(args.parallelism))
        settings = load_settings(config, env={})
        home = settings.stack.home
        if home.exists():
            for child in home.iterdir():
                if child.name != "jars":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        log("starting the bench stack ...")
        t0 = time.monotonic()
        cli(config, "up")
        t_up = time.monotonic() - t0
        try:
            r = settings.redis
            client = redis.Redis(host=r.host, port=r.port, password=r.password)
            json_rate, t_submit, json_start = job_rate(
                config, settings, client, n, bulk=0, models=args.models
            )
            log("Flink SQL over the same JSON records, Java only (the ceiling) ...")
            ceiling_rate = java_only_rate(settings, n)
            bulk_rate, _, bulk_start = job_rate(
                config, settings, client, n * 4, bulk=256, models=args.models
            )
            log("naive consumer loop over the JSON records ...")
            naive_rate = naive_loop(settings, n, batch=settings.job.batch_size)
        finally:
            if not args.keep:
                cli(config, "down")
    print(
        f"\nEnd-to-end training throughput (Kafka -> train -> Redis), batch "
        f"{settings.job.batch_size}, parallelism {args.parallelism}, {args.models} model(s)"
    )
    print(
        f"  stack up {t_up:.1f}s, submit to RUNNING {t_submit:.1f}s, RUNNING to the first "
        f"version {json_start:.1f}s (JSON) / {bulk_start:.1f}s (bulk); rates from the first "
        f"version to the last"
    )
    print(f"  {'flowlearn job, JSON samples':42s} {json_rate:>10,.0f} samples/s")
    print(f"  {'flowlearn job, bulk Arrow records of 256':42s} {bulk_rate:>10,.0f} samples/s")
    print(f"  {'naive loop, River learn_one, JSON samples':42s} {naive_rate:>10,.0f} samples/s")
    print(f"  {'Flink SQL, parse and count only (Java)':42s} {ceiling_rate:>10,.0f} samples/s")
    print(
        f"  ratios: JSON job / naive {json_rate / naive_rate:.2f}x, "
        f"bulk job / naive {bulk_rate / naive_rate:.2f}x, "
        f"JSON job / Java-only ceiling {json_rate / ceiling_rate:.2f}x (target 0.5)"
    )
    cores = os.cpu_count() or 1
    print(
        f"  per core ({cores}, shared with Kafka, Redis and Flink's JVMs): JSON job "
        f"{json_rate / cores:,.0f}, bulk job {bulk_rate / cores:,.0f} samples/s"
    )


if __name__ == "__main__":
    main()
