"""Training-free softmax approximations (hip, deltallm): the reference kernels against their oracles, exact
softmax when the budget covers everything, models with them save, load and decode, and
studio.approximations swaps them into trained models and measures them."""

import pytest
import torch

import studio
from kernels.reference.anchored_attention import anchored_attention, anchored_pattern, recurrent_anchored_attention
from kernels.reference.hip_attention import hip_attention, hip_attention_oracle, hip_pattern
from studio.approximations import approximable_layers, approximate, approximation_names, approximation_report
from studio.mixers import REGISTRY, MixerShape

TOL = dict(rtol=1e-12, atol=1e-12)


def _qkv(seed: int, t: int = 41, b: int = 2, h: int = 3, d: int = 6, sharp: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g, dtype=torch.float64) * sharp
    k = torch.randn(b, h, t, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, h, t, d - 1, generator=g, dtype=torch.float64)
    return q, k, v


def _softmax_pattern(q, k, scale):
    t = q.shape[2]
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    return torch.softmax((q @ k.transpose(-1, -2) * scale).masked_fill(future, float("-inf")), -1)


# ---- reference kernels -----------------------------------------------------------------------------
@pytest.mark.parametrize("block_size,top_k,keep_sink,keep_local", [(4, 2, True, True), (3, 3, False, False),
                                                                   (1, 5, True, False), (5, 1, False, True)])
@pytest.mark.parametrize("seed", [0, 1])
def test_hip_kernel_matches_per_query_oracle(block_size, top_k, keep_sink, keep_local, seed):
    q, k, v = _qkv(seed)
    options = dict(block_size=block_size, top_k=top_k, keep_sink=keep_sink, keep_local=keep_local, scale=0.4)
    z = hip_attention(q, k, v, **options)
    torch.testing.assert_close(z, hip_attention_oracle(q, k, v, **options), **TOL)
    pattern = hip_pattern(q, k, **options)
    torch.testing.assert_close(pattern @ v, z, **TOL)
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern[..., 0]), **TOL)
    assert torch.all(pattern >= 0) and torch.all(pattern.triu(1) == 0)
    budget = block_size * (top_k + keep_sink + keep_local)
    assert int((pattern > 0).sum(-1).max()) <= budget, "a query keeps at most top_k + sink + local blocks"
    one_by_one = torch.cat([hip_attention(q[:, :, i : i + 1], k[:, :, : i + 1], v[:, :, : i + 1], **options)
                            for i in range(q.shape[2])], 2)
    torch.testing.assert_close(one_by_one, z, **TOL)


@pytest.mark.parametrize("correction", ["renormalise", "delta"])
@pytest.mark.parametrize("window,anchor_every,sink", [(4, 3, 0), (3, 16, 5), (8, 1, 4), (64, 5, 2), (5, 5, 7),
                                                      (2, 4, 80)])
def test_anchored_parallel_matches_recurrent_oracle(correction, window, anchor_every, sink):
    q, k, v = _qkv(3, t=70)
    options = dict(window=window, anchor_every=anchor_every, correction=correction, sink=sink, scale=0.4)
    z, _ = anchored_attention(q, k, v, **options)
    ref, _ = recurrent_anchored_attention(q, k, v, **options)
    torch.testing.assert_close(z, ref, **TOL)
    pattern = anchored_pattern(q, k, **options)
    torch.testing.assert_close(pattern @ v, z, **TOL)
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern[..., 0]), **TOL)
    assert torch.all(pattern.triu(1) == 0)
    if correction == "renormalise":
        assert torch.all(pattern >= 0)
    anchors = torch.arange(0, 70, anchor_every)
    torch.testing.assert_close(pattern[:, :, anchors], _softmax_pattern(q, k, 0.4)[:, :, anchors], **TOL)


