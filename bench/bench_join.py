"""The label join's throughput: events and their labels through the job's graph on a local
MiniCluster (parsing, watermarks, the join, the trainer; no Kafka, no Redis), against a
plain-Python dict join of the same records (the peer: what the join costs without Flink).

Input: ``--pairs`` events and their labels, one source each. Measured: joined samples per
second of wall time from the job's start to its end, minus the time the same graph takes on
an empty input (start-up and shutdown of the MiniCluster).

Usage: ``python bench/bench_join.py [--pairs 20000] [--quick]``. Not a timed test.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from flowlearn.conf import load_settings
from flowlearn.contracts.records import now_ms
from flowlearn.devstack.jars import operators_jar
from flowlearn.devstack.producer import DriftingStream
from flowlearn.jobs.local import local_environment, raw_stream
from flowlearn.operators.types import Version


def records(pairs: int) -> tuple[list[bytes], list[bytes]]:
    """``pairs`` events and their labels (5 ms later), as ``fl.events`` / ``fl.labels``
    bytes; the two sources interleave on their own, so either side may come first."""
    start = now_ms() - 60_000
    # One timestamp for all: however the two sources interleave, no label is behind the
    # watermark (the events source may run far ahead of the labels source). The model is
    # conf/'s "demo": a new model id is created through fl.control, which this graph has not.
    samples = DriftingStream(n_features=10, seed=5, model_id="demo").take(pairs, start, step_ms=0)
    events = [
        json.dumps({k: r[k] for k in ("event_id", "model_id", "ts", "features")}).encode()
        for r in samples
    ]
    labels = [
        json.dumps(
            {
                "event_id": r["event_id"],
                "model_id": r["model_id"],
                "ts": r["ts"] + 5,
                "label": r["label"],
            }
        ).encode()
        for r in samples
    ]
    return events, labels


def run_job(events: list[bytes], labels: list[bytes]) -> tuple[float, int]:
    from pyflink.common import Types

    from flowlearn.jobs.online_learning import RawSources, build_pipeline

    settings = load_settings(env={"FLOWLEARN__JOB__BATCH_SIZE": "256"})
    env = local_environment(operators_jar(settings))
    sources = RawSources(
        raw_stream(env, []), raw_stream(env, events), raw_stream(env, labels), raw_stream(env, [])
    )
    streams = build_pipeline(env, settings, sources, publish=False, kafka_sinks=False)
    applied = streams.versions.map(
        lambda v: Version._make(v).samples_applied, output_type=Types.LONG()
    )
    t0 = time.perf_counter()
    with applied.execute_and_collect() as results:
        last = max([int(r) for r in results], default=0)
    return time.perf_counter() - t0, last


def dict_join(events: list[bytes], labels: list[bytes]) -> float:
    """The peer: parse both sides and pair them in a dict, features as numpy arrays."""
    t0 = time.perf_counter()
    waiting: dict[str, dict] = {}
    pairs = []
    for raw_event, raw_label in zip(events, labels, strict=True):
        for raw in (raw_event, raw_label):
            r = json.loads(raw)
            other = waiting.pop(r["event_id"], None)
            if other is None:
                waiting[r["event_id"]] = r
            else:
                e, lab = (other, r) if "features" in other else (r, other)
                pairs.append((np.asarray(e["features"]), lab["label"]))
    assert len(pairs) == len(events)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="5,000 pairs")
    args = parser.parse_args()
    pairs = 5_000 if args.quick else args.pairs
    events, labels = records(pairs)
    empty_s, _ = run_job([], [])
    job_s, applied = run_job(events, labels)
    if applied != pairs:
        # A rate of pairs that never trained is no rate (a model the job refused, say).
        raise SystemExit(f"the job applied {applied:,} samples of {pairs:,} pairs: no figure")
    peer_s = dict_join(events, labels)
    net = max(job_s - empty_s, 1e-9)
    print(f"label join, {pairs:,} event/label pairs, parallelism 1")
    print(
        f"  job (MiniCluster): {job_s:.1f}s, of which start/stop {empty_s:.1f}s; "
        f"{applied:,} samples applied: {applied / net:,.0f} joined samples/s"
    )
    print(f"  peer (dict join in one Python loop): {pairs / peer_s:,.0f} pairs/s")
    print(f"  ratio job / peer: {(applied / net) / (pairs / peer_s):.3f}")


if __name__ == "__main__":
    main()
