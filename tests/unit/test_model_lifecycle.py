"""``create`` and ``delete`` in the trainer outside Flink: one model (one key) over stand-in
keyed state, commands as the control parser forwards them."""

from __future__ import annotations

import json
from typing import Any

from pyflink.common import Row

from flowlearn.conf import Settings, load_settings
from flowlearn.contracts.records import MAX_ALERT_BYTES
from flowlearn.contracts.spec import DELETED, ModelSpecs
from flowlearn.operators.checkpoint import CheckpointOperator
from flowlearn.operators.parse import DLQ_TAG
from flowlearn.operators.trainer import ALERT_TAG, EVAL_TAG, MiniBatchTrainer
from flowlearn.operators.types import Evaluated, Version
from flowlearn.state import descriptors
from tests.unit.flink_stand_ins import Context, KeyedState, MapState

SETTINGS = load_settings(
    env={"FLOWLEARN__JOB__BATCH_SIZE": "2", "FLOWLEARN__JOB__UNKNOWN_MODEL_POLICY": "dlq"}
)
SPECS = ModelSpecs(SETTINGS)


def started(state: KeyedState, settings: Settings = SETTINGS) -> MiniBatchTrainer:
    trainer = MiniBatchTrainer(settings)
    trainer.open(state)
    return trainer


def command(trainer: MiniBatchTrainer, name: str, **args: Any) -> list[Any]:
    if "spec" in args:  # completed and validated, as the control parser forwards it
        args["spec"] = json.loads(SPECS.runtime_entry(args["spec"]))
    row = Row("fresh", name, json.dumps(args), 1, "test")
    return list(trainer.process_element2(row, Context()))


def samples(trainer: MiniBatchTrainer, n: int, width: int) -> list[Any]:
    row = Row("fresh", 5, [0.5] * (n * width), [1.0] * n, [], [], [])
    return list(trainer.process_element1(row, Context()))


def answer(out: list[Any]) -> dict[str, Any]:
    (alert,) = [json.loads(o[1]) for o in out if o[0] is ALERT_TAG]
    assert alert["kind"] == "control" and alert["model_id"] == "fresh"
    return dict(alert["detail"])


def versions(out: list[Any]) -> list[Version]:
    return [Version._make(o) for o in out if not isinstance(o, tuple)]


def evaluated(out: list[Any]) -> list[Evaluated]:
    return [Evaluated._make(o[1]) for o in out if o[0] is EVAL_TAG]


def test_a_created_model_trains_with_its_spec_and_a_delete_forgets_it():
    state = KeyedState()
    trainer = started(state)
    out = command(trainer, "create", spec={"type": "linear", "n_features": 3})
    assert answer(out)["ok"] and answer(out)["new_version"] == 1
    (v1,) = versions(out)
    assert (v1.version, json.loads(v1.spec)["type"]) == (1, "linear")
    (created,) = evaluated(out)
    assert created.kind == "create" and json.loads(created.spec)["n_features"] == 3
    assert samples(trainer, 1, 3)  # the first batch of a young model is one sample
    restarted = started(state)  # the spec is in state: it outlives the process
    trained = versions(samples(restarted, 1, 3))
    assert trained and trained[-1].version == 3

    out = command(restarted, "pin", version=2)
    (pinned,) = versions(out)
    assert answer(out)["pinned"] == 2 and (pinned.action, pinned.version) == ("pin", 2)
    assert pinned.weights == state.states["recent-versions-v1"][2]  # its kept weights
    out = command(restarted, "delete")
    assert answer(out)["ok"]
    (tombstone,) = versions(out)
    assert tombstone.action == "delete" and tombstone.model_id == "fresh"
    assert [e.kind for e in evaluated(out)] == ["delete"]
    assert state.states["model-state-v1"].value() is None
    assert state.states["runtime-spec-v1"].value() == DELETED
    assert not state.states["recent-versions-v1"]
    # Deleted under the "dlq" policy: its commands are refused, a late sample dead-lettered.
    assert "no such model" in answer(command(restarted, "reset"))["reason"]
    assert "no such model" in answer(command(restarted, "delete"))["reason"]
    (letter,) = [json.loads(o[1]) for o in samples(restarted, 1, 3) if o[0] is DLQ_TAG]
    assert letter["reason"] == "unknown_model"


