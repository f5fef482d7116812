"""Triton kernels: per-head span, WAAD and FAI of causal (sliding-window) softmax attention, never forming
the T x T pattern. Same numbers as `kernels.reference.softmax_attention_stats_reference` (the metrics of
arXiv 2510.13554 are defined there), in float32.

    rows     grid (T / BLOCK_M, B*H). One pass over the key blocks a block of queries sees, with the online
             softmax of FlashAttention (Dao et al. 2022): per row the running max m and, with e = exp(score - m),
             l = sum e, a = sum e (t-s), w = sum e min(t-s, W), rescaled when m grows. Stores lse = m + log l,
             dist = a / l and WAAD = w / l.
    columns  grid (T / BLOCK_N, B*H). For a block of keys s, the query blocks holding T(s); recomputes
             p = exp(score - lse_t) and sums it over t in T(s). FAI = that sum / |T(s)| (closed form).

Scores are kept in log2 units (scale * log2 e) so that the kernels use exp2. The kernels run on CUDA
tensors, or on CPU tensors under TRITON_INTERPRET=1 when that is set before this module is imported.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from kernels.reference.softmax_attention_stats import (
    check_options,
    check_qk,
    fai_count,
    fai_finish,
    span_over_response,
)

__all__ = ["softmax_attention_stats"]

# Read when the kernels are defined: triton.jit builds interpreted kernels only while this is set.
INTERPRET = triton.knobs.runtime.interpret
# float32 scores from float32 inputs: three TF32 tensor-core products (float32 accuracy, no register-hungry
# FMA dot); half-precision inputs use the tensor cores directly (the setting is ignored).
DOT_PRECISION = {torch.float32: "tf32x3", torch.float16: "tf32", torch.bfloat16: "tf32"}
MIN_BLOCK_D = 16  # tl.dot needs every dimension >= 16


@triton.jit
def _load_rows(head_ptr, rows, offs_d, n, stride_t, stride_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows `rows` of one head's [T, D] matrix, zero past T and in the head-dim padding."""
    mask = rows[:, None] < n
    if HEAD_DIM < BLOCK_D:
        mask = mask & (offs_d[None, :] < HEAD_DIM)
    return tl.load(head_ptr + rows[:, None] * stride_t + offs_d[None, :] * stride_d, mask=mask, other=0.0)


@triton.jit
def _rows_step(m, l, a, w, q, k_head, s0, t_pos, n, stride_kt, stride_kd, qk_scale, window, waad_window,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               PRECISION: tl.constexpr, MASKED: tl.constexpr):
    """Fold the keys s0 .. s0+BLOCK_N-1 into the running (m, l, a, w) of a block of query rows.
    MASKED: apply causality, the sliding window and the sequence end (else all keys are visible)."""
    offs_n = s0 + tl.arange(0, BLOCK_N)
    k = _load_rows(k_head, offs_n, tl.arange(0, BLOCK_D), n, stride_kt, stride_kd, HEAD_DIM, BLOCK_D)
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    lag = t_pos[:, None] - offs_n.to(tl.float32)[None, :]  # t - s, exact in float32 below 2^24
    if MASKED:
        allowed = (lag >= 0) & (lag < window) & (offs_n[None, :] < n)
        scores = tl.where(allowed, scores, float("-inf"))
    m_new = tl.maximum(m, tl.max(scores, 1))
    alpha = tl.exp2(m - m_new)
    e = tl.exp2(scores - m_new[:, None])
    l = l * alpha + tl.sum(e, 1)
    a = a * alpha + tl.sum(e * lag, 1)
    w = w * alpha + tl.sum(e * tl.minimum(lag, waad_window), 1)
    return m_new, l, a, w


