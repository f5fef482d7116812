"""A softmax-only studio model with TransformerLens's own weights computes what TransformerLens does:
same logits (<= 1e-4 relative) and the same hook_pattern in every layer."""

import pytest
import torch
from transformer_lens import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge

from studio.convert import from_transformer_lens_native


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("norm,kv_heads", [("LN", None), ("RMS", 2)])
def test_logits_and_patterns_match_transformer_lens(seed, norm, kv_heads):
    cfg = TransformerBridgeConfig(
        n_layers=3, d_model=48, n_ctx=128, d_head=12, n_heads=4, n_key_value_heads=kv_heads, d_vocab=97,
        act_fn="gelu", normalization_type=norm, positional_embedding_type="rotary", seed=seed,
    )
    bridge = TransformerBridge.boot_native(cfg)
    ours = from_transformer_lens_native(bridge)
    tokens = torch.randint(0, 97, (2, 41), generator=torch.Generator().manual_seed(seed))
    tl_logits, tl_cache = bridge.run_with_cache(tokens)
    logits, cache = ours.run_with_cache(tokens)
    rel = (logits - tl_logits).norm() / tl_logits.norm()
    assert rel <= 1e-4, f"relative logit error {rel:.2e}"
    assert logits.argmax(-1).eq(tl_logits.argmax(-1)).all()
    for i in range(3):
        name = f"blocks.{i}.attn.hook_pattern"
        torch.testing.assert_close(cache[name], tl_cache[name], rtol=1e-4, atol=1e-5)


def test_learned_positions_are_refused_with_a_reason():
    cfg = TransformerBridgeConfig(n_layers=1, d_model=16, n_ctx=32, d_head=4, n_heads=4, d_vocab=11,
                                  act_fn="gelu", normalization_type="LN")
    with pytest.raises(ValueError, match="rotary"):
        from_transformer_lens_native(TransformerBridge.boot_native(cfg))
