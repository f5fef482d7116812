"""Triton kernels: the chunked gated delta rule, forward and backward, with variable-length packing.

    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,    o_t = scale S_t^T q_t

(S is d_k x d_v, decay applied first; DeltaNet, Schlag et al., arXiv 2102.11174; Gated DeltaNet, Yang et al.,
arXiv 2412.06464). Same numbers as `kernels.reference.chunked_delta_rule`, in float32 accumulation.
Chunked with the WY representation / UT transform (Yang et al., arXiv 2406.06484): inside a chunk of C
tokens, with g = cumsum(log alpha) from the chunk start, gamma = exp(g), Gamma[i, j] = exp(g_i - g_j), j <= i:

    A = (I + strict_lower(diag(beta) (Gamma o K K^T)))^-1,   W = A diag(beta gamma) K,   U = A diag(beta) V
    V_new = U - W S,   O = scale [diag(gamma) Q S + (lower(Q K^T) o Gamma) V_new],
    S <- gamma_C S + (diag(gamma_C / gamma) K)^T V_new.

Forward, three kernels: `_wy_fwd` (per chunk: g; A, its 16 x 16 diagonal blocks by forward substitution,
merged with dots; W, U), `_state_fwd` (per sequence, head and d_v tile, the only sequential pass: stores S
before every chunk, and V_new), `_output_fwd` (per chunk). Backward, five, derived by hand: `_dv_local`
(scale (lower(Q K^T) o Gamma)^T dO), `_state_bwd` (the reverse pass carrying dS, the gradient of the state
after a chunk: dV_new = dV_local + diag(gamma_C / gamma) K dS, dS <- gamma_C dS + scale (diag(gamma) Q)^T dO
- W^T dV_new), `_chunk_bwd` (per chunk and d_k tile: dq, dW = -dV_new S^T, the state's part of dk,
dP = scale lower(dO V_new^T) o Gamma, the gate's gradient through O and S), `_wy_bwd_da` (dv = diag(beta)
A^T dV_new, dA) and `_wy_bwd_dk` (dL = -A^T dA A^T; dk, dbeta, dlog_alpha = reverse cumsum of dg in the chunk).

Chunks never cross a sequence boundary: a table lists every chunk's (batch row, first token, end token), so
`cu_seqlens` packing and [B, T] batches share one code path; chunk intermediates live in a chunk-aligned,
zero-padded layout. On Hopper, Triton 3.4-3.7 miscompiles `tl.trans` of a `tl.dot` result used as a dot
operand (flash-linear-attention issue 640): every transposed operand here is loaded transposed from memory
(or its transposed product computed directly), never `tl.trans` of a computed tile. The kernels run on CUDA
tensors, or on CPU tensors under TRITON_INTERPRET=1 when that is set before this module is imported.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

__all__ = ["gated_delta_rule", "half_runs_in_float32", "CONFIG"]

# Read when the kernels are defined: triton.jit builds interpreted kernels only while this is set.
INTERPRET = triton.knobs.runtime.interpret
# Dot operands are cast to the inputs' dtype: bf16/fp16 tiles use the tensor cores directly (fp32
# accumulation); float32 inputs get three TF32 products (float32 accuracy).
DOT_PRECISION = {torch.float32: "tf32x3", torch.float16: "tf32", torch.bfloat16: "tf32"}
MIN_BLOCK = 16  # tl.dot needs every dimension >= 16
STATE_MIN_BV = 32  # smallest d_v tile the sequential kernels go down to when there are few sequences
FP32_CUDA_MAX_CHUNK = 64  # float32 chunk tiles of 128 exceed the GPU's shared memory (see gated_delta_rule)
# Below this head dim, half-precision inputs on CUDA run the float32 kernels: on the H200 (Triton 3.6) the bf16
# kernels at d_k = d_v = 16 gave outputs ~100% off and at 32 dk 21-58% off, while float32 matched the reference at
# every size (benchmarks/results/gated-delta-small-dims-h200.json). Small heads are cheap in float32 anyway.
HALF_MIN_CUDA_HEAD_DIM = 64
INVERSE_BLOCK = 16  # diagonal blocks of A inverted by forward substitution, then merged with dots

# Launch settings on the GPU (fixed, not autotuned: a miscompiled config would otherwise be picked silently;
# the CUDA tests check the ones used, and other warps kernel by kernel). BK, BV: the d_k, d_v tiles a kernel
# loops over or splits its grid by, capped at the padded head dims; the interpreter ignores warps and stages.
# Register use (sm_90, bf16, D = 128, chunk 64, from ptxas): no spills with these settings.
CONFIG = {
    "wy_fwd": dict(BK=64, BV=64, num_warps=4, num_stages=1),
    "state_fwd": dict(BV=64, num_warps=4, num_stages=2),
    "output_fwd": dict(BV=128, num_warps=4, num_stages=2),
    "dv_local": dict(BV=128, num_warps=4, num_stages=2),
    "state_bwd": dict(BV=64, num_warps=4, num_stages=2),
    # One stage: software-pipelining its d_v loop (num_stages=2), Triton 3.6 on sm_90 computed the loop's
    # last dot on the shared S tile wrong (dW, 11-16% off in d_k columns 0-31 of every 64-wide tile, in bf16;
    # benchmarks/results/gated-delta-variants-h200.json). BV=128 (no loop) was right too.
    "chunk_bwd": dict(BK=64, BV=64, num_warps=4, num_stages=1),
    "wy_bwd_da": dict(BK=64, BV=64, num_warps=4, num_stages=1),
    "wy_bwd_dk": dict(BK=64, num_warps=4, num_stages=1),
}


# ----------------------------------------------------------------------------------------------------------
# tile helpers


@triton.jit
def _chunk_info(tab_ptr, cid):
    """(batch row, first token, end token) of chunk `cid`."""
    return tl.load(tab_ptr + cid * 3), tl.load(tab_ptr + cid * 3 + 1), tl.load(tab_ptr + cid * 3 + 2)


@triton.jit
def _tok_tile(ptr, batch, head, rows, cols, end, n_cols, s_b, s_t, s_h, s_d):
    """x[batch, rows, head, cols] as a [rows, cols] tile, zero past `end` and `n_cols`."""
    base = ptr + batch.to(tl.int64) * s_b + head.to(tl.int64) * s_h
    mask = (rows[:, None] < end) & (cols[None, :] < n_cols)
    return tl.load(base + rows[:, None].to(tl.int64) * s_t + cols[None, :] * s_d, mask=mask, other=0.0)


@triton.jit
def _tok_tile_t(ptr, batch, head, rows, cols, end, n_cols, s_b, s_t, s_h, s_d):
    """The same tile loaded transposed: [cols, rows]."""
    base = ptr + batch.to(tl.int64) * s_b + head.to(tl.int64) * s_h
    mask = (cols[:, None] < n_cols) & (rows[None, :] < end)
    return tl.load(base + cols[:, None] * s_d + rows[None, :].to(tl.int64) * s_t, mask=mask, other=0.0)


@triton.jit
def _tok_store(ptr, x, batch, head, rows, cols, end, n_cols, s_b, s_t, s_h, s_d):
    base = ptr + batch.to(tl.int64) * s_b + head.to(tl.int64) * s_h
    mask = (rows[:, None] < end) & (cols[None, :] < n_cols)
    tl.store(base + rows[:, None].to(tl.int64) * s_t + cols[None, :] * s_d, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tok_vec(ptr, batch, head, rows, end, s_b, s_t, s_h):
    """x[batch, rows, head] of a [B, T, H] tensor as float32, zero past `end`."""
    base = ptr + batch.to(tl.int64) * s_b + head.to(tl.int64) * s_h
    return tl.load(base + rows.to(tl.int64) * s_t, mask=rows < end, other=0.0).to(tl.float32)


@triton.jit
def _tok_vec_store(ptr, x, batch, head, rows, end, s_b, s_t, s_h):
    base = ptr + batch.to(tl.int64) * s_b + head.to(tl.int64) * s_h
    tl.store(base + rows.to(tl.int64) * s_t, x.to(ptr.dtype.element_ty), mask=rows < end)


@triton.jit
def _mat(ptr, rows, cols, n_cols):
    """A dense [rows, cols] tile of a row-major matrix with `n_cols` columns (chunk layout, zero padded)."""
    return tl.load(ptr + rows[:, None] * n_cols + cols[None, :])


@triton.jit
def _mat_t(ptr, rows, cols, n_cols):
    """The same tile loaded transposed: [cols, rows]."""
    return tl.load(ptr + cols[:, None] + rows[None, :] * n_cols)


@triton.jit
def _mat_store(ptr, x, rows, cols, n_cols):
    tl.store(ptr + rows[:, None] * n_cols + cols[None, :], x.to(ptr.dtype.element_ty))


@triton.jit
def _decay_matrix(g, offs_c, STRICT: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Gamma[i, j] = exp(g_i - g_j) on j <= i (j < i if STRICT), else 0; [j, i] if TRANSPOSED.
    g is non-increasing inside a chunk, so every kept exponent is <= 0 (clamped against rounding)."""
    if TRANSPOSED:
        diff = g[None, :] - g[:, None]
        if STRICT:
            keep = offs_c[None, :] > offs_c[:, None]
        else:
            keep = offs_c[None, :] >= offs_c[:, None]
    else:
        diff = g[:, None] - g[None, :]
        if STRICT:
            keep = offs_c[:, None] > offs_c[None, :]
        else:
            keep = offs_c[:, None] >= offs_c[None, :]
    return tl.where(keep, tl.exp(tl.minimum(diff, 0.0)), 0.0)


