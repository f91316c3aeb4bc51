"""Each PyFlink internal of flowlearn.jobs.interop, run on a MiniCluster: keyed in Java,
event time from Java, a Java operator, a Java flat map, the discarding sink."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pyflink.common import Duration, Row, Types, WatermarkStrategy
from pyflink.datastream import KeyedProcessFunction

from flowlearn.conf import load_settings
from flowlearn.devstack.jars import operators_jar
from flowlearn.jobs import interop
from flowlearn.jobs.local import local_environment, raw_stream
from flowlearn.jobs.online_learning import RECORD_BUNDLER, bundled
from flowlearn.operators.types import (
    FEEDBACK_TYPE,
    KEYED_FEEDBACK_TYPE,
    TIMED_FEEDBACK_TYPE,
    Feedback,
    FeedbackBuilder,
    keyed,
)

pytestmark = pytest.mark.minicluster


class KeyAndTime(KeyedProcessFunction):
    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[str]:
        event_ids = Feedback._make(value).event_ids
        yield f"{ctx.get_current_key()} {','.join(event_ids)} {ctx.timestamp()}"


def test_keyed_and_timed_in_java_and_a_java_operator_and_the_discarding_sink() -> None:
    settings = load_settings(env={})
    env = local_environment(operators_jar(settings))

    def events(model: str, i: int) -> Row:
        gathered = FeedbackBuilder("e", model)
        gathered.add_event(f"{model}-{i}", 1000 + i, [float(i)])
        gathered.add_event(f"{model}-{i}-early", 900, [])
        return keyed(gathered.build())

    # Each row dated by its latest record, as the parsers date them.
    timed = [(events(model, i), 1000 + i) for model in ("a", "b") for i in range(3)]
    source = env.from_collection(timed, type_info=TIMED_FEEDBACK_TYPE)
    assert interop.has_java_class(source, RECORD_BUNDLER)
    assert not interop.has_java_class(source, "dev.flowlearn.flink.NoSuchOperator")
    strategy = WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(10))
    rows = interop.event_time_in_java(source, strategy, KEYED_FEEDBACK_TYPE, "wm")
    seen = interop.keyed_in_java(FEEDBACK_TYPE, rows).process(
        KeyAndTime(), output_type=Types.STRING()
    )
    # A Java operator (the bundler) ending in the discarding sink: the job must still run.
    bundled(raw_stream(env, [b"x", b"y"]), settings, "bundles").sink_to(interop.discarding_sink())
    with seen.execute_and_collect() as results:
        out = sorted(results)
    expected = [f"{m} {m}-{i},{m}-{i}-early {1000 + i}" for m in ("a", "b") for i in range(3)]
    assert out == sorted(expected)
    assert isinstance(timed[0][0], Row)


def test_the_kafka_key_of_the_jobs_json_records_is_their_model_id() -> None:
    """``ModelIdKey`` (operators jar), as the job's alert and control sinks use it."""
    from flowlearn.jobs.online_learning import MODEL_ID_KEY

    env = local_environment(operators_jar(load_settings(env={})))
    key = interop.java_object(raw_stream(env, [b"x"]), MODEL_ID_KEY)
    assert bytes(key.serialize('{"model_id": "fraud-eu", "kind": "control"}')) == b"fraud-eu"
    assert key.serialize('{"model_id": 7}') is None
    assert key.serialize("not json") is None


def test_the_jobs_kafka_sources_keep_a_record_without_a_value_as_an_empty_one() -> None:
    """``RecordValues`` (operators jar), made from the job's environment as the Kafka
    sources make it: a value as it is, a tombstone's null as an empty value (Flink's
    byte-array schema made it null, which a source drops)."""
    from flowlearn.jobs.online_learning import RECORD_VALUES

    env = local_environment(operators_jar(load_settings(env={})))
    values = interop.java_object(env, RECORD_VALUES)
    assert bytes(values.deserialize(b"\x00{}\xff")) == b"\x00{}\xff"
    assert bytes(values.deserialize(None)) == b""
    assert not values.isEndOfStream(b"")


def test_a_local_stream_gives_each_records_bytes_as_they_were_and_an_empty_one_none() -> None:
    """``raw_stream`` (a Java flat map, ``Latin1Records``): every byte value, a NUL and
    bytes that are not UTF-8 among them, comes through unchanged, in order; no input gives
    no record (the collection's placeholder is not one)."""
    env = local_environment(operators_jar(load_settings(env={})))
    records = [bytes(range(256)), b"\x00", "d\u00e9j\u00e0 vu".encode(), b"\xff\xfe"]
    hexed = raw_stream(env, records).map(bytes.hex, output_type=Types.STRING())
    nothing = raw_stream(env, []).map(bytes.hex, output_type=Types.STRING())
    with hexed.union(nothing).execute_and_collect() as results:
        assert list(results) == [r.hex() for r in records]
