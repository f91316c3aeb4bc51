"""``flowlearn report`` for a contextual bandit: off-policy evaluation of its logged choices.

A bandit's report reads what a predicting model's does (:func:`flowlearn.evaluation.recorded.
read_recorded`): its choices on ``fl.events`` (``features``: the context, ``action``: an
index or the chosen action's features, ``propensity``, ``score``: every candidate's
probability) and its rewards on ``fl.labels`` (``label``), joined on ``event_id`` (the first
event and the first reward of an id count; a choice without a reward is *unrewarded* and
left out). From the rewarded choices, with :mod:`flowlearn.evaluation.off_policy`:

- the logged policy's average reward (measured), with its interval;
- IPS, SNIPS and DR estimates of the **uniform** policy and of the **greedy** policy of a
  cross-fitted reward model (a ridge regression per action on the standardised contexts,
  each fold predicted by the model of the others), with their intervals and largest
  importance weight.

With action features the log keeps each choice's number of candidates (its ``score``) but
not their features: the uniform policy gets IPS and SNIPS (its probability of the logged
action is ``1/m``), and DR and the greedy policy are not evaluated; so too with contexts
of more than :data:`MAX_REWARD_MODEL_FEATURES` features (hashed ones, say).

It writes ``summary.json``, ``index.html`` and ``reward.png`` (cumulative reward of the
logged choices over time, and the average reward per window of choices), plus
``regret.png`` when every rewarded choice carries the optimum's expected reward
(``optimal_reward`` on the event or the reward record: simulations know it).
docs/bandits.md ("In flowlearn report") explains how to read it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from flowlearn.core.features import FeatureError, vectorize
from flowlearn.core.spec import ModelSpec
from flowlearn.evaluation import off_policy as ope
from flowlearn.evaluation.recorded import Recorded
from flowlearn.evaluation.report import (
    _CSS,
    _figure,
    _img,
    _jsonable,
    _no_nan,
    _num,
    _save,
    _table,
    esc,
    time_axis,
)

__all__ = [
    "BANDIT_TYPE",
    "BanditEvaluation",
    "BanditLog",
    "BanditReportFiles",
    "PolicyResult",
    "bandit_log",
    "evaluate_log",
    "render",
]

#: The model type whose report this is.
BANDIT_TYPE = "contextual_bandit"
#: The intervals' confidence level.
LEVEL = 0.95
ESTIMATORS = ("ips", "snips", "dr")
#: Why the candidates' policies cannot be evaluated with action features.
NO_CANDIDATES = "not evaluated: needs the candidates' features, which the log does not keep"
#: Contexts wider than this get no reward model (a ridge regression solves a (d+1)² system
#: per action and fold, and the contexts would be held dense: hashed features are wide).
MAX_REWARD_MODEL_FEATURES = 256
TOO_WIDE = (
    f"not evaluated: the reward model takes contexts of at most {MAX_REWARD_MODEL_FEATURES} "
    "features"
)


@dataclass
class BanditLog:
    """A bandit's rewarded choices in event-time order, and what was left out."""

    model_id: str
    spec: ModelSpec
    source: str
    #: ``(n,)`` event time (ms) of each rewarded choice.
    t: np.ndarray
    #: ``(n, n_features)`` contexts.
    contexts: np.ndarray
    #: ``(n,)`` the action's index (listed actions), or -1 (action features).
    actions: np.ndarray
    rewards: np.ndarray
    propensities: np.ndarray
    #: ``(n,)`` candidates of each choice (``len(score)``; 0 when the event lacks it).
    candidates: np.ndarray
    #: ``(n,)`` the optimum's expected reward, or None unless every choice carries it.
    optimal: np.ndarray | None
    #: events, choices, rewarded, unrewarded, and the reasons rows were left out.
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)

    @property
    def listed(self) -> bool:
        return self.spec.n_actions > 0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _context(features: Any, spec: Mapping[str, Any]) -> np.ndarray | None:
    try:
        return vectorize([features], spec)[0]
    except FeatureError:
        return None


