"""flowlearn.evaluation's data model, statistics (windows, calibration, recovery), baselines
and builders (replay and live) and flowlearn.evaluation.recorded's Kafka reading, against hand
computations."""

import json
import math

import numpy as np
import pytest

from flowlearn.conf import load_settings
from flowlearn.contracts.records import dlq_record, encode_sample_batch
from flowlearn.core import linear, optim
from flowlearn.core.metrics import Accuracy, ExpectedCalibrationError, LogLoss
from flowlearn.evaluation.baselines import batch_baseline
from flowlearn.evaluation.batch import train_baseline
from flowlearn.evaluation.builders import build_live, build_replay, ledger_checkpoints
from flowlearn.evaluation.data import Alert, EvalRow, EvaluationData, Samples, Side
from flowlearn.evaluation.recorded import collect, dlq_model, parse_time
from flowlearn.evaluation.statistics import (
    Stats,
    compute_windows,
    drift_episodes,
    ece,
    headline,
)

SPEC = {"type": "logistic", "n_features": 3, "learning_rate": 0.3}


def test_windows_equal_a_hand_computation():
    p_online = [0.9, 0.2, 0.6, 0.4, 0.7, 0.7, 0.3, 0.95, 0.5, 0.1]
    p_base = [math.nan, math.nan, math.nan, 0.6, 0.6, 0.2, 0.2, 0.8, 0.9, 0.4]
    y = [1, 0, 0, 0, 1, 0, 0, 1, 1, 0]
    data = EvaluationData(
        "m",
        samples=Samples.build(
            np.arange(1, 11),
            Side.from_probabilities(p_online, y),
            Side.from_probabilities(p_base, y),
        ),
    )
    w = compute_windows(data, 4)
    assert [(x.start, x.end, x.t_start, x.t_end) for x in w] == [
        (0, 4, 1, 4),
        (4, 8, 5, 8),
        (8, 10, 9, 10),
    ]
    # Window 0, online: predictions 1, 0, 1, 0 against 1, 0, 0, 0 -> 3 of 4 right.
    assert w[0].online.n == 4 and w[0].online.accuracy == 0.75
    loss0 = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.6)) / 4
    assert w[0].online.log_loss == pytest.approx(loss0, rel=1e-12)
    # Confidences 0.9, 0.8, 0.6, 0.6 in bins 9, 8, 6, 6; right 1, 1, 0, 1:
    # |1 - .9| + |1 - .8| + |1 - 1.2| over 4 samples.
    assert w[0].online.ece == pytest.approx((0.1 + 0.2 + 0.2) / 4, rel=1e-12)
    # The baseline scored one sample of window 0 (p 0.6 for label 0: wrong).
    assert w[0].baseline == Stats(1, 0.0, pytest.approx(-math.log(0.4)), pytest.approx(0.6))
    # Window 1 (samples 4..7): online predictions 1, 1, 0, 1 vs 1, 0, 0, 1 -> 0.75;
    # baseline 1, 0, 0, 1 vs 1, 0, 0, 1 -> 1.0.
    assert (w[1].online.accuracy, w[1].baseline.accuracy) == (0.75, 1.0)
    base_loss = -(math.log(0.6) + math.log(0.8) + math.log(0.8) + math.log(0.8)) / 4
    assert w[1].baseline.log_loss == pytest.approx(base_loss, rel=1e-12)
    # The last window is shorter: p 0.5 predicts 0 (> 0.5 is class 1), label 1 -> wrong.
    assert w[2].n == 2 and w[2].online.accuracy == 0.5


def test_numbers_agree_with_flowlearn_metrics():
    rng = np.random.default_rng(3)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(float)
    side = Side.from_probabilities(p, y)
    s = Stats.of(side)
    assert s.accuracy == Accuracy().update_many(y, (p > 0.5).astype(float)).get()
    assert s.log_loss == pytest.approx(LogLoss().update_many(y, p).get(), rel=1e-12)
    assert s.ece == pytest.approx(ExpectedCalibrationError().update_many(y, p).get(), rel=1e-12)
    assert ece([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1]) == pytest.approx(0.4)


