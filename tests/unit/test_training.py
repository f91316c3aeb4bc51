import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowlearn.core import codec, linear, optim, training
from flowlearn.core.spec import ModelSpec
from flowlearn.core.training import (
    RAMP_FRACTION,
    BatchResult,
    ModelTrainer,
    batch_plan,
    build_model,
)

SPEC = {"type": "logistic", "n_features": 3, "learning_rate": 0.1}
TRUE_W = np.array([1.0, -2.0, 0.5])


def batch(seed, n=16, flip=False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = (X @ TRUE_W > 0).astype(float)
    return X, (1.0 - y if flip else y)


def full_spec(**kw):
    return ModelSpec(n_features=3, **kw).as_dict()


def replay(weights, mv):
    codec.apply_delta(weights, codec.decode_delta(mv.delta))
    return weights


def model_bytes(trainer):
    """The model's whole state (weights, optimizer buffers and counters) as bytes."""
    return codec.encode_state(*trainer.model.state_dict())


def test_versions_count_up_and_deltas_rebuild_the_weights():
    t = ModelTrainer.create("m", SPEC)
    replica = np.zeros(t.model.weights_vector().size)  # weights, then pipeline statistics
    for i in range(5):
        mv = t.train_batch(*batch(i)).version
        assert (mv.version, mv.base_version, mv.samples_applied) == (i + 1, i, 16 * (i + 1))
        replay(replica, mv)
        assert replica.tobytes() == t.model.weights_vector().tobytes()


def test_first_version_after_restore_carries_a_snapshot():
    t = ModelTrainer.create("m", SPEC)
    t.train_batch(*batch(0))
    restored = ModelTrainer.restore("m", SPEC, t.state_bytes(), t.version, t.samples_applied)
    mv = restored.train_batch(*batch(1)).version
    assert mv.weights is not None and mv.version == 2


def test_training_is_deterministic_across_restore():
    a = ModelTrainer.create("m", SPEC)
    b = ModelTrainer.create("m", SPEC)
    a.train_batch(*batch(0))
    b.train_batch(*batch(0))
    b = ModelTrainer.restore("m", SPEC, b.state_bytes(), b.version, b.samples_applied)
    a.train_batch(*batch(1))
    b.train_batch(*batch(1))
    assert a.model.weights_vector().tobytes() == b.model.weights_vector().tobytes()


def test_rollback_makes_a_new_version_with_the_old_weights_bit_for_bit():
    t = ModelTrainer.create("m", SPEC)
    t.train_batch(*batch(0))
    v1 = t.model.weights_vector()
    t.train_batch(*batch(1))
    mv = t.restore_weights(v1)
    assert mv.version == 3 and mv.samples_applied == 32
    assert t.model.weights_vector().tobytes() == v1.tobytes()


def test_reset_and_learning_rate():
    t = ModelTrainer.create("m", SPEC)
    t.train_batch(*batch(0))
    mv = t.reset()
    assert mv.version == 2 and not t.model.weights_vector().any()
    t.set_learning_rate(0.5)
    with pytest.raises(ValueError, match="positive"):
        t.set_learning_rate(float("nan"))


def test_a_batch_with_non_finite_input_is_rejected_and_changes_nothing():
    t = ModelTrainer.create("m", SPEC)
    t.train_batch(*batch(0))
    before = t.model.weights_vector()
    X, y = batch(1)
    X[0, 0] = np.inf
    result = t.train_batch(X, y)
    assert result.version is None and result.rejected
    assert t.version == 1 and t.model.weights_vector().tobytes() == before.tobytes()


# ---------------------------------------------------------------------------- model spec


@pytest.mark.parametrize(
    "spec",
    [{**SPEC, "scale": "none"}, full_spec(learning_rate=0.1, scale="none")],
    ids=["partial", "full"],
)
def test_an_unscaled_spec_trains_exactly_like_plain_sgd_without_clipping(spec):
    t = ModelTrainer.create("m", spec)
    reference = linear.LogisticRegression(3, optimizer=optim.SGD(lr=0.1))
    for i in range(5):
        t.train_batch(*batch(i))
        reference.learn_many(*batch(i))
    assert type(t.model.model.optimizer) is optim.SGD and t.model.clip_grad_norm is None
    assert t.model.model.weights_vector().tobytes() == reference.weights_vector().tobytes()


def test_the_default_pipeline_standardises_with_the_statistics_of_training_data():
    t = ModelTrainer.create("m", SPEC)
    reference = linear.LogisticRegression(3, optimizer=optim.SGD(lr=0.1))
    seen = []
    for i in range(5):
        X, y = batch(i)
        t.train_batch(X, y)
        seen.append(X)  # standardised with the mean and std of everything seen so far
        history = np.concatenate(seen)
        reference.learn_many((X - history.mean(axis=0)) / history.std(axis=0), y)
    np.testing.assert_allclose(t.model.model.weights_vector(), reference.weights_vector())
    np.testing.assert_allclose(t.model.features.mean, history.mean(axis=0))


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sgd", optim.SGD),
        ("adagrad", optim.AdaGrad),
        ("adam", optim.Adam),
        ("ftrl", optim.FTRL),
    ],
)
def test_the_optimizer_named_in_the_spec_is_built_and_trains(name, cls):
    t = ModelTrainer.create("m", full_spec(optimizer=name, learning_rate=0.2))
    assert type(t.model.model.optimizer) is cls
    assert t.model.model.optimizer.learning_rate == 0.2
    first = t.train_batch(*batch(0)).prequential_loss
    for i in range(1, 30):
        last = t.train_batch(*batch(i))
    assert last.version is not None and last.version.version == 30
    assert last.prequential_loss < first


