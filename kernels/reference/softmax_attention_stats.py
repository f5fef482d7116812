"""Per-head statistics of causal softmax attention without materialising the T x T pattern.

The metrics are those of "Attention Illuminates LLM Reasoning" (arXiv 2510.13554), for A = softmax_s(q_t.k_s
scale) over s <= t (and t - s < window with a sliding window), R = {t >= response_start}:
    span [B, H]     d(h) = 1/|R| sum_{t in R} sum_{s<=t} A[t,s] (t - s)        (0 for an empty R)
    waad [B, H, T]  WAAD_t = sum_{s<=t} A[t,s] min(t - s, W)                   (W = waad_window, None: no clip)
    fai  [B, H, T]  FAI_s = 1/|T(s)| sum_{t in T(s)} A[t,s],
                    T(s) = {t in R : s + h_lo <= t <= min(T-1, s + h_hi)}      (h_hi None: to the end; 0 if empty)

Tiled as in FlashAttention (Dao et al. 2022): a row pass with the online softmax gives each query row's
log-sum-exp and its distance sums; a column pass recomputes the probabilities of only the tiles inside each
key's FAI band. The largest intermediate is [B, H, block, block]. Triton version: kernels.softmax_attention_stats.
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
    Tiles of `block` queries x `block` keys; the largest intermediate is [B, H, block, block].

    Row pass (one pass, online softmax): per query tile, over the key tiles it can see, keep the running
    max m, l = sum e, a = sum e (t - s), w = sum e min(t - s, W) with e = exp(score - m), rescaled when m
    grows; dist = a / l, WAAD = w / l, lse = m + log l. Column pass: per key tile, only the query tiles
    inside its FAI band [s + h_lo, s + h_hi] recompute p = exp(score - lse) and sum the member rows."""
    b, h, n, _ = check_qk(q, k)
    start = check_options(n, response_start, waad_window, h_lo, window)
    block = check_block(block)
    dtype = work_dtype(q, k)
    q, k = q.to(dtype), k.to(dtype)
    dev = q.device
    pos = torch.arange(n, device=dev)

    def tile(t0: int, t1: int, j0: int, j1: int):
        """Scores of queries t0..t1-1 against keys j0..j1-1 (-inf where not allowed) and the lags t - s."""
        gap = pos[t0:t1, None] - pos[None, j0:j1]
        scores = (q[:, :, t0:t1] @ k[:, :, j0:j1].transpose(-1, -2)) * scale
        allowed = gap >= 0
        if window is not None:
            allowed &= gap < window
        if not bool(allowed.all()):
            scores = scores.masked_fill(~allowed, float("-inf"))
        return scores, gap

    def first_key(t0: int) -> int:
        """The first key tile start that query t0's tile can see (sliding window), block-aligned."""
        return 0 if window is None else max(0, t0 - window + 1) // block * block

    # row pass: lse, distance and clipped distance of every query row
    lse = torch.empty((b, h, n), dtype=dtype, device=dev)
    dist = torch.empty_like(lse)
    clipped = torch.empty_like(lse)
    for t0 in range(0, n, block):
        t1 = min(n, t0 + block)
        shape = (b, h, t1 - t0)
        m = torch.full(shape, float("-inf"), dtype=dtype, device=dev)
        l, a, w = (torch.zeros(shape, dtype=dtype, device=dev) for _ in range(3))
        for j0 in range(first_key(t0), t1, block):
            j1 = min(n, j0 + block, t1)
            scores, gap = tile(t0, t1, j0, j1)
            m_new = torch.maximum(m, scores.amax(-1))
            safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # rows with nothing yet
            e = torch.exp(scores - safe[..., None])
            keep = torch.exp(m - safe)
            lag = gap.clamp(min=0).to(dtype)
            l = l * keep + e.sum(-1)
            a = a * keep + (e * lag).sum(-1)
            clip = lag if waad_window is None else lag.clamp(max=waad_window)
            w = w * keep + (e * clip).sum(-1)
            m = m_new
        lse[:, :, t0:t1] = m + torch.log(l)
        dist[:, :, t0:t1] = a / l
        clipped[:, :, t0:t1] = w / l

    # column pass: sum of p over the member rows t in T(s) of every key column s
    total = torch.zeros((b, h, n), dtype=dtype, device=dev)
    for j0 in range(0, n, block):
        j1 = min(n, j0 + block)
        lo = max(j0 + h_lo, start)
        hi = n if h_hi is None else min(n, j1 - 1 + h_hi + 1)
        if window is not None:
            hi = min(hi, j1 - 1 + window)
        for t0 in range(lo // block * block, hi, block):
            t1 = min(n, t0 + block)
            scores, gap = tile(t0, t1, j0, j1)
            p = torch.exp(scores - lse[:, :, t0:t1, None])  # 0 where masked
            member = (gap >= h_lo) & (pos[t0:t1] >= start)[:, None]
            if h_hi is not None:
                member &= gap <= h_hi
            total[:, :, j0:j1] += (p * member.to(dtype)).sum(-2)

    count = fai_count(n, start, h_lo, h_hi, dev, dtype)
    return {"span": span_over_response(dist, start), "waad": clipped, "fai": fai_finish(total, count)}
