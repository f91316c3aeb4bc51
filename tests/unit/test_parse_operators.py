"""The parse operators outside Flink: their process_element with a stand-in runtime context."""

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyflink.datastream import OutputTag

from flowlearn.conf import load_settings
from flowlearn.contracts.records import now_ms
from flowlearn.operators.parse import (
    DLQ_TAG,
    INFERRED_TAG,
    PARSER_ALERT_TAG,
    ParseControl,
    ParseEvents,
    ParseLabels,
    ParseSamples,
    unbundle,
)
from flowlearn.operators.types import ControlCommand, Feedback


class Counter:
    def __init__(self):
        self.count = 0

    def inc(self, n=1):
        self.count += n


class RuntimeContext:
    def get_metrics_group(self):
        return self

    def counter(self, name):
        return Counter()


def opened(operator_class, **env):
    """The operator under the defaults, models that no spec names taking them at once."""
    defaults = {
        "FLOWLEARN__JOB__OUT_OF_ORDERNESS_MS": "5000",
        "FLOWLEARN__JOB__UNKNOWN_MODEL_POLICY": "create",
    }
    settings = load_settings(env={**defaults, **env})
    op = operator_class(settings, "fl.x")
    op.open(RuntimeContext())
    return op


def framed(*records: bytes) -> bytes:
    """A bundle as the Java RecordBundler makes it: each record after its 4-byte length."""
    return b"".join(len(r).to_bytes(4, "big") + r for r in records)


class BroadcastContext:
    """What a parser's process_element reads the runtime specs from: the broadcast state."""

    def __init__(self, entries=None):
        self.entries = {} if entries is None else entries

    def get_broadcast_state(self, descriptor):
        assert descriptor.name == "runtime-specs-v1"
        return self

    def items(self):
        return list(self.entries.items())

    def put(self, key, value):
        self.entries[key] = value

    def get(self, key):
        return self.entries[key]

    def contains(self, key):
        return key in self.entries


def run(op, record, ctx=None):
    return list(op.process_element(framed(json.dumps(record).encode()), ctx or BroadcastContext()))


EVENT = {"model_id": "demo", "event_id": "e1", "features": [0.0] * 10}
LABEL = {"model_id": "demo", "event_id": "e1", "label": 1}
SAMPLE = {"model_id": "demo", "event_id": "s1", "features": [0.0] * 10, "label": 1}


@pytest.mark.parametrize("operator_class, record", [(ParseEvents, EVENT), (ParseLabels, LABEL)])
def test_feedback_dated_within_the_out_of_orderness_bound_is_accepted(operator_class, record):
    op = opened(operator_class)
    ts = now_ms() + 4000
    out = run(op, {**record, "ts": ts})
    # The row and its event time (TIMED_FEEDBACK_TYPE), not a side output's (tag, record).
    assert len(out) == 1 and out[0][0] is not DLQ_TAG
    (model_id, row), event_time = out[0]
    assert event_time == ts and Feedback._make(row).ts == [ts] and model_id == row[1] == "demo"
    assert op.parsed.count == 1 and op.dead.count == 0


def test_a_bundles_events_leave_as_one_row_a_model_dated_by_the_latest():
    """One row a model and bundle (the label join is called once for it), the records in
    their order; a bad record among them goes to the DLQ alone."""
    op = opened(ParseEvents)
    now = now_ms()
    records = [
        {**EVENT, "event_id": "a", "ts": now - 30},
        {**EVENT, "model_id": "other", "event_id": "o", "ts": now - 20},
        {**EVENT, "event_id": "bad", "ts": now, "features": [1.0]},
        {**EVENT, "event_id": "b", "ts": now - 10, "features": [float(i) for i in range(10)]},
        {**EVENT, "event_id": "c", "ts": now - 40},
    ]
    bundle = framed(*(json.dumps(r).encode() for r in records))
    out = list(op.process_element(bundle, BroadcastContext()))
    tagged = [o for o in out if isinstance(o[0], OutputTag)]
    assert [json.loads(o[1])["reason"] for o in tagged if o[0] is DLQ_TAG] == ["bad_features"]
    rows = {pair[0]: (Feedback._make(pair[1]), ts) for pair, ts in out if (pair, ts) not in tagged}
    demo, latest = rows["demo"]
    assert latest == now - 10 and rows["other"][1] == now - 20
    assert demo.event_ids == ["a", "b", "c"] and demo.ts == [now - 30, now - 10, now - 40]
    assert demo.event_row(1) == ([float(i) for i in range(10)], [], [])
    assert op.parsed.count == 4 and op.dead.count == 1