def test_unknown_optimizer_is_an_error():
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_model(full_spec(optimizer="lbfgs"))


def test_l1_l2_clip_and_seed_reach_the_model():
    model = build_model(full_spec(l1=0.01, l2=0.02, clip_grad_norm=0.5, seed=7)).model
    assert (model.l1, model.l2, model.clip_grad_norm, model.seed) == (0.01, 0.02, 0.5, 7)
    assert build_model(full_spec(clip_grad_norm=0.0)).clip_grad_norm is None
    softmax = build_model({**full_spec(n_classes=4), "type": "softmax"}).model
    assert isinstance(softmax, linear.SoftmaxRegression) and softmax.n_classes == 4


def test_l1_from_the_spec_makes_irrelevant_weights_exactly_zero():
    spec = ModelSpec(n_features=4, learning_rate=0.2, l1=0.05).as_dict()
    t = ModelTrainer.create("m", spec)
    rng = np.random.default_rng(0)
    for _ in range(50):
        X = rng.normal(size=(256, 4))
        t.train_batch(X, (X[:, 0] > 0).astype(float))
    coef = t.model.model.coef
    assert coef[0] > 0 and (coef[1:] == 0.0).all()


def test_clipping_is_reported_in_the_batch_result():
    clipped = ModelTrainer.create("m", full_spec(clip_grad_norm=0.01)).train_batch(*batch(0))
    free = ModelTrainer.create("m", full_spec()).train_batch(*batch(0))
    assert clipped.clipped and not free.clipped
    # The norm before clipping: what the unclipped model saw on the same batch.
    assert clipped.grad_norm == free.grad_norm and free.grad_norm > 0.01
    assert BatchResult(None, 0.0).grad_norm is None


# ---------------------------------------------------------------------------- holdout gate

# Unscaled: these tests are about the gate, on data that needs no scaling.
GATED = full_spec(learning_rate=0.5, holdout_size=64, holdout_margin=0.01, scale="none")


def warmed_up(spec, batches=20):
    t = ModelTrainer.create("m", spec)
    results = [t.train_batch(*batch(i)) for i in range(batches)]
    assert all(r.rejected is None for r in results)
    return t


def test_holdout_gate_rejects_a_poisoned_batch_and_accepts_a_clean_one():
    t = warmed_up(GATED)  # gated from the third batch on: 18 clean batches passed
    version, applied = t.version, t.samples_applied
    twin = ModelTrainer.restore("m", GATED, t.state_bytes(), version, applied)
    poisoned = t.train_batch(*batch(100, flip=True))
    assert poisoned.version is None
    assert poisoned.rejected.startswith("holdout: loss +") and "> margin 0.01" in poisoned.rejected
    assert poisoned.losses is not None and len(poisoned.losses) == 16
    assert (t.version, t.samples_applied) == (version, applied)
    clean = twin.train_batch(*batch(101))  # the same state, a clean batch instead
    assert clean.rejected is None and clean.version.version == version + 1
    assert clean.version.base_version == version and twin.samples_applied == applied + 16