# ---- mixers ----------------------------------------------------------------------------------------
def _pair(name: str, params: dict, **shape):
    """The approximation and a softmax layer with the same weights, float64."""
    shape = MixerShape(**{"d_model": 16, "n_heads": 4, "n_kv_heads": 4, "d_head": 4, **shape})
    torch.manual_seed(0)
    dense = REGISTRY["softmax"](shape).double()
    for p in dense.parameters():
        torch.nn.init.normal_(p, std=0.5)
    approx = REGISTRY[name](shape, **params).double()
    approx.load_state_dict(dense.state_dict(), strict=True)
    return dense, approx


def test_approximations_are_registered_as_a_family():
    assert {"deltallm", "hip"} <= set(approximation_names())
    for name in ("deltallm", "hip"):
        assert issubclass(REGISTRY[name], REGISTRY["softmax"]) and REGISTRY[name].state_kind == "kv_cache"


@pytest.mark.parametrize("name,params,shape", [
    ("hip", {"top_k": 32, "block_size": 4}, {}),
    ("hip", {"top_k": 130, "block_size": 1, "keep_sink": False, "keep_local": False}, dict(n_kv_heads=2)),
    ("deltallm", {"window": 130, "anchor_every": 7}, {}),
    ("deltallm", {"window": 3, "anchor_every": 1}, dict(n_kv_heads=1)),
    ("deltallm", {"window": 2, "anchor_every": 5, "sink": 130, "correction": "delta"}, {}),
    ("deltallm", {"window": 3, "anchor_every": 1, "correction": "delta"}, dict(positional="nope")),
])
def test_full_budget_equals_dense_softmax(name, params, shape):
    dense, approx = _pair(name, params, **shape)
    x = torch.randn(2, 130, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(approx(x), dense(x), **TOL)
    torch.testing.assert_close(approx.pattern_of(x), dense.pattern_of(x), **TOL)


def _pattern_error(name, params, x):
    dense, approx = _pair(name, params)
    with torch.no_grad():
        return float((approx.pattern_of(x) - dense.pattern_of(x)).abs().sum(-1).mean())


def test_hip_error_decreases_as_top_k_grows():
    x = torch.randn(2, 128, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    errors = [_pattern_error("hip", {"top_k": k, "block_size": 4}, x) for k in (1, 2, 4, 8, 16, 32)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:-1])), errors
    assert errors[-1] < 1e-12, "32 blocks of 4 cover all 128 keys"


def test_deltallm_error_decreases_with_more_exact_keys_and_more_anchors():
    x = torch.randn(2, 128, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    by_window = [_pattern_error("deltallm", {"window": w, "anchor_every": 16}, x) for w in (4, 16, 64, 128)]
    by_anchors = [_pattern_error("deltallm", {"window": 8, "anchor_every": r}, x) for r in (64, 16, 4, 1)]
    by_sinks = [_pattern_error("deltallm", {"window": 8, "sink": n, "correction": "delta"}, x) for n in (0, 32, 128)]
    for errors in (by_window, by_anchors, by_sinks):
        assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
        assert errors[-1] < 1e-12


@pytest.mark.parametrize("name,params", [("hip", {"top_k": 2, "block_size": 4}),
                                         ("deltallm", {"window": 5, "anchor_every": 4}),
                                         ("deltallm", {"window": 5, "anchor_every": 4, "correction": "delta"})])
def test_rows_sum_to_one(name, params):
    """Softmax-like: every row of the effective pattern sums to 1 (test_mixers checks this only by name)."""
    _, approx = _pair(name, params)
    pattern = approx.pattern_of(torch.randn(2, 50, 16, dtype=torch.float64))
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern[..., 0]), **TOL)


def test_hip_first_blocks_are_exact():
    """While the sink, local and top_k blocks cover every earlier key, HiP is softmax."""
    dense, approx = _pair("hip", {"top_k": 2, "block_size": 4})
    x = torch.randn(1, 60, 16, dtype=torch.float64)
    exact_rows = 4 * (2 + 2)  # the first 16 queries see at most 4 blocks
    torch.testing.assert_close(approx.pattern_of(x)[:, :, :exact_rows], dense.pattern_of(x)[:, :, :exact_rows], **TOL)