def test_prequential_rows_give_a_logistic_models_probabilities_back():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3))
    y = (X @ [1.0, -2.0, 0.5] + rng.normal(size=300) > 0).astype(float)
    model = linear.LogisticRegression(3, optimizer=optim.SGD(lr=0.5))
    model.learn_many(X[:100], y[:100])
    errors = (model.predict_many(X) != y).astype(float)
    direct = Side.from_probabilities(model.predict_proba_many(X), y)
    # By the type's task: a self-tuning logistic model's rows read as a logistic one's.
    for type_name in ("logistic", "auto_logistic"):
        side = Side.from_prequential(errors, model.loss_many(X, y), type_name)
        assert np.array_equal(side.correct, direct.correct)
        np.testing.assert_allclose(side.loss, direct.loss, rtol=1e-9)
        np.testing.assert_allclose(side.confidence, direct.confidence, rtol=1e-9)
    # Multiclass (softmax, trees): the confidence of a wrong prediction is not in the row.
    for type_name in ("softmax", "random_forest"):
        soft = Side.from_prequential([0, 1], [0.1, 2.0], type_name)
        assert soft.correct.tolist() == [1.0, 0.0] and np.isnan(soft.confidence).all()
    # A regressor has no 0/1 errors, whatever the row says.
    assert np.isnan(Side.from_prequential([0, 1], [0.1, 2.0], "auto_linear").correct).all()


def correct_pattern(accuracy, n):
    """n 0/1 values with exactly the given accuracy per 10 (deterministic)."""
    wrong_per_10 = round((1 - accuracy) * 10)
    return np.array([0.0 if i % 10 < wrong_per_10 else 1.0 for i in range(n)])


def side_of(correct):
    correct = np.asarray(correct, dtype=float)
    return Side(correct, np.where(correct == 1, 0.1, 2.0), np.full(len(correct), 0.8))


def drift(t, change_t=None, direction="up", signal="error", detector="adwin"):
    return Alert(
        "drift",
        float(t),
        None,
        {"direction": direction, "signal": signal, "detector": detector},
        change_t=change_t,
    )


def test_recovery_counts_samples_from_the_alert_to_the_first_window_back_at_the_level():
    online = np.concatenate(
        [correct_pattern(0.9, 2000), correct_pattern(0.5, 600), correct_pattern(0.9, 1400)]
    )
    baseline = np.concatenate([correct_pattern(0.9, 2000), correct_pattern(0.5, 2000)])
    alerts = (
        drift(2100, change_t=2001),  # position 2100; change from position 2000
        drift(2150, signal="loss", detector="page_hinkley"),  # same episode
        drift(2300, direction="down"),  # a fall: not a performance drift
        Alert("drift", 2400.0, None, {"direction": "", "signal": "feature[0]"}),
        Alert("degraded", 2500.0, 40, {"to_version": 30}),
    )
    data = EvaluationData(
        "m",
        samples=Samples.build(np.arange(1, 4001), side_of(online), side_of(baseline)),
        alerts=alerts,
    )
    episodes = drift_episodes(data, gap=500)
    assert [(e.alert, e.change, len(e.alerts)) for e in episodes] == [(2100, 2000, 2)]
    h = headline(data, window=100, tolerance=0.05, reference=400)
    rep = h.episodes[0]
    # Windows from 2100: [2100, 2200) ... [2500, 2600) at 0.5, [2600, 2700) at 0.9.
    assert rep.online.level == 0.9 and rep.online.lowest == 0.5
    assert (rep.online.samples, rep.online.t) == (600, 600.0)
    assert rep.baseline.level == 0.9 and not rep.baseline.recovered
    assert rep.baseline.samples is None and rep.baseline.lowest == 0.5
    # After the change (position 2000 on): online 600 x 0.5 + 1400 x 0.9 of 2000.
    assert h.post_drift[0].accuracy == pytest.approx((300 + 1260) / 2000)
    assert h.post_drift[1].accuracy == 0.5
    assert "recovered 600 samples after the alert" in "\n".join(h.lines())
    # A second alert further than the gap opens another episode; the first one's
    # recovery search then stops there.
    later = EvaluationData("m", samples=data.samples, alerts=(*alerts, drift(3500, change_t=3401)))
    assert [e.alert for e in drift_episodes(later, gap=500)] == [2100, 3500]


