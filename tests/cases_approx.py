"""Mixer cases of the training-free softmax approximations (hip, deltallm) for tests/test_mixers.py."""

CASES = {
    "hip-b4-k2-gqa": ("hip", {"block_size": 4, "top_k": 2}, dict(n_kv_heads=2)),
    "hip-b3-k3-nosink-nolocal": ("hip", {"block_size": 3, "top_k": 3, "keep_sink": False, "keep_local": False},
                                 dict(positional="nope")),
    "hip-b1-k5-gate": ("hip", {"block_size": 1, "top_k": 5, "keep_local": False, "output_gate": "sigmoid"}, {}),
    "deltallm-w8-r5-gqa": ("deltallm", {"window": 8, "anchor_every": 5}, dict(n_kv_heads=2)),
    "deltallm-w3-r16-nosink": ("deltallm", {"window": 3, "anchor_every": 16, "sink": 0, "rope_fraction": 0.5}, {}),
    "deltallm-delta-w6-r4-sink2": ("deltallm", {"window": 6, "anchor_every": 4, "sink": 2, "correction": "delta"},
                                   dict(positional="nope")),
}
