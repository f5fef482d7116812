"""Triton kernels: chunked lightning attention (linear attention with a per-head decay, optionally times a
per-token scalar gate as in simple GLA), forward and backward, [B, T, H, D], variable lengths, initial and
final state.

    S_t = exp(g_t) S_{t-1} + k_t v_t^T,    o_t = scale * S_t^T q_t,    g_t = log_decay_h (+ gate_t,h)

Lightning Attention-2 (Qin et al., arXiv 2401.04658): inside a chunk of C tokens the masked, decayed
quadratic form, across chunks a d_k x d_v state. With G_i the gates' cumulative sum inside the chunk
(inclusive), D[i, j] = exp(G_i - G_j) [i >= j], a_i = exp(G_i), b_j = exp(G_C - G_j):

    O = scale ((Q K^T * D) V + (Q * a) S),        S <- exp(G_C) S + (K * b)^T V.

The chunk loop is sequential, so one program per (sequence, head) would leave most of the GPU idle at long
T and small batch. Sequences are therefore cut into segments of L tokens (a multiple of C) that run in
parallel ("two-level" scan, as in chunked state-space scans, Mamba-2 arXiv 2405.21060 section 6):

    1. `_segment_state_kernel`: each segment's own state contribution from a zero state (and, backward,
       the gradient's contribution, walking the other way);
    2. `_segment_scan_kernel`: a short sequential pass over each sequence's segments gives every segment
       its true initial state (backward: the gradient of the state after it);
    3. the chunk loops (`_fwd_kernel`; backward `_dq_kernel` forward in time, `_dk_kernel` and
       `_dv_kernel` backward in time carrying dS) run on all segments at once.

So the work per token and the parallelism do not depend on T. When every sequence fits in one segment
steps 1-2 are skipped. Gradients of the gates come from dG_i = q_i . dq_i - k_i . dk_i (+ <dS_T, S_T> at
a sequence's last token), summed from the end (as in FLA's simple GLA); the difference cancels, so with
half-precision inputs the loops that feed it split their float32 operands into two half-precision parts
(`_split_dot`) instead of rounding them. Every exp() argument is <= 0 for
gates <= 0. The kernels run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 when that is set
before this module is imported (the tests do).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

__all__ = ["lightning_attention"]

# Read when the kernels are defined: triton.jit builds interpreted kernels only while this is set.
INTERPRET = triton.knobs.runtime.interpret
# tl.dot precision for float32 inputs (three TF32 products: float32 accuracy); half inputs use tensor cores.
DOT_PRECISION = {torch.float32: "tf32x3", torch.float16: "tf32", torch.bfloat16: "tf32"}
MIN_BLOCK = 16  # tl.dot needs every dimension >= 16
FIRST, LAST = 1, 2  # segment flags: first / last segment of its sequence
INIT_NONE, INIT_SEQUENCE, INIT_SEGMENT = 0, 1, 2  # where a chunk loop's starting state comes from


# ---- shared pieces of the chunk loops ---------------------------------------------------------------
@triton.jit
def _segment(seg_ptr, seg):
    """Row of the segment table: (batch, sequence, start, end, flags)."""
    row = seg_ptr + seg * 5
    return (tl.load(row).to(tl.int64), tl.load(row + 1).to(tl.int64), tl.load(row + 2), tl.load(row + 3),
            tl.load(row + 4))


@triton.jit
def _gates(g_ptr, ld, base, rows, cend, sgt, HAS_GATE: tl.constexpr):
    """Inclusive cumulative log gate G [BLOCK_C] over the chunk's valid rows (0 past the end) and its total."""
    valid = rows < cend
    if HAS_GATE:
        gt = tl.load(g_ptr + base + rows * sgt, mask=valid, other=0.0).to(tl.float32) + ld
        gt = tl.where(valid, gt, 0.0)
    else:
        gt = tl.where(valid, ld, 0.0)
    return tl.cumsum(gt, 0), tl.sum(gt, 0)


@triton.jit
def _intra_decay(gc, offs_c):
    """D[i, j] = exp(G_i - G_j) for i >= j, else 0."""
    lower = offs_c[:, None] >= offs_c[None, :]
    return tl.exp(tl.where(lower, gc[:, None] - gc[None, :], float("-inf")))


@triton.jit
def _load(ptr, rows, cend, cols, n_cols, st):
    """A [rows, cols] tile of one head's [T, D] matrix (last dim contiguous), zero outside."""
    mask = (rows[:, None] < cend) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * st + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _split_dot(a, b):
    """a @ b for a float32 `a` and a half-precision `b` on half-precision tensor cores, `a` split into
    a_hi + a_lo, both in b's dtype: two products, `a` kept to about twice the half type's mantissa (the
    split of Ootomo and Yokota, arXiv 2203.03341). Products of two half values are exact in the float32
    accumulator, so only the float32 operand needs splitting."""
    a_hi = a.to(b.dtype)
    a_lo = (a - a_hi.to(tl.float32)).to(b.dtype)
    return tl.dot(a_lo, b, tl.dot(a_hi, b))


@triton.jit
def _dot_split(a, b):
    """a @ b for a half-precision `a` and a float32 `b`, `b` split as in `_split_dot`."""
    b_hi = b.to(a.dtype)
    b_lo = (b - b_hi.to(tl.float32)).to(a.dtype)
    return tl.dot(a, b_lo, tl.dot(a, b_hi))


