"""Mixer cases of the routed / sparse attention family (merged into tests/mixer_cases.py): small blocks,
chunks and top-k so that lengths 63 and 130 cross many boundaries."""

CASES = {
    "moh-default": ("moh", {}, {}),
    "moh-noshared-top3-gqa": ("moh", {"shared_heads": 0, "top_k": 3, "unit_scale": False}, dict(n_kv_heads=2)),
    "moh-shared1-top2-nope-conv": ("moh", {"shared_heads": 1, "top_k": 2, "short_conv": 3}, dict(positional="nope")),
    "landmark-b8-top2": ("landmark", {"block_size": 8, "top_k": 2}, {}),
    "landmark-b5-all-pooled-gqa": ("landmark", {"block_size": 5, "top_k": None, "landmark": "pooled"},
                                   dict(n_kv_heads=2)),
    "landmark-b16-top1-nope-conv": ("landmark", {"block_size": 16, "top_k": 1, "short_conv": 2, "output_norm": True},
                                    dict(positional="nope")),
    "agent-c8-n2": ("agent", {"chunk_size": 8, "n_agents": 2}, {}),
    "agent-c6-n3-gqa-nope": ("agent", {"chunk_size": 6, "n_agents": 3}, dict(n_kv_heads=2, positional="nope")),
    "agent-c16-n16-conv-gate": ("agent", {"chunk_size": 16, "n_agents": 16, "short_conv": 4, "output_gate": "sigmoid"},
                                {}),
    "dma-k9": ("dma", {"top_k": 9, "chunk_size": 16}, {}),
    "dma-k3-gqa-conv-gate": ("dma", {"top_k": 3, "chunk_size": 5, "short_conv": 3, "output_gate": "swish"},
                             dict(n_kv_heads=2)),
    "dma-k40-mqa-nope": ("dma", {"top_k": 40, "chunk_size": 7}, dict(positional="nope", n_kv_heads=1)),
}
