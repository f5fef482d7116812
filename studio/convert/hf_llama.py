"""Load a Hugging Face transformers Llama model (`LlamaForCausalLM`) into a `HybridLM`.

Llama (Touvron et al., "LLaMA: Open and Efficient Foundation Language Models", arXiv 2302.13971) is
a pre-norm decoder with RMSNorm, SwiGLU MLPs and RoPE on every layer's softmax attention, grouped-query
attention in later versions: exactly a studio model whose layers are all `softmax` with `rope`. The
weights map one to one:

    model.embed_tokens                 -> embed               (lm_head too when untied -> unembed)
    layers.i.input_layernorm           -> blocks.i.ln1.norm
    layers.i.self_attn.{q,k,v,o}_proj  -> blocks.i.attn.{q,k,v,o}_proj
    layers.i.post_attention_layernorm  -> blocks.i.ln2.norm
    layers.i.mlp.gate_proj / up_proj / down_proj -> blocks.i.mlp.fc_gate / fc_in / fc_out
    model.norm                         -> ln_final.norm

transformers' Llama uses the half-split RoPE (`rotate_half`: dimension i pairs with i + d/2), which
is studio's convention, so q and k need no permutation. That holds for GGUF files too: llama.cpp
stores q/k in the adjacent-pair order and transformers' GGUF loader permutes them back on load
(`tests/test_pretrained.py` checks the logits and attention patterns of SmolLM2 against
transformers). Tied models get `logit_scale` 1.0 (studio's default 1/sqrt(d_model) is for models it
initialises itself).

Features studio has no equivalent for are refused with a ValueError naming them: RoPE scaling
(linear, dynamic, YaRN, llama3, ...), partial rotary, attention or MLP biases, sliding windows, and
activations other than SiLU.
"""

from __future__ import annotations

from typing import Any

import torch

from studio.model import HybridLM
from studio.spec import ArchSpec

__all__ = ["spec_from_hf_llama_config", "from_hf_llama"]

_SUPPORTED_MODEL_TYPES = ("llama",)


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def _rope(config: Any) -> tuple[float, list[str]]:
    """(rope base, problems) from `rope_parameters` (transformers >= 5) or `rope_theta` + `rope_scaling`."""
    problems = []
    params = _get(config, "rope_parameters") or _get(config, "rope_scaling") or {}
    if not isinstance(params, dict):
        params = dict(params)
    if params and "rope_type" not in params and "type" not in params and "rope_theta" not in params:
        return 0.0, [f"rope_parameters={params!r}: per-layer-type RoPE settings are not supported"]
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type != "default":
        problems.append(
            f"rope scaling {rope_type!r} (rope_parameters={params!r}) is not supported; studio's RoPE is "
            "the unscaled one (rope_type 'default')"
        )
    fraction = params.get("partial_rotary_factor", _get(config, "partial_rotary_factor", 1.0))
    if fraction not in (None, 1, 1.0):
        problems.append(f"partial_rotary_factor={fraction!r} is not supported for Llama models; only 1.0")
    theta = params.get("rope_theta", _get(config, "rope_theta", 10000.0))
    return float(theta), problems


