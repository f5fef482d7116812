"""The Triton kernel kernels.lightning_attention (forward and backward) against the torch reference
kernels.reference.chunked_decay_linear_attention run in float64. Without a GPU the kernels run on CPU tensors
through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so sizes stay small and odd, in
float32; the bf16 test needs CUDA."""

import pytest
import torch

pytest.importorskip("triton")

import kernels.lightning_attention as kernel_module  # noqa: E402
from kernels.lightning_attention import lightning_attention  # noqa: E402
from kernels.reference import chunked_decay_linear_attention, recurrent_decay_linear_attention  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
needs_kernel = pytest.mark.skipif(not CUDA and not kernel_module.INTERPRET,
                                  reason="no GPU, and the kernels were defined without TRITON_INTERPRET=1")
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
F64 = torch.float64
TOL = 5e-3
DECAYS = {
    "zero": [0.0, 0.0, 0.0],  # lambda = 1: plain linear attention, sums grow with T
    "strong": [-8.0, -20.0, -3.0],
    "mixed": [0.0, -0.3, -2.0],
}


def rel_rms(x, ref):
    x, ref = x.detach().to("cpu", F64), ref.detach().to("cpu", F64)
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def make_inputs(seed, b, t, h, dk, dv, decay, has_h0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, t, h, dk, generator=gen) for _ in range(2))
    v = torch.randn(b, t, h, dv, generator=gen)
    h0 = torch.randn(b, h, dk, dv, generator=gen) if has_h0 else None
    log_decay = torch.tensor(DECAYS[decay][:h])
    to = dict(device=DEVICE, dtype=dtype)
    return q.to(**to), k.to(**to), v.to(**to), log_decay.to(DEVICE), (h0.to(DEVICE) if has_h0 else None)


def reference(q, k, v, log_decay, h0):
    """float64 reference in [B, T, H, D] layout, differentiable in q, k, v, h0."""
    o, state = chunked_decay_linear_attention(*(x.transpose(1, 2) for x in (q, k, v)), log_decay.to(F64), 16, h0)
    return o.transpose(1, 2), state


def check_against_reference(q, k, v, log_decay, h0, chunk_size, tol=TOL, backward=True):
    leaves = [x.detach().clone().requires_grad_(backward) for x in (q, k, v)]
    h0_leaf = h0.detach().clone().requires_grad_(backward) if h0 is not None else None
    o, state = lightning_attention(*leaves, log_decay, h0_leaf, output_final_state=True, chunk_size=chunk_size)
    assert o.dtype == q.dtype and o.shape == v.shape and state.dtype == torch.float32
    ref_leaves = [x.detach().to(F64).requires_grad_(backward) for x in (q, k, v)]
    ref_h0 = h0.detach().to(F64).requires_grad_(backward) if h0 is not None else None
    ref_o, ref_state = reference(*ref_leaves, log_decay, ref_h0)
    assert rel_rms(o, ref_o) <= tol, rel_rms(o, ref_o)
    assert rel_rms(state, ref_state) <= tol, rel_rms(state, ref_state)
    if not backward:
        return
    gen = torch.Generator().manual_seed(123)
    d_o = torch.randn(o.shape, generator=gen).to(DEVICE)
    d_state = torch.randn(state.shape, generator=gen).to(DEVICE)
    torch.autograd.backward((o, state), (d_o.to(o.dtype), d_state))
    torch.autograd.backward((ref_o, ref_state), (d_o.to(o.dtype).to(F64), d_state.to(F64)))
    pairs = list(zip("qkv", leaves, ref_leaves)) + ([("h0", h0_leaf, ref_h0)] if h0 is not None else [])
    for name, leaf, ref_leaf in pairs:
        assert leaf.grad.dtype == leaf.dtype
        err = rel_rms(leaf.grad, ref_leaf.grad)
        assert err <= tol, f"d{name}: relative RMS error {err}"


# (seed, B, T, H, Dk, Dv, chunk_size, initial state, decay): odd T, chunks that do not divide T
CASES = [
    (0, 1, 1, 2, 8, 8, 16, False, "mixed"),
    (1, 2, 1, 3, 16, 16, 64, True, "strong"),
    (2, 1, 7, 2, 8, 8, 3, True, "zero"),
    (3, 2, 7, 3, 16, 8, 16, False, "strong"),
    (4, 1, 37, 3, 8, 8, 16, True, "mixed"),
    (5, 2, 37, 2, 16, 16, 5, False, "zero"),
    (6, 1, 37, 2, 8, 16, 32, True, "strong"),
    (7, 1, 70, 3, 16, 16, 16, True, "zero"),
    (8, 1, 70, 2, 8, 8, 24, False, "mixed"),
    (9, 2, 70, 3, 16, 16, 64, True, "strong"),
    (10, 1, 7, 2, 8, 8, 1, True, "strong"),
]


