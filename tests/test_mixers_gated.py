"""The gated / decayed linear-recurrent mixers (retnet, gla, hgrn2, mamba2) inside a studio model
(checkpoint round trip, decoding with step states) and their own formulas and special cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from studio import HybridLM, build_model
from studio.mixers import REGISTRY, MixerShape
from studio.spec import SpecError

GATED = ["retnet", "gla", "hgrn2", "mamba2"]
SHAPE = MixerShape(d_model=16, n_heads=4, n_kv_heads=4, d_head=4)


def _spec(layer):
    return {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 2, "pattern": "AS",
            "pattern_map": {"A": layer, "S": "softmax"}}


def _qk(t=9, seed=0, heads=4, d=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, heads, t, d, generator=g, dtype=torch.float64) for _ in range(2))


def _naive_gated_pattern(q, k, alpha):
    """M[t, s] = sum_i q_{t,i} k_{s,i} prod_{r=s+1..t} alpha_{r,i}, by loops."""
    t = q.shape[2]
    m = torch.zeros(*q.shape[:2], t, t, dtype=q.dtype)
    for ti in range(t):
        for si in range(ti + 1):
            m[:, :, ti, si] = (q[:, :, ti] * k[:, :, si] * alpha[:, :, si + 1 : ti + 1].prod(2)).sum(-1)
    return m


# ---- inside a model ----------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [
    {"mixer": "retnet"},
    {"mixer": "gla", "positional": "nope", "short_conv": 3},
    {"mixer": "hgrn2", "chunk_size": 5},
    {"mixer": "mamba2", "positional": "nope"},
], ids=GATED)
def test_model_checkpoint_round_trip_and_generation(tmp_path, layer):
    model = build_model(_spec(layer), seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # not the seed's weights: the load must read the file
    seq = torch.randint(0, 64, (2, 13), generator=torch.Generator().manual_seed(0))
    model.save(tmp_path / "ckpt")
    loaded = HybridLM.load(tmp_path / "ckpt")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    torch.testing.assert_close(loaded(seq), model(seq), rtol=0, atol=0)

    model = model.double()
    prompt = seq[:, :5]
    generated = model.generate(prompt, max_new_tokens=10)
    rerun = prompt
    for _ in range(10):
        rerun = torch.cat([rerun, model(rerun)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, rerun)

    _, cache = model.run_with_cache(seq)
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, 2, 13, 13)
    assert cache["blocks.0.attn.hook_state"].shape == (2, 2, 16, 16)


@pytest.mark.parametrize("name", GATED)
def test_learn_shapes_build_with_defaults(name):
    """The Learn tab's gallery and cost shapes build every mixer with its defaults."""
    small = REGISTRY[name](MixerShape(d_model=32, n_heads=2, n_kv_heads=2, d_head=16)).double()
    assert small(torch.randn(1, 12, 32, dtype=torch.float64)).shape == (1, 12, 32)
    with torch.device("meta"):
        big = REGISTRY[name](MixerShape(d_model=1024, n_heads=8, n_kv_heads=8, d_head=128))
    assert big.state_elements(10**6) == 8 * 128 * 128
    assert big.mixing_flops_per_token(4096) == 4.0 * 8 * 128 * 128


# ---- retnet --------------------------------------------------------------------------------------
def test_retnet_schedule_and_pattern():
    """gamma_h = 1 - 2^(-5-h); M[t, s] = gamma_h^(t-s) (q_t / sqrt(d)) . k_s."""
    mixer = REGISTRY["retnet"](SHAPE).double()
    gamma = torch.tensor([1 - 2.0 ** (-5 - h) for h in range(4)], dtype=torch.float64)
    torch.testing.assert_close(mixer.log_decay.exp(), gamma)
    assert mixer.p.output_norm and mixer.p.output_gate == "swish"
    q, k = _qk()
    m = mixer.effective_pattern(*mixer.featurize(q, k))
    gap = (torch.arange(9)[:, None] - torch.arange(9)[None, :]).to(torch.float64)
    expected = (q @ k.transpose(-1, -2)) / 2.0 * (gamma[:, None, None] ** gap.clamp(min=0)) * (gap >= 0)
    torch.testing.assert_close(m, expected)


def test_retnet_equals_lightning_with_identity_features_and_scaled_queries():
    decay = [0.9, 0.5, 1.0, 0.99]
    common = {"decay": decay, "output_norm": False, "output_gate": "none", "block_size": 4}
    retnet = REGISTRY["retnet"](SHAPE, **common).double()
    lightning = REGISTRY["lightning"](SHAPE, feature_map="identity", **common).double()
    lightning.load_state_dict(retnet.state_dict())
    with torch.no_grad():
        lightning.q_proj.weight.mul_(SHAPE.d_head**-0.5)
    x = torch.randn(2, 21, 16, dtype=torch.float64)
    torch.testing.assert_close(retnet(x), lightning(x), rtol=1e-12, atol=1e-12)


def test_retnet_rejects_a_decay_list_of_the_wrong_length():
    with pytest.raises(SpecError, match="n_heads"):
        build_model(_spec({"mixer": "retnet", "decay": [0.9, 0.8, 0.7]}))
    with pytest.raises(SpecError, match="gamma"):
        build_model(_spec({"mixer": "retnet", "decay": [0.9, 1.5]}))