@triton.jit
def _store(ptr, x, rows, cend, cols, n_cols, st):
    mask = (rows[:, None] < cend) & (cols[None, :] < n_cols)
    tl.store(ptr + rows[:, None] * st + cols[None, :], x.to(ptr.dtype.element_ty), mask=mask)


# ---- steps 1 and 2: segment states -----------------------------------------------------------------
@triton.jit
def _segment_state_kernel(a_ptr, b_ptr, g_ptr, ld_ptr, out_ptr, total_ptr, seg_ptr,
                          sab, sat, sah, sbb, sbt, sbh, sgb, sgt, sgh, scale, H,
                          K: tl.constexpr, V: tl.constexpr, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
                          BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, HAS_GATE: tl.constexpr,
                          REVERSE: tl.constexpr, PRECISION: tl.constexpr, SPLIT_DOTS: tl.constexpr = False):
    """Forward (a, b = k, v): X = sum_t exp(G_end - G_t) k_t v_t^T over the segment, from a zero state.
    REVERSE (a, b = q, dO): X = sum_t exp(G_t - G_start) scale q_t dO_t^T (G inclusive), walking backwards.
    Also the segment's total log decay (written by the (0, 0) tile). SPLIT_DOTS: the weighted operand is
    not rounded to the inputs' half precision (`_split_dot`)."""
    i_k, i_v, i_sh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    seg, h = i_sh // H, i_sh % H
    bat, _, start, end, _ = _segment(seg_ptr, seg)
    h64 = h.to(tl.int64)
    a_base = a_ptr + bat * sab + h64 * sah
    b_base = b_ptr + bat * sbb + h64 * sbh
    g_base = bat * sgb + h64 * sgh
    ld = tl.load(ld_ptr + h).to(tl.float32)
    offs_c = tl.arange(0, BLOCK_C)
    offs_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
    x = tl.zeros([BLOCK_K, BLOCK_V], tl.float32)
    total = 0.0
    n_chunks = tl.cdiv(end - start, CHUNK)
    for i in range(0, n_chunks):
        if REVERSE:
            t0 = start + (n_chunks - 1 - i) * CHUNK
        else:
            t0 = start + i * CHUNK
        rows = t0 + offs_c
        cend = tl.minimum(t0 + CHUNK, end)
        gc, g_last = _gates(g_ptr, ld, g_base, rows, cend, sgt, HAS_GATE)
        a = _load(a_base, rows, cend, offs_k, K, sat)
        b = _load(b_base, rows, cend, offs_v, V, sbt)
        if REVERSE:
            w = tl.exp(gc) * scale
        else:
            w = tl.exp(g_last - gc)
        if SPLIT_DOTS:
            x = x * tl.exp(g_last) + _split_dot(tl.trans(a.to(tl.float32) * w[:, None]), b)
        else:
            x = x * tl.exp(g_last) + tl.dot(tl.trans((a * w[:, None]).to(a.dtype)), b, input_precision=PRECISION)
        total += g_last
    tl.store(out_ptr + (seg * H + h).to(tl.int64) * K * V + offs_k[:, None] * V + offs_v[None, :], x,
             mask=(offs_k[:, None] < K) & (offs_v[None, :] < V))
    if (i_k == 0) & (i_v == 0):
        tl.store(total_ptr + seg * H + h, total)


