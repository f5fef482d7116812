"""Behaviour of the design-principle ablations (Deconstructing Attention, arXiv 2510.11602; Reducing the
Transformer to a Minimum, arXiv 2410.13732): where q and k come from (random rows, a fixed text, the
token embeddings), the Taylor and SiLU forms, MLP mixing, and softmax's collapsed / symmetric weights.
The mixer contract itself (parallel == step == pattern @ v, causality, gradients) is swept by
tests/test_mixers.py through tests/cases_ablation.py."""

import math

import pytest
import torch
import torch.nn.functional as F

from studio import ArchSpec, build_model
from studio.mixers import REGISTRY, MixerShape
from studio.model import HybridLM, fixed_sequence_tokens
from studio.spec import SpecError

VOCAB = 64
VARIANTS = {
    "mlp_mixing": {"mixer": "mlp_mixing"},
    "approx": {"mixer": "approx"},
    "non_approx": {"mixer": "non_approx"},
    "rnd_emb_qk": {"mixer": "rnd_emb_qk", "seed": 1},
    "fixed_seq_qk": {"mixer": "fixed_seq_qk"},
    "static_emb_qk": {"mixer": "static_emb_qk"},
    "qk-collapsed": {"mixer": "softmax", "qk": "collapsed"},
    "qk-symmetric": {"mixer": "softmax", "qk": "symmetric"},
    "vo-collapsed": {"mixer": "softmax", "vo": "collapsed"},
    "qk-vo-collapsed-nope": {"mixer": "softmax", "qk": "collapsed", "vo": "collapsed", "positional": "nope"},
    "mlp-none": {"mixer": "fixed_seq_qk", "mlp": "none"},
}


def model(layer, pattern="SAA", seed=0, **spec):
    """A small model, `pattern` over S (softmax) and A (the variant's layer dict), float64."""
    data = {"vocab_size": VOCAB, "d_model": 32, "n_layers": len(pattern), "n_heads": 4, "n_kv_heads": 2,
            "pattern": pattern, "pattern_map": {"S": "softmax", "A": layer}, **spec}
    return build_model(data, seed=seed).double()


