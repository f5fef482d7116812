"""A rhythm report (arXiv 2510.13554) of one sequence: JSON for programs, HTML for people.

`rhythm_report(r, labels)` turns an `analyses.Rhythm` into a JSON-ready dict (per-token series, the
preplan and anchor token sets, head groups and spans, statistics); `report_html(r, labels, ...)`
renders the same with the plotly figures of `analyses.figures` and the highlighted text.
"""

from __future__ import annotations

import html
from typing import Sequence

import plotly.io as pio

from analyses.figures import head_span_bars, highlighted_text_html, rhythm_trace
from analyses.rhythm import Rhythm


def _floats(t) -> list[float]:
    return [float(x) for x in t.detach().cpu().flatten()]


def rhythm_report(r: Rhythm, labels: Sequence[str]) -> dict:
    """Everything the rhythm found, as plain JSON types."""
    positions = range(len(labels))
    return {
        "paper": "arXiv 2510.13554 (Attention Illuminates LLM Reasoning)",
        "response_start": r.response_start,
        "layers": r.layers,
        "tokens": [{"position": i, "text": labels[i], "id": int(r.tokens[i])} for i in positions],
        "waad": _floats(r.waad),
        "waad_delta": _floats(r.waad_delta),
        "fai": _floats(r.fai),
        "entropy": None if r.entropy is None else _floats(r.entropy),
        "preplan": [i for i in positions if bool(r.preplan[i])],
        "anchors": [i for i in positions if bool(r.anchors[i])],
        "head_span": {str(layer): _floats(span) for layer, span in r.head_span.items()},
        "local_heads": [list(pair) for pair in r.local_heads],
        "global_heads": [list(pair) for pair in r.global_heads],
        "statistics": {k: (None if v != v else float(v)) for k, v in r.statistics.items()},  # NaN -> null
    }


def report_html(r: Rhythm, labels: Sequence[str], title: str = "Rhythm report") -> str:
    """A self-contained page (plotly.js inlined once, so it opens offline)."""
    trace = pio.to_html(rhythm_trace(r, labels), full_html=False, include_plotlyjs=True)
    spans = pio.to_html(head_span_bars(r.head_span, r.local_heads, r.global_heads), full_html=False,
                        include_plotlyjs=False)
    stats = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>" for k, v in r.statistics.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
            f"<h1>{html.escape(title)}</h1><p>Layers {r.layers}; response starts at token {r.response_start}.</p>"
            f"<h2>Tokens</h2>{highlighted_text_html(labels, r.preplan, r.anchors, r.response_start)}"
            f"<h2>WAAD and FAI</h2>{trace}<h2>Head spans</h2>{spans}"
            f"<h2>Rhythm statistics</h2><table>{stats}</table></body></html>")
