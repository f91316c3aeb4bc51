"""The Java SampleBundler and EventBundler (operators/java) on a MiniCluster: the samples
and events parsers give, for bundles whose JSON records Java decoded, exactly what they give
for the same records parsed one by one in Python (every row, bit for bit; every dead letter
and its reason), on a corpus of ordinary, unusual and malformed records."""

import json
import random
import re

import numpy as np
import pytest
from pyflink.common import Types

from flowlearn.conf import load_settings
from flowlearn.contracts.records import encode_sample_batch, now_ms
from flowlearn.devstack.jars import operators_jar
from flowlearn.jobs.local import local_environment, raw_stream
from flowlearn.jobs.online_learning import EVENT_BUNDLER, LABEL_BUNDLER, SAMPLE_BUNDLER, bundled
from flowlearn.operators import sample_columns
from flowlearn.operators.parse import (
    DLQ_TAG,
    INFERRED_TAG,
    ParseEvents,
    ParseLabels,
    ParseSamples,
)
from flowlearn.operators.types import Feedback
from flowlearn.serving.prediction_log import Batch, Shadow
from tests.unit.test_parse_operators import BroadcastContext, RuntimeContext

pytestmark = pytest.mark.minicluster

ENV = {
    "FLOWLEARN__JOB__OUT_OF_ORDERNESS_MS": "5000",
    "FLOWLEARN__JOB__UNKNOWN_MODEL_POLICY": "create",
    "FLOWLEARN__JOB__INPUT_BUNDLE_RECORDS": "64",
}
#: Models of every kind of label rule and feature kind, as runtime entries.
SPECS = {
    "reg": {"type": "linear", "n_features": 3},
    "multi": {"type": "softmax", "n_features": 2, "n_classes": 3},
    "hashed": {"type": "logistic", "n_features": 64, "features": "hashed"},
    "bandit": {"type": "contextual_bandit", "n_features": 2, "n_actions": 3},
}
WIDTH = {"demo": 10, "reg": 3, "multi": 2, "hashed": 4, "bandit": 2, "new-1": 10}

NUMBERS = [
    "0",
    "1",
    "-0",
    "-0.0",
    "0.5",
    "1e5",
    "1E-3",
    "-2.5e+3",
    "0.1",
    "123.456",
    "7",
    "0.12345678901234567890",
    "3.141592653589793",
    "1e-400",
    "9007199254740993",
    "123456789012345678",
    "1234567890123456789",
    "123456789012345678901",
    "4.9e-324",
    "1.7976931348623157e308",
    "2.2250738585072011e-308",
    "100000000000000000000000",
    "0.3000000000000000444089209850062616169452667236328125",
]
BAD_NUMBERS = ["1e400", "-1e999", "01", "1.", ".5", "+1", "NaN", "Infinity", "-", "1e", "0x10"]


