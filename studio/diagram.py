"""A spec's architecture as a graph and a plotly diagram (the Compose tab's picture).

`architecture_graph` is a networkx DiGraph along the residual stream: "embed", one node per layer (node
id = layer index), "unembed". A layer node holds a list of `parts`, the mixers inside that layer with
their `share` (today one part with share 1; a layer whose heads are split between mixers would list
several, and the diagram draws each as a sub-node inside the layer's box). `architecture_figure` lays the
nodes out top to bottom, snaking into columns when there are many, one marker trace per mixer family.
"""

from __future__ import annotations

import json
import math

import networkx as nx
import plotly.graph_objects as go

from studio.mixers import REGISTRY
from studio.spec import ArchSpec, LayerSpec

__all__ = ["FAMILY_COLOURS", "layer_parts", "architecture_graph", "architecture_layout", "architecture_figure"]

FAMILY_COLOURS = {"softmax": "#2563af", "linear": "#e6862e", "other": "#8c8c8c"}
EXTRA_COLOURS = ["#2e9e5b", "#7b3fb5", "#c0392b", "#17becf", "#bcbd22", "#8c564b"]  # families added later
IO_COLOUR = "#34495e"
EDGE_COLOUR = "#b0b0b0"
SYMBOLS = ["circle", "square", "diamond", "triangle-up", "pentagon", "hexagon", "star", "cross"]
MAX_ROWS = 22  # nodes per column before the diagram snakes into another column
MAX_LABEL = 26  # characters of a node's text on the canvas (the hover has everything)
MIXTURE_WIDTH = 0.12  # x extent (columns are 1 apart) of the sub-nodes of a layer that mixes several mixers


def layer_parts(layer: LayerSpec) -> list[dict]:
    """The mixers inside one layer: [{mixer, share, positional, params, family, paper, state_kind}].
    Today every layer is one mixer (share 1.0); intra-layer mixtures only need to change this."""
    cls = REGISTRY[layer.mixer]
    return [{"mixer": layer.mixer, "share": 1.0, "positional": layer.positional, "params": layer.params,
             "family": cls.family, "paper": cls.paper, "state_kind": cls.state_kind}]


def _layer_label(index: int, parts: list[dict]) -> str:
    names = [p["mixer"] if len(parts) == 1 else f"{p['mixer']} {p['share']:.0%}" for p in parts]
    return f"L{index} " + " + ".join(names)


def architecture_graph(spec: ArchSpec) -> nx.DiGraph:
    """embed -> layer 0 -> ... -> layer n-1 -> unembed; layer nodes carry `index`, `label`, `parts`."""
    graph = nx.DiGraph(name=spec.name)
    graph.add_node("embed", kind="embed", label="embed",
                   hover=f"embed: vocab {spec.vocab_size} → d_model {spec.d_model}")
    for i, layer in enumerate(spec.layers):
        parts = layer_parts(layer)
        graph.add_node(i, kind="layer", index=i, label=_layer_label(i, parts), parts=parts)
    tied = ", tied to the embedding" if spec.tie_embeddings else ""
    graph.add_node("unembed", kind="unembed", label="unembed" + (" (tied)" if spec.tie_embeddings else ""),
                   hover=f"unembed: d_model {spec.d_model} → vocab {spec.vocab_size}{tied}")
    nx.add_path(graph, ["embed", *range(len(spec.layers)), "unembed"], kind="residual")
    return graph


def architecture_layout(graph: nx.DiGraph, max_rows: int = MAX_ROWS) -> dict:
    """Node -> (x, y): the residual stream top to bottom in column 0, then bottom to top in column 1,
    and so on (at most `max_rows` nodes a column, columns balanced)."""
    order = list(nx.topological_sort(graph))
    n_cols = max(1, math.ceil(len(order) / max_rows))
    rows = max(1, math.ceil(len(order) / n_cols))
    pos = {}
    for k, node in enumerate(order):
        col, row = divmod(k, rows)
        pos[node] = (float(col), -float(row if col % 2 == 0 else rows - 1 - row))
    return pos


def _family_colour(family: str, families: list[str]) -> str:
    if family in FAMILY_COLOURS:
        return FAMILY_COLOURS[family]
    extra = [f for f in families if f not in FAMILY_COLOURS]
    return EXTRA_COLOURS[extra.index(family) % len(EXTRA_COLOURS)]


def _symbol(mixer: str) -> str:
    """Mixers of one family get different marker shapes (in registration order)."""
    same = [name for name, cls in REGISTRY.items() if cls.family == REGISTRY[mixer].family]
    return SYMBOLS[same.index(mixer) % len(SYMBOLS)]


