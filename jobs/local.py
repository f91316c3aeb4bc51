"""The job's graph on a local MiniCluster, on bounded inputs: what ``flowlearn replay``, the
MiniCluster tests and the join benchmark run (the submitted job runs on a cluster instead).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyflink.common import Configuration, Types
from pyflink.datastream import DataStream, StreamExecutionEnvironment

from flowlearn.conf import Settings
from flowlearn.conf.settings import SLOT_GROUPS
from flowlearn.jobs import interop
from flowlearn.jobs.online_learning import RawSources, build_pipeline
from flowlearn.operators.types import Evaluated, Version

#: Records as latin-1 strings -> their bytes, in Java (the operators jar).
LATIN1_RECORDS = "dev.flowlearn.flink.Latin1Records"


def _version_json(row: Any) -> str:
    v = Version._make(row)
    return json.dumps(
        {
            "tag": "version",
            "model_id": v.model_id,
            "version": v.version,
            "base": v.base_version,
            "applied": v.samples_applied,
            "delta": bytes(v.delta).hex(),
            "weights": bytes(v.weights).hex(),
        }
    )


def _eval_json(row: Any) -> str:
    e = Evaluated._make(row)
    return json.dumps(
        {
            "tag": "eval",
            "model_id": e.model_id,
            "version": e.version,
            "kind": e.kind,
            "applied": e.samples_applied,
            "errors": list(e.errors),
            "losses": list(e.losses),
        }
    )


def _tagged(tag: str) -> Callable[[str], str]:
    def wrap(record: str) -> str:
        return json.dumps({"tag": tag, "record": json.loads(record)})

    return wrap


def local_environment(operators_jar: Path) -> StreamExecutionEnvironment:
    """A StreamExecutionEnvironment on a local MiniCluster, set up for the job's graph under
    ``execute_and_collect`` (replays and the MiniCluster tests), with the operators jar
    (``flowlearn.devstack.jars.operators_jar`` builds it)."""
    # Python operator chaining off: its graph rewriting trips over the job's uids on a
    # branching graph under execute_and_collect ("Hash collision on user-specified ID"); the
    # submitted job goes through env.execute() with chaining on. A slot per slot sharing
    # group (parse; training with drift and checkpoint). A collected
    # record may be a whole version of a large model (a tree's weights and its full delta:
    # megabytes), over the collect sink's 2 MiB default batch.
    env = StreamExecutionEnvironment.get_execution_environment(
        Configuration()
        .set_string("python.operator-chaining.enabled", "false")
        .set_string("taskmanager.numberOfTaskSlots", str(SLOT_GROUPS))
        .set_string("collect-sink.batch-size.max", "256mb")
    )
    env.set_parallelism(1)
    env.set_python_executable(sys.executable)
    env.add_jars(operators_jar.resolve().as_uri())
    return env


def raw_stream(env: StreamExecutionEnvironment, records: Sequence[bytes]) -> DataStream:
    """A bounded stream of ``records`` as the bytes a KafkaSource would give, made in Java
    (``Latin1Records``): no Python worker sees a record before the job's own operators do."""
    # from_collection cannot carry byte arrays: latin-1 strings (a lossless byte mapping),
    # and "" for an empty input (a collection cannot be empty).
    strings = env.from_collection(
        [r.decode("latin-1") for r in records] or [""], type_info=Types.STRING()
    )
    return interop.java_flat_map(strings, LATIN1_RECORDS, Types.PRIMITIVE_ARRAY(Types.BYTE()))


def run_job(
    records: Sequence[bytes], settings: Settings, operators_jar: Path
) -> list[dict[str, Any]]:
    """The job graph on ``records`` (``fl.samples`` bytes) on a local MiniCluster; every
    collected record, tagged ``version``, ``eval``, ``alert``, ``dlq`` or ``control``."""
    env = local_environment(operators_jar)
    sources = RawSources(
        raw_stream(env, records), raw_stream(env, []), raw_stream(env, []), raw_stream(env, [])
    )
    streams = build_pipeline(env, settings, sources, publish=False, kafka_sinks=False)
    assert streams.evaluated is not None
    out = streams.versions.map(_version_json, output_type=Types.STRING()).union(
        streams.evaluated.map(_eval_json, output_type=Types.STRING()),
        streams.alerts.map(_tagged("alert"), output_type=Types.STRING()),
        streams.dlq.map(_tagged("dlq"), output_type=Types.STRING()),
        streams.adaptations.map(_tagged("control"), output_type=Types.STRING()),
    )
    with out.execute_and_collect() as results:
        return [json.loads(r) for r in results]