@triton.jit
def _rows_kernel(q_ptr, k_ptr, lse_ptr, dist_ptr, waad_ptr,
                 stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                 n_heads, n, qk_scale, window, waad_window,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 PRECISION: tl.constexpr):
    """Per query row: lse (log2 units), dist = sum_s A (t-s) and WAAD = sum_s A min(t-s, W)."""
    t0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    batch, head = bh // n_heads, bh % n_heads
    q_head = q_ptr + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
    k_head = k_ptr + batch.to(tl.int64) * stride_kb + head.to(tl.int64) * stride_kh
    offs_m = t0 + tl.arange(0, BLOCK_M)
    q = _load_rows(q_head, offs_m, tl.arange(0, BLOCK_D), n, stride_qt, stride_qd, HEAD_DIM, BLOCK_D)
    t_pos = offs_m.to(tl.float32)

    # Finite start: a row that sees no key of a block keeps m finite, so alpha = exp2(m - m_new) is never NaN.
    m = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    a = tl.zeros([BLOCK_M], tl.float32)
    w = tl.zeros([BLOCK_M], tl.float32)
    # Key blocks (BLOCK_M is a multiple of BLOCK_N, so t0 is a block start): [lo, mid) at the lower edge of
    # the window, masked; [mid, t0) visible to every row of the block; [t0, hi) on the diagonal, masked.
    lo = tl.maximum(t0 - window + 1, 0) // BLOCK_N * BLOCK_N
    first_full = (tl.maximum(t0 + BLOCK_M - window, 0) + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    mid = tl.minimum(tl.maximum(first_full, lo), t0)
    hi = tl.minimum(t0 + BLOCK_M, n)
    for s0 in range(lo, mid, BLOCK_N):
        m, l, a, w = _rows_step(m, l, a, w, q, k_head, s0, t_pos, n, stride_kt, stride_kd, qk_scale, window,
                                waad_window, HEAD_DIM, BLOCK_N, BLOCK_D, PRECISION, True)
    for s0 in range(mid, t0, BLOCK_N):
        m, l, a, w = _rows_step(m, l, a, w, q, k_head, s0, t_pos, n, stride_kt, stride_kd, qk_scale, window,
                                waad_window, HEAD_DIM, BLOCK_N, BLOCK_D, PRECISION, False)
    for s0 in range(t0, hi, BLOCK_N):
        m, l, a, w = _rows_step(m, l, a, w, q, k_head, s0, t_pos, n, stride_kt, stride_kd, qk_scale, window,
                                waad_window, HEAD_DIM, BLOCK_N, BLOCK_D, PRECISION, True)

    out = bh.to(tl.int64) * n + offs_m
    valid = offs_m < n
    l = tl.where(valid, l, 1.0)  # rows past T may have seen no key
    tl.store(lse_ptr + out, m + tl.log2(l), mask=valid)
    tl.store(dist_ptr + out, a / l, mask=valid)
    tl.store(waad_ptr + out, w / l, mask=valid)


@triton.jit
def _columns_kernel(q_ptr, k_ptr, lse_ptr, total_ptr,
                    stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                    n_heads, n, qk_scale, window, start, h_lo, h_hi,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    PRECISION: tl.constexpr):
    """Per key s: the sum of A[t, s] over t in T(s) = {t >= start : h_lo <= t - s <= h_hi}."""
    s0 = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    batch, head = bh // n_heads, bh % n_heads
    q_head = q_ptr + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
    k_head = k_ptr + batch.to(tl.int64) * stride_kb + head.to(tl.int64) * stride_kh
    offs_n = s0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_rows(k_head, offs_n, offs_d, n, stride_kt, stride_kd, HEAD_DIM, BLOCK_D)
    lse_row = lse_ptr + bh.to(tl.int64) * n

    total = tl.zeros([BLOCK_N], tl.float32)
    t_lo = tl.maximum(start, s0 + h_lo)
    t_hi = tl.minimum(n, s0 + BLOCK_N + tl.minimum(h_hi, window - 1))  # past the last t of any T(s), s in block
    for t_first in range(t_lo, t_hi, BLOCK_M):
        offs_m = t_first + tl.arange(0, BLOCK_M)
        q = _load_rows(q_head, offs_m, offs_d, n, stride_qt, stride_qd, HEAD_DIM, BLOCK_D)
        lse = tl.load(lse_row + offs_m, mask=offs_m < n, other=0.0)
        scores = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # [keys, queries]
        lag = offs_m[None, :] - offs_n[:, None]
        member = (lag >= h_lo) & (lag <= h_hi) & (lag < window) & (offs_m[None, :] < n)
        total += tl.sum(tl.where(member, tl.exp2(scores - lse[None, :]), 0.0), 1)
    tl.store(total_ptr + bh.to(tl.int64) * n + offs_n, total, mask=offs_n < n)


def _launch_config(block_d: int, element_size: int) -> dict:
    """Tile sizes (BLOCK_M a multiple of BLOCK_N), warps and pipeline stages: small tiles when interpreting;
    on the GPU 128 x 64 while a row of q is at most 256 bytes, else 64 x 32 (chosen so that ptxas does not
    spill registers on sm_90 for bf16 D <= 256 and float32 D <= 64)."""
    if INTERPRET:
        return dict(BLOCK_M=32, BLOCK_N=16)
    row_bytes = block_d * element_size
    if row_bytes <= 256:
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)
    return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4 if row_bytes <= 512 else 8, num_stages=2)