def _number(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return repr(rng.uniform(-1e3, 1e3)) if rng.random() < 0.7 else str(rng.randint(-99, 99))
    return rng.choice(NUMBERS)


def _value_text(rng: random.Random) -> str:
    """Some JSON (or almost JSON) for a field no parser reads."""
    return rng.choice(
        [
            '{"a": [1, 2, {"b": null}], "c": "x"}',
            '"caf\\u00e9 \\n"',
            '"café"',
            "[]",
            "{}",
            "true",
            "NaN",
            '"tab\there"',
            "[1, 2,]",
            "1e400",
            _number(rng),
        ]
    )


def _record(
    rng: random.Random, ts: int, event_id_rate: float, label_rate: float, features_rate: float
) -> bytes:
    """A sample (or event, or label) record: most of them as ordinary clients write them (in every
    spelling of their numbers), the rest with something unusual or wrong."""
    if rng.random() < 0.6:
        model = rng.choice(["demo", "reg", "multi"])

        def roll() -> float:
            return 0.5  # nothing unusual
    else:
        model = rng.choice([*WIDTH, "demo", "bad id!", "", "x" * 300])
        roll = rng.random
    width = WIDTH.get(model, 10)
    fields: list[tuple[str, str]] = []
    if roll() > 0.02:
        fields.append(("model_id", json.dumps(model) if roll() > 0.03 else "7"))
    if roll() > 0.02:
        fields.append(
            (
                "ts",
                rng.choice(
                    [str(ts), str(ts), f"{ts}.5", "-1", str(1 << 62), f"{ts + 60_000}", '"now"']
                )
                if roll() < 0.2
                else str(ts - rng.randint(0, 10_000)),
            )
        )
    if rng.random() < features_rate and roll() > 0.02:
        if model == "hashed" or roll() < 0.05:
            features = json.dumps({f"f{i}": rng.random() for i in range(width)})
        else:
            n = width + (rng.choice([-1, 1]) if roll() < 0.05 else 0)
            values = [
                rng.choice([*BAD_NUMBERS, "null", "true", '"1"', "[1]"])
                if roll() < 0.01
                else _number(rng)
                for _ in range(n)
            ]
            space = rng.choice(["", " ", "\n\t "])
            features = "[" + space + ("," + space).join(values) + space + "]"
        fields.append(("features", features))
    if rng.random() < label_rate and roll() > 0.02:
        fields.append(
            (
                "label",
                rng.choice(["0", "1", "1.0", "2", "-1", "0.5", "true", '"1"', "null", "1e400"])
                if roll() < 0.3
                else rng.choice(["0", "1"]),
            )
        )
    if model == "bandit" or roll() < 0.05:
        fields += [("action", str(rng.randint(0, 3))), ("propensity", rng.choice(["0.5", "0"]))]
    if rng.random() < event_id_rate:
        fields.append(
            (
                "event_id",
                json.dumps(f"e-{rng.randint(0, 10**9)}")
                if roll() > 0.3
                else rng.choice(
                    [
                        "null",
                        '""',
                        json.dumps("e" * 250),
                        '"\\u0041b"',
                        '"é"',
                        "12",
                    ]
                ),
            )
        )
    if roll() < 0.2:
        fields.append((rng.choice(["note", "meta", "model_id", "label"]), _value_text(rng)))
    rng.shuffle(fields)
    space = rng.choice(["", " ", "\r\n"])
    text = "{" + ",".join(f"{space}{json.dumps(k)}{space}:{space}{v}" for k, v in fields) + "}"
    if roll() < 0.02:
        text = rng.choice([text + "x", "[" + text + "]", text[:-1], "\ufeff" + text, "null"])
    data = text.encode()
    if roll() < 0.01:
        data = data.replace(b"demo", b"de\xffmo")
    return data


def corpus(n: int, seed: int, topic: str = "samples") -> list[bytes]:
    rng = random.Random(seed)
    ts = now_ms()
    if topic == "events":  # an event needs its id and has no use for a label
        return [_record(rng, ts, 0.9, label_rate=0.3, features_rate=1.0) for _ in range(n)]
    if topic == "labels":  # a label needs its id and has no use for features
        return [_record(rng, ts, 0.9, label_rate=1.0, features_rate=0.2) for _ in range(n)]
    records = [_record(rng, ts, 0.4, label_rate=1.0, features_rate=1.0) for _ in range(n)]
    # A bulk record among them: the samples of its model before it stay before it.
    bulk = encode_sample_batch(
        "demo", np.array([ts, ts]), np.array([[0.5] * 10, [1.5] * 10]), np.array([0.0, 1.0])
    )
    records.insert(n // 2, bulk)
    return records


def opened_parser(parser_class=ParseSamples):
    op = parser_class(load_settings(env=ENV), "fl.x")
    op.open(RuntimeContext())
    ctx = BroadcastContext(
        {model: op.specs.runtime_entry(spec, "test") for model, spec in SPECS.items()}
    )
    return op, ctx


def comparable(outputs) -> list:
    """Outputs with the times a parser stamps or reads (a dead letter's, a create's, how
    far ahead of the clock a record is) taken out, and
    floats by their bits (repr tells -0.0 from 0.0)."""
    out = []
    for o in outputs:
        if o[0] is DLQ_TAG or o[0] is INFERRED_TAG:
            record = json.loads(o[1])
            record.pop("ts", None)
            if "detail" in record:
                record["detail"] = re.sub(r"is \d+ ms ahead", "is ... ms", record["detail"])
            out.append((o[0].tag_id, json.dumps(record, sort_keys=True)))
        elif isinstance(o, tuple):  # an event's (keyed row, event time)
            (key, row), event_time = o
            out.append((key, repr(tuple(row)), event_time))
        else:
            key, row = o
            out.append((key, repr(tuple(row))))
    return out


PARSERS = {
    "samples": (ParseSamples, SAMPLE_BUNDLER),
    "events": (ParseEvents, EVENT_BUNDLER),
    "labels": (ParseLabels, LABEL_BUNDLER),
}


@pytest.mark.parametrize(
    "seed, topic", [(11, "samples"), (29, "samples"), (13, "events"), (17, "labels")]
)
def test_decoded_bundles_parse_exactly_as_their_records_do_one_by_one(seed, topic):
    parser_class, bundler = PARSERS[topic]
    records = corpus(3000, seed, topic)
    conf = load_settings(env=ENV)
    flink = local_environment(operators_jar(conf))
    out = bundled(raw_stream(flink, records), conf, "bundles", bundler).map(
        lambda b: bytes(b).hex(), output_type=Types.STRING()
    )
    with out.execute_and_collect() as results:
        bundles = [bytes.fromhex(b) for b in results]

    decoding, decoding_ctx = opened_parser(parser_class)
    one_by_one, one_by_one_ctx = opened_parser(parser_class)
    taken = 0
    seen = []
    for bundle in bundles:
        decoded = sample_columns.read(bundle)
        seen += [decoded.record(i) for i in range(decoded.n_records)]
        assert comparable(decoding.process_element(bundle, decoding_ctx)) == comparable(
            one_by_one.process_element(decoded.raw, one_by_one_ctx)
        )
        taken += int(decoding.taken(decoded).sum())
    assert seen == records
    assert decoding.parsed.count == one_by_one.parsed.count
    assert decoding.dead.count == one_by_one.dead.count > 200
    # Most ordinary samples were checked as arrays (not those with an integer literal of
    # over 18 digits, which the corpus has often: Python reads those).
    assert taken > 0.4 * len(records)


def test_the_predictors_prediction_log_is_decoded_in_java():
    """The events the predictor logs (``Batch.records``: score, version, variant, shadow
    beside the features) are read by the EventBundler, not left to Python one by one."""
    ts = now_ms()
    batch = Batch(
        "demo",
        ts,
        ["a", "b"],
        [[0.5] * 10, [1.5] * 10],
        [0.25, 0.75],
        3,
        ts,
        "live",
        Shadow("candidate", 4, [0.3, 0.6]),
    )
    conf = load_settings(env=ENV)
    flink = local_environment(operators_jar(conf))
    out = bundled(raw_stream(flink, list(batch.records())), conf, "bundles", EVENT_BUNDLER).map(
        lambda b: bytes(b).hex(), output_type=Types.STRING()
    )
    with out.execute_and_collect() as results:
        (bundle,) = [bytes.fromhex(b) for b in results]
    decoded = sample_columns.read(bundle)
    parser, ctx = opened_parser(ParseEvents)
    (((_, row), event_time),) = list(parser.process_element(bundle, ctx))
    assert event_time == ts and Feedback._make(row).event_ids == ["a", "b"]
    assert parser.taken(decoded).tolist() == [True, True]