def test_create_again_is_ok_with_the_same_spec_refused_with_another():
    trainer = started(KeyedState())
    command(trainer, "create", spec={"n_features": 3})
    samples(trainer, 1, 3)
    same = command(trainer, "create", spec={"n_features": 3})
    assert answer(same)["ok"] and answer(same)["existed"]
    assert versions(same) == []
    other = answer(command(trainer, "create", spec={"n_features": 4}))
    assert not other["ok"] and "exists with another spec" in other["reason"]
    # A model created again after a delete starts from version 1 under its new spec.
    command(trainer, "delete")
    out = command(trainer, "create", spec={"n_features": 4})
    assert answer(out)["ok"] and [v.version for v in versions(out)] == [1]


def test_samples_of_another_width_are_dead_lettered_whole_not_trained():
    """A record checked by a parser under another spec (around a create) must not crash the
    trainer: it goes to the DLQ, whole."""
    trainer = started(KeyedState())
    command(trainer, "create", spec={"n_features": 3})
    out = samples(trainer, 2, 5)
    (letter,) = [json.loads(o[1]) for o in out if o[0] is DLQ_TAG]
    assert letter["reason"] == "bad_features" and "expected 3 values" in letter["detail"]
    assert not versions(out)


def test_a_delete_of_a_model_never_seen_is_refused():
    trainer = started(KeyedState())
    detail = answer(command(trainer, "delete"))
    assert not detail["ok"] and "no such model" in detail["reason"]
    assert versions(command(trainer, "delete")) == []


def test_an_update_changes_live_fields_with_a_new_version_and_refuses_the_others():
    state = KeyedState()
    trainer = started(state)
    command(trainer, "create", spec={"type": "linear", "n_features": 3})
    samples(trainer, 1, 3)
    before = trainer.trainers["fresh"]
    weights = before.model.weights_vector()
    out = command(trainer, "update", changes={"learning_rate": 0.007, "batch_size": 8})
    detail = answer(out)
    assert detail["ok"] and detail["spec"]["learning_rate"] == 0.007
    (version,) = versions(out)
    assert version.version == before.version + 1
    after = trainer.trainers["fresh"]
    assert after.model.weights_vector().tobytes() == weights.tobytes()
    assert after.batch_size == 8
    # The learning rate is the optimizer's from now on, and the entry outlives a restart.
    assert started(state).model_specs.spec_of("fresh").learning_rate == 0.007
    assert [e.kind for e in evaluated(out)] == ["update"]
    for changes, reason in (
        ({"n_features": 4}, "changes.n_features: cannot change while the model runs"),
        ({"batch_size": -1}, "changes.batch_size: must be >= 0"),
    ):
        refused = answer(command(trainer, "update", changes=changes))
        assert not refused["ok"] and reason in refused["reason"]


def test_a_self_tuning_model_keeps_its_rates():
    trainer = started(KeyedState())
    command(trainer, "create", spec={"type": "auto_linear", "n_features": 2})
    refused = answer(command(trainer, "update", changes={"learning_rate": 0.1}))
    assert not refused["ok"] and "learning_rates" in refused["reason"]


def test_a_create_replaces_a_model_that_trained_under_the_defaults():
    """The parsers cannot see what a model trained, so a create applies to any model
    without a live runtime entry: the answer says what it replaced."""
    settings = load_settings(
        env={"FLOWLEARN__JOB__BATCH_SIZE": "2", "FLOWLEARN__JOB__UNKNOWN_MODEL_POLICY": "create"}
    )
    trainer = MiniBatchTrainer(settings)
    trainer.open(KeyedState())
    assert versions(samples(trainer, 1, 10))  # the defaults: 10 features
    out = command(trainer, "create", spec={"n_features": 3})
    assert answer(out)["ok"] and answer(out)["replaced_version"] == 1
    assert [v.version for v in versions(out)] == [1]
    assert versions(samples(trainer, 1, 3))


