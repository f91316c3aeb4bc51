"""Bad input end to end: a poison set on every input topic of the running job, and the
restart-loop guard of issue #23: no record can stop the job.

The set is hand-written (the cases docs/reliability.md lists, and the crash-loop classes of
#23: versions no state key can hold, a command of 500 KB of 4-byte characters, malformed
lifecycle commands and shape changes without a reset) and generated (good records mutated
by a seeded generator, each one's fate asked of the project's parser functions in process).
It goes in three parts: the first before a completed checkpoint, the second just before the
TaskManager is SIGKILLed (so that it is replayed), the third after the job recovered.

Every record sent is accounted for, exactly: it is trained, or it is in ``fl.dlq`` (once,
with the expected reason), or it is a counted duplicate or a counted expired event, or it is
a control command the trainer took and answered on ``fl.alerts`` (once) — and the job's only
failover is the kill's. docs/reliability.md has the table of what is sent and what becomes
of it.

The e2e configuration creates unknown models (``job.unknown_model_policy = "create"``), so
an unknown model id is trained with ``[model_defaults]`` here; the ``"dlq"`` policy is a
job-level setting, checked by the unit tests of the parser (``unknown_model``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import MessageSizeTooLargeError

from flowlearn.contracts.records import (
    MAX_ALERT_BYTES,
    MAX_DLQ_RAW_BYTES,
    MAX_RECORD_BYTES,
    RecordError,
    now_ms,
    parse_control,
    parse_event,
    parse_label,
    parse_sample,
)
from flowlearn.contracts.redis_contract import Keys, read_snapshot, redis_client
from flowlearn.contracts.spec import ModelSpecs

from .conftest import wait_until
from .test_faults import Job, taskmanager_pid

pytestmark = pytest.mark.e2e

#: Outcomes that are not a DLQ reason.
TRAINED, DUPLICATE, EXPIRED, APPLIED = "trained", "duplicate", "expired", "applied"
GATE = "gate_rejected"
OUTCOMES = (TRAINED, DUPLICATE, EXPIRED, APPLIED, GATE)
#: What the records sent just before the kill (and replayed after it) are named with.
CRASH_LOOP = "crash loop: "
DROP = object()  # a field left out
YEAR_MS = 365 * 24 * 3600 * 1000
#: 125,000 characters of 4 bytes in UTF-8: 500,000 bytes, under the parser's record limit,
#: and 1.5 MB once ``json.dumps`` escapes them (#23: an answer that echoed them failed the
#: exactly-once alerts sink on every replay).
WIDE_TEXT = "\U0001f600" * 125_000
#: Versions no model has, nor any state key can hold (#23: 1e19 overflowed the trainer's
#: 64-bit map-state keys on every replay).
HOSTILE_VERSIONS = (1e19, 2**63, 2.5, 0, -1)
#: The values a generated record's field takes (JSON text): numbers beyond float64 and
#: int64, NaN and Infinity literals, subnormals, wrong types, nested containers, long strings,
#: 4-byte characters, a lone surrogate, a NUL.
HOSTILE_VALUES = (
    "null",
    "true",
    "false",
    "0",
    "-1",
    "2.5",
    "1e19",
    "-1e19",
    str(2**63),
    str(2**64),
    str(-(2**63) - 1),
    "1e308",
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e-320",
    "9" * 400,
    '""',
    '" "',
    json.dumps("x" * 5000),
    json.dumps("\U0001f600" * 2000, ensure_ascii=False),
    '"\\ud800"',
    '"\\u0000"',
    '"../../etc/passwd"',
    "[]",
    "{}",
    "[null]",
    "[[[[[[[[]]]]]]]]",
    "[" * 500 + "]" * 500,
    '{"a": {"b": {"c": [1, 2, {"d": null}]}}}',
    json.dumps([0.0] * 10_000),
    json.dumps(["1"] * 10),
    json.dumps([None] * 10),
    json.dumps({str(i): i for i in range(10)}),
)


@dataclass(frozen=True)
class Sent:
    topic: str
    what: str
    raw: bytes
    expect: str  # a DLQ reason or one of the outcomes above
    #: The model whose counters show the outcome.
    model: str = ""
    #: Counted by a task's metrics, which a failover sets back to zero: sent after the kill.
    counted: bool = False
    #: A command's answer: its ``args.request`` and whether it is ``ok`` (None: either).
    request: str = ""
    ok: bool | None = None

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


class Poison:
    """Builds the records; each carries a unique marker, so the DLQ gives each one back (and
    each command its own ``args.request``, so ``fl.alerts`` gives each answer back)."""

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
                command="set_learning_rate",
                args={"learning_rate": 0.05, "request": f"req-{self._mark()}"},
                source="test:poison",
            )
        base.update(over)
        base["poison"] = self._mark()
        return {k: v for k, v in base.items() if v is not DROP}

    def command(self, command: str, args: Mapping[str, Any], **over: Any) -> dict[str, Any]:
        """A control record the trainer is to answer (its args carry a request id)."""
        return self.obj(
            "control", command=command, args={**args, "request": f"req-{self._mark()}"}, **over
        )

    def add(
        self,
        topic: str,
        what: str,
        raw: bytes | dict[str, Any] | str,
        expect: str,
        model: str = "",
        counted: bool = False,
        ok: bool | None = None,
    ) -> bytes:
        if isinstance(raw, dict):
            raw = json.dumps(raw, ensure_ascii=False).encode()
        elif isinstance(raw, str):  # JSON text written as is (NaN, 1e400, huge ints)
            raw = raw.encode()
        # A command's answer is found by its request id (json reads NaN, Infinity, 1e400).
        request = json.loads(raw)["args"]["request"] if expect == APPLIED else ""
        self.records.append(
            Sent(topic, what, raw, expect, model or self.model, counted, request, ok)
        )
        return raw

    def text(self, kind: str, fragment: str, **over: Any) -> str:
        """A record's JSON with ``fragment`` (raw JSON text) as one more member."""
        return json.dumps(self.obj(kind, **over))[:-1] + ", " + fragment + "}"


