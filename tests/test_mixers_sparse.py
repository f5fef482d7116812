"""The routed / sparse attention mixers (moh, landmark, agent, dma): their reference kernels against
brute-force per-query oracles, the special cases that reduce them to known mixers, a two-layer studio
model with each (save / load, decoding), and their cost methods. (The shared contract, forward = step =
pattern @ v, causality and gradients, is swept by tests/test_mixers.py over tests/cases_sparse.py.)"""

import math

import pytest
import torch

from kernels.reference.agent_attention import agent_attention_pattern, chunked_agent_attention
from kernels.reference.dynamic_mask_attention import (
    chunked_topk_bias_attention,
    recurrent_topk_bias_attention,
    topk_bias_weights,
)
from kernels.reference.landmark_attention import chunked_landmark_attention, landmark_attention_pattern
from studio import ArchSpec, HybridLM, build_model
from studio.mixers import REGISTRY, MixerShape
from studio.spec import SpecError

SPARSE = ("moh", "landmark", "agent", "dma")


def _randn(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _qkv(t, heads=4, kv_heads=2, d=5, seed=0):
    q = _randn(2, heads, t, d, seed=seed)
    return q, _randn(2, kv_heads, t, d, seed=seed + 1), _randn(2, kv_heads, t, d, seed=seed + 2)


def _mixer(name, d_model=16, n_heads=4, n_kv_heads=4, d_head=4, positional="rope", seed=0, **params):
    torch.manual_seed(seed)
    shape = MixerShape(d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, d_head=d_head, positional=positional)
    mixer = REGISTRY[name](shape, **params).double()
    for p in mixer.parameters():
        torch.nn.init.normal_(p, std=0.4)
    return mixer


def _same_projections(target, source):
    """Copy the weights source shares with target (q, k, v, o projections, ...); return target's others."""
    shared = {name: w for name, w in source.state_dict().items() if name in target.state_dict()}
    return target.load_state_dict(shared, strict=False).missing_keys


# ---- dma: top-k keys by a value-derived bias ---------------------------------------------------------
def _dma_oracle(q, k, v, bias, top_k, scale):
    """Per query: sort the visible keys by (bias, position), keep the last top_k, softmax with the bias."""
    out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=q.dtype)
    groups = q.shape[1] // k.shape[1]
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            g = h // groups
            for t in range(q.shape[2]):
                kept = sorted(range(t + 1), key=lambda s: (bias[b, g, s].item(), s))[-top_k:]
                logits = torch.stack([q[b, h, t] @ k[b, g, s] * scale + bias[b, g, s] for s in kept])
                out[b, h, t] = torch.softmax(logits, 0) @ v[b, g, kept]
    return out


