"""What a live system recorded about a model, as :class:`flowlearn.evaluation.data.EvaluationData`
for ``flowlearn report``:

- ``fl.alerts`` and ``fl.dlq`` (the job's alerts and dead letters),
- ``fl.events`` and ``fl.labels``: the prediction log (events the predictor wrote, with the
  served ``score``, ``model_version``, ``variant`` and ``shadow``) joined with the labels on
  ``event_id``; every event joined with a label gives a label delay,
- ``fl.samples`` (counted only: the denominator of the dead-letter rate),
- the checkpoints registered in MLflow with their windowed metrics.

Kafka is read with kafka-python, ``read_committed`` (the job writes transactionally), from
``since`` (or the beginning) up to the end offsets taken when reading starts; a record is of
the model when its key is the model id (producers and the predictor key by model id) or,
without a key, when its JSON says so. A DLQ record carries the original bytes: it is
attributed by the ``model_id`` inside them when they are JSON.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowlearn.conf import ConfigError, KafkaConf, Settings
from flowlearn.contracts.records import is_bulk
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.core.spec import ModelSpec
from flowlearn.evaluation.builders import build_live
from flowlearn.evaluation.data import Checkpoint, EvaluationData, EvaluationError, VersionPoint

#: Records read per topic at most (the newest are what a report is about: use --since).
MAX_RECORDS = 2_000_000
#: Reading stops when a topic has given nothing for this long (ms) before its end offsets.
IDLE_MS = 5_000


@dataclass
class TopicRead:
    """One topic's records of the model, as (key, value bytes, Kafka timestamp)."""

    topic: str
    records: list[tuple[bytes | None, bytes, int]] = field(default_factory=list)
    truncated: bool = False
    missing: bool = False
    stalled: bool = False


def kafka_consumer(kafka: KafkaConf) -> Callable[[], Any]:
    def make() -> Any:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        try:
            return KafkaConsumer(
                **kafka.client_options(),
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                max_poll_records=5000,
                bootstrap_timeout_ms=5000,
                request_timeout_ms=15000,
                client_id="flowlearn-report",
            )
        except KafkaError as exc:
            raise EvaluationError(
                f"Kafka at {kafka.bootstrap} is unreachable ({exc}): is the "
                f"stack up (flowlearn up)?"
            ) from exc

    return make


def read_topic(
    consumer: Any,
    topic: str,
    keep: Callable[[bytes | None, bytes], bool],
    since_ms: int | None = None,
    max_records: int = MAX_RECORDS,
    idle_ms: int = IDLE_MS,
) -> TopicRead:
    """The records of ``topic`` that ``keep(key, value)`` accepts, from ``since_ms`` (Kafka
    record time) or the beginning, up to the end offsets at the start."""
    from kafka import TopicPartition

    out = TopicRead(topic)
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        out.missing = True
        return out
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    end = consumer.end_offsets(tps)
    if since_ms is None:
        consumer.seek_to_beginning(*tps)
    else:
        found = consumer.offsets_for_times({tp: since_ms for tp in tps})
        for tp in tps:
            hit = found.get(tp)
            consumer.seek(tp, hit.offset if hit is not None else end[tp])
    remaining = {tp for tp in tps if consumer.position(tp) < end[tp]}
    idle = 0
    while remaining:
        polled = consumer.poll(timeout_ms=500)
        if not polled:
            idle += 500
            if idle >= idle_ms:  # e.g. a transaction marker at the very end
                out.stalled = True
                break
            # The positions may have moved past control records without a record.
            remaining = {tp for tp in remaining if consumer.position(tp) < end[tp]}
            continue
        idle = 0
        for tp, messages in polled.items():
            for m in messages:
                if m.offset < end.get(tp, 0) and keep(m.key, m.value):
                    out.records.append((m.key, m.value, m.timestamp))
        if len(out.records) >= max_records:
            out.records = out.records[-max_records:]
            out.truncated = True
            break
        remaining = {tp for tp in remaining if consumer.position(tp) < end[tp]}
    return out


