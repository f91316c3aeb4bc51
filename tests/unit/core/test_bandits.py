"""The contextual bandit: its posterior against closed-form Bayesian linear regression, the
propensities it reports against the choices it makes, exact cut-independence, the
feedback checks, and the served posterior choosing as the trainer does, bit for bit."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowlearn.conf import ConfigError, load_settings
from flowlearn.contracts.spec import ModelSpecs, read_spec
from flowlearn.core import codec, linear, model_types, training
from flowlearn.core.bandits import ContextualBandit, event_seed
from flowlearn.core.spec import ModelSpec, SpecError

D, K = 3, 4


def listed(**params) -> ContextualBandit:
    return ContextualBandit(D, n_actions=K, **params)


def shared(**params) -> ContextualBandit:
    return ContextualBandit(D, n_action_features=2, **params)


def feedback(bandit: ContextualBandit, n: int, seed: int = 0):
    """A batch of good feedback: rewards in [0, 1] that depend on context and action."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D))
    if bandit.shared:
        actions = rng.normal(size=(n, 2))
        signal = X[:, 0] * actions[:, 0] - X[:, 1] * actions[:, 1]
    else:
        actions = rng.integers(0, K, size=n)
        signal = X[np.arange(n), actions % D] * (1 - 2 * (actions >= D))
    rewards = np.clip(0.5 + 0.3 * signal + 0.1 * rng.normal(size=n), 0.0, 1.0)
    return X, actions, rewards, np.full(n, 0.25)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


# ----------------------------------------------------------------------------- the posterior


@pytest.mark.parametrize("make", [listed, shared])
def test_posterior_is_closed_form_bayesian_linear_regression(make):
    bandit = make(prior_precision=2.0, noise_variance=0.3)
    X, actions, rewards, props = feedback(bandit, 300)
    for s in range(0, 300, 37):
        bandit.learn_many(
            X[s : s + 37], actions[s : s + 37], rewards[s : s + 37], props[s : s + 37]
        )
    ones = np.ones((300, 1))
    if bandit.shared:
        a1 = np.concatenate([actions, ones], axis=1)
        phi = np.einsum("ni,nj->nij", np.concatenate([X, ones], axis=1), a1).reshape(300, -1)
        slot_of = np.zeros(300, dtype=int)
    else:
        phi, slot_of = np.concatenate([X, ones], axis=1), actions
    y = rewards - 0.5  # learnt around the reward range's centre
    for s in range(bandit.n_slots):
        rows = slot_of == s
        A = 2.0 * np.eye(bandit.dim) + phi[rows].T @ phi[rows]
        mean = np.linalg.solve(A, phi[rows].T @ y[rows])
        np.testing.assert_allclose(bandit.posterior.means[s], mean, rtol=1e-9, atol=1e-12)
        F = bandit.posterior.factors[s]
        np.testing.assert_allclose(F.T @ F, 0.3 * np.linalg.inv(A), rtol=1e-9, atol=1e-12)
        assert np.array_equal(F, np.tril(F))
    # The mean reward it predicts is the regression's, plus the centre.
    expected = (0.5 + phi @ bandit.posterior.means.T)[np.arange(300), slot_of]
    np.testing.assert_allclose(bandit.loss_many(X, actions, rewards), (expected - rewards) ** 2)


def test_estimated_noise_variance_is_the_documented_estimate():
    bandit = listed()  # noise_variance 0: estimated
    X, actions, rewards, props = feedback(bandit, 200, seed=3)
    bandit.learn_many(X, actions, rewards, props)
    phi = np.concatenate([X, np.ones((200, 1))], axis=1)
    y = rewards - 0.5
    for s in range(K):
        rows = actions == s
        A = np.eye(D + 1) + phi[rows].T @ phi[rows]
        b = phi[rows].T @ y[rows]
        residual = y[rows] @ y[rows] - b @ np.linalg.solve(A, b)
        dof = rows.sum() - (D + 1) + np.trace(np.linalg.inv(A))
        variance = (2.0 * 0.25 + residual) / (2.0 + dof)
        F = bandit.posterior.factors[s]
        np.testing.assert_allclose(F.T @ F, variance * np.linalg.inv(A), rtol=1e-9)
    # Before any feedback: the largest variance a reward in [0, 1] can have (1/4), prior 1.
    fresh = listed().posterior.factors[0]
    np.testing.assert_allclose(fresh.T @ fresh, 0.25 * np.eye(D + 1))


