"""build_pipeline on a Flink MiniCluster: bounded in-memory input, execute_and_collect."""

import base64
import json
import time

import numpy as np
import pytest
from pyflink.common import Types

from flowlearn.conf import load_settings
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.core import codec
from flowlearn.core.model_types import from_spec
from flowlearn.core.training import ModelTrainer, batch_plan
from flowlearn.devstack.jars import operators_jar
from flowlearn.devstack.producer import DriftingStream
from flowlearn.jobs.local import local_environment, raw_stream
from flowlearn.jobs.online_learning import RawSources, build_pipeline
from flowlearn.operators.types import Version

pytestmark = pytest.mark.minicluster

BAD_RECORDS = {
    b"not json at all": "not_json",
    b"\xff\xfe\x00binary": "not_json",
    b'{"model_id": "demo", "ts": 1, "label": 1}': "missing_field",
    b'{"model_id": "demo", "ts": 1, "features": [1, 2], "label": 1}': "bad_features",
    (
        # (NaN or null would be a missing value, which the model's pipeline fills.)
        b'{"model_id": "demo", "ts": 1, "features": [Infinity,0,0,0,0,0,0,0,0,0], "label": 1}'
    ): "bad_features",
}


def run_pipeline(samples, events=(), labels=(), control=(), **env_overrides):
    # Nothing registered in MLflow unless a test asks (the stack home's store is not ours).
    # Models that no spec names take the defaults: with "infer", their samples would wait
    # for a create that only a Kafka sink sends back.
    defaults = {
        "FLOWLEARN__JOB__BATCH_SIZE": "64",
        "FLOWLEARN__MLFLOW__ENABLED": "false",
        "FLOWLEARN__JOB__UNKNOWN_MODEL_POLICY": "create",
    }
    settings = load_settings(env={**defaults, **env_overrides})
    env = local_environment(operators_jar(settings))
    sources = RawSources(
        raw_stream(env, samples),
        raw_stream(env, events),
        raw_stream(env, labels),
        raw_stream(env, control),
    )
    streams = build_pipeline(env, settings, sources, publish=False, kafka_sinks=False)
    as_json = streams.versions.map(
        lambda row: (
            lambda v: json.dumps(
                {
                    "kind": "version",
                    "model_id": v.model_id,
                    "version": v.version,
                    "base": v.base_version,
                    "applied": v.samples_applied,
                    "weights": bytes(v.weights).hex(),
                    "delta": bytes(v.delta).hex(),
                    "action": v.action,
                }
            )
        )(Version._make(row)),
        output_type=Types.STRING(),
    )
    alerts = streams.alerts.map(
        lambda a: json.dumps({"alert": json.loads(a)}), output_type=Types.STRING()
    )
    adaptations = streams.adaptations.map(
        lambda a: json.dumps({"control": json.loads(a)}), output_type=Types.STRING()
    )
    out = as_json.union(streams.dlq, alerts, adaptations)
    with out.execute_and_collect() as results:
        return [json.loads(r) for r in results]


def job_commands(out):
    """The commands the job sent itself, but the "create" policy's creates (one per model
    its records made, for fl.control to count it)."""
    return [r["control"] for r in out if "control" in r and r["control"]["source"] != "create"]


def test_pipeline_trains_publishes_versions_and_dead_letters_bad_records():
    good = [
        json.dumps(r).encode()
        for r in DriftingStream(n_features=10, seed=3, model_id="demo").take(200, 1000)
    ]
    other = [
        json.dumps(r).encode()
        for r in DriftingStream(n_features=10, seed=4, model_id="other").take(70, 1000)
    ]
    records = good[:100] + list(BAD_RECORDS) + other + good[100:]
    out = run_pipeline(records)

    dlq = [r for r in out if "reason" in r]
    assert sorted((base64.b64decode(r["raw"]), r["reason"]) for r in dlq) == sorted(
        BAD_RECORDS.items()
    )

    for model_id, n in (("demo", 200), ("other", 70)):
        versions = [r for r in out if r.get("kind") == "version" and r["model_id"] == model_id]
        assert [v["version"] for v in versions] == list(range(1, len(versions) + 1))
        assert [v["base"] for v in versions] == list(range(len(versions)))
        assert versions[-1]["applied"] == n  # every valid sample trained exactly once
        # Replaying the deltas from zeros reproduces every published snapshot bit for bit.
        weights = None
        for v in versions:
            delta = codec.decode_delta(bytes.fromhex(v["delta"]))
            if weights is None:
                weights = np.zeros(11 + 3 * 10)  # weights, then the pipeline's statistics
            codec.apply_delta(weights, delta)
            if v["weights"]:
                snap = codec.decode_array(bytes.fromhex(v["weights"]))
                assert snap.tobytes() == weights.tobytes()


