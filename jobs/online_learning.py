"""The online-learning job: Kafka samples -> parse/validate -> trainer keyed by model id ->
Redis publisher, with bad records to the dead-letter topic.

Submitted by ``flowlearn submit`` as::

    flink run -d -py jobs/online_learning.py -pyfs <project packages> -- --settings FILE

where FILE is the JSON of :meth:`conf.Settings.to_dict`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyflink.common import Duration, Types, WatermarkStrategy
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import DataStream, StreamExecutionEnvironment

from conf import Settings, load_settings, settings_from_dict
from connectors import kafka
from operators.parse import DLQ_TAG, ParseSamples
from operators.publisher import RedisPublisher
from operators.trainer import MiniBatchTrainer
from operators.types import PUBLISHED_TYPE, SAMPLE_TYPE, VERSION_TYPE


class SampleTimestamp(TimestampAssigner):
    def extract_timestamp(self, value: Any, record_timestamp: int) -> int:
        return int(value[1])  # SAMPLE_TYPE's ts, by position (fused chains drop names)


@dataclass(frozen=True)
class PipelineStreams:
    """The job's streams, for sinks and for tests (``execute_and_collect``)."""

    samples: DataStream
    versions: DataStream
    dlq: DataStream
    published: DataStream | None


def build_pipeline(
    env: StreamExecutionEnvironment,
    settings: Settings,
    raw_samples: DataStream | None = None,
    publish: bool = True,
    kafka_sinks: bool = True,
) -> PipelineStreams:
    """Wire the job on ``env``. ``raw_samples`` (a stream of record bytes) replaces the
    Kafka source; ``publish`` and ``kafka_sinks`` switch the Redis and DLQ sinks."""
    topics = settings.kafka.topics
    if raw_samples is None:
        raw_samples = env.from_source(
            kafka.bytes_source(settings, topics.samples), kafka.source_watermarks(),
            "samples-source",
        ).uid("samples-source")
    parsed = (
        raw_samples.process(ParseSamples(settings), output_type=SAMPLE_TYPE)
        .name("parse-samples")
        .uid("parse-samples")
    )
    dlq = parsed.get_side_output(DLQ_TAG)
    samples = parsed.assign_timestamps_and_watermarks(
        WatermarkStrategy.for_bounded_out_of_orderness(
            Duration.of_millis(settings.job.out_of_orderness_ms))
        .with_idleness(Duration.of_millis(settings.job.idleness_ms))
        .with_timestamp_assigner(SampleTimestamp())
    ).name("sample-watermarks").uid("sample-watermarks")
    versions = (
        samples.key_by(lambda row: row[0], key_type=Types.STRING())
        .process(MiniBatchTrainer(settings), output_type=VERSION_TYPE)
        .name("trainer")
        .uid("trainer")
        # Its own slot, hence its own Python worker process: parsing and training then run
        # on two cores (operators of one slot share one Python process).
        .slot_sharing_group("training")
    )
    published = None
    if publish:
        published = (
            versions.process(RedisPublisher(settings), output_type=PUBLISHED_TYPE)
            .name("redis-publisher")
            .uid("redis-publisher")
        )
        published.sink_to(kafka.discarding_sink()).name("published").uid("published")
    if kafka_sinks:
        dlq.sink_to(kafka.json_sink(settings, topics.dlq, "dlq")).name("dlq-sink").uid(
            "dlq-sink")
    return PipelineStreams(samples, versions, dlq, published)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--settings", type=Path,
                        help="JSON settings written by `flowlearn submit` (default: conf/)")
    args = parser.parse_args(argv)
    settings = (settings_from_dict(json.loads(args.settings.read_text()))
                if args.settings else load_settings())
    env = StreamExecutionEnvironment.get_execution_environment()
    env.enable_checkpointing(settings.flink.checkpoint_interval_ms)
    build_pipeline(env, settings)
    env.execute(settings.job.name)


if __name__ == "__main__":
    main(sys.argv[1:])
