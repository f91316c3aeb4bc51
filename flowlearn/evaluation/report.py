"""The evaluation report: ``index.html`` with PNG plots, ``summary.json`` and
``windows.csv`` in one folder, drawn from an :class:`flowlearn.evaluation.data.EvaluationData`.

Plots (matplotlib, Agg, no display needed): windowed accuracy and log loss of the online model
and the baseline with drift alerts and rollbacks marked, calibration (reliability diagram and
ECE per window), the version timeline, the label-delay distribution and dead letters by
reason. A plot without data is left out and its section says why. Every string that comes
from the data (model ids, reasons, alert details, paths) is HTML-escaped.
docs/evaluation.md explains how to read it.
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from flowlearn.evaluation.data import AXIS_TIME, EvaluationData
from flowlearn.evaluation.statistics import (
    Headline,
    Recovery,
    Stats,
    Window,
    compute_windows,
    headline,
    reliability,
)

#: Vertical lines drawn at most per kind (feature-drift alarms can be many).
MAX_MARKERS = 200

ONLINE_COLOR, BASELINE_COLOR = "#1f77b4", "#ff7f0e"


@dataclass(frozen=True)
class ReportFiles:
    index: Path
    pngs: tuple[Path, ...]
    summary: Path
    windows_csv: Path
    headline: Headline


def safe_name(text: str) -> str:
    """``text`` as one harmless file name (model ids may hold anything).

    >>> safe_name("../a b/c")
    'a_b_c'
    """
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")
    return name[:100] or "model"


def default_out(home: Path, name: str) -> Path:
    """Where a report goes unless ``--out`` says: ``<stack home>/reports/<name>``."""
    return Path(home) / "reports" / safe_name(name)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(v: float) -> str:
    return "n/a" if v != v else f"{v:.1%}"


def _num(v: float, digits: int = 4) -> str:
    return "n/a" if v != v else f"{v:.{digits}f}"


# ---------------------------------------------------------------------------- plots


def _x(data: EvaluationData, values: Iterable[float]) -> list[Any]:
    if data.axis == AXIS_TIME:
        return [datetime.fromtimestamp(v / 1000.0) for v in values]
    return list(values)


def _axis(ax: Any, data: EvaluationData) -> None:
    """Label the x axis; dates in a compact form on the time axis."""
    ax.set_xlabel(_x_label(data))
    if data.axis == AXIS_TIME:
        time_axis(ax)


def time_axis(ax: Any) -> None:
    """Dates on the x axis, in a compact form."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def _x_label(data: EvaluationData) -> str:
    return "time" if data.axis == AXIS_TIME else "samples (stream position)"


def _figure(width: float = 10.0, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=100)
    return path


_MARKER_STYLES = (
    # (predicate name, label, style)
    ("performance", "drift alert: error or loss rose", {"color": "#d62728", "ls": "--", "lw": 1.2}),
    (
        "other_drift",
        "drift alert: feature, or error fell",
        {"color": "#999999", "ls": ":", "lw": 0.8},
    ),
    ("degraded", "automatic rollback decided", {"color": "#9467bd", "ls": "-.", "lw": 1.2}),
    ("rollback", "rollback", {"color": "#9467bd", "ls": "-", "lw": 1.5}),
    ("control", "reset / warm start", {"color": "#2ca02c", "ls": "-", "lw": 1.2}),
    (
        "gate_rejected",
        "batch rejected by the safety gate",
        {"color": "black", "ls": ":", "lw": 1.0},
    ),
)


def _marker_kind(a: Any) -> str | None:
    if a.kind == "drift":
        return "performance" if a.performance else "other_drift"
    if a.kind == "control":
        return "control" if a.detail.get("command") in ("reset", "warm_start") else None
    if a.kind in ("degraded", "rollback", "gate_rejected"):
        return str(a.kind)
    return None


