"""Dynamic Mask Attention (DMA; Shi et al., "Trainable Dynamic Mask Sparse Attention", arXiv 2508.02124).

A content-aware mask from the values: each key s gets a bias per kv head,

    b_s = A * softplus(dt_proj(v_s)),     v_s = x_s W_V (all kv heads), A and dt_proj learned,

and query t attends with softmax to S_t, the `top_k` keys s <= t of largest bias (the paper's top-k
dynamic mask plus the causal constraint; on equal bias the later key wins), the bias added to the logits:

    M[t, s] = exp(q_t.k_s / sqrt(d) + b_s) / sum_{s' in S_t} exp(q_t.k_s' / sqrt(d) + b_s'),   s in S_t.

As in the authors' code (flash-dmattn / Doge), the bias is A * softplus(.) rather than the paper's
exp(A * softplus(.)) written as a multiplicative weight, and A starts at 0, so an untrained layer is a
sliding window of the last `top_k` keys. The mask is computed from x W_V before the optional short
convolution. The bias does not depend on the query, so a key that drops out of the top-k never returns:
decoding keeps only `top_k` keys, values and biases (math in kernels/reference/dynamic_mask_attention.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kernels.reference.dynamic_mask_attention import chunked_topk_bias_attention, topk_bias_attend, topk_bias_weights
from studio.mixers.base import Mixer, MixerParams
from studio.mixers.registry import register


class DynamicMaskParams(MixerParams):
    top_k: int = Field(default=64, gt=0, description="keys each query attends to (the paper's keep window)")
    chunk_size: int = Field(default=64, gt=0, description="queries per chunk of the parallel form")


@register
class DynamicMask(Mixer):
    name = "dma"
    paper = "Trainable Dynamic Mask Sparse Attention (arXiv 2508.02124)"
    time_complexity = "O(T (k + C) d)"
    state_kind = "window"
    family = "sparse"
    Params = DynamicMaskParams
    group_kv = True

    def init_mixer(self):
        kv, d = self.shape.n_kv_heads, self.shape.d_head
        self.dt_proj = nn.Linear(kv * d, kv, bias=self.shape.bias)
        self.A = nn.Parameter(torch.zeros(kv))

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.shape.d_head)

    def gates(self, x):
        """The bias of each key from its value projection: [batch, kv_head, time]."""
        dt = self.dt_proj(self.v_proj(x))
        return {"bias": (self.A * F.softplus(dt)).transpose(1, 2)}

    def parallel(self, q, k, v, bias):
        return chunked_topk_bias_attention(q, k, v, bias.to(q.dtype), self.p.top_k, self.scale, self.p.chunk_size)

    def recurrent_step(self, q, k, v, state, bias):
        out, state = topk_bias_attend(q[:, :, None], k[:, :, None], v[:, :, None], bias[:, :, None].to(q.dtype),
                                      self.p.top_k, self.scale, state)
        return out[:, :, 0], state

    def effective_pattern(self, q, k, bias):
        return topk_bias_weights(q, k, bias.to(q.dtype), self.p.top_k, self.scale)

    def state_elements(self, context: int) -> int:
        """Kept keys and values plus one bias each, per kv head."""
        return self.shape.n_kv_heads * min(context, self.p.top_k) * (2 * self.shape.d_head + 1)

    def mixing_flops_per_token(self, length: int) -> float:
        """q.k and the weighted sum over min(t, top_k) keys, averaged over t = 1..length."""
        k = self.p.top_k
        keys = (length + 1) / 2 if length <= k else (k * (k + 1) / 2 + (length - k) * k) / length
        return 4.0 * self.shape.n_heads * self.shape.d_head * keys
