"""Token graphs, centralities, the anchor/centrality overlap and the plotly figures of `analyses`, on
crafted inputs with known answers, plus one end-to-end pass over a real `analyses.rhythm` of a tiny model."""

import itertools
import math
from html.parser import HTMLParser

import networkx as nx
import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import analyses
import studio
from analyses import figures
from analyses.graph import anchor_centrality_overlap, centralities, token_graph
from analyses.rhythm import Rhythm

SPEC = {"vocab_size": 64, "d_model": 32, "n_layers": 4, "n_heads": 4, "pattern": "LS",
        "pattern_map": {"L": "lightning", "S": "softmax"}}
T_MODEL, START = 30, 8


@pytest.fixture(scope="module")
def tiny():
    """A real rhythm of a tiny hybrid model (lightning + softmax), T = 30, plus its layer patterns."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = studio.build_model(SPEC, seed=0).eval()
        tokens = torch.randint(0, SPEC["vocab_size"], (T_MODEL,), generator=torch.Generator().manual_seed(1))
        r = analyses.rhythm(model, tokens, START)
        names = {f"blocks.{layer}.attn.hook_pattern" for layer in range(SPEC["n_layers"])}
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n in names)
        patterns = {layer: cache[f"blocks.{layer}.attn.hook_pattern"][0].double() for layer in range(4)}
        labels = [f"t{int(t)}" for t in tokens]
        yield r, patterns, labels
    finally:
        torch.set_num_threads(threads)


def star(n=6, noise=True):
    """Every query attends only to key 0; junk above the diagonal (future keys) must be ignored."""
    a = torch.zeros(n, n, dtype=torch.float64)
    a[:, 0] = 1.0
    if noise:
        a += torch.triu(torch.full((n, n), 7.0, dtype=torch.float64), diagonal=1)
    return a


def edges(g):
    return {(s, t): d["weight"] for s, t, d in g.edges(data=True)}


# ---- token_graph -------------------------------------------------------------------------------------
def test_token_graph_star_edges_and_nodes():
    labels = list("abcdef")
    g = token_graph(star(), labels=labels)  # default: top_k = 3
    assert isinstance(g, nx.DiGraph) and sorted(g.nodes) == list(range(6))
    assert edges(g) == {(0, t): 1.0 for t in range(1, 6)}
    assert [g.nodes[t]["label"] for t in range(6)] == labels
    assert [g.nodes[t]["position"] for t in range(6)] == list(range(6))
    assert token_graph(star(), threshold=0.5).edges == g.edges
    looped = token_graph(star(), self_loops=True)
    assert edges(looped) == {(0, t): 1.0 for t in range(6)}  # row 0's only key is itself
    assert token_graph(star(4)).nodes[2]["label"] == "2"  # no labels: the position


def crafted():
    a = np.zeros((4, 4))
    a[1, :2] = [0.2, 0.7]
    a[2, :3] = [-0.6, 0.1, 0.3]
    a[3, :4] = [0.1, -0.5, 0.3, 0.9]
    return a


def test_token_graph_top_k_threshold_and_ties():
    a = crafted()
    # row 1: only key 0 (key 1 is itself); row 2: -0.6, 0.1; row 3: 0.1, -0.5, 0.3 (0.9 is the self weight)
    assert edges(token_graph(a, top_k=2)) == {(0, 1): 0.2, (0, 2): -0.6, (1, 2): 0.1, (1, 3): -0.5, (2, 3): 0.3}
    assert edges(token_graph(a, top_k=1)) == {(0, 1): 0.2, (0, 2): -0.6, (1, 3): -0.5}  # by |weight|
    assert edges(token_graph(a, top_k=1, self_loops=True)) == {(1, 1): 0.7, (0, 2): -0.6, (3, 3): 0.9}
    assert edges(token_graph(a, top_k=0)) == {}
    assert edges(token_graph(a, threshold=0.3)) == {(0, 2): -0.6, (1, 3): -0.5, (2, 3): 0.3}  # >= keeps 0.3
    assert set(token_graph(a, threshold=0.0).edges) == {(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)}
    assert set(token_graph(torch.as_tensor(a), threshold=0.3).edges) == {(0, 2), (1, 3), (2, 3)}  # tensors too
    tie = np.zeros((4, 4))
    tie[3, :3] = [0.4, -0.4, 0.4]
    assert edges(token_graph(tie, top_k=1)) == {(0, 3): 0.4}  # ties: the earlier key
    assert edges(token_graph(tie, top_k=2)) == {(0, 3): 0.4, (1, 3): -0.4}


@pytest.mark.parametrize("kwargs, match", [
    ({"threshold": 0.1, "top_k": 2}, "exactly one"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 1.5}, "top_k"),
    ({"threshold": -0.1}, "threshold"),
    ({"threshold": float("nan")}, "threshold"),
    ({"labels": ["a", "b"]}, "labels"),
])
def test_token_graph_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        token_graph(crafted(), **kwargs)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 3), (5,)])
def test_token_graph_rejects_non_square(shape):
    with pytest.raises(ValueError, match="square"):
        token_graph(np.zeros(shape))


# ---- centralities ------------------------------------------------------------------------------------
def reference_pagerank(g, alpha=0.85):
    """networkx's own PageRank: nx.pagerank when scipy is there, else its pure-Python power iteration."""
    try:
        import scipy  # noqa: F401
        return nx.pagerank(g, alpha=alpha, weight="weight", tol=1e-13, max_iter=10_000)
    except ImportError:
        from networkx.algorithms.link_analysis.pagerank_alg import _pagerank_python
        return _pagerank_python(g, alpha=alpha, weight="weight", tol=1e-13, max_iter=10_000)


