"""flowlearn.evaluation.bandit_report: a bandit's logged choices joined with their rewards,
off-policy estimates that cover the truth on a simulated log, the files `render` writes, and
`flowlearn report` taking that path for a contextual bandit."""

import argparse
import json
from html.parser import HTMLParser

import numpy as np
import orjson
import pytest
from matplotlib.image import imread

from flowlearn.cli.main import cmd_report
from flowlearn.conf import load_settings
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.evaluation import bandit_report, recorded
from flowlearn.evaluation.bandit_report import NO_CANDIDATES, bandit_log, evaluate_log, render
from flowlearn.evaluation.recorded import Recorded
from flowlearn.serving.prediction_log import Batch
from tests.unit.test_evaluation import FakeConsumer

K = 3
T0 = 1_765_000_000_000
LISTED = {"type": "contextual_bandit", "n_features": 2, "n_actions": K, "policy": "thompson"}


def mean_rewards(X):
    """Each action's expected reward in each context: linear in the first feature."""
    x = X[:, 0]
    return np.stack([np.full(len(x), 0.3), 0.5 + 0.4 * x, 0.5 - 0.4 * x], axis=1)


def simulated_log(n=4000, seed=0, model_id="offers", unrewarded=50, optimal=False):
    """Records as the predictor writes them for a uniform logging policy over K listed
    actions, with Bernoulli rewards of known means on fl.labels (a few events without)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, 2))
    actions = rng.integers(0, K, n)
    means = mean_rewards(X)
    rewards = (rng.random(n) < means[np.arange(n), actions]).astype(float)
    ids = [f"e{i}" for i in range(n)]
    batch = Batch(
        model_id,
        T0,
        ids,
        X.tolist(),
        [[1 / K] * K] * n,
        4,
        1,
        "online",
        None,
        [{"action": int(a), "propensity": 1 / K} for a in actions],
    )
    events = [orjson.loads(r) for r in batch.records()]
    for i, ev in enumerate(events):
        ev["ts"] = T0 + 10 * i
        if optimal:
            ev["optimal_reward"] = float(means[i].max())
    labels = [
        {"model_id": model_id, "event_id": ids[i], "ts": T0 + 10 * i + 500, "label": rewards[i]}
        for i in range(n - unrewarded)
    ]
    return events, labels


def as_recorded(events, labels, table=LISTED, model_id="offers"):
    spec = ModelSpecs(load_settings(env={})).read(table, "test")
    return Recorded(model_id, spec, events, labels, [], [], 0, None, "a test log", [])


def test_the_estimates_cover_the_truth_on_a_uniformly_logged_simulation():
    events, labels = simulated_log()
    log = bandit_log(as_recorded(events, labels))
    assert log.counts["choices"] == 4000
    assert log.counts["rewarded"] == 3950 and log.counts["unrewarded"] == 50
    ev = evaluate_log(log)
    means = mean_rewards(log.contexts)
    uniform_truth = float(means.mean())  # 0.3/3 + 1/3
    assert ev.logged.low < uniform_truth < ev.logged.high
    values = {p.name: p for p in ev.policies}
    for name in ("ips", "snips", "dr"):
        est = values["uniform"].estimates[name]
        assert est.low < uniform_truth < est.high, name
        assert est.max_weight == pytest.approx(1.0)
    greedy = values["greedy"]
    greedy_truth = float((greedy.probabilities * means).sum(axis=1).mean())
    assert greedy_truth > 0.65  # the reward model found the better arm almost everywhere
    for name in ("ips", "snips", "dr"):
        est = greedy.estimates[name]
        assert est.low < greedy_truth < est.high, name
        assert est.max_weight == pytest.approx(K)
    # The greedy policy is worth more than the log, and the log says so.
    assert greedy.estimates["dr"].low > ev.logged.high


def test_choices_left_out_are_counted_by_reason():
    events, labels = simulated_log(n=12, unrewarded=0)
    events[0]["action"] = 7  # no such action
    events[1]["propensity"] = 0.0
    events[2]["features"] = [1.0]  # not the model's two features
    labels[3]["label"] = "yes"
    events[4] = {k: v for k, v in events[4].items() if k != "propensity"}
    events.append(dict(events[5]))  # a duplicate of an event id
    labels.append({**labels[6], "label": 0.0})  # a second reward: the first counts
    labels.append({"model_id": "offers", "event_id": "nobody", "ts": T0, "label": 1.0})
    log = bandit_log(as_recorded(events, labels))
    c = log.counts
    assert (c["bad_action"], c["bad_propensity"], c["bad_context"], c["bad_reward"]) == (1,) * 4
    assert c["not_a_choice"] == 1 and c["duplicate_event"] == 1
    assert c["rewarded"] == 12 - 5 and c["rewards"] == 14
    assert log.rewards[1] == labels[6]["label"]  # event 6 is the second kept, in time order


def test_action_features_get_the_uniform_policy_by_its_candidates_only():
    table = {"type": "contextual_bandit", "n_features": 2, "n_action_features": 2}
    rng = np.random.default_rng(1)
    events, labels = [], []
    for i in range(2000):
        m = int(rng.integers(2, 5))
        candidates = rng.normal(size=(m, 2)).round(3).tolist()
        a = int(rng.integers(m))
        events.append(
            {
                "event_id": f"e{i}",
                "model_id": "offers",
                "ts": T0 + i,
                "features": [0.1, 0.2],
                "score": [1 / m] * m,
                "action": candidates[a],
                "propensity": 1 / m,
            }
        )
        # The first candidate pays 0.8, the others 0.2: uniform is worth E[0.2 + 0.6 / m].
        reward = float(rng.random() < (0.8 if a == 0 else 0.2))
        labels.append({"event_id": f"e{i}", "label": reward})
    log = bandit_log(as_recorded(events, labels, table))
    ev = evaluate_log(log)
    uniform, greedy = ev.policies
    assert set(uniform.estimates) == {"ips", "snips"} and "DR" in uniform.not_evaluated
    assert greedy.not_evaluated == NO_CANDIDATES and not greedy.estimates
    truth = float(np.mean(0.2 + 0.6 / log.candidates))
    assert uniform.estimates["snips"].low < truth < uniform.estimates["snips"].high


def test_wide_contexts_get_no_reward_model():
    events, labels = simulated_log(n=600)
    for ev in events:
        ev["features"] = {"age": ev["features"][0]}
    table = {**LISTED, "features": "hashed", "n_features": 4096}
    log = bandit_log(as_recorded(events, labels, table))
    assert log.contexts.shape == (550, 0)
    uniform, greedy = evaluate_log(log).policies
    assert set(uniform.estimates) == {"ips", "snips"}
    assert greedy.not_evaluated.startswith("not evaluated: the reward model takes contexts")
    assert any("4096 features" in n for n in log.notes)


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_render_writes_the_summary_the_page_and_the_plots(tmp_path):
    events, labels = simulated_log(n=1500, optimal=True)
    events[0]["model_id"] = "<b>x</b>"
    log = bandit_log(as_recorded(events, labels, model_id="<b>x</b>"))
    files = render(log, tmp_path / "out", window=200)
    summary = json.loads(files.summary.read_text())
    assert summary["counts"]["rewarded"] == 1450 and summary["counts"]["unrewarded"] == 50
    assert summary["logged"]["value"] == pytest.approx(log.rewards.mean())
    for policy in ("uniform", "greedy"):
        for name in ("ips", "snips", "dr"):
            e = summary["policies"][policy][name]
            assert e["low"] <= e["value"] <= e["high"]
    assert summary["regret"] == pytest.approx(float((log.optimal - log.rewards).sum()))
    page = Page()
    html = files.index.read_text()
    page.feed(html)
    assert sorted(page.images) == ["regret.png", "reward.png"]
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert "docs/bandits.md" in "".join(page.text)
    for png in files.pngs:
        assert imread(png).shape[0] > 100
    assert any(line.startswith("greedy: DR") for line in files.lines)
    # Without the optimum, no regret plot, and the page says why.
    plain = render(bandit_log(as_recorded(*simulated_log(n=300))), tmp_path / "plain")
    assert [p.name for p in plain.pngs] == ["reward.png"]
    assert "optimum is unknown" in plain.index.read_text()
    # Nothing rewarded: still a report, saying so.
    empty = render(bandit_log(as_recorded(simulated_log(n=10)[0], [])), tmp_path / "empty")
    assert not empty.pngs
    assert json.loads(empty.summary.read_text())["counts"]["unrewarded"] == 10


def test_flowlearn_report_on_a_bandit_created_at_runtime(tmp_path, monkeypatch, capsys):
    settings = load_settings(env={})
    t = settings.kafka.topics
    events, labels = simulated_log(n=600, model_id="offers")
    create = {
        "model_id": "offers",
        "kind": "control",
        "ts": T0 - 1,
        "detail": {"command": "create", "ok": True, "args": {"spec": LISTED}},
    }
    topics = {
        t.alerts: [(b"offers", create, T0 - 1)],
        t.dlq: [],
        t.events: [(b"offers", e, e["ts"]) for e in events],
        t.labels: [(b"offers", r, r["ts"]) for r in labels],
        t.samples: [],
    }
    monkeypatch.setattr(recorded, "kafka_consumer", lambda kafka: lambda: FakeConsumer(topics))
    out = tmp_path / "report"
    args = argparse.Namespace(model="offers", since=None, out=out, window=100, tolerance=0.05)
    assert cmd_report(settings, args) == 0
    printed = capsys.readouterr().out
    assert "600 choices, 550 rewarded" in printed and "uniform: DR" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["type"] == bandit_report.BANDIT_TYPE and summary["n_actions"] == K
    assert (out / "reward.png").exists() and not (out / "windows.csv").exists()