@pytest.mark.parametrize("make", [listed, shared])
@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, 120), max_size=12), seed=st.integers(0, 2**16))
def test_learning_is_exactly_independent_of_the_cuts(make, cuts, seed):
    X, actions, rewards, props = feedback(make(), 120, seed=seed)
    whole = make().learn_many(X, actions, rewards, props)
    cut = make()
    bounds = [0, *sorted(cuts), 120]
    for a, b in itertools.pairwise(bounds):
        cut.learn_many(X[a:b], actions[a:b], rewards[a:b], props[a:b])
    assert same_bits(cut.weights_vector(), whole.weights_vector())


def test_a_batch_changes_only_the_blocks_of_the_actions_it_touched():
    bandit = listed()
    bandit.learn_many(*feedback(bandit, 50))
    before = bandit.weights_vector()
    X, _, rewards, props = feedback(bandit, 10, seed=1)
    bandit.learn_many(X, np.full(10, 2), rewards, props)
    changed = codec.changed_indices(before, bandit.weights_vector())
    block = before.size // K
    assert changed.size and set(changed // block) == {2}


def test_rollback_restores_what_learning_goes_on_from():
    bandit = listed()
    first, second = feedback(bandit, 40, seed=1), feedback(bandit, 40, seed=2)
    bandit.learn_many(*first)
    version = bandit.weights_vector()
    bandit.learn_many(*second)
    bandit.set_weights_vector(version)  # the trainer's rollback
    bandit.learn_many(*first)
    twin = listed().learn_many(*first).learn_many(*first)
    assert same_bits(bandit.weights_vector(), twin.weights_vector())


# ----------------------------------------------------------------------------- choosing


def trained_listed(**params) -> ContextualBandit:
    bandit = listed(**params)
    return bandit.learn_many(*feedback(bandit, 60, seed=4))


def test_thompson_choices_match_their_reported_propensities():
    """Each choice is drawn from the probabilities it reports: over 4000 seeded choices for
    one context, every action's count is within 4 standard deviations of the sum of its
    reported probabilities (a binomial test per action, fixed seeds), and a chi-square test
    of all of them passes at 0.1%."""
    bandit = trained_listed(propensity_draws=64)
    context = np.array([[0.3, -0.2, 0.1]])
    n = 4000
    choice = bandit.choose_many(np.repeat(context, n, axis=0), seeds=np.arange(n))
    p = choice.probabilities
    assert np.allclose(p.sum(axis=1), 1.0)
    assert same_bits(choice.propensities, p[np.arange(n), choice.actions])
    counts = np.bincount(choice.actions, minlength=K)
    expected, spread = p.sum(axis=0), np.sqrt((p * (1 - p)).sum(axis=0))
    assert (np.abs(counts - expected) <= 4 * spread + 1e-9).all(), (counts, expected)
    seen = expected > 5
    chi2 = (((counts - expected) ** 2)[seen] / expected[seen]).sum()
    assert chi2 < 16.27, chi2  # chi-square, 3 degrees of freedom, p = 0.001
    # The reported shares estimate Thompson's probabilities: their mean is within a few
    # standard errors of a 10^5-draw estimate.
    big = trained_listed(propensity_draws=100_000, min_propensity=1e-6).choose_many(
        context, seeds=[123]
    )
    se = np.sqrt(big.probabilities[0] * (1 - big.probabilities[0]) / 64 / n) + 1e-3
    assert (np.abs(p.mean(axis=0) - big.probabilities[0]) <= 5 * se).all()


def test_the_policies_report_their_closed_form_propensities():
    X = np.array([[0.5, 0.5, 0.5]])
    # An untrained LinUCB sees K tied actions: split evenly.
    assert np.array_equal(
        listed(policy="linucb").choose_many(X, seeds=[1]).probabilities, [[0.25] * K]
    )
    greedy = trained_listed(policy="epsilon_greedy", epsilon=0.2)
    best = int(greedy.predict_many(X)[0])
    probs = greedy.choose_many(X, seeds=[5]).probabilities[0]
    assert probs[best] == pytest.approx(0.8 + 0.2 / K)
    assert np.allclose(np.delete(probs, best), 0.2 / K)
    ucb = trained_listed(policy="linucb", epsilon=0.1)
    mean = ucb.mean_rewards(X)[0]
    probs = ucb.choose_many(X, seeds=[5]).probabilities[0]
    assert np.isclose(probs.max(), 0.9 + 0.1 / K) and np.isclose(probs.min(), 0.1 / K)
    assert mean.shape == (K,)


@pytest.mark.parametrize("policy", ["thompson", "linucb", "epsilon_greedy"])
def test_a_choice_is_reproducible_from_its_seed_whatever_the_batch(policy):
    bandit = trained_listed(policy=policy, epsilon=0.1)
    X = np.random.default_rng(0).normal(size=(20, D))
    seeds = np.array([event_seed(f"event-{i}", bandit.seed) for i in range(20)])
    together = bandit.choose_many(X, seeds=seeds)
    for i in (0, 7, 19):
        alone = bandit.choose_many(X[i : i + 1], seeds=seeds[i : i + 1])
        assert same_bits(alone.probabilities[0], together.probabilities[i])
        assert alone.actions[0] == together.actions[i]


def test_event_seed_is_a_stable_hash():
    # Pinned: a predictor and a later replay of the log must derive the same seed.
    assert event_seed("e-1", 0) == event_seed("e-1", 0)
    assert event_seed("e-1", 0) != event_seed("e-1", 1)
    assert event_seed("abc", 7) == 695294504668620481


@pytest.mark.parametrize("make", [listed, shared])
def test_the_served_posterior_chooses_as_the_trainer_bit_for_bit(make):
    """A replica rebuilt from the published spec and the weights bytes (a snapshot, then
    a delta) chooses exactly as the trainer does: same probabilities, same actions."""
    bandit = make(policy="thompson", epsilon=0.05)
    X, actions, rewards, props = feedback(bandit, 80)
    bandit.learn_many(X[:40], actions[:40], rewards[:40], props[:40])
    replica = codec.decode_array(codec.encode_array(bandit.weights_vector()))
    before = bandit.weights_vector()
    bandit.learn_many(X[40:], actions[40:], rewards[40:], props[40:])
    codec.apply_delta(
        replica, codec.decode_delta(codec.make_delta(before, bandit.weights_vector()))
    )
    spec = training.published_spec(bandit, {"type": "contextual_bandit"})
    served = model_types.from_spec(json.loads(spec), replica)
    assert isinstance(served, ContextualBandit)
    contexts = np.random.default_rng(5).normal(size=(30, D))
    candidates = (np.random.default_rng(6).normal(size=(30, 6, 2)),) if bandit.shared else ()
    seeds = np.arange(30) * 7919
    mine = bandit.choose_many(contexts, *candidates, seeds=seeds)
    theirs = served.choose_many(contexts, *candidates, seeds=seeds)
    for a, b in zip(mine, theirs, strict=True):
        assert same_bits(a, b)
    assert same_bits(served.posterior.factors, bandit.posterior.factors)


def test_thompson_learns_the_best_action():
    rng = np.random.default_rng(11)
    bandit = listed()
    means = np.array([0.2, 0.5, 0.8, 0.4])
    for _ in range(40):
        X = rng.normal(size=(25, D))
        choice = bandit.choose_many(X, rng=rng)
        rewards = (rng.random(25) < means[choice.actions]).astype(float)
        bandit.learn_many(X, choice.actions, rewards, choice.propensities)
    late = bandit.choose_many(rng.normal(size=(200, D)), rng=rng)
    assert (late.actions == 2).mean() > 0.8


# ----------------------------------------------------------------------------- feedback


def test_bad_feedback_rows_are_named_with_a_reason():
    bandit = listed(reward_range=(0.0, 10.0), min_propensity=0.002)
    X = np.zeros((8, D))
    X[1, 2] = np.nan
    actions = np.array([0, 1, 4, 1.5, 2, 3, 0, 1])
    rewards = np.array([1.0, 1.0, 1.0, 1.0, np.inf, 11.0, 5.0, 5.0])
    props = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.001, 1.5])
    problems = bandit.feedback_problems(X, actions, rewards, props)
    assert [(p.row, p.reason) for p in problems] == [
        (1, "bad_context"),
        (2, "bad_action"),
        (3, "bad_action"),
        (4, "bad_reward"),
        (5, "reward_out_of_range"),
        (6, "low_propensity"),
        (7, "bad_propensity"),
    ]
    assert "outside [0, 10]" in problems[4].detail
    assert "below min_propensity 0.002" in problems[5].detail
    with pytest.raises(ValueError, match="NaN or infinity"):  # as any model's learn_many
        bandit.learn_many(X, actions, rewards, props)
    with pytest.raises(
        ValueError, match=r"row 2: bad_action: the action must be an index in 0\.\.3"
    ):
        bandit.learn_many(np.zeros((8, D)), actions, rewards, props)
    good = [0]
    bandit.learn_many(X[good], actions[good], rewards[good], props[good])  # the rest is fine
    with pytest.raises(ValueError, match=r"propensities must have shape \(8,\)"):
        bandit.feedback_problems(X, actions, rewards, props[:3])


