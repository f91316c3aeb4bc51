"""Contextual bandits that keep their uncertainty: Bayesian linear regression of the reward,
and a policy that chooses from its posterior (Thompson sampling, LinUCB, epsilon-greedy).

**Two forms.** With *listed actions* (``n_actions = K``) each action has its own
regression on the context ``x`` (a "disjoint" model): its features are ``[x, 1]``. With
*action features* (``n_action_features = d_a``, the actions given per request, "ADF"),
one regression is shared by all actions, on the crossed features ``vec([x, 1] ⊗ [a, 1])``:
every context feature times every action feature, each of them alone, and the intercept
(crossing is what lets the context change which action is best; concatenated features
would rank the actions alike in every context). A *slot* is one regression: ``K`` of them,
or one.

**The posterior.** Rewards ``r`` (in the declared ``reward_range = [lo, hi]``) are learnt
around the range's centre ``c = (lo + hi) / 2`` (so an untried action is expected to pay
the middle of the range): ``r - c = w·φ + noise``, noise variance ``σ²``, prior ``w ~ N(0,
σ²/λ I)`` (``λ = prior_precision``; the conjugate prior, its covariance in units of the
noise). A slot keeps the precision ``A = λI + Σ φφᵀ`` and ``b = Σ φ (r - c)`` of its
samples; its posterior mean is ``A⁻¹b`` and its covariance ``σ²A⁻¹``. ``noise_variance =
0`` (the default) estimates ``σ²`` per slot from its residuals, a scaled inverse-χ²
estimate that starts from the largest variance a reward in the range can have::

    σ² = (ν₀ (hi - lo)²/4 + Σ(r - c)² - b·A⁻¹b) / (ν₀ + max(0, n - p + λ tr A⁻¹))

with ``ν₀ =`` :data:`NOISE_PRIOR_WEIGHT` pseudo-samples and ``n - p + λ tr A⁻¹`` the
ridge fit's residual degrees of freedom (``Σ(r - c)² - b·A⁻¹b`` is its residual sum of
squares plus the prior's penalty). A number > 0 fixes ``σ²``.

**Learning is exact and cut-independent.** Samples are added one at a time in stream
order (``A_s += φφᵀ``, ``b_s += φ (r - c)`` by ``np.add.at``, which applies repeated
indices sequentially), so the sufficient statistics after a stream are the same bits
however it was cut into batches; the posterior is then derived from them. Propensities are
validated, not used: the likelihood of the rewards does not depend on how the actions were
chosen (the choice depends on the context and the past only), so no importance weights.

**The served vector** holds, per slot, what choosing needs and what learning goes on from:
the posterior mean ``μ`` (p), the factor ``F = σR⁻¹`` (p x p, lower triangular, with ``A =
RRᵀ`` the Cholesky factorisation of the precision, so the covariance is ``FᵀF``), then
``A`` (p x p), ``b`` (p), the sample count and the sum of squared centred rewards. The
factorisation happens once, in the trainer, when a slot learns; a replica gets its bytes
and does only the arithmetic of :func:`choose`, which is the one function that chooses, in
the trainer and the predictor alike: the posterior a predictor samples from is the
trainer's, bit for bit, by construction (no second LAPACK call that another build might
round differently). A rollback restores ``A`` and ``b`` too, so learning goes on from the
restored version exactly. A batch changes only the blocks of the slots it touched: that is
what a delta carries.

**Choosing** (:func:`choose`) is reproducible from one seed per request
(:func:`event_seed` derives it from the event id). Each request's score of each action is
computed alone (elementwise products summed over a contiguous axis), so a choice does not
depend on which other requests share its batch. The propensity reported is the probability
with which the chosen action was chosen:

- **Thompson**: ``propensity_draws`` (M) draws from the posterior; each draw's best action
  wins. The action taken is the winner of one of the M draws picked uniformly, and its
  propensity is its share of wins: exactly the probability of the choice given the draws,
  and an unbiased estimate of the Thompson probability (standard error
  ``sqrt(p(1-p)/M)``, at most 0.031 with M = 256). An action that won no draw had
  probability 0 of being taken (use an ``epsilon`` floor for evaluation that needs
  support everywhere).
- **LinUCB**: the largest ``mean + alpha·sd`` (``sd`` the posterior standard deviation of
  the mean reward, ``sqrt(σ² φᵀA⁻¹φ)``: with ``σ² = 1`` LinUCB's ``alpha·sqrt(xᵀA⁻¹x)``);
  ties are split evenly.
- **epsilon-greedy**: the largest posterior mean (ties split evenly).

With ``epsilon > 0`` every policy is mixed with the uniform one:
``p(a) = (1 - ε) p_policy(a) + ε / m``, ``m`` the candidate actions.

>>> bandit = ContextualBandit(2, n_actions=3, policy="epsilon_greedy", epsilon=0.3)
>>> X = np.array([[1.0, 0.0], [0.0, 1.0]] * 20)
>>> actions = np.array([0, 1] * 20)
>>> _ = bandit.learn_many(X, actions, np.ones(40), np.full(40, 0.5))
>>> choice = bandit.choose_many(np.array([[1.0, 0.0]]), seeds=[7])
>>> choice.probabilities.round(2).tolist()
[[0.8, 0.1, 0.1]]
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np

from flowlearn.core.validation import (
    Arrays,
    Meta,
    Stateful,
    check_array,
    check_matrix,
    check_vector,
)

__all__ = [
    "POLICIES",
    "Choice",
    "ContextualBandit",
    "Policy",
    "Posterior",
    "Reject",
    "choose",
    "event_seed",
]

#: The policies a bandit chooses with.
POLICIES: tuple[str, ...] = ("thompson", "linucb", "epsilon_greedy")
PolicyName = Literal["thompson", "linucb", "epsilon_greedy"]
#: A policy's uniform exploration share when the spec leaves ``epsilon`` unset: VW's
#: default for epsilon-greedy, none for the policies that explore by their uncertainty.
DEFAULT_EPSILON: dict[str, float] = {"thompson": 0.0, "linucb": 0.0, "epsilon_greedy": 0.05}
DEFAULT_ALPHA = 1.0
DEFAULT_PRIOR_PRECISION = 1.0
DEFAULT_PROPENSITY_DRAWS = 256
#: Feedback whose propensity is below this is refused: an inverse propensity weight above
#: 1000 makes an off-policy estimate a lottery. Below 1 / ``propensity_draws`` (Thompson's
#: smallest estimate) so that a bandit's own choices always pass.
DEFAULT_MIN_PROPENSITY = 0.001
#: Pseudo-samples behind the noise variance's starting value when it is estimated.
NOISE_PRIOR_WEIGHT = 2.0


def event_seed(event_id: str, model_seed: int = 0) -> int:
    """The seed of the choice made for ``event_id``: the same in every process (a hash of
    the id, not Python's randomised ``hash``), so a choice can be replayed from its log.

    >>> event_seed("e-1") == event_seed("e-1"), event_seed("e-1") == event_seed("e-2")
    (True, False)
    """
    digest = hashlib.blake2b(f"{int(model_seed)}:{event_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: an int64 array holds them


@dataclass(frozen=True)
class Policy:
    """How a posterior turns into a choice (a bandit's spec fixes it)."""

    name: PolicyName
    #: LinUCB's bonus: standard deviations of the mean reward added to it.
    alpha: float
    #: Share of choices made uniformly at random (on top of the policy's own exploration).
    epsilon: float
    #: Thompson's posterior draws per choice (its propensity is a share of them).
    draws: int


@dataclass(frozen=True)
class Posterior:
    """The served posterior: views into a bandit's weights vector (nothing else)."""

    #: ``(slots, p)``: the posterior mean of each slot's weights.
    means: np.ndarray
    #: ``(slots, p, p)``: ``F`` with covariance ``FᵀF`` (see the module docstring).
    factors: np.ndarray
    #: The reward the weights are learnt around (the reward range's centre).
    center: float
    #: One regression shared by all actions (action features), else one per action.
    shared: bool


class Choice(NamedTuple):
    """What :func:`choose` decided for ``n`` requests among ``m`` candidate actions."""

    #: ``(n,)``: the chosen action's index among the candidates.
    actions: np.ndarray
    #: ``(n,)``: the probability with which it was chosen.
    propensities: np.ndarray
    #: ``(n, m)``: every candidate's probability (each row sums to 1).
    probabilities: np.ndarray


class Reject(NamedTuple):
    """A feedback row that must not be learnt: its index in the batch, a reason code (what
    a dead letter names) and a detail for people."""

    row: int
    reason: str
    detail: str


def score_moments(posterior: Posterior, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate's posterior mean reward ``(n, m)`` and its loadings ``(n, m, p)``
    (``Fφ``: the posterior draw of the reward is ``mean + loadings · z``, ``z ~ N(0, I)``).

    ``features``: ``(n, p)`` contexts (with their 1) for per-action slots, whose candidates
    are the slots; ``(n, m, p)`` crossed candidate features for a shared slot. Products
    are summed over the last (contiguous) axis, so each request's numbers depend on its own
    inputs only, never on the batch around it.
    """
    if posterior.shared:
        phi = features
        mean = (phi * posterior.means[0]).sum(axis=-1)
        loadings = (posterior.factors[0][None, None] * phi[:, :, None, :]).sum(axis=-1)
    else:
        phi = features[:, None, :]
        mean = (phi * posterior.means[None]).sum(axis=-1)
        loadings = (posterior.factors[None] * phi[:, :, None, :]).sum(axis=-1)
    mean += posterior.center
    return mean, loadings


def choose(posterior: Posterior, policy: Policy, features: np.ndarray, seeds: np.ndarray) -> Choice:
    """The choice of ``policy`` on ``posterior`` for each request (``features`` as in
    :func:`score_moments`), each request's randomness from its own seed: the one function
    that chooses, in the trainer and in the predictor.

    A request's generator is used in a fixed order whatever the outcome: the exploration
    coin, the uniform pick, then the policy's own draws.
    """
    mean, loadings = score_moments(posterior, features)
    n, m = mean.shape
    sd = np.sqrt((loadings * loadings).sum(axis=-1))
    eps = policy.epsilon
    actions = np.empty(n, dtype=np.int64)
    probabilities = np.empty((n, m))
    if policy.name == "linucb":
        scores = mean + policy.alpha * sd
    elif policy.name == "epsilon_greedy":
        scores = mean
    for i in range(n):
        rng = np.random.default_rng(int(seeds[i]))
        explore = rng.random() < eps
        uniform_pick = int(rng.integers(m))
        if policy.name == "thompson":
            if posterior.shared:
                z = rng.standard_normal((policy.draws, loadings.shape[-1]))
                draws = mean[i] + (z[:, None, :] * loadings[i][None]).sum(axis=-1)
            else:
                draws = mean[i] + sd[i] * rng.standard_normal((policy.draws, m))
            winners = draws.argmax(axis=1)
            share = np.bincount(winners, minlength=m) / policy.draws
            pick = int(winners[rng.integers(policy.draws)])
        else:
            top = scores[i] == scores[i].max()
            ties = np.flatnonzero(top)
            share = top / len(ties)
            pick = int(ties[rng.integers(len(ties))])
        probabilities[i] = (1.0 - eps) * share + eps / m
        actions[i] = uniform_pick if explore else pick
    return Choice(actions, probabilities[np.arange(n), actions], probabilities)


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


class ContextualBandit(Stateful):
    """A contextual bandit over ``n_features`` context features: ``n_actions`` listed
    actions (a regression each), or actions given per request by ``n_action_features``
    features (one shared regression); see the module docstring.

    Parameters
    ----------
    policy
        ``"thompson"``, ``"linucb"`` or ``"epsilon_greedy"``.
    alpha
        LinUCB's bonus in posterior standard deviations (default 1).
    epsilon
        Uniform exploration share mixed into the policy (None: :data:`DEFAULT_EPSILON`).
    prior_precision
        ``λ``: the prior's precision in units of the noise's (default 1).
    noise_variance
        ``σ²``; 0 (the default) estimates it per slot.
    propensity_draws
        Thompson's posterior draws per choice (default 256).
    reward_range
        ``(lo, hi)``: rewards outside are refused (default (0, 1)).
    min_propensity
        Feedback with a smaller propensity is refused (default 0.001).
    seed
        Mixed into the per-request seeds (:func:`event_seed`).
    """

    _type: ClassVar[str] = "contextual_bandit"

    def __init__(
        self,
        n_features: int,
        n_actions: int = 0,
        n_action_features: int = 0,
        policy: PolicyName = "thompson",
        alpha: float = DEFAULT_ALPHA,
        epsilon: float | None = None,
        prior_precision: float = DEFAULT_PRIOR_PRECISION,
        noise_variance: float = 0.0,
        propensity_draws: int = DEFAULT_PROPENSITY_DRAWS,
        reward_range: Sequence[float] = (0.0, 1.0),
        min_propensity: float = DEFAULT_MIN_PROPENSITY,
        seed: int = 0,
    ) -> None:
        if int(n_features) < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if int(n_actions) < 0 or int(n_action_features) < 0:
            raise ValueError(
                f"n_actions and n_action_features must be >= 0, got {n_actions}, "
                f"{n_action_features}"
            )
        if (int(n_actions) > 0) == (int(n_action_features) > 0):
            raise ValueError(
                "a bandit has listed actions (n_actions >= 2) or action features "
                f"(n_action_features >= 1), one of them; got n_actions={n_actions}, "
                f"n_action_features={n_action_features}"
            )
        if 0 < int(n_actions) < 2:
            raise ValueError(f"n_actions must be >= 2, got {n_actions}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        eps = DEFAULT_EPSILON[policy] if epsilon is None else float(epsilon)
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if not (float(noise_variance) >= 0 and math.isfinite(noise_variance)):
            raise ValueError(f"noise_variance must be >= 0 (0: estimated), got {noise_variance}")
        if int(propensity_draws) < 1:
            raise ValueError(f"propensity_draws must be >= 1, got {propensity_draws}")
        lo, hi = (float(v) for v in reward_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"reward_range must be two finite numbers lo < hi, got {reward_range}")
        if not 0.0 < float(min_propensity) <= 1.0:
            raise ValueError(f"min_propensity must be in (0, 1], got {min_propensity}")
        if policy == "thompson" and float(min_propensity) > 1.0 / int(propensity_draws):
            raise ValueError(
                f"min_propensity {min_propensity:g} is above 1/propensity_draws = "
                f"{1.0 / int(propensity_draws):.3g}, the smallest propensity Thompson sampling "
                "reports: the bandit's own choices would be refused"
            )
        self.n_features = int(n_features)
        self.n_actions = int(n_actions)
        self.n_action_features = int(n_action_features)
        self.policy = Policy(policy, _positive("alpha", alpha), eps, int(propensity_draws))
        self.prior_precision = _positive("prior_precision", prior_precision)
        self.noise_variance = float(noise_variance)
        self.reward_range = (lo, hi)
        self.min_propensity = float(min_propensity)
        self.seed = int(seed)
        #: What the contract of a trained model reads (no gradient steps here).
        self.last_grad_norm = 0.0
        self.clip_grad_norm = None
        self.shared = self.n_action_features > 0
        self.n_slots = 1 if self.shared else self.n_actions
        p = (self.n_features + 1) * (self.n_action_features + 1)
        #: Length of a slot's features.
        self.dim = p
        self._block = 2 * p * p + 2 * p + 2
        self._w = np.zeros(self.n_slots * self._block)
        blocks = self._w.reshape(self.n_slots, self._block)
        ends = np.cumsum([p, p * p, p * p, p, 1, 1])
        # Views into the flat vector, slot by slot (a slot's block is contiguous).
        self._means = blocks[:, : ends[0]]
        self._factors = blocks[:, ends[0] : ends[1]].reshape(self.n_slots, p, p)
        self._precisions = blocks[:, ends[1] : ends[2]].reshape(self.n_slots, p, p)
        self._b = blocks[:, ends[2] : ends[3]]
        self._counts = blocks[:, ends[3]]
        self._sum_sq = blocks[:, ends[4]]
        for view in (self._factors, self._precisions):
            assert np.shares_memory(view, self._w)  # reshape kept the view
        self._precisions[:] = self.prior_precision * np.eye(p)
        self._refresh(np.arange(self.n_slots))

    # ------------------------------------------------------------------ served state

    @property
    def posterior(self) -> Posterior:
        """The posterior as served: views into the weights vector."""
        center = 0.5 * (self.reward_range[0] + self.reward_range[1])
        return Posterior(self._means, self._factors, center, self.shared)

    def weights_vector(self) -> np.ndarray:
        """Flat float64 copy of the served state, slot after slot: mean (p), factor (p x p),
        precision (p x p), b (p), count, sum of squared centred rewards."""
        return self._w.copy()

    def set_weights_vector(self, v: np.ndarray, *, finite: bool = True) -> None:
        """Become a :meth:`weights_vector` (``finite=False``: as it is, as a predictor
        serves a published version). The served mean and factor are taken as they are,
        not derived again: they are the trainer's."""
        if finite:
            self._w[:] = check_vector(v, self._w.size, "weights vector")
            return
        if np.shape(v) != self._w.shape:
            raise ValueError(f"weights vector must have shape {self._w.shape}, got {np.shape(v)}")
        self._w[:] = v

    def spec(self) -> dict[str, Any]:
        """What a server needs besides the weights vector to rebuild the bandit."""
        return {"type": self._type, "classes": None, **self._params()}

    def set_learning_rate(self, lr: float) -> None:
        raise ValueError("a contextual bandit learns in closed form: it has no learning rate")

    # ------------------------------------------------------------------ features

    def _contexts(self, X: np.ndarray) -> np.ndarray:
        return np.concatenate([X, np.ones((len(X), 1))], axis=1)

    def _crossed(self, X: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``vec([x, 1] ⊗ [a, 1])`` of contexts ``(n, d)`` and actions ``(n, ..., d_a)``."""
        x1 = self._contexts(X)
        a1 = np.concatenate([actions, np.ones((*actions.shape[:-1], 1))], axis=-1)
        x1 = x1.reshape(len(X), *([1] * (actions.ndim - 2)), self.n_features + 1)
        return (x1[..., :, None] * a1[..., None, :]).reshape(*actions.shape[:-1], self.dim)

    def _candidates(self, X: np.ndarray, actions: Any) -> np.ndarray:
        """The features :func:`choose` takes for contexts ``X`` and, with action features,
        the candidates ``(n, m, d_a)``."""
        if not self.shared:
            if actions is not None:
                raise ValueError("a bandit with listed actions takes no candidate actions")
            return self._contexts(X)
        if actions is None:
            raise ValueError(
                f"a bandit with action features needs the candidates: (n, m, "
                f"{self.n_action_features}) action features"
            )
        A = np.asarray(actions, dtype=np.float64)
        if A.ndim != 3 or A.shape[0] != len(X) or A.shape[2] != self.n_action_features:
            raise ValueError(
                f"candidate actions must have shape ({len(X)}, m, {self.n_action_features}), "
                f"got {A.shape}"
            )
        if A.shape[1] < 1:
            raise ValueError("at least one candidate action is needed")
        check_matrix(A.reshape(-1, self.n_action_features), self.n_action_features, "actions")
        return self._crossed(X, A)

    # ------------------------------------------------------------------ choosing

    def choose_many(
        self,
        contexts: Any,
        actions: Any = None,
        *,
        seeds: Any = None,
        rng: np.random.Generator | None = None,
    ) -> Choice:
        """The policy's choice for each context (with action features: among its
        candidates, ``(n, m, n_action_features)``), each from its seed (``seeds``, or
        drawn from ``rng``): :func:`choose` on the served posterior."""
        X = check_matrix(contexts, self.n_features, "contexts")
        features = self._candidates(X, actions)
        return choose(self.posterior, self.policy, features, self._seeds(seeds, rng, len(X)))

    @staticmethod
    def _seeds(seeds: Any, rng: np.random.Generator | None, n: int) -> np.ndarray:
        if seeds is None:
            if rng is None:
                raise ValueError("choosing needs seeds (one per request) or a generator")
            return rng.integers(0, 2**63, size=n)
        out = np.asarray(seeds)
        if out.shape != (n,) or (n and (out.dtype.kind not in "iu" or out.min() < 0)):
            raise ValueError(f"seeds must be {n} integers >= 0, got {out.shape} {out.dtype}")
        return out

    def mean_rewards(self, contexts: Any, actions: Any = None) -> np.ndarray:
        """``(n, m)``: each candidate's posterior mean reward."""
        X = check_matrix(contexts, self.n_features, "contexts")
        return score_moments(self.posterior, self._candidates(X, actions))[0]

    def predict_many(self, contexts: Any, actions: Any = None) -> np.ndarray:
        """``(n,)``: the candidate of the largest posterior mean reward (the greedy choice;
        the first of ties)."""
        return self.mean_rewards(contexts, actions).argmax(axis=1)

    # ------------------------------------------------------------------ learning

    def feedback_problems(
        self, contexts: Any, actions: Any, rewards: Any, propensities: Any
    ) -> list[Reject]:
        """Why each bad row of a feedback batch must not be learnt (empty: all good).

        Shapes are checked for the whole batch (a ValueError); values row by row, with
        the reason codes ``bad_context``, ``bad_action``, ``bad_reward``,
        ``reward_out_of_range``, ``bad_propensity`` (not in (0, 1]) and
        ``low_propensity`` (below ``min_propensity``).
        """
        X = np.asarray(contexts, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"contexts must have shape (n, {self.n_features}), got {X.shape}")
        n = len(X)
        r = check_vector_shape(rewards, n, "rewards")
        prop = check_vector_shape(propensities, n, "propensities")
        if self.shared:
            A = np.asarray(actions, dtype=np.float64)
            if A.shape != (n, self.n_action_features):
                raise ValueError(
                    f"actions must have shape ({n}, {self.n_action_features}): the chosen "
                    f"actions' features, got {A.shape}"
                )
            bad_action = ~np.isfinite(A).all(axis=1)
            action_detail = "action features contain NaN or infinity"
        else:
            index = check_vector_shape(actions, n, "actions")
            with np.errstate(invalid="ignore"):
                bad_action = ~((index == np.round(index)) & (index >= 0) & (index < self.n_actions))
            action_detail = f"the action must be an index in 0..{self.n_actions - 1}"
        lo, hi = self.reward_range
        problems: list[Reject] = []
        for i in range(n):
            if not np.isfinite(X[i]).all():
                problems.append(Reject(i, "bad_context", "the context contains NaN or infinity"))
            elif bad_action[i]:
                problems.append(Reject(i, "bad_action", f"{action_detail}, got {actions[i]!r}"))
            elif not math.isfinite(r[i]):
                problems.append(Reject(i, "bad_reward", f"the reward is not finite: {r[i]}"))
            elif not lo <= r[i] <= hi:
                problems.append(
                    Reject(i, "reward_out_of_range", f"reward {r[i]} outside [{lo:g}, {hi:g}]")
                )
            elif not (math.isfinite(prop[i]) and 0.0 < prop[i] <= 1.0):
                problems.append(
                    Reject(i, "bad_propensity", f"propensity {prop[i]} is not in (0, 1]")
                )
            elif prop[i] < self.min_propensity:
                problems.append(
                    Reject(
                        i,
                        "low_propensity",
                        f"propensity {prop[i]:.3g} below min_propensity {self.min_propensity:g}",
                    )
                )
        return problems

    def learn_many(self, contexts: Any, actions: Any, rewards: Any, propensities: Any) -> Any:
        """Add a batch of feedback (the chosen actions: indices, or their features, with
        their rewards and propensities) to the posterior, in order; a batch with any bad
        row raises ValueError naming the first (:meth:`feedback_problems` sorts them out
        beforehand), and an empty batch is a no-op."""
        X = check_matrix(contexts, self.n_features, "contexts")
        problems = self.feedback_problems(X, actions, rewards, propensities)
        if problems:
            first = problems[0]
            raise ValueError(f"row {first.row}: {first.reason}: {first.detail}")
        if len(X) == 0:
            return self
        r = np.asarray(rewards, dtype=np.float64) - self.posterior.center
        if self.shared:
            phi = self._crossed(X, np.asarray(actions, dtype=np.float64))
            slots = np.zeros(len(X), dtype=np.int64)
        else:
            phi = self._contexts(X)
            slots = np.asarray(actions, dtype=np.float64).astype(np.int64)
        # np.add.at applies the rows one at a time in order: the same additions in the same
        # order whatever the batches, so the same bits.
        np.add.at(self._precisions, slots, phi[:, :, None] * phi[:, None, :])
        np.add.at(self._b, slots, phi * r[:, None])
        np.add.at(self._counts, slots, 1.0)
        np.add.at(self._sum_sq, slots, r * r)
        self._refresh(np.unique(slots))
        return self

    def _refresh(self, slots: np.ndarray) -> None:
        """Derive the served mean and factor of ``slots`` from their statistics."""
        lo, hi = self.reward_range
        p = self.dim
        for s in slots:
            chol = np.linalg.cholesky(self._precisions[s])
            inv_chol = np.linalg.inv(chol)  # R⁻¹: A⁻¹ = R⁻ᵀR⁻¹
            mean = inv_chol.T @ (inv_chol @ self._b[s])
            if self.noise_variance > 0:
                variance = self.noise_variance
            else:
                trace_inv = float((inv_chol * inv_chol).sum())
                residual = max(0.0, float(self._sum_sq[s] - self._b[s] @ mean))
                dof = max(0.0, self._counts[s] - p + self.prior_precision * trace_inv)
                prior = NOISE_PRIOR_WEIGHT * (hi - lo) ** 2 / 4.0
                variance = (prior + residual) / (NOISE_PRIOR_WEIGHT + dof)
            self._means[s] = mean
            self._factors[s] = math.sqrt(variance) * np.tril(inv_chol)

    def taken_mean_rewards(self, contexts: Any, actions: Any) -> np.ndarray:
        """``(n,)``: the posterior mean reward of each context's action taken (its index,
        or its features)."""
        X = check_matrix(contexts, self.n_features, "contexts")
        if self.shared:
            A = check_matrix(actions, self.n_action_features, "actions")
            return self.mean_rewards(X, A[:, None, :])[:, 0]
        idx = check_vector(actions, len(X), "actions").astype(np.int64)
        return self.mean_rewards(X)[np.arange(len(X)), idx]

    def loss_many(self, contexts: Any, actions: Any, rewards: Any) -> np.ndarray:
        """Per-sample squared error of the posterior mean reward of the action taken."""
        mean = self.taken_mean_rewards(contexts, actions)
        return (mean - check_vector(rewards, len(mean), "rewards")) ** 2

    # ------------------------------------------------------------------ state

    def _params(self) -> dict[str, Any]:
        return {
            "n_features": self.n_features,
            "n_actions": self.n_actions,
            "n_action_features": self.n_action_features,
            "policy": self.policy.name,
            "alpha": self.policy.alpha,
            "epsilon": self.policy.epsilon,
            "prior_precision": self.prior_precision,
            "noise_variance": self.noise_variance,
            "propensity_draws": self.policy.draws,
            "reward_range": list(self.reward_range),
            "min_propensity": self.min_propensity,
            "seed": self.seed,
        }

    def _state(self) -> tuple[Arrays, Meta]:
        return {"w": self._w}, {}

    def _load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self._w[:] = check_array(arrays, "w", self._w.shape)


def check_vector_shape(v: Any, n: int, name: str) -> np.ndarray:
    """``v`` as a float64 vector of ``n`` values, finite or not (the rows' values are
    judged one by one)."""
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array of shape ({n},): {exc}") from exc
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    return arr