@pytest.mark.parametrize("top_k, chunk", [(1, 4), (5, 1), (5, 7), (30, 64)])
@pytest.mark.parametrize("ties", [False, True])
def test_dma_kernel_matches_per_query_oracle(top_k, chunk, ties):
    q, k, v = _qkv(23)
    bias = _randn(2, 2, 23, seed=9)
    if ties:  # many equal biases: the later key must win, in every form
        bias = bias.round()
    out, (kept_keys, _, kept_bias) = chunked_topk_bias_attention(q, k, v, bias, top_k, 0.4, chunk)
    torch.testing.assert_close(out, _dma_oracle(q, k, v, bias, top_k, 0.4), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(recurrent_topk_bias_attention(q, k, v, bias, top_k, 0.4)[0], out)
    torch.testing.assert_close(topk_bias_weights(q, k, bias, top_k, 0.4) @ v.repeat_interleave(2, 1), out)
    # the kept keys are the top_k of the whole sequence, in time order
    top = sorted(range(23), key=lambda s: (bias[0, 1, s].item(), s))[-top_k:]
    torch.testing.assert_close(kept_keys[0, 1], k[0, 1, sorted(top)])
    assert kept_bias.shape == (2, 2, min(top_k, 23))


def test_dma_untrained_is_a_sliding_window_and_keeps_top_k_keys():
    """A starts at 0 (as in the authors' code): every bias is 0, ties go to the later key, so an untrained
    layer attends to the last top_k keys: exactly sliding-window attention with window top_k."""
    dma = _mixer("dma", top_k=6, chunk_size=5, n_kv_heads=2)
    with torch.no_grad():
        dma.A.zero_()
    window = _mixer("sliding_window", window=6, n_kv_heads=2, seed=1)
    assert _same_projections(window, dma) == []
    x = _randn(2, 31, 16, seed=3)
    torch.testing.assert_close(dma(x), window(x), rtol=1e-12, atol=1e-12)
    _, state = dma(x, return_state=True)
    assert state["mix"][0].shape == (2, 2, 6, 4), "decoding keeps only top_k keys"
    assert dma.state_elements(31) == 2 * 6 * (2 * 4 + 1) == dma.state_elements(10_000)


def test_dma_with_every_key_selected_is_softmax_plus_bias():
    dma = _mixer("dma", top_k=100, positional="nope")
    x = _randn(1, 12, 16, seed=4)
    pattern = dma.pattern_of(x)
    q = dma.q_proj(x).view(1, 12, 4, 4).transpose(1, 2)
    k = dma.k_proj(x).view(1, 12, 4, 4).transpose(1, 2)
    bias = dma.A[:, None] * torch.nn.functional.softplus(dma.dt_proj(dma.v_proj(x))).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / 2 + bias[:, :, None, :]
    expected = torch.softmax(scores.masked_fill(torch.ones(12, 12).triu(1).bool(), float("-inf")), -1)
    torch.testing.assert_close(pattern, expected, rtol=1e-12, atol=1e-12)


# ---- landmark: blocks with landmarks, grouped softmax -----------------------------------------------
def _landmark_oracle(q, k, v, block, top_k, scale):
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for t in range(q.shape[2]):
                qt, c = q[b, h, t], t // block
                own = list(range(c * block, t + 1))
                marks = [k[b, h, j * block:(j + 1) * block].mean(0) @ qt * scale for j in range(c)]
                chosen = list(range(c))
                if top_k is not None and c > top_k:
                    chosen = sorted(range(c), key=lambda j: marks[j].item())[-top_k:]
                p = torch.softmax(torch.stack([qt @ k[b, h, s] * scale for s in own] + [marks[j] for j in chosen]), 0)
                out[b, h, t] = p[: len(own)] @ v[b, h, own]
                for pj, j in zip(p[len(own):], chosen):
                    inner = torch.softmax(k[b, h, j * block:(j + 1) * block] @ qt * scale, 0)
                    out[b, h, t] += pj * inner @ v[b, h, j * block:(j + 1) * block]
    return out


@pytest.mark.parametrize("block, top_k", [(1, None), (4, None), (4, 1), (3, 2), (7, 5), (30, 2)])
def test_landmark_kernel_matches_per_query_oracle(block, top_k):
    q, k, v = _qkv(23, heads=2, kv_heads=2, seed=5)
    n = 23 // block
    landmarks = k[:, :, : n * block].unflatten(2, (n, block)).mean(-2)
    out = chunked_landmark_attention(q, k, v, landmarks, block, top_k, 0.5)
    torch.testing.assert_close(out, _landmark_oracle(q, k, v, block, top_k, 0.5), rtol=1e-12, atol=1e-12)
    pattern = landmark_attention_pattern(q, k, landmarks, block, top_k, 0.5)
    torch.testing.assert_close(pattern @ v, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern[..., 0]))


@pytest.mark.parametrize("landmark", ["mean", "pooled"])
def test_landmark_with_block_size_one_reading_every_block_is_softmax_attention(landmark):
    """Blocks of one token: the landmark is the token's key, the inner softmax is 1, and the grouped
    softmax is the plain softmax over all earlier tokens."""
    mixer = _mixer("landmark", block_size=1, top_k=None, landmark=landmark, n_kv_heads=2)
    softmax = _mixer("softmax", n_kv_heads=2, seed=1)
    _same_projections(softmax, mixer)
    x = _randn(2, 19, 16, seed=6)
    torch.testing.assert_close(mixer(x), softmax(x), rtol=1e-12, atol=1e-12)


