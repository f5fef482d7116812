"""Gated linear attention with data-dependent per-key-dimension decays (GLA, Yang et al., arXiv 2312.06635).

    S_t = diag(alpha_t) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t,   log alpha_t = g_t <= 0
    M[t, s] = sum_i q_{t,i} k_{s,i} exp(sum_{r=s+1..t} g_{r,i})

`log_gate` g is [B, H, T, Dk] (one decay per key dimension: GLA, HGRN-2) or [B, H, T, 1] (one scalar
per head and token: Mamba-2 / SSD, broadcast over the key dimensions).

The chunked form (the GLA paper's chunkwise algorithm) splits T into chunks of C tokens. Inside a chunk
it works in log space relative to the chunk start: b_t = sum of g from the chunk start to t, so every
decay it exponentiates, exp(b_t - b_s) with s <= t, exp(b_t) and exp(b_last - b_s), lies in (0, 1]:
no overflow however strong the gates. The intra-chunk scores use the pairwise decay tensor
[C, C, Dk] (exact, O(T C Dk); for scalar gates only [C, C]); across chunks a Dk x Dv state carries the
rest. All chunks' intra parts are computed at once; only the state hand-over loops over chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def decayed_scores(
    q: torch.Tensor, k: torch.Tensor, q_log_decay: torch.Tensor, k_log_decay: torch.Tensor, q_offset: int = 0
) -> torch.Tensor:
    """scores[t, s] = sum_i q_{t,i} k_{s,i} exp(q_log_decay_{t,i} - k_log_decay_{s,i}) for s <= q_offset + t,
    else 0. q [..., n, Dk], k [..., m, Dk]; the log decays are cumulative sums of g ([..., n or m, Dk or 1]).
    The exponent is masked before exp, so no future pair can overflow."""
    n, m = q.shape[-2], k.shape[-2]
    causal = torch.arange(n, device=q.device)[:, None] + q_offset >= torch.arange(m, device=q.device)[None, :]
    exponent = q_log_decay[..., :, None, :] - k_log_decay[..., None, :, :]  # [..., n, m, Dk or 1]
    decay = exponent.masked_fill(~causal[:, :, None], float("-inf")).exp().to(q.dtype)
    if decay.shape[-1] == 1:  # scalar gate: one decay per (t, s)
        return (q @ k.transpose(-1, -2)) * decay[..., 0]
    return torch.einsum("...ti,...si,...tsi->...ts", q, k, decay)


def chunked_gated_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_gate: torch.Tensor,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [B, H, T, Dk]; v [B, H, T, Dv]; log_gate [B, H, T, Dk or 1] (<= 0); initial_state [B, H, Dk, Dv].

    Returns (o [B, H, T, Dv], final state [B, H, Dk, Dv]) with S_t = diag(exp g_t) S_{t-1} + k_t v_t^T."""
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    state = q.new_zeros(b, h, dk, dv) if initial_state is None else initial_state.to(q.dtype)
    if t == 0:
        return v.new_zeros(b, h, 0, dv), state
    pad = -t % chunk_size  # padded tokens: k = v = 0 and no decay, so they change nothing
    n_chunks = (t + pad) // chunk_size

    def chunks(x: torch.Tensor) -> torch.Tensor:  # [B, H, T, D] -> [B, H, N, C, D]
        return F.pad(x.to(q.dtype), (0, 0, 0, pad)).reshape(b, h, n_chunks, chunk_size, x.shape[-1])

    q, k, v, g = chunks(q), chunks(k), chunks(v), chunks(log_gate)
    from_start = g.cumsum(-2)  # b_t: log decay from the chunk start to t (inclusive)
    intra = decayed_scores(q, k, from_start, from_start) @ v
    chunk_log_decay = from_start[..., -1, :]  # [B, H, N, Dk or 1]
    to_end = torch.exp(chunk_log_decay[..., None, :] - from_start)  # decay from s to the chunk's end
    updates = (k * to_end).transpose(-1, -2) @ v  # [B, H, N, Dk, Dv]: each chunk's own contribution
    states_before = []
    for log_decay, update in zip(chunk_log_decay.unbind(2), updates.unbind(2)):  # unbind: one cheap backward
        states_before.append(state)
        state = torch.exp(log_decay)[..., :, None] * state + update
    inter = (q * torch.exp(from_start)) @ torch.stack(states_before, dim=2)
    out = (intra + inter).reshape(b, h, n_chunks * chunk_size, dv)[:, :, :t]
    return out, state


def gated_linear_attention_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_gate: torch.Tensor, state: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: q, k [B, H, Dk], v [B, H, Dv], log_gate [B, H, Dk or 1], state [B, H, Dk, Dv] or None
    (empty). Returns (o [B, H, Dv], new state)."""
    state_new = k[..., :, None] * v[..., None, :]
    if state is not None:
        state_new = state_new + torch.exp(log_gate.to(q.dtype))[..., :, None] * state
    return (q[..., None, :] @ state_new)[..., 0, :], state_new


def recurrent_gated_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_gate: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same op token by token: the oracle of the chunked form."""
    b, h, t, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1]) if initial_state is None else initial_state.to(q.dtype)
    outputs = []
    for i in range(t):
        out, state = gated_linear_attention_step(q[:, :, i], k[:, :, i], v[:, :, i], log_gate[:, :, i], state)
        outputs.append(out)
    return torch.stack(outputs, dim=2) if outputs else v.new_zeros(b, h, 0, v.shape[-1]), state


def gated_linear_attention_pattern(
    q: torch.Tensor, k: torch.Tensor, log_gate: torch.Tensor, block_size: int = 64
) -> torch.Tensor:
    """The effective matrix M [B, H, T, T] with o = M @ v (lower triangular), built one block of query
    rows at a time (memory O(block T Dk)). The cumulative log decays are summed in float64, so the
    differences exp(G_t - G_s) stay exact over long sequences."""
    t = q.shape[-2]
    total = log_gate.to(torch.float64).cumsum(-2)  # log decay from the sequence start
    rows = []
    for start in range(0, t, block_size):
        end = min(t, start + block_size)
        scores = decayed_scores(
            q[..., start:end, :], k[..., :end, :], total[..., start:end, :], total[..., :end, :], q_offset=start)
        rows.append(F.pad(scores, (0, t - end)))
    return torch.cat(rows, dim=-2) if rows else q.new_zeros(*q.shape[:-1], 0)
