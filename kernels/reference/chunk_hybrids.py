"""Readable references of the ops inside the intra-layer hybrids (Liger, Lizard, RAT); float64-exact.

Gated linear attention with vector gates (GLA, arXiv 2312.06635), the global part of Liger and Lizard:

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t,   g_t <= 0 per key dimension,
    M[t, s] = sum_i q_{t,i} k_{s,i} exp(c_{t,i} - c_{s,i}),   c_t = sum_{r<=t} g_r.

The chunked form computes inside a block the masked pairwise decay exp(c_t - c_s) (never exp(-c) alone,
so it cannot overflow) and across blocks carries S; O(T n d_k) for blocks of n tokens.

Sliding-window softmax with sink keys (Lizard's meta memory): learned keys every query sees, whose value
is zero, so they only take probability mass from the window: softmax over [sinks, window], sinks dropped.

Chunk-local gated EMA (RAT, arXiv 2507.04416): y_t = a_t y_{t-1} + (1 - a_t) x_t, a_t = sigmoid(u_t),
restarted at every chunk start; and RAT's softmax over the previous chunks' final summaries plus the
query's own running summary.
"""

from __future__ import annotations

import torch


# ---- gated linear attention ----------------------------------------------------------------------
def _gated_scores(q: torch.Tensor, k: torch.Tensor, q_cum: torch.Tensor, k_cum: torch.Tensor,
                  allowed: torch.Tensor) -> torch.Tensor:
    """sum_i q_{t,i} k_{s,i} exp(q_cum_{t,i} - k_cum_{s,i}) where `allowed` [Tq, Tk], else 0."""
    gap = q_cum[:, :, :, None, :] - k_cum[:, :, None, :, :]  # [B, H, Tq, Tk, D]
    decay = torch.exp(gap.masked_fill(~allowed[:, :, None], float("-inf")))
    return torch.einsum("bhtd,bhsd,bhtsd->bhts", q, k, decay)