def bandit_log(recorded: Recorded) -> BanditLog:
    """Join the choices on ``fl.events`` with the rewards on ``fl.labels``.

    A choice is an event with ``action`` and ``propensity``; one is left out, counted by
    reason, when its context does not read as the spec says (``bad_context``), its action
    is not one of the spec's (``bad_action``), its propensity is not in (0, 1]
    (``bad_propensity``) or its reward is not a finite number (``bad_reward``).
    """
    spec = recorded.spec
    spec_dict = spec.as_dict()
    first_reward: dict[str, Mapping[str, Any]] = {}
    for record in recorded.labels:
        first_reward.setdefault(str(record.get("event_id")), record)
    counts = dict.fromkeys(
        (
            "events",
            "choices",
            "rewarded",
            "unrewarded",
            "not_a_choice",
            "duplicate_event",
            "bad_context",
            "bad_action",
            "bad_propensity",
            "bad_reward",
        ),
        0,
    )
    counts["rewards"] = len(recorded.labels)
    rows: list[tuple[float, np.ndarray, int, float, float, int, float | None]] = []
    # Too wide a context is not read at all: it is of no use (see evaluate_log).
    wide = np.empty(0) if spec.n_features > MAX_REWARD_MODEL_FEATURES else None
    seen: set[str] = set()
    for ev in recorded.events:
        counts["events"] += 1
        if "action" not in ev or "propensity" not in ev:
            counts["not_a_choice"] += 1
            continue
        event_id = str(ev.get("event_id"))
        if event_id in seen:
            counts["duplicate_event"] += 1
            continue
        seen.add(event_id)
        counts["choices"] += 1
        reward_record = first_reward.get(event_id)
        if reward_record is None:
            counts["unrewarded"] += 1
            continue
        context = _context(ev.get("features"), spec_dict) if wide is None else wide
        action = ev.get("action")
        propensity = _number(ev.get("propensity"))
        reward = _number(reward_record.get("label"))
        if context is None:
            counts["bad_context"] += 1
            continue
        index = _number(action)
        if spec.n_actions > 0:
            ok = index is not None and index == int(index) and 0 <= index < spec.n_actions
        else:
            ok = (
                isinstance(action, list)
                and len(action) == spec.n_action_features
                and all(_number(v) is not None for v in action)
            )
        if not ok:
            counts["bad_action"] += 1
            continue
        if propensity is None or not 0.0 < propensity <= 1.0:
            counts["bad_propensity"] += 1
            continue
        if reward is None:
            counts["bad_reward"] += 1
            continue
        score = ev.get("score")
        m = len(score) if isinstance(score, list) else 0
        optimal = _number(ev.get("optimal_reward", reward_record.get("optimal_reward")))
        ts = _number(ev.get("ts")) or 0.0
        listed_index = int(index) if index is not None else -1
        rows.append((ts, context, listed_index, reward, propensity, m, optimal))
    counts["rewarded"] = len(rows)
    rows.sort(key=lambda r: r[0])
    n, d = len(rows), spec.n_features if wide is None else 0
    contexts = np.array([r[1] for r in rows], dtype=np.float64).reshape(n, d)
    notes = list(recorded.notes)
    if wide is not None:
        notes.append(f"contexts of {spec.n_features} features: not read ({TOO_WIDE})")
    missing = ~np.isfinite(contexts)
    if missing.any():
        # Imputed features arrive as NaN (the job's feature pipeline fills them).
        known = np.where(missing, 0.0, contexts)
        means = known.sum(axis=0) / np.maximum(1, (~missing).sum(axis=0))
        contexts = np.where(missing, means[None, :], contexts)
        notes.append(
            f"{int(missing.any(axis=1).sum())} context(s) had missing features: "
            "filled with the feature's mean for the reward model"
        )
    optima = [r[6] for r in rows]
    return BanditLog(
        recorded.model_id,
        spec,
        recorded.source,
        t=np.array([r[0] for r in rows], dtype=np.float64),
        contexts=contexts,
        actions=np.array([r[2] for r in rows], dtype=np.int64),
        rewards=np.array([r[3] for r in rows], dtype=np.float64),
        propensities=np.array([r[4] for r in rows], dtype=np.float64),
        candidates=np.array([r[5] for r in rows], dtype=np.int64),
        optimal=np.array(optima, dtype=np.float64)
        if n and all(o is not None for o in optima)
        else None,
        counts=counts,
        notes=notes,
    )


@dataclass(frozen=True)
class PolicyResult:
    """A target policy's estimates; an estimator it lacks is ``not_evaluated``'s reason."""

    name: str
    description: str
    estimates: dict[str, ope.Estimate]
    not_evaluated: str = ""
    #: ``(n, K)``: its probability of each action in each logged context, when listed.
    probabilities: np.ndarray | None = None


@dataclass(frozen=True)
class BanditEvaluation:
    logged: ope.Estimate
    policies: tuple[PolicyResult, ...]
    level: float