def tokens(batch=2, length=20, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def patterns(m, x):
    with torch.no_grad():
        logits, cache = m.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern"))
    return logits, [cache[f"blocks.{i}.attn.hook_pattern"] for i in range(len(m.blocks))]


# ---- sequence-independent mixing ------------------------------------------------------------------
@pytest.mark.parametrize("mixer", ["rnd_emb_qk", "fixed_seq_qk"])
def test_sequence_independent_patterns_ignore_the_tokens(mixer):
    m = model({"mixer": mixer})
    a, b = tokens(2, 20, seed=1), tokens(3, 20, seed=2)
    logits_a, pa = patterns(m, a)
    logits_b, pb = patterns(m, b)
    assert pa[1].shape == (2, 4, 20, 20) and pb[1].shape == (3, 4, 20, 20)  # the fixed run is not cached
    assert not torch.allclose(pa[0][0], pb[0][0])  # the softmax layer depends on the tokens
    for layer in (1, 2):
        for p in (pa[layer], pb[layer]):
            torch.testing.assert_close(p, pa[layer][:1].expand_as(p), rtol=0, atol=1e-12)
        torch.testing.assert_close(pb[layer][0], pa[layer][0], rtol=0, atol=1e-12)
    _, short = patterns(m, a[:, :9])  # causal: a shorter input sees the top-left corner
    torch.testing.assert_close(short[2][0], pa[2][0, :, :9, :9], rtol=0, atol=1e-12)
    assert not torch.allclose(logits_a[0], logits_b[0])  # the values still carry the input


@pytest.mark.parametrize("mixer", ["rnd_emb_qk", "fixed_seq_qk", "static_emb_qk", "softmax"])
def test_decoupled_patterns_ignore_the_hidden_states(mixer):
    """Changing layer 0 (so the hidden states entering layer 1 change) leaves layer 1's pattern unchanged
    for rnd_emb_qk and static_emb_qk; fixed_seq_qk's fixed text runs through the changed layer too, so its
    pattern follows the weights (never the input); a softmax layer's pattern changes."""
    m = model({"mixer": mixer})
    x = tokens()
    _, before = patterns(m, x)
    with torch.no_grad():
        m.blocks[0].attn.v_proj.weight.mul_(3.0)
        m.blocks[0].mlp.fc_out.weight.add_(0.5)
    _, after = patterns(m, x)
    same = torch.allclose(before[1], after[1], rtol=0, atol=1e-12)
    assert same == (mixer in ("rnd_emb_qk", "static_emb_qk"))


def test_fixed_seq_qk_on_the_fixed_text_is_softmax_attention():
    """On the fixed text itself, the fixed run and the input's run coincide: a fixed_seq_qk model gives
    exactly the logits of the softmax model with the same weights."""
    fixed = model({"mixer": "fixed_seq_qk"})
    plain = model({"mixer": "softmax"})
    plain.load_state_dict(fixed.state_dict())
    text = fixed_sequence_tokens(30, VOCAB)[None]
    assert text[0, :3].tolist() == [ord("T") % VOCAB, ord("h") % VOCAB, ord("e") % VOCAB]
    torch.testing.assert_close(fixed(text), plain(text), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(fixed(tokens()), plain(tokens()))


def test_fixed_run_is_silent_and_without_gradient():
    m = model({"mixer": "fixed_seq_qk"})
    calls = []
    m.blocks[0].hook_resid_pre.add_hook(lambda t, hook: calls.append(t.shape))
    m.blocks[1].attn.hook_pattern.add_hook(lambda t, hook: calls.append(t.shape))
    m(tokens(3, 11))
    m.reset_hooks()
    assert calls == [(3, 11, 32), (3, 4, 11, 11)]  # once each, for the input only
    records, _ = m._fixed_run(11)
    assert len(records) == 3 and not any(r.requires_grad for r in records)
    m.float()(tokens()).sum().backward()  # the layers' own q/k weights still learn
    assert m.blocks[2].attn.q_proj.weight.grad.abs().sum() > 0


def test_static_emb_qk_scores_depend_on_token_ids_only():
    """Layer 1's q/k come from the embeddings: changing token 0 changes the hidden states of every later
    position (through layer 0) but not the scores between later positions, so the pattern rows among
    positions >= 1 keep their ratios; a softmax layer's do not."""
    x = tokens(1, 16, seed=3)
    y = x.clone()
    y[0, 0] = (x[0, 0] + 7) % VOCAB

    def ratios(layer):
        m = model(layer)
        _, (_, p, _) = patterns(m, x)
        _, (_, q, _) = patterns(m, y)
        rest = lambda a: a[..., 1:, 1:] / a[..., 1:, 1:].sum(-1, keepdim=True)  # noqa: E731
        return rest(p), rest(q)

    p, q = ratios({"mixer": "static_emb_qk"})
    torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    p, q = ratios({"mixer": "softmax"})
    assert not torch.allclose(p, q, rtol=1e-6, atol=1e-8)


def test_random_rows_are_fixed_per_position_and_layer():
    shape = MixerShape(d_model=16, n_heads=4, n_kv_heads=4, d_head=4)
    mixer = REGISTRY["rnd_emb_qk"](shape)
    long = mixer.random_rows(torch.arange(600), torch.float64, torch.device("cpu"))
    again = REGISTRY["rnd_emb_qk"](shape).random_rows(torch.tensor([5, 599]), torch.float64, torch.device("cpu"))
    torch.testing.assert_close(again, long[[5, 599]], rtol=0, atol=0)
    other_layer = REGISTRY["rnd_emb_qk"](MixerShape(16, 4, 4, 4, layer_idx=1)).random_rows(
        torch.arange(4), torch.float64, torch.device("cpu"))
    other_seed = REGISTRY["rnd_emb_qk"](shape, seed=1).random_rows(torch.arange(4), torch.float64, torch.device("cpu"))
    assert not torch.allclose(other_layer, long[:4]) and not torch.allclose(other_seed, long[:4])
    assert abs(long.std().item() - 1) < 0.05 and "seed" not in str(list(mixer.state_dict()))


def test_qk_input_replaces_x_for_q_and_k_only():
    """The mechanism on one mixer: q, k from qk_input (forward and step agree), v from x."""
    shape = MixerShape(d_model=16, n_heads=4, n_kv_heads=2, d_head=4)
    torch.manual_seed(0)
    mixer = REGISTRY["static_emb_qk"](shape).double()
    x, c = torch.randn(2, 9, 16, dtype=torch.float64), torch.randn(1, 9, 16, dtype=torch.float64)
    out, state = mixer(x, return_state=True, qk_input=c)
    steps, st = [], None
    for t in range(9):
        o, st = mixer.step(x[:, t], st, qk_input=c[:, t])
        steps.append(o)
    torch.testing.assert_close(torch.stack(steps, 1), out)
    seen = []
    mixer.hook_pattern.add_hook(lambda t, hook: seen.append(t))
    mixer(x, qk_input=c)
    mixer(torch.randn_like(x), qk_input=c)
    mixer.hook_pattern.remove_hooks()
    torch.testing.assert_close(seen[0], seen[1], rtol=0, atol=0)
    assert not torch.allclose(mixer(x), out)  # without qk_input: q, k from x


# ---- mathematical forms ---------------------------------------------------------------------------
def _identity_mixer(name):
    shape = MixerShape(d_model=4, n_heads=1, n_kv_heads=1, d_head=4, positional="nope")
    mixer = REGISTRY[name](shape).double()
    with torch.no_grad():
        for proj in (mixer.q_proj, mixer.k_proj, mixer.v_proj, mixer.o_proj):
            proj.weight.copy_(torch.eye(4))
    return mixer


def test_approx_is_the_hand_computed_taylor_softmax():
    x = torch.tensor([[[1.0, 0.0, 2.0, -1.0], [0.5, -1.5, 0.0, 1.0], [-2.0, 1.0, 1.0, 0.5]]], dtype=torch.float64)
    mixer = _identity_mixer("approx")
    rows = []
    for t in range(3):
        w = []
        for s in range(t + 1):
            score = sum(a * b for a, b in zip(x[0, t].tolist(), x[0, s].tolist())) / 2.0  # sqrt(d) = 2
            w.append(1 + score + score * score / 2)
        rows.append([v / sum(w) for v in w] + [0.0] * (2 - t))
    expected = torch.tensor(rows, dtype=torch.float64)
    pattern = mixer.pattern_of(x)[0, 0]
    torch.testing.assert_close(pattern, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mixer(x)[0], expected @ x[0], rtol=1e-12, atol=1e-12)
    assert (pattern[torch.ones(3, 3).tril().bool()] > 0).all()
    softmax = _identity_mixer("softmax").pattern_of(x)[0, 0]
    assert not torch.allclose(softmax, pattern)


def test_non_approx_is_softmax_of_silu_queries():
    x = torch.randn(1, 6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mixer = _identity_mixer("non_approx")
    q = F.silu(x[0])
    scores = (q @ x[0].T / 2.0).masked_fill(torch.ones(6, 6).triu(1).bool(), float("-inf"))
    torch.testing.assert_close(mixer.pattern_of(x)[0, 0], torch.softmax(scores, -1), rtol=1e-12, atol=1e-12)


def test_mlp_mixing_is_a_swiglu_with_identity_pattern_and_attention_size():
    shape = MixerShape(d_model=64, n_heads=4, n_kv_heads=4, d_head=16)
    mixer = REGISTRY["mlp_mixing"](shape).double()
    attention = sum(p.numel() for p in REGISTRY["softmax"](shape).parameters())
    size = sum(p.numel() for p in mixer.parameters())
    assert mixer.hidden == 88 and size == 3 * 64 * 88 and abs(size / attention - 1) < 0.05
    gqa = MixerShape(d_model=64, n_heads=4, n_kv_heads=2, d_head=16)
    assert REGISTRY["mlp_mixing"](gqa).hidden == 64  # 12,288 weights, as attention with 2 kv heads
    x = torch.randn(2, 7, 64, dtype=torch.float64)
    expected = mixer.o_proj(F.silu(mixer.gate_proj(x)) * mixer.v_proj(x))
    torch.testing.assert_close(mixer(x), expected)
    pattern = mixer.pattern_of(x)
    torch.testing.assert_close(pattern, torch.eye(7, dtype=torch.float64).expand(2, 4, 7, 7))
    assert mixer.rotary is None and mixer.state_elements(1000) == 0
    with pytest.raises(SpecError, match="hidden=10 is not a multiple of n_heads=4"):
        ArchSpec.from_dict({"vocab_size": 64, "d_model": 32, "n_layers": 1, "n_heads": 4,
                            "layers": [{"mixer": "mlp_mixing", "hidden": 10}]})
    with pytest.raises(SpecError, match="short_conv"):
        ArchSpec.from_dict({"vocab_size": 64, "d_model": 32, "n_layers": 1, "n_heads": 4,
                            "layers": [{"mixer": "mlp_mixing", "short_conv": 4}]})


# ---- minimal-transformer forms of softmax ---------------------------------------------------------
def test_symmetric_has_one_projection_and_collapsed_forms_are_the_formulas():
    x = tokens(1, 12, seed=4)
    sym = model({"mixer": "softmax", "qk": "symmetric"}, pattern="A")
    attn = sym.blocks[0].attn
    assert attn.k_proj is None and "blocks.0.attn.k_proj.weight" not in sym.state_dict()
    with torch.no_grad():
        _, cache = sym.run_with_cache(x)
    torch.testing.assert_close(cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"], rtol=0, atol=0)
    p = cache["blocks.0.attn.hook_pattern"]
    torch.testing.assert_close(p.sum(-1), torch.ones_like(p[..., 0]))

    col = model({"mixer": "softmax", "qk": "collapsed", "vo": "collapsed", "positional": "nope"}, pattern="A")
    attn = col.blocks[0].attn
    assert attn.k_proj is None and attn.o_proj is None
    assert attn.q_proj.weight.shape == (4 * 32, 32) and attn.v_proj.weight.shape == (2 * 32, 32)  # per (kv) head
    with torch.no_grad():
        _, cache = col.run_with_cache(x)
        h = cache["blocks.0.ln1.hook_normalized"][0]  # X, [T, d_model]
        w_qk = attn.q_proj.weight.view(4, 32, 32)  # q_h = X W_QK_h^T in nn.Linear's layout
        w_vo = attn.v_proj.weight.view(2, 32, 32)
        out = 0
        for head in range(4):
            scores = (h @ w_qk[head].T @ h.T) / math.sqrt(8)
            scores = scores.masked_fill(torch.ones(12, 12).triu(1).bool(), float("-inf"))
            m = torch.softmax(scores, -1)
            torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"][0, head], m)
            out = out + m @ h @ w_vo[head // 2].T
    torch.testing.assert_close(cache["blocks.0.hook_attn_out"][0], out)


def test_collapsed_vo_starts_at_the_scale_of_separate_weights():
    sep = model({"mixer": "softmax"}, pattern="AA", seed=3).float()
    col = model({"mixer": "softmax", "vo": "collapsed"}, pattern="AA", seed=3).float()
    x = tokens(4, 64, seed=5)
    with torch.no_grad():
        _, a = sep.run_with_cache(x)
        _, b = col.run_with_cache(x)
    ratio = b["blocks.0.hook_attn_out"].std() / a["blocks.0.hook_attn_out"].std()
    assert 0.5 < ratio < 2.0, ratio


def test_qk_and_vo_are_validated():
    base = {"vocab_size": 64, "d_model": 32, "n_layers": 1, "n_heads": 4}
    with pytest.raises(SpecError, match="qk"):
        ArchSpec.from_dict({**base, "layers": [{"mixer": "softmax", "qk": "tied"}]})
    with pytest.raises(SpecError, match="vo"):
        ArchSpec.from_dict({**base, "layers": [{"mixer": "softmax", "vo": "symmetric"}]})
    spec = ArchSpec.from_dict({**base, "layers": [{"mixer": "softmax", "qk": "collapsed"}]})
    assert spec.layers[0].params == {"qk": "collapsed"}
    assert ArchSpec.from_json(spec.to_json()) == spec


# ---- every variant in a model: trains, generates, saves --------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_generates_and_round_trips(variant, tmp_path):
    layer = dict(VARIANTS[variant])
    m = model(layer, pattern="ASA", seed=1).float()
    x = tokens(4, 24, seed=6)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    loss = m(x, return_type="loss")
    loss.backward()
    assert torch.isfinite(loss)
    frozen = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert frozen == [], frozen
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in m.named_parameters())
    assert m(x, return_type="loss") < loss

    m = m.double().eval()
    prompt = x[:2, :6]
    generated = m.generate(prompt, max_new_tokens=8)
    seq = prompt
    for _ in range(8):
        seq = torch.cat([seq, m(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, seq)
    logits, states = m.prefill(x[:, :10])
    for t in range(10, 24):
        logits, states = m.step(x[:, t], states)
        torch.testing.assert_close(logits, m(x[:, : t + 1])[:, -1], rtol=1e-9, atol=1e-9)

    m.save(tmp_path / "m")
    loaded = HybridLM.load(tmp_path / "m").double()
    torch.testing.assert_close(loaded(x), m(x), rtol=0, atol=0)


def test_fixed_seq_qk_trains_with_the_training_loop(tmp_path):
    from studio import tasks
    from studio.train import train

    spec = {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 2, "pattern": "SA",
            "pattern_map": {"S": "softmax", "A": "fixed_seq_qk"}}
    out = train(spec, tasks.get("mqar", vocab_size=64, seq_len=32, num_pairs=4), 2, tmp_path / "run", batch_size=4,
                eval_every=2, eval_batches=1, progress=False)
    assert [type(b.attn).name for b in HybridLM.load(out).blocks] == ["softmax", "fixed_seq_qk"]
