"""The mixture-of-experts feed-forward (`studio.feedforward.MoE`, spec `"mlp": "moe"`): top-k routing,
outputs equal a per-token loop over the chosen experts, the Switch load-balance loss, gradients,
checkpoints, generation, spec errors and the summary's active vs total parameters. Also: per-layer
RoPE/NoPE works with every registered mixer."""

import pytest
import torch

from studio import ArchSpec, HybridLM, SpecError, build_model
from studio.feedforward import MoE, load_balance_loss
from studio.mixers import REGISTRY
from studio.presets import preset
from studio.spec import MoESpec
from studio.summary import summarize, summary_rows

MOE = {"n_experts": 4, "top_k": 2, "shared_experts": 1, "expert_ratio": 2.0}
SPEC = {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 2, "pattern": "AS",
        "pattern_map": {"A": "lightning", "S": "softmax"}, "mlp": "moe", "moe": MOE}


def tokens(batch=2, length=11, seed=0, vocab=64):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def moe_layer(seed=0, **config) -> MoE:
    torch.manual_seed(seed)
    return MoE(16, 24, MoESpec(**{**MOE, **config}), bias=True).double()


# ---- routing and outputs ----------------------------------------------------------------------------
@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_routing_picks_the_top_k_scores(router):
    moe = moe_layer(router=router)
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    weights, indices, probs = moe.route(x)
    logits = moe.router(x)
    assert indices.shape == weights.shape == (3, 7, 2)
    expected = logits.topk(2, dim=-1).indices  # softmax and sigmoid are monotone: the top logits win
    assert torch.equal(indices.sort(-1).values, expected.sort(-1).values)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 7, dtype=torch.float64))
    if router == "softmax":  # renormalised top-k softmax == softmax over the chosen logits
        torch.testing.assert_close(weights, logits.gather(-1, indices).softmax(-1))
    else:  # SmallThinker: the chosen experts' sigmoids, not renormalised
        torch.testing.assert_close(weights, torch.sigmoid(logits.gather(-1, indices)))


@pytest.mark.parametrize("config", [{}, {"router": "sigmoid"}, {"expert_mlp": "gelu", "shared_experts": 0},
                                    {"top_k": 1, "normalize_weights": False}, {"top_k": 4}])
def test_output_equals_a_per_token_loop_over_the_chosen_experts(config):
    moe = moe_layer(seed=1, **config)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    out = moe(x)
    weights, indices, _ = moe.route(x)
    for b in range(2):
        for t in range(9):
            token = x[b, t]
            expected = sum(weights[b, t, j] * moe.experts[int(indices[b, t, j])](token) for j in range(indices.shape[-1]))
            expected = expected + sum((shared(token) for shared in moe.shared), torch.zeros_like(token))
            torch.testing.assert_close(out[b, t], expected, rtol=1e-12, atol=1e-12)


def test_load_balance_loss_on_a_crafted_router():
    # 4 tokens, 2 experts, top-1: three tokens go to expert 0, one to expert 1
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]], dtype=torch.float64)
    indices = probs.argmax(-1, keepdim=True)
    f = torch.tensor([3 / 4, 1 / 4], dtype=torch.float64)
    p = probs.mean(0)  # [0.65, 0.35]
    loss = load_balance_loss(probs, indices, 2)
    torch.testing.assert_close(loss, 2 * (f * p).sum())
    assert float(loss) == pytest.approx(2 * (0.75 * 0.65 + 0.25 * 0.35))
    # a perfectly balanced router scores 1; top-2 of 2 experts always dispatches evenly
    uniform = torch.full((6, 3), 1 / 3, dtype=torch.float64)
    assert float(load_balance_loss(uniform, torch.arange(6)[:, None] % 3, 3)) == pytest.approx(1.0)
    assert float(load_balance_loss(probs, torch.tensor([[0, 1]] * 4), 2)) == pytest.approx(1.0)


def test_forward_records_the_aux_loss_with_a_gradient_to_the_router():
    moe = moe_layer()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    moe(x)
    weights, indices, probs = moe.route(x)
    torch.testing.assert_close(moe.last_aux_loss, load_balance_loss(probs.flatten(0, 1), indices.flatten(0, 1), 4))
    moe.last_aux_loss.backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


