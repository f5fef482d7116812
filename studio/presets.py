"""Named architecture specs: small ones that train on a laptop CPU, and the seed papers' layouts."""

from __future__ import annotations

from studio.spec import ArchSpec

_SMALL = {"d_model": 64, "n_heads": 4, "mlp": "swiglu", "mlp_ratio": 4.0}

PRESETS: dict[str, dict] = {
    # two-layer models for recall tasks on a CPU (Zoology-sized)
    "small-softmax": {**_SMALL, "n_layers": 2, "pattern": "S", "pattern_map": {"S": "softmax"}},
    "small-lightning": {**_SMALL, "n_layers": 2, "pattern": "L", "pattern_map": {"L": "lightning"}},
    "small-linear": {**_SMALL, "n_layers": 2, "pattern": "N", "pattern_map": {"N": "linear"}},
    "small-sliding-window": {**_SMALL, "n_layers": 2, "pattern": "W",
                             "pattern_map": {"W": {"mixer": "sliding_window", "window": 16}}},
    "small-hybrid": {**_SMALL, "n_layers": 2, "pattern": "LS", "pattern_map": {"L": "lightning", "S": "softmax"}},
    # layouts of the seed papers (REFERENCE.md section 2), at a small width
    "all-softmax": {**_SMALL, "d_model": 128, "n_layers": 8, "pattern": "S", "pattern_map": {"S": "softmax"}},
    "minimax-7to1": {**_SMALL, "d_model": 128, "n_layers": 8, "ratio": "7:1",
                     "pattern_map": {"L": "lightning", "S": "softmax"}},
    "smallthinker-nope-rope": {**_SMALL, "d_model": 128, "n_layers": 8, "pattern": "WWWG",
                               "pattern_map": {"W": {"mixer": "sliding_window", "window": 64},
                                               "G": {"mixer": "softmax", "positional": "nope"}}},
    # the same layout with SmallThinker's fine-grained MoE feed-forward (sigmoid router; its experts are
    # ReGLU, here SwiGLU), sized so a token's 4 experts hold as many weights as the dense MLP
    "smallthinker-moe": {**_SMALL, "d_model": 128, "n_layers": 8, "pattern": "WWWG",
                         "pattern_map": {"W": {"mixer": "sliding_window", "window": 64},
                                         "G": {"mixer": "softmax", "positional": "nope"}},
                         "mlp": "moe", "moe": {"n_experts": 16, "top_k": 4, "expert_ratio": 1.0, "router": "sigmoid"}},
    # arXiv 2507.06457's recommendation: Gated DeltaNet : softmax at 3:1 (NoPE in the recurrent layers)
    "gated-deltanet-3to1": {**_SMALL, "d_model": 128, "n_layers": 8, "ratio": "3:1",
                            "pattern_map": {"L": {"mixer": "gated_delta", "positional": "nope"}, "S": "softmax"}},
    # Liger (arXiv 2503.01496): every layer mixes sliding-window softmax and gated linear attention
    "liger": {**_SMALL, "d_model": 128, "n_layers": 8, "pattern": "H", "pattern_map": {"H": "liger"}},
    # one layer of each mixer family in the zoo (softmax, linear, gated, delta, hybrid, sparse)
    "zoo-hybrid": {**_SMALL, "n_layers": 6, "pattern": "GLDHMS",
                   "pattern_map": {"G": "gla", "L": "lightning", "D": {"mixer": "gated_delta", "positional": "nope"},
                                   "H": {"mixer": "liger", "window": 16}, "M": "moh", "S": "softmax"}},
}

DEFAULT = "small-softmax"


def preset(name: str, vocab_size: int = 256) -> ArchSpec:
    """The named preset as a spec with this vocabulary size."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return ArchSpec.from_dict({"name": name, "vocab_size": vocab_size, **PRESETS[name]})