# ----------------------------------------------------------------------------------------------------------
# forward


@triton.jit
def _unit_lower_inverse(neg_l, offs_c, BC: tl.constexpr, SUB: tl.constexpr, SQUARINGS: tl.constexpr):
    """(I + L)^-1 for L strictly lower [BC, BC] (given as -L), float32. The SUB x SUB diagonal blocks are
    inverted together by forward substitution (SUB - 1 steps: row r of every block at once, since their
    columns never overlap), D^-1; then with X = D^-1 N (N: L below the diagonal blocks, X^(BC/SUB) = 0),
    (I + L)^-1 = (I + X)^-1 D^-1 = (I - X)(I + X^2)(I + X^4)... D^-1."""
    same_block = (offs_c[:, None] // SUB) == (offs_c[None, :] // SUB)
    a = tl.where(same_block, neg_l, 0.0)
    for r in range(1, SUB):
        rows = (offs_c % SUB) == r
        a_r = tl.sum(tl.where(rows[:, None], a, 0.0), 0)  # row r of every block, side by side
        a_r = a_r + tl.sum(a_r[:, None] * a, 0)  # rows above r already hold (D^-1 - I)
        a = tl.where(rows[:, None] & same_block, a_r[None, :], a)
    eye = tl.where(offs_c[:, None] == offs_c[None, :], 1.0, 0.0)
    d_inv = a + eye
    if BC > SUB:
        x = -tl.dot(d_inv, tl.where(same_block, 0.0, neg_l), input_precision="tf32x3")
        inv = eye - x
        for _ in tl.static_range(SQUARINGS):  # (I - X)(I + X^2)...(I + X^(NB/2)), NB = BC / SUB
            x = tl.dot(x, x, input_precision="tf32x3")
            inv = tl.dot(inv, eye + x, input_precision="tf32x3")
        d_inv = tl.dot(inv, d_inv, input_precision="tf32x3")
    return d_inv


@triton.jit
def _wy_fwd_kernel(k_ptr, v_ptr, beta_ptr, la_ptr, tab_ptr, g_ptr, a_ptr, w_ptr, u_ptr,
                   sk_b, sk_t, sk_h, sk_d, sv_b, sv_t, sv_h, sv_d, sb_b, sb_t, sb_h, sl_b, sl_t, sl_h,
                   n_heads,
                   DK: tl.constexpr, DV: tl.constexpr, BC: tl.constexpr, BKF: tl.constexpr, BVF: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, SUB: tl.constexpr, SQUARINGS: tl.constexpr,
                   HAS_GATE: tl.constexpr, PRECISION: tl.constexpr):
    """Per chunk: g (cumulative log decay), A = (I + L)^-1 (computed in float32, stored in the inputs' dtype),
    W = A diag(beta gamma) K, U = A diag(beta) V."""
    cid = tl.program_id(0)
    head = tl.program_id(1)
    dt = k_ptr.dtype.element_ty
    batch, start, end = _chunk_info(tab_ptr, cid)
    ch = cid.to(tl.int64) * n_heads + head
    offs_c = tl.arange(0, BC)
    rows = start + offs_c
    beta = _tok_vec(beta_ptr, batch, head, rows, end, sb_b, sb_t, sb_h)
    if HAS_GATE:
        g = tl.cumsum(_tok_vec(la_ptr, batch, head, rows, end, sl_b, sl_t, sl_h), 0)
    else:
        g = tl.zeros([BC], tl.float32)
    tl.store(g_ptr + ch * BC + offs_c, g)
    kk = tl.zeros([BC, BC], tl.float32)
    for k0 in range(0, BKF, BK):
        offs_k = k0 + tl.arange(0, BK)
        k = _tok_tile(k_ptr, batch, head, rows, offs_k, end, DK, sk_b, sk_t, sk_h, sk_d)
        k_t = _tok_tile_t(k_ptr, batch, head, rows, offs_k, end, DK, sk_b, sk_t, sk_h, sk_d)
        kk = tl.dot(k, k_t, kk, input_precision=PRECISION)
    neg_l = -kk * _decay_matrix(g, offs_c, True, False) * beta[:, None]
    a = _unit_lower_inverse(neg_l, offs_c, BC, SUB, SQUARINGS)
    _mat_store(a_ptr + ch * BC * BC, a, offs_c, offs_c, BC)
    a_bg = (a * (beta * tl.exp(g))[None, :]).to(dt)  # A diag(beta gamma): K and V go to the dots as loaded
    a_b = (a * beta[None, :]).to(dt)
    for k0 in range(0, BKF, BK):
        offs_k = k0 + tl.arange(0, BK)
        k = _tok_tile(k_ptr, batch, head, rows, offs_k, end, DK, sk_b, sk_t, sk_h, sk_d)
        _mat_store(w_ptr + ch * BC * BKF, tl.dot(a_bg, k, input_precision=PRECISION), offs_c, offs_k, BKF)
    for v0 in range(0, BVF, BV):
        offs_v = v0 + tl.arange(0, BV)
        v = _tok_tile(v_ptr, batch, head, rows, offs_v, end, DV, sv_b, sv_t, sv_h, sv_d)
        _mat_store(u_ptr + ch * BC * BVF, tl.dot(a_b, v, input_precision=PRECISION), offs_c, offs_v, BVF)


@triton.jit
def _state_fwd_kernel(k_ptr, w_ptr, u_ptr, g_ptr, h0_ptr, tab_ptr, seq_ptr, states_ptr, vn_ptr, ht_ptr,
                      sk_b, sk_t, sk_h, sk_d, n_heads,
                      DK: tl.constexpr, DV: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BVF: tl.constexpr,
                      BV: tl.constexpr, HAS_H0: tl.constexpr, PRECISION: tl.constexpr):
    """Per (sequence, head, d_v tile), over the sequence's chunks in order: store S (before the chunk),
    V_new = U - W S, S <- gamma_C S + (diag(gamma_C / gamma) K)^T V_new. Stores the final state."""
    nh = tl.program_id(0) // (BVF // BV)  # the d_v tiles of one (sequence, head) run side by side
    pid_v = tl.program_id(0) % (BVF // BV)
    seq = nh // n_heads
    head = nh % n_heads
    dt = w_ptr.dtype.element_ty
    first = tl.load(seq_ptr + seq * 2)
    n_chunks = tl.load(seq_ptr + seq * 2 + 1)
    offs_c = tl.arange(0, BC)
    offs_k = tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    io_offs = nh.to(tl.int64) * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
    io_mask = (offs_k[:, None] < DK) & (offs_v[None, :] < DV)
    if HAS_H0:
        state = tl.load(h0_ptr + io_offs, mask=io_mask, other=0.0)
    else:
        state = tl.zeros([BK, BV], tl.float32)
    for i in range(n_chunks):
        cid = first + i
        ch = cid.to(tl.int64) * n_heads + head
        batch, start, end = _chunk_info(tab_ptr, cid)
        w = _mat(w_ptr + ch * BC * BK, offs_c, offs_k, BK)
        u = _mat(u_ptr + ch * BC * BVF, offs_c, offs_v, BVF)
        k_t = _tok_tile_t(k_ptr, batch, head, start + offs_c, offs_k, end, DK, sk_b, sk_t, sk_h, sk_d)
        g = tl.load(g_ptr + ch * BC + offs_c)
        g_last = tl.load(g_ptr + ch * BC + BC - 1)
        _mat_store(states_ptr + ch * BK * BVF, state, offs_k, offs_v, BVF)
        vn = tl.dot(w, (-state).to(dt), u.to(tl.float32), input_precision=PRECISION).to(dt)  # U - W S
        _mat_store(vn_ptr + ch * BC * BVF, vn, offs_c, offs_v, BVF)
        vn = (vn.to(tl.float32) * tl.exp(g_last - g)[:, None]).to(dt)  # K^T diag(gamma_C / gamma) V_new
        state = tl.dot(k_t, vn, state * tl.exp(g_last), input_precision=PRECISION)
    tl.store(ht_ptr + io_offs, state, mask=io_mask)


@triton.jit
def _output_fwd_kernel(q_ptr, k_ptr, g_ptr, tab_ptr, states_ptr, vn_ptr, o_ptr, scale,
                       sq_b, sq_t, sq_h, sq_d, sk_b, sk_t, sk_h, sk_d, so_b, so_t, so_h, so_d, n_heads,
                       DK: tl.constexpr, DV: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BVF: tl.constexpr,
                       BV: tl.constexpr, PRECISION: tl.constexpr):
    """Per (chunk, head, d_v tile): O = scale [diag(gamma) Q S + (lower(Q K^T) o Gamma) V_new]."""
    cid = tl.program_id(0) // (BVF // BV)  # the d_v tiles of one chunk run side by side (q, k from L2)
    head = tl.program_id(1)
    pid_v = tl.program_id(0) % (BVF // BV)
    dt = q_ptr.dtype.element_ty
    batch, start, end = _chunk_info(tab_ptr, cid)
    ch = cid.to(tl.int64) * n_heads + head
    offs_c = tl.arange(0, BC)
    offs_k = tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    rows = start + offs_c
    g = tl.load(g_ptr + ch * BC + offs_c)
    q = _tok_tile(q_ptr, batch, head, rows, offs_k, end, DK, sq_b, sq_t, sq_h, sq_d)
    k_t = _tok_tile_t(k_ptr, batch, head, rows, offs_k, end, DK, sk_b, sk_t, sk_h, sk_d)
    scores = tl.dot(q, k_t, input_precision=PRECISION) * (_decay_matrix(g, offs_c, False, False) * scale)
    state = _mat(states_ptr + ch * BK * BVF, offs_k, offs_v, BVF).to(dt)
    vn = _mat(vn_ptr + ch * BC * BVF, offs_c, offs_v, BVF)
    out = tl.dot(q, state, input_precision=PRECISION) * (tl.exp(g) * scale)[:, None]
    out = tl.dot(scores.to(dt), vn, out, input_precision=PRECISION)
    _tok_store(o_ptr, out, batch, head, rows, offs_v, end, DV, so_b, so_t, so_h, so_d)


# ----------------------------------------------------------------------------------------------------------
# backward


@triton.jit
def _dv_local_kernel(q_ptr, k_ptr, do_ptr, g_ptr, tab_ptr, dvl_ptr, scale,
                     sq_b, sq_t, sq_h, sq_d, sk_b, sk_t, sk_h, sk_d, so_b, so_t, so_h, so_d, n_heads,
                     DK: tl.constexpr, DV: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BVF: tl.constexpr,
                     BV: tl.constexpr, PRECISION: tl.constexpr):
    """Per (chunk, head, d_v tile): the in-chunk part of dV_new, scale (lower(Q K^T) o Gamma)^T dO."""
    cid = tl.program_id(0) // (BVF // BV)
    head = tl.program_id(1)
    pid_v = tl.program_id(0) % (BVF // BV)
    dt = q_ptr.dtype.element_ty
    batch, start, end = _chunk_info(tab_ptr, cid)
    ch = cid.to(tl.int64) * n_heads + head
    offs_c = tl.arange(0, BC)
    offs_k = tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    rows = start + offs_c
    g = tl.load(g_ptr + ch * BC + offs_c)
    k = _tok_tile(k_ptr, batch, head, rows, offs_k, end, DK, sk_b, sk_t, sk_h, sk_d)
    q_t = _tok_tile_t(q_ptr, batch, head, rows, offs_k, end, DK, sq_b, sq_t, sq_h, sq_d)
    scores_t = tl.dot(k, q_t, input_precision=PRECISION) * (_decay_matrix(g, offs_c, False, True) * scale)  # [j, i]
    do = _tok_tile(do_ptr, batch, head, rows, offs_v, end, DV, so_b, so_t, so_h, so_d).to(dt)
    dvl = tl.dot(scores_t.to(dt), do, input_precision=PRECISION)
    _mat_store(dvl_ptr + ch * BC * BVF, dvl, offs_c, offs_v, BVF)


@triton.jit
def _state_bwd_kernel(q_ptr, k_ptr, do_ptr, w_ptr, g_ptr, dvl_ptr, dht_ptr, tab_ptr, seq_ptr,
                      dstates_ptr, dvn_ptr, dh0_ptr, scale,
                      sq_b, sq_t, sq_h, sq_d, sk_b, sk_t, sk_h, sk_d, so_b, so_t, so_h, so_d, n_heads,
                      DK: tl.constexpr, DV: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BVF: tl.constexpr,
                      BV: tl.constexpr, HAS_DHT: tl.constexpr, PRECISION: tl.constexpr):
    """Per (sequence, head, d_v tile), over the chunks in reverse, carrying dS (the gradient of the state
    after the chunk): store dS, dV_new = dV_local + diag(gamma_C / gamma) K dS,
    dS <- gamma_C dS + scale (diag(gamma) Q)^T dO - W^T dV_new. Stores the initial state's gradient."""
    nh = tl.program_id(0) // (BVF // BV)
    pid_v = tl.program_id(0) % (BVF // BV)
    seq = nh // n_heads
    head = nh % n_heads
    dt = w_ptr.dtype.element_ty
    first = tl.load(seq_ptr + seq * 2)
    n_chunks = tl.load(seq_ptr + seq * 2 + 1)
    offs_c = tl.arange(0, BC)
    offs_k = tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    io_offs = nh.to(tl.int64) * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
    io_mask = (offs_k[:, None] < DK) & (offs_v[None, :] < DV)
    if HAS_DHT:
        dstate = tl.load(dht_ptr + io_offs, mask=io_mask, other=0.0)
    else:
        dstate = tl.zeros([BK, BV], tl.float32)
    for i in range(n_chunks):
        cid = first + n_chunks - 1 - i
        ch = cid.to(tl.int64) * n_heads + head
        batch, start, end = _chunk_info(tab_ptr, cid)
        rows = start + offs_c
        k = _tok_tile(k_ptr, batch, head, rows, offs_k, end, DK, sk_b, sk_t, sk_h, sk_d)
        q_t = _tok_tile_t(q_ptr, batch, head, rows, offs_k, end, DK, sq_b, sq_t, sq_h, sq_d)
        do = _tok_tile(do_ptr, batch, head, rows, offs_v, end, DV, so_b, so_t, so_h, so_d)
        w_t = _mat_t(w_ptr + ch * BC * BK, offs_c, offs_k, BK)
        dvl = _mat(dvl_ptr + ch * BC * BVF, offs_c, offs_v, BVF)
        g = tl.load(g_ptr + ch * BC + offs_c)
        g_last = tl.load(g_ptr + ch * BC + BC - 1)
        _mat_store(dstates_ptr + ch * BK * BVF, dstate, offs_k, offs_v, BVF)
        dvn = tl.dot(k, dstate.to(dt), input_precision=PRECISION) * tl.exp(g_last - g)[:, None]
        dvn = (dvn + dvl.to(tl.float32)).to(dt)
        _mat_store(dvn_ptr + ch * BC * BVF, dvn, offs_c, offs_v, BVF)
        do = (do.to(tl.float32) * (tl.exp(g) * scale)[:, None]).to(dt)
        dstate = tl.dot(q_t, do, dstate * tl.exp(g_last), input_precision=PRECISION)
        dstate = tl.dot(w_t, -dvn, dstate, input_precision=PRECISION)
    tl.store(dh0_ptr + io_offs, dstate, mask=io_mask)


@triton.jit
def _chunk_bwd_kernel(q_ptr, k_ptr, do_ptr, g_ptr, tab_ptr, states_ptr, dstates_ptr, vn_ptr, dvn_ptr,
                      dq_ptr, dkp_ptr, dw_ptr, dp_ptr, dgp_ptr, scale,
                      sq_b, sq_t, sq_h, sq_d, sk_b, sk_t, sk_h, sk_d, so_b, so_t, so_h, so_d,
                      sdq_b, sdq_t, sdq_h, sdq_d, n_heads, n_chunks,
                      DK: tl.constexpr, DV: tl.constexpr, BC: tl.constexpr, BKF: tl.constexpr, BK: tl.constexpr,
                      BVF: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    """Per (chunk, head, d_k tile), with S the state before the chunk and dS the gradient after it:
        dP  = scale lower(dO V_new^T) o Gamma                      (stored: its transpose gives dk's output part)
        dQ  = scale diag(gamma) dO S^T + dP K
        dK  = diag(gamma_C / gamma) V_new dS^T                     (partial: + dP^T Q + the WY part)
        dW  = -dV_new S^T
        dg_i = q_i . dq_i - k_i . dk_i,  dg_last += gamma_C <S, dS> + sum_j k_j . dk_j       (partial sums)."""
    cid = tl.program_id(0) // (BKF // BK)
    head = tl.program_id(1)
    pid_k = tl.program_id(0) % (BKF // BK)
    dt = q_ptr.dtype.element_ty
    batch, start, end = _chunk_info(tab_ptr, cid)
    ch = cid.to(tl.int64) * n_heads + head
    offs_c = tl.arange(0, BC)
    offs_k = pid_k * BK + tl.arange(0, BK)
    rows = start + offs_c
    dq = tl.zeros([BC, BK], tl.float32)
    dk = tl.zeros([BC, BK], tl.float32)
    dw = tl.zeros([BC, BK], tl.float32)
    dp = tl.zeros([BC, BC], tl.float32)
    dg_state = tl.zeros([BK], tl.float32)
    for v0 in range(0, BVF, BV):
        offs_v = v0 + tl.arange(0, BV)
        state_t = _mat_t(states_ptr + ch * BKF * BVF, offs_k, offs_v, BVF)  # [BV, BK]
        dstate_t = _mat_t(dstates_ptr + ch * BKF * BVF, offs_k, offs_v, BVF)
        vn = _mat(vn_ptr + ch * BC * BVF, offs_c, offs_v, BVF)
        vn_t = _mat_t(vn_ptr + ch * BC * BVF, offs_c, offs_v, BVF)
        dvn = _mat(dvn_ptr + ch * BC * BVF, offs_c, offs_v, BVF)
        do = _tok_tile(do_ptr, batch, head, rows, offs_v, end, DV, so_b, so_t, so_h, so_d).to(dt)
        dg_state += tl.sum(state_t.to(tl.float32) * dstate_t.to(tl.float32), 0)
        state_t = state_t.to(dt)
        dq = tl.dot(do, state_t, dq, input_precision=PRECISION)
        dp = tl.dot(do, vn_t, dp, input_precision=PRECISION)
        dk = tl.dot(vn, dstate_t.to(dt), dk, input_precision=PRECISION)
        dw = tl.dot(dvn, state_t, dw, input_precision=PRECISION)
    g = tl.load(g_ptr + ch * BC + offs_c)
    g_last = tl.load(g_ptr + ch * BC + BC - 1)
    q = _tok_tile(q_ptr, batch, head, rows, offs_k, end, DK, sq_b, sq_t, sq_h, sq_d)
    k = _tok_tile(k_ptr, batch, head, rows, offs_k, end, DK, sk_b, sk_t, sk_h, sk_d)
    dp = (dp * (_decay_matrix(g, offs_c, False, False) * scale)).to(dt)
    if pid_k == 0:
        _mat_store(dp_ptr + ch * BC * BC, dp, offs_c, offs_c, BC)
    dq = tl.dot(dp, k, dq * (tl.exp(g) * scale)[:, None], input_precision=PRECISION)
    dk = dk * tl.exp(g_last - g)[:, None]
    kdk = tl.sum(k.to(tl.float32) * dk, 1)
    dg = tl.sum(q.to(tl.float32) * dq, 1) - kdk
    dg_last = tl.sum(dg_state, 0) * tl.exp(g_last) + tl.sum(kdk, 0)
    dg += tl.where(offs_c == BC - 1, dg_last, 0.0)
    _tok_store(dq_ptr, dq, batch, head, rows, offs_k, end, DK, sdq_b, sdq_t, sdq_h, sdq_d)
    _mat_store(dkp_ptr + ch * BC * BKF, dk, offs_c, offs_k, BKF)
    _mat_store(dw_ptr + ch * BC * BKF, -dw, offs_c, offs_k, BKF)
    tl.store(dgp_ptr + ((pid_k * n_chunks + cid).to(tl.int64) * n_heads + head) * BC + offs_c, dg)


@triton.jit
def _wy_bwd_da_kernel(k_ptr, v_ptr, beta_ptr, g_ptr, tab_ptr, a_ptr, dw_ptr, dvn_ptr,
                      dv_ptr, da_ptr, vec_ptr,
                      sk_b, sk_t, sk_h, sk_d, sv_b, sv_t, sv_h, sv_d, sb_b, sb_t, sb_h,
                      sdv_b, sdv_t, sdv_h, sdv_d, n_heads,
                      DK: tl.constexpr, DV: tl.constexpr, BC: tl.constexpr, BKF: tl.constexpr, BVF: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    """Per (chunk, head), through W = A diag(beta gamma) K and U = A diag(beta) V (dU = dV_new):
    dv = diag(beta) A^T dU; dA = dW (diag(beta gamma) K)^T + dU (diag(beta) V)^T (stored);
    dbeta and dg from the rows of A^T dW and A^T dU (stored, float32, [2, C])."""
    cid = tl.program_id(0)
    head = tl.program_id(1)
    dt = k_ptr.dtype.element_ty
    batch, start, end = _chunk_info(tab_ptr, cid)
    ch = cid.to(tl.int64) * n_heads + head
    offs_c = tl.arange(0, BC)
    rows = start + offs_c
    beta = _tok_vec(beta_ptr, batch, head, rows, end, sb_b, sb_t, sb_h)
    g = tl.load(g_ptr + ch * BC + offs_c)
    eg = tl.exp(g)
    bg = beta * eg
    a_t = _mat_t(a_ptr + ch * BC * BC, offs_c, offs_c, BC)
    t = tl.zeros([BC], tl.float32)
    da = tl.zeros([BC, BC], tl.float32)
    for k0 in range(0, BKF, BK):
        offs_k = k0 + tl.arange(0, BK)
        k = _tok_tile(k_ptr, batch, head, rows, offs_k, end, DK, sk_b, sk_t, sk_h, sk_d)
        k_t = _tok_tile_t(k_ptr, batch, head, rows, offs_k, end, DK, sk_b, sk_t, sk_h, sk_d)
        dw = _mat(dw_ptr + ch * BC * BKF, offs_c, offs_k, BKF)
        dkb = tl.dot(a_t, dw, input_precision=PRECISION)
        t += tl.sum(k.to(tl.float32) * dkb, 1)
        da = tl.dot(dw, k_t, da, input_precision=PRECISION)
    da = da * eg[None, :]  # dA = (dW K^T diag(gamma) + dU V^T) diag(beta)
    dbeta = eg * t
    dg = bg * t
    for v0 in range(0, BVF, BV):
        offs_v = v0 + tl.arange(0, BV)
        v = _tok_tile(v_ptr, batch, head, rows, offs_v, end, DV, sv_b, sv_t, sv_h, sv_d)
        v_t = _tok_tile_t(v_ptr, batch, head, rows, offs_v, end, DV, sv_b, sv_t, sv_h, sv_d)
        dvn = _mat(dvn_ptr + ch * BC * BVF, offs_c, offs_v, BVF)
        atdu = tl.dot(a_t, dvn, input_precision=PRECISION)
        _tok_store(dv_ptr, atdu * beta[:, None], batch, head, rows, offs_v, end, DV, sdv_b, sdv_t, sdv_h, sdv_d)
        dbeta += tl.sum(v.to(tl.float32) * atdu, 1)
        da = tl.dot(dvn, v_t, da, input_precision=PRECISION)
    _mat_store(da_ptr + ch * BC * BC, da * beta[None, :], offs_c, offs_c, BC)
    tl.store(vec_ptr + ch * 2 * BC + offs_c, dbeta)
    tl.store(vec_ptr + ch * 2 * BC + BC + offs_c, dg)


@triton.jit
def _wy_bwd_dk_kernel(q_ptr, k_ptr, beta_ptr, g_ptr, tab_ptr, a_ptr, da_ptr, dp_ptr, dw_ptr, dkp_ptr, dgp_ptr,
                      vec_ptr, dk_ptr, dbeta_ptr, dla_ptr,
                      sq_b, sq_t, sq_h, sq_d, sk_b, sk_t, sk_h, sk_d, sb_b, sb_t, sb_h,
                      sdk_b, sdk_t, sdk_h, sdk_d, sdb_b, sdb_t, sdb_h, sdl_b, sdl_t, sdl_h, n_heads, n_chunks,
                      DK: tl.constexpr, BC: tl.constexpr, BKF: tl.constexpr, BK: tl.constexpr, NKT: tl.constexpr,
                      HAS_GATE: tl.constexpr, PRECISION: tl.constexpr):
    """Per (chunk, head), through A = (I + L)^-1, L = diag(beta) M, M = strict_lower(K K^T) o Gamma:
    dL = -A^T dA A^T (and dL^T = -A dA^T A, both from loads: no transposed register tiles). Writes
    dk = partial + diag(beta gamma) A^T dW + dP^T Q + (dM o Gamma) K + (dM o Gamma)^T K, dbeta, and
    dlog_alpha = the reverse cumsum of dg inside the chunk."""
    cid = tl.program_id(0)
    head = tl.program_id(1)
    dt = k_ptr.dtype.element_ty
    batch, start, end = _chunk_info(tab_ptr, cid)
    ch = cid.to(tl.int64) * n_heads + head
    offs_c = tl.arange(0, BC)
    rows = start + offs_c
    beta = _tok_vec(beta_ptr, batch, head, rows, end, sb_b, sb_t, sb_h)
    g = tl.load(g_ptr + ch * BC + offs_c)
    kk = tl.zeros([BC, BC], tl.float32)
    for k0 in range(0, BKF, BK):
        offs_k = k0 + tl.arange(0, BK)
        k = _tok_tile(k_ptr, batch, head, rows, offs_k, end, DK, sk_b, sk_t, sk_h, sk_d)
        k_t = _tok_tile_t(k_ptr, batch, head, rows, offs_k, end, DK, sk_b, sk_t, sk_h, sk_d)
        kk = tl.dot(k, k_t, kk, input_precision=PRECISION)
    a = _mat(a_ptr + ch * BC * BC, offs_c, offs_c, BC)
    a_t = _mat_t(a_ptr + ch * BC * BC, offs_c, offs_c, BC)
    da = _mat(da_ptr + ch * BC * BC, offs_c, offs_c, BC).to(dt)
    da_t = _mat_t(da_ptr + ch * BC * BC, offs_c, offs_c, BC).to(dt)
    dl = tl.dot(tl.dot(a_t, da, input_precision=PRECISION).to(dt), a_t, input_precision=PRECISION)
    dl = tl.where(offs_c[:, None] > offs_c[None, :], -dl, 0.0)
    dl_t = tl.dot(tl.dot(a, da_t, input_precision=PRECISION).to(dt), a, input_precision=PRECISION)
    dl_t = tl.where(offs_c[None, :] > offs_c[:, None], -dl_t, 0.0)
    gam = _decay_matrix(g, offs_c, True, False)
    m = kk * gam
    dbeta = tl.load(vec_ptr + ch * 2 * BC + offs_c) + tl.sum(dl * m, 1)
    dm = dl * beta[:, None]
    t2 = dm * m
    dg = tl.load(vec_ptr + ch * 2 * BC + BC + offs_c) + tl.sum(t2, 1) - tl.sum(t2, 0)
    for p in range(NKT):
        dg += tl.load(dgp_ptr + ((p * n_chunks + cid).to(tl.int64) * n_heads + head) * BC + offs_c)
    dmg = (dm * gam).to(dt)
    dmg_t = (dl_t * beta[None, :] * _decay_matrix(g, offs_c, True, True)).to(dt)
    dp_t = _mat_t(dp_ptr + ch * BC * BC, offs_c, offs_c, BC)
    for k0 in range(0, BKF, BK):
        offs_k = k0 + tl.arange(0, BK)
        k = _tok_tile(k_ptr, batch, head, rows, offs_k, end, DK, sk_b, sk_t, sk_h, sk_d)
        q = _tok_tile(q_ptr, batch, head, rows, offs_k, end, DK, sq_b, sq_t, sq_h, sq_d)
        dw = _mat(dw_ptr + ch * BC * BKF, offs_c, offs_k, BKF)
        dk_out = tl.dot(dp_t, q, input_precision=PRECISION)  # the output's part of dk
        dg -= tl.sum(k.to(tl.float32) * dk_out, 1)
        dk = _mat(dkp_ptr + ch * BC * BKF, offs_c, offs_k, BKF) + dk_out
        dk += tl.dot(a_t, dw, input_precision=PRECISION) * (beta * tl.exp(g))[:, None]
        dk = tl.dot(dmg, k, dk, input_precision=PRECISION)
        dk = tl.dot(dmg_t, k, dk, input_precision=PRECISION)
        _tok_store(dk_ptr, dk, batch, head, rows, offs_k, end, DK, sdk_b, sdk_t, sdk_h, sdk_d)
    _tok_vec_store(dbeta_ptr, dbeta, batch, head, rows, end, sdb_b, sdb_t, sdb_h)
    if HAS_GATE:
        dla = tl.sum(tl.where(offs_c[None, :] >= offs_c[:, None], dg[None, :], 0.0), 1)
        _tok_vec_store(dla_ptr, dla, batch, head, rows, end, sdl_b, sdl_t, sdl_h)


# ----------------------------------------------------------------------------------------------------------
# host side


def _launch(name: str, **full: int) -> tuple[dict, dict]:
    """Tiles (CONFIG's, capped at the padded head dim) and launch options (none when interpreting)."""
    conf = CONFIG[name]
    tiles = {key: max(MIN_BLOCK, min(triton.next_power_of_2(int(conf.get(key, size))), size))
             for key, size in full.items()}
    options = {} if INTERPRET else {key: val for key, val in conf.items() if key not in ("BK", "BV")}
    return tiles, options


def _state_tile(bv: int, columns: int, device: torch.device) -> int:
    """The sequential kernels' d_v tile: halved (down to STATE_MIN_BV) while their programs, columns / bv,
    would leave streaming multiprocessors idle (few long sequences)."""
    if device.type != "cuda":
        return bv
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    while bv > STATE_MIN_BV and columns // bv < sms:
        bv //= 2
    return bv


def _device(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


@functools.lru_cache(maxsize=64)
def _tables(lengths: tuple, rows: tuple, starts: tuple, chunk_size: int, device: str):
    """Chunk table [chunks, 3] (batch row, first token, end token) and sequence table [N, 2] (first chunk,
    number of chunks), int32 on `device`; cached, so a repeated shape costs no host-to-device copy."""
    chunks, seqs = [], []
    for row, first, length in zip(rows, starts, lengths):
        seqs.append((len(chunks), triton.cdiv(length, chunk_size)))
        chunks.extend((row, s, min(s + chunk_size, first + length)) for s in range(first, first + length, chunk_size))
    chunk_tab = torch.tensor(chunks or [(0, 0, 0)], dtype=torch.int32, device=device)
    return chunk_tab, torch.tensor(seqs, dtype=torch.int32, device=device), len(chunks)


class _Plan:
    """Chunk and sequence tables and the padded tile sizes."""

    def __init__(self, lengths: list[int], batch_rows: list[int], starts: list[int], chunk_size: int,
                 dk: int, dv: int, device: torch.device):
        self.chunk_tab, self.seq_tab, self.n_chunks = _tables(tuple(lengths), tuple(batch_rows), tuple(starts),
                                                              chunk_size, str(device))
        self.n_seqs = len(lengths)
        self.bc = max(MIN_BLOCK, triton.next_power_of_2(chunk_size))
        self.bk = max(MIN_BLOCK, triton.next_power_of_2(dk))
        self.bvf = max(MIN_BLOCK, triton.next_power_of_2(dv))


def _strides(*tensors: torch.Tensor) -> tuple[int, ...]:
    return tuple(s for x in tensors for s in x.stride())


class _GatedDeltaRule(torch.autograd.Function):
    """Saves g, A, W, V_new and the chunk states from the forward (no recomputation in the backward)."""

    @staticmethod
    def forward(ctx, q, k, v, beta, log_alpha, initial_state, scale, plan):
        b, n, h, dk = q.shape
        dv = v.shape[-1]
        nc, bc, bk, bvf = plan.n_chunks, plan.bc, plan.bk, plan.bvf
        dev, dt = q.device, q.dtype
        state_dtype = torch.bfloat16 if dt == torch.bfloat16 else torch.float32
        prec = DOT_PRECISION[dt]
        has_gate = log_alpha is not None
        la = log_alpha if has_gate else beta  # a placeholder pointer, never read
        g = torch.empty((nc, h, bc), dtype=torch.float32, device=dev)
        a = torch.empty((nc, h, bc, bc), dtype=dt, device=dev)  # only ever used rounded to dt
        w = torch.empty((nc, h, bc, bk), dtype=dt, device=dev)
        u = torch.empty((nc, h, bc, bvf), dtype=dt, device=dev)
        vn = torch.empty((nc, h, bc, bvf), dtype=dt, device=dev)
        states = torch.empty((nc, h, bk, bvf), dtype=state_dtype, device=dev)
        final = torch.empty((plan.n_seqs, h, dk, dv), dtype=torch.float32, device=dev)
        o = torch.empty((b, n, h, dv), dtype=dt, device=dev)
        sizes = dict(DK=dk, DV=dv, BC=bc, BVF=bvf, PRECISION=prec)
        with _device(q):
            tiles, conf = _launch("wy_fwd", BK=bk, BV=bvf)
            sub = min(bc, INVERSE_BLOCK)
            _wy_fwd_kernel[(nc, h)](
                k, v, beta, la, plan.chunk_tab, g, a, w, u, *_strides(k, v, beta, la), h,
                BKF=bk, SUB=sub, SQUARINGS=max(0, (bc // sub).bit_length() - 2), HAS_GATE=has_gate,
                **tiles, **sizes, **conf)
            tiles, conf = _launch("state_fwd", BV=bvf)
            tiles["BV"] = _state_tile(tiles["BV"], plan.n_seqs * h * bvf, dev)
            _state_fwd_kernel[(plan.n_seqs * h * (bvf // tiles["BV"]),)](
                k, w, u, g, initial_state if initial_state is not None else final, plan.chunk_tab, plan.seq_tab,
                states, vn, final, *k.stride(), h, BK=bk, **tiles, HAS_H0=initial_state is not None, **sizes, **conf)
            del u
            tiles, conf = _launch("output_fwd", BV=bvf)
            _output_fwd_kernel[(nc * (bvf // tiles["BV"]), h)](
                q, k, g, plan.chunk_tab, states, vn, o, float(scale), *_strides(q, k, o), h,
                BK=bk, **tiles, **sizes, **conf)
        ctx.save_for_backward(q, k, v, beta, log_alpha, g, a, w, vn, states)
        ctx.scale, ctx.plan, ctx.has_h0 = float(scale), plan, initial_state is not None
        return o, final

    @staticmethod
    def backward(ctx, d_o, d_final):
        q, k, v, beta, log_alpha, g, a, w, vn, states = ctx.saved_tensors
        plan, scale = ctx.plan, ctx.scale
        b, n, h, dk = q.shape
        dv = v.shape[-1]
        nc, bc, bk, bvf = plan.n_chunks, plan.bc, plan.bk, plan.bvf
        dev, dt = q.device, q.dtype
        prec = DOT_PRECISION[dt]
        has_gate = log_alpha is not None
        if d_o is None:
            d_o = torch.zeros((b, n, h, dv), dtype=dt, device=dev)
        d_o = d_o.to(dt)
        if d_final is not None:
            d_final = d_final.to(torch.float32).contiguous()
        dq, dk_, dv_ = (torch.empty(x.shape, dtype=x.dtype, device=dev) for x in (q, k, v))
        dbeta = torch.empty(beta.shape, dtype=beta.dtype, device=dev)
        dla = torch.empty(log_alpha.shape, dtype=log_alpha.dtype, device=dev) if has_gate else dbeta
        dh0 = torch.empty((plan.n_seqs, h, dk, dv), dtype=torch.float32, device=dev)
        dvl = torch.empty((nc, h, bc, bvf), dtype=dt, device=dev)
        dvn = torch.empty((nc, h, bc, bvf), dtype=dt, device=dev)
        dstates = torch.empty((nc, h, bk, bvf), dtype=states.dtype, device=dev)
        sizes = dict(DK=dk, DV=dv, BC=bc, BVF=bvf, PRECISION=prec)
        with _device(q):
            tiles, conf = _launch("dv_local", BV=bvf)
            _dv_local_kernel[(nc * (bvf // tiles["BV"]), h)](
                q, k, d_o, g, plan.chunk_tab, dvl, scale, *_strides(q, k, d_o), h,
                BK=bk, **tiles, **sizes, **conf)
            tiles, conf = _launch("state_bwd", BV=bvf)
            tiles["BV"] = _state_tile(tiles["BV"], plan.n_seqs * h * bvf, dev)
            _state_bwd_kernel[(plan.n_seqs * h * (bvf // tiles["BV"]),)](
                q, k, d_o, w, g, dvl, d_final if d_final is not None else dh0, plan.chunk_tab, plan.seq_tab,
                dstates, dvn, dh0, scale, *_strides(q, k, d_o), h,
                BK=bk, **tiles, HAS_DHT=d_final is not None, **sizes, **conf)
            del dvl
            tiles, conf = _launch("chunk_bwd", BK=bk, BV=bvf)
            nkt = bk // tiles["BK"]
            # Stored in the inputs' dtype: dw, dp (and da below) are only ever used rounded to it; dk_part is
            # one term of dk, which is rounded to it anyway.
            dk_part = torch.empty((nc, h, bc, bk), dtype=dt, device=dev)
            dw = torch.empty((nc, h, bc, bk), dtype=dt, device=dev)
            dp = torch.empty((nc, h, bc, bc), dtype=dt, device=dev)
            dg_part = torch.empty((nkt, nc, h, bc), dtype=torch.float32, device=dev)
            _chunk_bwd_kernel[(nc * nkt, h)](
                q, k, d_o, g, plan.chunk_tab, states, dstates, vn, dvn, dq, dk_part, dw, dp, dg_part, scale,
                *_strides(q, k, d_o, dq), h, nc, BKF=bk, **tiles, **sizes, **conf)
            del dstates
            da = torch.empty((nc, h, bc, bc), dtype=dt, device=dev)
            vec = torch.empty((nc, h, 2, bc), dtype=torch.float32, device=dev)
            tiles, conf = _launch("wy_bwd_da", BK=bk, BV=bvf)
            _wy_bwd_da_kernel[(nc, h)](
                k, v, beta, g, plan.chunk_tab, a, dw, dvn, dv_, da, vec,
                *_strides(k, v, beta, dv_), h, BKF=bk, **tiles, **sizes, **conf)
            tiles, conf = _launch("wy_bwd_dk", BK=bk)
            _wy_bwd_dk_kernel[(nc, h)](
                q, k, beta, g, plan.chunk_tab, a, da, dp, dw, dk_part, dg_part, vec, dk_, dbeta, dla,
                *_strides(q, k, beta, dk_, dbeta, dla), h, nc,
                DK=dk, BC=bc, BKF=bk, **tiles, NKT=nkt, HAS_GATE=has_gate, PRECISION=prec, **conf)
        return (dq, dk_, dv_, dbeta, dla if has_gate else None, dh0 if ctx.has_h0 else None, None, None)


def _check(q, k, v, beta, log_alpha, initial_state, cu_seqlens, chunk_size):
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be [B, T, H, Dk] and v [B, T, H, Dv] with the same B, T, H, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    b, n, h, dk = q.shape
    for name, x in (("beta", beta), ("log_alpha", log_alpha)):
        if x is not None and tuple(x.shape) != (b, n, h):
            raise ValueError(f"{name} must be [B, T, H] = {[b, n, h]}, got {list(x.shape)}")
    tensors = [x for x in (q, k, v, beta, log_alpha, initial_state) if x is not None]
    if any(x.device != q.device for x in tensors):
        raise ValueError(f"all inputs must be on one device, got {sorted({str(x.device) for x in tensors})}")
    if not INTERPRET and q.device.type != "cuda":
        raise ValueError(f"gated_delta_rule runs on CUDA tensors, got {q.device}; for CPU tensors set "
                         "TRITON_INTERPRET=1 before importing kernels.gated_delta_rule, or use "
                         "kernels.reference.chunked_delta_rule")
    for name, x in (("q", q), ("k", k), ("v", v), ("beta", beta), ("log_alpha", log_alpha)):
        if x is not None and x.dtype not in DOT_PRECISION:
            raise ValueError(f"{name} must be float32, float16 or bfloat16, got {x.dtype} "
                             "(float64: use kernels.reference.chunked_delta_rule)")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if min(dk, v.shape[-1]) < 1:
        raise ValueError(f"head dims must be positive, got Dk={dk}, Dv={v.shape[-1]}")


def _sequences(b: int, n: int, cu_seqlens) -> tuple[list[int], list[int], list[int]]:
    """(lengths, batch rows, first tokens) of the sequences."""
    if cu_seqlens is None:
        return [n] * b, list(range(b)), [0] * b
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype.is_floating_point \
            or cu_seqlens.dtype == torch.bool:
        raise ValueError(f"cu_seqlens must be a 1-D integer tensor [N + 1], got {cu_seqlens.dtype} "
                         f"{list(cu_seqlens.shape)}")
    if b != 1:
        raise ValueError(f"with cu_seqlens the batch size B must be 1 (sequences packed along T), got B={b}")
    bounds = [int(x) for x in cu_seqlens.tolist()]
    if bounds[0] != 0 or bounds[-1] != n or any(y < x for x, y in zip(bounds, bounds[1:])):
        raise ValueError(f"cu_seqlens must rise from 0 to T={n} without decreasing, got {bounds}")
    return [y - x for x, y in zip(bounds, bounds[1:])], [0] * (len(bounds) - 1), bounds[:-1]


def half_runs_in_float32(device: torch.device, dtype: torch.dtype, dk: int, dv: int) -> bool:
    """Whether `gated_delta_rule` runs these half-precision inputs through its float32 kernels: on CUDA below
    HALF_MIN_CUDA_HEAD_DIM (see there). Elsewhere (the interpreter) every dtype runs as given."""
    return device.type == "cuda" and dtype != torch.float32 and min(dk, dv) < HALF_MIN_CUDA_HEAD_DIM


def gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    log_alpha: torch.Tensor | None = None,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (gated) delta rule S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,
    o_t = scale S_t^T q_t, alpha_t = exp(log_alpha_t), with Triton forward and backward kernels.

    q, k [B, T, H, Dk]; v [B, T, H, Dv]; beta [B, T, H]; log_alpha [B, T, H] (finite, <= 0) or None (the
    plain delta rule). Layout [B, T, H, D] (unlike `kernels.reference`, [B, H, T, D]); any strides. q, k, v
    float32, float16 or bfloat16 (promoted to one dtype); beta, log_alpha any of those. q, k are used as
    given (the mixer L2-normalises them). CUDA tensors, or CPU tensors under TRITON_INTERPRET=1.
    initial_state [N, H, Dk, Dv] (any float dtype) or None, N = B, or the number of sequences with
    cu_seqlens: int tensor [N + 1] of sequence bounds packed along T (B must be 1; chunks never cross a
    bound; every sequence starts from its own initial state; read on the host, so a CPU tensor avoids a
    sync). chunk_size: any positive int (padded to a power of two >= 16 inside; 64 is the fast choice for
    head dim 128). The chunk is a tiling choice, not part of the result: on CUDA, float32 inputs use at most
    FP32_CUDA_MAX_CHUNK (the forward's float32 chunk tiles at 128 need 256 KiB of shared memory; the H200
    has 227 KiB); float16 / bfloat16 inputs with a head dim below HALF_MIN_CUDA_HEAD_DIM run in float32
    (the half-precision kernels are wrong there on Hopper with Triton 3.6) and return o in their dtype.

    Returns (o [B, T, H, Dv] in the inputs' dtype, final states [N, H, Dk, Dv] float32 or None unless
    output_final_state). Differentiable in q, k, v, beta, log_alpha and initial_state. Accumulation in
    float32; with bf16 inputs the per-chunk intermediates and states are stored in bf16.
    """
    _check(q, k, v, beta, log_alpha, initial_state, cu_seqlens, chunk_size)
    b, n, h, dk = q.shape
    dv = v.shape[-1]
    lengths, rows, starts = _sequences(b, n, cu_seqlens)
    n_seqs = len(lengths)
    if initial_state is not None:
        if tuple(initial_state.shape) != (n_seqs, h, dk, dv):
            raise ValueError(f"initial_state must be [N, H, Dk, Dv] = {[n_seqs, h, dk, dv]}, "
                             f"got {list(initial_state.shape)}")
        if not initial_state.dtype.is_floating_point:
            raise ValueError(f"initial_state must be a float tensor, got {initial_state.dtype}")
        initial_state = initial_state.to(torch.float32).contiguous()
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if half_runs_in_float32(q.device, dtype, dk, dv):
        o, final = gated_delta_rule(q.float(), k.float(), v.float(), beta, log_alpha, scale, initial_state,
                                    output_final_state, cu_seqlens, chunk_size)
        return o.to(dtype), final
    if q.is_cuda and dtype == torch.float32:
        chunk_size = min(chunk_size, FP32_CUDA_MAX_CHUNK)
    plan = _Plan(lengths, rows, starts, chunk_size, dk, dv, q.device)
    if plan.n_chunks == 0:  # T = 0, or only empty sequences
        o = v.new_zeros(b, n, h, dv)
        final = initial_state if initial_state is not None else q.new_zeros(n_seqs, h, dk, dv, dtype=torch.float32)
        return o, (final if output_final_state else None)
    o, final = _GatedDeltaRule.apply(q, k, v, beta, log_alpha, initial_state, float(scale), plan)
    return o, (final if output_final_state else None)
