"""Triton decode-step kernels: one token's state update and readout of a recurrent mixer in one launch.

    decay_linear_step   S = lambda S + k v^T,                          o = scale S^T q
                        (Lightning Attention-2, arXiv 2401.04658: lambda per head; a scalar gate per token
                        as in simple GLA: lambda per (batch, head))
    gated_delta_step    S = alpha S,  S += beta k (v - S^T k)^T,       o = scale S^T q
                        (Gated DeltaNet, arXiv 2412.06464; alpha = 1 is DeltaNet)

The same numbers as `studio.mixers.lightning.Lightning.recurrent_step` and
`kernels.reference.delta_rule.delta_rule_step` (scale = 1), with the state S [B, H, Dk, Dv] kept in float32.
One program per (batch, head, d_v tile) holds the whole d_k x BLOCK_DV state tile in registers: every
column of S^T k and S^T q depends on that column of S only, so the tiles never talk to each other, and
`inplace=True` can overwrite the state tile by tile. No autograd (decoding only). CUDA tensors, or CPU
tensors under TRITON_INTERPRET=1 when that is set before this module is imported.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

__all__ = ["decay_linear_step", "gated_delta_step"]

# Read when the kernels are defined: triton.jit builds interpreted kernels only while this is set.
INTERPRET = triton.knobs.runtime.interpret
INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INTERPRET_BLOCK_DV = 16  # the fixed tile under the interpreter (autotuning needs a GPU)


@triton.jit
def _vector(ptr, b, h, stride_b, stride_h, stride_d, offs, n):
    """Row (b, h) of a [B, H, D] tensor at `offs` (< n) as float32, zero outside."""
    base = ptr + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
    return tl.load(base + offs.to(tl.int64) * stride_d, mask=offs < n, other=0.0).to(tl.float32)


@triton.jit
def _scalar(ptr, b, h, stride_b, stride_h):
    return tl.load(ptr + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h).to(tl.float32)


@triton.jit
def _state_ptrs(ptr, b, h, stride_b, stride_h, stride_k, stride_v, offs_k, offs_v):
    base = ptr + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
    return base + offs_k.to(tl.int64)[:, None] * stride_k + offs_v.to(tl.int64)[None, :] * stride_v


@triton.jit
def _step_tile(q_ptr, k_ptr, v_ptr, stride_qb, stride_qh, stride_qd, stride_kb, stride_kh, stride_kd,
               stride_vb, stride_vh, stride_vd, n_heads,
               DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr):
    """This program's (batch, head, d_v tile), shared by both step kernels: the flat index bh = b * H + h,
    b, h, the d_k and d_v offsets, the mask of the state tile, and q, k [BLOCK_DK], v [BLOCK_DV] as float32."""
    bh = tl.program_id(0)
    pid_v = tl.program_id(1)
    b, h = bh // n_heads, bh % n_heads
    offs_k = tl.arange(0, BLOCK_DK)
    offs_v = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    tile_mask = (offs_k[:, None] < DK) & (offs_v[None, :] < DV)
    q = _vector(q_ptr, b, h, stride_qb, stride_qh, stride_qd, offs_k, DK)
    k = _vector(k_ptr, b, h, stride_kb, stride_kh, stride_kd, offs_k, DK)
    v = _vector(v_ptr, b, h, stride_vb, stride_vh, stride_vd, offs_v, DV)
    return bh, b, h, offs_k, offs_v, tile_mask, q, k, v


@triton.jit
def _decay_linear_step_kernel(
        q_ptr, k_ptr, v_ptr, ld_ptr, s_ptr, o_ptr, ns_ptr,
        stride_qb, stride_qh, stride_qd, stride_kb, stride_kh, stride_kd, stride_vb, stride_vh, stride_vd,
        stride_ldb, stride_ldh,
        stride_sb, stride_sh, stride_sk, stride_sv, stride_nb, stride_nh, stride_nk, stride_nv,
        n_heads, bh_bucket, scale,
        DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
        HAS_STATE: tl.constexpr):
    bh, b, h, offs_k, offs_v, tile_mask, q, k, v = _step_tile(
        q_ptr, k_ptr, v_ptr, stride_qb, stride_qh, stride_qd, stride_kb, stride_kh, stride_kd,
        stride_vb, stride_vh, stride_vd, n_heads, DK, DV, BLOCK_DK, BLOCK_DV)
    state = k[:, None] * v[None, :]
    if HAS_STATE:
        decay = tl.exp(_scalar(ld_ptr, b, h, stride_ldb, stride_ldh))
        old = tl.load(_state_ptrs(s_ptr, b, h, stride_sb, stride_sh, stride_sk, stride_sv, offs_k, offs_v),
                      mask=tile_mask, other=0.0).to(tl.float32)
        state += decay * old
    out = tl.sum(q[:, None] * state, axis=0) * scale
    tl.store(o_ptr + bh.to(tl.int64) * DV + offs_v, out.to(o_ptr.dtype.element_ty), mask=offs_v < DV)
    tl.store(_state_ptrs(ns_ptr, b, h, stride_nb, stride_nh, stride_nk, stride_nv, offs_k, offs_v), state,
             mask=tile_mask)


@triton.jit
def _gated_delta_step_kernel(
        q_ptr, k_ptr, v_ptr, beta_ptr, la_ptr, s_ptr, o_ptr, ns_ptr,
        stride_qb, stride_qh, stride_qd, stride_kb, stride_kh, stride_kd, stride_vb, stride_vh, stride_vd,
        stride_bb, stride_bh, stride_lab, stride_lah,
        stride_sb, stride_sh, stride_sk, stride_sv, stride_nb, stride_nh, stride_nk, stride_nv,
        n_heads, bh_bucket, scale,
        DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
        HAS_STATE: tl.constexpr, HAS_ALPHA: tl.constexpr):
    bh, b, h, offs_k, offs_v, tile_mask, q, k, v = _step_tile(
        q_ptr, k_ptr, v_ptr, stride_qb, stride_qh, stride_qd, stride_kb, stride_kh, stride_kd,
        stride_vb, stride_vh, stride_vd, n_heads, DK, DV, BLOCK_DK, BLOCK_DV)
    beta = _scalar(beta_ptr, b, h, stride_bb, stride_bh)
    if HAS_STATE:
        state = tl.load(_state_ptrs(s_ptr, b, h, stride_sb, stride_sh, stride_sk, stride_sv, offs_k, offs_v),
                        mask=tile_mask, other=0.0).to(tl.float32)
        if HAS_ALPHA:
            state = state * tl.exp(_scalar(la_ptr, b, h, stride_lab, stride_lah))
        recalled = tl.sum(k[:, None] * state, axis=0)  # S^T k, this tile's columns
        state += k[:, None] * (beta * (v - recalled))[None, :]
    else:  # S = 0: nothing to decay or recall
        state = k[:, None] * (beta * v)[None, :]
    out = tl.sum(q[:, None] * state, axis=0) * scale
    tl.store(o_ptr + bh.to(tl.int64) * DV + offs_v, out.to(o_ptr.dtype.element_ty), mask=offs_v < DV)
    tl.store(_state_ptrs(ns_ptr, b, h, stride_nb, stride_nh, stride_nk, stride_nv, offs_k, offs_v), state,
             mask=tile_mask)


def _prune(configs, named_args, **kwargs):
    """Keep tiles no wider than d_v needs, with 8..64 state elements per thread (registers, no spills);
    if none fits (very large d_k), the config nearest 32 elements per thread."""
    block_dk, dv = kwargs["BLOCK_DK"], kwargs["DV"]
    widest = max(16, triton.next_power_of_2(dv))

    def per_thread(c):
        return block_dk * c.kwargs["BLOCK_DV"] / (32 * c.num_warps)

    narrow = [c for c in configs if c.kwargs["BLOCK_DV"] <= widest]
    kept = [c for c in narrow if 8 <= per_thread(c) <= 64]
    return kept or [min(narrow, key=lambda c: abs(math.log2(per_thread(c)) - 5))]


_CONFIGS = [triton.Config({"BLOCK_DV": bdv}, num_warps=w, num_stages=1)
            for bdv in (8, 16, 32, 64, 128) for w in (1, 2, 4, 8)]


class _KeepAliasedState:
    """Autotuning hooks: when the kernel updates the state in place (the old and new state are one tensor),
    save it before each timed run and put it back after, so that tuning does not apply the step many times.
    Nothing is copied for out-of-place calls (their runs are idempotent)."""

    def __init__(self):
        self.saved = None

    def pre(self, nargs, reset_only=False):
        if not reset_only and nargs.get("HAS_STATE") and nargs["s_ptr"].data_ptr() == nargs["ns_ptr"].data_ptr():
            self.saved = nargs["ns_ptr"].clone()

    def post(self, nargs, exception=None):
        if self.saved is not None:
            nargs["ns_ptr"].copy_(self.saved)
            self.saved = None


def _tuned(kernel, flags):
    """Autotuned on the GPU per d_k, d_v, B*H rounded up to a power of two (`bh_bucket`, used for nothing
    else), flags and dtypes. Under the interpreter the kernel itself, launched with a fixed tile."""
    if INTERPRET:
        return kernel
    hooks = _KeepAliasedState()
    return triton.autotune(_CONFIGS, key=["DK", "DV", "bh_bucket", *flags],
                           prune_configs_by={"early_config_prune": _prune}, pre_hook=hooks.pre,
                           post_hook=hooks.post)(kernel)


_DECAY_LINEAR = _tuned(_decay_linear_step_kernel, ["HAS_STATE"])
_GATED_DELTA = _tuned(_gated_delta_step_kernel, ["HAS_STATE", "HAS_ALPHA"])
_TUNED_OUT_OF_PLACE: set = set()  # launches whose config was tuned before their first in-place call


def _check_inputs(name, q, k, v, state, inplace, scalars: dict):
    """Shapes, devices, dtypes and grad mode (cheap on the happy path: it runs once per token and layer).
    scalars: name -> (tensor or None, allowed shapes as strings of "B" and "H"). Returns (B, H, Dk, Dv)."""
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)
            and q.dim() == 3 and v.dim() == 3 and k.shape == q.shape and v.shape[:2] == q.shape[:2]):
        shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in (q, k, v)]
        raise ValueError(f"{name}: q, k must be [B, H, Dk] and v [B, H, Dv] with the same B, H, got "
                         + ", ".join(map(str, shapes)))
    b, h, dk = q.shape
    dv = v.shape[2]
    if dk == 0 or dv == 0:
        raise ValueError(f"{name}: Dk and Dv must be positive, got Dk={dk}, Dv={dv}")
    named = [("q", q), ("k", k), ("v", v)]
    for key, (x, allowed) in scalars.items():
        if x is None:
            continue
        sizes = {"B": b, "H": h}
        shapes = {tuple(sizes[c] for c in spec): spec for spec in allowed}
        if not isinstance(x, torch.Tensor) or tuple(x.shape) not in shapes:
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            want = " or ".join(f"[{', '.join(spec)}] = {list(shape)}" for shape, spec in shapes.items())
            raise ValueError(f"{name}: {key} must have shape {want}, got {got}")
        if not x.is_floating_point():
            raise ValueError(f"{name}: {key} must be a floating-point tensor, got {x.dtype}")
        named.append((key, x))
    if state is not None:
        if not isinstance(state, torch.Tensor) or state.shape != (b, h, dk, dv):
            got = list(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
            raise ValueError(f"{name}: state must be [B, H, Dk, Dv] = {[b, h, dk, dv]} or None, got {got}")
        if not state.is_floating_point():
            raise ValueError(f"{name}: state must be a floating-point tensor, got {state.dtype}")
        named.append(("state", state))
    if inplace:
        if state is None:
            raise ValueError(f"{name}: inplace=True needs a state tensor to update, got state=None")
        if state.dtype != torch.float32:
            raise ValueError(f"{name}: inplace=True needs a float32 state (the state is kept in float32), "
                             f"got {state.dtype}")
    device = q.device
    if any(x.device != device for _, x in named):
        raise ValueError(f"{name}: all inputs must share a device, got "
                         + ", ".join(f"{key} on {x.device}" for key, x in named))
    if device.type != "cuda" and not INTERPRET:
        raise ValueError(f"{name} runs on CUDA tensors, got {device}; for CPU tensors set TRITON_INTERPRET=1 "
                         "before importing kernels.decode_step, or use the torch references "
                         "(kernels.reference.delta_rule.delta_rule_step, Lightning.recurrent_step)")
    for key, x in named[:3]:
        if x.dtype not in INPUT_DTYPES:
            raise ValueError(f"{name}: {key} must be float32, float16 or bfloat16, got {x.dtype} "
                             "(float64: use the torch references)")
    if torch.is_grad_enabled() and any(x.requires_grad for _, x in named):
        needing = ", ".join(key for key, x in named if x.requires_grad)
        raise RuntimeError(f"{name} is a decoding kernel without autograd, but {needing} require grad while "
                           "grad mode is on; call it under torch.no_grad() / torch.inference_mode() or pass "
                           "detached tensors")
    return b, h, dk, dv


def _launch(kernel, state, new_state, b, h, dk, dv, args, **constexprs):
    """args: the kernel's arguments in order (the new state is the last tensor among them)."""
    common = dict(DK=dk, DV=dv, BLOCK_DK=triton.next_power_of_2(dk), **constexprs)
    device = new_state.device
    switch = device.type == "cuda" and device.index != torch.cuda.current_device()
    with torch.cuda.device(device) if switch else contextlib.nullcontext():
        if INTERPRET:
            block_dv = min(INTERPRET_BLOCK_DV, triton.next_power_of_2(dv))
            kernel[(b * h, triton.cdiv(dv, block_dv))](*args, BLOCK_DV=block_dv, **common)
            return
        grid = lambda meta: (b * h, triton.cdiv(dv, meta["BLOCK_DV"]))  # noqa: E731
        if new_state is state:
            # Tune on a scratch state first: the in-place launch then finds its config and is timed never.
            key = (id(kernel), dk, dv, triton.next_power_of_2(b * h), *constexprs.items(),
                   *(str(x.dtype) for x in args if isinstance(x, torch.Tensor)))
            if key not in _TUNED_OUT_OF_PLACE:
                scratch = list(args)
                scratch[max(i for i, x in enumerate(args) if x is new_state)] = torch.empty_like(new_state)
                kernel[grid](*scratch, **common)
                _TUNED_OUT_OF_PLACE.add(key)
        kernel[grid](*args, **common)


