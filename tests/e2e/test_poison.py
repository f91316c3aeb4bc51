"""Bad input end to end: a poison set on every input topic of the running job.

Every record sent is accounted for, exactly: it is trained, or it is in ``fl.dlq`` (once,
with the expected reason), or it is a counted duplicate or a counted expired event, or it is
a control command the trainer took (and answered on ``fl.alerts``) — and the job never
restarts. docs/reliability.md has the table of what is sent and what becomes of it.

The e2e configuration creates unknown models (``job.unknown_model_policy = "create"``), so
an unknown model id is trained with ``[model_defaults]`` here; the ``"dlq"`` policy is a
job-level setting, checked by the unit tests of the parser (``unknown_model``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import MessageSizeTooLargeError

from flowlearn.contracts.records import MAX_DLQ_RAW_BYTES, MAX_RECORD_BYTES, now_ms
from flowlearn.contracts.redis_contract import Keys, read_snapshot, redis_client

from .conftest import wait_until
from .test_faults import Job

pytestmark = pytest.mark.e2e

#: Outcomes that are not a DLQ reason.
TRAINED, DUPLICATE, EXPIRED, APPLIED = "trained", "duplicate", "expired", "applied"
GATE = "gate_rejected"
DROP = object()  # a field left out
YEAR_MS = 365 * 24 * 3600 * 1000


@dataclass(frozen=True)
class Sent:
    topic: str
    what: str
    raw: bytes
    expect: str  # a DLQ reason or one of the outcomes above
    #: The model whose counters show the outcome.
    model: str = ""

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


class Poison:
    """Builds the records; each carries a unique marker, so the DLQ gives each one back."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.marker = uuid.uuid4().hex[:12]
        self.rng = np.random.default_rng(5)
        self.records: list[Sent] = []
        self.i = 0

    def _mark(self) -> str:
        self.i += 1
        return f"{self.marker}-{self.i}"

    def features(self) -> list[float]:
        return [round(float(v), 6) for v in self.rng.normal(size=10)]

    def obj(self, kind: str, **over: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"model_id": self.model, "ts": now_ms()}
        if kind == "sample":
            base.update(features=self.features(), label=int(self.rng.integers(2)))
        elif kind == "event":
            base.update(event_id=f"ev-{self._mark()}", features=self.features())
        elif kind == "label":
            base.update(event_id=f"ev-{self._mark()}", label=1)
        else:
            base.update(
                command="set_learning_rate", args={"learning_rate": 0.05}, source="test:poison"
            )
        base.update(over)
        base["poison"] = self._mark()
        return {k: v for k, v in base.items() if v is not DROP}

    def add(
        self, topic: str, what: str, raw: bytes | dict[str, Any] | str, expect: str, model: str = ""
    ) -> bytes:
        if isinstance(raw, dict):
            raw = json.dumps(raw).encode()
        elif isinstance(raw, str):  # JSON text written as is (NaN, 1e400, huge ints)
            raw = raw.encode()
        self.records.append(Sent(topic, what, raw, expect, model or self.model))
        return raw

    def text(self, kind: str, fragment: str, **over: Any) -> str:
        """A record's JSON with ``fragment`` (raw JSON text) as one more member."""
        return json.dumps(self.obj(kind, **over))[:-1] + ", " + fragment + "}"


