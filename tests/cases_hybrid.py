"""Mixer cases of the intra-layer hybrids (merged into tests/mixer_cases.py)."""

CASES = {
    "liger-default": ("liger", {}, {}),
    "liger-window5-gqa": ("liger", {"window": 5, "block_size": 16, "mix": 0.3}, dict(n_kv_heads=2)),
    "liger-learned-elu-conv-nope": ("liger", {"window": 70, "learn_mix": True, "feature_map": "elu+1", "short_conv": 3,
                                              "block_size": 7, "output_gate": "swish"}, dict(positional="nope")),
    "lizard-default": ("lizard", {}, {}),
    "lizard-window5-gqa-halfrope": ("lizard", {"window": 5, "meta_tokens": 2, "block_size": 16, "rope_fraction": 0.5},
                                    dict(n_kv_heads=2)),
    "lizard-nometa-learned-norm": ("lizard", {"meta_tokens": 0, "learn_mix": True, "gate_rank": 3, "window": 9,
                                              "output_norm": True}, dict(positional="nope")),
    "rat-default": ("rat", {}, {}),
    "rat-chunk5-gqa-conv": ("rat", {"chunk_size": 5, "short_conv": 2}, dict(n_kv_heads=2)),
    "rat-chunk1-nope-nogate": ("rat", {"chunk_size": 1, "output_gate": "none"}, dict(positional="nope")),
    "rat-chunk8-halfrope-norm": ("rat", {"chunk_size": 8, "rope_fraction": 0.5, "output_norm": True}, {}),
}