@pytest.mark.parametrize(
    "tree",
    [
        {"TYPE": "random_forest", "N_TREES": "3", "MAX_NODES": "31"},
        {"TYPE": "hoeffding_tree_regressor", "GRACE_PERIOD": "50", "MAX_NODES": "31"},
    ],
    ids=["random_forest", "hoeffding_tree_regressor"],
)
def test_a_tree_trains_in_the_job_as_in_process_and_its_versions_serve_its_scores(tree):
    """A random_forest, and a regression tree (learning the labels as numbers), through
    the job's graph: every version's delta rebuilds its snapshot, the last version is what
    training the same samples in process gives, bit for bit, and the model rebuilt from it
    scores as the trainer does."""
    records = DriftingStream(n_features=10, seed=6, model_id="forest").take(700, 1000)
    forest = {
        "FLOWLEARN__MODELS__FOREST__N_FEATURES": "10",
        **{f"FLOWLEARN__MODELS__FOREST__{k}": v for k, v in tree.items()},
    }
    out = run_pipeline([json.dumps(r).encode() for r in records], **forest)
    versions = [r for r in out if r.get("kind") == "version" and r["model_id"] == "forest"]
    assert versions[-1]["applied"] == len(records)
    weights = None
    for v in versions:
        if weights is None:
            weights = codec.decode_array(bytes.fromhex(v["weights"]))
        else:
            codec.apply_delta(weights, codec.decode_delta(bytes.fromhex(v["delta"])))
            if v["weights"]:
                assert codec.decode_array(bytes.fromhex(v["weights"])).tobytes() == (
                    weights.tobytes()
                )
    settings = load_settings(env=forest)
    spec = ModelSpecs(settings).spec_of("forest").as_dict()
    reference = ModelTrainer.create("forest", spec)
    X = np.array([r["features"] for r in records])
    y = np.array([r["label"] for r in records], dtype=float)
    reference.train_samples(X, y)
    assert weights is not None
    assert weights.tobytes() == reference.model.weights_vector().tobytes()
    assert len(np.unique(weights[:31])) > 1  # it split
    served = from_spec(json.loads(reference.published_spec), weights)
    if tree["TYPE"] == "random_forest":
        assert served.predict_proba_many(X).tobytes() == (
            reference.model.predict_proba_many(X).tobytes()
        )
    assert served.predict_many(X).tobytes() == reference.model.predict_many(X).tobytes()


def test_models_dropped_from_memory_train_exactly_as_models_kept_in_it():
    """job.hot_models = 1: every record of three interleaved models reads its model back from
    state (the trainer's cache holds one); versions and weights are those of a job that
    keeps them all, dedupe included (a sample sent twice is trained once)."""
    streams = {
        m: DriftingStream(n_features=10, seed=i, model_id=m).take(150, 1000)
        for i, m in enumerate(("a", "b", "c"))
    }
    records = []
    for i in range(150):
        for m in streams:
            records.append(json.dumps({**streams[m][i], "event_id": f"{m}-{i}"}).encode())
        if i % 40 == 5:  # duplicates of samples still buffered (or trained already)
            records += records[-3:]
    # Batches cut by count and at the end of the input only, never by the clock; one record
    # a bundle, so that the trainer sees the models one sample at a time, interleaved.
    same = {
        "FLOWLEARN__JOB__BATCH_TIMEOUT_MS": "3600000",
        "FLOWLEARN__JOB__MODEL_METRICS_LIMIT": "0",
        "FLOWLEARN__JOB__INPUT_BUNDLE_RECORDS": "1",
    }
    runs = [run_pipeline(records, FLOWLEARN__JOB__HOT_MODELS=hot, **same) for hot in ("1", "1000")]
    published = [
        sorted(
            (r["model_id"], r["version"], r["applied"], r["weights"], r["delta"])
            for r in out
            if r.get("kind") == "version"
        )
        for out in runs
    ]
    assert published[0] == published[1]
    assert {(m, applied) for m, _, applied, _, _ in published[0] if applied == 150} == {
        ("a", 150),
        ("b", 150),
        ("c", 150),
    }