def build_poison(topics: Any, model: str, new_model: str, huge_model: str) -> Poison:
    p = Poison(model)
    far_future = now_ms() + 10 * YEAR_MS
    pad = "x" * (MAX_RECORD_BYTES + 1000)  # a record just over the parser's limit
    for topic, kind in (
        (topics.samples, "sample"),
        (topics.events, "event"),
        (topics.labels, "label"),
        (topics.control, "control"),
    ):
        add = p.add
        add(topic, "not JSON", f"\x00\x01 not json {p._mark()}".encode(), "not_json")
        add(
            topic,
            "invalid UTF-8",
            b'{"model_id": "\xff\xfe' + p._mark().encode() + b'"}',
            "not_json",
        )
        add(topic, "truncated JSON", json.dumps(p.obj(kind)).encode()[:-3], "not_json")
        add(
            topic,
            "nested 100k deep",
            p.text(kind, '"x": ' + "[" * 100_000 + "]" * 100_000),
            "not_json",
        )
        add(topic, "an int of 5000 digits", p.text(kind, '"big": ' + "9" * 5000), "not_json")
        add(topic, "a JSON array", json.dumps([p._mark(), 1, 2]), "not_object")
        add(topic, "a JSON string", json.dumps(p._mark()), "not_object")
        add(topic, "no model_id", p.obj(kind, model_id=DROP), "missing_field")
        add(topic, "no ts", p.obj(kind, ts=DROP), "missing_field")
        add(topic, "model_id a number", p.obj(kind, model_id=42), "bad_model_id")
        add(topic, "model_id empty", p.obj(kind, model_id=""), "bad_model_id")
        add(topic, "model_id of 201 chars", p.obj(kind, model_id="m" * 201), "bad_model_id")
        add(topic, "model_id with a space", p.obj(kind, model_id="a b"), "bad_model_id")
        add(topic, "ts a string", p.obj(kind, ts="yesterday"), "bad_field")
        add(topic, "ts negative", p.obj(kind, ts=-5), "bad_field")
        add(topic, "ts 1e30", p.obj(kind, ts=1e30), "bad_field")
        add(topic, "ts NaN", p.text(kind, '"ts": NaN', ts=DROP), "bad_field")
        add(topic, "oversized (limit + 1000 bytes)", p.obj(kind, pad=pad), "too_large")
        add(
            topic,
            "oversized, beyond the DLQ's whole-raw limit",
            f"\x00{p._mark()}".encode() + b"z" * (MAX_DLQ_RAW_BYTES + 1000),
            "too_large",
        )

    s = topics.samples
    add = p.add
    add(s, "no features", p.obj("sample", features=DROP), "missing_field")
    add(s, "no label", p.obj("sample", label=DROP), "missing_field")
    add(s, "label null", p.obj("sample", label=None), "missing_field")
    add(s, "label a string", p.obj("sample", label="1"), "bad_field")
    add(s, "label 0.5 (logistic)", p.obj("sample", label=0.5), "bad_field")
    add(s, "label 1e308", p.obj("sample", label=1e308), "bad_field")
    add(s, "label NaN", p.text("sample", '"label": NaN', label=DROP), "bad_field")
    add(s, "label Infinity", p.text("sample", '"label": Infinity', label=DROP), "bad_field")
    add(s, "event_id a number", p.obj("sample", event_id=7), "bad_field")
    add(s, "event_id empty", p.obj("sample", event_id=""), "bad_field")
    add(s, "features a string", p.obj("sample", features="1,2,3"), "bad_features")
    add(s, "features a map (dense model)", p.obj("sample", features={"a": 1}), "bad_features")
    add(
        s,
        "a string among the features",
        p.obj("sample", features=["x"] + [0.0] * 9),
        "bad_features",
    )
    add(
        s, "a bool among the features", p.obj("sample", features=[True] + [0.0] * 9), "bad_features"
    )
    for literal in ("Infinity", "-Infinity", "1e400", "9" * 400):
        add(
            s,
            f"{literal[:12]} among the features",
            p.text("sample", f'"features": [{literal}, 0, 0, 0, 0, 0, 0, 0, 0, 0]', features=DROP),
            "bad_features",
        )
    # A missing value, which the model's feature pipeline fills (missing = "impute").
    add(
        s,
        "NaN among the features",
        p.text("sample", '"features": [NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0]', features=DROP),
        TRAINED,
    )
    for count in (0, 9, 11):
        add(s, f"{count} features", p.obj("sample", features=[0.5] * count), "bad_features")
    # Accepted, and trained:
    add(s, "ts far in the past (1 ms)", p.obj("sample", ts=1), TRAINED)
    add(s, "ts 10 years ahead", p.obj("sample", ts=far_future), "bad_field")
    add(s, "unknown extra fields", p.obj("sample", extra={"a": [1, 2]}), TRAINED)
    twice = add(
        s, "sent twice (same event_id)", p.obj("sample", event_id=f"dup-{p.marker}"), TRAINED
    )
    add(s, "... the same bytes again", twice, DUPLICATE)
    add(s, "an unknown model id", p.obj("sample", model_id=new_model), TRAINED, new_model)
    # Finite, but beyond what training can take: the trainer's gate refuses the batch.
    for value in ("1e300", "9" * 308):
        add(
            s,
            f"features {value[:5]}... (finite)",
            p.text(
                "sample",
                f'"features": [{", ".join([value] * 10)}]',
                features=DROP,
                model_id=huge_model,
            ),
            GATE,
            huge_model,
        )

    e = topics.events
    add(e, "no event_id", p.obj("event", event_id=DROP), "missing_field")
    add(e, "no features", p.obj("event", features=DROP), "missing_field")
    add(e, "event_id a number", p.obj("event", event_id=5), "bad_field")
    add(e, "event_id empty", p.obj("event", event_id=""), "bad_field")
    add(e, "3 features", p.obj("event", features=[0.5] * 3), "bad_features")
    add(
        e,
        "Infinity among the features",
        p.text("event", '"features": [Infinity, 0, 0, 0, 0, 0, 0, 0, 0, 0]', features=DROP),
        "bad_features",
    )
    add(e, "ts 10 years ahead", p.obj("event", ts=far_future), "bad_field")
    add(e, "ts far in the past (1 ms)", p.obj("event", ts=1), EXPIRED)

    lab = topics.labels
    add(lab, "no label", p.obj("label", label=DROP), "missing_field")
    add(lab, "no event_id", p.obj("label", event_id=DROP), "missing_field")
    add(lab, "label 2 (logistic)", p.obj("label", label=2), "bad_field")
    add(lab, "label NaN", p.text("label", '"label": NaN', label=DROP), "bad_field")
    add(lab, "ts 10 years ahead", p.obj("label", ts=far_future), "bad_field")
    add(lab, "ts far in the past (1 ms)", p.obj("label", ts=1), "late")
    add(lab, "no event with its id, ever", p.obj("label"), "no_event")

    c = topics.control
    add(c, "no command", p.obj("control", command=DROP), "missing_field")
    add(c, "command a number", p.obj("control", command=42), "bad_field")
    add(c, "command a list", p.obj("control", command=["rollback"]), "bad_field")
    add(c, "unknown command", p.obj("control", command="self_destruct"), "unknown_command")
    add(c, "empty command", p.obj("control", command=""), "unknown_command")
    add(c, "args a list", p.obj("control", args=[1]), "bad_field")
    add(c, "rollback without a version", p.obj("control", command="rollback", args={}), "bad_field")
    add(
        c,
        'rollback to version "3"',
        p.obj("control", command="rollback", args={"version": "3"}),
        "bad_field",
    )
    add(
        c,
        "learning rate NaN",
        p.text("control", '"args": {"learning_rate": NaN}', args=DROP),
        "bad_field",
    )
    # Well-formed, so taken by the trainer, which answers each on fl.alerts:
    add(
        c,
        "rollback to a version never made",
        p.obj("control", command="rollback", args={"version": 10**9}),
        APPLIED,
    )
    add(c, "a negative learning rate", p.obj("control", args={"learning_rate": -1}), APPLIED)
    add(c, "ts 10 years ahead (the default rate)", p.obj("control", ts=far_future), APPLIED)
    return p