def _mark_alerts(ax: Any, data: EvaluationData) -> None:
    for kind, label, style in _MARKER_STYLES:
        ts = [a.t for a in data.alerts if _marker_kind(a) == kind][:MAX_MARKERS]
        for i, x in enumerate(_x(data, ts)):
            ax.axvline(x, label=label if i == 0 else None, **style)


def _finish_timeline(ax: Any, data: EvaluationData, title: str, ylabel: str) -> None:
    """What every plot over the stream's axis ends with: alerts marked, title, axis, grid,
    legend."""
    _mark_alerts(ax, data)
    ax.set_title(title)
    _axis(ax, data)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _window_plot(
    data: EvaluationData,
    windows: Sequence[Window],
    attr: str,
    title: str,
    ylabel: str,
    path: Path,
    checkpoint_attr: str | None,
) -> Path | None:
    on = [
        (w.t_end, getattr(w.online, attr))
        for w in windows
        if getattr(w.online, attr) == getattr(w.online, attr)
    ]
    base = [
        (w.t_end, getattr(w.baseline, attr))
        for w in windows
        if getattr(w.baseline, attr) == getattr(w.baseline, attr)
    ]
    cps = [
        c
        for c in data.checkpoints
        if checkpoint_attr and getattr(c, checkpoint_attr) == getattr(c, checkpoint_attr)
    ]
    if not (on or base or cps):
        return None
    fig = _figure()
    ax = fig.add_subplot()
    if on:
        ax.plot(
            _x(data, [p[0] for p in on]),
            [p[1] for p in on],
            "-o",
            ms=3,
            color=ONLINE_COLOR,
            label="online model",
        )
    if base:
        ax.plot(
            _x(data, [p[0] for p in base]),
            [p[1] for p in base],
            "-o",
            ms=3,
            color=BASELINE_COLOR,
            label="baseline",
        )
    for i, c in enumerate(cps):
        # A checkpoint's metric covers the versions from it to the next checkpoint.
        value = getattr(c, str(checkpoint_attr))
        label = "checkpoint windowed metric (MLflow)" if i == 0 else None
        if c.t_start is not None and c.t_start < c.t:
            ax.plot(
                _x(data, [c.t_start, c.t]), [value, value], "-", lw=3, alpha=0.5, color="#555555"
            )
        ax.plot(_x(data, [c.t]), [value], "s", ms=5, mfc="none", color="#555555", label=label)
    _finish_timeline(ax, data, title, ylabel)
    return _save(fig, path)


def _calibration_plot(data: EvaluationData, windows: Sequence[Window], path: Path) -> Path | None:
    s = data.samples
    bins = {
        "online model": (reliability(s.online), ONLINE_COLOR),
        "baseline": (reliability(s.baseline), BASELINE_COLOR),
    }
    if not any(b for b, _ in bins.values()):
        return None
    fig = _figure(11.0, 4.2)
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.6])
    left.plot([0, 1], [0, 1], color="#999999", ls="--", lw=1, label="perfectly calibrated")
    for name, (bs, color) in bins.items():
        if bs:
            left.plot(
                [b.confidence for b in bs],
                [b.accuracy for b in bs],
                "-o",
                ms=4,
                color=color,
                label=name,
            )
    left.set_xlim(0, 1)
    left.set_ylim(0, 1)
    left.set_xlabel("confidence (probability of the predicted label)")
    left.set_ylabel("accuracy")
    left.set_title("reliability diagram (all samples)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for side, name, color in (
        ("online", "online model", ONLINE_COLOR),
        ("baseline", "baseline", BASELINE_COLOR),
    ):
        pts = [
            (w.t_end, getattr(w, side).ece)
            for w in windows
            if getattr(w, side).ece == getattr(w, side).ece
        ]
        if pts:
            right.plot(
                _x(data, [p[0] for p in pts]),
                [p[1] for p in pts],
                "-o",
                ms=3,
                color=color,
                label=name,
            )
    _finish_timeline(right, data, "expected calibration error per window", "ECE")
    return _save(fig, path)


