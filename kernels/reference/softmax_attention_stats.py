"""Per-head statistics of causal softmax attention without materialising the T x T pattern.

The metrics are those of "Attention Illuminates LLM Reasoning" (arXiv 2510.13554), for A = softmax_s(q_t.k_s
scale) over s <= t (and t - s < window with a sliding window), R = {t >= response_start}:
    span [B, H]     d(h) = 1/|R| sum_{t in R} sum_{s<=t} A[t,s] (t - s)        (0 for an empty R)
    waad [B, H, T]  WAAD_t = sum_{s<=t} A[t,s] min(t - s, W)                   (W = waad_window, None: no clip)
    fai  [B, H, T]  FAI_s = 1/|T(s)| sum_{t in T(s)} A[t,s],
                    T(s) = {t in R : s + h_lo <= t <= min(T-1, s + h_hi)}      (h_hi None: to the end; 0 if empty)

Block-wise as in FlashAttention (Dao et al. 2022): pass 1 combines each query row's log-sum-exp block by
block (the online softmax), pass 2 recomputes each block's probabilities from it and accumulates the row
and column sums. The largest intermediate is [B, H, T, block]. Triton version: kernels.softmax_attention_stats.
"""

from __future__ import annotations

import torch

__all__ = ["softmax_attention_stats_reference"]


# ---- helpers shared with the Triton wrapper and the linear-family statistics ---------------------------
def work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half precisions are promoted)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def check_qk(q: torch.Tensor, k: torch.Tensor) -> tuple[int, int, int, int]:
    """(B, H, T, D) of q and k, which must both be [B, H, T, D]."""
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(f"q and k must be [B, H, T, D], got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape [B, H, T, D] (expand kv heads first), "
                         f"got {tuple(q.shape)} and {tuple(k.shape)}")
    return tuple(q.shape)


def check_options(n: int, response_start: int, waad_window: int | None, h_lo: int,
                  window: int | None = None) -> int:
    """Validate the metric options for a sequence of n positions; returns response_start clipped to n."""
    response_start = int(response_start)
    if response_start < 0:
        raise ValueError(f"response_start must be >= 0, got {response_start}")
    if waad_window is not None and waad_window < 0:
        raise ValueError(f"waad_window must be >= 0, got {waad_window}")
    if h_lo < 0:
        raise ValueError(f"h_lo must be >= 0 (only t >= s is attention to s), got {h_lo}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return min(response_start, n)


def check_block(block: int) -> int:
    if int(block) < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    return int(block)


def span_over_response(per_row: torch.Tensor, start: int) -> torch.Tensor:
    """Mean over R = {t >= start} of a per-row series [B, H, T] -> [B, H] (0 for an empty R)."""
    if start >= per_row.shape[-1]:
        return torch.zeros(per_row.shape[:-1], dtype=per_row.dtype, device=per_row.device)
    return per_row[..., start:].mean(-1)


def fai_count(n: int, start: int, h_lo: int, h_hi: int | None, device, dtype) -> torch.Tensor:
    """|T(s)| for s = 0..n-1, T(s) = {t : max(start, s + h_lo) <= t <= min(n - 1, s + h_hi)}."""
    s = torch.arange(n, device=device)
    lo = torch.clamp(s + h_lo, min=start)
    hi = torch.full_like(s, n - 1) if h_hi is None else torch.clamp(s + h_hi, max=n - 1)
    return (hi - lo + 1).clamp(min=0).to(dtype)


def fai_finish(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """FAI = total / |T(s)|, 0 where T(s) is empty."""
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


# ---- the reference -------------------------------------------------------------------------------------
def softmax_attention_stats_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    window: int | None = None,
    response_start: int = 0,
    waad_window: int | None = 10,
    h_lo: int = 10,
    h_hi: int | None = 100,
    block: int = 128,
) -> dict[str, torch.Tensor]:
    """Head span, WAAD and FAI of causal softmax attention A = softmax_s(q_t.k_s scale) over s <= t (and
    t - s < window when `window` is set: sliding-window attention), without forming A.

    q, k: [B, H, T, D] (k already expanded to the H query heads; post-RoPE). Returns
    {"span": [B, H], "waad": [B, H, T], "fai": [B, H, T]} in float64 for float64 input, else float32.
    Two passes over blocks of `block` keys; the largest intermediate is [B, H, T, block]."""
    b, h, n, _ = check_qk(q, k)
    start = check_options(n, response_start, waad_window, h_lo, window)
    block = check_block(block)
    dtype = work_dtype(q, k)
    q, k = q.to(dtype), k.to(dtype)
    dev = q.device

    def scores_of(j0: int, j1: int):
        """Scores of the queries that can see keys j0..j1-1: rows t0..t1-1, -inf where not allowed."""
        t0, t1 = j0, n if window is None else min(n, j1 - 1 + window)
        gap = torch.arange(t0, t1, device=dev)[:, None] - torch.arange(j0, j1, device=dev)[None, :]
        allowed = gap >= 0
        if window is not None:
            allowed &= gap < window
        scores = (q[:, :, t0:t1] @ k[:, :, j0:j1].transpose(-1, -2)) * scale
        return t0, t1, gap, scores.masked_fill(~allowed, float("-inf"))

    # pass 1: log-sum-exp of each query row, combined block by block
    lse = torch.full((b, h, n), float("-inf"), dtype=dtype, device=dev)
    for j0 in range(0, n, block):
        t0, t1, _, scores = scores_of(j0, min(n, j0 + block))
        lse[:, :, t0:t1] = torch.logaddexp(lse[:, :, t0:t1], torch.logsumexp(scores, dim=-1))

    # pass 2: probabilities with the final lse; row and column accumulations
    dist = torch.zeros((b, h, n), dtype=dtype, device=dev)
    clipped = torch.zeros((b, h, n), dtype=dtype, device=dev)
    total = torch.zeros((b, h, n), dtype=dtype, device=dev)
    for j0 in range(0, n, block):
        j1 = min(n, j0 + block)
        t0, t1, gap, scores = scores_of(j0, j1)
        p = torch.exp(scores - lse[:, :, t0:t1, None])  # 0 where masked
        lag = gap.clamp(min=0).to(dtype)
        dist[:, :, t0:t1] += (p * lag).sum(-1)
        if waad_window is None:
            clipped[:, :, t0:t1] += (p * lag).sum(-1)
        else:
            clipped[:, :, t0:t1] += (p * lag.clamp(max=waad_window)).sum(-1)
        member = (gap >= h_lo) & (torch.arange(t0, t1, device=dev) >= start)[:, None]
        if h_hi is not None:
            member &= gap <= h_hi
        total[:, :, j0:j1] += (p * member.to(dtype)).sum(-2)

    count = fai_count(n, start, h_lo, h_hi, dev, dtype)
    return {"span": span_over_response(dist, start), "waad": clipped, "fai": fai_finish(total, count)}