def abs_graph(g):
    h = nx.DiGraph()
    h.add_nodes_from(g.nodes)
    h.add_weighted_edges_from((s, t, abs(d["weight"])) for s, t, d in g.edges(data=True))
    return h


def close_dicts(got, want, tol=1e-9):
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=tol), key


def test_centralities_star():
    g = token_graph(star())
    c = centralities(g)
    assert set(c) == {"in_degree", "out_degree", "pagerank", "betweenness"}
    assert c["out_degree"] == {0: 5.0, 1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 0.0}
    assert c["in_degree"] == {0: 0.0, 1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0}
    pr = c["pagerank"]
    assert max(pr, key=pr.get) == 0 and all(pr[0] > pr[t] for t in range(1, 6))
    assert sum(pr.values()) == pytest.approx(1.0)
    close_dicts(pr, reference_pagerank(g.reverse()))
    # on the forward graph the mass would sit on the queries instead
    forward = reference_pagerank(g)
    assert forward[0] < forward[1]
    assert c["betweenness"] == {t: 0.0 for t in range(6)}  # no path runs through a star's node


def test_centralities_match_networkx_on_signed_pattern():
    a = torch.randn(9, 9, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g = token_graph(a, top_k=3)
    assert any(w < 0 for w in edges(g).values())
    h = abs_graph(g)
    c = centralities(g, alpha=0.9)
    close_dicts(c["in_degree"], dict(h.in_degree(weight="weight")))
    close_dicts(c["out_degree"], dict(h.out_degree(weight="weight")))
    close_dicts(c["pagerank"], reference_pagerank(h.reverse(), alpha=0.9))
    dist = nx.DiGraph()
    dist.add_nodes_from(h.nodes)
    dist.add_weighted_edges_from((s, t, 1.0 / w) for s, t, w in h.edges(data="weight"))
    close_dicts(c["betweenness"], nx.betweenness_centrality(dist, weight="weight", normalized=True))
    assert any(v > 0 for v in c["betweenness"].values())


def test_centralities_empty_and_edgeless():
    assert centralities(nx.DiGraph()) == {"in_degree": {}, "out_degree": {}, "pagerank": {}, "betweenness": {}}
    c = centralities(token_graph(np.eye(3)))  # only self weights: no edges
    assert c["pagerank"] == pytest.approx({0: 1 / 3, 1: 1 / 3, 2: 1 / 3})


# ---- anchor_centrality_overlap -----------------------------------------------------------------------
def brute_baseline(n_r, anchors, k, observed):
    r = range(n_r)
    jac, tail, count = 0.0, 0, 0
    for c in itertools.combinations(r, k):
        x = len(set(c) & set(anchors))
        union = len(anchors) + k - x
        jac += x / union
        tail += x >= observed
        count += 1
    return jac / count, tail / count


def test_anchor_centrality_overlap_known_sets():
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[3, 5, 7]] = True
    cent = {p: 0.0 for p in range(10)}
    cent.update({0: 100.0, 1: 50.0, 3: 9.0, 4: 8.0, 5: 7.0, 6: 6.0})  # 0, 1 are prompt: not candidates
    out = anchor_centrality_overlap(mask, cent, response_start=2)
    assert (out["n_response"], out["n_anchor"], out["k"]) == (8, 3, 3)
    assert out["anchors"] == [3, 5, 7] and out["central"] == [3, 4, 5]
    assert out["intersection"] == 2
    assert out["jaccard"] == pytest.approx(2 / 4)
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == pytest.approx(2 / 3)
    assert out["precision_expected"] == pytest.approx(3 / 8)
    assert out["intersection_expected"] == pytest.approx(9 / 8)
    jac, pval = brute_baseline(8, [1, 3, 5], 3, 2)  # positions shifted by response_start: same counts
    assert out["jaccard_expected"] == pytest.approx(jac) and out["pvalue"] == pytest.approx(pval)

    q = anchor_centrality_overlap(mask, cent, q=0.5, response_start=2)  # k = ceil(0.5 * 8) = 4
    assert q["k"] == 4 and q["central"] == [3, 4, 5, 6]
    assert q["jaccard"] == pytest.approx(2 / 5) and q["precision"] == pytest.approx(2 / 4)
    assert q["recall"] == pytest.approx(2 / 3) and q["recall_expected"] == pytest.approx(4 / 8)

    whole = anchor_centrality_overlap(mask, cent)  # no response_start: all 10 positions compete
    assert whole["central"] == [0, 1, 3] and whole["intersection"] == 1
    assert whole["jaccard"] == pytest.approx(1 / 5) and whole["precision_expected"] == pytest.approx(3 / 10)

    perfect = anchor_centrality_overlap([False, True, True, False], {0: 0.1, 1: 5.0, 2: 4.0, 3: 0.2})
    assert perfect["jaccard"] == 1.0 and perfect["precision"] == 1.0
    assert perfect["pvalue"] == pytest.approx(1 / math.comb(4, 2))

    empty = anchor_centrality_overlap([False] * 4, {p: float(p) for p in range(4)})
    assert empty["k"] == 0 and math.isnan(empty["jaccard"]) and math.isnan(empty["precision"])
    with pytest.raises(ValueError, match="no value"):
        anchor_centrality_overlap(mask, {0: 1.0}, response_start=2)