@triton.jit
def _segment_scan_kernel(local_ptr, total_ptr, start_ptr, out_ptr, seq_ptr, H,
                         K: tl.constexpr, V: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
                         HAS_START: tl.constexpr, REVERSE: tl.constexpr):
    """Per sequence, over its segments s (backwards if REVERSE): out[s] = X; X = exp(total_s) X + local_s,
    X starting from start[sequence] (the initial state; backward: the final state's gradient) or zero."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    seq, h = i_nh // H, i_nh % H
    first = tl.load(seq_ptr + seq * 2)
    count = tl.load(seq_ptr + seq * 2 + 1)
    offs_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
    offs = offs_k[:, None] * V + offs_v[None, :]
    mask = (offs_k[:, None] < K) & (offs_v[None, :] < V)
    if HAS_START:
        x = tl.load(start_ptr + (seq * H + h).to(tl.int64) * K * V + offs, mask=mask, other=0.0)
    else:
        x = tl.zeros([BLOCK_K, BLOCK_V], tl.float32)
    for i in range(0, count):
        if REVERSE:
            s = first + count - 1 - i
        else:
            s = first + i
        row = (s * H + h).to(tl.int64) * K * V
        tl.store(out_ptr + row + offs, x, mask=mask)
        x = x * tl.exp(tl.load(total_ptr + s * H + h)) + tl.load(local_ptr + row + offs, mask=mask, other=0.0)


# ---- step 3: the chunk loops ---------------------------------------------------------------------------
@triton.jit
def _start_state(init_ptr, seg, seq, h, H, offs_k, offs_v, K: tl.constexpr, V: tl.constexpr,
                 BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, INIT: tl.constexpr):
    mask = (offs_k[:, None] < K) & (offs_v[None, :] < V)
    offs = offs_k[:, None] * V + offs_v[None, :]
    if INIT == 1:
        return tl.load(init_ptr + (seq * H + h) * K * V + offs, mask=mask, other=0.0)
    elif INIT == 2:
        return tl.load(init_ptr + (seg * H + h).to(tl.int64) * K * V + offs, mask=mask, other=0.0)
    else:
        return tl.zeros([BLOCK_K, BLOCK_V], tl.float32)


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, g_ptr, ld_ptr, o_ptr, init_ptr, final_ptr, seg_ptr,
                sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh, sgb, sgt, sgh, scale, H,
                K: tl.constexpr, V: tl.constexpr, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
                BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, HAS_GATE: tl.constexpr, INIT: tl.constexpr,
                STORE_FINAL: tl.constexpr, PRECISION: tl.constexpr, SPLIT_DOTS: tl.constexpr = False):
    """grid (V / BLOCK_V, segments * H): O for this tile of d_v; the state S [K, BLOCK_V] in registers.
    SPLIT_DOTS: the state update's decayed keys are not rounded to the inputs' half precision (`_split_dot`)."""
    i_v, i_sh = tl.program_id(0), tl.program_id(1)
    seg, h = i_sh // H, i_sh % H
    bat, seq, start, end, flags = _segment(seg_ptr, seg)
    h64 = h.to(tl.int64)
    q_base = q_ptr + bat * sqb + h64 * sqh
    k_base = k_ptr + bat * skb + h64 * skh
    v_base = v_ptr + bat * svb + h64 * svh
    o_base = o_ptr + bat * sob + h64 * soh
    g_base = bat * sgb + h64 * sgh
    ld = tl.load(ld_ptr + h).to(tl.float32)
    offs_c = tl.arange(0, BLOCK_C)
    offs_k = tl.arange(0, BLOCK_K)
    offs_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
    s = _start_state(init_ptr, seg, seq, h64, H, offs_k, offs_v, K, V, BLOCK_K, BLOCK_V, INIT)
    for t0 in range(start, end, CHUNK):
        rows = t0 + offs_c
        cend = tl.minimum(t0 + CHUNK, end)
        gc, g_last = _gates(g_ptr, ld, g_base, rows, cend, sgt, HAS_GATE)
        q = _load(q_base, rows, cend, offs_k, K, sqt)
        k = _load(k_base, rows, cend, offs_k, K, skt)
        v = _load(v_base, rows, cend, offs_v, V, svt)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * (_intra_decay(gc, offs_c) * scale)
        o = tl.dot(scores.to(v.dtype), v, input_precision=PRECISION)
        o += tl.dot((q * (tl.exp(gc) * scale)[:, None]).to(q.dtype), s.to(q.dtype), input_precision=PRECISION)
        _store(o_base, o, rows, cend, offs_v, V, sot)
        if SPLIT_DOTS:
            k_w = k.to(tl.float32) * tl.exp(g_last - gc)[:, None]
            s = s * tl.exp(g_last) + _split_dot(tl.trans(k_w), v)
        else:
            k_w = (k * tl.exp(g_last - gc)[:, None]).to(k.dtype)
            s = s * tl.exp(g_last) + tl.dot(tl.trans(k_w), v, input_precision=PRECISION)
    if STORE_FINAL:
        if (flags & 2) != 0:
            tl.store(final_ptr + (seq * H + h64) * K * V + offs_k[:, None] * V + offs_v[None, :], s,
                     mask=(offs_k[:, None] < K) & (offs_v[None, :] < V))


@triton.jit
def _dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, g_ptr, ld_ptr, dq_ptr, dg_ptr, init_ptr, seg_ptr,
               sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdob, sdot, sdoh, sgb, sgt, sgh, sdqb, sdqt, sdqh,
               dg_tile, dg_b, scale, H,
               K: tl.constexpr, V: tl.constexpr, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
               BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, HAS_GATE: tl.constexpr, INIT: tl.constexpr,
               STORE_DG: tl.constexpr, PRECISION: tl.constexpr, SPLIT_DOTS: tl.constexpr = False):
    """grid (K / BLOCK_K, segments * H), forward in time with S [BLOCK_K, V]:
    dQ = scale ((dO V^T * D) K + (dO S^T) * a); with STORE_DG also this tile's part of q . dq (float32,
    before dq is rounded) into dg[tile, b, t, h]. SPLIT_DOTS: no float32 operand (scores, state, decayed
    keys) is rounded to the inputs' half precision (`_split_dot`)."""
    i_k, i_sh = tl.program_id(0), tl.program_id(1)
    seg, h = i_sh // H, i_sh % H
    bat, seq, start, end, flags = _segment(seg_ptr, seg)
    h64 = h.to(tl.int64)
    k_base = k_ptr + bat * skb + h64 * skh
    v_base = v_ptr + bat * svb + h64 * svh
    do_base = do_ptr + bat * sdob + h64 * sdoh
    dq_base = dq_ptr + bat * sdqb + h64 * sdqh
    g_base = bat * sgb + h64 * sgh
    ld = tl.load(ld_ptr + h).to(tl.float32)
    offs_c = tl.arange(0, BLOCK_C)
    offs_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_v = tl.arange(0, BLOCK_V)
    s = _start_state(init_ptr, seg, seq, h64, H, offs_k, offs_v, K, V, BLOCK_K, BLOCK_V, INIT)
    for t0 in range(start, end, CHUNK):
        rows = t0 + offs_c
        cend = tl.minimum(t0 + CHUNK, end)
        gc, g_last = _gates(g_ptr, ld, g_base, rows, cend, sgt, HAS_GATE)
        k = _load(k_base, rows, cend, offs_k, K, skt)
        v = _load(v_base, rows, cend, offs_v, V, svt)
        do = _load(do_base, rows, cend, offs_v, V, sdot)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION) * (_intra_decay(gc, offs_c) * scale)
        if SPLIT_DOTS:
            dq = _split_dot(dp, k) + _dot_split(do, tl.trans(s)) * (tl.exp(gc) * scale)[:, None]
        else:
            dq = tl.dot(dp.to(k.dtype), k, input_precision=PRECISION)
            dq += tl.dot(do, tl.trans(s.to(do.dtype)), input_precision=PRECISION) * (tl.exp(gc) * scale)[:, None]
        _store(dq_base, dq, rows, cend, offs_k, K, sdqt)
        if STORE_DG:
            q = _load(q_ptr + bat * sqb + h64 * sqh, rows, cend, offs_k, K, sqt)
            tl.store(dg_ptr + i_k * dg_tile + bat * dg_b + rows * H + h, tl.sum(q.to(tl.float32) * dq, 1),
                     mask=rows < cend)
        if SPLIT_DOTS:
            s = s * tl.exp(g_last) + _split_dot(tl.trans(k.to(tl.float32) * tl.exp(g_last - gc)[:, None]), v)
        else:
            k_w = (k * tl.exp(g_last - gc)[:, None]).to(k.dtype)
            s = s * tl.exp(g_last) + tl.dot(tl.trans(k_w), v, input_precision=PRECISION)


