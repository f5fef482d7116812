"""Triton kernels: causal sliding-window softmax attention, forward and backward.

Query t sees the keys s with 0 <= t - s < window (itself included), o_t = sum_s softmax_s(scale q_t.k_s) v_s,
as `studio.mixers.softmax.causal_scores` with `window` (the Mistral / Longformer window, arXiv 2310.06825,
2004.05150). FlashAttention-2 (Dao, arXiv 2307.08691) restricted to the band: scores never leave the chip,
the online softmax runs in float32, and every loop covers only the blocks of the band.

Layout [B, T, H, D] for q and [B, T, H_kv, D] for k, v (GQA: query head h reads kv head h // (H / H_kv)), any
strides. Variable-length packing as in flash-attn: B = 1 and cu_seqlens [N + 1]; a query also needs
s >= the start of its sequence, which only raises its lower bound lo_t = max(t - window + 1, start(t)).
Both bounds grow with t, so a block of rows [t0, t1] needs the keys [lo_t0, t1], and the key blocks in
[lo_t1, t0] are visible to every row: those run without a mask, only the edge blocks are masked.

    forward  grid (T / BLOCK_M, B*H). Online softmax over the key blocks of the band; stores O and, per
             row, lse = m + log2(l) (scores in log2 units: log2 e is folded into the scale, so exp2).
    dq       grid (T / BLOCK_M, B*H). First delta_t = rowsum(dO_t * O_t) (stored for the dk/dv pass), then
             P = exp2(S - lse), dS = P * (dO V^T - delta), dQ = scale dS K over the same key blocks.
    dk, dv   grid (T / BLOCK_N, B*H_kv). For a block of keys [s0, s1], the queries [s0, hi_s1] with
             hi_s = min(s + window - 1, end(s) - 1), for each query head of the kv head's group in turn:
             dV += P^T dO, dK += scale dS^T Q. No atomics: each program owns its rows of dk and dv.

Tiles go to tl.dot in the inputs' dtype (P and dS are cast to it, as FlashAttention-2 does); accumulation
in float32. On the GPU the tile sizes are autotuned from a few configs; under TRITON_INTERPRET=1 (set
before this module is imported; CPU tensors) fixed tiles from INTERPRET_BLOCKS are used.
"""

from __future__ import annotations

import contextlib
import math
import os
import operator

import torch
import triton
import triton.language as tl

__all__ = ["sliding_window_attention"]

# Read when the kernels are defined: triton.jit builds interpreted kernels only while this is set.
INTERPRET = triton.knobs.runtime.interpret
# float32 inputs: three TF32 products (float32 accuracy); half-precision tiles use the tensor cores directly
# (the setting is ignored for them).
DOT_PRECISION = {torch.float32: "tf32x3", torch.float16: "tf32", torch.bfloat16: "tf32"}
MIN_BLOCK_D = 16  # tl.dot needs every dimension >= 16
MAX_HEAD_DIM = 256
LOG2E = math.log2(math.e)
# (BLOCK_M queries, BLOCK_N keys) per kernel when interpreting (no autotuning there); tests change them.
INTERPRET_BLOCKS = {"fwd": (32, 16), "dq": (32, 16), "dkdv": (16, 32)}

# GPU configs (BLOCK_M queries, BLOCK_N keys, num_warps, num_stages), checked offline with ptxas for sm_90 in
# bf16 at D = 128: none spills registers (GROUP = 1), all fit the 227 KB of shared memory of an H100/H200 SM.
# The last ones are fallbacks for D = 256 and float32, where `_pruner` drops the large ones.
_CONFIGS = {
    "fwd": [(128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 2), (128, 32, 8, 3), (64, 64, 4, 3), (64, 64, 4, 2),
            (64, 32, 4, 2), (32, 32, 4, 2)],
    "dq": [(128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 4),
           (64, 32, 4, 2), (32, 32, 4, 2)],
    "dkdv": [(64, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 2), (64, 64, 8, 2), (64, 64, 8, 3), (32, 64, 8, 3),
             (32, 64, 4, 3), (32, 32, 4, 2)],
}
_AUTOTUNE_KEY = ["HEAD_DIM", "BLOCK_D", "GROUP", "IS_VARLEN", "window"]
SHARED_MEMORY_LIMIT = 224 * 1024