@pytest.mark.parametrize(
    "operator_class, record",
    [(ParseEvents, EVENT), (ParseLabels, LABEL), (ParseSamples, SAMPLE)],
)
def test_a_record_dated_too_far_ahead_is_dead_lettered(operator_class, record):
    # Feedback would drag the shared watermark into the future and make every on-time label
    # late; a sample would expire every event id its model's dedupe has seen.
    op = opened(operator_class)
    out = run(op, {**record, "ts": now_ms() + 60_000})
    assert len(out) == 1 and out[0][0] is DLQ_TAG
    letter = json.loads(out[0][1])
    assert letter["reason"] == "bad_field" and "ahead of the clock" in letter["detail"]
    assert letter["source_topic"] == "fl.x"
    assert op.parsed.count == 0 and op.dead.count == 1


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_a_bundle_gives_back_its_records(records):
    assert list(unbundle(framed(*records))) == records


def test_a_bundle_cut_short_is_an_error_not_a_short_read():
    with pytest.raises(ValueError, match="cut inside a record"):
        list(unbundle(framed(b"abc", b"defg")[:-1]))


def sample(model_id, ts, event_id=None, x=0.0):
    record = {"model_id": model_id, "ts": ts, "features": [x] * 10, "label": 1}
    if event_id is not None:
        record["event_id"] = event_id
    return json.dumps(record).encode()


def test_json_samples_of_a_bundle_become_one_row_per_model_in_order():
    from flowlearn.contracts.records import encode_sample_batch

    op = opened(ParseSamples)
    bulk = encode_sample_batch("a", np.array([5, 6]), np.full((2, 10), 9.0), np.ones(2))
    out = list(
        op.process_element(
            framed(
                sample("a", 1, "a1", x=1.0),
                sample("b", 2, x=2.0),
                b"not json",
                sample("a", 3, x=3.0),
                bulk,
                sample("a", 4, "a4", x=4.0),
            ),
            BroadcastContext(),
        )
    )
    letters = [json.loads(o[1]) for o in out if o[0] is DLQ_TAG]
    # (The "create" policy's creates of "a" and "b" aside: they go to fl.control.)
    rows = [(o[0], tuple(o[1])) for o in out if o[0] not in (DLQ_TAG, INFERRED_TAG)]
    assert [r["reason"] for r in letters] == ["not_json"]
    # "a": its two JSON samples before the bulk record, the bulk record, the one after it;
    # ids for a row where any sample had one ("" for the others), none where none had.
    assert [(key, row[1], row[3], list(row[4]), row[2][::10]) for key, row in rows] == [
        ("a", 3, [1.0, 1.0], ["a1", ""], [1.0, 3.0]),
        ("a", 6, [1.0, 1.0], [], [9.0, 9.0]),
        ("b", 2, [1.0], [], [2.0]),
        ("a", 4, [1.0], ["a4"], [4.0]),
    ]
    assert op.parsed.count == 5 and op.dead.count == 1


def test_a_bulk_record_with_a_sample_dated_too_far_ahead_is_dead_lettered_whole():
    from flowlearn.contracts.records import encode_sample_batch

    op = opened(ParseSamples)
    ts = np.array([now_ms(), now_ms() + 10 * 365 * 86_400_000])
    bulk = encode_sample_batch("a", ts, np.zeros((2, 10)), np.ones(2))
    out = [
        o for o in op.process_element(framed(bulk), BroadcastContext()) if o[0] is not INFERRED_TAG
    ]
    assert len(out) == 1 and out[0][0] is DLQ_TAG
    letter = json.loads(out[0][1])
    assert letter["reason"] == "bad_field" and "ahead of the clock" in letter["detail"]


class KeptCounters(RuntimeContext):
    """A metrics group that keeps its counters, to read them after a run."""

    def __init__(self):
        self.counters: dict[str, Counter] = {}

    def counter(self, name):
        return self.counters.setdefault(name, Counter())


