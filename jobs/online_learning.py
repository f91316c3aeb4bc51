"""The online-learning job: labelled samples (``fl.samples``) and events joined to their
delayed labels (``fl.events`` + ``fl.labels``) -> trainer keyed by model id -> Redis
publisher; bad and late records to the dead-letter topic.

Submitted by ``flowlearn submit`` as::

    flink run -d -py flowlearn/jobs/online_learning.py -pyfs <staged flowlearn> -- --settings FILE

where FILE is the JSON of :meth:`flowlearn.conf.Settings.to_dict`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyflink.common import Duration, Types, WatermarkStrategy
from pyflink.common.serialization import DeserializationSchema, SerializationSchema
from pyflink.datastream import (
    BroadcastProcessFunction,
    DataStream,
    StreamExecutionEnvironment,
)

from flowlearn.conf import Settings, load_settings, settings_from_dict
from flowlearn.connectors import kafka
from flowlearn.jobs import interop
from flowlearn.operators.checkpoint import CheckpointOperator
from flowlearn.operators.drift import CONTROL_OUT_TAG, DriftOperator
from flowlearn.operators.label_join import LabelJoin
from flowlearn.operators.parse import (
    DLQ_TAG,
    INFERRED_TAG,
    PARSER_ALERT_TAG,
    ParseControl,
    ParseEvents,
    ParseLabels,
    ParseSamples,
)
from flowlearn.operators.publisher import RedisPublisher
from flowlearn.operators.trainer import ALERT_TAG, EVAL_TAG, MiniBatchTrainer
from flowlearn.operators.types import (
    CONTROL_TYPE,
    FEEDBACK_TYPE,
    KEYED_FEEDBACK_TYPE,
    KEYED_SAMPLE_TYPE,
    PUBLISHED_TYPE,
    SAMPLE_TYPE,
    TIMED_FEEDBACK_TYPE,
    VERSION_TYPE,
)
from flowlearn.state import descriptors


@dataclass(frozen=True)
class RawSources:
    """Streams of raw record bytes that replace the Kafka sources (tests, replay)."""

    samples: DataStream
    events: DataStream
    labels: DataStream
    control: DataStream


@dataclass(frozen=True)
class PipelineStreams:
    """The job's streams, for sinks and for tests (``execute_and_collect``)."""

    versions: DataStream
    dlq: DataStream
    alerts: DataStream
    adaptations: DataStream
    published: DataStream | None
    #: The trainer's view of each new version for the monitoring operators (``EVAL_TYPE``:
    #: what its test step saw); ``flowlearn replay`` evaluates from it.
    evaluated: DataStream | None = None


def model_key(row: Any) -> str:
    """Control and evaluation rows start with the model id."""
    return str(row[0])


def with_event_time(stream: DataStream, settings: Settings, row_type: Any, name: str) -> DataStream:
    """Event time on a stream of ``(row, event time)`` tuples (what the feedback parsers
    emit): bounded out-of-orderness and idleness from ``job``, assigned in Java."""
    strategy = WatermarkStrategy.for_bounded_out_of_orderness(
        Duration.of_millis(settings.job.out_of_orderness_ms)
    ).with_idleness(Duration.of_millis(settings.job.idleness_ms))
    return interop.event_time_in_java(stream, strategy, row_type, name)


#: A bundle of records stays under this size (a larger record goes alone): JSON records above
#: 512 KiB are refused anyway (``too_large``).
INPUT_BUNDLE_MAX_BYTES = 1 << 20
RECORD_BUNDLER = "dev.flowlearn.flink.RecordBundler"
#: The bundler of ``fl.samples``: it also decodes the JSON samples it can read with
#: certainty into columns (``flowlearn.operators.sample_columns``), so that the parser
#: checks them as arrays; it leaves every other record to the parser.
SAMPLE_BUNDLER = "dev.flowlearn.flink.SampleBundler"
#: The bundlers of ``fl.events`` and ``fl.labels``: the same decoding, for events (an event
#: id and features, no label) and labels (an event id and a label, no features).
EVENT_BUNDLER = "dev.flowlearn.flink.EventBundler"
LABEL_BUNDLER = "dev.flowlearn.flink.LabelBundler"
#: The value of each record of an input topic, a tombstone's as an empty one (operators jar).
RECORD_VALUES = "dev.flowlearn.flink.RecordValues"
#: The Kafka key of the job's JSON records: their model id (in the operators jar too).
MODEL_ID_KEY = "dev.flowlearn.flink.ModelIdKey"