def _versions_plot(data: EvaluationData, path: Path) -> Path | None:
    points = [v for v in data.versions if v.kind != "registered"]
    if not points and not data.checkpoints:
        return None
    fig = _figure(10.0, 3.2)
    ax = fig.add_subplot()
    if points:
        ax.step(
            _x(data, [v.t for v in points]),
            [v.version for v in points],
            where="post",
            color=ONLINE_COLOR,
            label="version (served)" if data.axis == AXIS_TIME else "version",
        )
        special = [v for v in points if v.kind in ("rollback", "reset", "warm_start")]
        if special:
            ax.plot(
                _x(data, [v.t for v in special]),
                [v.version for v in special],
                "D",
                color="#9467bd",
                label="rollback / reset / warm start",
            )
    if data.checkpoints:
        at = {v.version: v.t for v in points}
        ax.plot(
            _x(data, [at.get(c.version, c.t) for c in data.checkpoints]),
            [c.version for c in data.checkpoints],
            "s",
            mfc="none",
            color="#555555",
            label="checkpoint (registered in MLflow)",
        )
    _finish_timeline(ax, data, "version timeline", "version")
    return _save(fig, path)


def _label_delay_plot(data: EvaluationData, path: Path) -> Path | None:
    delays = data.label_delays_ms[np.isfinite(data.label_delays_ms)]
    if not len(delays):
        return None
    fig = _figure(8.0, 3.2)
    ax = fig.add_subplot()
    ax.hist(delays / 1000.0, bins=min(50, max(5, int(math.sqrt(len(delays))))), color="#8c564b")
    ax.set_title(f"label delay (label time - event time), {len(delays)} labels")
    ax.set_xlabel("seconds")
    ax.set_ylabel("labels")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _dlq_plot(data: EvaluationData, path: Path) -> Path | None:
    if not data.dlq:
        return None
    fig = _figure(8.0, 0.6 + 0.4 * len(data.dlq))
    ax = fig.add_subplot()
    reasons = list(data.dlq)
    ax.barh(reasons, [data.dlq[r] for r in reasons], color="#7f7f7f")
    ax.invert_yaxis()
    ax.set_xlabel("dead-lettered records")
    ax.set_title("dead letters by reason")
    return _save(fig, path)