# ---- figures -----------------------------------------------------------------------------------------
def test_head_grid_sequential_and_diverging():
    n = 5
    labels = ["<a>", "b", "c", "d", "e"]
    soft = torch.softmax(torch.randn(3, n, n, generator=torch.Generator().manual_seed(0)), -1)
    fig = figures.head_grid(soft, labels=labels, title="layer 1")
    heat = [t for t in fig.data if isinstance(t, go.Heatmap)]
    assert isinstance(fig, go.Figure) and len(heat) == 3 == len(fig.data)
    assert [a.text for a in fig.layout.annotations] == ["head 0", "head 1", "head 2"]
    assert all(t.coloraxis == "coloraxis" for t in heat)
    ca = fig.layout.coloraxis
    assert ca.cmid is None and ca.cmin == 0 and not ca.reversescale
    assert ca.cmax == pytest.approx(float(torch.tril(soft).max()))
    assert list(fig.layout.xaxis.ticktext) == labels and list(fig.layout.yaxis.ticktext) == labels
    assert list(fig.layout.xaxis2.ticktext) == labels and fig.layout.yaxis.autorange == "reversed"
    assert np.isnan(np.asarray(heat[0].z, dtype=float)[0, 1])  # future key blank

    above = soft.clone()
    above[1, 0, 3] = -2.0  # negative only above the diagonal: ignored, still sequential
    assert figures.head_grid(above).layout.coloraxis.cmid is None
    signed = soft.clone()
    signed[2, 4, 1] = -0.5
    ca = figures.head_grid(signed).layout.coloraxis
    assert ca.cmid == 0 and ca.reversescale and ca.cmin == -ca.cmax
    assert ca.cmax == pytest.approx(float(torch.tril(signed).abs().max()))

    few = figures.head_grid(torch.rand(6, n, n), max_heads=4)
    assert len(few.data) == 4 and "first 4 of 6" in few.layout.title.text


def crafted_rhythm():
    waad = torch.tensor([0.0, 1.0, 2.0, 1.5, 3.0, 2.5, 2.0, 4.0], dtype=torch.float64)
    fai = torch.tensor([0.5, 0.4, 0.3, 0.2, 0.6, 0.1, 0.05, 0.0], dtype=torch.float64)
    pre = torch.tensor([0, 0, 0, 1, 0, 0, 1, 0], dtype=torch.bool)
    anc = torch.tensor([0, 0, 0, 1, 1, 0, 0, 0], dtype=torch.bool)
    return Rhythm(layers=[0], head_span={0: torch.tensor([1.0, 2.0])}, local_heads=[(0, 0)],
                  global_heads=[(0, 1)], waad=waad, waad_delta=analyses.waad_delta(waad), fai=fai,
                  preplan=pre, anchors=anc, entropy=None, tokens=torch.arange(8), response_start=3)


