"""Off-policy estimators on simulated logs whose true values are known."""

from __future__ import annotations

import numpy as np
import pytest

from flowlearn.core.bandits import ContextualBandit
from flowlearn.evaluation import off_policy as ope

K = 3
WEIGHTS = np.array([[0.3, 0.0], [-0.2, 0.3], [0.0, -0.3]])  # mean reward 0.5 + w_a·x


def true_means(X: np.ndarray) -> np.ndarray:
    return 0.5 + X @ WEIGHTS.T


def simulated_log(seed: int, n: int = 2000):
    """Contexts in [-1, 1]², actions logged uniformly at random, Bernoulli rewards."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, 2))
    actions = rng.integers(0, K, size=n)
    rewards = (rng.random(n) < true_means(X)[np.arange(n), actions]).astype(float)
    return X, actions, rewards, np.full(n, 1 / K)


def best_action_policy(X: np.ndarray) -> np.ndarray:
    return ope.greedy_policy(true_means(X))


# The population values of the targets, from a large sample of contexts.
_BIG = np.random.default_rng(99).uniform(-1, 1, size=(1_000_000, 2))
TRUE_BEST = float(true_means(_BIG).max(axis=1).mean())
TRUE_UNIFORM = 0.5


def test_estimates_cover_the_true_values_and_dr_varies_least():
    """Over 60 seeds: each estimator's 95% interval covers the truth in at least 85% of
    the runs, its mean is within 0.01 of it, and DR's spread is below IPS'."""
    values: dict[str, list[float]] = {"ips": [], "snips": [], "dr": []}
    covered = dict.fromkeys(values, 0)
    logged_covered = 0
    for seed in range(60):
        X, actions, rewards, props = simulated_log(seed)
        logged, results = ope.evaluate(
            X,
            actions,
            rewards,
            props,
            {"best": best_action_policy(X), "uniform": ope.uniform_policy(len(X), K)},
        )
        logged_covered += logged.low <= TRUE_UNIFORM <= logged.high
        for name in values:
            est = getattr(results["best"], name)
            values[name].append(est.value)
            covered[name] += est.low <= TRUE_BEST <= est.high
        # The uniform target is the logging policy: every weight is 1, IPS is the mean.
        assert results["uniform"].ips.value == pytest.approx(logged.value)
    assert logged_covered >= 51
    for name, vals in values.items():
        assert covered[name] >= 51, (name, covered[name])
        assert abs(np.mean(vals) - TRUE_BEST) < 0.01, (name, np.mean(vals), TRUE_BEST)
    assert np.std(values["dr"]) < np.std(values["ips"])


def test_snips_interval_is_the_delta_method():
    X, actions, rewards, props = simulated_log(1, n=500)
    target = best_action_policy(X)[np.arange(500), actions]
    est = ope.snips(rewards, props, target)
    w = target / props
    value = (w * rewards).sum() / w.sum()
    se = np.std(w * (rewards - value) / w.mean(), ddof=1) / np.sqrt(500)
    assert est.value == pytest.approx(value)
    assert est.high - est.value == pytest.approx(1.959964 * se, rel=1e-5)
    assert est.max_weight == pytest.approx(3.0)
    low, high = ope.bootstrap_interval(
        np.stack([w * rewards, w], axis=1), lambda m: m[:, 0].sum() / m[:, 1].sum(), seed=3
    )
    assert low < value < high
    assert abs((high - low) - (est.high - est.low)) < 0.3 * (est.high - est.low)


def test_a_bandits_probabilities_and_posterior_are_a_target_and_a_reward_model():
    """The logged propensities of a bandit's own choices evaluate its greedy policy; the
    reward model may be the bandit's posterior mean as it was at decision time."""
    X, actions, rewards, props = simulated_log(5, n=3000)
    bandit = ContextualBandit(2, n_actions=K, policy="thompson", epsilon=0.1)
    bandit.learn_many(X[:1000], actions[:1000], rewards[:1000], props[:1000])
    logs = X[1000:]
    choice = bandit.choose_many(logs, seeds=np.arange(2000))
    rng = np.random.default_rng(6)
    logged_rewards = (rng.random(2000) < true_means(logs)[np.arange(2000), choice.actions]).astype(
        float
    )
    q = bandit.mean_rewards(logs)
    logged, results = ope.evaluate(
        logs,
        choice.actions,
        logged_rewards,
        choice.propensities,
        {"greedy": ope.greedy_policy(q)},
        reward_model=q,
    )
    truth = float(true_means(logs)[np.arange(2000), ope.greedy_policy(q).argmax(axis=1)].mean())
    dr = results["greedy"].dr
    assert dr.low <= truth <= dr.high
    assert logged.value < truth  # the greedy policy explores less than the logging one


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"propensities must be in \(0, 1\]"):
        ope.ips([1.0], [0.0], [1.0])
    with pytest.raises(ValueError, match="level"):
        ope.logged_value([1.0, 0.0], level=1.5)
    with pytest.raises(ValueError, match=r"shape \(2, K\)"):
        ope.doubly_robust([1.0, 0.0], [0, 1], [0.5, 0.5], np.ones((2, 2)), np.ones((3, 2)))
    assert np.isnan(ope.snips([1.0], [0.5], [0.0]).value)
