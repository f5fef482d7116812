"""Triton kernels: chunked lightning attention (linear attention with a fixed per-head decay),
o_t = sum_{s<=t} lambda_h^(t-s) (q_t . k_s) v_s, forward and backward.

Same numbers as `kernels.reference.chunked_decay_linear_attention` (Lightning Attention-2, Qin et al.,
arXiv 2401.04658), in float32 accumulation. One program per (batch, head) walks the chunks of length C in
order, holding the d_k x d_v state S in registers ("chunk loop" form):

    forward   grid (B*H, d_v / BLOCK_DV). Per chunk, with i, j in [0, n) the positions in the chunk,
              M[i, j] = lambda^(i-j) [i >= j], a_i = lambda^(i+1), b_j = lambda^(n-1-j):
                  O = (Q K^T * M) V + (Q * a) S,        S <- lambda^n S + (K * b)^T V.
    dq        grid (B*H, d_k / BLOCK_DK). Same forward walk recomputing S:
                  dQ = (dO V^T * M) K + (dO S^T) * a   (S before the chunk).
    dk, dv    grid (B*H,). Reverse walk carrying dS (the gradient of the state after the chunk, starting
              from the gradient of the final state):
                  dK = (dO V^T * M)^T Q + (V dS^T) * b,   dV = (Q K^T * M)^T dO + (K * b) dS,
                  dS <- lambda^n dS + (Q * a)^T dO;  after the first chunk dS is the initial state's gradient.

Every decay factor is lambda^p with p >= 0 (exponent clamped before exp), so nothing overflows for
log lambda <= 0. The kernels run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 when that is
set before this module is imported.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

__all__ = ["lightning_attention"]

# Read when the kernels are defined: triton.jit builds interpreted kernels only while this is set.
INTERPRET = triton.knobs.runtime.interpret
# Tiles are loaded and converted to float32; float32 inputs get three TF32 products (float32 accuracy),
# half-precision inputs one TF32 product (more mantissa than bf16/fp16 carry).
DOT_PRECISION = {torch.float32: "tf32x3", torch.float16: "tf32", torch.bfloat16: "tf32"}
MIN_BLOCK = 16  # tl.dot needs every dimension >= 16


@triton.jit
def _tile(base, rows, cols, row_end, n_cols, stride_r, stride_c):
    """Rows `rows` (< row_end) and columns `cols` (< n_cols) of one head's [T, D] matrix as float32, zero outside."""
    mask = (rows[:, None] < row_end) & (cols[None, :] < n_cols)
    return tl.load(base + rows[:, None] * stride_r + cols[None, :] * stride_c, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_tile(base, x, rows, cols, row_end, n_cols, stride_r, stride_c):
    mask = (rows[:, None] < row_end) & (cols[None, :] < n_cols)
    tl.store(base + rows[:, None] * stride_r + cols[None, :] * stride_c, x.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _chunk_decays(ld, offs_c):
    """The chunk-relative decays that do not depend on the chunk's length: M[i, j] and a_i."""
    gap = offs_c[:, None] - offs_c[None, :]
    mask = tl.where(gap >= 0, tl.exp(ld * tl.maximum(gap, 0).to(tl.float32)), 0.0)
    q_decay = tl.exp(ld * (offs_c + 1).to(tl.float32))
    return mask, q_decay


@triton.jit
def _key_decay(ld, offs_c, cur):
    """b_j = lambda^(cur-1-j) for j < cur (the chunk's length), else 0."""
    return tl.where(offs_c < cur, tl.exp(ld * tl.maximum(cur - 1 - offs_c, 0).to(tl.float32)), 0.0)


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, ld_ptr, h0_ptr, o_ptr, ht_ptr,
                stride_qb, stride_qt, stride_qh, stride_qd, stride_kb, stride_kt, stride_kh, stride_kd,
                stride_vb, stride_vt, stride_vh, stride_vd, stride_ob, stride_ot, stride_oh, stride_od,
                n_heads, n,
                DK: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
                BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_H0: tl.constexpr, PRECISION: tl.constexpr):
    bh = tl.program_id(0)
    pid_v = tl.program_id(1)
    batch, head = bh // n_heads, bh % n_heads
    q_base = q_ptr + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
    k_base = k_ptr + batch.to(tl.int64) * stride_kb + head.to(tl.int64) * stride_kh
    v_base = v_ptr + batch.to(tl.int64) * stride_vb + head.to(tl.int64) * stride_vh
    o_base = o_ptr + batch.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh
    ld = tl.load(ld_ptr + head).to(tl.float32)
    offs_c = tl.arange(0, BLOCK_C)
    offs_k = tl.arange(0, BLOCK_DK)
    offs_v = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    mask, q_decay = _chunk_decays(ld, offs_c)
    state_offs = bh.to(tl.int64) * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
    state_mask = (offs_k[:, None] < DK) & (offs_v[None, :] < DV)
    if HAS_H0:
        state = tl.load(h0_ptr + state_offs, mask=state_mask, other=0.0)
    else:
        state = tl.zeros([BLOCK_DK, BLOCK_DV], tl.float32)
    for c0 in range(0, n, CHUNK):
        end = tl.minimum(c0 + CHUNK, n)
        rows = c0 + offs_c
        q = _tile(q_base, rows, offs_k, end, DK, stride_qt, stride_qd)
        k = _tile(k_base, rows, offs_k, end, DK, stride_kt, stride_kd)
        v = _tile(v_base, rows, offs_v, end, DV, stride_vt, stride_vd)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * mask
        out = tl.dot(scores, v, input_precision=PRECISION)
        out += tl.dot(q * q_decay[:, None], state, input_precision=PRECISION)
        _store_tile(o_base, out, rows, offs_v, end, DV, stride_ot, stride_od)
        cur = end - c0
        k_decay = _key_decay(ld, offs_c, cur)
        state = state * tl.exp(ld * cur.to(tl.float32)) + tl.dot(
            tl.trans(k * k_decay[:, None]), v, input_precision=PRECISION)
    tl.store(ht_ptr + state_offs, state, mask=state_mask)


@triton.jit
def _dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, ld_ptr, h0_ptr, dq_ptr,
               stride_qb, stride_qt, stride_qh, stride_qd, stride_kb, stride_kt, stride_kh, stride_kd,
               stride_vb, stride_vt, stride_vh, stride_vd, stride_ob, stride_ot, stride_oh, stride_od,
               n_heads, n,
               DK: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
               BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_H0: tl.constexpr, PRECISION: tl.constexpr):
    """dq (same layout and strides as q) for the d_k columns of this program; do has o's strides."""
    bh = tl.program_id(0)
    pid_k = tl.program_id(1)
    batch, head = bh // n_heads, bh % n_heads
    k_base = k_ptr + batch.to(tl.int64) * stride_kb + head.to(tl.int64) * stride_kh
    v_base = v_ptr + batch.to(tl.int64) * stride_vb + head.to(tl.int64) * stride_vh
    do_base = do_ptr + batch.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh
    dq_base = dq_ptr + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
    ld = tl.load(ld_ptr + head).to(tl.float32)
    offs_c = tl.arange(0, BLOCK_C)
    offs_k = pid_k * BLOCK_DK + tl.arange(0, BLOCK_DK)
    offs_v = tl.arange(0, BLOCK_DV)
    mask, q_decay = _chunk_decays(ld, offs_c)
    state_offs = bh.to(tl.int64) * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
    state_mask = (offs_k[:, None] < DK) & (offs_v[None, :] < DV)
    if HAS_H0:
        state = tl.load(h0_ptr + state_offs, mask=state_mask, other=0.0)
    else:
        state = tl.zeros([BLOCK_DK, BLOCK_DV], tl.float32)
    for c0 in range(0, n, CHUNK):
        end = tl.minimum(c0 + CHUNK, n)
        rows = c0 + offs_c
        k = _tile(k_base, rows, offs_k, end, DK, stride_kt, stride_kd)
        v = _tile(v_base, rows, offs_v, end, DV, stride_vt, stride_vd)
        do = _tile(do_base, rows, offs_v, end, DV, stride_ot, stride_od)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION) * mask
        dq = tl.dot(dp, k, input_precision=PRECISION)
        dq += tl.dot(do, tl.trans(state), input_precision=PRECISION) * q_decay[:, None]
        _store_tile(dq_base, dq, rows, offs_k, end, DK, stride_qt, stride_qd)
        cur = end - c0
        k_decay = _key_decay(ld, offs_c, cur)
        state = state * tl.exp(ld * cur.to(tl.float32)) + tl.dot(
            tl.trans(k * k_decay[:, None]), v, input_precision=PRECISION)