def test_replay_rows_are_placed_on_the_input_stream_rejected_batches_included():
    rows = [
        EvalRow(1, "train", 4, [0, 1, 0, 0], [0.1, 2.0, 0.2, 0.3]),
        # A 3-sample batch was rejected here (samples 4..6 of the input), then:
        EvalRow(2, "train", 6, [1, 1], [1.5, 1.6]),
        EvalRow(3, "train", 8, [0, 0], [0.2, 0.1]),
    ]
    alerts = [
        {
            "model_id": "m",
            "kind": "gate_rejected",
            "ts": 5,
            "detail": {"reason": "non_finite", "samples": 3, "version": 1},
        },
        {
            "model_id": "m",
            "kind": "drift",
            "ts": 6,
            "detail": {
                "detector": "adwin",
                "signal": "error",
                "direction": "up",
                "change_point": 4,
                "version": 2,
                "samples_applied": 6,
            },
        },
    ]
    data = build_replay(
        "m",
        "logistic",
        11,
        rows,
        alerts,
        [{"reason": "not_json"}, {"reason": "late"}],
        input_records=13,
    )
    s = data.samples
    assert s.online.correct.tolist()[:4] == [1, 0, 1, 1]
    assert np.isnan(s.online.loss[4:7]).all()  # the rejected batch
    assert s.online.loss[7:].tolist() == [1.5, 1.6, 0.2, 0.1]
    assert s.version.tolist() == [0, 0, 0, 0, -1, -1, -1, 1, 1, 2, 2]
    drift_alert = next(a for a in data.alerts if a.kind == "drift")
    # Version 2's batch ends at position 9; the detector's 5th scored value (index 4) is
    # input sample 7, at t = 8.
    assert (drift_alert.t, drift_alert.change_t) == (9.0, 8.0)
    assert data.dlq == {"late": 1, "not_json": 1} and data.late == 1
    assert [v.t for v in data.versions] == [4.0, 9.0, 11.0]
    with pytest.raises(ValueError, match="does not match"):
        build_replay("m", "logistic", 5, rows, alerts)


def test_checkpoint_metrics_equal_the_windows_over_their_interval():
    rng = np.random.default_rng(0)
    rows = [
        EvalRow(
            v,
            "train",
            10 * v,
            (rng.random(10) < 0.3).astype(float).tolist(),
            rng.random(10).tolist(),
        )
        for v in range(1, 31)
    ]
    data = build_replay("m", "logistic", 300, rows, [])
    ends = {v.version: v.t for v in data.versions}
    cps = ledger_checkpoints(rows, 10, ends)
    # Checkpoints 10 and 20 have closed (30 is open); checkpoint v covers batches v+1..v+10,
    # i.e. samples 10 v .. 10 v + 100.
    assert [c.version for c in cps] == [10, 20]
    for c in cps:
        part = data.samples.online.take(slice(10 * c.version, 10 * c.version + 100))
        stats = Stats.of(part)
        assert (c.n, c.t_start, c.t) == (100, 10.0 * c.version, 10.0 * c.version + 100)
        assert c.accuracy == pytest.approx(stats.accuracy, abs=1e-12)
        assert c.loss == pytest.approx(stats.log_loss, rel=1e-12)


