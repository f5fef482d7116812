"""Anchored window attention: a training-free approximation of causal softmax attention that computes
exact scores only for the keys near each query, and for the keys further away reuses what an earlier
"anchor" query computed. Every `anchor_every`-th query (t = 0, r, 2r, ...) is an anchor; query t uses the
anchor a(t) = r floor(t / r) <= t. Near keys N_t = {s <= t : t - s < w or s < sink} (the window and the
first `sink` keys, StreamingLLM's attention sinks, arXiv 2309.17453), far keys F_t = {sink <= s <= t - w}.

correction="renormalise" (default): far keys keep the anchor query's scores, renormalised together with
the query's own near scores,
    l[t, s] = q_t . k_s scale  (s in N_t),   q_a(t) . k_s scale  (s in F_t),   M[t] = softmax_s(l[t, s<=t]).
    Rows are non-negative and sum to 1; anchors are exact. In decoding the anchor's far scores are a
    running (max, sum exp [v, 1]) over F_t: one new far key per step, O((w + sink) d) per non-anchor token.

correction="delta": Delta Attention (Willette, Lee, Hwang, arXiv 2505.11254) on top of sliding-window
attention with sink tokens: the anchor's difference between full and sparse attention is added to the
queries of its group,
    M[t] = W[t] + P[a(t)] - W[a(t)],   W = softmax over N_t,  P = full causal softmax.
    Rows sum to 1 but entries may be negative. (The paper computes the dense queries of each group of
    gamma queries and repeats their correction; here the group's first query is the anchor, so a query
    never uses a later one.)

Both are exact with anchor_every = 1 or window >= T. Parallel cost O(T (w + sink) d + T^2 d / r).
`anchored_attention` is the block-wise parallel form, `anchored_attention_step` one decoding step (the
recurrent oracle, `recurrent_anchored_attention`, applies it token by token), `anchored_pattern` the
effective matrix M. All float64-exact on any device; q, k, v are [B, H, T, D] with the same heads.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["Correction", "anchored_attention", "anchored_attention_step", "recurrent_anchored_attention",
           "anchored_pattern", "anchored_computed_scores", "window_sums"]

Correction = Literal["renormalise", "delta"]
NEG_INF = float("-inf")


def _with_ones(v: torch.Tensor) -> torch.Tensor:
    """[v, 1]: the last column carries the softmax denominator."""
    return torch.cat([v, torch.ones_like(v[..., :1])], -1)


def _stable_exp(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, exp(scores - m)): m the largest score of each row ([...], -inf when the row is all -inf or empty)."""
    top = scores.amax(-1).detach() if scores.shape[-1] else scores.new_full(scores.shape[:-1], NEG_INF)
    return top, torch.exp(scores - torch.where(top.isfinite(), top, 0)[..., None])


