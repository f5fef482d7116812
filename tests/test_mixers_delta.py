"""The delta-rule mixers (deltanet, gated_delta) inside a model, and the properties that make them
the delta rule: overwriting a key, the special cases of linear attention, DeltaNet as Gated DeltaNet
without decay. The mixer contract itself is swept by tests/test_mixers.py (cases in tests/cases_delta.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

import studio
from kernels.reference import chunked_decay_linear_attention
from kernels.reference.delta_rule import chunked_delta_rule, recurrent_delta_rule
from studio.mixers import REGISTRY, MixerShape
from studio.spec import SpecError

SHAPE = MixerShape(d_model=16, n_heads=2, n_kv_heads=2, d_head=8)


def _spec(mixer: str, **params) -> dict:
    return {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 2, "pattern": "AS",
            "pattern_map": {"A": {"mixer": mixer, **params}, "S": "softmax"}}


@pytest.mark.parametrize("mixer,params", [("deltanet", {}), ("gated_delta", {"chunk_size": 8}),
                                          ("gated_delta", {"short_conv": 0, "positional": "nope"})])
def test_model_saves_loads_and_generates(tmp_path, mixer, params):
    model = studio.build_model(_spec(mixer, **params), seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # not the seed's weights: the load must read the file
    tokens = torch.randint(0, 64, (2, 21), generator=torch.Generator().manual_seed(0))
    model.save(tmp_path / "ckpt")
    loaded = studio.HybridLM.load(tmp_path / "ckpt")
    assert loaded.spec == model.spec
    torch.testing.assert_close(loaded(tokens), model(tokens), rtol=0, atol=0)

    model = model.double()
    prompt = tokens[:, :9]
    generated = model.generate(prompt, max_new_tokens=10)
    seq = prompt
    for _ in range(10):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, seq)


def _unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("name", ["deltanet", "gated_delta"])
def test_a_key_written_twice_with_beta_one_returns_the_latest_value(name):
    """beta = 1 replaces what the state holds under k (Schlag et al.'s motivation); other, orthogonal
    keys keep their values. No decay (alpha = 1) so that retrieval is exact."""
    mixer = REGISTRY[name](SHAPE).double()
    d = SHAPE.d_head
    basis = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0].T  # orthonormal keys
    key_a, key_b = basis[0], basis[1]
    values = torch.randn(3, d, dtype=torch.float64)
    k = torch.stack([key_a, key_b, key_a])[None, None]  # write a, b, then a again
    v = values[None, None]
    beta = torch.ones(1, 1, 3, dtype=torch.float64)
    gates = {"beta": beta} if name == "deltanet" else {"beta": beta, "log_alpha": torch.zeros_like(beta)}
    q = k  # read each key right after its write
    out, state = mixer.parallel(q, k, v, **gates)
    torch.testing.assert_close(out[0, 0], values)  # after the second write, key a returns the latest value
    torch.testing.assert_close(key_a @ state[0, 0], values[2])  # the first value under a is gone
    torch.testing.assert_close(key_b @ state[0, 0], values[1])  # b survives a's overwrite
    stepped, step_state = None, None
    for t in range(3):
        stepped, step_state = mixer.recurrent_step(q[:, :, t], k[:, :, t], v[:, :, t], step_state,
                                                   **{n: g[:, :, t] for n, g in gates.items()})
    torch.testing.assert_close(stepped[0, 0], values[2])


@pytest.mark.parametrize("decayed", [False, True])
def test_orthogonal_keys_with_beta_one_are_linear_attention(decayed):
    """With orthonormal keys and beta = 1 nothing is erased: the delta rule is linear attention
    (identity feature map), and with a constant per-head decay it is Lightning / RetNet."""
    b, h, t, d = 2, 3, 6, 8
    keys = torch.linalg.qr(torch.randn(b, h, d, d, dtype=torch.float64))[0].transpose(-1, -2)[:, :, :t]
    q = torch.randn(b, h, t, d, dtype=torch.float64)
    v = torch.randn(b, h, t, 5, dtype=torch.float64)
    log_decay = -torch.rand(h, dtype=torch.float64) if decayed else None
    log_alpha = None if log_decay is None else log_decay[None, :, None].expand(b, h, t)
    out, state = chunked_delta_rule(q, keys, v, torch.ones(b, h, t, dtype=torch.float64), log_alpha, chunk_size=4)
    ref_out, ref_state = chunked_decay_linear_attention(q, keys, v, log_decay, block_size=4)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(state, ref_state)


def test_deltanet_is_gated_delta_without_decay():
    """exp(A_log) = 0 gives alpha_t = 1: Gated DeltaNet with DeltaNet's weights and no output gate is DeltaNet."""
    torch.manual_seed(0)
    delta = REGISTRY["deltanet"](SHAPE).double()
    gated = REGISTRY["gated_delta"](SHAPE, output_gate="none").double()
    missing, unexpected = gated.load_state_dict(delta.state_dict(), strict=False)
    assert sorted(missing) == ["A_log", "decay_proj.weight", "dt_bias"] and not unexpected
    with torch.no_grad():
        gated.A_log.fill_(-math.inf)
    x = torch.randn(2, 27, 16, dtype=torch.float64)
    torch.testing.assert_close(gated(x), delta(x), rtol=1e-12, atol=1e-12)
    # and with the decay on, the output differs
    with torch.no_grad():
        gated.A_log.zero_()
    assert not torch.allclose(gated(x), delta(x))


def test_gated_delta_decay_follows_mamba2():
    """alpha_t = exp(-exp(A_log) softplus(x W_a + dt_bias)), A ~ U(a_init_range), softplus(dt_bias) in dt_range."""
    torch.manual_seed(1)
    mixer = REGISTRY["gated_delta"](MixerShape(d_model=16, n_heads=64, n_kv_heads=64, d_head=2))
    a, dt = mixer.A_log.exp(), F.softplus(mixer.dt_bias)
    assert a.min() >= 1 and a.max() <= 16
    assert dt.min() >= 0.001 - 1e-9 and dt.max() <= 0.1 + 1e-9
    x = torch.randn(1, 5, 16)
    gates = mixer.gates(x)
    assert gates["beta"].shape == gates["log_alpha"].shape == (1, 64, 5)
    expected = -a[None, :, None] * F.softplus(mixer.decay_proj(x) + mixer.dt_bias).transpose(1, 2)
    torch.testing.assert_close(gates["log_alpha"], expected)
    assert torch.all(gates["log_alpha"] < 0) and torch.all((gates["beta"] > 0) & (gates["beta"] < 1))


def test_defaults_follow_the_papers():
    delta, gated = REGISTRY["deltanet"](SHAPE), REGISTRY["gated_delta"](SHAPE)
    for mixer in (delta, gated):
        assert mixer.conv is not None and mixer.conv.kernel_size == 4 and mixer.out_norm is not None
        assert type(mixer).family == "delta" and type(mixer).state_kind == "matrix"
        assert mixer.state_elements(10**6) == SHAPE.n_heads * SHAPE.d_head**2
    assert delta.g_proj is None and gated.p.output_gate == "swish"
    q, k = delta.featurize(torch.randn(1, 2, 3, 8) * 5, torch.randn(1, 2, 3, 8))
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(1, 2, 3))
    torch.testing.assert_close(k.norm(dim=-1), torch.ones(1, 2, 3))


def test_long_sequence_chunked_form_is_exact_in_float32():
    """The chunked form only forms decay ratios <= 1 and solves the UT system per chunk: stable in float32."""
    g = torch.Generator().manual_seed(0)
    b, h, t, d = 1, 2, 512, 16
    q, k = (F.normalize(torch.randn(b, h, t, d, generator=g), dim=-1) for _ in range(2))
    v = torch.randn(b, h, t, d, generator=g)
    beta = torch.rand(b, h, t, generator=g)
    log_alpha = -0.01 * torch.rand(b, h, t, generator=g)
    for gate in (None, log_alpha):
        out = chunked_delta_rule(q, k, v, beta, gate, chunk_size=64)[0]
        ref = recurrent_delta_rule(*(x.double() for x in (q, k, v, beta)), None if gate is None else gate.double())[0]
        torch.testing.assert_close(out, ref.float(), rtol=1e-4, atol=1e-4)


def test_bad_decay_init_is_refused():
    with pytest.raises(SpecError, match="a_init_range"):
        studio.ArchSpec.from_dict(_spec("gated_delta", a_init_range=[0, 16]))