def test_named_features_unknown_names_counted_bad_values_dead_lettered_naming_them(tmp_path):
    config = tmp_path / "shop.toml"
    config.write_text(
        '[models.shop]\nfeature_names = ["age", "spend"]\n'
        '[models.strict]\nfeature_names = ["age", "spend"]\nmissing = "dlq"\n'
    )
    op = ParseSamples(load_settings(config, env={}), "fl.samples")
    metrics = KeptCounters()
    op.open(metrics)
    good = [
        {"model_id": "shop", "ts": 1, "features": {"age": 31, "spend": 9.5, "zip": 75}, "label": 1},
        {"model_id": "shop", "ts": 2, "features": {"age": None}, "label": 0},  # spend absent
        {"model_id": "shop", "ts": 3, "features": {"age": float("nan"), "spend": 1.0}, "label": 0},
    ]
    bad = {
        "features.spend: expected a number, got str": {"age": 1, "spend": "lots"},
        "features.age: not a finite number (inf)": {"age": float("inf"), "spend": 1.0},
    }
    strict = {"model_id": "strict", "ts": 4, "features": {"age": 1.0}, "label": 1}
    records = [
        *good,
        *({"model_id": "shop", "ts": 5, "features": f, "label": 1} for f in bad.values()),
        strict,
    ]
    out = list(
        op.process_element(framed(*(json.dumps(r).encode() for r in records)), BroadcastContext())
    )
    letters = [json.loads(o[1]) for o in out if o[0] is DLQ_TAG]
    assert [(d["reason"], d["detail"]) for d in letters] == [
        *(("bad_features", detail) for detail in bad),
        ("bad_features", "features.spend: missing, and the model's missing policy is dlq"),
    ]
    ((model_id, row),) = [o for o in out if o[0] is not DLQ_TAG]
    features = np.array(row[2]).reshape(3, 2)
    assert model_id == "shop" and row[3] == [1.0, 0.0, 0.0]
    assert features[0].tolist() == [31.0, 9.5]
    assert np.isnan(features[1, 1]) and features[1, 0] != features[1, 0]  # null and absent
    assert np.isnan(features[2, 0]) and features[2, 1] == 1.0  # NaN is missing, not an error
    assert metrics.counters["samples_unknown_features"].count == 1  # "zip"
    assert metrics.counters["samples_dlq"].count == 3


def control(op, record):
    """ParseControl's rows and dead letters for one fl.control record."""
    out = list(op.process_element(framed(json.dumps(record).encode()), None))
    rows = [ControlCommand._make(o) for o in out if o[0] is not DLQ_TAG]
    return rows, [json.loads(o[1]) for o in out if o[0] is DLQ_TAG]


def test_a_create_leaves_the_control_parser_validated_and_complete_or_dead_lettered():
    op = opened(ParseControl)
    create = {"model_id": "fraud-eu", "command": "create", "ts": 1}
    ((row,), letters) = control(op, {**create, "args": {"spec": {"n_features": 3}}})
    spec = json.loads(row.args)["spec"]
    assert not letters and spec["n_features"] == 3 and spec["type"] == "logistic"
    assert spec["batch_size"] == 64  # the job's: resolved once, for every reader
    bad = {"spec": {"n_features": 3, "learning_rat": 0.1}}
    rows, (letter,) = control(op, {**create, "args": bad})
    assert not rows and letter["reason"] == "bad_spec"
    assert "args.spec: unknown key(s) ['learning_rat']" in letter["detail"]
    rows, (letter,) = control(op, {**create, "args": {"spec": {"n_features": -3}}})
    assert letter["detail"] == "args.spec.n_features must be > 0, got -3"


def test_an_update_with_reset_may_name_any_spec_field_and_nothing_else():
    op = opened(ParseControl)
    update = {"model_id": "m", "command": "update", "ts": 1}
    ((row,), _) = control(op, {**update, "args": {"changes": {"n_features": 4}, "reset": True}})
    assert json.loads(row.args)["reset"] is True
    _, (letter,) = control(op, {**update, "args": {"changes": {"n_features": 4}}})
    assert (
        letter["reason"] == "bad_spec"
        and "cannot change while the model runs" in (letter["detail"])
    )
    _, (letter,) = control(op, {**update, "args": {"changes": {"size": 4}, "reset": True}})
    assert letter["detail"].startswith("args.changes.size: not a spec field")
    _, (letter,) = control(op, {**update, "args": {"changes": {"n_features": 4}, "reset": 1}})
    assert letter["detail"] == "args.reset: must be true or false"