def test_a_rejected_update_restores_weights_and_optimizer_state_bit_for_bit():
    spec = {
        **GATED,
        "optimizer": "adam",
        "learning_rate": 0.3,
        "holdout_margin": 0.0,
        "clip_grad_norm": 5.0,
    }
    t = warmed_up(spec)
    before = model_bytes(t)
    result = t.train_batch(*batch(100, flip=True))
    assert result.rejected is not None and result.grad_norm is not None
    assert model_bytes(t) == before  # weights, Adam's m and v, its step count, the last norm


def test_the_gate_waits_for_enough_holdout_samples():
    t = ModelTrainer.create("m", GATED)
    # 16 samples seen, fewer than min(64, 32): a poisoned batch cannot be judged yet.
    t.train_batch(*batch(0))
    assert t.train_batch(*batch(1, flip=True)).rejected is None


def test_holdout_moves_to_a_new_concept_and_updates_pass_again():
    spec = full_spec(learning_rate=1.0, holdout_size=256, holdout_margin=0.01)
    t = warmed_up(spec, batches=40)
    results = [t.train_batch(*batch(200 + i, flip=True)) for i in range(30)]
    rejected = [i for i, r in enumerate(results) if r.rejected is not None]
    assert rejected and rejected[0] == 0  # the change first looks like poisoning
    # Once the holdout (256 samples, 16 batches) holds the new concept, nothing is held back.
    assert max(rejected) < 256 // 16 + 3
    X, y = batch(999, n=500, flip=True)
    assert (t.model.predict_many(X) == y).mean() > 0.9


# ---------------------------------------------------------------------------- replay


def record_fit_batches(trainer):
    seen = []
    fit = trainer.model.fit

    def spy(X, y):
        seen.append((np.array(X), np.array(y)))
        return fit(X, y)

    trainer.model.fit = spy
    return seen


def test_replay_mixes_k_reservoir_samples_into_each_step():
    spec = full_spec(learning_rate=0.1, replay_size=40, replay_fraction=0.25)
    t = ModelTrainer.create("m", spec)
    fits = record_fit_batches(t)
    past = set()
    for i in range(8):
        X, y = batch(i)
        r = t.train_batch(X, y)
        assert len(r.losses) == 16 and len(r.errors) == 16  # only the new batch is scored
        fit_X, _ = fits[-1]
        assert fit_X[:16].tobytes() == X.tobytes()
        replayed = {row.tobytes() for row in fit_X[16:]}
        assert len(replayed) == len(fit_X) - 16 and replayed <= past  # no repeats, all past
        past |= {row.tobytes() for row in X}
    # k = round(0.25 x 16) = 4 from the second batch on (the reservoir is empty before).
    assert [len(x) - 16 for x, _ in fits] == [0] + [4] * 7
    assert t.samples_applied == 8 * 16 and t.version == 8


def test_replay_changes_the_weight_trajectory():
    plain = ModelTrainer.create("m", full_spec())
    mixed = ModelTrainer.create("m", full_spec(replay_size=100, replay_fraction=0.5))
    for i in range(6):
        plain.train_batch(*batch(i))
        mixed.train_batch(*batch(i))
    assert plain.samples_applied == mixed.samples_applied == 96
    assert plain.model.weights_vector().tobytes() != mixed.model.weights_vector().tobytes()


def test_rejected_batches_do_not_enter_the_reservoir():
    t = warmed_up({**GATED, "replay_size": 1000})
    t.train_batch(*batch(100, flip=True))
    arrays, meta = codec.decode_state(t.state_bytes())
    assert meta["replay"]["seen"] == 20 * 16 and len(arrays["replay.y"]) == 20 * 16


