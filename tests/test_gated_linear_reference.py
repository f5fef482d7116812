"""kernels.reference.gated_linear_attention: the chunked form equals the token-by-token recurrence for
vector and scalar gates, mild and strong decays, odd lengths and chunk sizes that do not divide T; the
effective pattern is the formula of REFERENCE.md section 1; special cases reduce to the fixed-decay op."""

import pytest
import torch

from kernels.reference.decay_linear_attention import chunked_decay_linear_attention
from kernels.reference.gated_linear_attention import (
    chunked_gated_linear_attention,
    gated_linear_attention_pattern,
    recurrent_gated_linear_attention,
)

B, H, DK, DV = 2, 3, 5, 7
GATE_SCALES = {"near-zero": 1e-3, "moderate": 1.0, "strong": 30.0}


def _inputs(seed, t, gate_dim, gate_scale):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, t, DK, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, H, t, DV, generator=g, dtype=torch.float64)
    log_gate = -gate_scale * torch.rand(B, H, t, gate_dim, generator=g, dtype=torch.float64)
    s0 = torch.randn(B, H, DK, DV, generator=g, dtype=torch.float64)
    return q, k, v, log_gate, s0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("t,chunk", [(1, 16), (63, 16), (130, 64), (37, 5), (64, 64), (17, 1)])
@pytest.mark.parametrize("gate_dim", [DK, 1])
@pytest.mark.parametrize("gate_scale", list(GATE_SCALES.values()), ids=list(GATE_SCALES))
def test_chunked_equals_recurrent(seed, t, chunk, gate_dim, gate_scale):
    q, k, v, log_gate, s0 = _inputs(seed, t, gate_dim, gate_scale)
    out, state = chunked_gated_linear_attention(q, k, v, log_gate, chunk, initial_state=s0)
    ref_out, ref_state = recurrent_gated_linear_attention(q, k, v, log_gate, initial_state=s0)
    assert torch.isfinite(out).all() and torch.isfinite(state).all()
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, ref_state, rtol=1e-10, atol=1e-10)


def test_extreme_gates_stay_finite_in_float32():
    """Log gates of -80 per token: exp(-b) of a whole chunk would overflow; log space relative to the
    chunk start keeps every exponent <= 0."""
    q, k, v, log_gate, _ = _inputs(0, 100, DK, 80.0)
    out, state = chunked_gated_linear_attention(*(x.float() for x in (q, k, v, log_gate)), chunk_size=32)
    ref, ref_state = recurrent_gated_linear_attention(*(x.float() for x in (q, k, v, log_gate)))
    assert torch.isfinite(out).all() and torch.isfinite(state).all()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state, ref_state, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gate_dim", [DK, 1])
@pytest.mark.parametrize("block", [4, 64])
def test_pattern_is_the_formula_and_reproduces_the_output(gate_dim, block):
    t = 11
    q, k, v, log_gate, _ = _inputs(3, t, gate_dim, 1.0)
    m = gated_linear_attention_pattern(q, k, log_gate, block_size=block)
    alpha = log_gate.exp().expand(B, H, t, DK)
    expected = torch.zeros(B, H, t, t, dtype=torch.float64)
    for ti in range(t):
        for si in range(ti + 1):
            decay = alpha[:, :, si + 1 : ti + 1].prod(dim=2)  # prod_{r=s+1..t} alpha_r
            expected[:, :, ti, si] = (q[:, :, ti] * k[:, :, si] * decay).sum(-1)
    torch.testing.assert_close(m, expected, rtol=1e-12, atol=1e-12)
    out, _ = chunked_gated_linear_attention(q, k, v, log_gate, chunk_size=4)
    torch.testing.assert_close(m @ v, out, rtol=1e-10, atol=1e-10)


def test_scalar_gate_equals_vector_gate_repeated_over_key_dims():
    q, k, v, log_gate, s0 = _inputs(4, 45, 1, 2.0)
    scalar, s_state = chunked_gated_linear_attention(q, k, v, log_gate, 8, initial_state=s0)
    vector, v_state = chunked_gated_linear_attention(q, k, v, log_gate.expand(B, H, 45, DK), 8, initial_state=s0)
    torch.testing.assert_close(scalar, vector, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s_state, v_state, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("decayed", [True, False])
def test_constant_gate_is_fixed_decay_linear_attention(decayed):
    """A gate constant over time is Lightning / RetNet's fixed decay; a gate of 1 is plain linear attention."""
    q, k, v, _, s0 = _inputs(5, 50, 1, 1.0)
    log_decay = -torch.rand(H, dtype=torch.float64) if decayed else torch.zeros(H, dtype=torch.float64)
    log_gate = log_decay[None, :, None, None].expand(B, H, 50, 1)
    out, state = chunked_gated_linear_attention(q, k, v, log_gate, 16, initial_state=s0)
    ref, ref_state = chunked_decay_linear_attention(q, k, v, log_decay if decayed else None, 16, initial_state=s0)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, ref_state, rtol=1e-10, atol=1e-10)


def test_gradients_are_finite_with_strong_gates():
    q, k, v, log_gate, _ = _inputs(6, 40, DK, 50.0)
    inputs = [x.clone().requires_grad_() for x in (q, k, v, log_gate)]
    out, state = chunked_gated_linear_attention(*inputs, chunk_size=16)
    (out.square().sum() + state.square().sum()).backward()
    for x in inputs:
        assert torch.isfinite(x.grad).all()
    ref_inputs = [x.clone().requires_grad_() for x in (q, k, v, log_gate)]
    ref_out, ref_state = recurrent_gated_linear_attention(*ref_inputs)
    (ref_out.square().sum() + ref_state.square().sum()).backward()
    for x, r in zip(inputs, ref_inputs):
        torch.testing.assert_close(x.grad, r.grad, rtol=1e-9, atol=1e-9)
