"""Every use of PyFlink internals in one place: Java operators and functions reached
through ``_j_data_stream`` and the Py4J gateway, where PyFlink's public API would add a
Python operator (a round trip to the Python worker for every record) or has no equivalent.

They are checked against the PyFlink version the project pins (``flowlearn.conf.versions``):
``tests/unit/test_interop.py`` fails on another version, and ``tests/minicluster`` runs each
of them. Re-check this module before changing the pin.
"""

from __future__ import annotations

from typing import Any

from pyflink.common import Configuration, Types, WatermarkStrategy
from pyflink.datastream import DataStream, KeyedStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import Sink
from pyflink.java_gateway import get_gateway
from pyflink.util.java_utils import add_jars_to_context_class_loader

#: The Flink version these internals were written against.
WRITTEN_FOR_FLINK = "2.2.1"


def keyed_in_java(row_type: Any, *streams: DataStream) -> KeyedStream:
    """Streams of (model id, row) pairs as one stream of rows (``row_type``) keyed by model
    id, keyed in Java.

    PyFlink's ``key_by`` builds these pairs in a Python operator of its own, and after a
    union (or a Java operator) that operator cannot share a Python call with the one before
    it: every record made one more round trip to the Python worker for it. The parsers and
    the label join emit the pairs themselves, and the Java key selector PyFlink's
    ``key_by`` uses (``KeyByKeySelector``) takes the key.
    """
    union = streams[0].union(*streams[1:])
    j_keyed = union._j_data_stream.keyBy(
        get_gateway().jvm.KeyByKeySelector(), Types.ROW([Types.STRING()]).get_java_type_info()
    )
    return KeyedStream(j_keyed, row_type, union)


def event_time_in_java(
    stream: DataStream, strategy: WatermarkStrategy, row_type: Any, name: str
) -> DataStream:
    """Timestamps and watermarks (``strategy``) on a stream of ``(row, event time)`` tuples,
    done in Java; the stream of rows (``row_type``) comes out.

    PyFlink's own ``assign_timestamps_and_watermarks`` with a Python ``TimestampAssigner``
    does the same after one more Python operator that builds these tuples. Its Java classes
    (``CustomTimestampAssigner``, ``RemoveTimestampMapFunction``) are used here directly.
    """
    eventtime = get_gateway().jvm.org.apache.flink.streaming.api.functions.python.eventtime
    j_stream = (
        stream._j_data_stream.assignTimestampsAndWatermarks(
            strategy._j_watermark_strategy.withTimestampAssigner(
                eventtime.CustomTimestampAssigner()
            )
        )
        .name(name)
        .uid(name)
        .map(eventtime.RemoveTimestampMapFunction(), row_type.get_java_type_info())
        .name(f"{name}-rows")
        .uid(f"{name}-rows")
    )
    return DataStream(j_stream)


def _with_job_jars(of: DataStream | StreamExecutionEnvironment) -> None:
    """Put the jars of the job's environment (``pipeline.jars``; ``of`` is the environment
    or one of its streams) on the context class loader of the JVM thread that serves this
    call. ``add_jars`` loads them on the thread that served it, but Py4J may serve a later
    call of the same Python thread from another JVM thread (its connections are pooled across
    Python threads), whose loader lacks them: the operators jar then seemed missing in some
    MiniCluster tests but not others."""
    gateway = get_gateway()
    if isinstance(of, DataStream):
        j_env = of._j_data_stream.getExecutionEnvironment()
    else:
        j_env = of._j_stream_execution_environment
    config = gateway.jvm.org.apache.flink.python.util.PythonConfigUtil.getEnvironmentConfig(j_env)
    jars_key = gateway.jvm.org.apache.flink.configuration.PipelineOptions.JARS.key()
    jars = Configuration.parse_list_value(config.getString(jars_key, None))
    if jars:
        add_jars_to_context_class_loader(jars)


def has_java_class(stream: DataStream, class_name: str) -> bool:
    """Whether ``class_name`` is on the classpath of ``stream``'s job (a jar added to its
    environment)."""
    _with_job_jars(stream)
    try:
        get_gateway().jvm.Thread.currentThread().getContextClassLoader().loadClass(class_name)
    except Exception:  # Py4J raises its own error types for a missing class
        return False
    return True


def java_operator(
    stream: DataStream, name: str, class_name: str, args: tuple[Any, ...], output_type: Any
) -> DataStream:
    """``stream`` through the Java stream operator ``class_name(*args)`` (uid ``name``)."""
    operator = java_object(stream, class_name, *args)
    j_stream = stream._j_data_stream.transform(name, output_type.get_java_type_info(), operator)
    return DataStream(j_stream.uid(name))


def java_flat_map(stream: DataStream, class_name: str, output_type: Any) -> DataStream:
    """``stream`` through the Java ``FlatMapFunction`` ``class_name()`` (the operators jar):
    PyFlink's ``flat_map`` takes Python functions only."""
    function = java_object(stream, class_name)
    return DataStream(stream._j_data_stream.flatMap(function, output_type.get_java_type_info()))


def java_object(of: DataStream | StreamExecutionEnvironment, class_name: str, *args: Any) -> Any:
    """A new ``class_name(*args)`` of the job's classpath (the operators jar; ``of`` is the
    job's environment or one of its streams), as a Py4J object to hand to a PyFlink
    wrapper."""
    _with_job_jars(of)
    java_class = get_gateway().jvm
    for part in class_name.split("."):
        java_class = getattr(java_class, part)
    return java_class(*args)


def discarding_sink() -> Sink:
    """Flink's DiscardingSink: terminates a stream whose operator works by side effect (an
    operator without a downstream sink is pruned from the job graph)."""
    return Sink(get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink())