def _outputs(v, state, inplace, b, h, dk, dv):
    """o (v's dtype) and the new state: `state` itself when in place, else a new float32 tensor; then the
    tensor the kernel reads the old state from (the new one stands in, never read, when there is none) and
    the strides of both."""
    o = torch.empty((b, h, dv), dtype=v.dtype, device=v.device)
    new_state = state if inplace else torch.empty((b, h, dk, dv), dtype=torch.float32, device=v.device)
    source = state if state is not None else new_state
    return o, new_state, source, (*source.stride(), *new_state.stride())


def decay_linear_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None,
    log_decay: torch.Tensor,
    scale: float = 1.0,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step of decayed linear attention: S = exp(log_decay) S + k v^T, then o = scale S^T q
    (the current token is in S before the readout, as in `Lightning.recurrent_step`).

    q, k [B, H, Dk]; v [B, H, Dv] (float32, float16 or bfloat16, any strides); state [B, H, Dk, Dv] (any
    float dtype, read as float32; any strides) or None (zeros); log_decay [H] (one decay per head:
    lightning, RetNet) or [B, H] (a scalar gate per token: simple GLA), any float dtype, <= 0 in practice.
    Returns (o [B, H, Dv] in v's dtype, new state [B, H, Dk, Dv] float32). With inplace=True the float32
    `state` is overwritten and returned (no allocation besides o); otherwise a new contiguous state.
    """
    if log_decay is None:
        raise ValueError("decay_linear_step: log_decay is required ([H] or [B, H]; zeros for no decay)")
    b, h, dk, dv = _check_inputs("decay_linear_step", q, k, v, state, inplace, {"log_decay": (log_decay, ["H", "BH"])})
    o, new_state, source, state_strides = _outputs(v, state, inplace, b, h, dk, dv)
    if b * h == 0:
        return o, new_state
    ld_strides = (0, log_decay.stride(0)) if log_decay.dim() == 1 else log_decay.stride()  # [H]: same for all b
    args = (q, k, v, log_decay, source, o, new_state, *q.stride(), *k.stride(), *v.stride(), *ld_strides,
            *state_strides, h, triton.next_power_of_2(b * h), float(scale))
    _launch(_DECAY_LINEAR, state, new_state, b, h, dk, dv, args, HAS_STATE=state is not None)
    return o, new_state


def gated_delta_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    log_alpha: torch.Tensor | None,
    state: torch.Tensor | None,
    scale: float = 1.0,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step of the (gated) delta rule, as `kernels.reference.delta_rule.delta_rule_step`:
    S = alpha S (alpha = exp(log_alpha); skipped when log_alpha is None), S += beta k (v - S^T k)^T,
    o = scale S^T q.

    q, k [B, H, Dk]; v [B, H, Dv] (float32, float16 or bfloat16, any strides); beta, log_alpha [B, H]
    (any float dtype, any strides); state [B, H, Dk, Dv] (any float dtype, read as float32; any strides) or
    None (zeros). Returns (o [B, H, Dv] in v's dtype, new state [B, H, Dk, Dv] float32). With inplace=True
    the float32 `state` is overwritten and returned (no allocation besides o); otherwise a new contiguous
    state.
    """
    if beta is None:
        raise ValueError("gated_delta_step: beta [B, H] is required")
    b, h, dk, dv = _check_inputs("gated_delta_step", q, k, v, state, inplace,
                                 {"beta": (beta, ["BH"]), "log_alpha": (log_alpha, ["BH"])})
    o, new_state, source, state_strides = _outputs(v, state, inplace, b, h, dk, dv)
    if b * h == 0:
        return o, new_state
    la = log_alpha if log_alpha is not None else beta  # a never-read stand-in
    args = (q, k, v, beta, la, source, o, new_state, *q.stride(), *k.stride(), *v.stride(), *beta.stride(),
            *la.stride(), *state_strides, h, triton.next_power_of_2(b * h), float(scale))
    _launch(_GATED_DELTA, state, new_state, b, h, dk, dv, args, HAS_STATE=state is not None,
            HAS_ALPHA=log_alpha is not None)
    return o, new_state
