"""The Triton decode-step kernels (kernels.decode_step) against the torch references run in float64:
`Lightning.recurrent_step` (per-head decay), its per-token-gate form, `delta_rule_step`, and over a rollout
`recurrent_decay_linear_attention` / `recurrent_delta_rule`. Without a GPU the kernels run on CPU tensors
through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so sizes stay small and odd, in
float32; the bf16 test needs CUDA."""

from types import SimpleNamespace

import pytest
import torch

import kernel_testing  # before any kernel module: it skips this file without Triton
from kernel_testing import DEVICE, F64, needs_cuda, rel_rms

import kernels.decode_step as kernel_module
from kernels.decode_step import decay_linear_step, gated_delta_step
from kernels.reference.decay_linear_attention import recurrent_decay_linear_attention
from kernels.reference.delta_rule import delta_rule_step, recurrent_delta_rule
from studio.mixers.lightning import Lightning

needs_kernel = kernel_testing.needs_kernel(kernel_module)
TOL = 5e-3


def make_inputs(seed, b, h, dk, dv, steps=None, dtype=torch.float32, normalize_k=False):
    """q, k [B, H, (T,) Dk], v [B, H, (T,) Dv], state [B, H, Dk, Dv] float32, per-head log decay [H] float64
    (as Lightning's buffer), per-token log gates and betas [B, H, (T,)]."""
    gen = torch.Generator().manual_seed(seed)
    t = () if steps is None else (steps,)
    q = torch.randn(b, h, *t, dk, generator=gen)
    k = torch.randn(b, h, *t, dk, generator=gen)
    if normalize_k:  # as Gated DeltaNet does: keeps I - beta k k^T a contraction over a rollout
        k = torch.nn.functional.normalize(k, dim=-1)
    v = torch.randn(b, h, *t, dv, generator=gen)
    state = torch.randn(b, h, dk, dv, generator=gen)
    head_decay = -torch.rand(h, generator=gen, dtype=F64) * 2
    head_decay[0] = 0.0  # lambda = 1, as MiniMax's head 0
    token_gate = -torch.rand(b, h, *t, generator=gen) * 2
    beta = torch.rand(b, h, *t, generator=gen)
    to = dict(device=DEVICE, dtype=dtype)
    return SimpleNamespace(q=q.to(**to), k=k.to(**to), v=v.to(**to), state=state.to(DEVICE),
                           head_decay=head_decay.to(DEVICE), token_gate=token_gate.to(DEVICE), beta=beta.to(DEVICE))


def f64(x):
    return None if x is None else x.detach().to(F64)


def lightning_reference(q, k, v, state, log_decay, scale=1.0):
    """Lightning.recurrent_step itself (per-head decay [H]), or its form with a gate per token [B, H]."""
    q, k, v, state, log_decay = map(f64, (q, k, v, state, log_decay))
    if log_decay.dim() == 1:
        o, new_state = Lightning.recurrent_step(SimpleNamespace(log_decay=log_decay), q, k, v, state)
        return scale * o, new_state
    new_state = k[..., :, None] * v[..., None, :]
    if state is not None:
        new_state = new_state + log_decay.exp()[..., None, None] * state
    return scale * (q[..., None, :] @ new_state)[..., 0, :], new_state


def delta_reference(q, k, v, beta, log_alpha, state, scale=1.0):
    o, new_state = delta_rule_step(*map(f64, (q, k, v, beta, log_alpha, state)))
    return scale * o, new_state


def check(out, ref, dtype=torch.float32, tol=TOL):
    (o, state), (ref_o, ref_state) = out, ref
    assert o.dtype == dtype and state.dtype == torch.float32
    assert o.shape == ref_o.shape and state.shape == ref_state.shape
    assert rel_rms(o, ref_o) <= tol, rel_rms(o, ref_o)
    assert rel_rms(state, ref_state) <= tol, rel_rms(state, ref_state)


# (seed, B, H, Dk, Dv, with a state, scale): odd sizes, several d_v tiles under the interpreter (tile 16)
SIZES = [
    (0, 1, 3, 24, 24, True, 1.0),
    (1, 2, 3, 16, 40, True, 0.25),
    (2, 2, 1, 24, 24, False, 1.0),
    (3, 1, 3, 16, 40, False, 0.5),
    (4, 3, 2, 5, 3, True, 1.0),
]