def event(model_id, event_id, ts, features=None):
    return json.dumps(
        {
            "model_id": model_id,
            "event_id": event_id,
            "ts": ts,
            "features": features or [float(ts % 7)] * 10,
        }
    ).encode()


def label(model_id, event_id, ts, value=1):
    return json.dumps(
        {"model_id": model_id, "event_id": event_id, "ts": ts, "label": value}
    ).encode()


def test_label_join_pairs_either_order_once_and_dead_letters_the_rest():
    window = 60_000
    events = [event("j", f"e{i}", 1_000 + i) for i in range(40)]
    # Labels for e0..e29 (the two sources interleave freely, so either side may come first).
    labels = [label("j", f"e{i}", 5_000 + i, i % 2) for i in range(30)]
    events += [event("j", "e3", 1_003)]  # duplicate event
    labels += [label("j", "e4", 5_004, 0), label("j", "e5", 5_005, 1)]  # duplicate labels
    orphan = label("j", "ghost", 9_000)  # no event ever
    too_late = label("j", "e30", 1_030 + window + 1)  # outside the window
    out = run_pipeline(
        [],
        events=events,
        labels=[*labels, orphan, too_late],
        **{"FLOWLEARN__JOB__LABEL_WINDOW_MS": str(window), "FLOWLEARN__JOB__BATCH_SIZE": "8"},
    )
    versions = [r for r in out if r.get("kind") == "version" and r["model_id"] == "j"]
    # e0..e29 joined exactly once each; e31..e39 expire without a label (dropped).
    assert versions[-1]["applied"] == 30
    dlq = {base64.b64decode(r["raw"]): r["reason"] for r in out if "reason" in r}
    assert dlq == {orphan: "no_event", too_late: "outside_window"}


def test_a_bandit_learns_its_rewards_joined_to_its_choices_and_serves_its_posterior():
    """Choices logged as events (context, action, propensity) joined to their rewards on
    fl.labels train a contextual bandit exactly once each; bad feedback is dead-lettered
    with its reason; the published version chooses as the trainer does, bit for bit."""
    from flowlearn.core import model_types
    from flowlearn.core.bandits import event_seed
    from flowlearn.core.training import ModelTrainer
    from flowlearn.evaluation.replay import final_weights, published_spec

    rng = np.random.default_rng(11)
    n = 120
    # Two more choices than rewards: the bad ones below.
    contexts = rng.normal(size=(n + 2, 3))
    actions = rng.integers(0, 3, n + 2)
    rewards = (actions[:n] == (contexts[:n, 0] > 0)).astype(float)

    def choice(i, **over):
        record = {
            "model_id": "bandit",
            "event_id": f"c{i}",
            "ts": 1_000 + i,
            "features": contexts[i].tolist(),
            "action": int(actions[i]),
            "propensity": 1 / 3,
        }
        return json.dumps({**record, **over}).encode()

    events = [choice(i) for i in range(n)]
    low = choice(n, propensity=0.0001)
    unknown_action = choice(n + 1, action=7)
    labels = [label("bandit", f"c{i}", 2_000 + i, float(rewards[i])) for i in range(n)]
    out_of_range = label("bandit", "c0", 3_000, 5)
    env = {
        "FLOWLEARN__JOB__BATCH_SIZE": "16",
        "FLOWLEARN__MODELS__BANDIT__TYPE": "contextual_bandit",
        "FLOWLEARN__MODELS__BANDIT__N_FEATURES": "3",
        "FLOWLEARN__MODELS__BANDIT__N_ACTIONS": "3",
    }
    out = run_pipeline(
        [], events=[*events, low, unknown_action], labels=[*labels, out_of_range], **env
    )
    dlq = {base64.b64decode(r["raw"]): r["reason"] for r in out if "reason" in r}
    assert dlq == {
        low: "low_propensity",
        unknown_action: "bad_action",
        out_of_range: "reward_out_of_range",
    }
    versions = [r for r in out if r.get("kind") == "version" and r["model_id"] == "bandit"]
    assert versions[-1]["applied"] == n
    # Trained once each, in the join's order (event time): the trainer alone on the same
    # feedback rows gives the same bits.
    settings = load_settings(env={**env, "FLOWLEARN__MLFLOW__ENABLED": "false"})
    trainer = ModelTrainer.create("bandit", ModelSpecs(settings).spec_of("bandit").as_dict())
    rows = np.column_stack([contexts[:n], actions[:n], np.full(n, 1 / 3)])
    trainer.train_samples(rows, rewards)
    weights = final_weights(versions)
    assert weights is not None
    assert weights.tobytes() == trainer.model.weights_vector().tobytes()
    served = model_types.from_spec(published_spec(settings, "bandit"), weights)
    seeds = np.array([event_seed(f"next-{i}") for i in range(10)])
    ours = trainer.model.choose_many(contexts[:10], seeds=seeds)
    theirs = served.choose_many(contexts[:10], seeds=seeds)
    assert ours.actions.tolist() == theirs.actions.tolist()
    assert ours.probabilities.tobytes() == theirs.probabilities.tobytes()