def good_pairs(p: Poison, topics: Any, n: int) -> tuple[list[Sent], list[Sent]]:
    """``n`` events and their labels (sent at once: the join pairs them)."""
    events, labels = [], []
    for _ in range(n):
        event = p.obj("event")
        events.append(
            Sent(topics.events, "a good event", json.dumps(event).encode(), TRAINED, p.model)
        )
        label = p.obj("label", event_id=event["event_id"], ts=event["ts"])
        labels.append(
            Sent(topics.labels, "its label", json.dumps(label).encode(), TRAINED, p.model)
        )
    return events, labels


def send(bootstrap: str, records: list[tuple[str, bytes]], key: str) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for topic, raw in records:
            producer.send(topic, key=key.encode(), value=raw)
    finally:
        producer.flush()
        producer.close()


class Dlq:
    """Reads fl.dlq from the start and keeps what it read."""

    def __init__(self, settings: Any) -> None:
        self.consumer = KafkaConsumer(
            settings.kafka.topics.dlq,
            bootstrap_servers=settings.kafka.bootstrap,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            consumer_timeout_ms=500,
            group_id=None,
            max_partition_fetch_bytes=4 << 20,
        )
        self.records: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        self.records.extend(json.loads(m.value) for m in self.consumer)
        return self.records

    def close(self) -> None:
        self.consumer.close()