@needs_kernel
@pytest.mark.parametrize("per_token", [False, True], ids=["per_head", "per_token"])
@pytest.mark.parametrize("seed,b,h,dk,dv,has_state,scale", SIZES)
def test_decay_linear_step_matches_reference(seed, b, h, dk, dv, has_state, scale, per_token):
    x = make_inputs(seed, b, h, dk, dv)
    state = x.state if has_state else None
    log_decay = x.token_gate if per_token else x.head_decay
    check(decay_linear_step(x.q, x.k, x.v, state, log_decay, scale=scale),
          lightning_reference(x.q, x.k, x.v, state, log_decay, scale))


@needs_kernel
@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated_delta"])
@pytest.mark.parametrize("seed,b,h,dk,dv,has_state,scale", SIZES)
def test_gated_delta_step_matches_reference(seed, b, h, dk, dv, has_state, scale, gated):
    x = make_inputs(seed + 100, b, h, dk, dv)
    state = x.state if has_state else None
    log_alpha = x.token_gate if gated else None
    check(gated_delta_step(x.q, x.k, x.v, x.beta, log_alpha, state, scale=scale),
          delta_reference(x.q, x.k, x.v, x.beta, log_alpha, state, scale))


@needs_kernel
def test_inplace_updates_the_given_state_and_out_of_place_leaves_it():
    x = make_inputs(5, 2, 3, 24, 24)
    ref = lightning_reference(x.q, x.k, x.v, x.state, x.head_decay)
    before = x.state.clone()
    o, new_state = decay_linear_step(x.q, x.k, x.v, x.state, x.head_decay)
    assert new_state is not x.state and torch.equal(x.state, before)
    check((o, new_state), ref)
    buffer = x.state
    pointer = buffer.data_ptr()
    o, new_state = decay_linear_step(x.q, x.k, x.v, buffer, x.head_decay, inplace=True)
    assert new_state is buffer and buffer.data_ptr() == pointer
    check((o, buffer), ref)

    x = make_inputs(6, 2, 3, 16, 40)
    ref = delta_reference(x.q, x.k, x.v, x.beta, x.token_gate, x.state)
    buffer = x.state
    o, new_state = gated_delta_step(x.q, x.k, x.v, x.beta, x.token_gate, buffer, inplace=True)
    assert new_state is buffer
    check((o, buffer), ref)


@needs_kernel
def test_decay_linear_rollout_matches_recurrent_reference():
    """9 steps, the state updated in place each step, against recurrent_decay_linear_attention."""
    x = make_inputs(7, 2, 3, 24, 24, steps=9)
    ref_o, ref_state = recurrent_decay_linear_attention(*map(f64, (x.q, x.k, x.v, x.head_decay, x.state)))
    state = x.state.clone()
    outputs = []
    for t in range(9):
        o, returned = decay_linear_step(x.q[:, :, t], x.k[:, :, t], x.v[:, :, t], state, x.head_decay, inplace=True)
        assert returned is state
        outputs.append(o)
    assert rel_rms(torch.stack(outputs, 2), ref_o) <= TOL
    assert rel_rms(state, ref_state) <= TOL


@needs_kernel
@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated_delta"])
def test_delta_rollout_matches_recurrent_reference(gated):
    """9 steps from no state, out of place then in place, against recurrent_delta_rule."""
    x = make_inputs(8 + gated, 2, 3, 16, 40, steps=9, normalize_k=True)
    log_alpha = x.token_gate if gated else None
    ref_o, ref_state = recurrent_delta_rule(*map(f64, (x.q, x.k, x.v, x.beta, log_alpha)))
    state, outputs = None, []
    for t in range(9):
        gate = None if log_alpha is None else log_alpha[:, :, t]
        o, state = gated_delta_step(x.q[:, :, t], x.k[:, :, t], x.v[:, :, t], x.beta[:, :, t], gate, state,
                                    inplace=state is not None)
        outputs.append(o)
    assert rel_rms(torch.stack(outputs, 2), ref_o) <= TOL
    assert rel_rms(state, ref_state) <= TOL


@needs_kernel
def test_strided_inputs_and_low_precision_state():
    """q, k, v as slices of one fused projection; a non-contiguous state updated in place; a bf16 state
    read as float32 out of place."""
    gen = torch.Generator().manual_seed(10)
    b, h, dk, dv = 2, 3, 16, 24
    fused = torch.randn(b, 2 * dk + dv, h, generator=gen).to(DEVICE).transpose(1, 2)  # [B, H, 2Dk+Dv], strided
    q, k, v = fused[..., :dk], fused[..., dk:2 * dk], fused[..., 2 * dk:]
    k = k / k.norm(dim=-1, keepdim=True)
    beta = torch.rand(h, b, generator=gen).to(DEVICE).t()  # [B, H], transposed strides
    gate = -torch.rand(b, h, generator=gen).to(DEVICE)
    storage = torch.randn(b, h, dv, dk, generator=gen).to(DEVICE)
    state = storage.transpose(-1, -2)  # [B, H, Dk, Dv], not contiguous
    ref = delta_reference(q, k, v, beta, gate, state)
    o, new_state = gated_delta_step(q, k, v, beta, gate, state, inplace=True)
    assert new_state is state
    check((o, storage.transpose(-1, -2)), ref)

    half_state = torch.randn(b, h, dk, dv, generator=gen).to(DEVICE, torch.bfloat16)
    ref = lightning_reference(q, k, v, half_state, gate)
    o, new_state = decay_linear_step(q, k, v, half_state, gate)
    assert new_state.is_contiguous()
    check((o, new_state), ref)


