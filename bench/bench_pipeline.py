"""End-to-end throughput of the training slice against a naive Kafka-consumer loop.

Both read the same labelled JSON samples from Kafka, train a logistic model in mini-batches
and publish to Redis:

- flowlearn: the PyFlink job (KafkaSource -> parse -> keyed trainer -> Redis publisher),
  submitted after the samples are in Kafka, timed from the job RUNNING to the Redis snapshot
  reporting every sample applied (the producer does not compete for the 2 cores);
- naive loop: one kafka-python consumer, ``json.loads`` per record, the same core model and
  a Redis ``HSET`` of the weights per batch (no state, no checkpoints, no exactly-once).

It starts its own stack (home ``.flowlearn-bench``, wiped but for the jars; its own ports)
and stops it at the end.

    python bench/bench_pipeline.py [--samples 200000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import redis

from conf import Settings, load_settings
from flowlearn import codec
from flowlearn.producer import DriftingStream
from flowlearn.redis_contract import Keys, read_snapshot
from flowlearn.training import build_model

ROOT = Path(__file__).resolve().parents[1]
BENCH_CONFIG = f"""
[stack]
home = "{ROOT / '.flowlearn-bench'}"
[kafka]
port = 29092
controller_port = 29093
partitions = 1
[redis]
port = 26379
[flink]
rest_port = 28081
prometheus_ports = "29249-29252"
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
    result = subprocess.run([sys.executable, "-m", "flowlearn.cli", "--config", str(config),
                             *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"flowlearn {' '.join(args)} failed:\n{result.stdout}{result.stderr}")


def produce_all(settings: Settings, model_id: str, n: int) -> float:
    """Send n samples as fast as kafka-python can; returns the seconds it took."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, linger_ms=50,
                             batch_size=1 << 20, acks=1)
    stream = DriftingStream(n_features=10, seed=1, model_id=model_id)
    t0 = time.monotonic()
    sent = 0
    key = model_id.encode()
    while sent < n:
        for rec in stream.take(min(5000, n - sent), start_ts=int(time.time() * 1000)):
            producer.send(settings.kafka.topics.samples, key=key, value=json.dumps(rec).encode())
        sent = min(n, sent + 5000)
    producer.flush()
    producer.close()
    return time.monotonic() - t0


def wait_applied(client: redis.Redis, keys: Keys, model_id: str, n: int, timeout_s: float,
                 ) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        snap = read_snapshot(client, keys, model_id)
        if snap and snap.samples_applied >= n:
            return time.monotonic()
        time.sleep(0.05)
    raise SystemExit(f"the job did not apply {n} samples within {timeout_s:.0f}s")


def naive_loop(settings: Settings, model_id: str, n: int, batch: int) -> float:
    """Consume the topic from the start, train, publish; returns samples/s."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(settings.kafka.topics.samples,
                             bootstrap_servers=settings.kafka.bootstrap,
                             auto_offset_reset="earliest", group_id=f"naive-{uuid.uuid4()}",
                             enable_auto_commit=False, max_poll_records=5000)
    r = settings.redis
    client = redis.Redis(host=r.host, port=r.port, password=r.password)
    model = build_model({"type": "logistic", "n_features": 10, "learning_rate": 0.05})
    X: list[list[float]] = []
    y: list[float] = []
    seen = 0
    t0 = time.monotonic()
    while seen < n:
        for records in consumer.poll(timeout_ms=500).values():
            for msg in records:
                rec = json.loads(msg.value)
                if rec.get("model_id") != model_id:
                    continue
                X.append(rec["features"])
                y.append(rec["label"])
                seen += 1
                if len(X) == batch:
                    model.learn_many(np.asarray(X), np.asarray(y))
                    client.hset(f"naive:{model_id}", mapping={
                        "weights": codec.encode_array(model.weights_vector()), "n": seen})
                    X, y = [], []
    elapsed = time.monotonic() - t0
    consumer.close()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="50,000 samples")
    parser.add_argument("--keep", action="store_true", help="leave the bench stack running")
    args = parser.parse_args()
    n = 50_000 if args.quick else args.samples
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(BENCH_CONFIG)
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
            keys = Keys(r.prefix)
            model_id = f"bench-{uuid.uuid4().hex[:6]}"
            log(f"producing {n} samples for {model_id} ...")
            produce_s = produce_all(settings, model_id, n)
            log("submitting the job ...")
            t0 = time.monotonic()
            cli(config, "submit", "--fresh")
            running = time.monotonic()
            t_submit = running - t0
            done = wait_applied(client, keys, model_id, n, timeout_s=900)
            job_rate = n / (done - running)
            log("naive consumer loop over the same records ...")
            naive_rate = naive_loop(settings, model_id, n, batch=settings.job.batch_size)
        finally:
            if not args.keep:
                cli(config, "down")
    print(f"\nEnd-to-end training throughput, {n} JSON samples, batch {settings.job.batch_size}")
    print(f"  stack up {t_up:.1f}s, job submitted and RUNNING {t_submit:.1f}s, "
          f"producer {n / produce_s:,.0f} samples/s")
    print(f"  {'flowlearn PyFlink job (exactly-once)':40s} {job_rate:>10,.0f} samples/s")
    print(f"  {'naive kafka-python consumer loop':40s} {naive_rate:>10,.0f} samples/s")
    print(f"  ratio job / naive: {job_rate / naive_rate:.2f}x")


if __name__ == "__main__":
    main()
