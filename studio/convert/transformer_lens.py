"""Load a TransformerLens 4.x native model (`TransformerBridge.boot_native`) into a `HybridLM`.

Used to prove parity: the same weights give the same logits and the same `hook_pattern`. TL's native
RoPE turns adjacent pairs (2i, 2i+1); ours turns half-split pairs (i, i + d/2). Permuting each head's
q and k rows the same way maps one onto the other without changing any dot product.
"""

from __future__ import annotations

import torch

from studio.model import HybridLM, build_model
from studio.spec import ArchSpec


def _spec_from_tl_config(cfg) -> ArchSpec:
    positional = (getattr(cfg, "positional_embedding_type", None) or "standard").lower()
    if positional != "rotary":
        raise ValueError(
            f"positional_embedding_type={positional!r} has no studio equivalent (studio layers use RoPE or "
            "NoPE); boot the TransformerLens model with positional_embedding_type='rotary'"
        )
    norm = {"LN": "layernorm", "RMS": "rmsnorm"}.get((cfg.normalization_type or "").upper())
    if norm is None:
        raise ValueError(f"normalization_type={cfg.normalization_type!r} is not supported; use 'LN' or 'RMS'")
    act = (cfg.act_fn or "gelu").lower()
    if cfg.gated_mlp or act != "gelu":
        raise ValueError(f"act_fn={act!r} gated_mlp={cfg.gated_mlp}: only the plain GELU MLP maps onto studio with biases")
    rotary_dim = cfg.rotary_dim or cfg.d_head
    return ArchSpec.from_dict({
        "name": "transformer-lens-native",
        "vocab_size": cfg.d_vocab, "d_model": cfg.d_model, "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_key_value_heads or cfg.n_heads, "d_head": cfg.d_head,
        "mlp": "gelu", "mlp_ratio": cfg.d_mlp / cfg.d_model, "norm": norm, "norm_eps": cfg.eps,
        "tie_embeddings": False, "bias": True, "rope_base": float(cfg.rotary_base),
        "layers": [{"mixer": "softmax", "rope_fraction": rotary_dim / cfg.d_head}] * cfg.n_layers,
    })


def _adjacent_to_half_split(weight: torch.Tensor, n_heads: int, d_head: int, rotary_dim: int) -> torch.Tensor:
    """Reorder each head's rows (2i, 2i+1) -> (i, i + r/2) inside the rotated part."""
    order = torch.cat([torch.arange(0, rotary_dim, 2), torch.arange(1, rotary_dim, 2), torch.arange(rotary_dim, d_head)])
    return weight.reshape(n_heads, d_head, *weight.shape[1:])[:, order].reshape(weight.shape)


def from_transformer_lens_native(bridge) -> HybridLM:
    """A `HybridLM` computing the same function as `bridge` (a `TransformerBridge.boot_native` model)."""
    cfg = bridge.cfg
    spec = _spec_from_tl_config(cfg)
    model = build_model(spec)
    source = {k.replace("._original_component", ""): v for k, v in bridge.original_model.state_dict().items()}
    rotary_dim = cfg.rotary_dim or cfg.d_head
    kv = cfg.n_key_value_heads or cfg.n_heads
    target: dict[str, torch.Tensor] = {"embed.weight": source["tok_embed.weight"], "unembed.weight": source["head.weight"]}
    for part in ("weight", "bias"):
        if f"ln_out.{part}" in source:
            target[f"ln_final.norm.{part}"] = source[f"ln_out.{part}"]
    for i in range(cfg.n_layers):
        src, dst = f"layers.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            for a, b in (("ln1", "ln1.norm"), ("ln2", "ln2.norm"), ("mlp.fc_in", "mlp.fc_in"),
                         ("mlp.fc_out", "mlp.fc_out"), ("attn.v", "attn.v_proj"), ("attn.o", "attn.o_proj")):
                if f"{src}{a}.{part}" in source:
                    target[f"{dst}{b}.{part}"] = source[f"{src}{a}.{part}"]
            for a, b, heads in (("attn.q", "attn.q_proj", cfg.n_heads), ("attn.k", "attn.k_proj", kv)):
                target[f"{dst}{b}.{part}"] = _adjacent_to_half_split(source[f"{src}{a}.{part}"], heads, cfg.d_head, rotary_dim)
    missing, unexpected = model.load_state_dict(target, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights do not line up: missing {missing}, unexpected {unexpected}")
    return model
