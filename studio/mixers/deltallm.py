"""DeltaLLM: exact softmax near each query, a reused ("delta") approximation further away; training-free.

A softmax layer's own weights. Every `anchor_every`-th query a = 0, r, 2r, ... computes full attention;
query t uses the anchor a(t) = r floor(t / r). Near keys (the last `window` keys and the first `sink`
keys) keep their exact scores; far keys s <= t - w take the anchor's:

    correction="renormalise" (default): M[t] = softmax_s(l[t, s]),  l[t, s] = q_t . k_s / sqrt(d) for near s,
                                         q_a(t) . k_s / sqrt(d) for far s: the anchor's far weights,
                                         renormalised with the query's own near scores.
    correction="delta":                  M[t] = W[t] + P[a(t)] - W[a(t)] (W: softmax over the near keys,
                                         P: full softmax), Delta Attention's output correction.

No paper is titled "DeltaLLM" for this: the closest published method is Delta Attention (Willette, Lee, Hwang,
"Delta Attention: Fast and Accurate Sparse Attention Inference by Delta Correction", arXiv 2505.11254), which
the "delta" option follows; "renormalise" is this studio's formulation. Math and deviations:
kernels/reference/anchored_attention.py. Decoding keeps the whole KV cache (anchors need it) plus the
anchor's running far sums (renormalise) or its correction vector (delta).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from kernels.reference.anchored_attention import (
    anchored_attention,
    anchored_attention_step,
    anchored_computed_scores,
    anchored_pattern,
)
from studio.mixers.base import MixerParams
from studio.mixers.registry import register
from studio.mixers.softmax import Softmax


class DeltaLLMParams(MixerParams):
    window: int = Field(default=64, gt=0, description="last keys each query scores exactly, itself included")
    anchor_every: int = Field(default=16, gt=0, description="every r-th query computes full attention (the anchor)")
    sink: int = Field(default=4, ge=0, description="first keys every query scores exactly (attention sinks)")
    correction: Literal["renormalise", "delta"] = Field(
        default="renormalise",
        description="far keys: the anchor's scores renormalised with the query's (renormalise), or the anchor's "
                    "full-minus-window output added (delta, arXiv 2505.11254)")


@register
class DeltaLLM(Softmax):
    name = "deltallm"
    paper = "Delta Attention (arXiv 2505.11254), closest published method; anchored far-key reuse"
    time_complexity = "O(T (w + sink) d + T^2 d / r)"
    state_kind = "kv_cache"
    family = "softmax approximation"
    Params = DeltaLLMParams

    @property
    def _options(self) -> dict:
        return dict(window=self.p.window, anchor_every=self.p.anchor_every, correction=self.p.correction,
                    sink=self.p.sink, scale=self.scale)

    def parallel(self, q, k, v):
        z, anchor_state = anchored_attention(q, self.expand_kv(k), self.expand_kv(v), **self._options)
        return z, (k, v, anchor_state)

    def recurrent_step(self, q, k, v, state):
        keys, values, anchor_state = k[:, :, None], v[:, :, None], None
        if state is not None:
            keys, values = torch.cat([state[0], keys], dim=2), torch.cat([state[1], values], dim=2)
            anchor_state = state[2]
        z, anchor_state = anchored_attention_step(q, self.expand_kv(keys), self.expand_kv(values), anchor_state,
                                                  **self._options)
        return z, (keys, values, anchor_state)

    def effective_pattern(self, q, k):
        return anchored_pattern(q, self.expand_kv(k), **self._options)

    def computed_scores(self, q, k) -> torch.Tensor:
        """Which scores q_t . k_s this layer evaluates, bool [B, H, T, S]; q [B, H, T, D], k [B, n_kv_heads, S, D]."""
        mask = anchored_computed_scores(q.shape[2], self.p.window, self.p.anchor_every, self.p.correction,
                                        self.p.sink, q.device)
        return mask.expand(q.shape[0], q.shape[1], -1, -1)

    def state_elements(self, context: int) -> int:
        h, d = self.shape.n_heads, self.shape.d_head
        anchor = h * d if self.p.correction == "delta" else h * (2 * d + 2)  # correction, or q_a, max, sums
        return super().state_elements(context) + anchor

    def mixing_flops_per_token(self, length: int) -> float:
        h, d, w, r = self.shape.n_heads, self.shape.d_head, self.p.window, self.p.anchor_every
        pos = np.arange(length, dtype=np.float64)
        anchor = pos % r == 0
        before_window = np.maximum(pos - w + 1, 0)
        sinks = np.minimum(before_window, self.p.sink)
        keys = np.minimum(pos + 1, w) + sinks
        if self.p.correction == "delta":
            keys += np.where(anchor, pos + 1, 0.0)  # the anchor's full row
        else:  # an anchor scores its far keys, another query adds one to its anchor's sums
            keys += np.where(anchor, before_window - sinks, (pos - w >= self.p.sink).astype(np.float64))
        return float(np.mean(4.0 * h * d * keys))