def require_operators_jar(of: DataStream | StreamExecutionEnvironment, class_name: str) -> None:
    """Fail with what to do if ``class_name`` is not on the classpath of ``of``'s job."""
    if not interop.has_java_class(of, class_name):
        raise RuntimeError(
            f"{class_name} is not on the job's classpath: add the operators jar "
            "(flowlearn.devstack.jars.operators_jar builds it; `flowlearn submit` and "
            "flowlearn.jobs.local.local_environment add it; the job image has it in "
            "/opt/flink/lib)"
        )


def bundled(
    stream: DataStream, settings: Settings, name: str, bundler: str = RECORD_BUNDLER
) -> DataStream:
    """A stream of raw records as bundles of records (``flowlearn.operators.parse.unbundle``),
    made in Java by ``bundler`` (operators/java, in the operators jar): the Python
    parser after it is called once per bundle, not once per record (in PyFlink each call
    costs more than parsing a small JSON record)."""
    require_operators_jar(stream, bundler)
    job = settings.job
    return interop.java_operator(
        stream,
        name,
        bundler,
        (job.input_bundle_records, INPUT_BUNDLE_MAX_BYTES, job.input_bundle_ms),
        Types.PRIMITIVE_ARRAY(Types.BYTE()),
    )


def _kafka_sources(env: StreamExecutionEnvironment, settings: Settings) -> RawSources:
    topics = settings.kafka.topics
    require_operators_jar(env, RECORD_VALUES)
    # Stateless: one schema serves every source (each gets its own serialized copy).
    values = DeserializationSchema(interop.java_object(env, RECORD_VALUES))

    def source(topic: str, name: str) -> DataStream:
        return env.from_source(
            kafka.bytes_source(settings, topic, values), kafka.source_watermarks(), name
        ).uid(name)

    return RawSources(
        source(topics.samples, "samples-source"),
        source(topics.events, "events-source"),
        source(topics.labels, "labels-source"),
        source(topics.control, "control-source"),
    )