def test_gradients_reach_every_chosen_expert_and_only_those():
    moe = moe_layer(seed=2, n_experts=6, top_k=1, shared_experts=1)
    assert moe.config.normalize_weights is False  # top-1 (Switch): the weight keeps the router's gradient
    x = torch.randn(1, 2, 16, dtype=torch.float64)  # 2 tokens, top-1: at most 2 of 6 experts chosen
    out = moe(x)
    out.pow(2).sum().backward()
    chosen = set(moe.route(x)[1].flatten().tolist())
    assert 1 <= len(chosen) <= 2
    for e, expert in enumerate(moe.experts):
        grads = [p.grad for p in expert.parameters()]
        assert all(g is not None for g in grads)  # every expert ran (on no tokens if unchosen): DDP-safe
        touched = any(g.abs().sum() > 0 for g in grads)
        assert touched == (e in chosen), e
    assert all(p.grad.abs().sum() > 0 for p in moe.shared.parameters())
    assert moe.router.weight.grad.abs().sum() > 0


def test_routing_hooks_names_shapes_and_edits():
    model = build_model(SPEC, seed=0)
    x = tokens()
    logits, cache = model.run_with_cache(x)
    for i in range(2):
        assert cache[f"blocks.{i}.mlp.hook_router_logits"].shape == (2, 11, 4)
        assert cache[f"blocks.{i}.mlp.hook_expert_weights"].shape == (2, 11, 2)
        assert cache[f"blocks.{i}.mlp.hook_expert_indices"].shape == (2, 11, 2)
        assert cache[f"blocks.{i}.mlp.shared.0.hook_post"].shape[:2] == (2, 11)
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"],
                                   cache[f"blocks.{i}.hook_resid_mid"] + cache[f"blocks.{i}.hook_mlp_out"])

    def expert_zero_only(indices, hook):
        return torch.zeros_like(indices)

    edited = model.run_with_hooks(x, fwd_hooks=[("blocks.0.mlp.hook_expert_indices", expert_zero_only)])
    assert not torch.allclose(edited, logits)
    torch.testing.assert_close(model(x), logits)


def test_model_aux_loss_sums_the_layers():
    model = build_model(SPEC, seed=0)
    model(tokens())
    per_layer = [block.mlp.last_aux_loss for block in model.blocks]
    torch.testing.assert_close(model.aux_loss(), per_layer[0] + per_layer[1])
    dense = build_model({**SPEC, "mlp": "swiglu", "moe": None}, seed=0)
    dense(tokens())
    assert float(dense.aux_loss()) == 0.0 and dense.moe_layers == []


# ---- the model ------------------------------------------------------------------------------------
def test_save_and_load_give_identical_logits(tmp_path):
    model = build_model(SPEC, seed=4)
    x = tokens(seed=3)
    model.save(tmp_path / "moe")
    again = HybridLM.load(tmp_path / "moe")
    assert again.spec == model.spec
    assert any(name.startswith("blocks.1.mlp.experts.3.") for name, _ in again.named_parameters())
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("config", [{}, {"router": "sigmoid", "shared_experts": 0, "top_k": 1}])
def test_greedy_generation_matches_rerunning_the_forward(config):
    model = build_model({**SPEC, "moe": {**MOE, **config}}, seed=5).double()
    prompt = tokens(batch=3, length=5, seed=1)
    generated = model.generate(prompt, max_new_tokens=10)
    seq = prompt
    for _ in range(10):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, seq)
    full = model(generated)
    logits, states = model.prefill(generated[:, :5])
    for t in range(5, generated.shape[1]):
        logits, states = model.step(generated[:, t], states)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-10, atol=1e-10)


def test_training_adds_the_aux_loss(tmp_path):
    from studio import tasks
    from studio.train import TrainConfig, read_run, train

    with pytest.raises(ValueError, match="aux_loss_coef"):
        TrainConfig(aux_loss_coef=-1).validate()
    task = tasks.get("mqar", vocab_size=64, seq_len=32, num_pairs=4)
    run = train(SPEC, task, 2, tmp_path / "run", batch_size=4, eval_every=2, eval_batches=1, progress=False,
                device="cpu")
    assert read_run(run)["config"]["aux_loss_coef"] == 0.01
    records = (run / "metrics.jsonl").read_text().splitlines()
    assert all('"aux_loss"' in line for line in records)