def test_created_and_deleted_models_are_checked_against_their_runtime_spec():
    """Under the "dlq" policy: a model is unknown until created, checked against the created
    spec, unknown again once deleted; the entries outlive the operator (broadcast state)."""
    env = {"FLOWLEARN__JOB__UNKNOWN_MODEL_POLICY": "dlq"}
    parser, commands = opened(ParseSamples, **env), opened(ParseControl, **env)
    state = BroadcastContext()
    record = {"model_id": "fresh", "ts": 1, "features": [1.0, 2.0, 3.0], "label": 1}

    def reasons(op):
        return [json.loads(o[1])["reason"] for o in run(op, record, state) if o[0] is DLQ_TAG]

    def broadcast(command, args):
        ((row,), _) = control(
            commands, {"model_id": "fresh", "command": command, "ts": 1, "args": args}
        )
        assert list(parser.process_broadcast_element(row, state)) == []

    assert reasons(parser) == ["unknown_model"]
    broadcast("create", {"spec": {"n_features": 3}})
    assert reasons(parser) == []
    broadcast("create", {"spec": {"n_features": 4}})  # refused, as by the trainer
    assert reasons(parser) == []
    restarted = opened(ParseSamples, **env)  # a restart reads the broadcast state back
    assert reasons(restarted) == []
    broadcast("update", {"changes": {"learning_rate": 0.5}})  # a live field: the shape stays
    assert reasons(parser) == []
    # Refused, as by the trainer:
    broadcast("update", {"changes": {"n_features": -2}, "reset": True})
    assert reasons(parser) == []
    broadcast("update", {"changes": {"n_features": 2}, "reset": True})
    assert reasons(parser) == ["bad_features"]
    record["features"] = [1.0, 2.0]
    assert reasons(parser) == [] and reasons(opened(ParseSamples, **env)) == []
    broadcast("delete", {})
    assert reasons(parser) == ["unknown_model"]
    assert reasons(opened(ParseSamples, **env)) == ["unknown_model"]


def test_the_infer_policy_fixes_a_new_models_shape_from_its_first_record():
    env = {"FLOWLEARN__JOB__UNKNOWN_MODEL_POLICY": "infer"}
    parser, labels = opened(ParseSamples, **env), opened(ParseLabels, **env)
    dense = {"model_id": "fresh", "ts": 1, "features": [1.0, 2.0, 3.0], "label": 1}
    out = run(parser, dense)
    ((_, create),) = [o for o in out if o[0] is INFERRED_TAG]
    create = json.loads(create)
    assert (create["model_id"], create["command"], create["source"]) == ("fresh", "create", "infer")
    assert create["args"]["spec"]["n_features"] == 3
    assert [o[0] for o in out if o[0] is not INFERRED_TAG] == ["fresh"]  # parsed, not lost
    # Later records of the model are checked against the inferred shape; no second create.
    out = run(parser, {**dense, "features": [1.0, 2.0]})
    assert [json.loads(o[1])["reason"] for o in out] == ["bad_features"]
    named = {"model_id": "named", "ts": 1, "features": {"age": 41, "spend": 9.5}, "label": 0}
    ((_, create),) = [o for o in run(parser, named) if o[0] is INFERRED_TAG]
    assert json.loads(create)["args"]["spec"]["feature_names"] == ["age", "spend"]
    # A label shows no shape: checked against the defaults' type, which an inferred spec keeps.
    label = {"model_id": "unseen", "event_id": "e1", "ts": now_ms(), "label": 1}
    assert [o for o in run(labels, label) if o[0] is DLQ_TAG] == []


