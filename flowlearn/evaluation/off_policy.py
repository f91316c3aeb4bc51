"""Off-policy evaluation: what another policy would have earned, from the feedback a logging
policy collected, its propensities included. Flink-free and network-free.

The log: ``n`` decisions among ``K`` actions: contexts ``x_i``, the action taken ``a_i``, its
reward ``r_i`` and its propensity ``p_i`` (the probability the logging policy gave it). A
*target policy* is a matrix ``π`` (n x K) of the probabilities it would have given each
action in each logged context (:func:`uniform_policy`, :func:`greedy_policy`, a bandit's
``choose_many(...).probabilities``, anything). The estimates of its value (its mean reward):

- **IPS** (inverse propensity scoring): the mean of ``w_i r_i``, ``w_i = π(a_i|x_i) / p_i``.
  Unbiased when every action the target may take had a propensity > 0; its variance grows
  with the weights.
- **SNIPS** (self-normalised IPS): ``Σ w_i r_i / Σ w_i``. Slightly biased, often much less
  variable; it is invariant to a constant added to the rewards.
- **DR** (doubly robust): ``mean(Σ_a π(a|x_i) q(x_i, a) + w_i (r_i - q(x_i, a_i)))`` with a
  reward model ``q``: unbiased when the propensities are right, whatever ``q``, and of a
  smaller variance the better ``q`` predicts. By default ``q`` is
  :func:`cross_fitted_rewards`: a ridge regression per action, each fold of the log
  predicted by the model fitted on the other folds, so no sample's own reward enters its
  prediction (that would bias DR towards the logged rewards). A bandit's own posterior
  mean (``ContextualBandit.mean_rewards``) may be passed instead, taken as it was when
  the decision was made (a posterior that has learnt the sample is no honest model of it).

**Intervals.** Each estimate is a mean of per-sample terms (SNIPS: its influence terms
``w_i (r_i - V) / mean(w)``, the delta method), and its interval is the normal
approximation ``V ± z·sd/√n`` at ``level`` (default 95%); :func:`bootstrap_interval` gives a
percentile bootstrap with a fixed seed where the normal approximation is doubtful (few
samples, heavy weights).

**Reading it.** The logged policy's average reward is measured, not estimated. A target's
interval that lies above it says the target would have earned more on these contexts. IPS
and SNIPS need the target's actions to have been tried: a target that puts its mass where
the logging policy rarely went has heavy weights, wide intervals, and IPS and SNIPS apart
from each other. DR is the one to read first; a DR far from SNIPS points at a bad reward
model or wrong propensities. ``max_weight`` in each estimate shows the largest weight.

>>> rng = np.random.default_rng(0)
>>> n, k = 4000, 3
>>> actions = rng.integers(0, k, n)  # logged uniformly: propensity 1/3
>>> rewards = (rng.random(n) < np.array([0.2, 0.5, 0.8])[actions]).astype(float)
>>> always_2 = np.tile([0.0, 0.0, 1.0], (n, 1))
>>> est = ips(rewards, np.full(n, 1 / k), always_2[np.arange(n), actions])
>>> est.low < 0.8 < est.high
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from flowlearn.core.validation import check_labels, check_matrix, check_vector

__all__ = [
    "Estimate",
    "PolicyValue",
    "bootstrap_interval",
    "cross_fitted_rewards",
    "doubly_robust",
    "evaluate",
    "greedy_policy",
    "ips",
    "logged_value",
    "snips",
    "uniform_policy",
]


@dataclass(frozen=True)
class Estimate:
    """A policy's estimated mean reward, with its ``level`` interval ``[low, high]``."""

    value: float
    low: float
    high: float
    std_error: float
    n: int
    #: The largest importance weight ``π(a_i|x_i) / p_i`` (1 for the logged value).
    max_weight: float = 1.0


@dataclass(frozen=True)
class PolicyValue:
    """The three estimates of one target policy."""

    ips: Estimate
    snips: Estimate
    dr: Estimate


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def _mean_of_terms(
    terms: np.ndarray, level: float, value: float | None = None, max_weight: float = 1.0
) -> Estimate:
    """The normal-approximation estimate of the mean of per-sample ``terms`` (``value``:
    the estimate itself when the terms are influence terms around it)."""
    n = len(terms)
    if n == 0:
        nan = float("nan")
        return Estimate(nan, nan, nan, nan, 0, max_weight)
    centre = float(np.mean(terms)) if value is None else value
    se = float(np.std(terms, ddof=1) / math.sqrt(n)) if n > 1 else float("inf")
    half = _z(level) * se
    return Estimate(centre, centre - half, centre + half, se, n, max_weight)


def _weights(propensities: Any, target: Any, n: int) -> np.ndarray:
    p = check_vector(propensities, n, "propensities")
    t = check_vector(target, n, "target probabilities")
    if n and not ((p > 0).all() and (p <= 1).all()):
        raise ValueError("propensities must be in (0, 1]")
    if n and not ((t >= 0).all() and (t <= 1).all()):
        raise ValueError("target probabilities must be in [0, 1]")
    return t / p


def logged_value(rewards: Any, level: float = 0.95) -> Estimate:
    """The logging policy's average reward (measured), with its interval."""
    return _mean_of_terms(check_vector(rewards, None, "rewards"), level)


def ips(rewards: Any, propensities: Any, target: Any, level: float = 0.95) -> Estimate:
    """IPS estimate; ``target``: ``(n,)`` the target's probability of each logged action."""
    r = check_vector(rewards, None, "rewards")
    w = _weights(propensities, target, len(r))
    return _mean_of_terms(w * r, level, max_weight=float(w.max(initial=0.0)))


