"""Attention patterns as token graphs (networkx): who draws information from whom, and which tokens are
central to that flow, compared with the anchor tokens of arXiv 2510.13554 (REFERENCE.md section 4).

Direction convention (used throughout): a pattern A[t, s] is the weight query t puts on key s, so
information flows from key s to query t; the graph has the edge s -> t with weight A[t, s] (s <= t).
Lightning / linear mixers give signed, unnormalised patterns: edges keep the signed `weight`, and every
centrality uses the magnitude |weight| as the strength of a link.

    g = token_graph(pattern, labels, top_k=3)          # pattern [T, T] (one head or a head mean)
    c = centralities(g)                                  # {"in_degree", "out_degree", "pagerank", "betweenness"}
    anchor_centrality_overlap(r.anchors, c["pagerank"], response_start=r.response_start)

Like the rest of `analyses`, these take tensors (or arrays), never models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import networkx as nx
import numpy as np
import torch

from analyses.metrics import top_count

__all__ = ["token_graph", "centralities", "anchor_centrality_overlap", "DEFAULT_TOP_K"]

DEFAULT_TOP_K = 3


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        x = x.to(torch.float64) if x.is_floating_point() or x.dtype != torch.bool else x
        return x.numpy()
    return np.asarray(x)


def token_graph(
    pattern,
    labels: Sequence[str] | None = None,
    threshold: float | None = None,
    top_k: int | None = None,
    self_loops: bool = False,
) -> nx.DiGraph:
    """The token graph of one [T, T] pattern (a single head, or a mean over heads: average first).

    Nodes: positions 0..T-1, each with attributes `position` (int) and `label` (labels[t], or str(t)
    when no labels are given). Edges: s -> t for s <= t (information flows from key s to query t), with
    `weight` = pattern[t, s] (signed). s == t only when `self_loops` is True. Entries above the diagonal
    (future keys) are ignored; an entry exactly 0 (or NaN) is never an edge, since nothing flows.

    Which edges are kept (give at most one of the two; giving neither means top_k = DEFAULT_TOP_K = 3):
      threshold: every candidate edge with |weight| >= threshold (threshold >= 0);
      top_k:     for each query row t, the top_k candidates by |weight| (ties: the earlier key s first);
                 top_k = 0 keeps no edge.

    Raises ValueError for a pattern that is not a square 2-D [T, T], for labels of the wrong length, for
    both threshold and top_k given, for a negative / non-integer top_k, or a negative / NaN threshold."""
    a = _as_numpy(pattern)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        hint = " (average the heads first, e.g. pattern.mean(0))" if a.ndim == 3 else ""
        raise ValueError(f"pattern must be a square 2-D [T, T] array, got shape {tuple(a.shape)}{hint}")
    a = a.astype(np.float64)
    n = a.shape[0]
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(labels) != n:
            raise ValueError(f"labels must have one entry per position ({n}), got {len(labels)}")
    if threshold is not None and top_k is not None:
        raise ValueError("give exactly one of threshold and top_k, not both")
    if threshold is None and top_k is None:
        top_k = DEFAULT_TOP_K
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
            raise ValueError(f"top_k must be an integer >= 0, got {top_k!r}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        top_k = int(top_k)
    else:
        threshold = float(threshold)
        if math.isnan(threshold) or threshold < 0:
            raise ValueError(f"threshold must be a number >= 0 (it is compared with |weight|), got {threshold}")

    g = nx.DiGraph()
    for t in range(n):
        g.add_node(t, position=t, label=labels[t] if labels is not None else str(t))
    for t in range(n):
        keys = np.arange(t + 1 if self_loops else t)
        weights = a[t, keys]
        keep = (weights != 0) & ~np.isnan(weights)
        keys, weights = keys[keep], weights[keep]
        if top_k is not None:
            order = np.argsort(-np.abs(weights), kind="stable")[:top_k]  # stable: earlier key wins ties
        else:
            order = np.flatnonzero(np.abs(weights) >= threshold)
        for i in sorted(order.tolist()):
            g.add_edge(int(keys[i]), t, weight=float(weights[i]))
    return g


def _strength_graph(graph: nx.DiGraph) -> nx.DiGraph:
    """A copy with `strength` = |weight| (missing weight: 1) and `distance` = 1 / strength per edge."""
    h = nx.DiGraph()
    h.add_nodes_from(graph.nodes)
    for s, t, data in graph.edges(data=True):
        w = abs(float(data.get("weight", 1.0)))
        h.add_edge(s, t, strength=w, distance=(1.0 / w) if w > 0 else math.inf)
    return h


def _pagerank(h: nx.DiGraph, alpha: float, weight: str) -> dict:
    """PageRank as networkx defines it (`nx.google_matrix`: teleport alpha, dangling nodes jump uniformly),
    solved exactly for the stationary distribution. `nx.pagerank` itself needs scipy, which this project
    does not depend on; this gives the same vector (to solver precision)."""
    nodes = list(h.nodes)
    if not nodes:
        return {}
    m = np.asarray(nx.google_matrix(h, alpha=alpha, nodelist=nodes, weight=weight), dtype=np.float64)
    n = len(nodes)
    system = m.T - np.eye(n)
    system[-1, :] = 1.0  # replace one (redundant) balance equation by sum(pi) = 1
    rhs = np.zeros(n)
    rhs[-1] = 1.0
    pi = np.linalg.solve(system, rhs)
    return {node: float(value) for node, value in zip(nodes, pi)}


def centralities(graph: nx.DiGraph, alpha: float = 0.85) -> dict[str, dict[int, float]]:
    """Centralities of a token graph (edges s -> t: query t draws from key s), all on |weight|:

    in_degree:   sum over s of |A[t, s]| for the kept edges into t: how much t draws from earlier tokens
                 (`DiGraph.in_degree(weight=...)`).
    out_degree:  sum over t of |A[t, s]| for the kept edges out of s: how much later tokens draw from s
                 (`DiGraph.out_degree(weight=...)`).
    pagerank:    PageRank (damping `alpha`) on the REVERSED graph t -> s, with transition probabilities
                 proportional to |A[t, s]|: a walker at a query follows its attention to the keys it reads,
                 so tokens that are read (directly or through tokens that are read) score high - on the
                 forward graph, the mass would pile up on the last tokens instead. Same definition as
                 `nx.pagerank(graph.reverse(), alpha, weight=...)` (computed from `nx.google_matrix`).
    betweenness: `nx.betweenness_centrality` (normalized, directed) with the edge length 1 / |weight|, so a
                 strong attention link is a short hop; shortest paths run forward in time (s -> t).

    Returns {name: {node: value}} for every node of the graph."""
    h = _strength_graph(graph)
    return {
        "in_degree": {node: float(v) for node, v in h.in_degree(weight="strength")},
        "out_degree": {node: float(v) for node, v in h.out_degree(weight="strength")},
        "pagerank": _pagerank(h.reverse(copy=True), alpha, "strength"),
        "betweenness": {node: float(v) for node, v in
                        nx.betweenness_centrality(h, weight="distance", normalized=True).items()},
    }


def _hypergeometric(n: int, k_a: int, k_c: int) -> list[tuple[int, float]]:
    """(x, P(|A & C| = x)) for a fixed set A of k_a among n and a uniform random k_c-subset C."""
    total = math.comb(n, k_c)
    lo, hi = max(0, k_a + k_c - n), min(k_a, k_c)
    return [(x, math.comb(k_a, x) * math.comb(n - k_a, k_c - x) / total) for x in range(lo, hi + 1)]


def anchor_centrality_overlap(
    anchors_mask, centrality: Mapping[int, float], q: float | None = None, response_start: int = 0
) -> dict:
    """How well the anchor tokens (top FAI, arXiv 2510.13554) coincide with the most central tokens.

    Candidates R = positions >= response_start of the mask (anchors only live in R; marks before it are
    dropped, as `metrics.rhythm_statistics` does). A = the anchor positions in R. C = the top k positions
    of R by `centrality` (ties: the earlier position; NaN ranks lowest), with k = |A| when q is None, else
    k = `metrics.top_count(q, |R|)` (the paper's q = 0.4 gives the same share as its anchors).
    `centrality` must have a value for every position in R (extra keys are ignored).

    Returns a dict with
      n_response = |R|, n_anchor = |A|, k, anchors / central (sorted position lists),
      intersection = |A & C|, jaccard = |A & C| / |A | C|, precision = |A & C| / |C| (share of the central
      tokens that are anchors), recall = |A & C| / |A| (precision == recall when k == |A|),
      and the random baseline where C is a uniform random k-subset of R (exact, hypergeometric):
      intersection_expected = k |A| / |R|, precision_expected = |A| / |R|, recall_expected = k / |R|,
      jaccard_expected = E[X / (|A| + k - X)], and pvalue = P(X >= intersection), X ~ the random overlap.
    Undefined ratios (empty A, C or R) are NaN."""
    mask = _as_numpy(anchors_mask).astype(bool).reshape(-1)
    n_all = mask.shape[0]
    response_start = int(response_start)
    if response_start < 0:
        raise ValueError(f"response_start must be >= 0, got {response_start}")
    positions = list(range(min(response_start, n_all), n_all))
    missing = [p for p in positions if p not in centrality]
    if missing:
        raise ValueError(f"centrality has no value for response positions {missing[:10]}"
                         f"{' ...' if len(missing) > 10 else ''}")
    anchors = [p for p in positions if mask[p]]
    n_r, n_a = len(positions), len(anchors)
    k = n_a if q is None else top_count(q, n_r)

    def rank_key(p: int):
        v = float(centrality[p])
        return (math.isnan(v), -v if not math.isnan(v) else 0.0, p)

    central = sorted(sorted(positions, key=rank_key)[:k])
    inter = len(set(anchors) & set(central))
    union = n_a + k - inter
    nan = math.nan
    out = {
        "n_response": n_r, "n_anchor": n_a, "k": k, "anchors": anchors, "central": central,
        "intersection": inter,
        "jaccard": inter / union if union else nan,
        "precision": inter / k if k else nan,
        "recall": inter / n_a if n_a else nan,
        "intersection_expected": k * n_a / n_r if n_r else nan,
        "precision_expected": n_a / n_r if (n_r and k) else nan,
        "recall_expected": k / n_r if (n_r and n_a) else nan,
    }
    if n_r and union:
        dist = _hypergeometric(n_r, n_a, k)
        out["jaccard_expected"] = sum(p * x / (n_a + k - x) for x, p in dist)
        out["pvalue"] = sum(p for x, p in dist if x >= inter)
    else:
        out["jaccard_expected"] = nan
        out["pvalue"] = nan
    return out
