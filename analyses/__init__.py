"""Analyses of hybrid models through their hooks: the preplan-and-anchor attention rhythm of
"Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables Fine-Grained Policy
Optimization" (arXiv 2510.13554).

    import analyses, studio
    model = studio.build_model(spec, seed=0)
    r = analyses.rhythm(model, tokens, response_start=10)   # one hooked forward
    r.preplan, r.anchors, r.waad, r.fai, r.statistics

`analyses.metrics` holds the pure tensor formulas (head_span, head_groups, waad, fai, waad_delta, top_q,
select_layers, rhythm_statistics); `analyses.rhythm` applies them to a model (see /work/shared/REFERENCE.md
sections 4 and 5 for the definitions).
"""

from analyses.metrics import (
    fai,
    head_groups,
    head_span,
    rhythm_statistics,
    select_layers,
    top_count,
    top_q,
    waad,
    waad_delta,
)
from analyses.rhythm import Rhythm, rhythm, rhythms

__all__ = [
    "Rhythm",
    "fai",
    "head_groups",
    "head_span",
    "rhythm",
    "rhythms",
    "rhythm_statistics",
    "select_layers",
    "top_count",
    "top_q",
    "waad",
    "waad_delta",
]

from analyses.streaming import (  # noqa: E402
    mixer_qk_from_cache,
    mixer_stats,
    streaming_linear_stats,
    streaming_rhythm,
    streaming_softmax_stats,
)

__all__ += [
    "mixer_qk_from_cache",
    "mixer_stats",
    "streaming_linear_stats",
    "streaming_rhythm",
    "streaming_softmax_stats",
]

from analyses.figures import (  # noqa: E402
    graph_figure,
    head_grid,
    head_span_bars,
    highlighted_text_html,
    rhythm_trace,
)
from analyses.graph import anchor_centrality_overlap, centralities, token_graph  # noqa: E402

__all__ += [
    "anchor_centrality_overlap",
    "centralities",
    "graph_figure",
    "head_grid",
    "head_span_bars",
    "highlighted_text_html",
    "rhythm_trace",
    "token_graph",
]
