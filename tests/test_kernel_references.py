"""kernels.reference: the block-wise (Lightning-2) form equals the token-by-token recurrence."""

import pytest
import torch

from kernels.reference import chunked_decay_linear_attention, recurrent_decay_linear_attention


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("t,block", [(1, 64), (63, 16), (130, 64), (37, 5), (64, 64)])
@pytest.mark.parametrize("decayed", [True, False])
def test_chunked_equals_recurrent(seed, t, block, decayed):
    g = torch.Generator().manual_seed(seed)
    b, h, dk, dv = 2, 3, 5, 7
    q, k = (torch.randn(b, h, t, dk, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(b, h, t, dv, generator=g, dtype=torch.float64)
    log_decay = -torch.rand(h, generator=g, dtype=torch.float64) if decayed else None
    s0 = torch.randn(b, h, dk, dv, generator=g, dtype=torch.float64)
    out, state = chunked_decay_linear_attention(q, k, v, log_decay, block, initial_state=s0)
    ref_out, ref_state = recurrent_decay_linear_attention(q, k, v, log_decay, initial_state=s0)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, ref_state, rtol=1e-10, atol=1e-10)