def test_expired_events_can_train_with_a_default_label():
    events = [event("d", f"e{i}", 1_000 + i) for i in range(10)]
    labels = [label("d", f"e{i}", 2_000 + i) for i in range(4)]
    out = run_pipeline(
        [],
        events=events,
        labels=labels,
        **{"FLOWLEARN__JOB__EXPIRED_EVENTS": "default_label", "FLOWLEARN__JOB__BATCH_SIZE": "4"},
    )
    versions = [r for r in out if r.get("kind") == "version" and r["model_id"] == "d"]
    assert versions[-1]["applied"] == 10


def test_bulk_records_train_in_batches_beside_json_samples():
    from flowlearn.contracts.records import encode_sample_batch

    stream = DriftingStream(n_features=10, seed=5, model_id="bulk")
    recs = stream.take(600, 1000)
    X = np.array([r["features"] for r in recs])
    y = np.array([r["label"] for r in recs], dtype=float)
    ts = np.array([r["ts"] for r in recs])
    bulk = [
        encode_sample_batch("bulk", ts[i : i + 256], X[i : i + 256], y[i : i + 256])
        for i in range(0, 512, 256)
    ]
    singles = [json.dumps(r).encode() for r in recs[512:]]
    bad_bulk = encode_sample_batch("bulk", ts[:2], X[:2, :3], y[:2])  # 3 features, not 10
    out = run_pipeline([*bulk, bad_bulk, *singles])
    versions = [r for r in out if r.get("kind") == "version" and r["model_id"] == "bulk"]
    assert versions[-1]["applied"] == 600
    assert [v["version"] for v in versions] == list(range(1, len(versions) + 1))
    assert len(versions) == len(batch_plan(600, 64))  # cut alike from a bulk record
    dlq = [r for r in out if "reason" in r]
    assert [(base64.b64decode(r["raw"]), r["reason"]) for r in dlq] == [(bad_bulk, "bad_features")]


def test_a_sample_sent_twice_is_trained_once_within_the_dedupe_window():
    """Samples 10 ms apart, batches of 64, a window of 1 s of event time: resent samples
    are dropped while their batch is within 1 s of the newest trained one, and trained
    again once it has left the window. Ids leave it when a newer buffer is trained, and a
    bundle of records is checked at once: bundles of 16 here, so that the last resend comes
    after buffers trained since (in bundles of 256 it would share one with them)."""
    recs = DriftingStream(n_features=10, seed=6, model_id="dedupe").take(300, 1000, 10)
    first = [json.dumps(r).encode() for r in recs]
    # 0-49 again after 80 (at most 0.95 s older than their bundle's newest sample: all
    # duplicates), 0-9 again at the end (3 s later: new again); and 200 twice in a row
    # (within one buffer).
    records = [*first[:80], *first[:50], *first[80:201], first[200], *first[201:], *first[:10]]
    out = run_pipeline(
        records,
        FLOWLEARN__JOB__SAMPLE_DEDUPE_WINDOW_MS="1000",
        FLOWLEARN__JOB__INPUT_BUNDLE_RECORDS="16",
    )
    versions = [r for r in out if r.get("kind") == "version" and r["model_id"] == "dedupe"]
    assert versions[-1]["applied"] == 300 + 10
    assert not [r for r in out if "reason" in r]