def test_action_features_are_checked_row_by_row():
    bandit = shared()
    X, actions, rewards, props = feedback(bandit, 4)
    actions[2, 1] = np.nan
    assert [(p.row, p.reason) for p in bandit.feedback_problems(X, actions, rewards, props)] == [
        (2, "bad_action")
    ]
    with pytest.raises(ValueError, match="candidates"):
        bandit.choose_many(X, seeds=np.arange(4))


# ----------------------------------------------------------------------------- the spec


def test_spec_fields_build_the_bandit_and_bad_ones_are_named():
    spec = ModelSpec(type="contextual_bandit", n_features=3, n_actions=4, policy="linucb")
    spec.validate("m")
    assert model_types.model_type(spec.type).bandit
    with pytest.raises(SpecError, match=r"m\.min_propensity: .*1/propensity_draws"):
        ModelSpec(type="contextual_bandit", n_actions=4, min_propensity=0.01).validate("m")
    with pytest.raises(SpecError, match=r"m\.learning_rate: a contextual_bandit model"):
        ModelSpec(type="contextual_bandit", n_actions=4, learning_rate=0.1).validate("m")
    with pytest.raises(SpecError, match=r"m\.policy: a softmax model \(linear\) has no policy"):
        ModelSpec(type="softmax", n_classes=3, policy="linucb").validate("m")
    table = {"type": "contextual_bandit", "n_features": 3, "n_actions": 2, "reward_range": [-1, 5]}
    assert read_spec(table, "models.m").reward_range == (-1.0, 5.0)
    with pytest.raises(ConfigError, match=r"models\.m\.reward_range: expected a list of 2"):
        read_spec({**table, "reward_range": [1]}, "models.m")