@triton.jit
def _dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, ld_ptr, dht_ptr, dk_ptr, dv_ptr, dh0_ptr,
                 stride_qb, stride_qt, stride_qh, stride_qd, stride_kb, stride_kt, stride_kh, stride_kd,
                 stride_vb, stride_vt, stride_vh, stride_vd, stride_ob, stride_ot, stride_oh, stride_od,
                 n_heads, n, n_chunks,
                 DK: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
                 BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_DHT: tl.constexpr, PRECISION: tl.constexpr):
    """dk (k's strides), dv (v's strides) and the initial state's gradient dh0 [B, H, DK, DV] float32."""
    bh = tl.program_id(0)
    batch, head = bh // n_heads, bh % n_heads
    q_base = q_ptr + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
    k_base = k_ptr + batch.to(tl.int64) * stride_kb + head.to(tl.int64) * stride_kh
    v_base = v_ptr + batch.to(tl.int64) * stride_vb + head.to(tl.int64) * stride_vh
    do_base = do_ptr + batch.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh
    dk_base = dk_ptr + batch.to(tl.int64) * stride_kb + head.to(tl.int64) * stride_kh
    dv_base = dv_ptr + batch.to(tl.int64) * stride_vb + head.to(tl.int64) * stride_vh
    ld = tl.load(ld_ptr + head).to(tl.float32)
    offs_c = tl.arange(0, BLOCK_C)
    offs_k = tl.arange(0, BLOCK_DK)
    offs_v = tl.arange(0, BLOCK_DV)
    mask, q_decay = _chunk_decays(ld, offs_c)
    state_offs = bh.to(tl.int64) * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
    state_mask = (offs_k[:, None] < DK) & (offs_v[None, :] < DV)
    if HAS_DHT:
        dstate = tl.load(dht_ptr + state_offs, mask=state_mask, other=0.0)
    else:
        dstate = tl.zeros([BLOCK_DK, BLOCK_DV], tl.float32)
    for i in range(0, n_chunks):
        c0 = (n_chunks - 1 - i) * CHUNK
        end = tl.minimum(c0 + CHUNK, n)
        rows = c0 + offs_c
        q = _tile(q_base, rows, offs_k, end, DK, stride_qt, stride_qd)
        k = _tile(k_base, rows, offs_k, end, DK, stride_kt, stride_kd)
        v = _tile(v_base, rows, offs_v, end, DV, stride_vt, stride_vd)
        do = _tile(do_base, rows, offs_v, end, DV, stride_ot, stride_od)
        cur = end - c0
        k_decay = _key_decay(ld, offs_c, cur)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION) * mask  # [t, s]
        dk = tl.dot(tl.trans(dp), q, input_precision=PRECISION)
        dk += tl.dot(v, tl.trans(dstate), input_precision=PRECISION) * k_decay[:, None]
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * mask  # [t, s]
        dv = tl.dot(tl.trans(scores), do, input_precision=PRECISION)
        dv += tl.dot(k * k_decay[:, None], dstate, input_precision=PRECISION)
        _store_tile(dk_base, dk, rows, offs_k, end, DK, stride_kt, stride_kd)
        _store_tile(dv_base, dv, rows, offs_v, end, DV, stride_vt, stride_vd)
        dstate = dstate * tl.exp(ld * cur.to(tl.float32)) + tl.dot(
            tl.trans(q * q_decay[:, None]), do, input_precision=PRECISION)
    tl.store(dh0_ptr + state_offs, dstate, mask=state_mask)