def control(model_id, command, **args):
    return json.dumps(
        {"model_id": model_id, "command": command, "args": args, "ts": 1, "source": "test"}
    ).encode()


def test_control_commands_reach_the_trainer_and_raise_alerts():
    samples = [
        json.dumps(r).encode()
        for r in DriftingStream(n_features=10, seed=6, model_id="c").take(128, 1000)
    ]
    bad = [b'{"model_id": "c", "command": "explode", "ts": 1}', b"nope"]
    out = run_pipeline(
        samples, control=[control("c", "reset"), control("c", "rollback", version=999), *bad]
    )
    alerts = [r["alert"] for r in out if "alert" in r]
    by_command = {a["detail"]["command"]: a for a in alerts if a["kind"] in ("control", "rollback")}
    assert by_command["reset"]["kind"] == "control" and by_command["reset"]["detail"]["ok"]
    assert by_command["rollback"]["kind"] == "rollback"
    assert not by_command["rollback"]["detail"]["ok"]
    assert "999" in by_command["rollback"]["detail"]["reason"]
    dlq = {base64.b64decode(r["raw"]): r["reason"] for r in out if "reason" in r}
    assert dlq == {bad[0]: "unknown_command", bad[1]: "not_json"}
    versions = [r for r in out if r.get("kind") == "version" and r["model_id"] == "c"]
    # The batches of 128 samples and the reset, numbered without a gap (a reset before
    # the last sample makes the model young again: more, smaller batches after it).
    assert [v["version"] for v in versions] == list(range(1, len(versions) + 1))
    assert len(versions) >= len(batch_plan(128, 64)) + 1
    assert max(v["applied"] for v in versions) == 128


def test_abrupt_concept_drift_raises_a_drift_alert_and_a_reset():
    stream = DriftingStream(n_features=10, seed=9, model_id="drifty", drift_at=(3000,))
    records = [json.dumps(r).encode() for r in stream.take(6000, 1000)]
    out = run_pipeline(
        records,
        **{
            "FLOWLEARN__MODEL_DEFAULTS__DRIFT_ACTION": "reset",
            # Drift answered by a reset only (a replay does not apply its commands, so the
            # reset never comes back; the degraded live model would be rolled back too).
            "FLOWLEARN__MODEL_DEFAULTS__AUTO_ROLLBACK": "false",
        },
    )
    drift = [r["alert"] for r in out if "alert" in r and r["alert"]["kind"] == "drift"]
    performance = [a for a in drift if a["detail"]["direction"] == "up"]
    assert performance, f"no error/loss drift alarm among {drift}"
    # Detected after the change (the version that trained sample 3000), not before it.
    assert min(a["detail"]["version"] for a in performance) > len(batch_plan(3000, 64))
    resets = job_commands(out)
    assert resets and all(c["command"] == "reset" and c["model_id"] == "drifty" for c in resets)