@triton.jit
def _dk_kernel(q_ptr, k_ptr, v_ptr, do_ptr, g_ptr, ld_ptr, dk_ptr, dg_ptr, dinit_ptr, seg_ptr,
               sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdob, sdot, sdoh, sgb, sgt, sgh, sdkb, sdkt, sdkh,
               dg_tile, dg_b, scale, H,
               K: tl.constexpr, V: tl.constexpr, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
               BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, HAS_GATE: tl.constexpr, INIT: tl.constexpr,
               STORE_DG: tl.constexpr, PRECISION: tl.constexpr, SPLIT_DOTS: tl.constexpr = False):
    """grid (K / BLOCK_K, segments * H), backward in time carrying dS [BLOCK_K, V]:
    dK = scale (dO V^T * D)^T Q + (V dS^T) * b,   dS <- exp(G_C) dS + scale (Q * a)^T dO; with STORE_DG also
    this tile's part of k . dk into dg[tile, b, t, h]. SPLIT_DOTS: as in `_dq_kernel`."""
    i_k, i_sh = tl.program_id(0), tl.program_id(1)
    seg, h = i_sh // H, i_sh % H
    bat, seq, start, end, flags = _segment(seg_ptr, seg)
    h64 = h.to(tl.int64)
    q_base = q_ptr + bat * sqb + h64 * sqh
    v_base = v_ptr + bat * svb + h64 * svh
    do_base = do_ptr + bat * sdob + h64 * sdoh
    dk_base = dk_ptr + bat * sdkb + h64 * sdkh
    g_base = bat * sgb + h64 * sgh
    ld = tl.load(ld_ptr + h).to(tl.float32)
    offs_c = tl.arange(0, BLOCK_C)
    offs_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_v = tl.arange(0, BLOCK_V)
    ds = _start_state(dinit_ptr, seg, seq, h64, H, offs_k, offs_v, K, V, BLOCK_K, BLOCK_V, INIT)
    n_chunks = tl.cdiv(end - start, CHUNK)
    for i in range(0, n_chunks):
        t0 = start + (n_chunks - 1 - i) * CHUNK
        rows = t0 + offs_c
        cend = tl.minimum(t0 + CHUNK, end)
        gc, g_last = _gates(g_ptr, ld, g_base, rows, cend, sgt, HAS_GATE)
        q = _load(q_base, rows, cend, offs_k, K, sqt)
        v = _load(v_base, rows, cend, offs_v, V, svt)
        do = _load(do_base, rows, cend, offs_v, V, sdot)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION) * (_intra_decay(gc, offs_c) * scale)
        if SPLIT_DOTS:
            dk = _split_dot(tl.trans(dp), q) + _dot_split(v, tl.trans(ds)) * tl.exp(g_last - gc)[:, None]
        else:
            dk = tl.dot(tl.trans(dp.to(q.dtype)), q, input_precision=PRECISION)
            dk += tl.dot(v, tl.trans(ds.to(v.dtype)), input_precision=PRECISION) * tl.exp(g_last - gc)[:, None]
        _store(dk_base, dk, rows, cend, offs_k, K, sdkt)
        if STORE_DG:
            k = _load(k_ptr + bat * skb + h64 * skh, rows, cend, offs_k, K, skt)
            tl.store(dg_ptr + i_k * dg_tile + bat * dg_b + rows * H + h, tl.sum(k.to(tl.float32) * dk, 1),
                     mask=rows < cend)
        if SPLIT_DOTS:
            ds = ds * tl.exp(g_last) + _split_dot(tl.trans(q.to(tl.float32) * (tl.exp(gc) * scale)[:, None]), do)
        else:
            q_w = (q * (tl.exp(gc) * scale)[:, None]).to(q.dtype)
            ds = ds * tl.exp(g_last) + tl.dot(tl.trans(q_w), do, input_precision=PRECISION)


