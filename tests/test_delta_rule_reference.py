"""kernels/reference/delta_rule.py: the chunked (UT transform) form equals the token-by-token
recurrence, with and without the per-token decay, and the effective pattern is REFERENCE.md's formula."""

import pytest
import torch
import torch.nn.functional as F

from kernels.reference.delta_rule import chunked_delta_rule, delta_rule_pattern, recurrent_delta_rule


def _inputs(seed, t, b=2, h=3, dk=5, dv=7):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, dk, generator=g, dtype=torch.float64)
    k = F.normalize(torch.randn(b, h, t, dk, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(b, h, t, dv, generator=g, dtype=torch.float64)
    beta = torch.rand(b, h, t, generator=g, dtype=torch.float64)
    log_alpha = -torch.rand(b, h, t, generator=g, dtype=torch.float64)
    state = torch.randn(b, h, dk, dv, generator=g, dtype=torch.float64)
    return q, k, v, beta, log_alpha, state


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("t,chunk", [(1, 64), (63, 16), (130, 64), (37, 5), (64, 64), (50, 7), (3, 1)])
@pytest.mark.parametrize("decayed", [True, False])
def test_chunked_equals_recurrent(seed, t, chunk, decayed):
    q, k, v, beta, log_alpha, s0 = _inputs(seed, t)
    log_alpha = log_alpha if decayed else None
    out, state = chunked_delta_rule(q, k, v, beta, log_alpha, chunk, initial_state=s0)
    ref_out, ref_state = recurrent_delta_rule(q, k, v, beta, log_alpha, initial_state=s0)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, ref_state, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("decayed", [True, False])
def test_chunked_gradients_equal_recurrent_gradients(decayed):
    inputs = [x.requires_grad_() for x in _inputs(3, 19)]
    q, k, v, beta, log_alpha, s0 = inputs
    gate = log_alpha if decayed else None
    grads = []
    for out, state in (chunked_delta_rule(q, k, v, beta, gate, 6, s0), recurrent_delta_rule(q, k, v, beta, gate, s0)):
        grads.append(torch.autograd.grad(out.square().sum() + state.sin().sum(), inputs, allow_unused=True))
    for a, b in zip(*grads):  # log_alpha unused (None) in both when not decayed
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("decayed", [True, False])
def test_pattern_is_the_reference_formula(seed, decayed):
    """M[t, s] = beta_s k_s^T P(s+1..t) q_t, P = prod_{r=s+1..t} alpha_r (I - beta_r k_r k_r^T), increasing r."""
    t_len, dk = 9, 5
    q, k, v, beta, log_alpha, _ = _inputs(seed, t_len, dk=dk)
    alpha = log_alpha.exp() if decayed else torch.ones_like(beta)
    pattern = delta_rule_pattern(q, k, beta, log_alpha if decayed else None, chunk_size=4)
    eye = torch.eye(dk, dtype=torch.float64)
    expected = torch.zeros_like(pattern)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for t in range(t_len):
                for s in range(t + 1):
                    product = eye
                    for r in range(s + 1, t + 1):
                        kr = k[b, h, r]
                        product = product @ (alpha[b, h, r] * (eye - beta[b, h, r] * torch.outer(kr, kr)))
                    expected[b, h, t, s] = beta[b, h, s] * k[b, h, s] @ product @ q[b, h, t]
    torch.testing.assert_close(pattern, expected, rtol=1e-12, atol=1e-12)
    assert torch.all(pattern.triu(1) == 0)


@pytest.mark.parametrize("t,chunk", [(1, 4), (23, 4), (40, 64)])
def test_pattern_times_values_is_the_output(t, chunk):
    q, k, v, beta, log_alpha, _ = _inputs(4, t)
    for gate in (log_alpha, None):
        pattern = delta_rule_pattern(q, k, beta, gate, chunk)
        torch.testing.assert_close(pattern @ v, recurrent_delta_rule(q, k, v, beta, gate)[0], rtol=1e-10, atol=1e-10)