def _exp_sums(scores: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A part of a softmax as (m, sum_s exp(score_s - m) [v_s, 1]): scores [..., n] (-inf: not used),
    values [..., n, D + 1]. Zero sums with m = -inf when no key is used."""
    top, weights = _stable_exp(scores)
    return top, weights @ values


def _merge(*parts: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Normalise the parts of one softmax (each from `_exp_sums`) together: z = sum of the numerators over
    the sum of the denominators. At least one part must be non-empty for every query."""
    top = torch.stack([m for m, _ in parts]).amax(0).detach()  # a stabiliser only
    total = sum(sums * torch.exp(m - top)[..., None] for m, sums in parts)
    return total[..., :-1] / total[..., -1:]


def window_sums(q, k, values, window: int, scale: float, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """`_exp_sums` of the last `window` keys of each query (positions 0..T-1), block by block so that the
    cost is O(T (block + w) d). values = [v, 1]."""
    t = q.shape[2]
    tops, sums = [], []
    for start in range(0, t, block):
        end, first = min(t, start + block), max(0, start - window + 1)
        gap = torch.arange(start, end, device=q.device)[:, None] - torch.arange(first, end, device=q.device)
        scores = (q[:, :, start:end] @ k[:, :, first:end].transpose(-1, -2)) * scale
        top, part = _exp_sums(scores.masked_fill((gap < 0) | (gap >= window), NEG_INF), values[:, :, first:end])
        tops.append(top)
        sums.append(part)
    return torch.cat(tops, 2), torch.cat(sums, 2)


def _near_parts(q, k, values, window: int, sink: int, scale: float) -> list:
    """The exactly scored keys of every query: its window and the sink keys before the window."""
    parts = [window_sums(q, k, values, window, scale)]
    t = q.shape[2]
    n = min(sink, t)
    if n:
        before_window = torch.arange(n, device=q.device) <= torch.arange(t, device=q.device)[:, None] - window
        scores = (q @ k[:, :, :n].transpose(-1, -2)) * scale
        parts.append(_exp_sums(scores.masked_fill(~before_window, NEG_INF), values[:, :, :n]))
    return parts


def anchored_attention(q, k, v, window: int, anchor_every: int, correction: Correction = "renormalise",
                       sink: int = 0, scale: float = 1.0) -> tuple[torch.Tensor, object]:
    """The parallel form. Returns (z [B, H, T, D], decoding state after the last token: see
    `anchored_attention_step`)."""
    b, h, t, _ = q.shape
    w, r = window, anchor_every
    values = _with_ones(v)
    near = _near_parts(q, k, values, w, sink, scale)
    anchors = torch.arange(0, t, r, device=q.device)  # [G]
    keys = torch.arange(t, device=q.device)
    anchor_scores = (q[:, :, anchors] @ k.transpose(-1, -2)) * scale  # [B, H, G, T]: O(T^2 d / r)
    if correction == "delta":
        near_out = _merge(*near)
        full = torch.softmax(anchor_scores.masked_fill(keys > anchors[:, None], NEG_INF), -1) @ v
        delta = full - near_out[:, :, anchors]  # [B, H, G, D]
        return near_out + delta.repeat_interleave(r, 2)[:, :, :t], delta[:, :, -1]
    # Far keys of query t = a + u (u < r): sink <= s <= a - w (shared by the group), and s = a - w + 1 + i
    # for i < u (one more per step), all scored with the anchor's query q_a.
    far_end = torch.clamp(anchors + r - 1, max=t - 1) - w  # last far key any query of the group uses
    outside = (keys > far_end[:, None]) | (keys < sink)
    far_max, weights = _stable_exp(anchor_scores.masked_fill(outside, NEG_INF))  # far_max [B, H, G]
    base = (weights * (keys <= (anchors - w)[:, None])) @ values  # [B, H, G, D + 1]
    steps = anchors[:, None] - w + 1 + torch.arange(r - 1, device=q.device)  # [G, r - 1]
    step_index = steps.clamp(0, t - 1)
    step_weights = weights.gather(-1, step_index.expand(b, h, -1, -1)) * (steps >= sink)
    added = torch.arange(r, device=q.device)[:, None] > torch.arange(r - 1, device=q.device)  # [r, r - 1]
    far_sum = base[..., None, :] + (step_weights[..., None, :] * added) @ values[:, :, step_index]
    far_sum = far_sum.reshape(b, h, len(anchors) * r, values.shape[-1])[:, :, :t]  # [B, H, T, D + 1]
    far_max = far_max.repeat_interleave(r, -1)[..., :t]
    return _merge(*near, (far_max, far_sum)), (q[:, :, anchors[-1]], far_max[..., -1:], far_sum[:, :, -1:])


def anchored_attention_step(q, keys, values, state, window: int, anchor_every: int,
                            correction: Correction = "renormalise", sink: int = 0,
                            scale: float = 1.0) -> tuple[torch.Tensor, object]:
    """One decoding step. q [B, H, D] at position t = keys.shape[2] - 1; keys, values [B, H, t + 1, D]
    (the current token included); state: None at t = 0, else what the previous step or
    `anchored_attention` returned: (anchor query [B, H, D], running far max [B, H, 1], running far
    sum of exp * [v, 1] [B, H, 1, D + 1]) for "renormalise", the anchor's correction [B, H, D] for "delta"."""
    t = keys.shape[2] - 1
    w, r = window, anchor_every
    values = _with_ones(values)

    def part(query, index):  # _exp_sums of one query [B, H, D] over the keys `index`: a query axis of 1
        return _exp_sums((query[:, :, None] @ keys[:, :, index].transpose(-1, -2)) * scale, values[:, :, index])

    near_keys = list(range(max(0, min(sink, t - w + 1)))) + list(range(max(0, t - w + 1), t + 1))
    near = part(q, near_keys)
    anchor = t % r == 0
    if correction == "delta":
        near_out = _merge(near)[:, :, 0]
        if anchor:
            state = _merge(part(q, slice(None)))[:, :, 0] - near_out
        return near_out + state, state
    if anchor:  # score the far keys sink <= s <= t - w with this query
        state = (q, *part(q, slice(min(sink, t - w + 1), max(0, t - w + 1))))
    elif t - w >= sink:  # one key leaves the window: add it with the anchor's score
        anchor_q, far_max, far_sum = state
        score, added = part(anchor_q, [t - w])
        top = torch.maximum(far_max, score)
        state = (anchor_q, top, far_sum * torch.exp(far_max - top)[..., None] + added * torch.exp(score - top)[..., None])
    return _merge(near, state[1:])[:, :, 0], state


def recurrent_anchored_attention(q, k, v, window: int, anchor_every: int, correction: Correction = "renormalise",
                                 sink: int = 0, scale: float = 1.0) -> tuple[torch.Tensor, object]:
    """`anchored_attention_step` token by token: the oracle of the parallel form."""
    state, outs = None, []
    for i in range(q.shape[2]):
        z, state = anchored_attention_step(q[:, :, i], k[:, :, : i + 1], v[:, :, : i + 1], state, window,
                                           anchor_every, correction, sink, scale)
        outs.append(z)
    return torch.stack(outs, 2), state


def _layout(t: int, window: int, anchor_every: int, sink: int, device) -> tuple[torch.Tensor, ...]:
    """(anchor of each query [T], gap t - s [T, T], causal [T, T], near [T, T])."""
    pos = torch.arange(t, device=device)
    gap = pos[:, None] - pos[None, :]
    causal = gap >= 0
    return pos // anchor_every * anchor_every, gap, causal, causal & ((gap < window) | (pos < sink))


def anchored_pattern(q, k, window: int, anchor_every: int, correction: Correction = "renormalise", sink: int = 0,
                     scale: float = 1.0) -> torch.Tensor:
    """The effective matrix M [B, H, T, T] with z = M @ v."""
    anchor, _, causal, near = _layout(q.shape[2], window, anchor_every, sink, q.device)
    scores = (q @ k.transpose(-1, -2)) * scale
    if correction == "delta":
        sparse = torch.softmax(scores.masked_fill(~near, NEG_INF), -1)
        full = torch.softmax(scores.masked_fill(~causal, NEG_INF), -1)
        return sparse + full[:, :, anchor] - sparse[:, :, anchor]
    mixed = torch.where(near, scores, scores[:, :, anchor]).masked_fill(~causal, NEG_INF)
    return torch.softmax(mixed, -1)


def anchored_computed_scores(t: int, window: int, anchor_every: int, correction: Correction = "renormalise",
                             sink: int = 0, device=None) -> torch.Tensor:
    """Which scores the method evaluates while producing each output, bool [T, T]: the near keys, an
    anchor's far keys (renormalise) or whole row (delta), and the one far key a non-anchor query adds to
    its anchor's running sum (renormalise)."""
    anchor, gap, causal, near = _layout(t, window, anchor_every, sink, device)
    is_anchor = (anchor == torch.arange(t, device=device))[:, None]
    if correction == "delta":
        return near | (is_anchor & causal)
    return near | (is_anchor & causal) | ((gap == window) & (torch.arange(t, device=device) >= sink))