@triton.jit
def _dv_kernel(q_ptr, k_ptr, do_ptr, g_ptr, ld_ptr, dv_ptr, dinit_ptr, dh0_ptr, seg_ptr,
               sqb, sqt, sqh, skb, skt, skh, sdob, sdot, sdoh, sgb, sgt, sgh, sdvb, sdvt, sdvh, scale, H,
               K: tl.constexpr, V: tl.constexpr, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
               BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, HAS_GATE: tl.constexpr, INIT: tl.constexpr,
               STORE_DH0: tl.constexpr, PRECISION: tl.constexpr):
    """grid (V / BLOCK_V, segments * H), backward in time carrying dS [K, BLOCK_V]:
    dV = scale (Q K^T * D)^T dO + (K * b) dS; after a sequence's first chunk dS is the initial state's
    gradient."""
    i_v, i_sh = tl.program_id(0), tl.program_id(1)
    seg, h = i_sh // H, i_sh % H
    bat, seq, start, end, flags = _segment(seg_ptr, seg)
    h64 = h.to(tl.int64)
    q_base = q_ptr + bat * sqb + h64 * sqh
    k_base = k_ptr + bat * skb + h64 * skh
    do_base = do_ptr + bat * sdob + h64 * sdoh
    dv_base = dv_ptr + bat * sdvb + h64 * sdvh
    g_base = bat * sgb + h64 * sgh
    ld = tl.load(ld_ptr + h).to(tl.float32)
    offs_c = tl.arange(0, BLOCK_C)
    offs_k = tl.arange(0, BLOCK_K)
    offs_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
    ds = _start_state(dinit_ptr, seg, seq, h64, H, offs_k, offs_v, K, V, BLOCK_K, BLOCK_V, INIT)
    n_chunks = tl.cdiv(end - start, CHUNK)
    for i in range(0, n_chunks):
        t0 = start + (n_chunks - 1 - i) * CHUNK
        rows = t0 + offs_c
        cend = tl.minimum(t0 + CHUNK, end)
        gc, g_last = _gates(g_ptr, ld, g_base, rows, cend, sgt, HAS_GATE)
        q = _load(q_base, rows, cend, offs_k, K, sqt)
        k = _load(k_base, rows, cend, offs_k, K, skt)
        do = _load(do_base, rows, cend, offs_v, V, sdot)
        scores_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * tl.trans(_intra_decay(gc, offs_c) * scale)
        dv = tl.dot(scores_t.to(do.dtype), do, input_precision=PRECISION)
        k_w = (k * tl.exp(g_last - gc)[:, None]).to(k.dtype)
        dv += tl.dot(k_w, ds.to(k.dtype), input_precision=PRECISION)
        _store(dv_base, dv, rows, cend, offs_v, V, sdvt)
        q_w = (q * (tl.exp(gc) * scale)[:, None]).to(q.dtype)
        ds = ds * tl.exp(g_last) + tl.dot(tl.trans(q_w), do, input_precision=PRECISION)
    if STORE_DH0:
        if (flags & 1) != 0:
            tl.store(dh0_ptr + (seq * H + h64) * K * V + offs_k[:, None] * V + offs_v[None, :], ds,
                     mask=(offs_k[:, None] < K) & (offs_v[None, :] < V))


# ---- host side -----------------------------------------------------------------------------------------
def _pow2(n: int) -> int:
    return max(MIN_BLOCK, triton.next_power_of_2(n))


# Warps and pipeline stages per kernel on the GPU ("segment", "fwd", "dq", "dk", "dv"), and the d_k / d_v tile
# that the chunk loops split; benchmarks/kernels.py --tune sweeps them on the H200.
# Tuned at D = 128, bf16 on the H200 (2026-11-29; benchmarks/results/kernels-h200-extra.json "tuned").
LAUNCH: dict[str, tuple[int, int]] = {"segment": (4, 2), "fwd": (4, 3), "dq": (4, 2), "dk": (4, 2), "dv": (4, 3)}
TILE = 64


def _launch(block_k: int, block_v: int, chunk: int, kind: str) -> dict:
    """num_warps / num_stages for one kernel on the GPU; nothing when interpreted."""
    if INTERPRET:
        return {}
    if kind in LAUNCH:
        warps, stages = LAUNCH[kind]
        return dict(num_warps=warps, num_stages=stages)
    big = block_k * block_v >= 128 * 64 or chunk > 64
    return dict(num_warps=8 if big else 4, num_stages=2)


# Pipeline stages that fit in shared memory where the tuned ones did not (float32 operands, wide heads), per
# kernel and compile-time settings; filled by `_run` as it meets them.
_STAGES_THAT_FIT: dict[tuple, int] = {}