def _standardised(X: np.ndarray) -> np.ndarray:
    """Each feature centred and scaled (the ridge penalty treats coefficients alike)."""
    sd = X.std(axis=0)
    return (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def evaluate_log(log: BanditLog, level: float = LEVEL) -> BanditEvaluation:
    """The logged policy's average reward, and the uniform and greedy policies' estimates."""
    r, p = log.rewards, log.propensities
    n = len(r)
    uniform = "uniform: every candidate action alike"
    greedy = "greedy: the best action of a cross-fitted reward model (ridge per action)"
    if n == 0:
        return BanditEvaluation(
            ope.logged_value(r, level),
            (
                PolicyResult("uniform", uniform, {}, "not evaluated: no rewarded choice"),
                PolicyResult("greedy", greedy, {}, "not evaluated: no rewarded choice"),
            ),
            level,
        )
    no_model = NO_CANDIDATES if not log.listed else TOO_WIDE if not log.contexts.shape[1] else ""
    if no_model:
        policies = [PolicyResult("greedy", greedy, {}, no_model)]
        m = log.candidates if not log.listed else np.full(n, log.spec.n_actions)
        if (m > 0).all():
            target = 1.0 / m
            estimates = {
                "ips": ope.ips(r, p, target, level),
                "snips": ope.snips(r, p, target, level),
            }
            policies.insert(0, PolicyResult("uniform", uniform, estimates, "DR: " + no_model))
        else:
            why = "not evaluated: some events lack the candidates' probabilities (score)"
            policies.insert(0, PolicyResult("uniform", uniform, {}, why))
        return BanditEvaluation(ope.logged_value(r, level), tuple(policies), level)
    k = log.spec.n_actions
    q = ope.cross_fitted_rewards(_standardised(log.contexts), log.actions, r, k)
    targets = {"uniform": ope.uniform_policy(n, k), "greedy": ope.greedy_policy(q)}
    logged, values = ope.evaluate(log.contexts, log.actions, r, p, targets, q, level)
    descriptions = {"uniform": uniform, "greedy": greedy}
    return BanditEvaluation(
        logged,
        tuple(
            PolicyResult(name, descriptions[name], _estimates(values[name]), "", targets[name])
            for name in targets
        ),
        level,
    )


def _estimates(value: ope.PolicyValue) -> dict[str, ope.Estimate]:
    return {"ips": value.ips, "snips": value.snips, "dr": value.dr}


# ---------------------------------------------------------------------------- plots


def _times(t: np.ndarray) -> list[datetime]:
    return [datetime.fromtimestamp(v / 1000.0) for v in t]


def _reward_plot(log: BanditLog, ev: BanditEvaluation, window: int, path: Path) -> Path | None:
    if not len(log.rewards):
        return None
    fig = _figure(10.0, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = _times(log.t)
    top.plot(x, np.cumsum(log.rewards), color="#1f77b4", label="logged choices")
    top.set_ylabel("cumulative reward")
    top.set_title(f"cumulative reward of the {len(log.rewards)} rewarded choices")
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="best")
    starts = range(0, len(log.rewards), window)
    ends = [min(s + window, len(log.rewards)) for s in starts]
    means = [float(log.rewards[s:e].mean()) for s, e in zip(starts, ends, strict=True)]
    bottom.plot(
        _times(log.t[[e - 1 for e in ends]]), means, "-o", ms=3, color="#1f77b4", label="logged"
    )
    bottom.axhline(ev.logged.value, color="#555555", ls="--", lw=1, label="logged, overall")
    for policy, color in zip(ev.policies, ("#2ca02c", "#ff7f0e"), strict=False):
        best = policy.estimates.get("dr") or policy.estimates.get("snips")
        if best is not None and math.isfinite(best.value):
            bottom.axhline(
                best.value, color=color, ls=":", lw=1.2, label=f"{policy.name} (estimated)"
            )
    bottom.set_ylabel("average reward")
    bottom.set_title(f"average reward per window of {window} choices")
    bottom.set_xlabel("time")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8, loc="best")
    time_axis(bottom)
    return _save(fig, path)


def _regret_plot(log: BanditLog, path: Path) -> Path | None:
    if log.optimal is None:
        return None
    fig = _figure(10.0, 3.5)
    ax = fig.add_subplot()
    ax.plot(_times(log.t), np.cumsum(log.optimal - log.rewards), color="#d62728")
    ax.set_title("cumulative regret: the optimum's expected reward minus the reward earned")
    ax.set_ylabel("regret")
    ax.set_xlabel("time")
    ax.grid(alpha=0.3)
    time_axis(ax)
    return _save(fig, path)


# ---------------------------------------------------------------------------- files


@dataclass(frozen=True)
class BanditReportFiles:
    index: Path
    pngs: tuple[Path, ...]
    summary: Path
    #: What the CLI prints.
    lines: tuple[str, ...]


def _interval(e: ope.Estimate) -> str:
    return f"{_num(e.value)} [{_num(e.low)}, {_num(e.high)}]"


def _summary(log: BanditLog, ev: BanditEvaluation, window: int) -> dict[str, Any]:
    return {
        "model_id": log.model_id,
        "type": BANDIT_TYPE,
        "source": log.source,
        "policy": log.spec.policy,
        "n_actions": log.spec.n_actions,
        "n_action_features": log.spec.n_action_features,
        "level": ev.level,
        "window": window,
        "counts": log.counts,
        "logged": {k: v for k, v in asdict(ev.logged).items() if k != "max_weight"},
        "policies": {
            p.name: {
                "description": p.description,
                **{name: asdict(e) for name, e in p.estimates.items()},
                **({"not_evaluated": p.not_evaluated} if p.not_evaluated else {}),
            }
            for p in ev.policies
        },
        "regret": None if log.optimal is None else float((log.optimal - log.rewards).sum()),
        "notes": log.notes,
    }