@pytest.mark.parametrize("form", [{"n_actions": 3}, {"n_action_features": 2}])
def test_the_trainer_learns_from_feedback_rows_and_serves_the_same_choices(form):
    """A bandit's samples reach the trainer as feedback rows (context, action, propensity;
    the label is the reward): trained through the job's batch cuts behind the feature
    pipeline, published, and rebuilt from the published spec and weights, it chooses what
    the trainer's model chooses, bit for bit."""
    spec = json.loads(
        ModelSpecs(load_settings(env={})).runtime_entry(
            {"type": "contextual_bandit", "n_features": 3, **form}
        )
    )
    trainer = training.ModelTrainer.create("b", spec)
    rng = np.random.default_rng(3)
    n = 300
    X = rng.normal(size=(n, 3)) * [1.0, 10.0, 100.0]
    if "n_actions" in form:
        actions = rng.integers(0, 3, n).astype(np.float64)[:, None]
        rewards = (actions[:, 0] == (X[:, 0] > 0)).astype(np.float64)
    else:
        actions = rng.normal(size=(n, 2))
        rewards = ((actions[:, 0] * X[:, 0]) > 0).astype(np.float64)
    rows = np.column_stack([X, actions, np.full(n, 0.5)])
    assert trainer.model.sample_width == rows.shape[1]
    results = trainer.train_samples(rows, rewards)
    assert all(r.rejected is None for r in results)
    assert trainer.samples_applied == n
    served = model_types.from_spec(
        json.loads(trainer.published_spec), trainer.model.weights_vector()
    )
    seeds = np.array([event_seed(f"e{i}") for i in range(20)])
    candidates = None if "n_actions" in form else rng.normal(size=(20, 4, 2))
    ours = trainer.model.choose_many(X[:20], candidates, seeds=seeds)
    theirs = served.choose_many(X[:20], candidates, seeds=seeds)
    for a, b in zip(ours, theirs, strict=True):
        assert same_bits(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    # The reward model learnt something: its loss fell.
    assert np.mean(results[-1].losses) < np.mean(results[0].losses)
    with pytest.raises(ValueError, match=r"feedback rows must have shape \(n, "):
        trainer.model.learn_many(X, rewards)


def test_state_round_trips_through_the_codec():
    bandit = trained_listed(policy="linucb", alpha=0.5)
    restored = linear.from_bytes(linear.to_bytes(bandit))
    assert restored.spec() == bandit.spec()
    assert same_bits(restored.weights_vector(), bandit.weights_vector())