def _run(kernel, grid, *args, **meta) -> None:
    """Launch `kernel[grid](*args, **meta)`; when its pipeline needs more shared memory than the GPU has,
    retry with fewer stages (down to 1) and remember the count that fit for these settings."""
    key = (kernel.fn.__name__, tuple(sorted((k, v) for k, v in meta.items() if k != "num_stages")),
           tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
    if key in _STAGES_THAT_FIT:
        meta["num_stages"] = _STAGES_THAT_FIT[key]
    while True:
        try:
            kernel[grid](*args, **meta)
            return
        except OutOfResources:
            stages = meta.get("num_stages", 3)
            if INTERPRET or stages <= 1:
                raise
            meta["num_stages"] = _STAGES_THAT_FIT[key] = stages - 1


def _device(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


@functools.lru_cache(maxsize=64)
def _tables(lengths: tuple[tuple[int, int, int], ...], segment_len: int, device: str):
    """Segment table [S, 5] (batch, sequence, start, end, flags) and sequence table [N, 2] (first segment,
    count) for sequences given as (batch, start, end)."""
    segments, sequences = [], []
    for n, (bat, start, end) in enumerate(lengths):
        sequences.append((len(segments), 0))
        for s in range(start, end, segment_len):
            flags = (FIRST if s == start else 0) | (LAST if s + segment_len >= end else 0)
            segments.append((bat, n, s, min(s + segment_len, end), flags))
        sequences[-1] = (sequences[-1][0], len(segments) - sequences[-1][0])
    seg = torch.tensor(segments or [(0, 0, 0, 0, 0)], dtype=torch.int32, device=device)
    seq = torch.tensor(sequences, dtype=torch.int32, device=device)
    return seg, seq, len(segments), max(count for _, count in sequences) if sequences else 0


def _segment_length(total_tokens: int, heads: int, chunk: int, device: torch.device) -> int:
    """Enough segments to fill the GPU about four times over with (segment, head, tile) programs."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
    want_segments = max(1, (4 * sms) // max(1, 2 * heads))
    length = max(chunk, triton.cdiv(total_tokens, want_segments))
    return triton.cdiv(length, chunk) * chunk


class _Plan:
    """Everything the kernels share about one call: sizes, blocks, segment tables, strides of the gates."""

    def __init__(self, q, v, gate, cu_seqlens, chunk, segment_len):
        b, t, h, dk = q.shape
        self.b, self.t, self.h, self.dk, self.dv = b, t, h, dk, v.shape[-1]
        self.chunk, self.block_c = chunk, _pow2(chunk)
        self.block_k, self.block_v = _pow2(dk), _pow2(self.dv)
        if cu_seqlens is None:
            spans = tuple((i, 0, t) for i in range(b))
        else:
            bounds = cu_seqlens.tolist()
            spans = tuple((0, bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1))
        self.n_seq = len(spans)
        total = sum(end - start for _, start, end in spans)
        if segment_len is None:
            segment_len = _segment_length(total, h, chunk, q.device)
        self.segment_len = triton.cdiv(segment_len, chunk) * chunk
        self.seg, self.seq, self.n_seg, most = _tables(spans, self.segment_len, str(q.device))
        self.scanned = most > 1  # some sequence spans several segments: steps 1-2 run
        self.gate_strides = gate.stride() if gate is not None else (0, 0, 0)
        # tiles of d_k / d_v that the loops split (the other dimension is held whole)
        self.tile_k = self.block_k if INTERPRET else min(self.block_k, TILE)
        self.tile_v = self.block_v if INTERPRET else min(self.block_v, TILE)
        self.precision = DOT_PRECISION[q.dtype]

    def common(self, block_k, block_v, kind, split_dots=False):
        """Compile-time settings of one kernel; split_dots: float32 operands split into two half-precision
        parts, not rounded (the gate gradients' q . dq - k . dk cancels: rounded operands lose it)."""
        return dict(K=self.dk, V=self.dv, CHUNK=self.chunk, BLOCK_C=self.block_c, BLOCK_K=block_k,
                    BLOCK_V=block_v, PRECISION=self.precision, **({"SPLIT_DOTS": True} if split_dots else {}),
                    **_launch(block_k, block_v, self.chunk, kind))

    def segment_states(self, a, b, gate, ld, scale, initial, reverse, split_dots=False):
        """Steps 1-2: per segment, the state before it (forward) or dS after it (reverse), [S, H, K, V]."""
        h, n_seg = self.h, self.n_seg
        local = torch.empty((n_seg, h, self.dk, self.dv), dtype=torch.float32, device=a.device)
        total = torch.empty((n_seg, h), dtype=torch.float32, device=a.device)
        tk, tv = self.tile_k, self.tile_v
        _run(_segment_state_kernel, (triton.cdiv(self.dk, tk), triton.cdiv(self.dv, tv), n_seg * h),
             a, b, gate if gate is not None else ld, ld, local, total, self.seg,
             *_bth(a), *_bth(b), *self.gate_strides, scale, h, HAS_GATE=gate is not None, REVERSE=reverse,
             **self.common(tk, tv, "segment", split_dots))
        out = torch.empty_like(local)
        _segment_scan_kernel[(triton.cdiv(self.dk, tk), triton.cdiv(self.dv, tv), self.n_seq * h)](
            local, total, initial if initial is not None else local, out, self.seq, h,
            K=self.dk, V=self.dv, BLOCK_K=tk, BLOCK_V=tv, HAS_START=initial is not None, REVERSE=reverse)
        return out


def _bth(x: torch.Tensor) -> tuple[int, int, int]:
    """Strides of batch, time and head of a [B, T, H, D] tensor whose last dimension is contiguous."""
    return x.stride(0), x.stride(1), x.stride(2)


class _LightningAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, gate, log_decay, initial_state, cu_seqlens, scale, chunk, segment_len):
        plan = _Plan(q, v, gate, cu_seqlens, chunk, segment_len)
        h = plan.h
        o = torch.empty((plan.b, plan.t, h, plan.dv), dtype=q.dtype, device=q.device)
        final = torch.zeros((plan.n_seq, h, plan.dk, plan.dv), dtype=torch.float32, device=q.device)
        if initial_state is not None:
            final.copy_(initial_state)  # sequences of length 0 keep their state
        g = gate if gate is not None else log_decay
        # gate gradients from half-precision inputs need the states to about float32 accuracy (see backward)
        split_dots = (ctx.needs_input_grad[3] or ctx.needs_input_grad[4]) and q.dtype != torch.float32
        with _device(q):
            if plan.scanned:
                init = plan.segment_states(k, v, gate, log_decay, scale, initial_state, False, split_dots)
                mode = INIT_SEGMENT
            else:
                init, mode = initial_state, (INIT_SEQUENCE if initial_state is not None else INIT_NONE)
            _run(_fwd_kernel, (triton.cdiv(plan.dv, plan.tile_v), plan.n_seg * h),
                 q, k, v, g, log_decay, o, init if init is not None else final, final, plan.seg,
                 *_bth(q), *_bth(k), *_bth(v), *_bth(o), *plan.gate_strides, scale, h,
                 HAS_GATE=gate is not None, INIT=mode, STORE_FINAL=True,
                 **plan.common(plan.block_k, plan.tile_v, "fwd", split_dots))
        ctx.save_for_backward(q, k, v, gate, log_decay, initial_state, init if plan.scanned else None, final)
        ctx.plan, ctx.scale, ctx.cu_seqlens = plan, scale, cu_seqlens
        return o, final

    @staticmethod
    def backward(ctx, d_o, d_final):
        q, k, v, gate, log_decay, initial_state, seg_init, final = ctx.saved_tensors
        plan, scale, h = ctx.plan, ctx.scale, ctx.plan.h
        if d_o is None:
            d_o = torch.zeros((plan.b, plan.t, h, plan.dv), dtype=q.dtype, device=q.device)
        d_o = d_o.to(q.dtype)
        if d_o.stride(-1) != 1:
            d_o = d_o.contiguous()
        if d_final is not None:
            d_final = d_final.to(torch.float32).contiguous()
        g = gate if gate is not None else log_decay
        dq, dk, dv = (torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))
        dh0 = torch.zeros((plan.n_seq, h, plan.dk, plan.dv), dtype=torch.float32, device=q.device)
        if d_final is not None:
            dh0.copy_(d_final)  # sequences of length 0 pass the gradient through
        gstrides = plan.gate_strides
        flags = dict(HAS_GATE=gate is not None)
        # q . dq and k . dk per d_k tile, in float32 before the gradients are rounded (gate gradients); with
        # half-precision inputs the dq / dk loops (and the segment states they start from, and the forward's
        # states) then split their float32 operands instead of rounding them: q . dq - k . dk cancels, and
        # rounded operands left d log_decay 0.4 off on the H200
        store_dg = ctx.needs_input_grad[3] or ctx.needs_input_grad[4]
        split_dots = store_dg and q.dtype != torch.float32
        with _device(q):
            if plan.scanned:
                init, mode = seg_init, INIT_SEGMENT
                dinit = plan.segment_states(q, d_o, gate, log_decay, scale, d_final, True, split_dots)
                dmode = INIT_SEGMENT
            else:
                init, mode = initial_state, (INIT_SEQUENCE if initial_state is not None else INIT_NONE)
                dinit, dmode = d_final, (INIT_SEQUENCE if d_final is not None else INIT_NONE)
            grid_k = (triton.cdiv(plan.dk, plan.tile_k), plan.n_seg * h)
            grid_v = (triton.cdiv(plan.dv, plan.tile_v), plan.n_seg * h)
            dg_q, dg_k = (torch.empty((grid_k[0], plan.b, plan.t, h) if store_dg else (1,), dtype=torch.float32,
                                      device=q.device) for _ in range(2))
            dg_args = (plan.b * plan.t * h, plan.t * h)
            _run(_dq_kernel, grid_k,
                 q, k, v, d_o, g, log_decay, dq, dg_q, init if init is not None else dq, plan.seg,
                 *_bth(q), *_bth(k), *_bth(v), *_bth(d_o), *gstrides, *_bth(dq), *dg_args, scale, h, INIT=mode,
                 STORE_DG=store_dg, **plan.common(plan.tile_k, plan.block_v, "dq", split_dots), **flags)
            _run(_dk_kernel, grid_k,
                 q, k, v, d_o, g, log_decay, dk, dg_k, dinit if dinit is not None else dk, plan.seg,
                 *_bth(q), *_bth(k), *_bth(v), *_bth(d_o), *gstrides, *_bth(dk), *dg_args, scale, h, INIT=dmode,
                 STORE_DG=store_dg, **plan.common(plan.tile_k, plan.block_v, "dk", split_dots), **flags)
            _run(_dv_kernel, grid_v,
                 q, k, d_o, g, log_decay, dv, dinit if dinit is not None else dv, dh0, plan.seg,
                 *_bth(q), *_bth(k), *_bth(d_o), *gstrides, *_bth(dv), scale, h, INIT=dmode, STORE_DH0=True,
                 **plan.common(plan.block_k, plan.tile_v, "dv"), **flags)
        d_gate = d_log_decay = None
        needs_gate, needs_decay = ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        if needs_gate or needs_decay:
            d_cum = _cumulative_gate_grad(dg_q.sum(0) - dg_k.sum(0), final, d_final, ctx.cu_seqlens)
            d_g = _reverse_cumsum(d_cum, ctx.cu_seqlens)  # [B, T, H] float32
            d_gate = d_g if needs_gate else None
            d_log_decay = d_g.sum((0, 1)) if needs_decay else None
        return (dq, dk, dv, d_gate, d_log_decay, dh0 if initial_state is not None else None,
                None, None, None, None)


def _cumulative_gate_grad(d_cum, final, d_final, cu_seqlens):
    """dL/dG_t for the cumulative log gate G_t: q_t . dq_t - k_t . dk_t (given, [B, T, H]), plus
    <dS_T, S_T> at each sequence's last token."""
    if d_final is not None:
        term = (d_final * final).sum((-1, -2))  # [N, H]
        if cu_seqlens is None:
            if d_cum.shape[1] > 0:
                d_cum[:, -1] += term
        else:
            ends = cu_seqlens[1:].long()
            nonempty = ends > cu_seqlens[:-1].long()
            d_cum[0].index_add_(0, ends[nonempty] - 1, term[nonempty])
    return d_cum


def _reverse_cumsum(x: torch.Tensor, cu_seqlens) -> torch.Tensor:
    """sum_{s >= t} x_s within each sequence, along dim 1 of [B, T, H] (scanned along a contiguous last
    dimension: torch's scan over an outer dimension runs one thread per column)."""
    rows = x.transpose(1, 2).contiguous()  # [B, H, T]
    out = rows.flip(-1).cumsum(-1).flip(-1)
    if cu_seqlens is not None:
        padded = torch.cat([out, out.new_zeros(*out.shape[:-1], 1)], -1)  # [1, H, T + 1]
        ends = cu_seqlens[1:].long()
        seq_of_token = torch.searchsorted(ends, torch.arange(x.shape[1], device=x.device), right=True)
        out = out - padded[..., ends[seq_of_token]]
    return out.transpose(1, 2)


def lightning_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    *,
    gate: torch.Tensor | None = None,
    scale: float = 1.0,
    cu_seqlens: torch.Tensor | None = None,
    segment_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Lightning attention, S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t, with Triton kernels.

    q, k [B, T, H, Dk]; v [B, T, H, Dv] (T before H, unlike `kernels.reference`, which takes
    [B, H, T, D]); any strides. float32, float16 or bfloat16 (mixed inputs are promoted); CUDA tensors,
    or CPU tensors under TRITON_INTERPRET=1. Accumulation in float32.
    log_decay [H]: log lambda_h <= 0 per head (None: 0, plain linear attention). gate [B, T, H] or None:
    a per-token log gate <= 0 added to it (simple GLA, Yang et al. arXiv 2312.06635 with a scalar gate per
    head). initial_state [N, H, Dk, Dv]: S_0 per sequence. cu_seqlens [N + 1] (int, with B = 1): packed
    variable-length sequences (as in flash-attn / FLA); each has its own state. chunk_size: tokens per
    chunk (16-128 sensible). segment_len: tokens per parallel segment (default: enough to fill the GPU).

    Returns (o [B, T, H, Dv] in the inputs' dtype, final state [N, H, Dk, Dv] float32 or None unless
    output_final_state). Differentiable in q, k, v, gate, log_decay and initial_state.
    """
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be [B, T, H, Dk] and v [B, T, H, Dv] with the same B, T, H, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    device = q.device
    if not INTERPRET and device.type != "cuda":
        raise ValueError(f"lightning_attention runs on CUDA tensors, got {device}; for CPU tensors set "
                         "TRITON_INTERPRET=1 before importing kernels.lightning_attention, or use "
                         "kernels.reference.chunked_decay_linear_attention")
    for name, x in (("k", k), ("v", v), ("log_decay", log_decay), ("gate", gate), ("initial_state", initial_state)):
        if x is not None and x.device != device:
            raise ValueError(f"{name} must be on {device} like q, got {x.device}")
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    if dtype not in DOT_PRECISION:
        raise ValueError(f"q, k, v must be float32, float16 or bfloat16, got {q.dtype}, {k.dtype}, {v.dtype} "
                         "(float64: use kernels.reference.chunked_decay_linear_attention)")
    if log_decay is None:
        log_decay = torch.zeros(h, device=device)
    if log_decay.shape != (h,):
        raise ValueError(f"log_decay must have shape [H] = [{h}], got {tuple(log_decay.shape)}")
    if gate is not None and gate.shape != (b, t, h):
        raise ValueError(f"gate must be [B, T, H] = {[b, t, h]}, got {list(gate.shape)}")
    if not isinstance(chunk_size, int) or chunk_size < 1 or chunk_size > 256:
        raise ValueError(f"chunk_size must be an int in [1, 256], got {chunk_size!r}")
    if segment_len is not None and (not isinstance(segment_len, int) or segment_len < 1):
        raise ValueError(f"segment_len must be a positive int, got {segment_len!r}")
    if cu_seqlens is not None:
        if b != 1:
            raise ValueError(f"with cu_seqlens, pack the sequences along T with B = 1, got B = {b}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype.is_floating_point:
            raise ValueError("cu_seqlens must be a 1-D integer tensor [N + 1] of sequence boundaries")
        bounds = cu_seqlens.tolist()
        if bounds[0] != 0 or bounds[-1] != t or any(x > y for x, y in zip(bounds, bounds[1:])):
            raise ValueError(f"cu_seqlens must rise from 0 to T = {t}, got {bounds}")
        cu_seqlens = cu_seqlens.to(device=device, dtype=torch.int64)
    n_seq = b if cu_seqlens is None else cu_seqlens.numel() - 1
    if initial_state is not None:
        if initial_state.shape != (n_seq, h, dk, dv):
            raise ValueError(f"initial_state must be [N, H, Dk, Dv] = {[n_seq, h, dk, dv]} (N sequences), "
                             f"got {list(initial_state.shape)}")
        initial_state = initial_state.to(torch.float32).contiguous()
    q, k, v = (x.to(dtype) if x.stride(-1) == 1 else x.to(dtype).contiguous() for x in (q, k, v))
    if max(b * q.stride(0), b * k.stride(0), b * v.stride(0), b * t * h * max(dk, dv)) >= 2**31:
        raise ValueError("tensors above 2^31 elements are not supported (32-bit offsets within a batch row)")
    log_decay = log_decay.to(torch.float32)
    if gate is not None:
        gate = gate.to(torch.float32)
    o, final = _LightningAttention.apply(q, k, v, gate, log_decay, initial_state, cu_seqlens, float(scale),
                                         chunk_size, segment_len)
    return o, (final if output_final_state else None)