def test_the_reservoir_is_a_uniform_sample_of_everything_offered():
    t = ModelTrainer.create("m", full_spec(replay_size=200, replay_fraction=0.1))
    n = 0
    for i in range(200):  # 4000 samples; the first feature holds a sample's index
        X, y = batch(i, n=20)
        X[:, 0] = np.arange(n, n + 20)
        t.train_batch(X, y)
        n += 20
    arrays, meta = codec.decode_state(t.state_bytes())
    kept = arrays["replay.X"][:, 0]
    assert meta["replay"]["seen"] == 4000 and len(np.unique(kept)) == 200
    # Uniform over 0..3999: mean 2000, standard error 1155 / sqrt(200) ~ 82.
    assert abs(kept.mean() - 2000) < 300 and (kept < 2000).sum() in range(70, 131)


def test_reservoir_offer_matches_algorithm_r_one_sample_at_a_time():
    size, seed = 10, 3
    reservoir = training._Reservoir(size, 1, seed)
    ref_rng, ref, t = np.random.default_rng(seed), [], 0
    for b in range(30):
        values = np.arange(t, t + 7, dtype=float)
        reservoir.offer(values[:, None], values)
        fill = max(0, min(7, size - len(ref)))
        ref.extend(values[:fill])
        if fill < 7:  # same draws as the trainer, applied one by one
            slots = ref_rng.integers(0, t + np.arange(fill, 7) + 1)
            for v, j in zip(values[fill:], slots, strict=True):
                if j < size:
                    ref[j] = v
        t += 7
        assert reservoir.y.tolist() == ref, f"after batch {b}"


# ---------------------------------------------------------------------------- state


def test_state_without_holdout_and_replay_is_the_model_only_layout():
    t = ModelTrainer.create("m", full_spec())
    t.train_batch(*batch(0))
    assert t.state_bytes() == model_bytes(t)


def test_state_bytes_of_the_model_only_layout_still_restore():
    old_spec = {"type": "logistic", "n_features": 3, "learning_rate": 0.1}
    model = build_model(old_spec)
    for i in range(3):
        model.learn_many(*batch(i))
    old_bytes = codec.encode_state(*model.state_dict())  # as savepoints of earlier releases
    spec = full_spec(learning_rate=0.1, holdout_size=32, replay_size=50)
    t = ModelTrainer.restore("m", spec, old_bytes, 3, 48)
    assert t.model.weights_vector().tobytes() == model.weights_vector().tobytes()
    assert (t.version, t.samples_applied) == (3, 48)
    arrays, meta = codec.decode_state(t.state_bytes())  # starts with empty buffers
    assert len(arrays["holdout.y"]) == 0 and meta["replay"]["seen"] == 0
    r = t.train_batch(*batch(3))
    assert r.version.version == 4 and r.version.samples_applied == 64


def test_buffers_the_spec_no_longer_asks_for_are_dropped_on_restore():
    t = warmed_up({**GATED, "replay_size": 100}, batches=5)
    plain = ModelTrainer.restore("m", {**GATED, "holdout_size": 0}, t.state_bytes(), 5, 80)
    assert plain.model.weights_vector().tobytes() == t.model.weights_vector().tobytes()
    assert plain.state_bytes() == model_bytes(t)


def test_an_unknown_trainer_state_format_is_refused():
    payload = codec.encode_state({}, {"trainer_state": 99, "model": {}})
    with pytest.raises(codec.CodecError, match="trainer state format 99"):
        ModelTrainer.restore("m", GATED, payload, 0, 0)


def test_reset_keeps_the_holdout_and_the_reservoir():
    t = warmed_up({**GATED, "replay_size": 100}, batches=5)
    t.reset()
    arrays, meta = codec.decode_state(t.state_bytes())
    assert len(arrays["holdout.y"]) == 64 and meta["replay"]["seen"] == 80
    assert not t.model.weights_vector().any()


batches_st = st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(1, 24), st.booleans()), min_size=1, max_size=12
)