@pytest.mark.parametrize("policy", ["create", "infer"])
def test_past_job_max_models_a_new_model_id_is_dead_lettered_counted_and_alerted_once(policy):
    """The job holds [models.demo] and the models created at runtime (broadcast state, every
    parser sees every command): with job.max_models = 3 a parser asks for two new models,
    then refuses the others' records as model_limit, with one alert for all of them. A
    delete frees a slot; a restarted parser counts the same models (broadcast state)."""
    env = {"FLOWLEARN__JOB__UNKNOWN_MODEL_POLICY": policy, "FLOWLEARN__JOB__MAX_MODELS": "3"}
    metrics = KeptCounters()
    settings = load_settings(env={"FLOWLEARN__JOB__OUT_OF_ORDERNESS_MS": "5000", **env})
    parser, labels = ParseSamples(settings, "fl.samples"), ParseLabels(settings, "fl.labels")
    parser.open(metrics)
    labels.open(KeptCounters())
    commands = opened(ParseControl, **env)
    state, label_state = BroadcastContext(), BroadcastContext()  # each subtask has its own

    def outcome(op, model_id):
        record = {"model_id": model_id, "ts": now_ms(), "features": [1.0] * 10, "label": 1}
        if op is labels:
            record = {"model_id": model_id, "event_id": "e", "ts": now_ms(), "label": 1}
        out = run(op, record, label_state if op is labels else state)
        creates = [json.loads(o[1]) for o in out if o[0] is INFERRED_TAG]
        for create in creates:  # back through fl.control, as the job sends it
            ((row,), _) = control(commands, create)
            list(parser.process_broadcast_element(row, state))
            list(labels.process_broadcast_element(row, label_state))
        dead = [json.loads(o[1]) for o in out if o[0] is DLQ_TAG]
        alerts = [json.loads(o[1]) for o in out if o[0] is PARSER_ALERT_TAG]
        return ["create"] * len(creates) + [d["reason"] for d in dead], alerts

    assert outcome(parser, "demo") == ([], [])  # configured: held from the start
    assert outcome(parser, "m1") == (["create"], [])
    assert outcome(parser, "m2") == (["create"], [])
    assert outcome(parser, "m1") == ([], [])  # held: no second create
    reasons, (alert,) = outcome(parser, "m3")
    assert reasons == ["model_limit"]
    assert alert["kind"] == "model_limit" and alert["model_id"] == "m3"
    assert alert["detail"]["setting"] == "job.max_models" and alert["detail"]["limit"] == 3
    assert outcome(parser, "m4") == (["model_limit"], [])  # one alert a minute, not per record
    reasons, (label_alert,) = outcome(labels, "m5")  # a label waits for no model
    assert reasons == ["model_limit"] and label_alert["detail"]["source_topic"] == "fl.labels"
    assert outcome(labels, "m1") == ([], [])
    assert metrics.counters["samples_model_limit"].count == 2
    letter = json.loads(
        run(parser, {"model_id": "m6", "ts": now_ms(), "features": [1.0] * 10, "label": 1}, state)[
            0
        ][1]
    )
    assert (
        letter["detail"] == "model 'm6' is not created: the job holds 3 models, job.max_models = 3"
    )

    restarted = ParseSamples(settings, "fl.samples")
    restarted.open(KeptCounters())
    assert [
        json.loads(o[1])["reason"]
        for o in run(
            restarted, {"model_id": "m3", "ts": now_ms(), "features": [1.0] * 10, "label": 1}, state
        )
        if o[0] is DLQ_TAG
    ] == ["model_limit"]
    ((delete,), _) = control(commands, {"model_id": "m1", "command": "delete", "ts": 1, "args": {}})
    list(parser.process_broadcast_element(delete, state))
    assert outcome(parser, "m3") == (["create"], [])  # m1's slot
    assert outcome(parser, "m1") == (["model_limit"], [])  # deleted: a new id again


@pytest.mark.parametrize("policy", ["create", "infer"])
def test_a_bad_record_of_a_new_model_makes_no_model_and_keeps_its_own_reason(policy):
    """A new model's record is checked under the spec its create would give; when it does
    not pass, it is dead-lettered with its own reason (a sample without a label:
    missing_field; without features: missing_field under the defaults, unknown_model where
    the shape was to come from them) and no create goes out: bad records of random ids make
    no models. The next good record of the id makes it."""
    parser = opened(ParseSamples, FLOWLEARN__JOB__UNKNOWN_MODEL_POLICY=policy)
    state = BroadcastContext()
    no_label = {"model_id": "fresh", "ts": now_ms(), "features": [1.0] * 10}
    no_features = {"model_id": "fresh", "ts": now_ms(), "label": 1}
    no_shape = "missing_field" if policy == "create" else "unknown_model"
    for record, reason in ((no_label, "missing_field"), (no_features, no_shape)):
        out = run(parser, record, state)
        assert [o[0] for o in out] == [DLQ_TAG]
        assert json.loads(out[0][1])["reason"] == reason
    out = run(parser, {**no_label, "label": 1}, state)
    assert [o[0] for o in out].count(INFERRED_TAG) == 1