def snips(rewards: Any, propensities: Any, target: Any, level: float = 0.95) -> Estimate:
    """Self-normalised IPS, its interval by the delta method."""
    r = check_vector(rewards, None, "rewards")
    w = _weights(propensities, target, len(r))
    if not w.sum() > 0:  # the target never takes a logged action: nothing to say
        nan = float("nan")
        return Estimate(nan, nan, nan, nan, len(r), float(w.max(initial=0.0)))
    value = float((w * r).sum() / w.sum())
    influence = w * (r - value) / w.mean()
    return _mean_of_terms(influence, level, value=value, max_weight=float(w.max()))


def doubly_robust(
    rewards: Any,
    actions: Any,
    propensities: Any,
    target: Any,
    reward_model: Any,
    level: float = 0.95,
) -> Estimate:
    """DR estimate; ``target`` and ``reward_model``: ``(n, K)`` the target's probabilities
    and the predicted reward of every action in every logged context."""
    r = check_vector(rewards, None, "rewards")
    n = len(r)
    pi = np.asarray(target, dtype=np.float64)
    q = np.asarray(reward_model, dtype=np.float64)
    if pi.ndim != 2 or pi.shape[0] != n or q.shape != pi.shape:
        raise ValueError(
            f"target and reward_model must both have shape ({n}, K), got {pi.shape}, {q.shape}"
        )
    a = check_labels(actions, n, pi.shape[1], "actions")
    rows = np.arange(n)
    w = _weights(propensities, pi[rows, a], n)
    terms = (pi * q).sum(axis=1) + w * (r - q[rows, a])
    return _mean_of_terms(terms, level, max_weight=float(w.max(initial=0.0)))


def bootstrap_interval(
    terms: Any,
    statistic: Callable[[np.ndarray], float] = np.mean,
    level: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over the rows of ``terms`` (a vector,
    or a matrix whose rows are resampled whole: SNIPS needs ``w`` and ``w·r`` together),
    with a fixed seed so that a report is reproducible.

    >>> terms = np.random.default_rng(1).normal(size=500)
    >>> low, high = bootstrap_interval(terms)
    >>> bool(low < 0 < high)
    True
    """
    data = np.asarray(terms, dtype=np.float64)
    _z(level)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(data), size=(n_resamples, len(data)))
    values = np.array([statistic(data[i]) for i in idx])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def uniform_policy(n: int, n_actions: int) -> np.ndarray:
    """``(n, K)``: every action with probability ``1/K``."""
    return np.full((n, n_actions), 1.0 / n_actions)


def greedy_policy(reward_model: Any) -> np.ndarray:
    """``(n, K)``: the action of the largest predicted reward (ties split evenly)."""
    q = np.asarray(reward_model, dtype=np.float64)
    top = q == q.max(axis=1, keepdims=True)
    return top / top.sum(axis=1, keepdims=True)


def cross_fitted_rewards(
    contexts: Any,
    actions: Any,
    rewards: Any,
    n_actions: int,
    folds: int = 5,
    l2: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """``(n, K)``: every action's predicted reward in every logged context, by a ridge
    regression per action (on the contexts and an intercept, the intercept not penalised)
    fitted on the other ``folds - 1`` folds (random folds drawn with ``seed``). An action
    never taken outside a fold is predicted by the mean logged reward there."""
    if np.ndim(contexts) != 2:
        raise ValueError(f"contexts must have shape (n, d), got {np.shape(contexts)}")
    X = check_matrix(contexts, np.shape(contexts)[1], "contexts")
    n, d = X.shape
    a = check_labels(actions, n, n_actions, "actions")
    r = check_vector(rewards, n, "rewards")
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    fold = np.random.default_rng(seed).permutation(n) % folds
    Z = np.concatenate([X, np.ones((n, 1))], axis=1)
    penalty = l2 * np.eye(d + 1)
    penalty[d, d] = 0.0
    out = np.empty((n, n_actions))
    for f in range(folds):
        held, train = fold == f, fold != f
        fallback = float(r[train].mean()) if train.any() else 0.0
        for k in range(n_actions):
            rows = train & (a == k)
            if not rows.any():
                out[held, k] = fallback
                continue
            A = Z[rows].T @ Z[rows] + penalty + 1e-9 * np.eye(d + 1)
            coef = np.linalg.solve(A, Z[rows].T @ r[rows])
            out[held, k] = Z[held] @ coef
    return out


def evaluate(
    contexts: Any,
    actions: Any,
    rewards: Any,
    propensities: Any,
    policies: Mapping[str, Any],
    reward_model: Any = None,
    level: float = 0.95,
) -> tuple[Estimate, dict[str, PolicyValue]]:
    """The logged policy's average reward, and IPS, SNIPS and DR estimates of each target
    policy in ``policies`` (name -> ``(n, K)`` probabilities), DR with ``reward_model``
    (``(n, K)``; None: :func:`cross_fitted_rewards`)."""
    r = check_vector(rewards, None, "rewards")
    n = len(r)
    if not policies:
        return logged_value(r, level), {}
    n_actions = np.shape(next(iter(policies.values())))[1]
    a = check_labels(actions, n, n_actions, "actions")
    q = (
        cross_fitted_rewards(contexts, a, r, n_actions)
        if reward_model is None
        else np.asarray(reward_model, dtype=np.float64)
    )
    rows = np.arange(n)
    out = {}
    for name, probs in policies.items():
        pi = np.asarray(probs, dtype=np.float64)
        if pi.shape != (n, n_actions):
            raise ValueError(
                f"policy {name!r}: probabilities of shape {pi.shape}, not {(n, n_actions)}"
            )
        out[name] = PolicyValue(
            ips=ips(r, propensities, pi[rows, a], level),
            snips=snips(r, propensities, pi[rows, a], level),
            dr=doubly_robust(r, a, propensities, pi, q, level),
        )
    return logged_value(r, level), out