@settings(max_examples=60, deadline=None)
@given(
    optimizer=st.sampled_from(["sgd", "adam"]),
    holdout_size=st.integers(8, 48),
    margin=st.sampled_from([0.0, 0.02]),
    replay_size=st.integers(4, 40),
    replay_fraction=st.floats(0.1, 1.0),
    seed=st.integers(0, 3),
    batches=batches_st,
    cuts=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_a_restore_at_any_batch_boundary_changes_nothing(
    optimizer, holdout_size, margin, replay_size, replay_fraction, seed, batches, cuts
):
    spec = full_spec(
        optimizer=optimizer,
        learning_rate=0.5,
        holdout_size=holdout_size,
        holdout_margin=margin,
        replay_size=replay_size,
        replay_fraction=replay_fraction,
        seed=seed,
    )
    straight = ModelTrainer.create("m", spec)
    resumed = ModelTrainer.create("m", spec)
    for (data_seed, n, flip), cut in zip(batches, cuts, strict=False):
        if cut:
            resumed = ModelTrainer.restore(
                "m", spec, resumed.state_bytes(), resumed.version, resumed.samples_applied
            )
        a = straight.train_batch(*batch(data_seed, n, flip))
        b = resumed.train_batch(*batch(data_seed, n, flip))
        assert a.rejected == b.rejected
        assert (a.version is None) == (b.version is None)
        if a.version is not None:
            assert a.version.delta == b.version.delta
        assert (straight.version, straight.samples_applied) == (
            resumed.version,
            resumed.samples_applied,
        )
        assert straight.model.weights_vector().tobytes() == resumed.model.weights_vector().tobytes()
    assert straight.state_bytes() == resumed.state_bytes()


# ---------------------------------------------------------------------------- batches


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 5000),
    batch=st.sampled_from([1, 2, 32, 64, 100, 256]),
    learnt=st.integers(0, 3000),
)
def test_a_young_models_batches_grow_with_what_it_has_learnt(n, batch, learnt):
    plan = batch_plan(n, batch, learnt)
    assert sum(plan) == n and all(size >= 1 for size in plan)
    assert plan[:-1] == sorted(plan[:-1]) and max(plan, default=1) <= batch
    done = learnt
    for size in plan[:-1]:
        # Never more than 1/RAMP_FRACTION of what the model has learnt (nor less than half
        # of that, nor less than a full batch once that is allowed).
        assert size == batch or (size <= max(1, done // RAMP_FRACTION) < 2 * size)
        if batch & (batch - 1) == 0 and learnt % batch == 0:
            # A power of two, from a record boundary: batches stay within records of it.
            assert done // batch == (done + size - 1) // batch
        done += size


def test_a_partial_batch_steps_in_proportion_to_its_size():
    """The learning rate is a full batch's: a batch of 16 of a batch size of 64 moves the
    weights as a quarter of the rate would on its mean gradient."""
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(16, 3)), rng.integers(0, 2, 16)
    full = linear.LogisticRegression(3, optimizer=optim.SGD(0.4), batch_size=64)
    mean = linear.LogisticRegression(3, optimizer=optim.SGD(0.1))
    full.learn_many(X, y)
    mean.learn_many(X, y)
    np.testing.assert_allclose(full.weights_vector(), mean.weights_vector(), rtol=1e-14)
    big = rng.normal(size=(80, 3))  # more than a batch: its mean gradient, the full rate
    a = linear.LogisticRegression(3, optimizer=optim.SGD(0.4), batch_size=64)
    b = linear.LogisticRegression(3, optimizer=optim.SGD(0.4))
    a.learn_many(big, np.ones(80))
    b.learn_many(big, np.ones(80))
    assert a.weights_vector().tobytes() == b.weights_vector().tobytes()


def test_the_trainer_cuts_as_the_plan_says_and_a_reset_makes_the_model_young_again():
    rng = np.random.default_rng(6)
    t = ModelTrainer.create("m", {**SPEC, "batch_size": 32})
    X, y = rng.normal(size=(700, 3)), rng.integers(0, 2, 700).astype(float)
    results = t.train_samples(X, y)
    assert [len(r.losses) for r in results] == batch_plan(700, 32)
    assert t.next_batch_size() == 32 and t.model.samples_learnt == 700
    t.reset()
    assert t.next_batch_size() == 1 and t.samples_applied == 700
    with pytest.raises(ValueError, match="batch_size 0"):
        ModelTrainer.create("m", SPEC).next_batch_size()


def test_a_model_restored_from_before_the_pipeline_is_not_young():
    legacy = linear.LogisticRegression(3)
    state = codec.encode_state(*legacy.state_dict())
    t = ModelTrainer.restore("m", {**SPEC, "batch_size": 32}, state, 50, 1600)
    assert t.next_batch_size() == 32