def _lines(log: BanditLog, ev: BanditEvaluation) -> tuple[str, ...]:
    c = log.counts
    out = [
        f"{c['choices']} choices, {c['rewarded']} rewarded and evaluated, "
        f"{c['unrewarded']} unrewarded",
        f"logged policy: average reward {_interval(ev.logged)}",
    ]
    for p in ev.policies:
        best = p.estimates.get("dr") or p.estimates.get("snips")
        if best is None:
            out.append(f"{p.name}: {p.not_evaluated}")
        else:
            name = "DR" if "dr" in p.estimates else "SNIPS"
            out.append(f"{p.name}: {name} {_interval(best)}")
    return tuple(out)


_HOW_TO_READ = (
    "The logged policy's average reward is measured; the others are estimates of what each "
    "policy would have earned on the same contexts, from the logged propensities, with "
    "{level:.0%} intervals. A policy whose interval lies above the logged average would have "
    "earned more. Read DR first; IPS and SNIPS far apart, or a large max weight, mean the "
    "policy goes where the log seldom went, and the log cannot say much about it. How to "
    "read it in full: docs/bandits.md, section Off-policy evaluation."
)


def render(log: BanditLog, out_dir: Path, window: int = 500) -> BanditReportFiles:
    """Evaluate ``log`` and write the report into ``out_dir`` (created)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ev = evaluate_log(log)
    reward_png = _reward_plot(log, ev, window, out_dir / "reward.png")
    regret_png = _regret_plot(log, out_dir / "regret.png")
    c = log.counts
    left_out = {k: v for k, v in c.items() if k.startswith(("bad_", "not_", "dup")) and v}
    body = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>flowlearn bandit evaluation: {esc(log.model_id)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Off-policy evaluation of bandit <code>{esc(log.model_id)}</code></h1>",
        f"<p class='muted'>{esc(log.source)}. Policy {esc(log.spec.policy)}, "
        + (
            f"{log.spec.n_actions} listed actions"
            if log.listed
            else f"actions given by {log.spec.n_action_features} features"
        )
        + ".</p>",
    ]
    body += [f"<p class='muted'>{esc(n)}</p>" for n in log.notes]
    body.append(
        f"<p>{c['events']} events, {c['choices']} choices, {c['rewards']} rewards: "
        f"{c['rewarded']} choices rewarded and evaluated, {c['unrewarded']} without a reward "
        "(not used)"
        + ("; left out: " + ", ".join(f"{k} {v}" for k, v in left_out.items()) if left_out else "")
        + ".</p>"
    )
    body.append("<h2>Policy values</h2>")
    body.append(f"<p>{esc(_HOW_TO_READ.format(level=ev.level))}</p>")
    rows = [["logged policy", "measured", _num(ev.logged.value), *_bounds(ev.logged), "1", ""]]
    for p in ev.policies:
        for name in ESTIMATORS:
            e = p.estimates.get(name)
            if e is None:
                rows.append([p.description, name.upper(), "", "", "", "", p.not_evaluated])
            else:
                rows.append(
                    [
                        p.description,
                        name.upper(),
                        _num(e.value),
                        *_bounds(e),
                        _num(e.max_weight, 1),
                        "",
                    ]
                )
    level = f"{ev.level:.0%}"
    body.append(
        _table(
            ["policy", "estimator", "value", f"{level} low", f"{level} high", "max weight", "note"],
            rows,
            left=2,
        )
    )
    body.append("<h2>Reward over time</h2>")
    body.append(_img(reward_png, "cumulative and windowed reward", "no rewarded choice"))
    body.append("<h2>Regret</h2>")
    body.append(
        _img(
            regret_png,
            "cumulative regret",
            "the optimum is unknown (regret needs every rewarded choice to carry "
            "optimal_reward, as a simulation's can)",
        )
    )
    body.append("<p class='muted'>Numbers: summary.json beside this page.</p></body></html>")
    index = out_dir / "index.html"
    index.write_text("\n".join(body), encoding="utf-8")
    summary = out_dir / "summary.json"
    summary.write_text(json.dumps(_no_nan(_summary(log, ev, window)), indent=2, default=_jsonable))
    pngs = tuple(p for p in (reward_png, regret_png) if p is not None)
    return BanditReportFiles(index, pngs, summary, _lines(log, ev))


def _bounds(e: ope.Estimate) -> list[str]:
    return [_num(e.low), _num(e.high)]