def test_batch_baseline_scores_only_samples_it_was_not_fit_on_and_refits():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(250, 3))
    y = (X @ [2.0, -1.0, 0.5] > 0).astype(float)
    b = batch_baseline(SPEC, X, y, train=100, retrain_every=50)
    # train_baseline fits the first 80% of what it is given.
    assert [(start, fit) for start, fit, _ in b.fits] == [(80, 80), (150, 120), (200, 160)]
    assert np.isnan(b.side.loss[:80]).all() and not np.isnan(b.side.loss[80:]).any()
    second = train_baseline(SPEC, X[:150], y[:150]).model
    assert np.array_equal(
        b.side.correct[150:200], (second.predict_many(X[150:200]) == y[150:200]).astype(float)
    )
    np.testing.assert_allclose(b.side.loss[150:200], second.loss_many(X[150:200], y[150:200]))
    assert "refit on all samples so far every 50" in b.name
    with pytest.raises(ValueError):
        batch_baseline(SPEC, X, y, train=0)


def served(event_id, ts, score, variant="online", version=7, shadow=None):
    return {
        "event_id": event_id,
        "model_id": "m",
        "ts": ts,
        "features": [0.0],
        "score": score,
        "model_version": version,
        "epoch": 1,
        "variant": variant,
        "shadow": shadow,
    }


def test_the_served_view_joins_the_prediction_log_with_labels():
    events = [
        served("a", 1000, 0.8, shadow={"variant": "baseline", "model_version": 2, "score": 0.4}),
        served(
            "b",
            2000,
            0.3,
            version=8,
            shadow={"variant": "baseline", "model_version": 2, "score": 0.6},
        ),
        # A/B: the baseline answered, the online model was scored in its shadow.
        served(
            "c",
            3000,
            0.9,
            variant="baseline",
            version=2,
            shadow={"variant": "online", "model_version": 8, "score": 0.2},
        ),
        served("d", 4000, 0.7),  # no label ever
        {"event_id": "e", "model_id": "m", "ts": 500, "features": [0.0]},  # not served
    ]
    labels = [
        {"event_id": "a", "model_id": "m", "ts": 1500, "label": 1},
        {"event_id": "b", "model_id": "m", "ts": 4000, "label": 1},
        {"event_id": "c", "model_id": "m", "ts": 3100, "label": 0},
        {"event_id": "a", "model_id": "m", "ts": 9000, "label": 0},  # duplicate: ignored
        {"event_id": "e", "model_id": "m", "ts": 800, "label": 0},
    ]
    dlq = [{"reason": "late"}, {"reason": "not_json"}]
    data = build_live(
        "m",
        "logistic",
        events=events,
        labels=labels,
        dlq=dlq,
        alerts=[
            {
                "model_id": "m",
                "kind": "drift",
                "ts": 2500,
                "detail": {"direction": "up", "signal": "error"},
            }
        ],
        input_records=10,
    )
    s = data.samples
    assert s.t.tolist() == [1000, 2000, 3000] and s.served == ("online", "online", "baseline")
    assert s.version.tolist() == [7, 8, 8]
    # Numbers straight from the recorded probabilities and labels.
    y = np.array([1, 1, 0])
    p_online, p_base = np.array([0.8, 0.3, 0.2]), np.array([0.4, 0.6, 0.9])
    for side, p in ((s.online, p_online), (s.baseline, p_base)):
        expect_acc = np.mean((p > 0.5) == y)
        expect_loss = np.mean(-np.log(np.where(y == 1, p, 1 - p)))
        (w,) = compute_windows(data, 10)
        got = w.online if side is s.online else w.baseline
        assert got.accuracy == pytest.approx(expect_acc)
        assert got.log_loss == pytest.approx(expect_loss, rel=1e-12)
    assert sorted(data.label_delays_ms.tolist()) == [100, 300, 500, 2000]
    assert data.labels == 5 and data.late == 1 and data.dlq == {"late": 1, "not_json": 1}
    assert [a.t for a in data.alerts] == [2500.0]
    assert data.baseline_name.startswith("served baseline")
    assert [(v.version, v.t) for v in data.versions] == [(7, 1000.0), (8, 2000.0)]


