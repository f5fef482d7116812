"""Plotly figures of an RL credit experiment (`studio.rl.experiment.load_experiment`'s summary)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.colors import qualitative

__all__ = ["reward_curves", "final_accuracy_bars"]


def _colour(i: int) -> str:
    return qualitative.Plotly[i % len(qualitative.Plotly)]


def reward_curves(summary: dict, smooth: int = 5) -> go.Figure:
    """Mean training reward over steps per credit strategy (a running mean over `smooth` steps), with a
    band from the lowest to the highest seed."""
    fig = go.Figure()
    for i, (credit, entry) in enumerate(summary["strategies"].items()):
        curves = [dict(r["curve"]) for r in entry["runs"] if r["curve"]]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        per_seed = [[_running_mean(c, steps, s, smooth) for s in steps] for c in curves]
        mean = [sum(v) / len(v) for v in zip(*per_seed)]
        low, high = [min(v) for v in zip(*per_seed)], [max(v) for v in zip(*per_seed)]
        colour = _colour(i)
        fig.add_scatter(x=steps + steps[::-1], y=high + low[::-1], fill="toself", fillcolor=colour, opacity=0.15,
                        line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=credit)
        fig.add_scatter(x=steps, y=mean, name=f"{credit} ({len(curves)} seeds)", line=dict(color=colour),
                        legendgroup=credit)
    fig.update_layout(title="Training reward by credit strategy", xaxis_title="RL step",
                      yaxis_title=f"reward (running mean of {smooth})", template="plotly_white")
    return fig


def _running_mean(curve: dict, steps: list[int], step: int, width: int) -> float:
    window = [curve[s] for s in steps if step - width < s <= step]
    return sum(window) / len(window)


def final_accuracy_bars(summary: dict) -> go.Figure:
    """Final greedy accuracy on the held-out prompts per strategy: mean with the seeds' std, each seed a dot."""
    names = list(summary["strategies"])
    entries = [summary["strategies"][n] for n in names]
    fig = go.Figure()
    fig.add_bar(x=names, y=[e["accuracy_mean"] for e in entries], name="mean",
                error_y=dict(type="data", array=[e["accuracy_std"] or 0.0 for e in entries]),
                marker_color=[_colour(i) for i in range(len(names))])
    fig.add_scatter(x=[n for n, e in zip(names, entries) for _ in e["accuracies"]],
                    y=[a for e in entries for a in e["accuracies"]], mode="markers", name="seeds",
                    marker=dict(color="black", size=6))
    fig.update_layout(title="Final accuracy (greedy, held-out prompts)", yaxis_title="accuracy",
                      template="plotly_white")
    return fig
