"""The preplan-and-anchor rhythm of one sequence (arXiv 2510.13554, "Attention Illuminates LLM Reasoning").

`rhythm(model, tokens, response_start)` runs ONE hooked forward that caches only the selected layers'
`blocks.{l}.attn.hook_pattern`, and derives everything from those patterns and the logits:

1. head spans d(l,h) over R = {t >= response_start}, for every head of every selected layer;
2. locally / globally focused heads: the bottom / top q_heads of the spans of all (layer, head) pairs of
   the selected layers ranked together (`metrics.head_groups` on the [layers, heads] span matrix);
3. Abar_loc / Abar_glob: the mean pattern of the local / global heads;
4. WAAD from Abar_loc (window W), Delta_t = |WAAD_t - WAAD_{t+1}|, FAI from Abar_glob (H_lo, H_hi);
5. preplan tokens = top q of Delta over R, anchors = top q of FAI over R;
6. entropy[t] = entropy (nats) of the next-token distribution softmax(logits[t]) computed at position t,
   i.e. the one that predicts token t + 1; it is aligned with WAAD_t, which is also read at query t.
   (The entropy of the distribution token t was drawn from is entropy[t - 1].)
7. statistics = `metrics.rhythm_statistics` of these, with a generator seeded 0 (reproducible).

The model is seen only through `run_with_cache` and `model.spec.n_layers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from analyses.metrics import fai, head_groups, head_span, rhythm_statistics, select_layers, top_q, waad, waad_delta

__all__ = ["Rhythm", "rhythm", "rhythms", "series_from_patterns"]


@dataclass
class Rhythm:
    """The rhythm of one sequence (arXiv 2510.13554); every per-position tensor is [T], one row per token.

    layers:       the analysed layers (sorted)
    head_span:    layer -> Tensor[H] of head spans d(l,h) over R
    local_heads:  (layer, head) pairs of the locally focused heads (bottom q_heads of spans)
    global_heads: (layer, head) pairs of the globally focused heads (top q_heads of spans)
    waad, waad_delta, fai: the series; preplan / anchors: bool masks, False before response_start
    entropy:      next-token entropy at each position (nats), or None
    statistics:   `analyses.metrics.rhythm_statistics` of the above
    tokens:       the token ids [T]; response_start: the first response position"""

    layers: list[int]
    head_span: dict[int, torch.Tensor]
    local_heads: list[tuple[int, int]]
    global_heads: list[tuple[int, int]]
    waad: torch.Tensor
    waad_delta: torch.Tensor
    fai: torch.Tensor
    preplan: torch.Tensor
    anchors: torch.Tensor
    entropy: torch.Tensor | None
    statistics: dict[str, float] = field(default_factory=dict)
    tokens: torch.Tensor | None = None
    response_start: int = 0


def _pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def rhythm(
    model,
    tokens: torch.Tensor,
    response_start: int,
    layers: list[int] | None = None,
    q_heads: float = 0.3,
    window: int | None = 10,
    h_lo: int = 10,
    h_hi: int | None = 100,
    q: float = 0.4,
) -> Rhythm:
    """Preplan and anchor tokens of one sequence from one hooked forward (arXiv 2510.13554).

    tokens: [T] or [1, T] integer ids (a batch larger than 1 raises ValueError); response_start: first
    position of R, 0 <= response_start < T. layers: None for `select_layers(model.spec.n_layers)` (5 evenly
    spaced middle layers). q_heads: share of (layer, head) pairs in each head group; window: WAAD's W;
    h_lo / h_hi: FAI's horizon (h_hi=None: to the end); q: share of R marked preplan / anchor."""
    tokens, response_start, layers = prepare(model, tokens, response_start, layers)
    names = {_pattern_name(layer) for layer in layers}
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens[None], names_filter=lambda name: name in names)
    dtype = _dtype(cache[_pattern_name(layers[0])])
    patterns = {layer: cache[_pattern_name(layer)][0].detach().to(dtype) for layer in layers}  # [H, T, T]
    return _from_patterns(patterns, logits[0], tokens, response_start, layers, q_heads, window, h_lo, h_hi, q, dtype)