def test_dead_letters_are_attributed_by_their_original_bytes():
    json_raw = json.dumps({"model_id": "m", "ts": 1}).encode()
    bulk = encode_sample_batch("n", np.array([1]), np.ones((1, 2)), np.array([1.0]))
    assert dlq_model(json.loads(dlq_record("fl.samples", "bad_field", json_raw, 1))) == "m"
    assert dlq_model(json.loads(dlq_record("trainer", "gate_rejected", bulk, 1))) == "n"
    assert dlq_model(json.loads(dlq_record("fl.samples", "not_json", b"\xff", 1))) is None
    assert dlq_model({"raw": "!!not base64"}) is None
    assert parse_time("1700000000000") == 1700000000000
    with pytest.raises(ValueError):
        parse_time("yesterday")


class FakeMessage:
    def __init__(self, offset, key, value, timestamp):
        self.offset, self.key, self.value, self.timestamp = offset, key, value, timestamp


class FakeConsumer:
    """The part of kafka-python's KafkaConsumer that flowlearn.evaluation.recorded uses."""

    def __init__(self, topics):
        self.topics = topics  # topic -> list of (key, value dict, timestamp), one partition
        self.positions = {}
        self.assigned = []
        self.closed = False

    def partitions_for_topic(self, topic):
        return {0} if topic in self.topics else None

    def assign(self, tps):
        self.assigned = list(tps)

    def end_offsets(self, tps):
        return {tp: len(self.topics[tp.topic]) for tp in tps}

    def seek_to_beginning(self, *tps):
        for tp in tps:
            self.positions[tp] = 0

    def offsets_for_times(self, times):
        class Hit:
            def __init__(self, offset):
                self.offset = offset

        out = {}
        for tp, since in times.items():
            hits = [i for i, r in enumerate(self.topics[tp.topic]) if r[2] >= since]
            out[tp] = Hit(hits[0]) if hits else None
        return out

    def seek(self, tp, offset):
        self.positions[tp] = offset

    def position(self, tp):
        return self.positions[tp]

    def poll(self, timeout_ms=0):
        out = {}
        for tp in self.assigned:
            records = self.topics[tp.topic]
            start = self.positions[tp]
            chunk = records[start : start + 2]  # two at a time: several polls
            if chunk:
                out[tp] = [
                    FakeMessage(start + i, k, json.dumps(v).encode(), ts)
                    for i, (k, v, ts) in enumerate(chunk)
                ]
                self.positions[tp] = start + len(chunk)
        return out

    def close(self):
        self.closed = True


def test_collect_reads_the_models_records_from_kafka():
    settings = load_settings(env={})
    t = settings.kafka.topics
    label = {"event_id": "x1", "model_id": "m", "ts": 2_000, "label": 1}
    topics = {
        t.alerts: [
            (
                None,
                {
                    "model_id": "m",
                    "kind": "drift",
                    "ts": 5_000,
                    "detail": {"direction": "up", "signal": "error"},
                },
                5_000,
            ),
            (None, {"model_id": "other", "kind": "drift", "ts": 5_000, "detail": {}}, 5_000),
        ],
        t.dlq: [
            (
                None,
                json.loads(dlq_record("fl.labels", "late", json.dumps(label).encode(), 6_000)),
                6_000,
            ),
            (None, json.loads(dlq_record("fl.samples", "not_json", b"??", 6_000)), 6_000),
        ],
        t.events: [
            (b"m", served("x0", 500, 0.9), 500),  # before --since
            (b"m", served("x1", 1_000, 0.9), 1_000),
            (b"m", served("x2", 1_100, 0.2), 1_100),
            (b"other", {**served("x3", 1_200, 0.9), "model_id": "other"}, 1_200),
        ],
        t.labels: [
            (b"m", {"event_id": "x0", "model_id": "m", "ts": 600, "label": 1}, 600),
            (b"m", label, 2_000),
            (b"m", {"event_id": "x2", "model_id": "m", "ts": 2_100, "label": 1}, 2_100),
        ],
        t.samples: [(b"m", {}, 900), (b"m", {}, 1_000), (b"other", {}, 1_000)],
    }
    consumer = FakeConsumer(topics)
    data = collect(
        settings, "m", since_ms=800, consumer_factory=lambda: consumer, with_registry=False
    )
    assert consumer.closed
    s = data.samples
    assert s.t.tolist() == [1_000, 1_100]
    assert s.online.correct.tolist() == [1.0, 0.0]
    assert [a.detail.get("direction") for a in data.alerts] == ["up"]
    assert data.dlq == {"late": 1} and data.late == 1 and data.labels == 2
    assert data.input_records == 2 + 2 + 2  # samples, events, labels of m since 800
    assert sorted(data.label_delays_ms.tolist()) == [1_000, 1_000]
    assert any("could not be attributed" in n for n in data.notes)
    # Without predictor traffic, the report says where its numbers come from.
    quiet = collect(
        settings,
        "m",
        consumer_factory=lambda: FakeConsumer({k: v for k, v in topics.items() if k != t.events}),
        with_registry=False,
    )
    assert not len(quiet.samples)
    assert any("prediction log is empty" in n for n in quiet.notes)
    assert any("does not exist" in n for n in quiet.notes)