def test_explicit_creates_count_against_job_max_models_and_are_applied_past_it():
    """A user's create is applied whatever the count (the trainer, keyed by model, cannot
    see it; both must agree): it takes a slot that records of new ids then cannot."""
    env = {"FLOWLEARN__JOB__UNKNOWN_MODEL_POLICY": "infer", "FLOWLEARN__JOB__MAX_MODELS": "2"}
    parser, commands, state = (
        opened(ParseSamples, **env),
        opened(ParseControl, **env),
        BroadcastContext(),
    )
    for model_id in ("a", "b"):  # past the limit with [models.demo]
        create = {
            "model_id": model_id,
            "command": "create",
            "ts": 1,
            "args": {"spec": {"n_features": 2}},
        }
        ((row,), _) = control(commands, create)
        list(parser.process_broadcast_element(row, state))
    accepted = run(
        parser, {"model_id": "b", "ts": now_ms(), "features": [1.0, 2.0], "label": 1}, state
    )
    assert [o[0] for o in accepted] == ["b"]
    (letter,) = [
        json.loads(o[1])
        for o in run(
            parser, {"model_id": "c", "ts": now_ms(), "features": [1.0, 2.0], "label": 1}, state
        )
        if o[0] is DLQ_TAG
    ]
    assert letter["detail"].endswith("the job holds 3 models, job.max_models = 2")


@pytest.mark.parametrize(
    "spec",
    [
        {"n_features": 2**40},  # the trainer: MemoryError
        {"n_features": 1e19},  # the trainer: "maximum allowed dimension exceeded"
        {"type": "softmax", "n_features": 10, "n_classes": 10**9},
        {"type": "contextual_bandit", "n_features": 10, "n_actions": 10**9},  # the parser
        {"type": "contextual_bandit", "n_features": 10, "n_actions": 3, "n_action_features": -1},
        {"type": "auto_logistic", "n_features": 10, "learning_rate": 1e308},
        {"type": "auto_logistic", "n_features": 10, "learning_rates": ["x"]},
        {"n_features": 10, "l2": math.inf},
        {"n_features": 10, "clip_grad_norm": math.inf},  # the state codec
        {"type": "hoeffding_tree", "n_features": 10, "seed": -(2**63) - 1},
    ],
)
def test_a_create_whose_model_cannot_be_built_is_dead_lettered_not_taken(spec):
    """Each of these passed the parser (or failed it with another exception) and failed the
    trainer, so the job, on every replay of the record (#23, crash loops)."""
    op = opened(ParseControl)
    create = {"model_id": "m", "command": "create", "ts": 1, "args": {"spec": spec}}
    rows, (letter,) = control(op, create)
    assert not rows and letter["reason"] == "bad_spec", letter
    assert letter["detail"].startswith("args.spec"), letter


def test_the_largest_models_the_docs_show_are_still_created():
    op = opened(ParseControl)
    for spec in (
        {"features": "hashed", "n_features": 2**20},  # README
        {"type": "contextual_bandit", "n_features": 1000, "n_actions": 7},
    ):
        rows, letters = control(
            op, {"model_id": "m", "command": "create", "ts": 1, "args": {"spec": spec}}
        )
        assert len(rows) == 1 and not letters


def test_a_bundles_labels_leave_as_one_row_each_with_its_own_bytes():
    op = opened(ParseLabels)
    now = now_ms()
    records = [
        json.dumps({**LABEL, "event_id": event_id, "ts": now - i}).encode()
        for i, event_id in enumerate(["a", "b", "c"])
    ]
    ((pair, latest),) = list(op.process_element(framed(*records), BroadcastContext()))
    labels = Feedback._make(pair[1])
    assert labels.kind == "l" and labels.event_ids == ["a", "b", "c"] and latest == now
    assert [labels.raw_of(i) for i in range(3)] == records and labels.labels == [1.0] * 3