@needs_kernel
def test_fp16_inputs_and_empty_batch():
    x = make_inputs(11, 2, 3, 24, 24, dtype=torch.float16)
    check(decay_linear_step(x.q, x.k, x.v, x.state, x.head_decay),
          lightning_reference(x.q, x.k, x.v, x.state, x.head_decay), dtype=torch.float16)
    o, state = gated_delta_step(x.q[:0], x.k[:0], x.v[:0], x.beta[:0], None, None)
    assert o.shape == (0, 3, 24) and state.shape == (0, 3, 24, 24) and state.dtype == torch.float32


@needs_kernel
def test_bad_inputs():
    x = make_inputs(12, 2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"q, k must be \[B, H, Dk\]"):
        decay_linear_step(x.q, x.k[:, :2], x.v, None, x.head_decay)
    with pytest.raises(ValueError, match=r"q, k must be \[B, H, Dk\]"):
        gated_delta_step(x.q[0], x.k[0], x.v[0], x.beta[0], None, None)
    with pytest.raises(ValueError, match="log_decay must have shape"):
        decay_linear_step(x.q, x.k, x.v, None, x.head_decay[:2])
    with pytest.raises(ValueError, match="log_decay is required"):
        decay_linear_step(x.q, x.k, x.v, None, None)
    with pytest.raises(ValueError, match="beta must have shape"):
        gated_delta_step(x.q, x.k, x.v, x.beta[..., None], None, None)
    with pytest.raises(ValueError, match="log_alpha must have shape"):
        gated_delta_step(x.q, x.k, x.v, x.beta, x.head_decay, None)
    with pytest.raises(ValueError, match=r"state must be \[B, H, Dk, Dv\]"):
        gated_delta_step(x.q, x.k, x.v, x.beta, None, x.state[..., :7])
    with pytest.raises(ValueError, match="inplace=True needs a state"):
        decay_linear_step(x.q, x.k, x.v, None, x.head_decay, inplace=True)
    with pytest.raises(ValueError, match="inplace=True needs a float32 state"):
        gated_delta_step(x.q, x.k, x.v, x.beta, None, x.state.half(), inplace=True)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        decay_linear_step(x.q.double(), x.k, x.v, None, x.head_decay)
    with pytest.raises(ValueError, match="Dk and Dv must be positive"):
        gated_delta_step(x.q[..., :0], x.k[..., :0], x.v, x.beta, None, None)
    q = x.q.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="without autograd.*q"):
        decay_linear_step(q, x.k, x.v, x.state, x.head_decay)
    with torch.no_grad():
        decay_linear_step(q, x.k, x.v, x.state, x.head_decay)  # fine without grad mode
    with pytest.raises(RuntimeError, match="without autograd.*state"):
        gated_delta_step(x.q, x.k, x.v, x.beta, None, x.state.clone().requires_grad_())


@needs_cuda
@pytest.mark.parametrize("inplace", [False, True])
def test_bf16_cuda(inplace):
    """bf16 inputs at a decoding size, float32 state, against float64 on the same bf16-rounded inputs."""
    x = make_inputs(13, 4, 8, 128, 128, dtype=torch.bfloat16, normalize_k=True)
    state = x.state.clone()
    check(decay_linear_step(x.q, x.k, x.v, state, x.token_gate, scale=128**-0.5, inplace=inplace),
          lightning_reference(x.q, x.k, x.v, x.state, x.token_gate, 128**-0.5), dtype=torch.bfloat16, tol=1e-2)
    state = x.state.clone()
    check(gated_delta_step(x.q, x.k, x.v, x.beta, x.token_gate, state, scale=128**-0.5, inplace=inplace),
          delta_reference(x.q, x.k, x.v, x.beta, x.token_gate, x.state, 128**-0.5), dtype=torch.bfloat16, tol=1e-2)