def _config(block_dk: int, block_dv: int) -> dict:
    """Warps and pipeline stages on the GPU (not tuned on hardware yet); nothing when interpreting."""
    if INTERPRET:
        return {}
    big = max(block_dk, block_dv) > 64  # a 128 x 128 fp32 state leaves no shared memory for pipelining
    return dict(num_warps=8 if big else 4, num_stages=1 if big else 2)


def _strides(*tensors: torch.Tensor) -> tuple[int, ...]:
    return tuple(s for x in tensors for s in x.stride())


def _device(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


class _LightningAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, log_decay, initial_state, chunk_size):
        b, n, h, dk = q.shape
        dv = v.shape[-1]
        block_c = max(MIN_BLOCK, triton.next_power_of_2(chunk_size))
        block_dk = max(MIN_BLOCK, triton.next_power_of_2(dk))
        block_dv = max(MIN_BLOCK, triton.next_power_of_2(dv))
        fwd_block_dv = block_dv if INTERPRET else min(block_dv, 64)
        o = torch.empty((b, n, h, dv), dtype=q.dtype, device=q.device)
        final = torch.empty((b, h, dk, dv), dtype=torch.float32, device=q.device)
        common = dict(DK=dk, DV=dv, CHUNK=chunk_size, BLOCK_C=block_c, BLOCK_DK=block_dk,
                      PRECISION=DOT_PRECISION[q.dtype], **_config(block_dk, block_dv))
        with _device(q):
            _fwd_kernel[(b * h, triton.cdiv(dv, fwd_block_dv))](
                q, k, v, log_decay, initial_state if initial_state is not None else final, o, final,
                *_strides(q, k, v, o), h, n, BLOCK_DV=fwd_block_dv, HAS_H0=initial_state is not None, **common)
        ctx.save_for_backward(q, k, v, log_decay, initial_state)
        ctx.chunk_size = chunk_size
        return o, final

    @staticmethod
    def backward(ctx, d_o, d_final):
        q, k, v, log_decay, initial_state = ctx.saved_tensors
        chunk_size = ctx.chunk_size
        b, n, h, dk = q.shape
        dv = v.shape[-1]
        block_c = max(MIN_BLOCK, triton.next_power_of_2(chunk_size))
        block_dk = max(MIN_BLOCK, triton.next_power_of_2(dk))
        block_dv = max(MIN_BLOCK, triton.next_power_of_2(dv))
        dq_block_dk = block_dk if INTERPRET else min(block_dk, 64)
        if d_o is None:
            d_o = torch.zeros((b, n, h, dv), dtype=q.dtype, device=q.device)
        d_o = d_o.to(q.dtype)  # strides: do is read with its own strides, passed in o's slot
        if d_final is not None:
            d_final = d_final.to(torch.float32).contiguous()
        # The kernels write each gradient with its input's strides: inputs that are not dense get a copy.
        q, k, v = (x if torch.empty_like(x).stride() == x.stride() else x.contiguous() for x in (q, k, v))
        dq, dk_, dv_ = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dh0 = torch.empty((b, h, dk, dv), dtype=torch.float32, device=q.device)
        common = dict(DK=dk, DV=dv, CHUNK=chunk_size, BLOCK_C=block_c, BLOCK_DV=block_dv,
                      PRECISION=DOT_PRECISION[q.dtype], **_config(block_dk, block_dv))
        strides = _strides(q, k, v, d_o)
        with _device(q):
            _dq_kernel[(b * h, triton.cdiv(dk, dq_block_dk))](
                q, k, v, d_o, log_decay, initial_state if initial_state is not None else dh0, dq,
                *strides, h, n, BLOCK_DK=dq_block_dk, HAS_H0=initial_state is not None, **common)
            _dkdv_kernel[(b * h,)](
                q, k, v, d_o, log_decay, d_final if d_final is not None else dh0, dk_, dv_, dh0,
                *strides, h, n, triton.cdiv(n, chunk_size), BLOCK_DK=block_dk, HAS_DHT=d_final is not None,
                **common)
        return dq, dk_, dv_, None, (dh0 if initial_state is not None else None), None


