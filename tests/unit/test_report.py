"""flowlearn.evaluation.report: the HTML page, its PNG plots, escaping, and the numbers it
writes."""

import json
from html.parser import HTMLParser

import numpy as np
import pytest
from matplotlib.image import imread

from flowlearn.evaluation.builders import build_live
from flowlearn.evaluation.data import (
    AXIS_TIME,
    Alert,
    Checkpoint,
    EvaluationData,
    Samples,
    Side,
    VersionPoint,
)
from flowlearn.evaluation.report import render, safe_name
from flowlearn.evaluation.statistics import compute_windows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []
        self.images = []
        self.text = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def drifting_run(model_id="demo", n=4000, change=2000):
    """Per-sample records of a run with a drift at ``change``: online dips and recovers,
    the baseline dips for good."""
    rng = np.random.default_rng(0)
    y = (rng.random(n) < 0.5).astype(float)
    quality = np.where(
        np.arange(n) < change, 0.9, np.minimum(0.9, 0.5 + (np.arange(n) - change) / 1500)
    )
    right = rng.random(n) < quality
    p_online = np.where(right == (y == 1), 0.8, 0.2)
    base_right = rng.random(n) < np.where(np.arange(n) < change, 0.9, 0.5)
    p_base = np.where(base_right == (y == 1), 0.85, 0.15)
    p_base[:500] = np.nan
    samples = Samples.build(
        np.arange(1, n + 1),
        Side.from_probabilities(p_online, y),
        Side.from_probabilities(p_base, y),
        version=np.arange(n) // 64,
    )
    alerts = (
        Alert(
            "drift",
            change + 100.0,
            33,
            {"detector": "adwin", "signal": "error", "direction": "up"},
            change_t=change + 1.0,
        ),
        Alert(
            "drift",
            change + 300.0,
            36,
            {"detector": "psi", "signal": "feature[0]", "direction": ""},
        ),
        Alert("degraded", change + 900.0, 45, {"to_version": 30, "reason": "<i>worse</i>"}),
        Alert("rollback", change + 1000.0, 46, {"ok": True, "from_version": 45, "new_version": 46}),
    )
    versions = tuple(
        VersionPoint(v, 64.0 * v, "rollback" if v == 46 else "train") for v in range(1, n // 64 + 1)
    )
    checkpoints = (
        Checkpoint(10, 1280.0, 640, 640, 0.4, 0.9, 640.0),
        Checkpoint(20, 1920.0, 1280, 640, 0.41, 0.89, 1280.0),
    )
    return EvaluationData(
        model_id,
        source="a test run",
        samples=samples,
        alerts=alerts,
        versions=versions,
        checkpoints=checkpoints,
        label_delays_ms=rng.exponential(2000, 300),
        dlq={"late": 3, "not_json": 2},
        input_records=n + 5,
        labels=n,
        baseline_name="batch baseline",
    )


def test_the_report_renders_with_valid_png_plots(tmp_path):
    data = drifting_run()
    files = render(data, tmp_path / "r", window=200)
    page = Page()
    page.feed(files.index.read_text())
    names = {p.name for p in files.pngs}
    assert names == {
        "accuracy.png",
        "logloss.png",
        "calibration.png",
        "versions.png",
        "label_delay.png",
        "dlq.png",
    }
    assert set(page.images) == names  # every plot is on the page, and nothing else
    for png in files.pngs:
        raw = png.read_bytes()
        assert raw.startswith(PNG_SIGNATURE) and len(raw) > 1000
        image = imread(png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    text = " ".join(page.text)
    assert "Headline" in text and "recovery" in text.lower()
    # The headline: the online model recovered after the drift, the baseline did not.
    (episode,) = files.headline.episodes
    assert episode.online.recovered and not episode.baseline.recovered
    assert "not recovered" in text


def test_summary_numbers_are_the_windows(tmp_path):
    data = drifting_run()
    files = render(data, tmp_path, window=300)
    summary = json.loads(files.summary.read_text())  # strict JSON: NaN written as null
    windows = compute_windows(data, 300)
    assert len(summary["windows"]) == len(windows)
    for got, w in zip(summary["windows"], windows, strict=True):
        assert got["online"]["accuracy"] == w.online.accuracy
        assert got["online"]["log_loss"] == w.online.log_loss
        if w.baseline.n:
            assert got["baseline"]["accuracy"] == w.baseline.accuracy
        else:
            assert got["baseline"]["accuracy"] is None
    # And the windows are the plain means of the per-sample records.
    s = data.samples
    first = windows[0]
    assert first.online.accuracy == np.mean(s.online.correct[:300])
    assert first.online.log_loss == pytest.approx(np.mean(s.online.loss[:300]), rel=1e-12)
    assert summary["dlq"] == {"late": 3, "not_json": 2} and summary["late"] == 3
    assert files.windows_csv.read_text().count("\n") == len(windows) + 1


def test_strings_from_the_data_are_escaped(tmp_path):
    evil = "<script>alert('x')</script>"
    data = drifting_run(model_id=evil)
    data = EvaluationData(
        **{
            **data.__dict__,
            "dlq": {"<b>bad</b>": 1},
            "source": "<img src=x onerror=alert(1)>",
            "notes": ("<iframe>",),
        }
    )
    files = render(data, tmp_path, window=200)
    raw = files.index.read_text()
    assert "<script" not in raw and "<b>bad" not in raw and "<iframe" not in raw
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in raw
    assert "&lt;i&gt;worse&lt;/i&gt;" in raw  # an alert's detail
    page = Page()
    page.feed(raw)
    assert {"script", "iframe", "b", "i"}.isdisjoint(page.tags)
    assert all(src.endswith(".png") and "/" not in src for src in page.images)
    assert safe_name(evil) == "script_alert_x_script"


def test_without_a_prediction_log_the_report_says_what_it_has_no_data_for(tmp_path):
    checkpoints = [
        Checkpoint(50 * k, 1.7e12 + 60_000 * k, 3200 * k, 3200, 0.5, 0.8 - 0.01 * k)
        for k in range(1, 6)
    ]
    data = build_live(
        "m",
        "logistic",
        events=[],
        labels=[],
        alerts=[
            {
                "model_id": "m",
                "kind": "drift",
                "ts": int(1.7e12 + 90_000),
                "detail": {"direction": "up", "signal": "error"},
            }
        ],
        checkpoints=checkpoints,
        versions=[VersionPoint(c.version, c.t, "registered") for c in checkpoints],
    )
    assert data.axis == AXIS_TIME
    files = render(data, tmp_path, window=100)
    page = Page()
    page.feed(files.index.read_text())
    text = " ".join(page.text)
    assert "No per-prediction records" in text
    assert "No data: calibration needs" in text and "No data: no event was joined" in text
    # Accuracy and loss come from the registered checkpoints.
    assert {"accuracy.png", "logloss.png", "versions.png"} <= set(page.images)
    for png in files.pngs:
        assert png.read_bytes().startswith(PNG_SIGNATURE)