def test_under_the_infer_policy_samples_wait_for_their_models_create():
    settings = load_settings(
        env={"FLOWLEARN__JOB__BATCH_SIZE": "2", "FLOWLEARN__JOB__UNKNOWN_MODEL_POLICY": "infer"}
    )
    trainer = MiniBatchTrainer(settings)
    trainer.open(KeyedState())
    assert samples(trainer, 3, 3) == []  # held: neither trained nor dead-lettered
    assert samples(trainer, 1, 5) == []  # another parser's guess at the shape
    out = command(trainer, "create", spec={"n_features": 3})
    assert answer(out)["ok"]
    assert [v.version for v in versions(out)][:2] == [1, 2]  # created, then the held trained
    (letter,) = [json.loads(o[1]) for o in out if o[0] is DLQ_TAG]
    assert letter["reason"] == "bad_features" and "before the model's create" in letter["detail"]
    assert trainer.trainers["fresh"].samples_applied == 3


def test_an_update_with_reset_starts_another_model_at_the_next_version():
    state = KeyedState()
    trainer = started(state)
    command(trainer, "create", spec={"type": "linear", "n_features": 3})
    samples(trainer, 3, 3)
    command(trainer, "update", changes={"learning_rate": 0.2})  # live: taken into the reset
    (before,) = versions(command(trainer, "republish"))  # the current version
    refused = answer(command(trainer, "update", changes={"n_features": -1}, reset=True))
    assert refused["reason"] == "changes.n_features must be > 0, got -1"
    out = command(trainer, "update", changes={"type": "logistic", "n_features": 2}, reset=True)
    reply = answer(out)
    assert reply["ok"] and reply["new_version"] == before.version + 1
    assert reply["spec"]["learning_rate"] == 0.2 and reply["spec"]["n_features"] == 2
    first, unpin = versions(out)
    assert (first.version, first.base_version, first.action) == (before.version + 1, 0, "publish")
    assert json.loads(first.spec)["type"] == "logistic" and first.weights
    assert first.samples_applied == before.samples_applied  # samples applied over its life
    assert unpin == Version.pinning("fresh", 0)
    (created,) = evaluated(out)
    assert created.kind == "create" and json.loads(created.spec)["n_features"] == 2
    assert not state.states["recent-versions-v1"].contains(before.version)  # another shape
    restarted = started(state)
    assert versions(samples(restarted, 1, 2))[-1].version == first.version + 1
    (letter,) = [o for o in samples(restarted, 1, 3) if o[0] is DLQ_TAG]
    assert json.loads(letter[1])["reason"] == "bad_features"


def test_an_update_with_reset_of_a_model_never_seen_is_refused():
    reply = answer(command(started(KeyedState()), "update", changes={"n_features": 2}, reset=True))
    assert "no such model" in reply["reason"]


def test_an_answer_stays_within_kafkas_limit_whatever_the_args():
    """Args of any size up to a record's (here ~520 KB of 4-byte characters, ~1.5 MB as
    escaped JSON) are cut in the answer, which keeps the request id the CLI waits for."""
    trainer = started(KeyedState())
    command(trainer, "create", spec={"n_features": 3})
    (reply,) = [
        o[1]
        for o in command(trainer, "reset", request="r1", note="\U0001d11e" * 130_000)
        if o[0] is ALERT_TAG
    ]
    assert len(reply.encode()) <= MAX_ALERT_BYTES
    detail = json.loads(reply)["detail"]
    assert detail["ok"] and detail["truncated"] and detail["args"]["request"] == "r1"


def test_a_model_whose_conf_changed_shape_dead_letters_until_a_reset_then_trains_it():
    """conf/ gives the model 4 features where it trained with 3 (a resubmission): samples of
    the new shape are dead-lettered by the trainer (the parser checked them under the new
    spec), never a crash; a reset, with a replay reservoir of old-shape samples, gives the
    model its spec's shape, published whole."""
    state = KeyedState()

    def with_conf(n_features: int) -> MiniBatchTrainer:
        env = {
            "FLOWLEARN__JOB__BATCH_SIZE": "2",
            "FLOWLEARN__MODELS__FRESH__N_FEATURES": str(n_features),
            "FLOWLEARN__MODELS__FRESH__REPLAY_SIZE": "8",
        }
        trainer = MiniBatchTrainer(load_settings(env=env))
        trainer.open(state)
        return trainer

    trained = versions(samples(with_conf(3), 6, 3))[-1]
    resubmitted = with_conf(4)
    (letter,) = [json.loads(o[1]) for o in samples(resubmitted, 2, 4) if o[0] is DLQ_TAG]
    assert letter["reason"] == "bad_features" and "a reset gives the model" in letter["detail"]
    out = command(resubmitted, "reset")
    assert answer(out)["ok"]
    (reset,) = versions(out)
    assert (reset.version, reset.base_version) == (trained.version + 1, 0)
    assert json.loads(reset.spec)["n_features"] == 4
    assert versions(samples(resubmitted, 6, 4))[-1].samples_applied == trained.samples_applied + 6


