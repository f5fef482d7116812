"""The intra-layer hybrids (liger, lizard, rat): their reference ops against token-by-token oracles, their
known special cases (liger at w = 1 is sliding-window softmax, at w = 0 its GLA part; rat with chunk 1
and closed forget gates is softmax attention, with one chunk an RNN), and a small studio model of each
that saves, loads and decodes like its forward."""

import pytest
import torch
import torch.nn.functional as F

from kernels.reference.chunk_hybrids import (
    chunk_ema_matrix,
    chunk_gated_ema,
    chunked_gated_linear_attention,
    gated_linear_attention_pattern,
    recurrent_gated_linear_attention,
    sliding_window_attention_with_sinks,
)
from mixer_cases import run_steps
from studio import HybridLM, build_model
from studio.mixers import REGISTRY, MixerShape

SHAPE = MixerShape(d_model=16, n_heads=4, n_kv_heads=4, d_head=4)
GQA = MixerShape(d_model=16, n_heads=4, n_kv_heads=2, d_head=4)


def _randn(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _mixer(name, shape=SHAPE, seed=0, **params):
    torch.manual_seed(seed)
    mixer = REGISTRY[name](shape, **params).double()
    for p in mixer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return mixer


def _heads(x, heads):  # [B, T, heads * d] -> [B, heads, T, d]
    return x.reshape(*x.shape[:2], heads, -1).transpose(1, 2)


# ---- reference ops --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("t,block", [(1, 64), (63, 16), (130, 64), (37, 5)])
def test_chunked_gla_equals_recurrent_and_pattern(seed, t, block):
    b, h, dk, dv = 2, 3, 5, 7
    q, k = _randn(b, h, t, dk, seed=seed), _randn(b, h, t, dk, seed=seed + 10)
    v = _randn(b, h, t, dv, seed=seed + 20)
    log_gate = F.logsigmoid(_randn(b, h, t, dk, seed=seed + 30) + 2)
    s0 = _randn(b, h, dk, dv, seed=seed + 40)
    out, state = chunked_gated_linear_attention(q, k, v, log_gate, block, initial_state=s0)
    ref_out, ref_state = recurrent_gated_linear_attention(q, k, v, log_gate, initial_state=s0)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, ref_state, rtol=1e-10, atol=1e-10)
    plain, _ = recurrent_gated_linear_attention(q, k, v, log_gate)
    torch.testing.assert_close(gated_linear_attention_pattern(q, k, log_gate, block) @ v, plain, rtol=1e-10, atol=1e-10)


