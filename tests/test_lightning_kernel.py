"""The Triton kernel kernels.lightning_attention (forward and backward) against the torch reference
kernels.reference.chunked_decay_linear_attention run in float64. Without a GPU the kernels run on CPU tensors
through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so sizes stay small and odd, in
float32; the bf16 test needs CUDA."""

import pytest
import torch

import kernel_testing  # before any kernel module: it skips this file without Triton
from kernel_testing import DEVICE, F64, needs_cuda, rel_rms

import kernels.lightning_attention as kernel_module
from kernels.lightning_attention import lightning_attention
from kernels.reference import chunked_decay_linear_attention, recurrent_decay_linear_attention

needs_kernel = kernel_testing.needs_kernel(kernel_module)
TOL = 5e-3
DECAYS = {
    "zero": [0.0, 0.0, 0.0],  # lambda = 1: plain linear attention, sums grow with T
    "strong": [-8.0, -20.0, -3.0],
    "mixed": [0.0, -0.3, -2.0],
}


def make_inputs(seed, b, t, h, dk, dv, decay, has_h0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, t, h, dk, generator=gen) for _ in range(2))
    v = torch.randn(b, t, h, dv, generator=gen)
    h0 = torch.randn(b, h, dk, dv, generator=gen) if has_h0 else None
    log_decay = torch.tensor(DECAYS[decay][:h])
    to = dict(device=DEVICE, dtype=dtype)
    return q.to(**to), k.to(**to), v.to(**to), log_decay.to(DEVICE), (h0.to(DEVICE) if has_h0 else None)


def reference(q, k, v, log_decay, h0):
    """float64 chunked reference in [B, T, H, D] layout, differentiable in q, k, v, h0."""
    o, state = chunked_decay_linear_attention(*(x.transpose(1, 2) for x in (q, k, v)), log_decay.to(F64), 16, h0)
    return o.transpose(1, 2), state


def oracle(q, k, v, g, scale=1.0, h0=None):
    """Token by token in float64: S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t; g [B, T, H]."""
    b, t, h, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1]) if h0 is None else h0
    outs = []
    for i in range(t):
        state = g[:, i, :, None, None].exp() * state + k[:, i, :, :, None] * v[:, i, :, None, :]
        outs.append(scale * (q[:, i, :, None, :] @ state)[..., 0, :])
    return torch.stack(outs, 1) if outs else v.new_zeros(b, 0, h, v.shape[-1]), state


def check_against_reference(q, k, v, log_decay, h0, chunk_size, tol=TOL, backward=True, **options):
    leaves = [x.detach().clone().requires_grad_(backward) for x in (q, k, v)]
    h0_leaf = h0.detach().clone().requires_grad_(backward) if h0 is not None else None
    o, state = lightning_attention(*leaves, log_decay, h0_leaf, output_final_state=True, chunk_size=chunk_size,
                                   **options)
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
    """Even seeds: one segment per sequence; odd seeds: segments of two chunks (the two-level scan)."""
    q, k, v, log_decay, h0 = make_inputs(seed, b, t, h, dk, dv, decay, has_h0)
    check_against_reference(q, k, v, log_decay, h0, chunk, segment_len=(2 * chunk if seed % 2 else 10**6))


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
    with pytest.raises(ValueError, match="gate must be"):
        lightning_attention(q, k, v, log_decay, gate=torch.zeros(1, 5, 3, device=DEVICE))
    with pytest.raises(ValueError, match="B = 1"):
        lightning_attention(q.expand(2, -1, -1, -1), k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1),
                            cu_seqlens=torch.tensor([0, 5], device=DEVICE))
    with pytest.raises(ValueError, match="rise from 0"):
        lightning_attention(q, k, v, cu_seqlens=torch.tensor([0, 3, 2, 5], device=DEVICE))
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


def gated_inputs(seed, b, t, h, d, strength):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, t, h, d, generator=gen) for _ in range(3))
    gate = torch.nn.functional.logsigmoid(torch.randn(b, t, h, generator=gen) + 2.0) * strength
    log_decay = -torch.rand(h, generator=gen)
    h0 = torch.randn(b, h, d, d, generator=gen)
    return [x.to(DEVICE) for x in (q, k, v, gate, log_decay, h0)]