def trace(fig, name):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, name
    return found[0]


def test_rhythm_trace_crafted():
    r = crafted_rhythm()
    labels = list("abcdefgh")
    fig = figures.rhythm_trace(r, labels=labels)
    assert list(trace(fig, "preplan").x) == [3, 6]
    assert list(trace(fig, "preplan").y) == [1.5, 2.0]
    assert list(trace(fig, "anchors").x) == [3, 4]
    assert list(trace(fig, "anchors").y) == pytest.approx([0.2, 0.6])
    assert list(trace(fig, "WAAD").y) == r.waad.tolist() and list(trace(fig, "FAI").y) == r.fai.tolist()
    assert trace(fig, "preplan").yaxis == "y" and trace(fig, "anchors").yaxis == "y2"
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert lines and all(s.x0 == 3 == s.x1 for s in lines)
    assert list(fig.layout.xaxis2.ticktext) == labels
    assert "'d'" in trace(fig, "preplan").text[0]
    default = figures.rhythm_trace(r)  # no labels: token ids
    assert list(default.layout.xaxis2.ticktext) == [str(i) for i in range(8)]


def test_rhythm_trace_no_tick_labels_when_long():
    n = 100
    r = crafted_rhythm()
    r.waad, r.fai = torch.rand(n), torch.rand(n)
    r.waad_delta = analyses.waad_delta(r.waad)
    r.preplan, r.anchors = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    r.tokens = torch.arange(n)
    fig = figures.rhythm_trace(r)
    assert fig.layout.xaxis2.ticktext is None and list(trace(fig, "preplan").x) == []


class SpanCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tokens, self._open = [], None

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class", "")
        if tag == "span" and cls.split()[:1] == ["tok"]:
            self._open = [cls, ""]

    def handle_data(self, data):
        if self._open is not None:
            self._open[1] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.tokens.append(tuple(self._open))
            self._open = None


def test_highlighted_text_html_escapes_and_classes():
    labels = ["A", "<script>", 'x"&y', "c", "d"]
    pre = [True, True, True, False, False]  # position 0 is prompt: its mark is ignored
    anc = torch.tensor([True, False, True, True, False])
    out = figures.highlighted_text_html(labels, pre, anc, response_start=1)
    assert "<script>" not in out and "&lt;script&gt;" in out and "&quot;&amp;" in out
    parser = SpanCollector()
    parser.feed(out)
    assert parser.tokens == [("tok prompt", "A"), ("tok preplan", "<script>"), ("tok both", 'x"&y'),
                             ("tok anchor", "c"), ("tok plain", "d")]
    assert out.count('class="tok ') == 5 and "rhythm-legend" in out
    for word in ("prompt", "preplan", "anchor", "preplan and anchor"):
        assert f">{word}</span>" in out  # legend entries
    with pytest.raises(ValueError, match="one entry per token"):
        figures.highlighted_text_html(labels, pre[:3], anc)


def test_head_span_bars_one_bar_per_head():
    spans = {1: torch.tensor([1.0, 4.0, 2.0]), 2: torch.tensor([0.5, 3.0, 6.0])}
    fig = figures.head_span_bars(spans, local_heads=[(1, 0), (2, 0)], global_heads=[(2, 2)])
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    pairs = {}
    for bar in bars:
        for layer, head, value in zip(bar.x[0], bar.x[1], bar.y):
            assert (layer, head) not in pairs
            pairs[(layer, head)] = (bar.name, value)
    assert len(pairs) == 6
    assert pairs[("layer 1", "h0")] == ("local heads", 1.0) and pairs[("layer 2", "h0")] == ("local heads", 0.5)
    assert pairs[("layer 2", "h2")] == ("global heads", 6.0) and pairs[("layer 1", "h1")] == ("other heads", 4.0)
    assert trace(fig, "local heads").marker.color != trace(fig, "global heads").marker.color
    with pytest.raises(ValueError, match="not in head_span"):
        figures.head_span_bars(spans, local_heads=[(3, 0)])


def arcs(tr):
    return sum(1 for v in tr.x if v is None)