def build_poison(topics: Any, models: Mapping[str, str]) -> Poison:
    """The hand-written set. ``models``: the one most records are for (``model``), an
    unknown one (``new``), one for samples beyond training (``huge``), one for lifecycle
    commands (``life``), one never made (``absent``)."""
    model, new_model, huge_model = models["model"], models["new"], models["huge"]
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
        s,
        "sent twice (same event_id)",
        p.obj("sample", event_id=f"dup-{p.marker}"),
        TRAINED,
        counted=True,
    )
    add(s, "... the same bytes again", twice, DUPLICATE, counted=True)
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
    # Expired on arrival, behind the join's watermark (which a restart sets back): before
    # the kill, its counter read then.
    add(e, "ts far in the past (1 ms)", p.obj("event", ts=1), EXPIRED)

    lab = topics.labels
    add(lab, "no label", p.obj("label", label=DROP), "missing_field")
    add(lab, "no event_id", p.obj("label", event_id=DROP), "missing_field")
    add(lab, "label 2 (logistic)", p.obj("label", label=2), "bad_field")
    add(lab, "label NaN", p.text("label", '"label": NaN', label=DROP), "bad_field")
    add(lab, "ts 10 years ahead", p.obj("label", ts=far_future), "bad_field")
    # Late: behind the join's watermark, which a restart sets back (watermarks are not
    # checkpointed), so it goes before the kill; the DLQ shows it (the "late" counter too,
    # until the failover sets it back to 0).
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
        p.command("rollback", {"version": 10**9}),
        APPLIED,
        ok=False,
    )
    add(
        c,
        "a negative learning rate",
        p.command("set_learning_rate", {"learning_rate": -1}),
        APPLIED,
        ok=False,
    )
    add(
        c, "ts 10 years ahead (the default rate)", p.obj("control", ts=far_future), APPLIED, ok=True
    )
    add(
        c,
        "warm_start from a baseline never registered",
        p.command("warm_start", {"version": 1}),
        APPLIED,
        ok=False,
    )
    add_crash_loops(p, topics, models)
    return p