# ---- the spec ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_spec_round_trip_with_per_layer_moe(fmt):
    s = ArchSpec.from_dict({**SPEC, "mlp": "gelu", "moe": {"n_experts": 8, "top_k": 2, "router": "sigmoid"},
                            "pattern_map": {"A": {"mixer": "lightning", "mlp": "moe"}, "S": "softmax"}})
    assert [s.layer_mlp(i) for i in range(2)] == ["moe", "gelu"]
    assert s.moe.expert_ratio == s.mlp_ratio and s.moe.normalize_weights is False  # defaults resolved
    text = s.to_json() if fmt == "json" else s.to_yaml()
    again = ArchSpec.from_json(text) if fmt == "json" else ArchSpec.from_yaml(text)
    assert again == s and (again.to_json() if fmt == "json" else again.to_yaml()) == text
    assert s.to_dict()["layers"] == [{"mixer": "lightning", "positional": "rope", "mlp": "moe"},
                                     {"mixer": "softmax", "positional": "rope"}]
    model = build_model(s)
    assert isinstance(model.blocks[0].mlp, MoE) and not isinstance(model.blocks[1].mlp, MoE)


def _error(**kw) -> str:
    with pytest.raises(SpecError) as info:
        ArchSpec.from_dict({**SPEC, **kw})
    return str(info.value)


def test_spec_errors_name_the_field_and_the_fix():
    msg = _error(moe={"n_experts": 2, "top_k": 3})
    assert "moe: top_k=3 is more than n_experts=2" in msg and "pick top_k from 1 to 2" in msg
    msg = _error(moe=None)
    assert "mlp: 'moe' needs a 'moe' block" in msg and "n_experts" in msg
    msg = _error(mlp="swiglu", moe=None, pattern_map={"A": {"mixer": "lightning", "mlp": "moe"}, "S": "softmax"})
    assert "layers[0].mlp: 'moe' needs a 'moe' block" in msg
    msg = _error(mlp="swiglu")
    assert "moe: given but no layer uses it" in msg
    msg = _error(moe={"n_experts": 4, "top_k": 2, "experts": 8})
    assert "moe.experts: unknown field" in msg and "n_experts" in msg and "top_k" in msg
    msg = _error(moe={"n_experts": 0})
    assert "moe.n_experts" in msg and "greater than 0" in msg
    msg = _error(moe={"router": "relu"})
    assert "moe.router" in msg and "'softmax'" in msg and "'relu'" in msg
    msg = _error(moe={"expert_ratio": 0.001})
    assert "moe.expert_ratio" in msg and "width of 0" in msg
    msg = _error(pattern_map={"A": {"mixer": "lightning", "mlp": "moee"}, "S": "softmax"})
    assert "layers[0].mlp" in msg and "'moe'" in msg
    assert msg.count("\n") == 1  # one line per problem


def test_size_cap_counts_every_expert():
    small = ArchSpec.from_dict(SPEC)
    with_more = ArchSpec.from_dict({**SPEC, "moe": {**MOE, "n_experts": 64}})
    assert with_more.estimated_params() > 10 * small.estimated_params() / 2
    assert small.estimated_params() == pytest.approx(summarize(small).params, rel=0.05)


# ---- the summary ------------------------------------------------------------------------------------
def test_summary_counts_active_and_total_parameters():
    spec = ArchSpec.from_dict(SPEC)
    s = summarize(spec, length=64)
    model = build_model(spec)
    assert s.params == sum(p.numel() for p in model.parameters())
    expert = sum(p.numel() for p in model.blocks[0].mlp.experts[0].parameters())
    idle = MOE["n_experts"] - MOE["top_k"]
    assert s.active_params == s.params - 2 * idle * expert
    for layer, block in zip(s.layers, model.blocks):
        assert layer.active_params == layer.params - idle * expert
    # FLOPs follow the active weights: swapping in a dense MLP of the size of top_k + shared experts
    # (same width: 3 experts' worth of hidden units) costs the same FLOPs, minus the router
    width = (MOE["top_k"] + MOE["shared_experts"]) * MOE["expert_ratio"]
    dense = summarize(ArchSpec.from_dict({**SPEC, "mlp": "swiglu", "moe": None, "mlp_ratio": width}), length=64)
    router_flops = 2 * 32 * MOE["n_experts"]
    for a, b in zip(s.layers, dense.layers):
        assert a.flops_per_token == b.flops_per_token + router_flops
        assert a.active_params == b.params + 32 * MOE["n_experts"]
    header, rows = summary_rows(s)
    assert "active params" in header and rows[-1][1] == "this / all-softmax"
    assert s.to_dict()["active_params"] == s.active_params
    assert "active params" not in summary_rows(dense)[0]  # dense specs keep their table