@needs_kernel
@pytest.mark.parametrize("seed,b,t,h,dk,dv,chunk,has_h0,decay", CASES)
def test_matches_reference_fp32(seed, b, t, h, dk, dv, chunk, has_h0, decay):
    q, k, v, log_decay, h0 = make_inputs(seed, b, t, h, dk, dv, decay, has_h0)
    check_against_reference(q, k, v, log_decay, h0, chunk)


@needs_kernel
def test_matches_recurrent_oracle():
    q, k, v, log_decay, h0 = make_inputs(11, 1, 23, 3, 8, 8, "mixed", True)
    o, state = lightning_attention(q, k, v, log_decay, h0, output_final_state=True, chunk_size=8)
    ref_o, ref_state = recurrent_decay_linear_attention(*(x.transpose(1, 2).to(F64) for x in (q, k, v)),
                                                        log_decay.to(F64), h0.to(F64))
    assert rel_rms(o, ref_o.transpose(1, 2)) <= TOL and rel_rms(state, ref_state) <= TOL


@needs_kernel
def test_strided_inputs_and_no_final_state():
    """q, k, v as non-dense slices of one fused tensor; the final state not returned (no state gradient)."""
    gen = torch.Generator().manual_seed(12)
    fused = torch.randn(2, 19, 3, 3 * 8, generator=gen).to(DEVICE).requires_grad_()
    q, k, v = fused[..., :8], fused[..., 8:16], fused[..., 16:]
    log_decay = torch.tensor(DECAYS["mixed"]).to(DEVICE)
    o, state = lightning_attention(q, k, v, log_decay, chunk_size=7)
    assert state is None
    d_o = torch.randn(o.shape, generator=gen).to(DEVICE)
    (o * d_o).sum().backward()
    ref_fused = fused.detach().to(F64).requires_grad_()
    ref_o, _ = reference(ref_fused[..., :8], ref_fused[..., 8:16], ref_fused[..., 16:], log_decay, None)
    (ref_o * d_o.to(F64)).sum().backward()
    assert rel_rms(o, ref_o) <= TOL
    assert rel_rms(fused.grad, ref_fused.grad) <= TOL


@needs_kernel
def test_initial_state_gradient_without_final_state_gradient():
    q, k, v, log_decay, h0 = make_inputs(17, 1, 29, 2, 8, 8, "mixed", True)
    h0 = h0.requires_grad_()
    o, _ = lightning_attention(q, k, v, log_decay, h0, chunk_size=9)
    o.sum().backward()
    ref_h0 = h0.detach().to(F64).requires_grad_()
    reference(q.to(F64), k.to(F64), v.to(F64), log_decay, ref_h0)[0].sum().backward()
    assert rel_rms(h0.grad, ref_h0.grad) <= TOL


@needs_kernel
def test_fp16_inputs():
    """fp16 loads are exact and converted to float32; the only error is the fp16 rounding of the outputs."""
    q, k, v, log_decay, h0 = make_inputs(13, 1, 21, 2, 16, 16, "mixed", True, dtype=torch.float16)
    check_against_reference(q, k, v, log_decay, h0, 8, tol=2e-3)


@needs_kernel
def test_empty_sequence_and_errors():
    q, k, v, log_decay, h0 = make_inputs(14, 1, 0, 2, 8, 8, "mixed", True)
    o, state = lightning_attention(q, k, v, log_decay, h0, output_final_state=True)
    assert o.shape == (1, 0, 2, 8) and torch.equal(state, h0)
    q, k, v, log_decay, _ = make_inputs(15, 1, 5, 2, 8, 8, "mixed", False)
    with pytest.raises(ValueError, match="log_decay must have shape"):
        lightning_attention(q, k, v, log_decay[:1])
    with pytest.raises(ValueError, match="q, k must be"):
        lightning_attention(q, k[:, :4], v, log_decay)
    with pytest.raises(ValueError, match="chunk_size"):
        lightning_attention(q, k, v, log_decay, chunk_size=0)
    with pytest.raises(ValueError, match="initial_state"):
        lightning_attention(q, k, v, log_decay, torch.zeros(1, 2, 8, 7, device=DEVICE))
    with pytest.raises(ValueError, match="no gradient for log_decay"):
        lightning_attention(q, k, v, log_decay.clone().requires_grad_())
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        lightning_attention(q.double(), k.double(), v.double(), log_decay)


@needs_cuda
@pytest.mark.parametrize("has_h0", [False, True])
def test_bf16_cuda(has_h0):
    """bf16 on the GPU at a realistic size, against float64 on the same bf16-rounded inputs."""
    q, k, v, log_decay, h0 = make_inputs(16, 2, 301, 4, 64, 64, "mixed", has_h0, dtype=torch.bfloat16)
    log_decay = torch.tensor([0.0, -0.05, -0.5, -4.0], device=DEVICE)
    q, k = q * 0.25, k * 0.25  # keep lambda = 1 sums moderate
    check_against_reference(q, k, v, log_decay, h0, 64, tol=1e-2)