def softmax_attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    window: int | None = None,
    response_start: int = 0,
    waad_window: int | None = 10,
    h_lo: int = 10,
    h_hi: int | None = 100,
) -> dict[str, torch.Tensor]:
    """Head span, WAAD and FAI of causal softmax attention A = softmax_s(q_t.k_s scale) over s <= t (and
    t - s < window when `window` is set), without forming A.

    q, k: [B, H, T, D] CUDA tensors (CPU under TRITON_INTERPRET=1), float32, float16 or bfloat16, any
    strides (T x stride of T below 2^31; k may be an expanded view); k already expanded to the H query
    heads. Any D: the head dim is padded to a power of two >= 16. Returns {"span": [B, H], "waad": [B, H, T],
    "fai": [B, H, T]} in float32. Memory O(B H T); time O(B H T (T or window) D) for the rows and
    O(B H T (h_hi - h_lo + BLOCK) D) for the columns."""
    b, h, n, d = check_qk(q, k)
    start = check_options(n, response_start, waad_window, h_lo, window)
    if q.device != k.device:
        raise ValueError(f"q and k must be on the same device, got {q.device} and {k.device}")
    if not INTERPRET and q.device.type != "cuda":
        raise ValueError(f"softmax_attention_stats runs on CUDA tensors, got {q.device}; for CPU tensors set "
                         "TRITON_INTERPRET=1 before importing kernels.softmax_attention_stats, or use "
                         "kernels.reference.softmax_attention_stats_reference")
    if q.dtype != k.dtype:
        dtype = torch.promote_types(q.dtype, k.dtype)
        q, k = q.to(dtype), k.to(dtype)
    if q.dtype not in DOT_PRECISION:
        raise ValueError(f"q and k must be float32, float16 or bfloat16, got {q.dtype} "
                         "(float64: use kernels.reference.softmax_attention_stats_reference)")
    if max(q.stride(2), k.stride(2)) * n >= 2**31:
        raise ValueError(f"T x (stride of T) must stay below 2^31 (32-bit row offsets in the kernels), got T={n}, "
                         f"strides {q.stride(2)} and {k.stride(2)}; make q and k contiguous [B, H, T, D]")

    block_d = max(MIN_BLOCK_D, triton.next_power_of_2(d))
    config = _launch_config(block_d, q.element_size())
    # Limits that never bind (every t - s is < n), kept small so they stay 32-bit integers in the kernels.
    window_limit = n + config["BLOCK_M"] if window is None or window >= n else int(window)
    waad_limit = float(n if waad_window is None else min(waad_window, n))
    h_lo_limit = min(int(h_lo), n)
    h_hi_limit = n if h_hi is None else max(min(int(h_hi), n), -1)
    common = dict(HEAD_DIM=d, BLOCK_D=block_d, PRECISION=DOT_PRECISION[q.dtype], **config)
    strides = (*q.stride(), *k.stride())
    qk_scale = float(scale) * math.log2(math.e)

    lse, dist, waad, total = (torch.empty((b, h, n), dtype=torch.float32, device=q.device) for _ in range(4))
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _rows_kernel[(triton.cdiv(n, config["BLOCK_M"]), b * h)](
            q, k, lse, dist, waad, *strides, h, n, qk_scale, window_limit, waad_limit, **common)
        _columns_kernel[(triton.cdiv(n, config["BLOCK_N"]), b * h)](
            q, k, lse, total, *strides, h, n, qk_scale, window_limit, start, h_lo_limit, h_hi_limit, **common)

    count = fai_count(n, start, h_lo, h_hi, q.device, torch.float32)
    return {"span": span_over_response(dist, start), "waad": waad, "fai": fai_finish(total, count)}
