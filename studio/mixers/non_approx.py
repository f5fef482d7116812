"""Attention of another mathematical form (Deconstructing Attention, arXiv 2510.11602, the
"Non-approximate" variant): M = Softmax((Q elementwise-times K) 1^T / sqrt(d_h)) with Q = SiLU(H W_Q),
i.e. M[t, s] = softmax_{s <= t}(sum_i q_t,i k_s,i / sqrt(d_h)) with a SiLU on the queries and plain
keys. The SiLU acts on the projection, before the optional short convolution and RoPE; causal, KV
cache like softmax attention."""

from __future__ import annotations

import torch.nn.functional as F

from studio.mixers.base import MixerParams
from studio.mixers.registry import register
from studio.mixers.softmax import Softmax


@register
class NonApprox(Softmax):
    name = "non_approx"
    paper = "Deconstructing Attention (arXiv 2510.11602): softmax of (SiLU(Q) * K) 1^T"
    time_complexity = "O(T^2 d)"
    state_kind = "kv_cache"
    family = "ablation"
    Params = MixerParams

    def qkv(self, src, x):
        q, k, v = super().qkv(src, x)
        return F.silu(q), k, v
