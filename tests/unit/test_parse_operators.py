"""The parse operators outside Flink: their process_element with a stand-in runtime context."""

import json

import pytest

from conf import load_settings
from flowlearn.records import now_ms
from operators.parse import DLQ_TAG, ParseEvents, ParseLabels


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
    settings = load_settings(env={"FLOWLEARN__JOB__OUT_OF_ORDERNESS_MS": "5000", **env})
    op = operator_class(settings, "fl.x")
    op.open(RuntimeContext())
    return op


def run(op, record):
    return list(op.process_element(json.dumps(record).encode(), None))


EVENT = {"model_id": "demo", "event_id": "e1", "features": [0.0] * 10}
LABEL = {"model_id": "demo", "event_id": "e1", "label": 1}


@pytest.mark.parametrize("operator_class, record", [(ParseEvents, EVENT), (ParseLabels, LABEL)])
def test_feedback_dated_within_the_out_of_orderness_bound_is_accepted(operator_class, record):
    op = opened(operator_class)
    ts = now_ms() + 4000
    out = run(op, {**record, "ts": ts})
    # The row and its event time (TIMED_FEEDBACK_TYPE), not a side output's (tag, record).
    assert len(out) == 1 and out[0][0] is not DLQ_TAG
    (model_id, row), event_time = out[0]
    assert event_time == row[3] == ts and model_id == row[1] == "demo"
    assert op.parsed.count == 1 and op.dead.count == 0


@pytest.mark.parametrize("operator_class, record", [(ParseEvents, EVENT), (ParseLabels, LABEL)])
def test_feedback_dated_too_far_ahead_is_dead_lettered(operator_class, record):
    # It would drag the shared watermark into the future and make every on-time label late.
    op = opened(operator_class)
    out = run(op, {**record, "ts": now_ms() + 60_000})
    assert len(out) == 1 and out[0][0] is DLQ_TAG
    letter = json.loads(out[0][1])
    assert letter["reason"] == "bad_field" and "ahead of the clock" in letter["detail"]
    assert letter["source_topic"] == "fl.x"
    assert op.parsed.count == 0 and op.dead.count == 1