def _footprint(kind: str, m: int, n: int, warps: int, stages: int, block_d: int, element: int) -> tuple[int, int]:
    """Estimated shared memory (bytes: resident tiles + pipelined tiles) and float32 accumulator registers
    per thread of one config."""
    row = block_d * element
    if kind == "fwd":  # Q resident; K, V pipelined; O accumulator
        return (m + 2 * stages * n) * row, m * block_d // (32 * warps)
    if kind == "dq":  # Q, dO resident; K, V pipelined; dQ accumulator
        return (2 * m + 2 * stages * n) * row, m * block_d // (32 * warps)
    return (2 * n + 2 * stages * m) * row, 2 * n * block_d // (32 * warps)  # K, V resident; Q, dO pipelined


def _pruner(kind: str):
    def prune(configs, named_args, **kwargs):
        """Keep the configs that fit shared memory with at most 128 accumulator registers per thread."""
        block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
        element = named_args["q_ptr"].element_size()

        def footprint(c):
            return _footprint(kind, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages, block_d,
                              element)

        kept = [c for c in configs if footprint(c)[0] <= SHARED_MEMORY_LIMIT and footprint(c)[1] <= 128]
        kept = kept or [min(configs, key=footprint)]
        # STUDIO_AUTOTUNE=0: the first config that fits, no timing (GPU test runs: dozens of shapes)
        return kept[:1] if os.environ.get("STUDIO_AUTOTUNE", "1") == "0" else kept
    return prune


def _autotune(kind: str):
    def wrap(fn):
        if INTERPRET:  # the autotuner cannot run under the interpreter: fixed tiles are passed at launch
            return fn
        configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
                   for m, n, w, s in _CONFIGS[kind]]
        return triton.autotune(configs=configs, key=_AUTOTUNE_KEY,
                               prune_configs_by={"early_config_prune": _pruner(kind)})(fn)
    return wrap