def test_a_paused_models_buffer_is_bounded_oldest_to_the_dlq():
    """#23: a paused model buffered every sample it received; past
    job.paused_buffer_samples its oldest rows go to the DLQ as paused_overflow (counted),
    the newest wait, and resume trains them."""
    settings = load_settings(
        env={
            "FLOWLEARN__JOB__BATCH_SIZE": "2",
            "FLOWLEARN__JOB__PAUSED_BUFFER_SAMPLES": "5",
            "FLOWLEARN__MODELS__FRESH__TYPE": "linear",
            "FLOWLEARN__MODELS__FRESH__N_FEATURES": "3",
        }
    )
    state = KeyedState()
    trainer = MiniBatchTrainer(settings)
    trainer.open(state)
    assert answer(command(trainer, "pause"))["ok"]
    letters = []
    for i in range(4):  # rows of 2 samples, labels 0..7
        row = Row("fresh", 5 + i, [0.5] * 6, [float(2 * i), float(2 * i + 1)], [], [], [])
        out = list(trainer.process_element1(row, Context()))
        assert not versions(out)  # paused: nothing trained
        letters += [json.loads(o[1]) for o in out if o[0] is DLQ_TAG]
    # 8 samples sent, at most 5 kept: the two oldest rows (4 samples) went to the DLQ.
    assert [x["reason"] for x in letters] == ["paused_overflow", "paused_overflow"]
    assert "job.paused_buffer_samples = 5" in letters[0]["detail"]
    assert trainer.buffered["fresh"] == 4
    assert trainer.buffered_overflow.counter.count == 4
    out = command(trainer, "resume")
    trained = versions(out)
    assert trained and trained[-1].action == "publish"


class TimerContext(Context):
    def get_current_key(self) -> str:
        return "fresh"


def test_a_model_whose_conf_changed_type_dead_letters_until_a_reset_then_trains_it():
    """conf/ makes a logistic model a random forest (a resubmission): its saved state cannot
    load into the new type. Nothing crashes: samples, and those that waited in the buffer,
    are dead-lettered as ``spec_changed``, commands other than ``reset`` are refused with
    the reason; a reset gives the model its spec's type, going on from its version, and
    the versions kept from before it can neither be rolled back to nor pinned."""
    state = KeyedState()

    def with_conf(kind: str) -> MiniBatchTrainer:
        env = {
            "FLOWLEARN__JOB__BATCH_SIZE": "2",
            "FLOWLEARN__MODELS__FRESH__N_FEATURES": "3",
            "FLOWLEARN__MODELS__FRESH__TYPE": kind,
        }
        trainer = MiniBatchTrainer(load_settings(env=env))
        trainer.open(state)
        return trainer

    logistic = with_conf("logistic")
    trained = versions(samples(logistic, 32, 3))[-1]
    assert versions(samples(logistic, 1, 3)) == []  # waits for a second sample
    forest = with_conf("random_forest")

    def letters(out: list[Any]) -> list[dict[str, Any]]:
        return [json.loads(o[1]) for o in out if o[0] is DLQ_TAG]

    (waited,) = letters(list(forest.on_timer(0, TimerContext())))
    (sent,) = letters(samples(forest, 2, 3))
    for letter in (waited, sent):
        assert letter["reason"] == "spec_changed" and "a reset gives" in letter["detail"]
    refused = answer(command(forest, "set_learning_rate", learning_rate=0.1))
    assert not refused["ok"] and "another type" in refused["reason"]
    out = command(forest, "reset")
    assert answer(out)["ok"]
    (reset,) = versions(out)
    assert (reset.version, reset.base_version) == (trained.version + 1, 0)
    assert json.loads(reset.spec)["type"] == "random_forest"
    assert versions(samples(forest, 4, 3))[-1].samples_applied == trained.samples_applied + 4
    pin = answer(command(forest, "pin", version=trained.version))
    assert not pin["ok"] and "before a reset changed" in pin["reason"]
    out = command(forest, "rollback", version=trained.version)
    (alert,) = [json.loads(o[1]) for o in out if o[0] is ALERT_TAG]
    assert alert["kind"] == "rollback" and not alert["detail"]["ok"]
    assert versions(out) == []


