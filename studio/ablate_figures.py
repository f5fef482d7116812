"""Plotly figures of ablation results (`studio.ablate`): pure functions of a summary, each returning a
`plotly.graph_objects.Figure`, usable from the app, a notebook or `studio ablate`.

A `summary` is a `ResultsTable` (its `summary()` is used), the list of dicts `summarize_rows` returns,
raw result rows (summarised here), or a pandas DataFrame of either. Every point is the mean over seeds;
error bars are the sample standard deviation over seeds (none with one seed); hovers give n.

    grouped_bars(summary, "accuracy")   # variants side by side within each task
    ratio_curve(summary, "accuracy")    # x: share of softmax layers, one line per linear mixer
    state_curve(summary, "accuracy")    # x: decoding state (log), one line per mixer set
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

__all__ = ["grouped_bars", "ratio_curve", "state_curve", "write_figures", "save_figure", "applicable",
           "METRIC_LABELS"]

METRIC_LABELS = {
    "accuracy": "held-out accuracy",
    "exact_match": "held-out exact match",
    "loss": "held-out loss (nats / token)",
    "perplexity": "held-out perplexity",
}
PALETTE = qualitative.Plotly + qualitative.D3
LAYOUT = {"plot_bgcolor": "white", "margin": {"l": 60, "r": 20, "t": 80, "b": 50}}


def _summary(summary: Any) -> list[dict]:
    if hasattr(summary, "summary") and callable(summary.summary):  # a ResultsTable
        return summary.summary()
    if hasattr(summary, "to_dict") and hasattr(summary, "columns"):  # a pandas DataFrame
        summary = summary.to_dict("records")
    rows = [dict(r) for r in summary]
    if rows and "n" not in rows[0] and "seed" in rows[0]:  # raw result rows
        from studio.ablate import summarize_rows

        rows = summarize_rows(rows)
    # DataFrames give NaN for empty cells; treat them as missing
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]


def _value(row: dict, metric: str) -> float | None:
    v = row.get(f"{metric}_mean")
    return None if v is None else float(v)


def _std(row: dict, metric: str) -> float:
    v = row.get(f"{metric}_std")
    return 0.0 if v is None else float(v)


def _check_metric(rows: list[dict], metric: str, what: str) -> list[dict]:
    from studio.ablate import METRICS

    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    kept = [r for r in rows if _value(r, metric) is not None]
    if not kept:
        raise ValueError(f"no {what} has a {metric!r} value (perplexity exists for text tasks only)")
    return kept


def _tasks(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["task"] for r in rows))


def _hover(metric: str) -> str:
    return (f"%{{customdata[0]}}<br>task %{{customdata[1]}}<br>{metric} %{{y:.4g}} ± %{{customdata[2]:.3g}}"
            "<br>n = %{customdata[3]}<extra></extra>")


def grouped_bars(summary: Any, metric: str = "accuracy", title: str | None = None) -> go.Figure:
    """One group of bars per task, one bar per variant (same colour in every group); error bars = std
    over seeds."""
    rows = _check_metric(_summary(summary), metric, "variant")
    tasks = _tasks(rows)
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    by = {(r["variant"], r["task"]): r for r in rows}
    fig = go.Figure()
    for i, variant in enumerate(variants):
        cells = [by.get((variant, t)) for t in tasks]
        fig.add_trace(go.Bar(
            x=tasks, y=[None if c is None else _value(c, metric) for c in cells], name=variant,
            marker_color=PALETTE[i % len(PALETTE)],
            error_y={"type": "data", "array": [0.0 if c is None else _std(c, metric) for c in cells], "visible": True},
            customdata=[[variant, t, 0.0 if c is None else _std(c, metric), 0 if c is None else c["n"]]
                        for t, c in zip(tasks, cells)],
            hovertemplate=_hover(metric)))
    fig.update_layout(barmode="group", title={"text": title or f"{METRIC_LABELS.get(metric, metric)} by task"},
                      xaxis_title="task", yaxis_title=METRIC_LABELS.get(metric, metric), legend_title_text="variant",
                      height=420, **LAYOUT)
    fig.update_yaxes(gridcolor="#e5e5e5", rangemode="tozero")
    return fig


def _panels(tasks: list[str], x_title: str, y_title: str, title: str, log_x: bool = False) -> go.Figure:
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=tasks, shared_yaxes=True,
                        horizontal_spacing=0.06 if len(tasks) > 1 else 0.0)
    fig.update_xaxes(title_text=x_title, gridcolor="#e5e5e5", type="log" if log_x else "linear")
    fig.update_yaxes(gridcolor="#e5e5e5")
    fig.update_yaxes(title_text=y_title, col=1)
    fig.update_layout(title={"text": title}, height=420, **LAYOUT)
    return fig


def _line(fig: go.Figure, points: list[dict], metric: str, name: str, colour: str, col: int, first: bool, x: str,
          text: list[str]) -> None:
    fig.add_trace(go.Scatter(
        x=[p[x] for p in points], y=[_value(p, metric) for p in points], mode="lines+markers", name=name,
        legendgroup=name, showlegend=first, line={"color": colour}, marker={"size": 8}, text=text,
        error_y={"type": "data", "array": [_std(p, metric) for p in points], "visible": True},
        customdata=[[p["variant"], p["task"], _std(p, metric), p["n"]] for p in points],
        hovertemplate="%{text}<br>" + _hover(metric)), row=1, col=col)


def _fraction(share: float) -> str:
    from fractions import Fraction

    f = Fraction(share).limit_denominator(64)
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def ratio_curve(summary: Any, metric: str = "accuracy", title: str | None = None) -> go.Figure:
    """Variants with a linear:softmax `ratio`: x = share of softmax layers (0 pure linear .. 1 all
    softmax), one line per linear mixer, one panel per task. Variants without linear layers (ratio '0:1')
    are the shared all-softmax point of every line."""
    rows = [r for r in _summary(summary) if r.get("ratio")]
    if not rows:
        raise ValueError("no variant of these results has a `ratio`; ratio_curve needs variants such as "
                         "{ratio: '3:1', linear: {mixer: gla}}")
    rows = _check_metric(rows, metric, "ratio variant")
    tasks = _tasks(rows)
    mixers = list(dict.fromkeys(r["linear"] for r in rows if r.get("linear")))
    fig = _panels(tasks, "share of softmax layers", METRIC_LABELS.get(metric, metric),
                  title or f"{METRIC_LABELS.get(metric, metric)} vs the share of softmax layers")
    shares = sorted({float(r["softmax_share"]) for r in rows})
    ratio_of = {float(r["softmax_share"]): r["ratio"] for r in rows}
    fig.update_xaxes(tickmode="array", tickvals=shares, range=[-0.06, 1.06],
                     ticktext=[f"{_fraction(s)}<br>({ratio_of[s]})" for s in shares])
    for col, task in enumerate(tasks, start=1):
        here = [r for r in rows if r["task"] == task]
        shared = [r for r in here if not r.get("linear")]
        lines = [(m, [r for r in here if r.get("linear") == m] + shared) for m in mixers]
        if not mixers:
            lines = [("softmax", shared)]
        for i, (mixer, points) in enumerate(lines):
            if not points:
                continue
            points = sorted(points, key=lambda r: float(r["softmax_share"]))
            _line(fig, points, metric, mixer, PALETTE[i % len(PALETTE)], col, col == 1, "softmax_share",
                  [f"{p['variant']} (ratio {p['ratio']})" for p in points])
    fig.update_layout(legend_title_text="linear mixer")
    return fig


def state_curve(summary: Any, metric: str = "accuracy", title: str | None = None, log_x: bool = True) -> go.Figure:
    """x = decoding state size (elements over all layers at the task's length, or the variant's own
    `state_size`), one line per set of mixers (e.g. 'linear', 'softmax'), one panel per task: the
    recall-vs-state trade-off of Zoology / Based (arXiv 2312.04927, 2402.18668)."""
    rows = [r for r in _summary(summary) if r.get("state_size") not in (None, "")]
    if not rows:
        raise ValueError("no variant of these results has a state size")
    rows = _check_metric(rows, metric, "variant with a state size")
    tasks = _tasks(rows)
    groups = list(dict.fromkeys(r["mixers"] for r in rows))
    fig = _panels(tasks, "decoding state (elements, all layers)", METRIC_LABELS.get(metric, metric),
                  title or f"{METRIC_LABELS.get(metric, metric)} vs decoding state size", log_x=log_x)
    for col, task in enumerate(tasks, start=1):
        for i, group in enumerate(groups):
            points = sorted((r for r in rows if r["task"] == task and r["mixers"] == group),
                            key=lambda r: float(r["state_size"]))
            if points:
                _line(fig, points, metric, group, PALETTE[i % len(PALETTE)], col, col == 1, "state_size",
                      [f"{p['variant']}: {p['n_heads']} heads x d_head {p['d_head']}, state {int(float(p['state_size'])):,}"
                       for p in points])
    fig.update_layout(legend_title_text="mixers")
    return fig


FIGURES = {"grouped_bars": grouped_bars, "ratio_curve": ratio_curve, "state_curve": state_curve}


def applicable(kind: str, summary: Any, metric: str) -> bool:
    """Whether `kind` has something to draw for `metric` in these results."""
    try:
        FIGURES[kind](summary, metric)
    except ValueError:
        return False
    return True


def save_figure(fig: go.Figure, folder: str | Path, stem: str) -> Path:
    """`folder/stem.html` (loading `folder/plotly.min.js`, written once, so it works offline) and
    `folder/stem.json` (the figure, for plotly.io.read_json / the app). Returns the HTML path."""
    from plotly.offline import get_plotlyjs

    from studio.checkpoint import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "plotly.min.js").is_file():
        atomic_write_text(folder / "plotly.min.js", get_plotlyjs())
    html = folder / f"{stem}.html"
    atomic_write_text(html, fig.to_html(include_plotlyjs="directory", full_html=True))
    atomic_write_text(folder / f"{stem}.json", fig.to_json())
    return html


def write_figures(summary: Any, folder: str | Path, kinds: list[str] | None = None,
                  metrics: list[str] | None = None) -> dict[str, Path]:
    """Every figure kind x metric that has data, saved as `folder/<kind>-<metric>.html` and `.json`;
    returns {"<kind>-<metric>": html path}."""
    rows = _summary(summary)
    kinds = list(kinds or FIGURES)
    metrics = list(metrics or ["accuracy", "loss"])
    written = {}
    for kind in kinds:
        if kind not in FIGURES:
            raise ValueError(f"unknown figure {kind!r}; choose from: {', '.join(FIGURES)}")
        for metric in metrics:
            try:
                fig = FIGURES[kind](rows, metric)
            except ValueError:
                continue  # nothing to draw (no ratio variants, no text task for perplexity, ...)
            written[f"{kind}-{metric}"] = save_figure(fig, folder, f"{kind}-{metric}")
    return written