def build_pipeline(
    env: StreamExecutionEnvironment,
    settings: Settings,
    sources: RawSources | None = None,
    publish: bool = True,
    kafka_sinks: bool = True,
) -> PipelineStreams:
    """Wire the job on ``env``. ``sources`` replaces the Kafka sources; ``publish`` and
    ``kafka_sinks`` switch the Redis and DLQ sinks."""
    topics = settings.kafka.topics
    raw = sources or _kafka_sources(env, settings)

    control = (
        bundled(raw.control, settings, "control-bundles")
        .process(ParseControl(settings, topics.control), output_type=CONTROL_TYPE)
        .name("parse-control")
        .uid("parse-control")
    )
    # Every parser of model records sees every control row: `create` and `delete` change
    # which spec a model's records are checked against (docs/models.md).
    spec_changes = control.broadcast(descriptors.RUNTIME_SPECS)

    def parse(
        topic: str,
        parser: BroadcastProcessFunction,
        output_type: Any,
        bundler: str = RECORD_BUNDLER,
    ) -> DataStream:
        name = f"parse-{topic}"
        return (
            bundled(getattr(raw, topic), settings, f"{topic}-bundles", bundler)
            .connect(spec_changes)
            .process(parser, output_type=output_type)
            .name(name)
            .uid(name)
        )

    parsed_samples = parse(
        "samples", ParseSamples(settings, topics.samples), KEYED_SAMPLE_TYPE, SAMPLE_BUNDLER
    )
    parsed_events = parse(
        "events", ParseEvents(settings, topics.events), TIMED_FEEDBACK_TYPE, EVENT_BUNDLER
    )
    parsed_labels = parse(
        "labels", ParseLabels(settings, topics.labels), TIMED_FEEDBACK_TYPE, LABEL_BUNDLER
    )
    # Event time on each stream before the union: the join's watermark is the lesser of the
    # two (a side idle for idleness_ms is left out).
    feedback = interop.keyed_in_java(
        FEEDBACK_TYPE,
        with_event_time(parsed_events, settings, KEYED_FEEDBACK_TYPE, "events-watermarks"),
        with_event_time(parsed_labels, settings, KEYED_FEEDBACK_TYPE, "labels-watermarks"),
    )
    joined = (
        feedback.process(LabelJoin(settings), output_type=KEYED_SAMPLE_TYPE)
        .name("label-join")
        .uid("label-join")
    )
    dlq = parsed_samples.get_side_output(DLQ_TAG).union(
        parsed_events.get_side_output(DLQ_TAG),
        parsed_labels.get_side_output(DLQ_TAG),
        control.get_side_output(DLQ_TAG),
        joined.get_side_output(DLQ_TAG),
    )
    # Samples get no watermarks: nothing after the join runs on event time but the trainer's
    # end-of-input timer, which the final watermark of a bounded input fires anyway. A Python
    # timestamp assigner here cost every sample two more trips between Java and Python (the
    # assigner, then the key selector, on either side of Java's watermark operator).
    samples = interop.keyed_in_java(SAMPLE_TYPE, parsed_samples, joined)
    versions = (
        samples.connect(control.key_by(model_key, key_type=Types.STRING()))
        .process(MiniBatchTrainer(settings), output_type=VERSION_TYPE)
        .name("trainer")
        .uid("trainer")
        # Its own slot, hence its own Python worker process: parsing and training then run
        # on two cores (operators of one slot share one Python process).
        .slot_sharing_group("training")
    )
    dlq = dlq.union(versions.get_side_output(DLQ_TAG))
    evaluated = versions.get_side_output(EVAL_TAG).key_by(model_key, key_type=Types.STRING())
    # Drift and checkpoint run in the trainer's Python worker process: they see one row per
    # version, not per sample, so a process (and a core) of their own bought nothing, and
    # each Python process costs about 300 MiB and seconds of start-up on every recovery.
    drift_alerts = (
        evaluated.process(DriftOperator(settings), output_type=Types.STRING())
        .name("drift")
        .uid("drift")
        .slot_sharing_group("training")
    )
    checkpoint_alerts = (
        evaluated.process(CheckpointOperator(settings), output_type=Types.STRING())
        .name("checkpoint")
        .uid("checkpoint")
        .slot_sharing_group("training")
    )
    # Commands the job sends itself, through fl.control (Flink 2 has no iterations).
    adaptations = drift_alerts.get_side_output(CONTROL_OUT_TAG).union(
        checkpoint_alerts.get_side_output(CONTROL_OUT_TAG),
        parsed_samples.get_side_output(INFERRED_TAG),
        parsed_events.get_side_output(INFERRED_TAG),
    )
    alerts = versions.get_side_output(ALERT_TAG).union(
        drift_alerts,
        checkpoint_alerts,
        *(
            p.get_side_output(PARSER_ALERT_TAG)
            for p in (parsed_samples, parsed_events, parsed_labels)
        ),
    )
    published = None
    if publish:
        published = (
            versions.process(RedisPublisher(settings), output_type=PUBLISHED_TYPE)
            .name("redis-publisher")
            .uid("redis-publisher")
        )
        published.sink_to(interop.discarding_sink()).name("published").uid("published")
    if kafka_sinks:
        # Alerts and commands carry their model id as the Kafka key: one model's records
        # keep their order (the job's commands after a user's, say).
        def model_key_schema() -> SerializationSchema:
            return SerializationSchema(interop.java_object(alerts, MODEL_ID_KEY))

        dlq.sink_to(kafka.json_sink(settings, topics.dlq, "dlq")).name("dlq-sink").uid("dlq-sink")
        alerts.sink_to(kafka.json_sink(settings, topics.alerts, "alerts", model_key_schema())).name(
            "alerts-sink"
        ).uid("alerts-sink")
        adaptations.sink_to(
            kafka.json_sink(settings, topics.control, "control", model_key_schema())
        ).name("adaptation-sink").uid("adaptation-sink")
    return PipelineStreams(versions, dlq, alerts, adaptations, published, evaluated)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--settings", type=Path, help="JSON settings written by `flowlearn submit` (default: conf/)"
    )
    parser.add_argument(
        "--operators-jar",
        type=Path,
        help="the jar of the job's Java operators, shipped with the job "
        "(default: none, for a cluster that has it in lib/)",
    )
    args = parser.parse_args(argv)
    settings = (
        settings_from_dict(json.loads(args.settings.read_text()))
        if args.settings
        else load_settings()
    )
    env = StreamExecutionEnvironment.get_execution_environment()
    if args.operators_jar:
        env.add_jars(args.operators_jar.resolve().as_uri())
    env.enable_checkpointing(settings.flink.checkpoint_interval_ms)
    # Explicit, not derived from the parallelism: a savepoint restores only with the key
    # groups it was taken with, so rescaling needs the same value on every submission.
    env.set_max_parallelism(settings.flink.max_parallelism)
    build_pipeline(env, settings)
    env.execute(settings.job.name)


if __name__ == "__main__":
    main(sys.argv[1:])