def test_landmark_special_cases():
    x = _randn(2, 40, 16, seed=7)
    # a sequence inside one block is softmax attention
    short = _mixer("landmark", block_size=64)
    softmax = _mixer("softmax", seed=1)
    _same_projections(softmax, short)
    torch.testing.assert_close(short(x), softmax(x), rtol=1e-12, atol=1e-12)
    # retrieving at least as many blocks as there are is reading them all
    many, every = _mixer("landmark", block_size=8, top_k=5), _mixer("landmark", block_size=8, top_k=None, seed=1)
    _same_projections(every, many)
    torch.testing.assert_close(many(x), every(x), rtol=1e-12, atol=1e-12)
    # top-1 retrieval: each query's weight outside its block lies in exactly one earlier block
    one = _mixer("landmark", block_size=8, top_k=1)
    pattern = one.pattern_of(x)
    t = torch.arange(40)
    for query in (17, 30, 39):
        far = pattern[:, :, query, : query // 8 * 8].unflatten(-1, (-1, 8))
        assert torch.all((far.abs().sum(-1) > 0).sum(-1) == 1)
    assert torch.all(pattern[:, :, t, t] > 0)


# ---- agent: pooled-query agents from the previous chunk, local attention -----------------------------
def _agent_oracle(q, k, v, chunk, n_agents, scale):
    out = torch.zeros_like(q)
    size = chunk // n_agents
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for t in range(q.shape[2]):
                qt, c = q[b, h, t], t // chunk
                own = list(range(c * chunk, t + 1))
                logits = [qt @ k[b, h, s] * scale for s in own]
                agents, agent_values = [], []
                if c:
                    for a in range(n_agents):
                        start = (c - 1) * chunk + a * size
                        agent = q[b, h, start:start + size].mean(0)
                        agents.append(agent)
                        aggregation = torch.softmax(k[b, h, : c * chunk] @ agent * scale, 0)
                        agent_values.append(aggregation @ v[b, h, : c * chunk])
                p = torch.softmax(torch.stack(logits + [qt @ a * scale for a in agents]), 0)
                out[b, h, t] = p[: len(own)] @ v[b, h, own]
                for pa, va in zip(p[len(own):], agent_values):
                    out[b, h, t] += pa * va
    return out


@pytest.mark.parametrize("chunk, n_agents", [(1, 1), (4, 2), (6, 3), (8, 8), (40, 4)])
def test_agent_kernel_matches_per_query_oracle(chunk, n_agents):
    q, k, v = _qkv(23, heads=2, kv_heads=2, seed=8)
    out, (agents, agent_values) = chunked_agent_attention(q, k, v, chunk, n_agents, 0.5)
    torch.testing.assert_close(out, _agent_oracle(q, k, v, chunk, n_agents, 0.5), rtol=1e-12, atol=1e-12)
    pattern = agent_attention_pattern(q, k, chunk, n_agents, 0.5)
    torch.testing.assert_close(pattern @ v, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern[..., 0]))
    assert agents.shape[2] == (n_agents if 23 >= chunk else 0) == agent_values.shape[2]


def test_agent_special_cases():
    x = _randn(2, 30, 16, seed=9)
    # a sequence inside one chunk has no agents yet: softmax attention
    agent, softmax = _mixer("agent", chunk_size=32, n_agents=4, n_kv_heads=2), _mixer("softmax", n_kv_heads=2, seed=1)
    _same_projections(softmax, agent)
    torch.testing.assert_close(agent(x), softmax(x), rtol=1e-12, atol=1e-12)
    # after the first chunk, every query also reads earlier tokens, through the agents only
    agent = _mixer("agent", chunk_size=8, n_agents=2)
    pattern = agent.pattern_of(x)
    assert torch.all(pattern[:, :, 8:, :8].abs().sum(-1) > 0)
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern[..., 0]))
    with pytest.raises(ValueError, match="must divide chunk_size"):
        _mixer("agent", chunk_size=10, n_agents=3)


# ---- moh: heads as experts ------------------------------------------------------------------------
def test_moh_with_every_head_selected_is_softmax_attention_scaled_by_the_router():
    moh = _mixer("moh", shared_heads=0, top_k=4, unit_scale=False, n_kv_heads=2)
    softmax = _mixer("softmax", n_kv_heads=2, seed=1)
    _same_projections(softmax, moh)
    x = _randn(2, 17, 16, seed=10)
    pattern = moh.pattern_of(x)
    reference = softmax.pattern_of(x)
    weights = torch.softmax(moh.routed_router(x), -1).transpose(1, 2)  # [B, H, T]
    torch.testing.assert_close(pattern, reference * weights[..., None], rtol=1e-12, atol=1e-12)


