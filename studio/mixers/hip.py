"""HiP attention (Lee et al., arXiv 2406.09827): hierarchically pruned softmax attention, training-free.

A softmax layer's own weights, with each query attending to a few key blocks only: the first (sink)
block, its local block (the last `block_size` keys) and the `top_k` blocks that a coarse-to-fine search
finds (split the candidate blocks into top_k nodes, halve every node, keep the top_k halves by the score
of their centre key, repeat until single blocks). M[t, s] = softmax of q_t . k_s / sqrt(d) over the kept
keys s, 0 elsewhere; with top_k covering every block it is exactly softmax. The search and the sparse
softmax are in kernels/reference/hip_attention.py (deviations from the paper's kernel are listed there).
The decoding state is the whole KV cache (any old block can be selected again).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from kernels.reference.hip_attention import hip_attention, hip_computed_scores, hip_pattern
from studio.mixers.base import MixerParams
from studio.mixers.registry import register
from studio.mixers.softmax import Softmax


class HipParams(MixerParams):
    top_k: int = Field(default=8, gt=0, description="key blocks each query keeps besides the sink and local blocks")
    block_size: int = Field(default=16, gt=0, description="keys per block: the unit of the search and of the kept keys")
    keep_sink: bool = Field(default=True, description="always attend to the first block (attention sink)")
    keep_local: bool = Field(default=True, description="always attend to the last block_size keys (query included)")


@register
class Hip(Softmax):
    name = "hip"
    paper = "HiP Attention: hierarchically pruned attention (arXiv 2406.09827)"
    time_complexity = "O(T k (b + log(T / (k b))) d)"
    state_kind = "kv_cache"
    family = "softmax approximation"
    Params = HipParams

    @property
    def _options(self) -> dict:
        return dict(block_size=self.p.block_size, top_k=self.p.top_k, keep_sink=self.p.keep_sink,
                    keep_local=self.p.keep_local)

    def parallel(self, q, k, v):
        return hip_attention(q, self.expand_kv(k), self.expand_kv(v), scale=self.scale, **self._options), (k, v)

    def recurrent_step(self, q, k, v, state):
        keys, values = k[:, :, None], v[:, :, None]
        if state is not None:
            keys, values = torch.cat([state[0], keys], dim=2), torch.cat([state[1], values], dim=2)
        z = hip_attention(q[:, :, None], self.expand_kv(keys), self.expand_kv(values), scale=self.scale,
                          **self._options)
        return z[:, :, 0], (keys, values)

    def effective_pattern(self, q, k):
        return hip_pattern(q, self.expand_kv(k), scale=self.scale, **self._options)

    def computed_scores(self, q, k) -> torch.Tensor:
        """Which scores q_t . k_s this layer evaluates, bool [B, H, T, S] (kept keys and the search's
        representative keys); q [B, H, T, D], k [B, n_kv_heads, S, D] as the math receives them."""
        return hip_computed_scores(q, self.expand_kv(k), **self._options)

    def mixing_flops_per_token(self, length: int) -> float:
        h, d, b, k = self.shape.n_heads, self.shape.d_head, self.p.block_size, self.p.top_k
        keys = np.arange(1, length + 1, dtype=np.float64)  # keys seen by each query
        kept = np.minimum(keys, b * (k + int(self.p.keep_sink) + int(self.p.keep_local)))
        candidates = np.floor(keys / b)
        levels = np.ceil(np.log2(np.maximum(candidates / k, 1.0)))  # halvings until single blocks
        return float(np.mean(4.0 * h * d * kept + 2.0 * h * d * 2 * k * levels))
