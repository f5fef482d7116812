"""The mixer contract, for every registered mixer: the parallel forward, the token-by-token step and
the effective pattern (z = M @ v) are one function; outputs are causal; gradients flow."""

import pytest
import torch

from mixer_cases import CASES, make_mixer, run_steps

LENGTHS = [1, 63, 130]
SEEDS = [0, 1, 2]


def _mixer(case, seed):
    torch.manual_seed(seed)
    mixer = make_mixer(case).double()
    for p in mixer.parameters():  # non-trivial weights everywhere (norm scales, conv, gates)
        torch.nn.init.normal_(p, std=0.3)
    return mixer


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("seed", SEEDS)
def test_forward_step_and_pattern_agree(case, length, seed):
    mixer = _mixer(case, seed)
    x = torch.randn(2, length, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 100))
    parallel = mixer(x)
    stepped, _ = run_steps(mixer, x)
    torch.testing.assert_close(stepped, parallel, rtol=1e-5, atol=1e-5)

    seen = {}
    hooks = [(f"hook_{n}", lambda t, hook, n=n: seen.__setitem__(n, t)) for n in ("pattern", "z", "v")]
    for name, fn in hooks:
        getattr(mixer, name).add_hook(fn)
    via_pattern = mixer(x)
    for name, _ in hooks:
        getattr(mixer, name).remove_hooks()
    torch.testing.assert_close(via_pattern, parallel, rtol=1e-5, atol=1e-5)
    pattern, z, v = seen["pattern"], seen["z"], seen["v"]
    assert pattern.shape == (2, 4, length, length)
    v = mixer.expand_kv(v.transpose(1, 2))
    torch.testing.assert_close(z, (pattern @ v).transpose(1, 2), rtol=1e-12, atol=1e-12)
    assert torch.all(pattern.triu(1) == 0), "effective pattern must be lower triangular"
    if mixer.name in ("softmax", "sliding_window", "hip", "deltallm", "mlp_mixing", "approx", "non_approx",
                      "rnd_emb_qk", "fixed_seq_qk", "static_emb_qk"):
        torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern[..., 0]))
    if mixer.name == "sliding_window":
        w = mixer.p.window
        assert torch.all(pattern.tril(-w) == 0), "no weight outside the window"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", SEEDS)
def test_prefill_state_continues_like_forward(case, seed):
    mixer = _mixer(case, seed)
    x = torch.randn(2, 41, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    full = mixer(x)
    prefix, state = mixer(x[:, :29], return_state=True)
    rest, _ = run_steps(mixer, x[:, 29:], state)
    torch.testing.assert_close(torch.cat([prefix, rest], dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_causal(case):
    mixer = _mixer(case, 0)
    x = torch.randn(1, 37, 16, dtype=torch.float64)
    base = mixer(x)
    for t in (0, 11, 36):
        changed = x.clone()
        changed[:, t] += torch.randn(16, dtype=torch.float64)
        out = mixer(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-12)
        assert not torch.allclose(out[:, t], base[:, t]), "the changed token must affect its own output"


@pytest.mark.parametrize("case", CASES)
def test_gradients_reach_every_parameter(case):
    mixer = _mixer(case, 1)
    x = torch.randn(2, 23, 16, dtype=torch.float64, requires_grad=True)
    mixer(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_lightning_decay_schedule_matches_reference():
    """log lambda_h = -(8/H)(1 - l/L) h (REFERENCE.md section 1)."""
    mixer = make_mixer("lightning-default")  # layer 1 of 4, 4 heads
    expected = torch.tensor([-(8 / 4) * (1 - 1 / 4) * h for h in range(4)], dtype=torch.float64)
    torch.testing.assert_close(mixer.log_decay, expected)
    q = torch.randn(1, 4, 6, 4, dtype=torch.float64)
    k = torch.randn(1, 4, 6, 4, dtype=torch.float64)
    m = mixer.double().effective_pattern(q, k)
    lam = expected.exp()
    torch.testing.assert_close(m[0, 2, 5, 1], lam[2] ** 4 * (q[0, 2, 5] @ k[0, 2, 1]))
