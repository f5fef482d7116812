"""Softmax replaced by its second-order Taylor approximation (Deconstructing Attention, arXiv 2510.11602,
the "Approximate" variant): with the scaled score s = q_t.k_s / sqrt(d),

    M[t, s] = (1 + s + s^2 / 2) / sum_{s' <= t} (1 + s' + s'^2 / 2),   s <= t,

exp(s) to second order; 1 + s + s^2/2 = ((1 + s)^2 + 1) / 2 > 0, so every weight is positive and each row
sums to 1. Same projections, RoPE and KV cache as softmax attention; the pattern is materialised
(O(T^2) memory in the parallel form)."""

from __future__ import annotations

import torch

from studio.mixers.base import MixerParams
from studio.mixers.registry import register
from studio.mixers.softmax import Softmax


@register
class Approx(Softmax):
    name = "approx"
    paper = "Deconstructing Attention (arXiv 2510.11602): Taylor-approximated softmax"
    time_complexity = "O(T^2 d)"
    state_kind = "kv_cache"
    family = "ablation"
    Params = MixerParams

    def weights(self, scores):
        seen = torch.isfinite(scores)
        s = scores.masked_fill(~seen, 0.0)
        w = (1.0 + s + 0.5 * s * s).masked_fill(~seen, 0.0)
        return w / w.sum(-1, keepdim=True)

    def parallel(self, q, k, v):
        return self.effective_pattern(q, k) @ self.expand_kv(v), self._keep(k, v)