def test_costs_follow_the_budget():
    shape = MixerShape(d_model=1024, n_heads=8, n_kv_heads=8, d_head=128)
    with torch.device("meta"):
        dense, hip, delta = (REGISTRY[n](shape) for n in ("softmax", "hip", "deltallm"))
    n = 1 << 20
    assert hip.mixing_flops_per_token(n) < dense.mixing_flops_per_token(n) / 100
    assert delta.mixing_flops_per_token(n) < dense.mixing_flops_per_token(n) / 8
    assert hip.state_elements(n) == dense.state_elements(n) < delta.state_elements(n)
    assert hip.mixing_flops_per_token(64) == pytest.approx(dense.mixing_flops_per_token(64), rel=1e-9)


# ---- models ----------------------------------------------------------------------------------------
def _spec(layer) -> dict:
    return {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 2, "pattern": "AS",
            "pattern_map": {"A": layer, "S": "softmax"}}


def _greedy(model, tokens, new):
    for _ in range(new):
        tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], 1)
    return tokens


@pytest.mark.parametrize("layer", [{"mixer": "hip", "top_k": 2, "block_size": 4},
                                   {"mixer": "deltallm", "window": 6, "anchor_every": 4},
                                   {"mixer": "deltallm", "window": 5, "anchor_every": 3, "correction": "delta"}])