def test_replay_input_from_parquet_and_json_lines(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flowlearn.evaluation.replay import (
        read_records,
        valid_samples,
        with_inferred_specs,
        write_demo,
    )

    settings = load_settings(env={"FLOWLEARN__MODEL_DEFAULTS__N_FEATURES": "2"})
    X = np.array([[0.5, 1.0], [2.0, -1.0], [0.0, 0.0]])
    path = tmp_path / "h.parquet"
    pq.write_table(
        pa.table(
            {
                "model_id": ["m", "o", "m"],
                "ts": [10, 11, 12],
                "features": list(X),
                "label": [1.0, 0.0, 0.0],
            }
        ),
        path,
    )
    records = read_records(path, "m")
    assert [json.loads(r) for r in records] == [
        {"model_id": "m", "ts": 10, "features": [0.5, 1.0], "label": 1.0},
        {"model_id": "m", "ts": 12, "features": [0.0, 0.0], "label": 0.0},
    ]
    valid = valid_samples(records, with_inferred_specs(records, settings))
    Xm, ym = valid["m"].arrays(2)
    assert np.array_equal(Xm, X[[0, 2]]) and ym.tolist() == [1.0, 0.0]

    lines = tmp_path / "s.jsonl"
    lines.write_bytes(
        b'{"model_id": "m", "ts": 1, "features": [1, 2], "label": 1}\n\n'
        b'{"model_id": "o", "ts": 2, "features": [1, 2], "label": 0}\n'
        b"\xff not json\n"
        b'{"model_id": "m", "ts": 3, "features": [1], "label": 0}\n'
    )
    records = read_records(lines, "m")
    assert len(records) == 3 and records[1] == b"\xff not json"  # unattributable: kept
    inferred = with_inferred_specs(records, settings)
    assert valid_samples(records, inferred)["m"].arrays(2)[1].tolist() == [1.0]
    with pytest.raises(ValueError, match="no such file"):
        read_records(tmp_path / "missing.jsonl")
    demo = write_demo(tmp_path / "demo.jsonl", 25, drift_at=(10,), model_id="d")
    assert len(read_records(demo)) == 25


def test_a_bandits_valid_samples_are_its_feedback_rows():
    """A contextual bandit's samples parse into feedback rows (the context, the action, the
    propensity), wider than its n_features: the replay keeps them whole (it reshaped them by
    n_features and failed)."""
    from flowlearn.evaluation.replay import valid_samples

    settings = load_settings(
        env={
            "FLOWLEARN__MODELS__B__TYPE": "contextual_bandit",
            "FLOWLEARN__MODELS__B__N_FEATURES": "2",
            "FLOWLEARN__MODELS__B__N_ACTIONS": "3",
        }
    )
    records = [
        json.dumps(
            {
                "model_id": "b",
                "ts": i,
                "features": [i, -i],
                "action": i % 3,
                "propensity": 0.5,
                "label": 1.0,
            }
        ).encode()
        for i in range(4)
    ]
    X, y = valid_samples(records, settings)["b"].arrays(2)
    assert X.tolist() == [[i, -i, i % 3, 0.5] for i in range(4)] and y.tolist() == [1.0] * 4