def test_smallthinker_moe_preset():
    spec = preset("smallthinker-moe")
    assert spec.moe.router == "sigmoid" and all(spec.layer_mlp(i) == "moe" for i in range(spec.n_layers))
    assert [l.positional for l in spec.layers[:4]] == ["rope", "rope", "rope", "nope"]
    s = summarize(spec)
    assert s.active_params < s.params / 2
    dense = summarize(preset("smallthinker-nope-rope"))
    assert s.flops_per_token == pytest.approx(dense.flops_per_token, rel=0.02)  # 4 of 16 experts = dense MLP
    assert [l.mixer for l in spec.layers] == [l.mixer for l in preset("smallthinker-nope-rope").layers]


# ---- per-layer positional schemes ---------------------------------------------------------------------
def _positional_model(mixer: str, positional: str) -> HybridLM:
    from studio.learn import GALLERY_PARAMS

    layer = {"mixer": mixer, "positional": positional, **GALLERY_PARAMS.get(mixer, {})}
    return build_model({"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 2, "pattern": "AS",
                        "pattern_map": {"A": layer, "S": {"mixer": "softmax", "positional": "nope"}}}, seed=1).double()


def _rotates(mixer) -> bool:
    """RoPE applied by the base (`rotary`) or inside the mixer's own math (`inner_rotary`, see rope_inside)."""
    return mixer.rotary is not None or getattr(mixer, "inner_rotary", None) is not None


@pytest.mark.parametrize("mixer", sorted(REGISTRY))
def test_positional_scheme_works_with_every_mixer(mixer):
    """Per layer, "nope" turns RoPE off everywhere; "rope" turns it on in every mixer that uses positions
    at all (mixers whose recurrence carries position, such as HGRN-2, ignore it); both decode step by
    step exactly like the forward."""
    x = tokens(batch=2, length=20, seed=2)  # past 16 tokens: a second chunk for chunked mixers (RAT)
    outputs = {}
    for positional in ("rope", "nope"):
        model = _positional_model(mixer, positional)
        full, cache = model.run_with_cache(x)
        outputs[positional] = full
        rotates = _rotates(model.blocks[0].attn)
        assert not (positional == "nope" and rotates)
        assert ("blocks.0.attn.hook_rot_q" in cache) <= rotates and "blocks.1.attn.hook_rot_q" not in cache
        logits, states = model.prefill(x[:, :7])
        torch.testing.assert_close(logits, full[:, :7], rtol=1e-9, atol=1e-9)
        for t in range(7, 20):
            logits, states = model.step(x[:, t], states)
            torch.testing.assert_close(logits, full[:, t], rtol=1e-9, atol=1e-9)
        if positional == "rope":
            rope_rotates = rotates
    # the same weights (RoPE has none): the scheme changes the output exactly when RoPE is applied
    assert torch.allclose(outputs["rope"], outputs["nope"]) != rope_rotates


def test_rope_and_nope_share_weights_and_differ_in_the_pattern():
    """The same weights as a RoPE and as a NoPE layer: identical projections, different patterns (RoPE
    turns q and k by their positions), except at position 0 where RoPE turns nothing."""
    spec = {"vocab_size": 64, "d_model": 32, "n_layers": 1, "n_heads": 2, "pattern": "S", "mlp": "none"}
    x = tokens(batch=1, length=6, seed=5)
    rope = build_model({**spec, "pattern_map": {"S": "softmax"}}, seed=0).double()
    nope = build_model({**spec, "pattern_map": {"S": {"mixer": "softmax", "positional": "nope"}}}, seed=0).double()
    nope.load_state_dict(rope.state_dict())
    _, c_rope = rope.run_with_cache(x)
    _, c_nope = nope.run_with_cache(x)
    torch.testing.assert_close(c_rope["blocks.0.attn.hook_q"], c_nope["blocks.0.attn.hook_q"])
    p_rope, p_nope = c_rope["blocks.0.attn.hook_pattern"], c_nope["blocks.0.attn.hook_pattern"]
    assert not torch.allclose(p_rope, p_nope)
    torch.testing.assert_close(p_rope[..., 0, 0], p_nope[..., 0, 0])