def _part_hover(i: int, part: dict, mixture: bool) -> str:
    share = f", {part['share']:.0%} of the layer" if mixture else ""
    params = json.dumps(part["params"]) if part["params"] else "defaults"
    return (f"layer {i}<br>mixer {part['mixer']} ({part['family']} family{share})"
            f"<br>positional {part['positional']}<br>params {params}"
            f"<br>state {part['state_kind']}<br>{part['paper']}")


def architecture_figure(spec: ArchSpec, max_rows: int = MAX_ROWS) -> go.Figure:
    """The spec as a diagram: one marker trace per mixer family (legend: the family; colour by family,
    shape by mixer), a trace "embed / unembed", residual-stream lines; hover: layer, mixer, positional,
    params, state, paper. A layer mixing several mixers is a box with one sub-node per part."""
    graph = architecture_graph(spec)
    pos = architecture_layout(graph, max_rows)
    fig = go.Figure()

    xs, ys = [], []
    for s, t in graph.edges:
        (x0, y0), (x1, y1) = pos[s], pos[t]
        if x0 == x1:
            xs += [x0, x1, None]
            ys += [y0, y1, None]
        else:  # to the next column: a U-turn half a row beyond the column's end (top or bottom)
            turn = max(y0, y1) + 0.5 if max(y0, y1) == 0 else min(y0, y1) - 0.5
            xs += [x0, x0, x1, x1, None]
            ys += [y0, turn, turn, y1, None]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="residual stream", showlegend=False,
                             line={"color": EDGE_COLOUR, "width": 2}, hoverinfo="skip"))

    points: dict[str, dict[str, list]] = {}
    shapes = []
    for node, data in graph.nodes(data=True):
        if data["kind"] != "layer":
            continue
        x, y = pos[node]
        parts, mixture = data["parts"], len(data["parts"]) > 1
        width = MIXTURE_WIDTH if mixture else 0.0
        start = 0.0
        for j, part in enumerate(parts):
            centre = x - width / 2 + width * (start + part["share"] / 2)
            start += part["share"]
            p = points.setdefault(part["family"], {k: [] for k in ("x", "y", "text", "hover", "size", "symbol")})
            p["x"].append(centre)
            p["y"].append(y)
            label = data["label"] if len(data["label"]) <= MAX_LABEL else data["label"][: MAX_LABEL - 1] + "…"
            p["text"].append(label if j == len(parts) - 1 else "")
            p["hover"].append(_part_hover(node, part, mixture))
            p["size"].append(8 + 8 * part["share"])
            p["symbol"].append(_symbol(part["mixer"]))
        if mixture:
            shapes.append({"type": "rect", "x0": x - width / 2 - 0.03, "x1": x + width / 2 + 0.03,
                           "y0": y - 0.38, "y1": y + 0.38, "line": {"color": EDGE_COLOUR, "width": 1},
                           "fillcolor": "white", "layer": "below"})

    io = [node for node, d in graph.nodes(data=True) if d["kind"] != "layer"]
    fig.add_trace(go.Scatter(
        x=[pos[n][0] for n in io], y=[pos[n][1] for n in io], mode="markers+text", name="embed / unembed",
        marker={"color": IO_COLOUR, "size": 14, "symbol": "square"}, text=[graph.nodes[n]["label"] for n in io],
        textposition="middle right", hovertext=[graph.nodes[n]["hover"] for n in io],
        hovertemplate="%{hovertext}<extra></extra>"))
    ordered = [f for f in FAMILY_COLOURS if f in points] + sorted(f for f in points if f not in FAMILY_COLOURS)
    for family in ordered:
        p = points[family]
        fig.add_trace(go.Scatter(
            x=p["x"], y=p["y"], mode="markers+text", name=family, text=p["text"], textposition="middle right",
            marker={"color": _family_colour(family, ordered), "size": p["size"], "symbol": p["symbol"],
                    "opacity": 1.0, "line": {"color": "white", "width": 1}},
            hovertext=p["hover"], hovertemplate="%{hovertext}<extra></extra>"))

    n_cols = 1 + int(max(x for x, _ in pos.values()))
    rows = 1 - int(min(y for _, y in pos.values()))
    counts = " · ".join(f"{len(points[f]['x'])} {f}" for f in ordered)
    fig.update_layout(
        title={"text": f"{spec.name}: {spec.n_layers} layers ({counts})"},
        xaxis={"visible": False, "range": [-0.3, n_cols - 0.05]},
        yaxis={"visible": False, "range": [-rows + 0.2, 0.8]},  # U-turns reach half a row out
        shapes=shapes, height=int(min(760, max(260, 28 * rows + 110))),
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0},
        margin={"l": 20, "r": 20, "t": 80, "b": 20}, plot_bgcolor="white", hovermode="closest",
    )
    return fig