def test_model_saves_loads_and_decodes_like_the_forward(layer, tmp_path):
    model = studio.build_model(_spec(layer), seed=0).eval()
    tokens = torch.randint(0, 64, (2, 30), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    model.save(tmp_path)
    loaded = studio.HybridLM.load(tmp_path)
    assert type(loaded.blocks[0].attn).name == layer["mixer"]
    assert torch.equal(loaded(tokens), logits)
    model = model.double()
    assert torch.equal(model.generate(tokens[:, :20], max_new_tokens=15), _greedy(model, tokens[:, :20], 15))


def _trained(steps: int = 20) -> studio.HybridLM:
    """A 3-layer softmax / lightning / softmax model after a few Adam steps on a repeating sequence."""
    spec = {"vocab_size": 64, "d_model": 32, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "pattern": "SLS",
            "pattern_map": {"S": {"mixer": "softmax", "rope_fraction": 0.5}, "L": "lightning"}}
    model = studio.build_model(spec, seed=1)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        tokens = torch.randint(0, 64, (4, 16), generator=g).repeat(1, 4)
        loss = model(tokens, return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    return _trained()


@pytest.fixture(scope="module")
def sample_tokens():
    return torch.randint(0, 64, (2, 64), generator=torch.Generator().manual_seed(2)).repeat(1, 2)


@pytest.mark.parametrize("method,params", [("hip", {"top_k": 2, "block_size": 8}),
                                           ("deltallm", {"window": 16, "correction": "delta"})])
def test_approximate_keeps_the_weights(trained, sample_tokens, method, params, tmp_path):
    before = {name: p.detach().clone() for name, p in trained.state_dict().items()}
    dense_logits = trained(sample_tokens)
    approx = approximate(trained, method, **params)
    assert approx is not trained and approximable_layers(trained) == [0, 2]
    assert [type(b.attn).name for b in trained.blocks] == ["softmax", "lightning", "softmax"], "original untouched"
    assert [type(b.attn).name for b in approx.blocks] == [method, "lightning", method]
    assert [layer.mixer for layer in approx.spec.layers] == [method, "lightning", method]
    assert approx.spec.layers[0].params == {"rope_fraction": 0.5, **params}
    after = approx.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert all(p is q for p, q in zip(trained.parameters(), approx.parameters())), "weights are shared"
    assert not torch.equal(approx(sample_tokens), dense_logits)
    torch.testing.assert_close(approximate(approx, "softmax")(sample_tokens), dense_logits, rtol=0, atol=0)
    approx.save(tmp_path)
    loaded = studio.HybridLM.load(tmp_path)
    assert [type(b.attn).name for b in loaded.blocks] == [method, "lightning", method]
    assert torch.equal(loaded(sample_tokens), approx(sample_tokens))


def test_approximate_in_place_and_by_layer(trained, sample_tokens):
    model = approximate(trained, "softmax")  # a copy to change in place
    same = approximate(model, "deltallm", layers=[2], inplace=True, window=8, anchor_every=4)
    assert same is model
    assert [type(b.attn).name for b in model.blocks] == ["softmax", "lightning", "deltallm"]
    assert "blocks.2.attn.hook_pattern" in model.hook_dict and model.hook_dict["blocks.2.attn.hook_pattern"] is \
        model.blocks[2].attn.hook_pattern
    with pytest.raises(ValueError, match="lightning"):
        approximate(trained, "hip", layers=[1])
    with pytest.raises(ValueError, match="unknown approximation"):
        approximate(trained, "sliding_window")
    with pytest.raises(ValueError, match="unknown parameter"):
        approximate(trained, "hip", window=4)
    with pytest.raises(ValueError, match="no softmax layer"):
        approximate(studio.build_model(_spec("lightning") | {"pattern": "A"}), "hip")
    minimal = studio.build_model(_spec({"mixer": "softmax", "qk": "collapsed"}))  # layer 0 collapsed, layer 1 not
    assert approximable_layers(minimal) == [1]
    with pytest.raises(ValueError, match="qk: collapsed.*separate W_Q, W_K, W_V, W_O"):
        approximate(minimal, "hip", layers=[0])


def test_report_rows(trained, sample_tokens):
    exact = approximate(trained, "hip", top_k=64, block_size=4)
    rows = approximation_report(trained, exact, sample_tokens)
    assert [r["layer"] for r in rows] == [0, 2, "all"]
    for r in rows:
        assert r["computed_fraction"] == pytest.approx(1.0)
        assert r["pattern_max_abs_err"] < 1e-5 and r["output_rel_err"] < 1e-5 and r["logit_rel_err"] < 1e-5
        assert r["top1_agreement"] == 1.0

    sparse = approximate(trained, "hip", top_k=1, block_size=4)
    rows = approximation_report(trained, sparse, sample_tokens)
    keys = {"layer", "mixer", "params", "pattern_max_abs_err", "pattern_mean_abs_err", "output_max_abs_err",
            "output_mean_abs_err", "output_rel_err", "logit_rel_err", "top1_agreement", "computed_fraction"}
    for r in rows:
        assert set(r) == keys
        assert 0 < r["computed_fraction"] < 0.6
        assert 0 < r["pattern_mean_abs_err"] <= r["pattern_max_abs_err"] <= 2
        assert 0 < r["output_mean_abs_err"] <= r["output_max_abs_err"]
        assert 0 < r["logit_rel_err"] and 0 <= r["top1_agreement"] <= 1
    assert rows[0]["params"] == {"rope_fraction": 0.5, "top_k": 1, "block_size": 4}

    delta = approximate(trained, "deltallm", layers=[0], window=16, anchor_every=8)
    rows = approximation_report(trained, delta, sample_tokens[0], layer_logits=False)
    assert [r["layer"] for r in rows] == [0, "all"] and rows[0]["logit_rel_err"] is None
    assert rows[1]["logit_rel_err"] > 0
    t, w, r, sink = 128, 16, 8, 4  # window and sink keys + anchors' far keys + one far key per other query
    computed = sum(min(i + 1, w) + min(sink, max(0, i - w + 1))
                   + (max(0, i - w + 1 - sink) if i % r == 0 else int(i - w >= sink)) for i in range(t))
    assert rows[0]["computed_fraction"] == pytest.approx(computed / (t * (t + 1) / 2))
    with pytest.raises(ValueError, match="approximates none"):
        approximation_report(trained, trained, sample_tokens)