# ---------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.nodata { color: #8a6d3b; background: #fcf8e3; padding: 6px 10px; }
.headline { background: #eef5fb; padding: 10px 16px; border-left: 4px solid #1f77b4; }
img { max-width: 100%; } .muted { color: #777; font-size: 90%; }
"""


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1) -> str:
    out = ["<table><tr>"]
    out += [
        f"<th class='l'>{esc(h)}</th>" if i < left else f"<th>{esc(h)}</th>"
        for i, h in enumerate(header)
    ]
    out.append("</tr>")
    for row in rows:
        out.append(
            "<tr>"
            + "".join(
                f"<td class='l'>{esc(c)}</td>" if i < left else f"<td>{esc(c)}</td>"
                for i, c in enumerate(row)
            )
            + "</tr>"
        )
    out.append("</table>")
    return "".join(out)


def _stats_row(name: str, s: Stats) -> list[str]:
    return [name, str(s.n), _pct(s.accuracy), _num(s.log_loss), _num(s.ece)]


def _recovery_cell(r: Recovery | None, axis: str) -> str:
    if r is None:
        return "no baseline"
    if r.level != r.level:
        return "n/a (no pre-drift level)"
    if not r.recovered:
        return f"not recovered (lowest {_pct(r.lowest)})"
    extra = f", {r.t / 1000:.0f} s" if axis == AXIS_TIME and r.t is not None else ""
    return f"{r.samples} samples{extra} (lowest {_pct(r.lowest)})"


def _headline_html(data: EvaluationData, h: Headline) -> str:
    parts = ["<div class='headline'><h2>Headline</h2>"]
    if not len(data.samples):
        parts.append(
            "<p class='nodata'>No per-prediction records: see the checkpoint metrics below.</p>"
        )
    else:
        rows = [_stats_row("online, all samples it scored", h.online_all)]
        if h.both:
            rows += [
                _stats_row("online, samples both scored", h.online),
                _stats_row("baseline, samples both scored", h.baseline),
            ]
        if h.post_drift is not None:
            rows += [
                _stats_row("online, after the first drift", h.post_drift[0]),
                _stats_row("baseline, after the first drift", h.post_drift[1]),
            ]
        parts.append(_table(["", "samples", "accuracy", "log loss", "ECE"], rows))
        by_baseline = sum(1 for v in data.samples.served if v == "baseline")
        if by_baseline:
            parts.append(
                f"<p>A/B: the baseline answered {by_baseline} of "
                f"{len(data.samples.served)} labelled requests, the online model "
                f"the others; each model's numbers include the requests it was "
                f"scored on in the other's shadow.</p>"
            )
    if h.episodes:
        parts.append(
            f"<p>Recovery: samples from a drift alert until the model's accuracy "
            f"over a window of {h.window} samples is back within "
            f"{h.tolerance * 100:g} points of its level before the change.</p>"
        )
        rows = []
        for k, rep in enumerate(h.episodes, 1):
            ep = rep.episode
            detectors = ", ".join(
                sorted({f"{a.detail.get('detector')}/{a.detail.get('signal')}" for a in ep.alerts})
            )
            rows.append(
                [
                    str(k),
                    str(ep.alert),
                    str(ep.change),
                    detectors,
                    _pct(rep.online.level),
                    _recovery_cell(rep.online, data.axis),
                    _pct(rep.baseline.level) if rep.baseline else "-",
                    _recovery_cell(rep.baseline, data.axis),
                ]
            )
        parts.append(
            _table(
                [
                    "drift",
                    "alert at sample",
                    "change from sample",
                    "detectors",
                    "online level",
                    "online recovery",
                    "baseline level",
                    "baseline recovery",
                ],
                rows,
                left=1,
            )
        )
    elif data.classifier and len(data.samples):
        parts.append("<p>No performance drift alert (an error or loss rise) in this period.</p>")
    parts.append("</div>")
    return "".join(parts)


def _img(path: Path | None, alt: str, why_not: str) -> str:
    if path is None:
        return f"<p class='nodata'>No data: {esc(why_not)}</p>"
    return f"<p><img src='{esc(path.name)}' alt='{esc(alt)}'></p>"


def _t_text(data: EvaluationData, t: float) -> str:
    if data.axis == AXIS_TIME:
        return datetime.fromtimestamp(t / 1000).isoformat(sep=" ", timespec="seconds")
    return f"{t:.0f}"


def _alert_rows(data: EvaluationData) -> list[list[str]]:
    rows = []
    for a in data.alerts:
        version = "" if a.version is None else str(a.version)
        rows.append(
            [
                a.kind,
                _t_text(data, a.t),
                version,
                a.label,
                json.dumps(dict(a.detail), sort_keys=True, default=str)[:300],
            ]
        )
    return rows


def _rates_html(data: EvaluationData) -> str:
    if not data.dlq and not data.input_records:
        return "<p class='nodata'>No data: no dead letters and no input count.</p>"
    total = sum(data.dlq.values())
    rows = []
    for reason, count in data.dlq.items():
        rate = _pct(count / data.input_records) if data.input_records else "n/a"
        rows.append([reason, str(count), rate])
    rows.append(
        [
            "all reasons",
            str(total),
            _pct(total / data.input_records) if data.input_records else "n/a",
        ]
    )
    out = [
        f"<p>Input records: {data.input_records or 'unknown'}; labels read: "
        f"{data.labels}. Late data (labels dead-lettered as late, "
        f"outside_window or no_event): {data.late}"
        + (f" = {_pct(data.late / data.labels)} of the labels" if data.labels else "")
        + ".</p>",
        _table(["reason", "records", "share of input records"], rows),
    ]
    return "".join(out)


def render(
    data: EvaluationData, out_dir: Path, window: int = 500, tolerance: float = 0.05
) -> ReportFiles:
    """Write the report into ``out_dir`` (created); returns its files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    windows = compute_windows(data, window)
    h = headline(data, window, tolerance)
    pngs: dict[str, Path | None] = {
        "accuracy": _window_plot(
            data,
            windows,
            "accuracy",
            "windowed accuracy",
            "accuracy",
            out_dir / "accuracy.png",
            "accuracy",
        )
        if data.classifier
        else None,
        "logloss": _window_plot(
            data,
            windows,
            "log_loss",
            "windowed log loss" if data.classifier else "windowed squared error",
            "loss",
            out_dir / "logloss.png",
            "loss",
        ),
        "calibration": _calibration_plot(data, windows, out_dir / "calibration.png")
        if data.classifier
        else None,
        "versions": _versions_plot(data, out_dir / "versions.png"),
        "label_delay": _label_delay_plot(data, out_dir / "label_delay.png"),
        "dlq": _dlq_plot(data, out_dir / "dlq.png"),
    }
    per_sample = (
        "the served predictions joined with their labels"
        if data.axis == AXIS_TIME
        else "the prequential records"
    )
    no_samples = f"no per-prediction records ({per_sample})" + (
        " and no registered checkpoint metrics" if not data.checkpoints else ""
    )
    body = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>flowlearn evaluation: {esc(data.model_id)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Evaluation of model <code>{esc(data.model_id)}</code></h1>",
        f"<p class='muted'>{esc(data.source)}. Axis: {esc(_x_label(data))}. Windows of "
        f"{window} samples. Baseline: {esc(data.baseline_name or 'none')}.</p>",
    ]
    body += [f"<p class='muted'>{esc(n)}</p>" for n in data.notes]
    body.append(_headline_html(data, h))
    body.append("<h2>Accuracy</h2>")
    body.append(
        _img(
            pngs["accuracy"],
            "windowed accuracy",
            no_samples if data.classifier else "a regression model has no accuracy",
        )
    )
    body.append("<h2>Log loss</h2>")
    body.append(_img(pngs["logloss"], "windowed log loss", no_samples))
    body.append("<h2>Calibration</h2>")
    body.append(
        _img(
            pngs["calibration"],
            "calibration",
            "calibration needs the probability of each prediction: "
            + (
                no_samples
                if not len(data.samples)
                else "not in these records (a softmax model's replay, or a regression)"
            ),
        )
    )
    body.append("<h2>Versions</h2>")
    body.append(_img(pngs["versions"], "version timeline", "no versions recorded"))
    body.append("<h2>Label delay</h2>")
    body.append(
        _img(
            pngs["label_delay"],
            "label delay",
            "no event was joined with a label (labelled samples carry no delay)",
        )
    )
    body.append("<h2>Late data and dead letters</h2>")
    body.append(_rates_html(data))
    if pngs["dlq"] is not None:
        body.append(_img(pngs["dlq"], "dead letters by reason", ""))
    body.append("<h2>Checkpoints (windowed metrics registered in MLflow)</h2>")
    if data.checkpoints:
        body.append(
            _table(
                [
                    "version",
                    "samples_applied",
                    "window samples",
                    "windowed accuracy",
                    "windowed loss",
                ],
                [
                    [
                        str(c.version),
                        str(c.samples_applied),
                        str(c.n),
                        _pct(c.accuracy),
                        _num(c.loss),
                    ]
                    for c in data.checkpoints
                ],
            )
        )
    else:
        body.append("<p class='nodata'>No data: no checkpoint interval closed.</p>")
    body.append("<h2>Alerts</h2>")
    if data.alerts:
        body.append(_table(["kind", "at", "version", "what", "detail"], _alert_rows(data), left=5))
    else:
        body.append("<p class='nodata'>No data: no alerts.</p>")
    if data.adaptations:
        body.append("<h3>Commands the job sent itself (fl.control)</h3>")
        body.append(
            _table(
                ["command", "source", "args"],
                [
                    [
                        str(c.get("command")),
                        str(c.get("source")),
                        json.dumps(c.get("args"), sort_keys=True),
                    ]
                    for c in data.adaptations
                ],
                left=3,
            )
        )
    body.append("<h2>Windows</h2><details><summary>every window's numbers</summary>")
    body.append(
        _table(
            [
                "window",
                "samples",
                "from",
                "to",
                "online accuracy",
                "online log loss",
                "online ECE",
                "baseline samples",
                "baseline accuracy",
                "baseline log loss",
                "baseline ECE",
            ],
            [
                [
                    str(w.index),
                    str(w.n),
                    _t_text(data, w.t_start),
                    _t_text(data, w.t_end),
                    _pct(w.online.accuracy),
                    _num(w.online.log_loss),
                    _num(w.online.ece),
                    str(w.baseline.n),
                    _pct(w.baseline.accuracy),
                    _num(w.baseline.log_loss),
                    _num(w.baseline.ece),
                ]
                for w in windows
            ],
        )
    )
    body.append("</details>")
    body.append(
        "<p class='muted'>How to read this report: docs/evaluation.md. Numbers: "
        "summary.json and windows.csv beside this page.</p></body></html>"
    )
    index = out_dir / "index.html"
    index.write_text("\n".join(body), encoding="utf-8")
    summary = out_dir / "summary.json"
    summary.write_text(json.dumps(_no_nan(_summary(data, h, windows)), indent=2, default=_jsonable))
    windows_csv = out_dir / "windows.csv"
    _write_csv(windows_csv, windows)
    return ReportFiles(
        index, tuple(p for p in pngs.values() if p is not None), summary, windows_csv, h
    )


def _no_nan(value: Any) -> Any:
    """NaN (undefined) as null, so that summary.json is strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return str(value)


def _summary(data: EvaluationData, h: Headline, windows: Sequence[Window]) -> dict[str, Any]:
    return {
        "model_id": data.model_id,
        "axis": data.axis,
        "source": data.source,
        "baseline": data.baseline_name,
        "window": h.window,
        "tolerance": h.tolerance,
        "headline": {
            "online_all": asdict(h.online_all),
            "both_scored": h.both,
            "online": asdict(h.online),
            "baseline": asdict(h.baseline),
            "post_drift": None
            if h.post_drift is None
            else {"online": asdict(h.post_drift[0]), "baseline": asdict(h.post_drift[1])},
            "episodes": [
                {
                    "alert": rep.episode.alert,
                    "change": rep.episode.change,
                    "online": asdict(rep.online),
                    "baseline": None if rep.baseline is None else asdict(rep.baseline),
                }
                for rep in h.episodes
            ],
        },
        "windows": [
            {
                "index": w.index,
                "start": w.start,
                "end": w.end,
                "t_start": w.t_start,
                "t_end": w.t_end,
                "online": asdict(w.online),
                "baseline": asdict(w.baseline),
            }
            for w in windows
        ],
        "checkpoints": [asdict(c) for c in data.checkpoints],
        "dlq": dict(data.dlq),
        "input_records": data.input_records,
        "labels": data.labels,
        "late": data.late,
        "alerts": len(data.alerts),
    }


def _write_csv(path: Path, windows: Sequence[Window]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "window",
                "start",
                "end",
                "t_start",
                "t_end",
                "online_n",
                "online_accuracy",
                "online_log_loss",
                "online_ece",
                "baseline_n",
                "baseline_accuracy",
                "baseline_log_loss",
                "baseline_ece",
            ]
        )
        for win in windows:
            w.writerow(
                [
                    win.index,
                    win.start,
                    win.end,
                    win.t_start,
                    win.t_end,
                    win.online.n,
                    win.online.accuracy,
                    win.online.log_loss,
                    win.online.ece,
                    win.baseline.n,
                    win.baseline.accuracy,
                    win.baseline.log_loss,
                    win.baseline.ece,
                ]
            )