# ---- gla -----------------------------------------------------------------------------------------
def test_gla_gates_are_low_rank_sigmoid_to_the_one_over_tau():
    mixer = REGISTRY["gla"](MixerShape(d_model=16, n_heads=4, n_kv_heads=2, d_head=4)).double()
    assert mixer.gate_proj[0].out_features == 16 and mixer.p.gate_temperature == 16
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    alpha = mixer.gates(x)["log_gate"].exp()  # [2, 4, 7, 4]
    w1, w2, b = mixer.gate_proj[0].weight, mixer.gate_proj[1].weight, mixer.gate_proj[1].bias
    expected = torch.sigmoid(x @ w1.T @ w2.T + b) ** (1 / 16)  # [2, 7, kv * d]
    expected = expected.reshape(2, 7, 2, 4).transpose(1, 2).repeat_interleave(2, dim=1)  # kv head per group
    torch.testing.assert_close(alpha, expected)


def test_gla_pattern_is_the_vector_gated_formula():
    mixer = REGISTRY["gla"](SHAPE).double()
    q, k = _qk()
    log_gate = -torch.rand(2, 4, 9, 4, dtype=torch.float64)
    fq, fk = mixer.featurize(q, k)
    torch.testing.assert_close(fq, q / 2.0)
    m = mixer.effective_pattern(fq, fk, log_gate=log_gate)
    torch.testing.assert_close(m, _naive_gated_pattern(q / 2.0, k, log_gate.exp()))


# ---- hgrn2 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer_idx,bound", [(0, 0.0), (3, 0.75)])
def test_hgrn2_forget_gate_is_the_decay_and_one_minus_it_the_key(layer_idx, bound):
    shape = MixerShape(d_model=16, n_heads=4, n_kv_heads=4, d_head=4, layer_idx=layer_idx, n_layers=4)
    mixer = REGISTRY["hgrn2"](shape).double()
    assert mixer.lower_bound == bound and mixer.rotary is None
    q, k = _qk(seed=1)
    f = bound + (1 - bound) * torch.sigmoid(k)
    assert torch.all(f >= bound)
    fq, fk = mixer.featurize(q, k)
    torch.testing.assert_close(fq, F.silu(q) / 2.0)
    m = mixer.effective_pattern(fq, fk)
    torch.testing.assert_close(m, _naive_gated_pattern(F.silu(q) / 2.0, 1 - f, f))


def test_hgrn2_applies_no_rope_and_checks_its_bound():
    model = build_model(_spec({"mixer": "hgrn2"}), seed=0)
    _, cache = model.run_with_cache(torch.randint(0, 64, (1, 6)))
    assert "blocks.0.attn.hook_rot_q" not in cache and "blocks.1.attn.hook_rot_q" in cache
    with pytest.raises(SpecError, match="lower_bound"):
        build_model(_spec({"mixer": "hgrn2", "lower_bound": 1.0}))


# ---- mamba2 --------------------------------------------------------------------------------------
def test_mamba2_initialisation_ranges():
    mixer = REGISTRY["mamba2"](MixerShape(d_model=64, n_heads=16, n_kv_heads=16, d_head=4))
    a = mixer.A_log.exp()
    dt = F.softplus(mixer.dt_bias)
    assert torch.all((a >= 1) & (a <= 16)) and torch.all((dt >= 0.001 - 1e-7) & (dt <= 0.1 + 1e-7))
    assert torch.equal(mixer.D, torch.ones(16)) and mixer.conv is not None and mixer.conv.kernel_size == 4


def test_mamba2_pattern_is_ssd_with_the_skip_on_the_diagonal():
    """M[t, s] = C_t . B_s dt_s prod_{r=s+1..t} a_r + D [t = s], with a_t = exp(-dt_t exp(A_log))."""
    torch.manual_seed(0)
    mixer = REGISTRY["mamba2"](SHAPE).double()
    with torch.no_grad():
        mixer.D.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    gates = mixer.gates(x)
    dt = F.softplus(x @ mixer.dt_proj.weight.T + mixer.dt_bias).transpose(1, 2)  # [2, 4, 9]
    torch.testing.assert_close(gates["dt"][..., 0], dt)
    a = torch.exp(-dt * mixer.A_log.exp()[:, None])
    torch.testing.assert_close(gates["log_decay"][..., 0].exp(), a)
    q, k = _qk()
    m = mixer.effective_pattern(q, k, **gates)
    skip = torch.diag_embed(mixer.D[:, None].expand(4, 9)).expand(2, 4, 9, 9)
    torch.testing.assert_close(m, _naive_gated_pattern(q, k * dt[..., None], a[..., None]) + skip)

    without = REGISTRY["mamba2"](SHAPE, d_skip=False).double()
    without.load_state_dict({n: p for n, p in mixer.state_dict().items() if n != "D"})
    torch.testing.assert_close(m - without.effective_pattern(q, k, **gates), skip)
    v = torch.randn(2, 4, 9, 4, dtype=torch.float64)
    z, _ = mixer.parallel(q, k, v, **gates)
    torch.testing.assert_close(z, m @ v)