def rhythms(
    model,
    tokens: torch.Tensor,
    response_starts: list[int],
    lengths: list[int] | None = None,
    layers: list[int] | None = None,
    q_heads: float = 0.3,
    window: int | None = 10,
    h_lo: int = 10,
    h_hi: int | None = 100,
    q: float = 0.4,
) -> list[Rhythm]:
    """The rhythm of every sequence of a batch from ONE hooked forward (what RL credit needs per batch).

    tokens [B, T], right-padded; lengths[b]: the real length of row b (default T): causal attention
    keeps the padding out of every position before it, so each row's rhythm equals `rhythm` on that row
    alone. response_starts[b]: row b's first response position. Other arguments as in `rhythm`."""
    tokens = torch.as_tensor(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, T], got {tuple(tokens.shape)}")
    b, t = tokens.shape
    lengths = [t] * b if lengths is None else [int(n) for n in lengths]
    if len(response_starts) != b or len(lengths) != b:
        raise ValueError(f"need one response start and one length per row ({b}), got {len(response_starts)} "
                         f"and {len(lengths)}")
    checked = [prepare(model, tokens[i, : lengths[i]], response_starts[i], layers) for i in range(b)]
    layers = checked[0][2]
    names = {_pattern_name(layer) for layer in layers}
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    dtype = _dtype(cache[_pattern_name(layers[0])])
    out = []
    for i, (row_tokens, start, _) in enumerate(checked):
        n = lengths[i]
        patterns = {layer: cache[_pattern_name(layer)][i, :, :n, :n].detach().to(dtype) for layer in layers}
        out.append(_from_patterns(patterns, logits[i, :n], row_tokens, start, layers, q_heads, window, h_lo, h_hi,
                                  q, dtype))
    return out


def _dtype(pattern: torch.Tensor) -> torch.dtype:
    return torch.float32 if pattern.device.type == "mps" else torch.float64


def _from_patterns(patterns, logits, tokens, response_start, layers, q_heads, window, h_lo, h_hi, q, dtype) -> Rhythm:
    """Steps 1-7 of the module docstring from the selected layers' patterns {layer: [H, T, T]}."""
    spans, local_heads, global_heads, waad_t, fai_t = series_from_patterns(
        patterns, response_start, layers, q_heads, window, h_lo, h_hi)
    return finish(layers, spans, local_heads, global_heads, waad_t, fai_t, logits, tokens, response_start, q, dtype)


def series_from_patterns(patterns, response_start, layers, q_heads=0.3, window=10, h_lo=10, h_hi=100):
    """Steps 1-4 of the module docstring from the selected layers' patterns {layer: [H, T, T]} of one
    sequence: (head spans, local heads, global heads, WAAD, FAI)."""
    spans = {layer: head_span(patterns[layer], response_start) for layer in layers}
    local_idx, global_idx = head_groups(torch.stack([spans[layer] for layer in layers]), q_heads)
    local_heads = [(layers[row], head) for row, head in local_idx.tolist()]
    global_heads = [(layers[row], head) for row, head in global_idx.tolist()]
    abar_loc = torch.stack([patterns[layer][head] for layer, head in local_heads]).mean(0)
    abar_glob = torch.stack([patterns[layer][head] for layer, head in global_heads]).mean(0)
    return spans, local_heads, global_heads, waad(abar_loc, window), fai(abar_glob, h_lo, h_hi, response_start)


def prepare(model, tokens, response_start: int, layers: list[int] | None) -> tuple[torch.Tensor, int, list[int]]:
    """Checked inputs shared by `rhythm` and `analyses.streaming.streaming_rhythm`:
    tokens as [T], response_start in [0, T), and the sorted layers (default: `select_layers`)."""
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 2:
        if tokens.shape[0] != 1:
            raise ValueError(f"rhythm analyses one sequence at a time; got a batch of {tokens.shape[0]}")
        tokens = tokens[0]
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be [T] or [1, T], got {tuple(tokens.shape)}")
    n = tokens.shape[0]
    response_start = int(response_start)
    if not 0 <= response_start < n:
        raise ValueError(f"response_start must lie in [0, {n}) for {n} tokens, got {response_start}")
    n_layers = int(model.spec.n_layers)
    if layers is None:
        layers = select_layers(n_layers)
    layers = sorted({int(layer) for layer in layers})
    if not layers or layers[0] < 0 or layers[-1] >= n_layers:
        raise ValueError(f"layers must be a non-empty subset of 0..{n_layers - 1}, got {layers}")
    return tokens, response_start, layers


def finish(layers, spans, local_heads, global_heads, waad_t, fai_t, logits, tokens, response_start, q, dtype) -> Rhythm:
    """Token sets, entropy and statistics from the WAAD and FAI series (shared by both paths)."""
    delta = waad_delta(waad_t)
    preplan = top_q(delta, q, response_start)
    anchors = top_q(fai_t, q, response_start)
    logp = torch.log_softmax(logits.detach().to(dtype), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    statistics = rhythm_statistics(
        waad_t, fai_t, entropy, response_start, generator=torch.Generator().manual_seed(0), q=q,
        preplan=preplan, anchors=anchors,
    )
    return Rhythm(
        layers=layers, head_span=spans, local_heads=local_heads, global_heads=global_heads,
        waad=waad_t, waad_delta=delta, fai=fai_t, preplan=preplan, anchors=anchors, entropy=entropy,
        statistics=statistics, tokens=tokens, response_start=response_start,
    )