def test_a_degraded_model_is_rolled_back_to_a_registered_checkpoint(tmp_path):
    from flowlearn.registry.mlflow_store import Registry

    stream = DriftingStream(n_features=10, seed=11, model_id="poisoned")
    clean = stream.take(3200, 1000)
    poisoned = [{**r, "label": 1 - r["label"]} for r in stream.take(1600, 1000)]
    records = [json.dumps(r).encode() for r in clean + poisoned]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = run_pipeline(
        records,
        **{
            "FLOWLEARN__MLFLOW__ENABLED": "true",
            "FLOWLEARN__MLFLOW__TRACKING_URI": uri,
            "FLOWLEARN__MLFLOW__REGISTER_MIN_INTERVAL_S": "0",
            "FLOWLEARN__JOB__CHECKPOINT_EVERY_VERSIONS": "5",
            "FLOWLEARN__JOB__ROLLBACK_WINDOW_SAMPLES": "512",
            "FLOWLEARN__JOB__ROLLBACK_MIN_SAMPLES": "512",
            # Windows of a few hundred samples: a 10% margin is within the noise of a
            # converged model's loss; flipped labels more than double it.
            "FLOWLEARN__JOB__ROLLBACK_MARGIN": "0.5",
        },
    )
    controls = job_commands(out)
    degraded = [r["alert"] for r in out if "alert" in r and r["alert"]["kind"] == "degraded"]
    assert [c["command"] for c in controls] == ["rollback"] and len(degraded) == 1
    target = controls[0]["args"]["version"]
    # The poison starts after 3200 samples: a clean checkpoint is chosen, soon after the
    # damage (within the 512-sample window and a few batches).
    clean_version = len(batch_plan(3200, 64))
    assert target % 5 == 0 and target <= clean_version
    assert clean_version < degraded[0]["detail"]["version"] <= clean_version + 512 // 64 + 4
    # The target was registered with the weights the trainer published for it, bit for bit.
    versions = {
        r["version"]: r for r in out if r.get("kind") == "version" and r["model_id"] == "poisoned"
    }
    registry = Registry(uri)
    # Registrations run on the checkpoint operator's own thread, which a bounded run can
    # end before (a young model makes many checkpoints): give it time.
    registered = None
    deadline = time.monotonic() + 120
    while registered is None and time.monotonic() < deadline:
        registered = registry.get("poisoned", target)
        time.sleep(0.5)
    assert registered is not None and registered.metrics["windowed_loss"] < 0.6
    assert registry.load_weights("poisoned", target) == bytes.fromhex(versions[target]["weights"])
    # The target is marked restored in MLflow: retention keeps it for good.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def keep_tag() -> str | None:
        mv = client.get_model_version("flowlearn-poisoned", str(registered.registry_version))
        return mv.tags.get("flowlearn.keep")

    while keep_tag() != "rollback target" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert keep_tag() == "rollback target"
    # Every closed checkpoint was registered (interval 0), in order.
    assert [v.version for v in registry.versions("poisoned")][:5] == [5, 10, 15, 20, 25]


def test_lifecycle_commands_of_one_model_take_effect_in_their_order():
    """create / delete / pin through the whole graph: one model's commands keep their order,
    each is answered, bad ones are dead-lettered with the reason."""
    commands = [
        control("fresh", "create", spec={"type": "linear", "n_features": 3}),
        control("fresh", "create", spec={"type": "logistic", "n_features": 4}),  # exists
        control("fresh", "delete"),
        control("fresh", "create", spec={"type": "softmax", "n_features": 2, "n_classes": 3}),
        control("fresh", "pin", version=1),
        control("fresh", "pin", version=2),  # not reached yet
        control("fresh", "unpin"),
        control("fresh", "update", changes={"n_features": 5}),  # dead-lettered: not live
        control("fresh", "update", changes={"type": "linear", "n_features": 5}, reset=True),
        control("ghost", "delete"),
        control("bad id", "delete"),
        control("fresh2", "create", spec={"n_features": 0}),
    ]
    out = run_pipeline([], control=commands)
    answers = [
        (a["model_id"], a["detail"]["command"], a["detail"]["ok"])
        for a in (r["alert"] for r in out if "alert" in r)
        if a["kind"] == "control"
    ]
    assert [a for a in answers if a[0] == "fresh"] == [
        ("fresh", "create", True),
        ("fresh", "create", False),
        ("fresh", "delete", True),
        ("fresh", "create", True),
        ("fresh", "pin", True),
        ("fresh", "pin", False),
        ("fresh", "unpin", True),
        ("fresh", "update", True),
    ]
    assert [a for a in answers if a[0] != "fresh"] == [("ghost", "delete", False)]
    to_publisher = [
        (r["model_id"], r["action"], r["version"]) for r in out if r.get("kind") == "version"
    ]
    assert to_publisher == [
        ("fresh", "publish", 1),
        ("fresh", "delete", 0),
        ("fresh", "publish", 1),
        ("fresh", "pin", 1),
        ("fresh", "pin", 0),  # unpin
        ("fresh", "publish", 2),  # the reset: another shape, the next version
        ("fresh", "pin", 0),  # a reset drops the pin
    ]
    dlq = sorted((r["reason"], r["detail"]) for r in out if "reason" in r)
    assert [reason for reason, _ in dlq] == ["bad_model_id", "bad_spec", "bad_spec"]
    assert dlq[0][1] == "field 'model_id': 'bad id' has characters outside [A-Za-z0-9._-]"
    assert dlq[1][1].startswith("args.changes.n_features: cannot change while the model runs")
    assert dlq[2][1] == "args.spec.n_features must be > 0, got 0"


