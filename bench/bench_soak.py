"""Soak: steady input for N minutes; the memory of the job's processes and the predictor stays
flat and the lag stays bounded.

Setup: the freshness benchmark's own stack (``.flowlearn-bench-fresh``, ports 3xxxx; wiped
but for the jars, stopped at the end). The job is submitted fresh; a producer process sends
labelled samples for one model to ``fl.samples`` at ``--rate``, and a client thread asks the
predictor for a prediction of that model ``--qps`` times a second (its prediction log goes
to ``fl.events``, so the label join's state is exercised by events that get no label and
expire).

Every ``--every`` seconds it samples the resident memory (RSS) of the TaskManager and
JobManager JVMs, the Python workers, the predictor, Kafka and Redis, and the lag: samples
in ``fl.samples`` (end offsets) minus ``samples_applied`` of the model's Redis snapshot.
Growth per hour is the slope of a least-squares line through the samples after the
warm-up (``--warmup-s``); a flat process shows noise of a few MiB/h either way.

The peer: the naive loop's memory is measured by ``bench_state.py``; here the job is
measured against itself over time (a soak has no faster peer, only a flat line).

Usage: ``python bench/bench_soak.py [--minutes 10] [--rate 2000] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from bench_freshness import BenchStack, log
from bench_state import job_processes, memory_kb

from flowlearn.conf import Settings
from flowlearn.contracts.redis_contract import Keys, read_snapshot, redis_client
from flowlearn.devstack.processes import running_pid


def other_processes(settings: Settings) -> dict[str, int]:
    out = {}
    for name, label in (("predictor", "predictor"), ("kafka", "Kafka broker"), ("redis", "Redis")):
        pid = running_pid(settings, name)
        if pid is not None:
            out[label] = pid
    return out


def samples_in_kafka(consumer: Any, settings: Settings) -> int:
    from kafka import TopicPartition

    topic = settings.kafka.topics.samples
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    return int(sum(consumer.end_offsets(parts).values()))


class PredictionLoad(threading.Thread):
    """``qps`` predictions a second of one model; counts answers, and failures after the
    first answer."""

    def __init__(self, settings: Settings, model_id: str, qps: float) -> None:
        super().__init__(name="prediction-load", daemon=True)
        self.url = f"{settings.predictor.url}/v1/models/{model_id}:predict"
        self.every = 1.0 / qps
        self.ok = self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        body = json.dumps({"instances": [[0.1] * 10]}).encode()
        next_at = time.monotonic()
        while not self.stop.is_set():
            req = urllib.request.Request(
                self.url, data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=2) as resp:
                    resp.read()
                self.ok += 1
            except (OSError, urllib.error.URLError):
                # Before the first answer the model is not published yet (404): not a failure.
                if self.ok:
                    self.failed += 1
            next_at += self.every
            time.sleep(max(0.0, next_at - time.monotonic()))


def slope_mib_per_hour(t_s: np.ndarray, rss_kb: np.ndarray) -> float:
    if len(t_s) < 2 or np.ptp(t_s) == 0:
        return float("nan")
    return float(np.polyfit(t_s / 3600.0, rss_kb / 1024.0, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length (default 10)")
    parser.add_argument(
        "--rate", type=float, default=2000.0, help="labelled samples/s to fl.samples (default 2000)"
    )
    parser.add_argument(
        "--qps", type=float, default=20.0, help="predictions/s asked of the predictor (default 20)"
    )
    parser.add_argument(
        "--every", type=float, default=15.0, help="seconds between samples (default 15)"
    )
    parser.add_argument(
        "--warmup-s", type=float, default=60.0, help="left out of the growth line (default 60)"
    )
    parser.add_argument("--quick", action="store_true", help="3 minutes, 30 s warm-up")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.warmup_s, args.every = 3.0, 30.0, 10.0
    seconds = args.minutes * 60
    # SIGTERM ends it like Ctrl-C: the stack it started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with (
        tempfile.TemporaryDirectory(prefix="flowlearn-soak-") as tmp,
        BenchStack(Path(tmp)).running() as bench,
    ):
        settings = bench.settings
        bench.submit(settings, bench.config)
        model_id = f"soak-{uuid.uuid4().hex[:6]}"
        count = int(args.rate * (seconds + 30))
        log(
            f"soak: {args.minutes:g} min, {args.rate:,.0f} samples/s for {model_id}, "
            f"{args.qps:g} predictions/s; a sample every {args.every:g}s"
        )
        # Its progress goes to a file: a pipe nobody reads fills up (64 KiB, about 25 minutes
        # of progress lines) and then blocks the producer.
        producer_log = Path(tmp) / "producer.log"
        with producer_log.open("wb") as out:
            producer = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "flowlearn.cli",
                    "--config",
                    str(bench.config),
                    "produce",
                    "--model",
                    model_id,
                    "--count",
                    str(count),
                    "--rate",
                    str(args.rate),
                ],
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(**settings.kafka.client_options(), group_id=None)
        client = redis_client(settings.redis, timeout_s=5)
        keys = Keys(settings.redis.prefix)
        base = samples_in_kafka(consumer, settings)
        load = PredictionLoad(settings, model_id, args.qps)
        load.start()
        pids = {**job_processes(settings), **other_processes(settings)}
        rows: list[tuple[float, dict[str, int], int]] = []
        started = time.monotonic()
        sent_before = -1
        try:
            while (elapsed := time.monotonic() - started) < seconds:
                sent = samples_in_kafka(consumer, settings) - base
                if producer.poll() is not None or (elapsed > args.every and sent == sent_before):
                    raise SystemExit(
                        f"error: the producer stopped sending at {sent:,} "
                        f"samples: {producer_log.read_text()[-2000:]}"
                    )
                sent_before = sent
                snap = read_snapshot(client, keys, model_id)
                applied = snap.samples_applied if snap else 0
                lag = sent - applied
                rss = {name: memory_kb(pid)[0] for name, pid in pids.items()}
                rows.append((elapsed, rss, lag))
                log(
                    f"  {elapsed:5.0f}s  lag {lag:7,d}  applied {applied:9,d}  "
                    + "  ".join(
                        f"{name.split()[0][:6]} {kb / 1024:.0f}M" for name, kb in rss.items()
                    )
                )
                time.sleep(max(0.0, started + len(rows) * args.every - time.monotonic()))
        finally:
            load.stop.set()
            producer.terminate()
            producer.wait(30)
            consumer.close()
    t = np.array([r[0] for r in rows])
    steady = t >= args.warmup_s
    lags = np.array([r[2] for r in rows])
    print(
        f"\nsoak: {args.minutes:g} min at {args.rate:,.0f} samples/s and {args.qps:g} "
        f"predictions/s ({load.ok:,} answered, {load.failed:,} failed after the first answer)"
    )
    print(f"{'process':<18} {'RSS start':>10} {'RSS end':>10} {'growth MiB/h':>13}")
    for name in pids:
        rss = np.array([r[1][name] for r in rows], dtype=float)
        start = rss[steady][0] if steady.any() else rss[0]
        print(
            f"{name:<18} {start / 1024:>9.0f}M {rss[-1] / 1024:>9.0f}M "
            f"{slope_mib_per_hour(t[steady], rss[steady]):>+13.1f}"
        )
    print(
        f"lag (samples in Kafka not yet applied): median {np.median(lags[steady]):,.0f}, "
        f"max {lags[steady].max():,.0f}, last {lags[-1]:,.0f} "
        f"(= {lags[steady].max() / args.rate:.2f} s of input at most)"
    )


if __name__ == "__main__":
    main()
