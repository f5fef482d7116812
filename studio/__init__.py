"""Hybrid Attention Studio: compose hybrid attention models, look inside them, ablate, fine-tune.

    from studio import ArchSpec, build_model, HybridLM
    spec = ArchSpec.from_json('{"vocab_size": 256, "d_model": 64, "n_layers": 8, "n_heads": 4,'
                              ' "ratio": "7:1", "pattern_map": {"L": "lightning", "S": "softmax"}}')
    model = build_model(spec, seed=0)
    logits, cache = model.run_with_cache(tokens)
"""

from studio.model import HybridLM, build_model
from studio.spec import ArchSpec, LayerSpec, SpecError

__all__ = ["ArchSpec", "LayerSpec", "SpecError", "HybridLM", "build_model"]
__version__ = "0.1.0"