def chunked_gated_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_gate: torch.Tensor,
    block_size: int = 64,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, log_gate [B, H, T, Dk] (log_gate <= 0); v [B, H, T, Dv]; initial_state [B, H, Dk, Dv].
    Returns (o [B, H, T, Dv], final state [B, H, Dk, Dv])."""
    b, h, t, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1]) if initial_state is None else initial_state.to(q.dtype)
    outputs = []
    for start in range(0, t, block_size):
        qi, ki, vi, gi = (x[:, :, start : start + block_size] for x in (q, k, v, log_gate))
        n = qi.shape[2]
        cum = gi.cumsum(dim=2)  # c_t - c_{start-1}
        causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        intra = _gated_scores(qi, ki, cum, cum, causal) @ vi
        inter = (qi * cum.exp()) @ state
        outputs.append(intra + inter)
        last = cum[:, :, -1:]  # decay over the whole block
        state = last.transpose(-1, -2).exp() * state + (ki * (last - cum).exp()).transpose(-1, -2) @ vi
    out = torch.cat(outputs, dim=2) if outputs else v.new_zeros(b, h, 0, v.shape[-1])
    return out, state


def gated_linear_attention_step(q, k, v, log_gate, state):
    """One token: q, k, log_gate [B, H, Dk], v [B, H, Dv], state [B, H, Dk, Dv] or None -> (o, state)."""
    update = k[..., :, None] * v[..., None, :]
    state = update if state is None else log_gate.exp()[..., None] * state + update
    return (q[..., None, :] @ state)[..., 0, :], state


def recurrent_gated_linear_attention(q, k, v, log_gate, initial_state=None):
    """The same op token by token: the oracle of `chunked_gated_linear_attention`."""
    state = initial_state
    outputs = []
    for i in range(q.shape[2]):
        o, state = gated_linear_attention_step(q[:, :, i], k[:, :, i], v[:, :, i], log_gate[:, :, i], state)
        outputs.append(o)
    if state is None:
        state = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1])
    return torch.stack(outputs, dim=2) if outputs else v.new_zeros(*v.shape[:2], 0, v.shape[-1]), state


def gated_linear_attention_pattern(q, k, log_gate, block_size: int = 64) -> torch.Tensor:
    """M [B, H, T, T] with o = M @ v, a block of query rows at a time (memory O(block T Dk))."""
    t = q.shape[2]
    cum = log_gate.cumsum(dim=2)
    pos = torch.arange(t, device=q.device)
    rows = []
    for start in range(0, t, block_size):
        end = min(t, start + block_size)
        allowed = pos[start:end, None] >= pos[None, :]
        rows.append(_gated_scores(q[:, :, start:end], k, cum[:, :, start:end], cum, allowed))
    return torch.cat(rows, dim=2) if rows else q.new_zeros(*q.shape[:2], 0, 0)


# ---- sliding-window softmax with sink keys -----------------------------------------------------------
def softmax_with_sinks(scores: torch.Tensor, sink_scores: torch.Tensor) -> torch.Tensor:
    """softmax over [sink_scores, scores] along the last dim, the sink columns dropped: rows sum to
    1 - (the sinks' share). scores [..., S] (-inf where masked), sink_scores [..., m]."""
    m = sink_scores.shape[-1]
    return torch.softmax(torch.cat([sink_scores, scores], dim=-1), dim=-1)[..., m:]


def sliding_window_attention_with_sinks(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, scale: float, sink_keys: torch.Tensor,
) -> torch.Tensor:
    """q, k, v [B, H, T, D]; sink_keys [H, m, D]. z_t = sum_{t-w<s<=t} p_ts v_s with
    p_t = softmax([q_t . sink_j * scale]_j, [q_t . k_s * scale]_s) restricted to the real keys.
    Block by block: a block of queries sees only its band of keys, O(T (block + w) D)."""
    t = q.shape[2]
    block = max(64, window)
    outputs = []
    for start in range(0, t, block):
        end, first = min(t, start + block), max(0, start - window + 1)
        qi = q[:, :, start:end]
        gap = torch.arange(start, end, device=q.device)[:, None] - torch.arange(first, end, device=q.device)
        scores = ((qi @ k[:, :, first:end].transpose(-1, -2)) * scale).masked_fill((gap < 0) | (gap >= window),
                                                                                   float("-inf"))
        sink_scores = (qi @ sink_keys.transpose(-1, -2)) * scale
        outputs.append(softmax_with_sinks(scores, sink_scores) @ v[:, :, first:end])
    return torch.cat(outputs, dim=2) if outputs else torch.zeros_like(v)


# ---- RAT: chunk-local gated EMA and attention over chunk summaries -------------------------------------
def _chunk_ema_weights(forget_logit: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """forget_logit u [B, H, T, G] -> W [B, H, C, L, L, G]: the weight of x_s in y_t for t, s in the same
    chunk, (1 - a_s) prod_{r=s+1..t} a_r (0 for s > t), a = sigmoid(u); T is padded to C L (the padded
    positions come last in their chunk, so they change nothing before them)."""
    b, h, t, g = forget_logit.shape
    pad = -t % chunk_size
    u = torch.nn.functional.pad(forget_logit, (0, 0, 0, pad)).reshape(b, h, -1, chunk_size, g)
    cum = torch.nn.functional.logsigmoid(u).cumsum(dim=3)  # log prod_{r<=t} a_r inside the chunk
    log_weight = cum[:, :, :, :, None] - cum[:, :, :, None, :] + torch.nn.functional.logsigmoid(-u)[:, :, :, None]
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=u.device).tril()
    return torch.exp(log_weight.masked_fill(~causal[:, :, None], float("-inf")))


def chunk_gated_ema(x: torch.Tensor, forget_logit: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """x [B, H, T, D], forget_logit [B, H, T, D] (per dimension) or [B, H, T, 1] (per head) ->
    y [B, H, T, D], y_t = a_t y_{t-1} + (1 - a_t) x_t restarted at every multiple of chunk_size.
    Every chunk at once, O(T L D)."""
    b, h, t, d = x.shape
    weights = _chunk_ema_weights(forget_logit, chunk_size)  # [B, H, C, L, L, G]
    xc = torch.nn.functional.pad(x, (0, 0, 0, -t % chunk_size)).reshape(b, h, -1, chunk_size, d)
    if weights.shape[-1] == 1:
        y = weights[..., 0] @ xc
    else:
        y = torch.einsum("bhctsd,bhcsd->bhctd", weights, xc)
    return y.reshape(b, h, -1, d)[:, :, :t]


def chunk_ema_matrix(forget_logit: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """forget_logit [B, H, T] (one gate per head) -> W [B, H, T, T], block-diagonal lower triangular,
    with chunk_gated_ema(x, forget_logit[..., None], L) = W @ x."""
    b, h, t = forget_logit.shape
    blocks = _chunk_ema_weights(forget_logit[..., None], chunk_size)[..., 0]  # [B, H, C, L, L]
    n = blocks.shape[2] * chunk_size
    full = forget_logit.new_zeros(b, h, n, n)
    for c in range(blocks.shape[2]):
        full[:, :, c * chunk_size : (c + 1) * chunk_size, c * chunk_size : (c + 1) * chunk_size] = blocks[:, :, c]
    return full[:, :, :t, :t]


def chunk_summary_probabilities(q, k_tilde, chunk_size: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RAT's attention weights. Query t of chunk c = t // L sees the summary keys of the finished chunks
    j < c (k_tilde at their last position jL + L - 1) and its own running key k_tilde_t.
    Returns (p_prev [B, H, T, C] (zero for j >= c), p_own [B, H, T])."""
    t = q.shape[2]
    summary_keys = k_tilde[:, :, chunk_size - 1 :: chunk_size]  # finished chunks only
    chunk_of = torch.arange(t, device=q.device) // chunk_size
    seen = torch.arange(summary_keys.shape[2], device=q.device)[None, :] < chunk_of[:, None]
    prev = ((q @ summary_keys.transpose(-1, -2)) * scale).masked_fill(~seen, float("-inf"))
    own = (q * k_tilde).sum(-1, keepdim=True) * scale
    p = torch.softmax(torch.cat([prev, own], dim=-1), dim=-1)
    return p[..., :-1], p[..., -1]


def chunk_summary_attention(q, k_tilde, v_tilde, chunk_size: int, scale: float) -> torch.Tensor:
    """z_t = sum_{j<c} p_tj v_tilde[jL + L - 1] + p_t,own v_tilde_t (see `chunk_summary_probabilities`);
    O(T (T / L) D)."""
    p_prev, p_own = chunk_summary_probabilities(q, k_tilde, chunk_size, scale)
    return p_prev @ v_tilde[:, :, chunk_size - 1 :: chunk_size] + p_own[..., None] * v_tilde