def add_crash_loops(p: Poison, topics: Any, models: Mapping[str, str]) -> None:
    """The crash-loop classes of #23, each of which once failed the job on every replay."""
    c, add = topics.control, p.add
    for command in ("rollback", "pin", "warm_start"):
        for version in HOSTILE_VERSIONS:
            add(
                c,
                f"{CRASH_LOOP}{command} to version {version!r}",
                p.command(command, {"version": version}),
                APPLIED,
                ok=False,
            )
    # 500 KB of 4-byte characters: answered, the answer cut to a bounded alert.
    add(
        c,
        f"{CRASH_LOOP}a command with 500 KB of 4-byte characters in its args",
        p.command("set_learning_rate", {"learning_rate": 0.05, "note": WIDE_TEXT}),
        APPLIED,
        ok=True,
    )
    add(
        c,
        f"{CRASH_LOOP}a rollback to 1e19 with 500 KB of 4-byte characters",
        p.command("rollback", {"version": 1e19, "note": WIDE_TEXT}),
        APPLIED,
        ok=False,
    )
    add(
        topics.samples,
        f"{CRASH_LOOP}a sample with 500 KB of 4-byte characters (an extra field)",
        p.obj("sample", note=WIDE_TEXT),
        TRAINED,
    )
    for topic, kind in (
        (topics.samples, "sample"),
        (topics.events, "event"),
        (topics.labels, "label"),
        (c, "control"),
    ):
        add(
            topic,
            f"{CRASH_LOOP}500 KB of 4-byte characters, ts a string",
            p.obj(kind, note=WIDE_TEXT, ts="yesterday"),
            "bad_field",
        )

    # Lifecycle commands: malformed ones are dead-lettered by the parser; shape or type
    # changes without a reset, and specs no model can be built from, are refused.
    life, absent = models["life"], models["absent"]

    def refused(what: str, command: str, args: Any, reason: str) -> None:
        add(c, what, p.obj("control", model_id=life, command=command, args=args), reason)

    refused("create without a spec", "create", {}, "bad_field")
    refused("create, its spec a list", "create", {"spec": [10]}, "bad_field")
    for what, spec in (
        ("n_features -3", {"n_features": -3}),
        ("an unknown type", {"type": "no_such_type"}),
        ("an unknown field", {"n_features": 3, "learning_rat": 0.1}),
        ("n_features 2^40", {"n_features": 2**40}),
        ("n_features 1e19", {"n_features": 1e19}),
        ("10^9 classes", {"type": "softmax", "n_features": 10, "n_classes": 10**9}),
        (
            "a bandit of 10^9 actions",
            {"type": "contextual_bandit", "n_features": 10, "n_actions": 10**9},
        ),
        ("auto_logistic at learning rate 1e308", {"type": "auto_logistic", "learning_rate": 1e308}),
        ("l2 Infinity", {"n_features": 10, "l2": math.inf}),
    ):
        refused(f"create, {what}", "create", {"spec": spec}, "bad_spec")
    refused("update without changes", "update", {}, "bad_field")
    refused("update, changes empty", "update", {"changes": {}}, "bad_field")
    refused("update n_features without reset", "update", {"changes": {"n_features": 4}}, "bad_spec")
    refused("update type without reset", "update", {"changes": {"type": "linear"}}, "bad_spec")
    refused(
        'update with reset "yes"',
        "update",
        {"changes": {"n_features": 4}, "reset": "yes"},
        "bad_spec",
    )
    refused(
        "update with reset, an unknown field",
        "update",
        {"changes": {"size": 4}, "reset": True},
        "bad_spec",
    )

    def answered(what: str, command: str, args: Any, ok: bool, model: str = life) -> None:
        add(c, what, p.command(command, args, model_id=model), APPLIED, model, ok=ok)

    answered("delete a model never made", "delete", {}, False, absent)
    answered(
        "update a model never made", "update", {"changes": {"learning_rate": 0.1}}, False, absent
    )
    answered("create (3 features)", "create", {"spec": {"n_features": 3}}, True)
    answered("the same create again", "create", {"spec": {"n_features": 3}}, True)
    answered("create again with 4 features", "create", {"spec": {"n_features": 4}}, False)
    answered("update a live field", "update", {"changes": {"learning_rate": 0.1}}, True)
    for what, changes in (
        ("n_features -1", {"n_features": -1}),
        ("n_features 2^40", {"n_features": 2**40}),
        ("10^9 classes", {"type": "softmax", "n_classes": 10**9}),
    ):
        answered(f"reset to {what}", "update", {"changes": changes, "reset": True}, False)
    answered("reset to 5 features", "update", {"changes": {"n_features": 5}, "reset": True}, True)
    answered("delete it", "delete", {}, True)
    answered("update it once deleted", "update", {"changes": {"learning_rate": 0.2}}, False)


