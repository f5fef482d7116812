"""Linear attention with a fixed per-head decay, o_t = sum_{s<=t} lambda_h^(t-s) (q_t . k_s) v_s.

Block-wise as in Lightning Attention-2 (Qin et al., arXiv 2401.04658): inside a block the masked,
decayed quadratic form; across blocks a d_k x d_v state S carried with decay. No cumulative sums, so
the cost per token is constant in T. `log_decay=None` is plain (undecayed) linear attention.
"""

from __future__ import annotations

import torch


def chunked_decay_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    block_size: int = 64,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [B, H, T, Dk]; v [B, H, T, Dv]; log_decay [H] (<= 0) or None; initial_state [B, H, Dk, Dv].

    Returns (o [B, H, T, Dv], final state [B, H, Dk, Dv]) where state S_t = lambda S_{t-1} + k_t v_t^T.
    """
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    ld = q.new_zeros(h) if log_decay is None else log_decay.to(q.dtype)
    state = q.new_zeros(b, h, dk, dv) if initial_state is None else initial_state.to(q.dtype)
    outputs = []
    for start in range(0, t, block_size):
        qi, ki, vi = (x[:, :, start : start + block_size] for x in (q, k, v))
        n = qi.shape[2]
        idx = torch.arange(n, device=q.device, dtype=q.dtype)
        gap = idx[:, None] - idx[None, :]  # t - s inside the block
        mask = torch.exp(ld[:, None, None] * gap.clamp(min=0)) * (gap >= 0)  # [H, n, n]
        intra = ((qi @ ki.transpose(-1, -2)) * mask) @ vi
        inter = (qi * torch.exp(ld[:, None] * (idx + 1))[..., None]) @ state
        outputs.append(intra + inter)
        k_decay = torch.exp(ld[:, None] * (n - 1 - idx))[..., None]  # lambda^(n-1-s)
        state = torch.exp(ld * n)[:, None, None] * state + (ki * k_decay).transpose(-1, -2) @ vi
    out = torch.cat(outputs, dim=2) if outputs else v.new_zeros(b, h, 0, dv)
    return out, state


def recurrent_decay_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same op token by token (S_t = lambda S_{t-1} + k_t v_t^T, o_t = S_t^T q_t): the oracle."""
    b, h, t, dk = q.shape
    decay = torch.ones(h, dtype=q.dtype, device=q.device) if log_decay is None else log_decay.to(q.dtype).exp()
    state = q.new_zeros(b, h, dk, v.shape[-1]) if initial_state is None else initial_state.to(q.dtype)
    outputs = []
    for i in range(t):
        state = decay[:, None, None] * state + k[:, :, i, :, None] * v[:, :, i, None, :]
        outputs.append((q[:, :, i, None, :] @ state)[:, :, 0])
    return torch.stack(outputs, dim=2) if outputs else v.new_zeros(b, h, 0, v.shape[-1]), state