def lightning_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Lightning attention o_t = sum_{s<=t} lambda_h^(t-s) (q_t . k_s) v_s (+ lambda_h^(t+1) q_t^T S_0), with
    Triton forward and backward kernels.

    q, k [B, T, H, Dk]; v [B, T, H, Dv] (note: T before H, unlike `kernels.reference`, which takes
    [B, H, T, D]); any strides (T x stride of T below 2^31). float32, float16 or bfloat16 (mixed inputs are
    promoted); CUDA tensors, or CPU tensors under TRITON_INTERPRET=1. Accumulation in float32.
    log_decay [H]: log lambda_h, finite and <= 0 (0 is plain linear attention); a constant: it gets no
    gradient (an error is raised if it requires one). initial_state [B, H, Dk, Dv] or None: S_0, any
    float dtype; it gets a gradient. chunk_size: any positive int (the kernels pad a chunk to a power of
    two >= 16; the result does not depend on it beyond rounding; large chunks cost registers on the GPU).

    Returns (o [B, T, H, Dv] in the inputs' dtype, final state S_T [B, H, Dk, Dv] in float32, or None
    unless output_final_state). Differentiable in q, k, v and initial_state (and through the final state).
    """
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be [B, T, H, Dk] and v [B, T, H, Dv] with the same B, T, H, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    b, n, h, dk = q.shape
    dv = v.shape[-1]
    if not (q.device == k.device == v.device == log_decay.device):
        raise ValueError(f"q, k, v, log_decay must share a device, got {q.device}, {k.device}, {v.device}, "
                         f"{log_decay.device}")
    if not INTERPRET and q.device.type != "cuda":
        raise ValueError(f"lightning_attention runs on CUDA tensors, got {q.device}; for CPU tensors set "
                         "TRITON_INTERPRET=1 before importing kernels.lightning_attention, or use "
                         "kernels.reference.chunked_decay_linear_attention")
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    if dtype not in DOT_PRECISION:
        raise ValueError(f"q, k, v must be float32, float16 or bfloat16, got {q.dtype}, {k.dtype}, {v.dtype} "
                         "(float64: use kernels.reference.chunked_decay_linear_attention)")
    if log_decay.shape != (h,):
        raise ValueError(f"log_decay must have shape [H] = [{h}], got {tuple(log_decay.shape)}")
    if log_decay.requires_grad and torch.is_grad_enabled():
        raise ValueError("lightning_attention gives no gradient for log_decay; pass log_decay.detach()")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if initial_state is not None:
        if initial_state.shape != (b, h, dk, dv):
            raise ValueError(f"initial_state must be [B, H, Dk, Dv] = {[b, h, dk, dv]}, "
                             f"got {list(initial_state.shape)}")
        if initial_state.device != q.device:
            raise ValueError(f"initial_state must be on {q.device}, got {initial_state.device}")
        initial_state = initial_state.to(torch.float32).contiguous()
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if max(q.stride(1), k.stride(1), v.stride(1)) * max(n, 1) >= 2**31 or b * n * h * max(dk, dv) >= 2**31:
        raise ValueError("T x (stride of T) and B*T*H*D must stay below 2^31 (32-bit row offsets in the kernels)")
    if n == 0:
        o = v.new_zeros(b, 0, h, dv)
        final = (initial_state if initial_state is not None else q.new_zeros(b, h, dk, dv, dtype=torch.float32))
        return o, (final if output_final_state else None)
    o, final = _LightningAttention.apply(q, k, v, log_decay.detach().to(torch.float32).contiguous(),
                                         initial_state, chunk_size)
    return o, (final if output_final_state else None)