def parser_outcome(
    topics: Any, topic: str, raw: bytes, spec_for: Callable[[str], Any], ahead_ms: int
) -> tuple[str, Any]:
    """What the job's parser makes of one record, asked of the parser functions in process:
    a DLQ reason, or TRAINED (a sample) or APPLIED (a command), with the parsed value; None
    for an event or a label it takes (its fate is then the label join's, not the parser's)."""
    try:
        if topic == topics.control:
            return APPLIED, parse_control(raw)
        parse = {topics.samples: parse_sample, topics.events: parse_event}.get(topic)
        parsed = parse(raw, spec_for) if parse else parse_label(raw, spec_for)
    except RecordError as exc:
        return exc.reason, None
    if parsed.ts - now_ms() > ahead_ms:  # the parsers' check_not_ahead
        return "bad_field", None
    return (TRAINED if topic == topics.samples else ""), parsed


def generate(p: Poison, topics: Any, settings: Any, per_topic: int, seed: int) -> list[Sent]:
    """``per_topic`` records on each topic: a good record (of ``p.model``; a command of
    ``control_model``) with one field dropped or set to one of :data:`HOSTILE_VALUES`, or one
    more field, drawn from ``seed``. Each one's expected fate is the in-process parser's; a
    draw whose fate is not the parser's to say (an event or label it takes; a sample of
    another model, or with features the trainer's gate would refuse with its whole batch;
    a command that is not the base one) is drawn again."""
    rng = random.Random(seed)
    spec_for = ModelSpecs(settings).dict_of
    ahead_ms = settings.job.out_of_orderness_ms
    control_model = f"{p.model}-ctl"
    out: list[Sent] = []
    for topic, kind in (
        (topics.samples, "sample"),
        (topics.events, "event"),
        (topics.labels, "label"),
        (topics.control, "control"),
    ):
        made = 0
        while made < per_topic:
            obj = p.obj(kind, model_id=control_model) if kind == "control" else p.obj(kind)
            field = rng.choice([*(k for k in obj if k != "poison"), "extra"])
            drop = field != "extra" and rng.random() < 0.2
            obj.pop(field, None)
            if drop:
                what, fragment = f"generated: no {field}", ""
            else:
                hostile = rng.choice(HOSTILE_VALUES)
                what, fragment = f"generated: {field} = {hostile[:24]}", f', "{field}": {hostile}'
            raw = (json.dumps(obj)[:-1] + fragment + "}").encode()
            expect, parsed = parser_outcome(topics, topic, raw, spec_for, ahead_ms)
            if expect == TRAINED and not (
                parsed.model_id == p.model and np.nanmax(np.abs(parsed.features)) < 1e6
            ):
                continue
            if expect == APPLIED and not (
                parsed.model_id == control_model and parsed.command == "set_learning_rate"
            ):
                continue
            if not expect:
                continue
            out.append(
                Sent(
                    topic,
                    what,
                    raw,
                    expect,
                    control_model if expect == APPLIED else p.model,
                    request=parsed.args["request"] if expect == APPLIED else "",
                )
            )
            made += 1
    return out


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


def send(bootstrap: str, records: list[Sent], key: str) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for r in records:
            producer.send(r.topic, key=key.encode(), value=r.raw)
    finally:
        producer.flush()
        producer.close()