def spec_from_hf_llama_config(config: Any, name: str = "hf-llama") -> ArchSpec:
    """The `ArchSpec` of a transformers `LlamaConfig` (or its dict), named `name`. Raises ValueError
    listing every feature studio cannot reproduce."""
    model_type = _get(config, "model_type", "llama")
    problems: list[str] = []
    if model_type not in _SUPPORTED_MODEL_TYPES:
        problems.append(f"model_type={model_type!r} is not a Llama model; supported: {', '.join(_SUPPORTED_MODEL_TYPES)}")
    rope_base, rope_problems = _rope(config)
    problems += rope_problems
    if _get(config, "attention_bias", False):
        problems.append("attention_bias=True is not supported (studio's imported Llama layers have no q/k/v/o biases)")
    if _get(config, "mlp_bias", False):
        problems.append("mlp_bias=True is not supported (studio's imported Llama MLPs have no biases)")
    window = _get(config, "sliding_window", None)
    if window is not None or _get(config, "use_sliding_window", False):
        problems.append(f"sliding_window={window!r} is not supported; every imported layer is full softmax attention")
    layer_types = _get(config, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        problems.append(f"layer_types {sorted(set(layer_types))} are not supported; only 'full_attention'")
    act = _get(config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        problems.append(f"hidden_act={act!r} is not supported; studio's SwiGLU MLP uses 'silu'")
    if problems:
        raise ValueError("cannot convert this Llama config to a studio model:\n  " + "\n  ".join(problems))

    d_model = int(_get(config, "hidden_size"))
    n_heads = int(_get(config, "num_attention_heads"))
    n_kv = int(_get(config, "num_key_value_heads", None) or n_heads)
    d_head = int(_get(config, "head_dim", None) or d_model // n_heads)
    n_layers = int(_get(config, "num_hidden_layers"))
    d_mlp = int(_get(config, "intermediate_size"))
    mlp_ratio = d_mlp / d_model
    if int(round(mlp_ratio * d_model)) != d_mlp:  # guards against float trouble at odd sizes
        raise ValueError(f"intermediate_size={d_mlp} cannot be expressed as mlp_ratio * d_model={d_model}")
    return ArchSpec.from_dict({
        "name": name,
        "vocab_size": int(_get(config, "vocab_size")), "d_model": d_model, "n_layers": n_layers,
        "n_heads": n_heads, "n_kv_heads": n_kv, "d_head": d_head,
        "mlp": "swiglu", "mlp_ratio": mlp_ratio, "norm": "rmsnorm", "norm_eps": float(_get(config, "rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(_get(config, "tie_word_embeddings", False)), "bias": False,
        "rope_base": rope_base, "logit_scale": 1.0,
        "layers": [{"mixer": "softmax", "positional": "rope"}] * n_layers,
    })


def from_hf_llama(hf_model, name: str = "hf-llama") -> HybridLM:
    """A float32 `HybridLM` (eval mode) computing the same function as `hf_model`, a transformers
    `LlamaForCausalLM`. The source model is not modified; the weights are copied, never shared."""
    spec = spec_from_hf_llama_config(hf_model.config, name)
    source = {k.removeprefix("model."): v for k, v in hf_model.state_dict().items()}
    target: dict[str, torch.Tensor] = {
        "embed.weight": source["embed_tokens.weight"],
        "ln_final.norm.weight": source["norm.weight"],
    }
    if not spec.tie_embeddings:
        if "lm_head.weight" not in source:
            raise ValueError("the config says the embeddings are untied but the model has no lm_head.weight")
        target["unembed.weight"] = source["lm_head.weight"]
    pairs = (
        ("input_layernorm", "ln1.norm"), ("post_attention_layernorm", "ln2.norm"),
        ("self_attn.q_proj", "attn.q_proj"), ("self_attn.k_proj", "attn.k_proj"),
        ("self_attn.v_proj", "attn.v_proj"), ("self_attn.o_proj", "attn.o_proj"),
        ("mlp.gate_proj", "mlp.fc_gate"), ("mlp.up_proj", "mlp.fc_in"), ("mlp.down_proj", "mlp.fc_out"),
    )
    for i in range(spec.n_layers):
        for a, b in pairs:
            target[f"blocks.{i}.{b}.weight"] = source[f"layers.{i}.{a}.weight"]
    # Built on the meta device (no random init of weights about to be replaced), then given copies
    # of the source tensors, so that the two models never share storage.
    with torch.device("meta"):
        model = HybridLM(spec)
    target = {k: v.detach().to(device="cpu", dtype=torch.float32, copy=True) for k, v in target.items()}
    missing, unexpected = model.load_state_dict(target, strict=False, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing or unexpected or left:
        raise ValueError(f"weights do not line up: missing {missing or left}, unexpected {unexpected}")
    return model.eval()