def model_metrics(job: Job, operator: str, model: str) -> dict[str, int]:
    """The counters of one model in the task whose name starts with ``operator`` (Flink
    REST; refreshed every 10 s)."""
    vertex = next(v for v in job.rest("")["vertices"] if v["name"].startswith(operator))
    path = f"/vertices/{vertex['id']}/metrics"
    ids = [m["id"] for m in job.rest(path) if f".model.{model}." in m["id"]]
    if not ids:
        return {}
    got = job.rest(f"{path}?get={','.join(ids)}")
    return {m["id"].rsplit(".", 1)[1]: int(float(m["value"])) for m in got}


def alerts_of(settings: Any, model: str) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(
        settings.kafka.topics.alerts,
        bootstrap_servers=settings.kafka.bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        consumer_timeout_ms=500,
        group_id=None,
    )
    try:
        return [a for m in consumer if (a := json.loads(m.value))["model_id"] == model]
    finally:
        consumer.close()


def test_every_poison_record_is_accounted_for_and_the_job_keeps_running(stack, status):
    settings, _ = stack
    topics = settings.kafka.topics
    tag = uuid.uuid4().hex[:8]
    model, new_model, huge_model = f"bad-{tag}", f"bad-new-{tag}", f"bad-huge-{tag}"
    client = redis_client(settings.redis, timeout_s=5)
    keys = Keys(settings.redis.prefix)
    job = Job(settings, status()["job"]["id"])
    restarts_before = job.settled_restarts()  # after the failovers of earlier tests
    started_ms = now_ms()
    started = time.monotonic()

    def applied(model_id: str) -> int:
        snap = read_snapshot(client, keys, model_id)
        return snap.samples_applied if snap else 0

    # 1. Good traffic first: the model exists and the join's watermark is running.
    p = build_poison(topics, model, new_model, huge_model)
    good_samples = [
        Sent(topics.samples, "a good sample", json.dumps(p.obj("sample")).encode(), TRAINED, model)
        for _ in range(40)
    ]
    events, labels = good_pairs(p, topics, 20)
    send(
        settings.kafka.bootstrap,
        [(topics.samples, r.raw) for r in good_samples]
        + [(topics.events, r.raw) for r in events]
        + [(topics.labels, r.raw) for r in labels],
        key=model,
    )
    wait_until("the good records trained", lambda: applied(model) == 60, 60, 0.2)

    # 2. The poison, and duplicates of a good event and label (counted, not trained).
    duplicates = [
        Sent(topics.events, "a good event again", events[0].raw, DUPLICATE, model),
        Sent(topics.labels, "a good label again", labels[0].raw, DUPLICATE, model),
    ]
    poison = p.records + duplicates
    send(settings.kafka.bootstrap, [(r.topic, r.raw) for r in poison], key=model)
    # A record beyond Kafka's message size never gets in: the producer is told.
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    with pytest.raises(MessageSizeTooLargeError):
        producer.send(topics.samples, value=b"\x00" * (1 << 20) + b"x" * 100)
    producer.close()

    # 3. Event time moves on (the orphan label's deadline passes) with more good pairs.
    orphan_ts = max(json.loads(r.raw)["ts"] for r in p.records if r.expect == "no_event")
    out_of_order = settings.job.out_of_orderness_ms
    wait_until(
        "event time past the orphan label",
        lambda: now_ms() > orphan_ts + 1000 + out_of_order + 500,
        10,
        0.1,
    )
    more_events, more_labels = good_pairs(p, topics, 5)
    send(
        settings.kafka.bootstrap,
        [(topics.events, r.raw) for r in more_events]
        + [(topics.labels, r.raw) for r in more_labels],
        key=model,
    )
    sent = good_samples + events + labels + poison + more_events + more_labels

    # Every DLQ-bound record comes back once, with its reason.
    expected = {
        r.sha: r for r in poison if r.expect not in (TRAINED, DUPLICATE, EXPIRED, APPLIED, GATE)
    }
    assert len(expected) == sum(1 for r in poison if r.sha in expected), "markers not unique"
    dlq = Dlq(settings)
    found: Counter[str] = Counter()
    gate_rows: list[int] = []

    def all_dead_lettered() -> bool:
        found.clear()
        gate_rows.clear()
        for d in dlq.read():
            if d["source_topic"] == "trainer":
                table = pa.ipc.open_stream(base64.b64decode(d["raw"])).read_all()
                if table.column("model_id")[0].as_py() == huge_model:
                    gate_rows.append(table.num_rows)
                continue
            raw = base64.b64decode(d["raw"])
            sha = d.get("raw_sha256") or hashlib.sha256(raw).hexdigest()
            if sha in expected:
                r = expected[sha]
                assert (d["source_topic"], d["reason"]) == (r.topic, r.expect), (r.what, d)
                assert d.get("raw_truncated", False) == (len(r.raw) > MAX_DLQ_RAW_BYTES)
                assert r.raw.startswith(raw)
                found[sha] += 1
        return len(found) == len(expected) and sum(gate_rows) == 2

    try:
        wait_until("every poison record in the DLQ", all_dead_lettered, 90, 0.5)
    finally:
        dlq.close()
    assert set(found.values()) == {1}, "a record dead-lettered twice"

    trained_samples = [
        r for r in good_samples + poison if r.topic == topics.samples and r.expect == TRAINED
    ]
    n_model = sum(1 for r in trained_samples if r.model == model) + len(events + more_events)
    wait_until(f"{n_model} samples of {model} applied", lambda: applied(model) >= n_model, 60, 0.2)
    assert applied(model) == n_model
    assert applied(new_model) == 1  # unknown_model_policy = "create"
    assert read_snapshot(client, keys, huge_model) is None  # never a version

    # Duplicate events and labels and the expired event are counted by the join, duplicate
    # samples by the trainer (REST metrics lag ~10 s). (The join's ``unmatched_labels``,
    # counted in the event-time timer for ``no_event``, never reaches Flink's metrics: see
    # docs/reliability.md.)
    want = {
        "joined": len(events + more_events),
        "duplicates": 2,
        "expired": 1,
        "late": 1,
        "duplicate_samples": 1,
    }
    seen: list[dict[str, int]] = [{}]

    def counted() -> bool:
        seen[0] = {
            **model_metrics(job, "label-join", model),
            **model_metrics(job, "trainer", model),
        }
        return all(seen[0].get(k) == v for k, v in want.items())

    try:
        wait_until(f"the join's counters {want}", counted, 60, 1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last {seen[0]}") from None
    metrics = seen[0]

    # The control commands that parsed were taken, each answered on fl.alerts.
    answered = wait_until(
        "an alert for each command taken",
        lambda: (
            (a := [x for x in alerts_of(settings, model) if x["kind"] in ("control", "rollback")])
            and len(a) >= 3
            and a
        ),
        60,
        1,
    )
    assert len(answered) == 3
    assert sorted(a["detail"]["ok"] for a in answered) == [False, False, True]
    gate_alerts = [a for a in alerts_of(settings, huge_model) if a["kind"] == GATE]
    assert sum(a["detail"]["samples"] for a in gate_alerts) == 2

    # The books balance: every record sent is one of these.
    outcome = Counter(
        "dlq" if r.expect not in (TRAINED, DUPLICATE, EXPIRED, APPLIED) else r.expect for r in sent
    )
    trained_records = applied(model) + applied(new_model) + len(events + more_events)
    assert outcome["dlq"] == len(expected) + sum(gate_rows)
    assert outcome[TRAINED] == trained_records  # a joined sample is two records
    assert outcome[DUPLICATE] == metrics["duplicates"] + metrics["duplicate_samples"]
    assert outcome[EXPIRED] == metrics["expired"]
    assert outcome[APPLIED] == len(answered)
    assert len(sent) == sum(outcome.values())

    # And the job never restarted.
    assert [e for e in job.exceptions() if e["timestamp"] >= started_ms] == []
    assert job.rest("")["state"] == "RUNNING"
    assert job.restarts() == restarts_before
    print(
        f"[poison] {len(sent)} records: {dict(outcome)}; duplicates and expiry counted by "
        f"the join and the trainer: {metrics}; {time.monotonic() - started:.1f}s",
        file=sys.stderr,
    )