def check_all_gradients(q, k, v, gate, log_decay, h0, scale, tol=TOL, cu_seqlens=None, **options):
    """Outputs, final state and the gradients of q, k, v, gate, log_decay and h0 against the float64 oracle
    (per sequence when packed)."""
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, gate, log_decay, h0)]
    o, state = lightning_attention(leaves[0], leaves[1], leaves[2], leaves[4], leaves[5], output_final_state=True,
                                   gate=leaves[3], scale=scale, cu_seqlens=cu_seqlens, **options)
    ref = [x.detach().to(F64).requires_grad_() for x in (q, k, v, gate, log_decay, h0)]
    g = ref[3] + ref[4]
    if cu_seqlens is None:
        ref_o, ref_state = oracle(ref[0], ref[1], ref[2], g, scale, ref[5])
    else:
        bounds = cu_seqlens.tolist()
        pieces = [oracle(ref[0][:, a:e], ref[1][:, a:e], ref[2][:, a:e], g[:, a:e], scale, ref[5][n:n + 1])
                  for n, (a, e) in enumerate(zip(bounds, bounds[1:]))]
        ref_o = torch.cat([p[0] for p in pieces], 1)
        ref_state = torch.cat([p[1] for p in pieces], 0)
    assert rel_rms(o, ref_o) <= tol and rel_rms(state, ref_state) <= tol, (rel_rms(o, ref_o), rel_rms(state, ref_state))
    gen = torch.Generator().manual_seed(99)
    d_o, d_state = torch.randn(o.shape, generator=gen).to(DEVICE, o.dtype), torch.randn(state.shape, generator=gen).to(DEVICE)
    torch.autograd.backward((o, state), (d_o, d_state))  # the oracle gets the same (rounded) output gradient
    torch.autograd.backward((ref_o, ref_state), (d_o.to(F64), d_state.to(F64)))
    errors = {name: rel_rms(leaf.grad, ref_leaf.grad)
              for name, leaf, ref_leaf in zip(["q", "k", "v", "gate", "log_decay", "h0"], leaves, ref)}
    assert max(errors.values()) <= tol, f"relative RMS errors of the gradients: {errors}"


@needs_kernel
@pytest.mark.parametrize("seed,b,t,chunk,segment_len,strength", [
    (20, 2, 37, 16, None, 1.0), (21, 1, 70, 16, 32, 1.0), (22, 2, 19, 8, 8, 5.0), (23, 1, 1, 16, None, 0.1)])
def test_per_token_gate_and_decay_gradients(seed, b, t, chunk, segment_len, strength):
    """The simple-GLA gate (plus the per-head decay) and a scale: every gradient, with and without segments."""
    check_all_gradients(*gated_inputs(seed, b, t, 3, 16, strength), scale=0.37, chunk_size=chunk,
                        segment_len=segment_len)


@needs_kernel
@pytest.mark.parametrize("lengths,segment_len", [([5, 17, 1, 30], None), ([33, 0, 8, 20], 16), ([64], 16)])
def test_variable_lengths_match_separate_sequences(lengths, segment_len):
    """Packed sequences (cu_seqlens) each with its own initial and final state, equal to running each alone."""
    n, total = len(lengths), sum(lengths)
    q, k, v, gate, log_decay, _ = gated_inputs(30 + n, 1, total, 2, 16, 1.0)
    h0 = torch.randn(n, 2, 16, 16, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), device=DEVICE)
    check_all_gradients(q, k, v, gate, log_decay, h0, 1.0, cu_seqlens=cu, chunk_size=16, segment_len=segment_len)


@needs_kernel
def test_segment_length_does_not_change_the_result():
    q, k, v, gate, log_decay, h0 = gated_inputs(40, 1, 90, 2, 16, 1.0)
    runs = [lightning_attention(q, k, v, log_decay, h0, True, 16, gate=gate, segment_len=s) for s in (16, 48, 1000)]
    for o, state in runs[1:]:
        assert rel_rms(o, runs[0][0]) <= 1e-5 and rel_rms(state, runs[0][1]) <= 1e-5


@needs_kernel
def test_half_precision_gate_gradients_keep_float32_accuracy():
    """fp16 inputs (the interpreter has no bf16): the gate gradients, q . dq - k . dk summed from the end,
    cancel; with half-precision products they were 20-200x less accurate than q's (d log_decay 7e-2)."""
    lengths = [90, 20, 150, 1]
    q, k, v, gate, log_decay, _ = gated_inputs(51, 1, sum(lengths), 2, 32, 1.0)
    h0 = torch.randn(len(lengths), 2, 32, 32, generator=torch.Generator().manual_seed(5)).to(DEVICE) * 0.1
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), device=DEVICE)
    check_all_gradients((q * 0.1).half(), (k * 0.1).half(), v.half(), gate, log_decay, h0, 1.0, tol=2e-3,
                        cu_seqlens=cu, chunk_size=16, segment_len=64)


@needs_cuda
def test_bf16_cuda_gate_varlen_segments():
    """bf16 on the GPU: gate, packed sequences and the two-level scan at D = 128 against the float64 oracle."""
    lengths = [700, 64, 1500, 1]
    q, k, v, gate, log_decay, _ = gated_inputs(50, 1, sum(lengths), 2, 128, 1.0)
    q, k = q * 0.1, k * 0.1
    h0 = torch.randn(len(lengths), 2, 128, 128, device=DEVICE) * 0.1
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), device=DEVICE)
    check_all_gradients(q.bfloat16(), k.bfloat16(), v.bfloat16(), gate, log_decay, h0, 1.0, tol=2e-2,
                        cu_seqlens=cu, chunk_size=64, segment_len=256)
