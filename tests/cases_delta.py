"""Mixer cases of the delta-rule family (merged into tests/mixer_cases.py)."""

CASES = {
    "deltanet-default": ("deltanet", {"chunk_size": 16}, {}),
    "deltanet-noconv-gqa-nope": ("deltanet", {"short_conv": 0, "chunk_size": 7, "output_norm": False},
                                 dict(n_kv_heads=2, positional="nope")),
    "gated_delta-gqa-halfrope": ("gated_delta", {"chunk_size": 16, "rope_fraction": 0.5}, dict(n_kv_heads=1)),
    "gated_delta-noconv-nope-sigmoid": ("gated_delta", {"short_conv": 0, "chunk_size": 5, "output_gate": "sigmoid",
                                                        "output_norm": False}, dict(positional="nope")),
}