def test_samples_of_a_model_created_meanwhile_are_trained_or_dead_lettered_never_lost():
    """The samples race the create (two sources): each is trained under the created spec,
    or dead-lettered (checked under the defaults first), none lost and none crashing."""
    samples = [
        json.dumps(
            {"model_id": "wide", "ts": 1000 + i, "features": [i % 7, 1.0, -1.0], "label": i % 2}
        ).encode()
        for i in range(300)
    ]
    out = run_pipeline(samples, control=[control("wide", "create", spec={"n_features": 3})])
    versions = [r for r in out if r.get("kind") == "version" and r["model_id"] == "wide"]
    trained = max((v["applied"] for v in versions), default=0)
    dead = [r for r in out if "reason" in r]
    assert {r["reason"] for r in dead} <= {"bad_features"}
    assert trained + len(dead) == len(samples)


def test_the_infer_policy_sends_a_create_and_the_model_trains_every_sample_once_created():
    """A model no spec names: the parser infers its shape from its first record and sends a
    create through fl.control (here: the adaptations stream); meanwhile its samples wait in
    the trainer. Fed back, the create trains them all, whichever arrives first."""
    samples = [
        json.dumps(
            {
                "model_id": "guess",
                "ts": 1000 + i,
                "features": {"a": i % 5, "b": 1.0},
                "label": i % 2,
            }
        ).encode()
        for i in range(200)
    ]
    infer = {"FLOWLEARN__JOB__UNKNOWN_MODEL_POLICY": "infer"}
    out = run_pipeline(samples, **infer)
    creates = {json.dumps(r["control"]["args"]) for r in out if "control" in r}
    assert len(creates) == 1  # one parser: one inference, sent once
    (create,) = [r["control"] for r in out if "control" in r][:1]
    assert create["command"] == "create" and create["source"] == "infer"
    assert create["args"]["spec"]["feature_names"] == ["a", "b"]
    assert not [r for r in out if "reason" in r or r.get("kind") == "version"]

    fed_back = json.dumps(create).encode()
    out = run_pipeline(samples, control=[fed_back], **infer)
    versions = [r for r in out if r.get("kind") == "version" and r["model_id"] == "guess"]
    assert max(v["applied"] for v in versions) == len(samples)
    assert not [r for r in out if "reason" in r]


def test_past_job_max_models_new_model_ids_are_dead_lettered():
    """job.max_models = 3 with [models.demo] configured: "first" and "second" take the two
    free slots (their creates, which a replay does not send back, count as held), and
    "third", past the limit, lands in the DLQ as model_limit, with one alert, while the
    others train every sample. (A delete freeing a slot is the parsers' unit test: here the
    delete's order among the samples would be the two sources' race.)"""

    def of(model_id, n):
        return [
            json.dumps(
                {"model_id": model_id, "ts": 1000 + i, "features": [i % 3] * 10, "label": i % 2}
            ).encode()
            for i in range(n)
        ]

    samples = of("first", 2000) + of("second", 70) + of("third", 70)
    out = run_pipeline(samples, FLOWLEARN__JOB__MAX_MODELS="3")
    applied = {}
    for r in out:
        if r.get("kind") == "version" and r["action"] == "publish":
            applied[r["model_id"]] = max(applied.get(r["model_id"], 0), r["applied"])
    assert applied == {"first": 2000, "second": 70}
    dead = [r for r in out if "reason" in r]
    assert {r["reason"] for r in dead} == {"model_limit"} and len(dead) == 70
    assert all(json.loads(base64.b64decode(r["raw"]))["model_id"] == "third" for r in dead)
    assert dead[0]["detail"] == (
        "model 'third' is not created: the job holds 3 models, job.max_models = 3"
    )
    (alert,) = [r["alert"] for r in out if "alert" in r and r["alert"]["kind"] == "model_limit"]
    assert alert["model_id"] == "third" and alert["detail"]["limit"] == 3
    # The "create" policy's creates, one per model made, for fl.control to count them.
    creates = [r["control"] for r in out if "control" in r]
    assert [(c["model_id"], c["source"]) for c in creates] == [
        ("first", "create"),
        ("second", "create"),
    ]