def _json(value: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(value)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _of_model(model_id: str) -> Callable[[bytes | None, bytes], bool]:
    key = model_id.encode()

    def keep(k: bytes | None, value: bytes) -> bool:
        if k is not None:
            return k == key
        obj = _json(value)
        return obj is not None and obj.get("model_id") == model_id

    return keep


def dlq_model(record: Mapping[str, Any]) -> str | None:
    """The model a dead letter belongs to, when its original bytes are JSON naming it."""
    try:
        raw = base64.b64decode(str(record.get("raw", "")), validate=True)
    except ValueError:
        return None
    if is_bulk(raw):  # a bulk record (a batch the safety gate rejected, for one)
        return _bulk_model(raw)
    obj = _json(raw)
    model = obj.get("model_id") if obj is not None else None
    return model if isinstance(model, str) else None


def _bulk_model(raw: bytes) -> str | None:
    import pyarrow as pa

    try:
        table = pa.ipc.open_stream(raw).read_all()
        column = table.column("model_id")
        model = column[0].as_py() if len(column) else None
    except (pa.ArrowException, KeyError, ValueError):
        return None
    return model if isinstance(model, str) else None


def parse_time(text: str) -> int:
    """``--since``: ISO 8601 (local time unless it has an offset) or epoch milliseconds.

    >>> parse_time("1700000000000")
    1700000000000
    """
    from datetime import datetime

    if text.strip().isdigit():
        return int(text)
    try:
        return int(datetime.fromisoformat(text.strip()).timestamp() * 1000)
    except ValueError as exc:
        raise EvaluationError(f"{text!r}: not an ISO 8601 time or epoch ms") from exc


def _decoded(read: TopicRead, since_ms: int | None) -> Iterator[dict[str, Any]]:
    for _key, value, _ts in read.records:
        obj = _json(value)
        if obj is not None and (since_ms is None or int(obj.get("ts") or 0) >= since_ms):
            yield obj


def created_spec(alerts: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The spec table of the job's answers to ``create`` commands (the last one that
    holds, a ``delete`` undoing it), or None: a model made at runtime is not in ``conf/``.

    >>> created_spec([{"kind": "control", "detail": {"command": "create", "ok": True,
    ...                "args": {"spec": {"type": "linear"}}}}])
    {'type': 'linear'}
    """
    spec = None
    for alert in alerts:
        detail = alert.get("detail") or {}
        if alert.get("kind") != "control" or not detail.get("ok"):
            continue
        if detail.get("command") == "create":
            table = (detail.get("args") or {}).get("spec")
            spec = table if isinstance(table, dict) else None
        elif detail.get("command") == "delete":
            spec = None
    return spec


def model_spec(
    settings: Settings, model_id: str, alerts: Iterable[Mapping[str, Any]], notes: list[str]
) -> ModelSpec:
    """The spec the model trains with: the last ``create`` on ``fl.alerts``, else ``conf/``
    (or the defaults)."""
    specs = ModelSpecs(settings)
    table = created_spec(alerts)
    if table is not None:
        try:
            return specs.read(table, f"created spec of {model_id}")
        except ConfigError as exc:
            notes.append(f"the spec the model was created with does not read ({exc}); conf/'s used")
    return specs.spec_of(model_id)


def registered_checkpoints(
    settings: Settings, model_id: str, since_ms: int | None, notes: list[str]
) -> tuple[list[Checkpoint], list[VersionPoint]]:
    """The online checkpoints in MLflow (windowed metrics at registration time)."""
    from flowlearn.registry.mlflow_store import Registry, RegistryError

    registry = Registry.from_settings(settings)
    try:
        entries = registry.versions(model_id)
    except RegistryError as exc:
        notes.append(f"MLflow: {exc}")
        return [], []
    online = sorted((e for e in entries if e.kind == "online"), key=lambda e: e.created_ms)
    online = [e for e in online if since_ms is None or e.created_ms >= since_ms]
    baselines = [e for e in entries if e.kind == "baseline"]
    if baselines:
        notes.append(
            "registered baselines: "
            + ", ".join(
                f"v{b.version} ("
                + ", ".join(f"{k} {v:.4f}" for k, v in sorted(b.metrics.items()))
                + ")"
                for b in baselines
            )
        )
    every = settings.job.checkpoint_every_versions
    checkpoints = []
    previous: Any = None
    for e in online:
        start = (
            float(previous.created_ms)
            if previous is not None and previous.version + every == e.version
            else None
        )
        checkpoints.append(
            Checkpoint(
                e.version,
                float(e.created_ms),
                e.samples_applied,
                int(e.metrics.get("window_samples", 0)),
                e.metrics.get("windowed_loss", float("nan")),
                e.metrics.get("windowed_accuracy", float("nan")),
                start,
            )
        )
        previous = e
    versions = [
        VersionPoint(e.version, float(e.created_ms), "registered", e.samples_applied)
        for e in online
    ]
    notes.append(f"MLflow {registry.tracking_uri}: {len(online)} registered checkpoint(s)")
    return checkpoints, versions


@dataclass
class Recorded:
    """What the topics hold about one model (its records decoded, ``since`` applied)."""

    model_id: str
    spec: ModelSpec
    events: list[dict[str, Any]]
    labels: list[dict[str, Any]]
    #: Every alert of the model: a ``create`` before ``since`` still gives its spec.
    alerts: list[dict[str, Any]]
    dlq: list[dict[str, Any]]
    n_samples: int
    since_ms: int | None
    source: str
    notes: list[str]


def read_recorded(
    settings: Settings,
    model_id: str,
    since_ms: int | None = None,
    *,
    max_records: int = MAX_RECORDS,
    consumer_factory: Callable[[], Any] | None = None,
) -> Recorded:
    """Read what the system recorded about ``model_id`` (see the module docstring)."""
    topics = settings.kafka.topics
    notes: list[str] = []
    consumer = (consumer_factory or kafka_consumer(settings.kafka))()
    of_model = _of_model(model_id)
    try:
        reads = {
            "alerts": read_topic(consumer, topics.alerts, of_model, since_ms, max_records),
            "dlq": read_topic(consumer, topics.dlq, lambda k, v: True, since_ms, max_records),
            "events": read_topic(consumer, topics.events, of_model, since_ms, max_records),
            "labels": read_topic(consumer, topics.labels, of_model, since_ms, max_records),
            "samples": read_topic(consumer, topics.samples, of_model, since_ms, max_records),
        }
    finally:
        consumer.close()
    for read in reads.values():
        if read.missing:
            notes.append(f"topic {read.topic} does not exist (yet)")
        if read.truncated:
            notes.append(
                f"{read.topic}: only the last {max_records} records of the model "
                f"were read (narrow the period with --since)"
            )
        if read.stalled:
            notes.append(
                f"{read.topic}: reading stopped before the end offsets "
                f"({IDLE_MS / 1000:.0f} s without records)"
            )
    dlq_all = list(_decoded(reads["dlq"], since_ms))
    unattributed = sum(1 for r in dlq_all if dlq_model(r) is None)
    if unattributed:
        notes.append(
            f"{unattributed} dead letter(s) could not be attributed to a model "
            f"(their original bytes are not JSON naming one); not counted here"
        )
    alerts = list(_decoded(reads["alerts"], None))
    period = "" if since_ms is None else f" since {since_ms} ms"
    return Recorded(
        model_id,
        model_spec(settings, model_id, alerts, notes),
        events=list(_decoded(reads["events"], since_ms)),
        labels=list(_decoded(reads["labels"], since_ms)),
        alerts=alerts,
        dlq=[r for r in dlq_all if dlq_model(r) == model_id],
        n_samples=len(reads["samples"].records),
        since_ms=since_ms,
        source=f"recorded by the live system (Kafka {settings.kafka.bootstrap}){period}",
        notes=notes,
    )


def live_data(settings: Settings, recorded: Recorded, with_registry: bool = True) -> EvaluationData:
    """A predicting model's report data: the prediction log joined with its labels, the
    alerts and dead letters, and the checkpoints registered in MLflow."""
    topics = settings.kafka.topics
    notes = list(recorded.notes)
    events, labels, since_ms = recorded.events, recorded.labels, recorded.since_ms
    served = sum(1 for e in events if "score" in e)
    notes.append(
        f"{len(events)} events ({served} served predictions logged by the predictor) "
        f"and {len(labels)} labels of the model on {topics.events} / "
        f"{topics.labels}"
    )
    if not served:
        notes.append(
            "the prediction log is empty (no predictor traffic with "
            "predictor.log_predictions): the accuracy and loss come from the "
            "checkpoints registered in MLflow"
        )
    checkpoints: list[Checkpoint] = []
    versions: list[VersionPoint] = []
    if with_registry:
        checkpoints, versions = registered_checkpoints(settings, recorded.model_id, since_ms, notes)
    return build_live(
        recorded.model_id,
        recorded.spec.type,
        events=events,
        labels=labels,
        alerts=[
            a for a in recorded.alerts if since_ms is None or int(a.get("ts") or 0) >= since_ms
        ],
        dlq=recorded.dlq,
        checkpoints=checkpoints,
        versions=versions,
        input_records=recorded.n_samples + len(events) + len(labels),
        source=recorded.source,
        notes=notes,
    )


def collect(
    settings: Settings,
    model_id: str,
    since_ms: int | None = None,
    *,
    max_records: int = MAX_RECORDS,
    consumer_factory: Callable[[], Any] | None = None,
    with_registry: bool = True,
) -> EvaluationData:
    """:func:`live_data` of what :func:`read_recorded` reads."""
    recorded = read_recorded(
        settings, model_id, since_ms, max_records=max_records, consumer_factory=consumer_factory
    )
    return live_data(settings, recorded, with_registry)