def test_the_create_policys_own_create_keeps_the_model_its_records_made():
    """Under "create" the parsers send a create for each new model id (so that
    job.max_models counts it job-wide); the model trained meanwhile under the defaults is
    kept, not started again, and later creates of another spec are refused as for any
    created model."""
    settings = load_settings(
        env={"FLOWLEARN__JOB__BATCH_SIZE": "2", "FLOWLEARN__JOB__UNKNOWN_MODEL_POLICY": "create"}
    )
    state = KeyedState()
    trainer = MiniBatchTrainer(settings)
    trainer.open(state)
    trained = versions(samples(trainer, 3, 10))
    defaults = json.loads(ModelSpecs(settings).runtime_entry(settings.model_defaults))
    row = Row("fresh", "create", json.dumps({"spec": defaults}), 1, "create")
    out = list(trainer.process_element2(row, Context()))
    assert out == []  # nothing changed: no version, no answer
    assert trainer.trainers["fresh"].version == trained[-1].version
    assert state.states["runtime-spec-v1"].value() == json.dumps(defaults, sort_keys=True)
    assert list(trainer.process_element2(row, Context())) == []  # another parser's, too
    out = command(trainer, "create", spec={"n_features": 3})
    assert not answer(out)["ok"]  # it exists, as the parsers now know too


def test_the_checkpoint_operators_gauges_still_read_once_a_model_is_deleted():
    """PyFlink reads every gauge at the end of every bundle. The checkpoint operator's
    ``windowed_loss`` of a deleted model read a ledger the delete had dropped: a KeyError
    that failed the job, again on every replay of the delete (#23, crash loops)."""
    trainer = started(KeyedState())
    rows = evaluated(command(trainer, "create", spec={"type": "linear", "n_features": 3}))
    rows += evaluated(samples(trainer, 1, 3))
    rows += evaluated(command(trainer, "delete"))
    assert [row.kind for row in rows] == ["create", "train", "delete"]
    monitored = KeyedState()
    operator = CheckpointOperator(SETTINGS)
    operator.open(monitored)
    gauges = []
    for row in rows:
        list(operator.process_element(row, Context()))
        gauges.append(monitored.group.read_gauges())
    assert gauges[-1] == {"model.fresh.windowed_loss": 0}


class CountedMapState(MapState):
    """Counts the reads of all its keys (a blocking round trip to the JVM in PyFlink)."""

    keys_read = 0

    def keys(self) -> Any:
        self.keys_read += 1
        return super().keys()


def test_the_checkpoint_operator_keeps_only_the_ledgers_checkpoints_reading_their_keys_once():
    settings = load_settings(
        env={
            "FLOWLEARN__JOB__BATCH_SIZE": "2",
            "FLOWLEARN__JOB__CHECKPOINT_EVERY_VERSIONS": "1",
            "FLOWLEARN__JOB__KEEP_CHECKPOINTS": "2",
        }
    )
    trainer = started(KeyedState(), settings)
    rows = evaluated(command(trainer, "create", spec={"type": "linear", "n_features": 3}))
    for _ in range(6):
        rows += evaluated(samples(trainer, 2, 3))
    monitored = KeyedState()
    weights = monitored.states[descriptors.CHECKPOINT_WEIGHTS.name] = CountedMapState()
    operator = CheckpointOperator(settings)
    operator.open(monitored)
    for row in rows[:4]:
        list(operator.process_element(row, Context()))
    ledger = operator.ledgers["fresh"]
    assert sorted(weights) == [c.version for c in ledger.checkpoints()]
    assert len(weights) == 2 and weights.keys_read == 0  # a create starts from none
    # After a restart the operator learns what the state holds from the state, once.
    operator = CheckpointOperator(settings)
    operator.open(monitored)
    for row in rows[4:]:
        list(operator.process_element(row, Context()))
    assert sorted(weights) == [c.version for c in operator.ledgers["fresh"].checkpoints()]
    assert max(weights) == rows[-1].version and len(weights) == 2
    assert weights.keys_read == 1
