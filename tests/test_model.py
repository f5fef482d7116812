"""HybridLM: TransformerLens hooks on every mixer, lazy patterns, generation through `step`,
checkpoints written atomically as safetensors and read back."""

import json

import pytest
import torch
from safetensors import safe_open

from studio import ArchSpec, HybridLM, build_model

HYBRID = {
    "vocab_size": 97, "d_model": 32, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2,
    "pattern": "LWNS",
    "pattern_map": {"L": {"mixer": "lightning", "block_size": 8}, "W": {"mixer": "sliding_window", "window": 6},
                    "N": {"mixer": "linear", "short_conv": 3}, "S": {"mixer": "softmax", "positional": "nope"}},
}


@pytest.fixture(scope="module")
def model():
    return build_model(ArchSpec.from_dict(HYBRID), seed=3)


def tokens(batch=2, length=19, seed=0):
    return torch.randint(0, 97, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_hook_names_and_shapes(model):
    logits, cache = model.run_with_cache(tokens())
    assert logits.shape == (2, 19, 97)
    assert cache["hook_embed"].shape == (2, 19, 32)
    assert cache["ln_final.hook_normalized"].shape == (2, 19, 32)
    for i in range(4):
        for hook in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                     "mlp.hook_pre", "mlp.hook_post", "ln1.hook_normalized"):
            assert f"blocks.{i}.{hook}" in cache
        assert cache[f"blocks.{i}.attn.hook_q"].shape == (2, 19, 4, 8)
        assert cache[f"blocks.{i}.attn.hook_k"].shape == (2, 19, 2, 8)
        assert cache[f"blocks.{i}.attn.hook_z"].shape == (2, 19, 4, 8)
        assert cache[f"blocks.{i}.attn.hook_pattern"].shape == (2, 4, 19, 19)
    assert cache["blocks.0.attn.hook_state"].shape == (2, 4, 8, 8)  # lightning: d_k x d_v per head
    assert cache["blocks.2.attn.hook_state"].shape == (2, 4, 8, 9)  # linear: + normaliser column
    assert "blocks.3.attn.hook_rot_q" not in cache  # NoPE layer
    torch.testing.assert_close(cache["blocks.3.hook_resid_post"], cache["blocks.3.hook_resid_mid"]
                               + cache["blocks.3.hook_mlp_out"])
    torch.testing.assert_close(logits, model(tokens()))


def test_plain_forward_never_builds_a_pattern(model, monkeypatch):
    calls = []
    for block in model.blocks:
        original = block.attn.effective_pattern
        monkeypatch.setattr(block.attn, "effective_pattern", lambda *a, f=original, **k: calls.append(1) or f(*a, **k))
    model(tokens())
    model.run_with_cache(tokens(), names_filter=lambda n: n.endswith("hook_z"))
    assert calls == []
    model.run_with_cache(tokens(), names_filter="blocks.1.attn.hook_pattern")
    assert calls == [1]


def test_pattern_hook_edits_change_the_output(model):
    clean = model(tokens())

    def uniform(pattern, hook):
        causal = torch.ones_like(pattern).tril()
        return causal / causal.sum(-1, keepdim=True)

    edited = model.run_with_hooks(tokens(), fwd_hooks=[("blocks.0.attn.hook_pattern", uniform)])
    assert not torch.allclose(edited, clean)
    torch.testing.assert_close(model(tokens()), clean)  # hooks are gone afterwards


def test_greedy_generation_matches_rerunning_the_forward():
    model = build_model(ArchSpec.from_dict(HYBRID), seed=5).double()
    prompt = tokens(batch=3, length=7, seed=1)
    generated = model.generate(prompt, max_new_tokens=12)
    assert generated.shape == (3, 19)
    seq = prompt
    for _ in range(12):
        nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(generated, seq)


def test_step_logits_match_forward_logits():
    model = build_model(ArchSpec.from_dict(HYBRID), seed=2).double()
    seq = tokens(batch=2, length=15, seed=4)
    full = model(seq)
    states, outs = None, []
    for t in range(seq.shape[1]):
        logits, states = model.step(seq[:, t], states)
        outs.append(logits)
    torch.testing.assert_close(torch.stack(outs, 1), full, rtol=1e-9, atol=1e-9)


def test_sampling_is_seeded_and_respects_top_k(model):
    prompt = tokens(batch=2, length=4)
    a = model.generate(prompt, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    b = model.generate(prompt, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    one = model.generate(prompt, 8, temperature=1.0, top_k=1)
    assert torch.equal(one, model.generate(prompt, 8))  # top-1 sampling is greedy


def test_same_seed_same_weights():
    a, b = build_model(ArchSpec.from_dict(HYBRID), seed=7), build_model(ArchSpec.from_dict(HYBRID), seed=7)
    c = build_model(ArchSpec.from_dict(HYBRID), seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.embed.weight, c.embed.weight)


@pytest.mark.parametrize("tie", [True, False])
def test_checkpoint_round_trip(tmp_path, tie):
    spec = ArchSpec.from_dict({**HYBRID, "tie_embeddings": tie})
    model = build_model(spec, seed=11)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # not the seed's weights: the load must read the file
    model.save(tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["config.json", "model.safetensors"], files  # no temporary files left behind
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert ArchSpec.from_dict(config["spec"]) == spec
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as f:
        assert "embed.weight" in f.keys()
    loaded = HybridLM.load(tmp_path / "ckpt")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    seq = tokens()
    torch.testing.assert_close(loaded(seq), model(seq), rtol=0, atol=0)


def test_loading_bad_directories_says_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        HybridLM.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        HybridLM.load(tmp_path)


def test_bad_tokens_are_refused_clearly(model):
    with pytest.raises(ValueError, match=r"\[0, 97\)"):
        model(torch.tensor([[1, 2, 97]]))
    with pytest.raises(TypeError, match="integer"):
        model(torch.randn(1, 3))