def test_moh_uniform_router_with_all_heads_active_is_multi_head_attention():
    """unit_scale: a uniform router weighs every active head 1; with every head active that is plain
    multi-head softmax attention. The balance loss is then top_k (= R sum_i f_i / R)."""
    moh = _mixer("moh", shared_heads=2, top_k=2, n_kv_heads=1)
    with torch.no_grad():
        for router in (moh.shared_router, moh.routed_router, moh.balance_router):
            router.weight.zero_()
    softmax = _mixer("softmax", n_kv_heads=1, seed=1)
    _same_projections(softmax, moh)
    x = _randn(2, 13, 16, seed=11)
    torch.testing.assert_close(moh(x), softmax(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(moh.load_balance_loss, torch.tensor(2.0, dtype=torch.float64))


def test_moh_routes_each_token_to_its_top_k_heads():
    moh = _mixer("moh", shared_heads=1, top_k=1, d_model=24, n_heads=6, n_kv_heads=6)
    x = _randn(2, 21, 24, seed=12)
    pattern = moh.pattern_of(x)
    active = pattern.abs().sum(-1) > 0  # [B, H, T]
    assert torch.all(active[:, 0]), "the shared head is always on"
    assert torch.all(active[:, 1:].sum(1) == 1), "exactly top_k = 1 routed head per token"
    assert moh.load_balance_loss.requires_grad and moh.load_balance_loss.item() > 0
    assert moh.n_routed == 5 and moh.routed_router.out_features == 5 and moh.shared_router is None
    moh.load_balance_loss.backward()
    assert moh.routed_router.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="routed heads"):
        _mixer("moh", shared_heads=2, top_k=3)


# ---- a two-layer studio model with each mixer ------------------------------------------------------
MODEL_LAYERS = {
    "moh": {"mixer": "moh", "shared_heads": 1, "top_k": 1},
    "landmark": {"mixer": "landmark", "block_size": 4, "top_k": 2},
    "agent": {"mixer": "agent", "chunk_size": 4, "n_agents": 2},
    "dma": {"mixer": "dma", "top_k": 5, "chunk_size": 4},
}


@pytest.mark.parametrize("name", SPARSE)
def test_studio_model_saves_loads_and_decodes(tmp_path, name):
    spec = {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 2, "pattern": "AS",
            "pattern_map": {"A": MODEL_LAYERS[name], "S": "softmax"}}
    model = build_model(spec, seed=3).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # off the seed's weights (and dma's A off 0)
    tokens = torch.randint(0, 64, (2, 23), generator=torch.Generator().manual_seed(0))
    model.save(tmp_path / "ckpt")
    loaded = HybridLM.load(tmp_path / "ckpt").double()
    torch.testing.assert_close(loaded(tokens), model(tokens), rtol=0, atol=0)
    generated = model.generate(tokens[:, :9], max_new_tokens=14)
    seq = tokens[:, :9]
    for _ in range(14):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, seq)


def test_spec_refuses_a_moh_layer_without_routed_heads():
    spec = {"vocab_size": 64, "d_model": 32, "n_layers": 1, "n_heads": 2, "pattern": "A",
            "pattern_map": {"A": {"mixer": "moh", "shared_heads": 2}}}
    with pytest.raises((SpecError, ValueError), match="routed"):
        ArchSpec.from_dict(spec)


# ---- defaults at the Learn tab's shapes, and costs -------------------------------------------------
@pytest.mark.parametrize("name", SPARSE)
def test_defaults_build_at_gallery_and_cost_shapes(name):
    small = MixerShape(d_model=32, n_heads=2, n_kv_heads=2, d_head=16)
    mixer = REGISTRY[name](small).double().eval()
    pattern = mixer.pattern_of(_randn(1, 12, 32, seed=13))
    assert pattern.shape == (1, 2, 12, 12) and torch.all(pattern.triu(1) == 0) and pattern[0, 0].abs().sum() > 0
    assert REGISTRY[name].family == "sparse"
    big_shape = MixerShape(d_model=1024, n_heads=8, n_kv_heads=8, d_head=128)
    with torch.device("meta"):
        big, softmax = REGISTRY[name](big_shape), REGISTRY["softmax"](big_shape)
    for n in (256, 4096, 1 << 20):
        flops, state = big.mixing_flops_per_token(n), big.state_elements(n)
        assert math.isfinite(flops) and flops > 0 and state > 0
    long = 1 << 20
    assert big.mixing_flops_per_token(long) < softmax.mixing_flops_per_token(long), "sparser than softmax"


def test_cost_methods_follow_the_sparsity():
    shape = MixerShape(d_model=64, n_heads=4, n_kv_heads=4, d_head=16)
    h, d = 4, 16
    dma = REGISTRY["dma"](shape, top_k=8)
    assert dma.mixing_flops_per_token(1) == 4 * h * d
    assert dma.mixing_flops_per_token(100) == pytest.approx(4 * h * d * (36 + 92 * 8) / 100)  # min(t, 8), t <= 100
    landmark = REGISTRY["landmark"](shape, block_size=4, top_k=1)
    # length 12: own-block tokens 3 x (1+2+3+4); landmarks 0,0,0,0,1,1,1,1,2,2,2,2; retrieved 4 x (0 + 4 + 4)
    assert landmark.mixing_flops_per_token(12) == pytest.approx(h * d * (4 * (30 + 32) + 2 * 12) / 12)
    assert landmark.state_elements(12) == 4 * 16 * (24 + 3)
    agent = REGISTRY["agent"](shape, chunk_size=4, n_agents=2)
    # length 10: own 4+... = 10 + 10 + 3, agent reads 2 x 6, aggregation 2 x (4 + 8) keys
    assert agent.mixing_flops_per_token(10) == pytest.approx(4 * h * d * (23 + 12 + 24) / 10)
    moh, softmax = REGISTRY["moh"](shape, shared_heads=1, top_k=1), REGISTRY["softmax"](shape)
    assert moh.mixing_flops_per_token(50) == pytest.approx(softmax.mixing_flops_per_token(50) * 2 / 4)
    assert moh.state_elements(50) == softmax.state_elements(50)