@triton.jit
def _load(head_ptr, rows, offs_d, n, stride_t, stride_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows `rows` of one head's [T, D] matrix, zero in the head-dim padding. Rows past T read row T - 1
    (clamped rather than masked: unpredicated loads, fewer registers); callers mask or drop those rows."""
    ptrs = head_ptr + tl.minimum(rows, n - 1)[:, None] * stride_t + offs_d[None, :] * stride_d
    if HEAD_DIM < BLOCK_D:
        x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _store(head_ptr, x, rows, offs_d, n, stride_t, stride_d, HEAD_DIM: tl.constexpr):
    mask = (rows[:, None] < n) & (offs_d[None, :] < HEAD_DIM)
    tl.store(head_ptr + rows[:, None] * stride_t + offs_d[None, :] * stride_d, x.to(head_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _query_bounds(seq_start_ptr, offs_m, t0, t_last, n, window, IS_VARLEN: tl.constexpr):
    """lo_t (the first key row t sees) for the rows of a block, its first and its last valid row."""
    lo_rows = tl.maximum(offs_m - window + 1, 0)
    lo_first = tl.maximum(t0 - window + 1, 0)
    lo_last = tl.maximum(t_last - window + 1, 0)
    if IS_VARLEN:
        lo_rows = tl.maximum(lo_rows, tl.load(seq_start_ptr + offs_m, mask=offs_m < n, other=0))
        lo_first = tl.maximum(lo_first, tl.load(seq_start_ptr + t0))
        lo_last = tl.maximum(lo_last, tl.load(seq_start_ptr + t_last))
    return lo_rows, lo_first, lo_last


@triton.jit
def _key_segments(t0, t_last, lo_first, lo_last, BLOCK_N: tl.constexpr):
    """Key blocks of a query block [t0, t_last]: [lo, mid) masked, [mid, diag) unmasked, [diag, hi) masked."""
    lo = lo_first // BLOCK_N * BLOCK_N
    hi = t_last + 1
    mid = tl.minimum((lo_last + BLOCK_N - 1) // BLOCK_N * BLOCK_N, hi)
    diag = mid + tl.maximum(t0 + 1 - mid, 0) // BLOCK_N * BLOCK_N  # last full block ends at or before t0 + 1
    return lo, mid, diag, hi


@triton.jit
def _fwd_blocks(acc, m, l, q, k_head, v_head, offs_m, lo_rows, s_lo, s_hi, n,
                stride_kt, stride_kd, stride_vt, stride_vd, qk_scale,
                HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                PRECISION: tl.constexpr, MASKED: tl.constexpr):
    """Fold the key blocks s_lo, s_lo + BLOCK_N, .. < s_hi into the running (acc, m, l)."""
    offs_d = tl.arange(0, BLOCK_D)
    for s0 in range(s_lo, s_hi, BLOCK_N):
        offs_n = s0 + tl.arange(0, BLOCK_N)
        k = _load(k_head, offs_n, offs_d, n, stride_kt, stride_kd, HEAD_DIM, BLOCK_D)
        v = _load(v_head, offs_n, offs_d, n, stride_vt, stride_vd, HEAD_DIM, BLOCK_D)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if MASKED:
            visible = (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] >= lo_rows[:, None])
            qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m, tl.max(qk, 1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m = m_new
    return acc, m, l


@_autotune("fwd")
@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, seq_start_ptr,
                stride_qb, stride_qt, stride_qh, stride_qd, stride_kb, stride_kt, stride_kh, stride_kd,
                stride_vb, stride_vt, stride_vh, stride_vd, stride_ob, stride_ot, stride_oh, stride_od,
                n, n_heads, window, qk_scale,
                GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IS_VARLEN: tl.constexpr,
                PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    t0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    batch = bh // n_heads
    head = bh % n_heads
    kv_head = head // GROUP
    q_head = q_ptr + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
    k_head = k_ptr + batch.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
    v_head = v_ptr + batch.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh
    o_head = o_ptr + batch.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh
    offs_m = t0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    t_last = tl.minimum(t0 + BLOCK_M, n) - 1
    lo_rows, lo_first, lo_last = _query_bounds(seq_start_ptr, offs_m, t0, t_last, n, window, IS_VARLEN)
    lo, mid, diag, hi = _key_segments(t0, t_last, lo_first, lo_last, BLOCK_N)

    q = _load(q_head, offs_m, offs_d, n, stride_qt, stride_qd, HEAD_DIM, BLOCK_D)
    # Finite start: a row that sees no key of a masked block keeps m finite, so exp2(m - m_new) is never NaN.
    m = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, m, l = _fwd_blocks(acc, m, l, q, k_head, v_head, offs_m, lo_rows, lo, mid, n, stride_kt, stride_kd,
                            stride_vt, stride_vd, qk_scale, HEAD_DIM, BLOCK_N, BLOCK_D, PRECISION, True)
    acc, m, l = _fwd_blocks(acc, m, l, q, k_head, v_head, offs_m, lo_rows, mid, diag, n, stride_kt, stride_kd,
                            stride_vt, stride_vd, qk_scale, HEAD_DIM, BLOCK_N, BLOCK_D, PRECISION, False)
    acc, m, l = _fwd_blocks(acc, m, l, q, k_head, v_head, offs_m, lo_rows, diag, hi, n, stride_kt, stride_kd,
                            stride_vt, stride_vd, qk_scale, HEAD_DIM, BLOCK_N, BLOCK_D, PRECISION, True)

    l = tl.where(l > 0, l, 1.0)  # rows past T only
    _store(o_head, acc / l[:, None], offs_m, offs_d, n, stride_ot, stride_od, HEAD_DIM)
    tl.store(lse_ptr + bh.to(tl.int64) * n + offs_m, m + tl.log2(l), mask=offs_m < n)


@triton.jit
def _dq_blocks(dq, q, do, lse, delta, k_head, v_head, offs_m, lo_rows, s_lo, s_hi, n,
               stride_kt, stride_kd, stride_vt, stride_vd, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               PRECISION: tl.constexpr, MASKED: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    for s0 in range(s_lo, s_hi, BLOCK_N):
        offs_n = s0 + tl.arange(0, BLOCK_N)
        k = _load(k_head, offs_n, offs_d, n, stride_kt, stride_kd, HEAD_DIM, BLOCK_D)
        v = _load(v_head, offs_n, offs_d, n, stride_vt, stride_vd, HEAD_DIM, BLOCK_D)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.exp2(qk - lse[:, None])
        if MASKED:
            visible = (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] >= lo_rows[:, None])
            p = tl.where(visible, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@_autotune("dq")
@triton.jit
def _dq_kernel(q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, seq_start_ptr,
               stride_qb, stride_qt, stride_qh, stride_qd, stride_kb, stride_kt, stride_kh, stride_kd,
               stride_vb, stride_vt, stride_vh, stride_vd, stride_ob, stride_ot, stride_oh, stride_od,
               stride_gb, stride_gt, stride_gh, stride_gd, stride_dqb, stride_dqt, stride_dqh, stride_dqd,
               n, n_heads, window, qk_scale, scale,
               GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IS_VARLEN: tl.constexpr,
               PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """delta = rowsum(dO * O) (stored) and dq; dO has the strides stride_g*, dq stride_dq*."""
    t0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    batch = bh // n_heads
    head = bh % n_heads
    kv_head = head // GROUP
    q_head = q_ptr + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
    k_head = k_ptr + batch.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
    v_head = v_ptr + batch.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh
    o_head = o_ptr + batch.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh
    do_head = do_ptr + batch.to(tl.int64) * stride_gb + head.to(tl.int64) * stride_gh
    dq_head = dq_ptr + batch.to(tl.int64) * stride_dqb + head.to(tl.int64) * stride_dqh
    offs_m = t0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    t_last = tl.minimum(t0 + BLOCK_M, n) - 1
    lo_rows, lo_first, lo_last = _query_bounds(seq_start_ptr, offs_m, t0, t_last, n, window, IS_VARLEN)
    lo, mid, diag, hi = _key_segments(t0, t_last, lo_first, lo_last, BLOCK_N)

    q = _load(q_head, offs_m, offs_d, n, stride_qt, stride_qd, HEAD_DIM, BLOCK_D)
    do = _load(do_head, offs_m, offs_d, n, stride_gt, stride_gd, HEAD_DIM, BLOCK_D)
    o = _load(o_head, offs_m, offs_d, n, stride_ot, stride_od, HEAD_DIM, BLOCK_D)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    row = bh.to(tl.int64) * n + offs_m
    tl.store(delta_ptr + row, delta, mask=offs_m < n)
    lse = tl.load(lse_ptr + row, mask=offs_m < n, other=float("inf"))  # rows past T: P = 0

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dq = _dq_blocks(dq, q, do, lse, delta, k_head, v_head, offs_m, lo_rows, lo, mid, n, stride_kt, stride_kd,
                    stride_vt, stride_vd, qk_scale, HEAD_DIM, BLOCK_N, BLOCK_D, PRECISION, True)
    dq = _dq_blocks(dq, q, do, lse, delta, k_head, v_head, offs_m, lo_rows, mid, diag, n, stride_kt, stride_kd,
                    stride_vt, stride_vd, qk_scale, HEAD_DIM, BLOCK_N, BLOCK_D, PRECISION, False)
    dq = _dq_blocks(dq, q, do, lse, delta, k_head, v_head, offs_m, lo_rows, diag, hi, n, stride_kt, stride_kd,
                    stride_vt, stride_vd, qk_scale, HEAD_DIM, BLOCK_N, BLOCK_D, PRECISION, True)
    _store(dq_head, dq * scale, offs_m, offs_d, n, stride_dqt, stride_dqd, HEAD_DIM)


@triton.jit
def _dkdv_blocks(dk, dv, k, v, q_head, do_head, lse_row, delta_row, offs_n, hi_cols, t_lo, t_hi, n,
                 stride_qt, stride_qd, stride_gt, stride_gd, qk_scale,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                 PRECISION: tl.constexpr, MASKED: tl.constexpr):
    """Add the query blocks t_lo, t_lo + BLOCK_M, .. < t_hi of one query head to dk, dv (transposed scores)."""
    offs_d = tl.arange(0, BLOCK_D)
    for t0 in range(t_lo, t_hi, BLOCK_M):
        offs_m = t0 + tl.arange(0, BLOCK_M)
        q = _load(q_head, offs_m, offs_d, n, stride_qt, stride_qd, HEAD_DIM, BLOCK_D)
        do = _load(do_head, offs_m, offs_d, n, stride_gt, stride_gd, HEAD_DIM, BLOCK_D)
        lse = tl.load(lse_row + tl.minimum(offs_m, n - 1))  # rows past T: invisible (masked below)
        delta = tl.load(delta_row + tl.minimum(offs_m, n - 1))
        qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # [keys, queries]
        p_t = tl.exp2(qk_t - lse[None, :])
        if MASKED:
            visible = (offs_m[None, :] >= offs_n[:, None]) & (offs_m[None, :] <= hi_cols[:, None])
            p_t = tl.where(visible, p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)
    return dk, dv


@_autotune("dkdv")
@triton.jit
def _dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, seq_end_ptr,
                 stride_qb, stride_qt, stride_qh, stride_qd, stride_kb, stride_kt, stride_kh, stride_kd,
                 stride_vb, stride_vt, stride_vh, stride_vd, stride_gb, stride_gt, stride_gh, stride_gd,
                 stride_dkb, stride_dkt, stride_dkh, stride_dkd, stride_dvb, stride_dvt, stride_dvh, stride_dvd,
                 n, n_heads, window, qk_scale, scale,
                 GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IS_VARLEN: tl.constexpr,
                 PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dk, dv of a block of BLOCK_N keys of one kv head, summed over the group's query heads."""
    s0 = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    n_kv_heads = n_heads // GROUP
    batch = bh // n_kv_heads
    kv_head = bh % n_kv_heads
    k_head = k_ptr + batch.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
    v_head = v_ptr + batch.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh
    offs_n = s0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load(k_head, offs_n, offs_d, n, stride_kt, stride_kd, HEAD_DIM, BLOCK_D)
    v = _load(v_head, offs_n, offs_d, n, stride_vt, stride_vd, HEAD_DIM, BLOCK_D)

    # hi_s: the last query that sees key s (non-decreasing in s). Query blocks: [s0, mid) masked (diagonal),
    # [mid, edge) unmasked (every row t has s_last <= t <= hi_s0), [edge, hi_s_last] masked (window edge).
    s_last = tl.minimum(s0 + BLOCK_N, n) - 1
    hi_cols = tl.minimum(offs_n + window - 1, n - 1)
    hi_first = tl.minimum(s0 + window - 1, n - 1)
    hi_last = tl.minimum(s_last + window - 1, n - 1)
    if IS_VARLEN:
        hi_cols = tl.minimum(hi_cols, tl.load(seq_end_ptr + offs_n, mask=offs_n < n, other=0) - 1)
        hi_first = tl.minimum(hi_first, tl.load(seq_end_ptr + s0) - 1)
        hi_last = tl.minimum(hi_last, tl.load(seq_end_ptr + s_last) - 1)
    t_hi = hi_last + 1
    mid = tl.minimum(s0 + (s_last - s0 + BLOCK_M - 1) // BLOCK_M * BLOCK_M, t_hi)
    edge = mid + tl.maximum(hi_first + 1 - mid, 0) // BLOCK_M * BLOCK_M

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for g in range(GROUP):
        head = kv_head * GROUP + g
        q_head = q_ptr + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
        do_head = do_ptr + batch.to(tl.int64) * stride_gb + head.to(tl.int64) * stride_gh
        lse_row = lse_ptr + (batch * n_heads + head).to(tl.int64) * n
        delta_row = delta_ptr + (batch * n_heads + head).to(tl.int64) * n
        dk, dv = _dkdv_blocks(dk, dv, k, v, q_head, do_head, lse_row, delta_row, offs_n, hi_cols, s0, mid, n,
                              stride_qt, stride_qd, stride_gt, stride_gd, qk_scale,
                              HEAD_DIM, BLOCK_M, BLOCK_D, PRECISION, True)
        dk, dv = _dkdv_blocks(dk, dv, k, v, q_head, do_head, lse_row, delta_row, offs_n, hi_cols, mid, edge, n,
                              stride_qt, stride_qd, stride_gt, stride_gd, qk_scale,
                              HEAD_DIM, BLOCK_M, BLOCK_D, PRECISION, False)
        dk, dv = _dkdv_blocks(dk, dv, k, v, q_head, do_head, lse_row, delta_row, offs_n, hi_cols, edge, t_hi, n,
                              stride_qt, stride_qd, stride_gt, stride_gd, qk_scale,
                              HEAD_DIM, BLOCK_M, BLOCK_D, PRECISION, True)
    dk_head = dk_ptr + batch.to(tl.int64) * stride_dkb + kv_head.to(tl.int64) * stride_dkh
    dv_head = dv_ptr + batch.to(tl.int64) * stride_dvb + kv_head.to(tl.int64) * stride_dvh
    _store(dk_head, dk * scale, offs_n, offs_d, n, stride_dkt, stride_dkd, HEAD_DIM)
    _store(dv_head, dv, offs_n, offs_d, n, stride_dvt, stride_dvd, HEAD_DIM)


def _launch(kernel, name: str, rows: int, other: int, args: tuple, common: dict, by_keys: bool = False) -> None:
    """Grid (row blocks, `other`); fixed tiles when interpreting, else the autotuner's. The grid counts
    BLOCK_N blocks for the dk/dv kernel (by_keys), BLOCK_M blocks otherwise."""
    tile = "BLOCK_N" if by_keys else "BLOCK_M"
    if INTERPRET:
        block_m, block_n = INTERPRET_BLOCKS[name]
        blocks = dict(BLOCK_M=block_m, BLOCK_N=block_n)
        kernel[(triton.cdiv(rows, blocks[tile]), other)](*args, **common, **blocks)
    else:
        kernel[lambda meta: (triton.cdiv(rows, meta[tile]), other)](*args, **common)


def _strides(*tensors: torch.Tensor) -> tuple[int, ...]:
    return tuple(s for x in tensors for s in x.stride())


def _device(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _common(q: torch.Tensor, k: torch.Tensor, varlen: bool) -> dict:
    d = q.shape[-1]
    return dict(GROUP=q.shape[2] // k.shape[2], HEAD_DIM=d, BLOCK_D=max(MIN_BLOCK_D, triton.next_power_of_2(d)),
                IS_VARLEN=varlen, PRECISION=DOT_PRECISION[q.dtype])


class _SlidingWindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, window, scale, seq_start, seq_end):
        b, n, h, _ = q.shape
        o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        lse = torch.empty((b, h, n), dtype=torch.float32, device=q.device)
        varlen = seq_start is not None
        args = (q, k, v, o, lse, seq_start if varlen else lse, *_strides(q, k, v, o),
                n, h, window, scale * LOG2E)
        with _device(q):
            _launch(_fwd_kernel, "fwd", n, b * h, args, _common(q, k, varlen))
        ctx.save_for_backward(q, k, v, o, lse, seq_start, seq_end)
        ctx.window, ctx.scale = window, scale
        return o

    @staticmethod
    def backward(ctx, d_o):
        q, k, v, o, lse, seq_start, seq_end = ctx.saved_tensors
        window, scale = ctx.window, ctx.scale
        b, n, h, _ = q.shape
        h_kv = k.shape[2]
        d_o = d_o.to(q.dtype)
        if d_o.stride(1) * n >= 2**31:
            d_o = d_o.contiguous()
        _check_offsets(n, d_o)
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        dk = torch.empty(k.shape, dtype=k.dtype, device=q.device)
        dv = torch.empty(v.shape, dtype=v.dtype, device=q.device)
        delta = torch.empty_like(lse)
        varlen = seq_start is not None
        common = _common(q, k, varlen)
        with _device(q):
            _launch(_dq_kernel, "dq", n, b * h,
                    (q, k, v, o, d_o, lse, delta, dq, seq_start if varlen else lse, *_strides(q, k, v, o, d_o, dq),
                     n, h, window, scale * LOG2E, scale), common)
            _launch(_dkdv_kernel, "dkdv", n, b * h_kv,
                    (q, k, v, d_o, lse, delta, dk, dv, seq_end if varlen else lse, *_strides(q, k, v, d_o, dk, dv),
                     n, h, window, scale * LOG2E, scale), common, by_keys=True)
        return dq, dk, dv, None, None, None, None


def _check_offsets(n: int, *tensors: torch.Tensor) -> None:
    """Batch and head offsets are 64-bit in the kernels; row offsets t * stride_t are 32-bit."""
    for x in tensors:
        if x.stride(1) * n >= 2**31:
            raise ValueError(f"T x (stride of T) must stay below 2^31 (32-bit row offsets in the kernels), "
                             f"got T={n} and stride {x.stride(1)}")


def _sequence_bounds(cu_seqlens, b: int, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per packed position: the start and the (exclusive) end of its sequence, int32 [T]."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise ValueError(f"cu_seqlens must be a torch.Tensor of sequence boundaries, got {type(cu_seqlens).__name__}")
    if b != 1:
        raise ValueError(f"with cu_seqlens the sequences are packed along T: B must be 1, got B={b}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with N + 1 >= 2 entries, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype.is_complex or cu_seqlens.dtype == torch.bool:
        raise ValueError(f"cu_seqlens must be an integer tensor, got {cu_seqlens.dtype}")
    cu = cu_seqlens.detach().to("cpu", torch.int64)
    if cu[0].item() != 0 or cu[-1].item() != n:
        raise ValueError(f"cu_seqlens must start at 0 and end at T={n}, got {cu[0].item()} .. {cu[-1].item()}")
    lengths = cu.diff()
    if (lengths < 0).any():
        raise ValueError(f"cu_seqlens must be non-decreasing, got {cu.tolist()}")
    starts = torch.repeat_interleave(cu[:-1], lengths).to(torch.int32)
    ends = torch.repeat_interleave(cu[1:], lengths).to(torch.int32)
    return starts.to(device, non_blocking=True), ends.to(device, non_blocking=True)


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    scale: float | None = None,
    cu_seqlens: torch.LongTensor | None = None,
) -> torch.Tensor:
    """Causal sliding-window softmax attention o_t = sum_{0 <= t-s < window} softmax_s(scale q_t.k_s) v_s,
    with Triton forward and backward kernels (differentiable in q, k, v).

    q [B, T, H, D]; k, v [B, T, H_kv, D] with H % H_kv == 0 (query head h uses kv head h // (H / H_kv)); any
    strides (T x stride of T below 2^31). float32, float16 or bfloat16 (mixed inputs are promoted); CUDA
    tensors, or CPU tensors under TRITON_INTERPRET=1. D <= 256. window >= 1 keys, the query's own included
    (window >= T is plain causal attention). scale: default 1 / sqrt(D). cu_seqlens: int [N + 1] boundaries
    of N sequences packed along T (B must be 1); attention never crosses a boundary.

    Returns o [B, T, H, D] (contiguous) in q's dtype; accumulation in float32.
    """
    tensors = {"q": q, "k": k, "v": v}
    for name, x in tensors.items():
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, T, H, D], got shape {tuple(x.shape)}")
    b, n, h, d = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape [B, T, H_kv, D], got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != b or k.shape[1] != n or k.shape[3] != d:
        raise ValueError(f"k, v must be [B, T, H_kv, D] = [{b}, {n}, H_kv, {d}] to match q {tuple(q.shape)}, "
                         f"got {tuple(k.shape)}")
    h_kv = k.shape[2]
    if h_kv < 1 or h % h_kv != 0:
        raise ValueError(f"the query heads H={h} must be a multiple of the kv heads H_kv={h_kv}")
    if d < 1 or d > MAX_HEAD_DIM:
        raise ValueError(f"head dim D must be in 1..{MAX_HEAD_DIM}, got {d}")
    if isinstance(window, bool):
        raise ValueError(f"window must be a positive int, got {window!r}")
    try:
        window = operator.index(window)
    except TypeError:
        raise ValueError(f"window must be a positive int, got {window!r}") from None
    if window < 1:
        raise ValueError(f"window must be >= 1 (the query itself), got {window}")
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must share a device, got {q.device}, {k.device}, {v.device}")
    if not INTERPRET and q.device.type != "cuda":
        raise ValueError(f"sliding_window_attention runs on CUDA tensors, got {q.device}; for CPU tensors set "
                         "TRITON_INTERPRET=1 before importing kernels.sliding_window_attention")
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    if dtype not in DOT_PRECISION:
        raise ValueError(f"q, k, v must be float32, float16 or bfloat16, got {q.dtype}, {k.dtype}, {v.dtype}")
    seq_start = seq_end = None
    if cu_seqlens is not None:
        seq_start, seq_end = _sequence_bounds(cu_seqlens, b, n, q.device)
    _check_offsets(n, q, k, v)
    out_dtype = q.dtype
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if n == 0 or b == 0 or h == 0:
        return (q * 0).to(out_dtype)  # empty, still connected to the graph
    window = min(window, n)  # the same keys; keeps the kernels' index arithmetic in 32 bits
    o = _SlidingWindowAttention.apply(q, k, v, window, float(scale), seq_start, seq_end)
    return o.to(out_dtype)
