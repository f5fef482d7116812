"""Mixer-contract cases of the gated / decayed linear-recurrent mixers (retnet, gla, hgrn2, mamba2):
defaults, GQA, short convolutions, NoPE, chunk sizes that do not divide the test lengths."""

CASES = {
    "retnet-default": ("retnet", {"block_size": 16}, {}),
    "retnet-list-gqa-conv-nope": ("retnet", {"decay": [0.9, 0.5, 1.0, 0.99], "block_size": 5, "short_conv": 3,
                                             "output_gate": "none"}, dict(n_kv_heads=2, positional="nope")),
    "gla-default": ("gla", {}, {}),
    "gla-gqa-conv-nope": ("gla", {"chunk_size": 5, "short_conv": 4, "gate_rank": 3, "feature_map": "elu+1",
                                  "output_gate": "sigmoid"}, dict(n_kv_heads=2, positional="nope")),
    "hgrn2-depth-bound": ("hgrn2", {}, dict(layer_idx=2, n_layers=4)),
    "hgrn2-gqa-conv-nobound": ("hgrn2", {"lower_bound": 0.0, "chunk_size": 7, "short_conv": 2,
                                         "output_gate": "swish"}, dict(n_kv_heads=1)),
    "mamba2-default": ("mamba2", {}, {}),
    "mamba2-gqa-noconv-noskip": ("mamba2", {"short_conv": 0, "d_skip": False, "chunk_size": 9,
                                            "output_norm": False}, dict(n_kv_heads=2, positional="nope")),
}