def test_graph_figure_small_graph():
    g = token_graph(crafted(), labels=list("wxyz"), top_k=2)
    fig = figures.graph_figure(g)
    nodes = trace(fig, "nodes")
    assert list(nodes.x) == [0, 1, 2, 3] and list(nodes.y) == [0, 0, 0, 0]
    pos_edges = [t for t in fig.data if t.name == "edges +"]
    neg_edges = [t for t in fig.data if t.name == "edges -"]
    assert sum(map(arcs, pos_edges)) == 3 and sum(map(arcs, neg_edges)) == 2  # 0.2, 0.1, 0.3 / -0.6, -0.5
    assert len(trace(fig, "edge info").x) == 5
    # the strongest edge (|-0.6|) is fully opaque
    assert any(t.line.color.endswith("1.000)") for t in neg_edges)
    # node size follows weighted in + out degree (|w|): 0: 0.8, 1: 0.8, 2: 1.0, 3: 0.8 -> node 2 largest
    deg = {v: sum(abs(d["weight"]) for *_, d in g.in_edges(v, data=True))
           + sum(abs(d["weight"]) for *_, d in g.out_edges(v, data=True)) for v in g.nodes}
    order = np.argsort([deg[v] for v in range(4)])
    assert np.all(np.diff(np.asarray(nodes.marker.size)[order]) >= -1e-12)
    assert int(np.argmax(nodes.marker.size)) == 2
    assert list(fig.layout.xaxis.ticktext) == list("wxyz")

    small = figures.graph_figure(g, max_nodes=2)
    kept = list(trace(small, "nodes").x)
    assert len(kept) == 2 and "2 of 4 nodes" in small.layout.title.text
    edge_x = [v for t in small.data if t.name.startswith("edges") for v in t.x if v is not None]
    assert min(edge_x) >= min(kept) - 1e-9 and max(edge_x) <= max(kept) + 1e-9

    loops = figures.graph_figure(token_graph(star(3), self_loops=True))
    assert sum(arcs(t) for t in loops.data if t.name == "edges +") == 3  # 0->0, 0->1, 0->2


# ---- end to end: a real rhythm of a tiny hybrid model ------------------------------------------------
def test_end_to_end_figures_from_real_rhythm(tiny):
    r, patterns, labels = tiny
    n = T_MODEL
    fig = figures.rhythm_trace(r, labels=labels)
    assert list(trace(fig, "preplan").x) == torch.nonzero(r.preplan).flatten().tolist()
    assert list(trace(fig, "anchors").x) == torch.nonzero(r.anchors).flatten().tolist()
    assert len(trace(fig, "anchors").x) == math.ceil(0.4 * (n - START) - 1e-9)
    assert all(x >= START for x in trace(fig, "preplan").x)
    assert list(fig.layout.xaxis2.ticktext) == labels
    assert any(s.type == "line" and s.x0 == START for s in fig.layout.shapes)

    bars = figures.head_span_bars(r.head_span, r.local_heads, r.global_heads)
    assert sum(len(t.y) for t in bars.data) == sum(len(v) for v in r.head_span.values()) == len(r.layers) * 4
    local = trace(bars, "local heads")
    assert {(int(layer.split()[1]), int(head[1:])) for layer, head in zip(*local.x)} == set(r.local_heads)

    html_out = figures.highlighted_text_html(labels, r.preplan, r.anchors, r.response_start)
    assert html_out.count('class="tok ') == n and html_out.count('class="tok prompt"') == START

    lightning = patterns[0]  # "LS": layer 0 lightning (signed), layer 1 softmax
    grid = figures.head_grid(lightning, labels=labels)
    assert len(grid.data) == 4
    signed = bool((torch.tril(lightning) < 0).any())
    assert (grid.layout.coloraxis.cmid == 0) == signed
    soft_grid = figures.head_grid(patterns[1], labels=labels)
    assert soft_grid.layout.coloraxis.cmid is None and soft_grid.layout.coloraxis.cmin == 0

    g = token_graph(patterns[1].mean(0), labels=labels, top_k=3)
    assert g.number_of_edges() == sum(min(3, t) for t in range(n))
    c = centralities(g)
    overlap = anchor_centrality_overlap(r.anchors, c["pagerank"], response_start=r.response_start)
    assert overlap["n_anchor"] == overlap["k"] == int(r.anchors.sum())
    assert 0.0 <= overlap["jaccard"] <= 1.0 and 0.0 < overlap["pvalue"] <= 1.0
    assert overlap["precision_expected"] == pytest.approx(overlap["n_anchor"] / (n - START))
    gfig = figures.graph_figure(g)
    for figure in (fig, bars, grid, soft_grid, gfig):
        assert figure.to_json()  # serialises (what gradio / a notebook does with it)
    assert len(trace(gfig, "nodes").x) == n and sum(arcs(t) for t in gfig.data if t.name.startswith("edges")) \
        == g.number_of_edges()


def test_reexports():
    for name in ("token_graph", "centralities", "anchor_centrality_overlap", "head_grid", "rhythm_trace",
                 "highlighted_text_html", "head_span_bars", "graph_figure"):
        assert getattr(analyses, name) is not None and name in analyses.__all__
