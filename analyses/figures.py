"""Plotly figures (and one HTML snippet) of attention patterns, the preplan-and-anchor rhythm
(arXiv 2510.13554) and token graphs. Pure functions of tensors / `Rhythm` / networkx graphs; every figure
is a `plotly.graph_objects.Figure`. Conventions follow `studio.app_helpers.pattern_figure`: queries down,
keys across, future keys (k > q) blank, tokens as tick labels; signed patterns (lightning / linear
mixers are unnormalised and can be negative) get a diverging red-blue scale centred at 0, nonnegative
ones (softmax) a sequential one.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence

import networkx as nx
import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

__all__ = ["head_grid", "rhythm_trace", "highlighted_text_html", "head_span_bars", "graph_figure",
           "PREPLAN_COLOUR", "ANCHOR_COLOUR", "BOTH_COLOUR", "LOCAL_COLOUR", "GLOBAL_COLOUR"]

# One palette for every view of the rhythm: preplan tokens / local heads (WAAD) orange, anchors / global
# heads (FAI) purple, tokens that are both green.
PREPLAN_COLOUR = "#e6862e"
ANCHOR_COLOUR = "#7b3fb5"
BOTH_COLOUR = "#2e9e5b"
LOCAL_COLOUR = PREPLAN_COLOUR
GLOBAL_COLOUR = ANCHOR_COLOUR
OTHER_COLOUR = "#b0b0b0"
MAX_TICK_TOKENS = 80  # token text as x tick labels of rhythm_trace / graph_figure up to this many tokens


def _np(x, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        x = x.to(torch.float64) if x.dtype != torch.bool else x
        x = x.numpy()
    return np.asarray(x).astype(dtype)


def _labels(labels: Sequence[str] | None, n: int) -> list[str]:
    if labels is None:
        return [str(i) for i in range(n)]
    labels = [str(label) for label in labels]
    if len(labels) != n:
        raise ValueError(f"labels must have one entry per position ({n}), got {len(labels)}")
    return labels


def _colour_scale(values: np.ndarray) -> dict:
    """Shared colour axis: if any finite value is negative, diverging RdBu reversed (as pattern_figure:
    negative blue, positive red) centred at 0 with symmetric limits; else sequential Blues from 0."""
    finite = values[np.isfinite(values)]
    signed = bool(finite.size and finite.min() < 0)
    if signed:
        m = float(np.abs(finite).max()) or 1.0
        return {"colorscale": "RdBu", "reversescale": True, "cmid": 0.0, "cmin": -m, "cmax": m}
    top = float(finite.max()) if finite.size else 1.0
    return {"colorscale": "Blues", "reversescale": False, "cmin": 0.0, "cmax": top if top > 0 else 1.0}


def head_grid(patterns, labels: Sequence[str] | None = None, title: str | None = None,
              max_heads: int = 16) -> go.Figure:
    """The patterns [H, T, T] of one layer as a grid of heatmaps, one per head (the first `max_heads`),
    all on one shared colour axis (`layout.coloraxis`): diverging and centred at 0 if any shown entry on
    or below the diagonal is negative, sequential from 0 otherwise. Entries above the diagonal are blank."""
    a = _np(patterns)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"patterns must be [H, T, T] (or one [T, T]), got {tuple(a.shape)}")
    if max_heads < 1:
        raise ValueError(f"max_heads must be >= 1, got {max_heads}")
    n_heads, n = a.shape[0], a.shape[1]
    shown = min(n_heads, max_heads)
    labels = _labels(labels, n)
    z = a[:shown].copy()
    z[:, np.triu_indices(n, k=1)[0], np.triu_indices(n, k=1)[1]] = np.nan
    cols = math.ceil(math.sqrt(shown))
    rows = math.ceil(shown / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"head {h}" for h in range(shown)],
                        horizontal_spacing=0.04, vertical_spacing=0.08 if rows > 1 else 0.0)
    # Positions only in the hover (token text is on the axes): per-cell hover strings would cost
    # H x T x T strings (13 MB of JSON for 4 heads at T=256); float32 z travels as a compact binary array.
    for h in range(shown):
        fig.add_trace(
            go.Heatmap(z=z[h].astype(np.float32), x=np.arange(n), y=np.arange(n), coloraxis="coloraxis",
                       name=f"head {h}",
                       hovertemplate=f"head {h}<br>query %{{y}}<br>key %{{x}}<br>weight %{{z:.4f}}<extra></extra>"),
            row=h // cols + 1, col=h % cols + 1,
        )
    step = max(1, -(-n // max(8, 48 // cols)))
    ticks = list(range(0, n, step))
    axis = {"tickmode": "array", "tickvals": ticks, "ticktext": [labels[i] for i in ticks], "tickangle": 0}
    fig.update_xaxes(**axis)
    fig.update_yaxes(**axis, autorange="reversed")
    scale = _colour_scale(z)
    fig.update_layout(
        coloraxis={**scale, "colorbar": {"title": {"text": "weight"}}},
        title={"text": (title or "attention patterns")
               + (f" (first {shown} of {n_heads} heads)" if shown < n_heads else "")},
        height=max(320, 260 * rows + 80),
        margin={"l": 60, "r": 20, "t": 90, "b": 20},
        plot_bgcolor="white",
    )
    return fig


def _rhythm_labels(r, labels: Sequence[str] | None, n: int) -> list[str]:
    if labels is not None:
        return _labels(labels, n)
    if getattr(r, "tokens", None) is not None and len(r.tokens) == n:
        return [str(int(t)) for t in r.tokens]
    return [str(i) for i in range(n)]


def rhythm_trace(r, labels: Sequence[str] | None = None, title: str | None = None) -> go.Figure:
    """WAAD (top row, with |Delta WAAD| dotted) and FAI (bottom row) of a `Rhythm` over token positions.
    Preplan tokens are marked on WAAD, anchor tokens on FAI (marker traces named "preplan" / "anchors",
    x = exactly the marked positions); a vertical line marks the response start and the prompt is shaded.
    Token text (labels, else the token ids) is in the hover and, for T <= 80, the x tick labels."""
    waad = _np(r.waad).reshape(-1)
    n = waad.shape[0]
    delta = _np(r.waad_delta).reshape(-1)
    fai = _np(r.fai).reshape(-1)
    preplan = _np(r.preplan, bool).reshape(-1)
    anchors = _np(r.anchors, bool).reshape(-1)
    for name, series in (("waad_delta", delta), ("fai", fai), ("preplan", preplan), ("anchors", anchors)):
        if series.shape[0] != n:
            raise ValueError(f"{name} has length {series.shape[0]}, waad has {n}")
    labels = _rhythm_labels(r, labels, n)
    x = list(range(n))
    hover = [f"{t} '{labels[t]}'" for t in x]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("WAAD: local heads (preplan tokens marked)",
                                        "FAI: global heads (anchor tokens marked)"))
    fig.add_trace(go.Scatter(x=x, y=waad, mode="lines", name="WAAD", line={"color": "#4a6fa5"},
                             text=hover, hovertemplate="%{text}<br>WAAD %{y:.4f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=delta, mode="lines", name="|ΔWAAD|",
                             line={"color": "#999999", "dash": "dot"}, text=hover,
                             hovertemplate="%{text}<br>|ΔWAAD| %{y:.4f}<extra></extra>"), row=1, col=1)
    pre = np.flatnonzero(preplan).tolist()
    fig.add_trace(go.Scatter(x=pre, y=waad[pre], mode="markers", name="preplan",
                             marker={"color": PREPLAN_COLOUR, "size": 9, "symbol": "diamond"},
                             text=[hover[t] for t in pre],
                             hovertemplate="preplan %{text}<br>WAAD %{y:.4f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=fai, mode="lines", name="FAI", line={"color": "#4a8f6f"},
                             text=hover, hovertemplate="%{text}<br>FAI %{y:.4f}<extra></extra>"), row=2, col=1)
    anc = np.flatnonzero(anchors).tolist()
    fig.add_trace(go.Scatter(x=anc, y=fai[anc], mode="markers", name="anchors",
                             marker={"color": ANCHOR_COLOUR, "size": 9, "symbol": "star"},
                             text=[hover[t] for t in anc],
                             hovertemplate="anchor %{text}<br>FAI %{y:.4f}<extra></extra>"), row=2, col=1)
    start = int(getattr(r, "response_start", 0))
    if start > 0:
        fig.add_vrect(x0=-0.5, x1=start - 0.5, fillcolor="#dddddd", opacity=0.35, line_width=0,
                      layer="below", row="all", col=1)
    fig.add_vline(x=start, line={"color": "#c0392b", "dash": "dash", "width": 1.5}, row="all", col=1)
    fig.add_annotation(x=start, y=1.0, yref="paper", xref="x", text="response start", showarrow=False,
                       xanchor="left", yanchor="bottom", font={"color": "#c0392b", "size": 11})
    if n <= MAX_TICK_TOKENS:
        fig.update_xaxes(tickmode="array", tickvals=x, ticktext=labels, tickangle=-60 if n > 30 else 0,
                         row=2, col=1)
    fig.update_xaxes(title={"text": "token position"}, row=2, col=1)
    fig.update_yaxes(title={"text": "WAAD"}, row=1, col=1)
    fig.update_yaxes(title={"text": "FAI"}, row=2, col=1)
    fig.update_layout(title={"text": title or "preplan-and-anchor rhythm"}, height=560, hovermode="closest",
                      margin={"l": 60, "r": 20, "t": 90, "b": 40}, plot_bgcolor="white")
    return fig


_HTML_STYLE = (
    "<style>"
    ".rhythm-text{font-family:monospace;line-height:1.9;white-space:pre-wrap}"
    ".rhythm-text .tok{padding:1px 2px;margin:0 1px;border-radius:3px}"
    f".rhythm-text .tok.preplan{{background:{PREPLAN_COLOUR};color:#fff}}"
    f".rhythm-text .tok.anchor{{background:{ANCHOR_COLOUR};color:#fff}}"
    f".rhythm-text .tok.both{{background:{BOTH_COLOUR};color:#fff}}"
    ".rhythm-text .tok.prompt{color:#9a9a9a}"
    ".rhythm-legend{font-family:sans-serif;font-size:0.9em;margin-bottom:6px}"
    ".rhythm-legend .swatch{padding:1px 6px;margin-right:10px;border-radius:3px}"
    "</style>"
)
_INLINE = {  # also inline, so the colours survive hosts that strip <style>
    "preplan": f"background:{PREPLAN_COLOUR};color:#fff",
    "anchor": f"background:{ANCHOR_COLOUR};color:#fff",
    "both": f"background:{BOTH_COLOUR};color:#fff",
    "prompt": "color:#9a9a9a",
    "plain": "",
}
_TITLES = {"preplan": "preplan", "anchor": "anchor", "both": "preplan and anchor", "prompt": "prompt",
           "plain": "response"}


def highlighted_text_html(labels: Sequence[str], preplan, anchors, response_start: int = 0) -> str:
    """The tokens as an HTML snippet: one `<span class="tok KIND">` per token, KIND one of `prompt`
    (t < response_start: greyed; marks there are ignored, as the rhythm never marks the prompt),
    `preplan`, `anchor`, `both` (preplan and anchor) or `plain`, in that order of precedence after
    `prompt`; each span's title gives the position and kind. Token text is HTML-escaped. A legend
    (`div.rhythm-legend`, swatches are `span.swatch`, not `.tok`) comes first."""
    labels = [str(label) for label in labels]
    n = len(labels)
    pre = _np(preplan, bool).reshape(-1)
    anc = _np(anchors, bool).reshape(-1)
    if pre.shape[0] != n or anc.shape[0] != n:
        raise ValueError(f"preplan and anchors must have one entry per token ({n}), got "
                         f"{pre.shape[0]} and {anc.shape[0]}")
    start = int(response_start)
    if start < 0:
        raise ValueError(f"response_start must be >= 0, got {start}")
    legend = "".join(
        f'<span class="swatch" style="{_INLINE[kind] or "border:1px solid #ccc"}">{_TITLES[kind]}</span>'
        for kind in ("prompt", "preplan", "anchor", "both")
    )
    spans = []
    for t, label in enumerate(labels):
        if t < start:
            kind = "prompt"
        elif pre[t] and anc[t]:
            kind = "both"
        elif pre[t]:
            kind = "preplan"
        elif anc[t]:
            kind = "anchor"
        else:
            kind = "plain"
        style = f' style="{_INLINE[kind]}"' if _INLINE[kind] else ""
        title = html.escape(f"{t}: {_TITLES[kind]}", quote=True)
        spans.append(f'<span class="tok {kind}" data-pos="{t}" title="{title}"{style}>'
                     f"{html.escape(label, quote=True)}</span>")
    return (f'{_HTML_STYLE}<div class="rhythm-legend">{legend}</div>'
            f'<div class="rhythm-text">{"".join(spans)}</div>')


def head_span_bars(head_span: Mapping[int, object], local_heads: Iterable[tuple[int, int]] = (),
                   global_heads: Iterable[tuple[int, int]] = (), title: str | None = None) -> go.Figure:
    """Head spans d(l, h) as bars grouped by layer (a two-level category axis: layer, then head), one bar
    per (layer, head). Bars are coloured by group: one `go.Bar` trace per non-empty group among
    "local heads", "global heads", "local and global" (possible with a single head) and "other heads"."""
    spans = {int(layer): _np(values).reshape(-1) for layer, values in head_span.items()}
    local = {(int(layer), int(head)) for layer, head in local_heads}
    glob = {(int(layer), int(head)) for layer, head in global_heads}
    for layer, head in local | glob:
        if layer not in spans or not 0 <= head < spans[layer].shape[0]:
            raise ValueError(f"head ({layer}, {head}) is not in head_span")
    groups = {"local heads": ([], LOCAL_COLOUR), "global heads": ([], GLOBAL_COLOUR),
              "local and global": ([], BOTH_COLOUR), "other heads": ([], OTHER_COLOUR)}
    for layer in sorted(spans):
        for head, value in enumerate(spans[layer]):
            key = (layer, head)
            name = ("local and global" if key in local and key in glob else "local heads" if key in local
                    else "global heads" if key in glob else "other heads")
            groups[name][0].append((layer, head, float(value)))
    fig = go.Figure()
    for name, (bars, colour) in groups.items():
        if not bars:
            continue
        fig.add_trace(go.Bar(
            x=[[f"layer {layer}" for layer, _, _ in bars], [f"h{head}" for _, head, _ in bars]],
            y=[value for _, _, value in bars], name=name, marker={"color": colour},
            hovertemplate="%{x}<br>span %{y:.3f}<extra>" + name + "</extra>",
        ))
    fig.update_layout(barmode="overlay", title={"text": title or "head spans d(l, h)"},
                      yaxis={"title": {"text": "head span (tokens)"}}, xaxis={"title": {"text": "layer / head"}},
                      height=420, margin={"l": 60, "r": 20, "t": 70, "b": 60}, plot_bgcolor="white")
    return fig


def graph_figure(graph: nx.DiGraph, max_nodes: int = 200, title: str | None = None,
                 n_levels: int = 4) -> go.Figure:
    """A token graph (`analyses.graph.token_graph`) as an arc diagram: nodes on a line at x = their
    `position` (default: the node id), each edge s -> t an arc above the line from s to t (height grows with
    t - s; a self loop a small circle). Edge opacity grows with |weight| (relative to the largest,
    in `n_levels` steps, one line trace per step and sign: positive blue "edges +", negative red "edges -");
    an "edge info" trace of arc tops carries the hover. The "nodes" trace: size by weighted in + out degree
    (|weight|), hover with label and both degrees. More than `max_nodes` nodes: the `max_nodes` with the
    largest weighted degree are kept (ties: earlier position) and the title says so."""
    if max_nodes < 1:
        raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
    if n_levels < 1:
        raise ValueError(f"n_levels must be >= 1, got {n_levels}")

    def strength(data) -> float:
        return abs(float(data.get("weight", 1.0)))

    def pos(node) -> float:
        return float(graph.nodes[node].get("position", node))

    din = {node: 0.0 for node in graph.nodes}
    dout = {node: 0.0 for node in graph.nodes}
    for s, t, data in graph.edges(data=True):
        dout[s] += strength(data)
        din[t] += strength(data)
    nodes = sorted(graph.nodes, key=pos)
    total = len(nodes)
    if total > max_nodes:
        keep = set(sorted(nodes, key=lambda v: (-(din[v] + dout[v]), pos(v)))[:max_nodes])
        nodes = [v for v in nodes if v in keep]
    kept = set(nodes)
    edges = [(s, t, float(d.get("weight", 1.0))) for s, t, d in graph.edges(data=True) if s in kept and t in kept]
    wmax = max((abs(w) for _, _, w in edges), default=1.0) or 1.0

    fig = go.Figure()
    theta = np.linspace(0.0, math.pi, 24)
    tops_x, tops_y, tops_text = [], [], []
    in_legend = set()
    for sign, colour, label in ((1, "37, 99, 175", "edges +"), (-1, "192, 57, 43", "edges -")):
        for level in range(n_levels):
            xs, ys = [], []
            for s, t, w in edges:
                if (w >= 0) != (sign > 0):
                    continue
                if min(n_levels - 1, int(abs(w) / wmax * n_levels)) != level:
                    continue
                x0, x1 = pos(s), pos(t)
                if x0 == x1:  # self loop: a small circle standing on the node
                    angle = np.linspace(0.0, 2 * math.pi, 24)
                    ax, ay = x0 + 0.25 * np.sin(angle), 0.25 - 0.25 * np.cos(angle)
                else:
                    half = (x1 - x0) / 2
                    ax = x0 + half * (1 - np.cos(theta))
                    ay = abs(half) * np.sin(theta)
                xs += ax.tolist() + [None]
                ys += ay.tolist() + [None]
                tops_x.append(float(ax[len(ax) // 2]))
                tops_y.append(float(ay[len(ay) // 2]))
                tops_text.append(f"{s} '{graph.nodes[s].get('label', s)}' → {t} "
                                 f"'{graph.nodes[t].get('label', t)}'<br>weight {w:.4f}")
            if xs:
                opacity = (level + 1) / n_levels
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=label, legendgroup=label,
                                         showlegend=label not in in_legend,
                                         line={"color": f"rgba({colour}, {opacity:.3f})", "width": 1.5},
                                         hoverinfo="skip"))
                in_legend.add(label)
    if tops_x:
        fig.add_trace(go.Scatter(x=tops_x, y=tops_y, mode="markers", name="edge info", showlegend=False,
                                 marker={"size": 6, "color": "rgba(0,0,0,0)"}, text=tops_text,
                                 hovertemplate="%{text}<extra></extra>"))
    deg = np.array([din[v] + dout[v] for v in nodes], dtype=np.float64)
    dmax = float(deg.max()) if deg.size and deg.max() > 0 else 1.0
    labels = [str(graph.nodes[v].get("label", v)) for v in nodes]
    fig.add_trace(go.Scatter(
        x=[pos(v) for v in nodes], y=[0.0] * len(nodes), mode="markers", name="nodes",
        marker={"size": (6 + 18 * deg / dmax).tolist(), "color": "#34495e", "line": {"color": "white", "width": 1}},
        text=[f"{v} '{label}'<br>in {din[v]:.3f} (drawn from earlier)<br>out {dout[v]:.3f} (read by later)"
              for v, label in zip(nodes, labels)],
        hovertemplate="%{text}<extra></extra>",
    ))
    xaxis = {"title": {"text": "token position"}, "zeroline": False, "showgrid": False}
    if len(nodes) <= MAX_TICK_TOKENS:
        xaxis.update(tickmode="array", tickvals=[pos(v) for v in nodes], ticktext=labels)
    shown = f" ({len(nodes)} of {total} nodes)" if len(nodes) < total else ""
    fig.update_layout(title={"text": (title or "token graph (key → query)") + shown}, xaxis=xaxis,
                      yaxis={"visible": False}, height=420,
                      margin={"l": 20, "r": 20, "t": 70, "b": 60}, plot_bgcolor="white", hovermode="closest")
    return fig