class Reader:
    """Reads a topic's committed records from the start, a few more on each call."""

    def __init__(self, settings: Any, topic: str) -> None:
        self.consumer = KafkaConsumer(
            topic,
            bootstrap_servers=settings.kafka.bootstrap,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            consumer_timeout_ms=500,
            group_id=None,
            max_partition_fetch_bytes=4 << 20,
        )

    def new(self) -> list[tuple[int, dict[str, Any]]]:
        """The records since the last call: (size in bytes, JSON)."""
        return [(len(m.value), json.loads(m.value)) for m in self.consumer]

    def close(self) -> None:
        self.consumer.close()


class Books:
    """What became of the records sent: their dead letters (by the SHA-256 of their raw
    bytes), the trainer's (the gate's batches of ``huge_model``) and the answers to their
    commands (by request id), read from ``fl.dlq`` and ``fl.alerts`` as the job commits
    them."""

    def __init__(self, settings: Any, sent: list[Sent], huge_model: str) -> None:
        self.expected = {r.sha: r for r in sent if r.expect not in OUTCOMES}
        assert len(self.expected) == sum(r.expect not in OUTCOMES for r in sent), "not unique"
        self.requests = {r.request: r for r in sent if r.expect == APPLIED}
        assert len(self.requests) == sum(r.expect == APPLIED for r in sent), "not unique"
        self.huge_model = huge_model
        self.dlq = Reader(settings, settings.kafka.topics.dlq)
        self.alerts = Reader(settings, settings.kafka.topics.alerts)
        self.found: Counter[str] = Counter()
        self.gate_rows: list[int] = []
        self.gate_alerts: list[dict[str, Any]] = []
        self.answers: dict[str, list[tuple[int, dict[str, Any]]]] = {}

    def read(self) -> None:
        for _, d in self.dlq.new():
            raw = base64.b64decode(d["raw"])
            if d["source_topic"] == "trainer":
                table = pa.ipc.open_stream(raw).read_all()
                if table.column("model_id")[0].as_py() == self.huge_model:
                    self.gate_rows.append(table.num_rows)
                continue
            sha = d.get("raw_sha256") or hashlib.sha256(raw).hexdigest()
            r = self.expected.get(sha)
            if r is not None:
                assert (d["source_topic"], d["reason"]) == (r.topic, r.expect), (r.what, d)
                assert d.get("raw_truncated", False) == (len(r.raw) > MAX_DLQ_RAW_BYTES)
                assert r.raw.startswith(raw)
                self.found[sha] += 1
        for size, a in self.alerts.new():
            args = a["detail"].get("args")
            request = args.get("request") if isinstance(args, dict) else None
            if request in self.requests:
                self.answers.setdefault(request, []).append((size, a))
            if a["model_id"] == self.huge_model and a["kind"] == GATE:
                self.gate_alerts.append(a)

    def missing(self, records: list[Sent]) -> list[str]:
        """What of ``records`` is not yet dead-lettered or answered."""
        self.read()
        return [
            r.what
            for r in records
            if (r.sha in self.expected and r.sha not in self.found)
            or (r.expect == APPLIED and r.request not in self.answers)
        ]

    def wait_for(self, what: str, records: list[Sent], timeout_s: float) -> None:
        """Until every one of ``records`` is dead-lettered or answered (and the gate's two
        samples are back when ``records`` hold them); the assertion names what is not."""
        gated = any(r.expect == GATE for r in records)
        last: list[list[str]] = [[]]

        def done() -> bool:
            last[0] = self.missing(records)
            if gated and (sum(self.gate_rows), len(self.gate_alerts)) != (2, 2):
                last[0].append(f"the gate: {self.gate_rows} rows, {self.gate_alerts} alerts")
            return not last[0]

        try:
            wait_until(what, done, timeout_s, 0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {len(last[0])} missing: {last[0][:10]}") from None

    def close(self) -> None:
        self.dlq.close()
        self.alerts.close()


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


def failures_since(job: Job, since_ms: int) -> list[dict[str, Any]]:
    """The job's failures (its exception history: one entry a failover) since then."""
    return [e for e in job.exceptions() if e["timestamp"] >= since_ms]


def kill_the_taskmanager(settings: Any, job: Job) -> tuple[int, int]:
    """SIGKILL the TaskManager; wait for the job to fail over and run again. Returns when
    it was killed and when every task ran again (epoch ms)."""
    pid = taskmanager_pid(settings)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed_ms = now_ms()
    wait_until("the job failing over", lambda: failures_since(job, killed_ms), 120, 0.5)
    wait_until("every task RUNNING again", job.running, 120, 0.5)
    return killed_ms, now_ms()


def test_no_record_stops_the_job_and_every_one_is_accounted_for_through_a_kill(stack, status):
    settings, _ = stack
    topics = settings.kafka.topics
    tag = uuid.uuid4().hex[:8]
    models = {"model": f"bad-{tag}"} | {
        name: f"bad-{name}-{tag}" for name in ("new", "huge", "life", "absent")
    }
    model, new_model, huge_model = models["model"], models["new"], models["huge"]
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
    p = build_poison(topics, models)
    generated = generate(p, topics, settings, per_topic=30, seed=23)
    good_samples = [
        Sent(topics.samples, "a good sample", json.dumps(p.obj("sample")).encode(), TRAINED, model)
        for _ in range(40)
    ]
    events, labels = good_pairs(p, topics, 20)
    send(settings.kafka.bootstrap, good_samples + events + labels, key=model)
    wait_until("the good records trained", lambda: applied(model) == 60, 60, 0.2)

    # 2. The poison in three parts. The first is taken before a checkpoint (its dead
    # letters and answers are committed, so a checkpoint completed after them); the second,
    # with the crash-loop commands, goes just before the kill and is replayed after it; the
    # third, with what only task metrics count (a failover sets them back to 0), after the
    # job recovered, with duplicates of a good event and label.
    replayed = [r for r in p.records if r.what.startswith(CRASH_LOOP)]
    first = [r for r in p.records if not r.counted and r not in replayed] + generated[0::3]
    second = replayed + generated[1::3]
    duplicates = [
        Sent(topics.events, "a good event again", events[0].raw, DUPLICATE, model),
        Sent(topics.labels, "a good label again", labels[0].raw, DUPLICATE, model),
    ]
    third = [r for r in p.records if r.counted] + duplicates + generated[2::3]
    poison = first + second + third
    books = Books(settings, poison, huge_model)
    try:
        send(settings.kafka.bootstrap, first, key=model)
        # (The orphan label waits for the watermark, which later events move.)
        books.wait_for(
            "the first part dead-lettered and answered",
            [r for r in first if r.expect not in ("no_event", GATE)],
            90,
        )
        first_done = time.monotonic()
        # The expired event's counter, read before the failover sets it back to 0.
        expired = wait_until(
            "the join's expired counter",
            lambda: model_metrics(job, "label-join", model).get("expired"),
            60,
            1,
        )
        send(settings.kafka.bootstrap, second, key=model)
        killed_ms, recovered_ms = kill_the_taskmanager(settings, job)
        send(settings.kafka.bootstrap, third, key=model)
        # A record beyond Kafka's message size never gets in: the producer is told.
        producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
        with pytest.raises(MessageSizeTooLargeError):
            producer.send(topics.samples, value=b"\x00" * (1 << 20) + b"x" * 100)
        producer.close()

        # 3. Event time moves on (the orphan label's deadline passes) with more good pairs.
        orphan_ts = max(json.loads(r.raw)["ts"] for r in poison if r.expect == "no_event")
        out_of_order = settings.job.out_of_orderness_ms
        wait_until(
            "event time past the orphan label",
            lambda: now_ms() > orphan_ts + 1000 + out_of_order + 500,
            10,
            0.1,
        )
        more_events, more_labels = good_pairs(p, topics, 5)
        send(settings.kafka.bootstrap, more_events + more_labels, key=model)
        sent = good_samples + events + labels + poison + more_events + more_labels

        # Every DLQ-bound record comes back once, with its reason; every command taken is
        # answered once (the sinks are exactly-once through the kill).
        books.wait_for("every poison record dead-lettered or answered", poison, 120)
    except BaseException:
        books.close()
        raise
    for request, answers in books.answers.items():
        r = books.requests[request]
        size, answer = answers[0]
        assert size <= MAX_ALERT_BYTES, r.what
        assert r.ok is None or answer["detail"]["ok"] is r.ok, (r.what, answer)
        if len(r.raw) > MAX_ALERT_BYTES:  # the 500 KB commands: their answers were cut
            assert answer["detail"]["truncated"] is True, r.what
    assert sum(a["detail"]["samples"] for a in books.gate_alerts) == 2

    trained_samples = [r for r in sent if r.topic == topics.samples and r.expect == TRAINED]
    n_model = sum(1 for r in trained_samples if r.model == model) + len(events + more_events)
    wait_until(f"{n_model} samples of {model} applied", lambda: applied(model) >= n_model, 60, 0.2)
    assert applied(model) == n_model
    assert applied(new_model) == 1  # unknown_model_policy = "create"
    assert read_snapshot(client, keys, huge_model) is None  # never a version

    # Duplicate events and labels are counted by the join, duplicate samples by the trainer
    # (REST metrics lag ~10 s), since the failover. (The join's
    # ``unmatched_labels``, counted in the event-time timer for ``no_event``, never reaches
    # Flink's metrics: see docs/reliability.md.)
    want = {
        "joined": len(more_events),
        "duplicates": 2,
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

    # The books balance: every record sent is one of these.
    outcome = Counter(
        "dlq" if r.expect not in (TRAINED, DUPLICATE, EXPIRED, APPLIED) else r.expect for r in sent
    )
    trained_records = applied(model) + applied(new_model) + len(events + more_events)
    assert outcome["dlq"] == len(books.expected) + sum(books.gate_rows)
    assert outcome[TRAINED] == trained_records  # a joined sample is two records
    assert outcome[DUPLICATE] == metrics["duplicates"] + metrics["duplicate_samples"]
    assert outcome[EXPIRED] == expired
    assert outcome[APPLIED] == len(books.answers)
    assert len(sent) == sum(outcome.values())

    # And the job failed over for the kill only: every failure since the test began came
    # between the kill and the job running again (a second one there: no slot yet for the
    # restart), none from a record (a Python traceback: an operator that raised).
    restarts = job.settled_restarts() - restarts_before
    # Nothing was committed twice (a replayed record's dead letter or answer would be in by
    # now: the checks above took more than a checkpoint interval, the settling ten seconds).
    books.read()
    books.close()
    assert set(books.found.values()) == {1}, "a record dead-lettered twice"
    twice = {books.requests[k].what: v for k, v in books.answers.items() if len(v) != 1}
    assert not twice, f"commands answered twice: {twice}"
    assert len(books.gate_alerts) == 2
    failures = failures_since(job, started_ms)
    for e in failures:
        print(
            f"[poison] failure at kill{e['timestamp'] - killed_ms:+d} ms: "
            f"{e['exceptionName']}: {e['stacktrace'].splitlines()[0][:200]}",
            file=sys.stderr,
        )
    assert job.rest("")["state"] == "RUNNING"
    assert failures
    assert not [e for e in failures if "Traceback (most recent call last)" in e["stacktrace"]]
    assert all(killed_ms <= e["timestamp"] <= recovered_ms for e in failures)
    print(
        f"[poison] {len(sent)} records ({len(generated)} generated): {dict(outcome)}; "
        f"counted by the join and the trainer since the failover: {metrics}; the first part "
        f"taken in {first_done - started:.1f}s; killed, running again "
        f"{(recovered_ms - killed_ms) / 1000:.1f}s later ({len(failures)} failure(s), "
        f"numRestarts +{restarts}); "
        f"{time.monotonic() - started:.1f}s in all",
        file=sys.stderr,
    )