def test_chunked_gla_survives_strong_gates():
    """Gates near log 0 -> -50 per step: the chunked form never exponentiates a positive number."""
    q, k, v = (_randn(1, 2, 70, 4, seed=s) for s in range(3))
    log_gate = -50 * torch.rand(1, 2, 70, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out, _ = chunked_gated_linear_attention(q, k, v, log_gate, 64)
    ref, _ = recurrent_gated_linear_attention(q, k, v, log_gate)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("t,chunk", [(1, 16), (37, 5), (32, 16), (20, 1), (9, 64)])
@pytest.mark.parametrize("per_dimension", [True, False])
def test_chunk_gated_ema_equals_its_recurrence(t, chunk, per_dimension):
    x = _randn(2, 3, t, 4, seed=t)
    logits = _randn(2, 3, t, 4 if per_dimension else 1, seed=t + 1)
    a = torch.sigmoid(logits)
    y, ref = torch.zeros_like(x[:, :, 0]), []
    for i in range(t):
        y = (1 - a[:, :, i]) * x[:, :, i] + (0 if i % chunk == 0 else a[:, :, i] * y)
        ref.append(y)
    torch.testing.assert_close(chunk_gated_ema(x, logits, chunk), torch.stack(ref, 2), rtol=1e-12, atol=1e-12)
    if not per_dimension:
        matrix = chunk_ema_matrix(logits[..., 0], chunk)
        torch.testing.assert_close(matrix @ x, torch.stack(ref, 2), rtol=1e-12, atol=1e-12)


def test_window_with_sinks_equals_the_dense_softmax_over_sinks_and_window():
    b, h, t, d, w, m = 2, 3, 150, 4, 70, 3
    q, k, v = (_randn(b, h, t, d, seed=s) for s in range(3))
    sinks = _randn(h, m, d, seed=5)
    scores = (q @ k.transpose(-1, -2)) / 2
    gap = torch.arange(t)[:, None] - torch.arange(t)[None, :]
    scores = scores.masked_fill((gap < 0) | (gap >= w), float("-inf"))
    sink_scores = (q @ sinks.transpose(-1, -2)) / 2
    z_window = scores.exp() @ v
    normaliser = scores.exp().sum(-1, keepdim=True) + sink_scores.exp().sum(-1, keepdim=True)
    got = sliding_window_attention_with_sinks(q, k, v, w, 0.5, sinks)
    torch.testing.assert_close(got, z_window / normaliser, rtol=1e-10, atol=1e-10)


# ---- liger ---------------------------------------------------------------------------------------------
def test_liger_defaults_follow_the_paper_and_add_no_parameters():
    liger = REGISTRY["liger"](SHAPE)
    assert (liger.p.window, liger.p.mix, liger.p.feature_map, liger.p.gate_normalizer) == (64, 0.5, "softmax", 16.0)
    window = REGISTRY["sliding_window"](SHAPE)
    assert {n for n, _ in liger.named_parameters()} == {n for n, _ in window.named_parameters()}
    assert type(liger).family == "hybrid" and type(liger).state_kind == "window+matrix"


@pytest.mark.parametrize("shape", [SHAPE, GQA], ids=["mha", "gqa"])
def test_liger_with_w_1_is_sliding_window_attention(shape):
    liger = _mixer("liger", shape, window=7, mix=1.0)
    window = REGISTRY["sliding_window"](shape, window=7).double()
    window.load_state_dict(liger.state_dict())
    x = _randn(2, 40, 16, seed=3)
    torch.testing.assert_close(liger(x), window(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(run_steps(liger, x)[0], window(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(liger.pattern_of(x), window.pattern_of(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [SHAPE, GQA], ids=["mha", "gqa"])
def test_liger_with_w_0_is_its_gla_part(shape):
    liger = _mixer("liger", shape, mix=0.0, block_size=8)
    x = _randn(2, 30, 16, seed=4)
    h, kv = shape.n_heads, shape.n_kv_heads
    q = torch.softmax(_heads(liger.q_proj(x), h), dim=-1)  # phi = softmax over the head dimension, no RoPE
    k = liger.expand_kv(torch.softmax(_heads(liger.k_proj(x), kv), dim=-1))
    v = liger.expand_kv(_heads(liger.v_proj(x), kv))
    log_gate = liger.expand_kv(_heads(F.logsigmoid(liger.k_proj(x)) / 16, kv))  # from the key projection
    z, _ = recurrent_gated_linear_attention(q, k, v, log_gate)
    expected = liger.o_proj(z.transpose(1, 2).flatten(2))
    torch.testing.assert_close(liger(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(run_steps(liger, x)[0], expected, rtol=1e-12, atol=1e-12)


def test_liger_pattern_is_the_weighted_sum_of_its_parts():
    x = _randn(1, 25, 16, seed=6)
    parts = {}
    for w in (0.0, 1.0, 0.3):
        liger = _mixer("liger", window=6, mix=w)
        parts[w] = liger.pattern_of(x)
    torch.testing.assert_close(parts[0.3], 0.3 * parts[1.0] + 0.7 * parts[0.0], rtol=1e-12, atol=1e-12)


def test_liger_learned_mix_is_a_saved_parameter_per_head():
    liger = REGISTRY["liger"](SHAPE, learn_mix=True, mix=0.25)
    assert "mix" in dict(liger.named_parameters()) and "mix" in liger.state_dict()
    torch.testing.assert_close(liger.mix, torch.full((4,), 0.25))
    assert "mix" not in REGISTRY["liger"](SHAPE).state_dict()


# ---- lizard --------------------------------------------------------------------------------------------
def test_lizard_without_meta_memory_and_w_1_is_sliding_window_attention():
    lizard = _mixer("lizard", GQA, window=5, mix=1.0, meta_tokens=0)
    window = REGISTRY["sliding_window"](GQA, window=5).double()
    window.load_state_dict({k: v for k, v in lizard.state_dict().items() if not k.startswith("gate_")})
    x = _randn(2, 30, 16, seed=7)
    torch.testing.assert_close(lizard(x), window(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lizard.pattern_of(x), window.pattern_of(x), rtol=1e-12, atol=1e-12)


def test_lizard_meta_memory_takes_mass_from_the_window_only():
    lizard = _mixer("lizard", window=6, mix=1.0, meta_tokens=3)
    x = _randn(1, 20, 16, seed=8)
    pattern = lizard.pattern_of(x)
    assert torch.all(pattern.tril(-6) == 0), "no weight outside the window"
    q = _heads(lizard.q_proj(x), 4)
    q = lizard.inner_rotary(q.transpose(1, 2), torch.arange(20)).transpose(1, 2)
    k = _heads(lizard.k_proj(x), 4)
    k = lizard.inner_rotary(k.transpose(1, 2), torch.arange(20)).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2) / 2).exp() * torch.ones(20, 20).tril().triu(-5)
    sinks = (q @ lizard.meta_keys.transpose(-1, -2) / 2).exp().sum(-1)
    share = scores.sum(-1) / (scores.sum(-1) + sinks)  # what the sinks leave to the real tokens
    torch.testing.assert_close(pattern.sum(-1), share, rtol=1e-12, atol=1e-12)
    assert torch.all(pattern.sum(-1) < 1)


def test_lizard_with_w_0_is_gla_with_its_low_rank_gate():
    lizard = _mixer("lizard", mix=0.0, gate_rank=3)
    x = _randn(2, 20, 16, seed=9)
    q = torch.softmax(_heads(lizard.q_proj(x), 4), dim=-1)
    k = torch.softmax(_heads(lizard.k_proj(x), 4), dim=-1)
    log_gate = _heads(F.logsigmoid(lizard.gate_up(lizard.gate_down(x))) / 16, 4)
    z, _ = recurrent_gated_linear_attention(q, k, _heads(lizard.v_proj(x), 4), log_gate)
    torch.testing.assert_close(lizard(x), lizard.o_proj(z.transpose(1, 2).flatten(2)), rtol=1e-12, atol=1e-12)


# ---- rat -----------------------------------------------------------------------------------------------
def _close_forget_gates(rat):
    with torch.no_grad():
        for name in ("key_forget", "value_forget"):
            getattr(rat, name).weight.zero_()
            getattr(rat, f"{name}_bias").fill_(-1e4)  # f = a = 0: the summaries are the tokens themselves


@pytest.mark.parametrize("shape", [SHAPE, GQA], ids=["mha", "gqa"])
def test_rat_with_chunk_1_and_closed_forget_gates_is_softmax_attention(shape):
    rat = _mixer("rat", shape, chunk_size=1)
    _close_forget_gates(rat)
    softmax = REGISTRY["softmax"](shape, output_gate="sigmoid").double()
    softmax.load_state_dict({k: v for k, v in rat.state_dict().items() if "forget" not in k})
    x = _randn(2, 33, 16, seed=10)
    torch.testing.assert_close(rat(x), softmax(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(run_steps(rat, x)[0], softmax(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rat.pattern_of(x), softmax.pattern_of(x), rtol=1e-12, atol=1e-12)


def test_rat_with_one_chunk_is_its_value_recurrence():
    rat = _mixer("rat", chunk_size=64)
    x = _randn(2, 40, 16, seed=11)
    value_forget = rat.gates(x)["value_forget"][..., 0]
    torch.testing.assert_close(rat.pattern_of(x), chunk_ema_matrix(value_forget, 64), rtol=1e-12, atol=1e-12)


def test_rat_keeps_one_summary_per_finished_chunk():
    rat = _mixer("rat", chunk_size=5)
    x = _randn(1, 23, 16, seed=12)
    _, state = rat(x, return_state=True)
    assert state["mix"]["keys"].shape[2] == 23 // 5
    _, state = run_steps(rat, x[:, :2], state)  # 25 tokens: a fifth chunk finished
    assert state["mix"]["keys"].shape[2] == 5 and state["mix"]["values"].shape[2] == 5
    assert rat.state_elements(25) == 2 * 4 * 4 * (25 // 5 + 1)


def test_rat_pattern_rows_are_convex_combinations_of_chunk_ema_rows():
    """Each summary value is an EMA (weights sum to 1 when the first gate of its chunk is closed)."""
    rat = _mixer("rat", chunk_size=4)
    x = _randn(1, 17, 16, seed=13)
    pattern = rat.pattern_of(x)
    assert torch.all(pattern >= 0) and torch.all(pattern.sum(-1) <= 1 + 1e-12)


# ---- in a studio model ---------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [{"mixer": "liger", "window": 5, "block_size": 4},
                                   {"mixer": "lizard", "window": 5, "meta_tokens": 2, "learn_mix": True},
                                   {"mixer": "rat", "chunk_size": 3}], ids=["liger", "lizard", "rat"])
def test_two_layer_model_saves_loads_and_generates(layer, tmp_path):
    spec = {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 2, "pattern": "AS",
            "pattern_map": {"A": layer, "S": "softmax"}}
    model = build_model(spec, seed=3).double().eval()
    tokens = torch.randint(0, 64, (2, 13), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    model.save(tmp_path / "m")
    loaded = HybridLM.load(tmp_path / "m").double().eval()
    torch.testing.assert_close(loaded(tokens), logits, rtol=0, atol=0)

    generated = model.generate(tokens[:, :6], max_new_tokens=10)
    seq = tokens[:, :6]
    for _ in range(10):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, seq)


@pytest.mark.parametrize("name", ["liger", "lizard", "rat"])
def test_costs_on_the_meta_device(name):
    shape = MixerShape(d_model=1024, n_heads=8, n_kv_heads=8, d_head=128)
    with torch.device("meta"):
        mixer = REGISTRY[name](shape)
    for length in (256, 4096, 1 << 20):
        assert mixer.state_elements(length) > 0 and mixer.mixing_flops_per_token(length) > 0
    if name == "rat":  # the state grows L times slower than a KV cache
        assert mixer.state_elements(1 << 20) == 2 * 8 * 128 * ((1 << 20) // 16 + 1)
    else:  # a window plus a constant matrix
        assert mixer.state_elements(1 << 20) == mixer.state_elements(4096) == 2 * 8 * 128 * 64 + 8 * 128 * 128
