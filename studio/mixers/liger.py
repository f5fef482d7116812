"""Liger attention (Lan et al., "Liger: Linearizing Large Language Models to Gated Recurrent Structures",
arXiv 2503.01496): inside one layer, a sliding-window softmax for local detail plus gated linear
attention (GLA, arXiv 2312.06635) for the global context, on the same q, k, v:

    z = w SWA(RoPE q, RoPE k, v; window 64) + (1 - w) GLA(phi(q), phi(k), v; g)
    phi = softmax over the head dimension,   g_t = logsigmoid(pool(k_proj(x_t))) / 16

The gate reuses the key projection, so Liger adds no parameter (the paper's pool is an adaptive average
pool to n_kv_heads x d_head, the key projection's own width: the identity here). The GLA part reads q, k
without RoPE and with scale 1, as Liger's code does; the window part rotates them (RoPE is applied inside
the math: see rope_inside). The paper fixes w = 0.5; here w is a parameter (`mix`), optionally learned
per head. Effective pattern: M = w M_swa + (1 - w) M_gla. State: the last `window` keys and values
plus the d_k x d_v GLA state per head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kernels.reference.chunk_hybrids import (
    chunked_gated_linear_attention,
    gated_linear_attention_pattern,
    gated_linear_attention_step,
)
from studio.mixers.feature_maps import FEATURE_MAPS, FeatureMapName
from studio.mixers.registry import register
from studio.mixers.rope_inside import move_rope_inside, rotate
from studio.mixers.sliding_window import SlidingWindow, SlidingWindowParams


class LigerParams(SlidingWindowParams):
    mix: float = Field(default=0.5, ge=0, le=1, description="w: weight of the window part, 1 - w of the GLA part")
    learn_mix: bool = Field(
        default=False, description="learn w, one per head, starting from `mix` (not clamped to [0, 1])")
    feature_map: FeatureMapName = Field(default="softmax", description="phi applied to q and k of the GLA part")
    gate_normalizer: float = Field(default=16.0, gt=0, description="g = logsigmoid(...) / gate_normalizer")
    block_size: int = Field(default=64, gt=0, description="block length of the chunked GLA form")


@register
class Liger(SlidingWindow):
    name = "liger"
    paper = "Liger (arXiv 2503.01496)"
    time_complexity = "O(T (w + d) d)"
    state_kind = "window+matrix"
    family = "hybrid"
    Params = LigerParams

    def init_mixer(self):
        move_rope_inside(self)
        if self.p.learn_mix:
            self.mix = torch.nn.Parameter(torch.full((self.shape.n_heads,), float(self.p.mix)))

    def gates(self, x):
        b, t, _ = x.shape
        g = F.logsigmoid(self.k_proj(x)) / self.p.gate_normalizer
        return {"log_gate": self.expand_kv(g.reshape(b, t, self.shape.n_kv_heads, -1).transpose(1, 2))}

    # ---- the two parts ------------------------------------------------------------------------------
    def _linear_qk(self, q, k):
        phi = FEATURE_MAPS[self.p.feature_map]
        return phi(q), self.expand_kv(phi(k))

    def _mix(self, window_part, linear_part):
        if not self.p.learn_mix:  # a Python float: exact in any dtype the model runs in
            w = self.p.mix
        else:
            w = self.mix.to(window_part.dtype).reshape(-1, *[1] * (window_part.ndim - 2))
        return w * window_part + (1 - w) * linear_part

    def window_parallel(self, q, k, v):
        return super().parallel(q, k, v)

    def window_step(self, q, k, v, state):
        return super().recurrent_step(q, k, v, state)

    def window_pattern(self, q, k):
        return super().effective_pattern(q, k)

    # ---- the contract -------------------------------------------------------------------------------
    def parallel(self, q, k, v, log_gate):
        z_window, window_state = self.window_parallel(rotate(self, q), rotate(self, k), v)
        fq, fk = self._linear_qk(q, k)
        z_linear, matrix = chunked_gated_linear_attention(fq, fk, self.expand_kv(v), log_gate, self.p.block_size)
        return self._mix(z_window, z_linear), {"pos": q.shape[2], "window": window_state, "matrix": matrix}

    def recurrent_step(self, q, k, v, state, log_gate):
        state = state or {"pos": 0, "window": None, "matrix": None}
        pos = state["pos"]
        z_window, window_state = self.window_step(rotate(self, q, pos), rotate(self, k, pos), v, state["window"])
        fq, fk = self._linear_qk(q, k)
        z_linear, matrix = gated_linear_attention_step(fq, fk, self.expand_kv(v), log_gate, state["matrix"])
        return self._mix(z_window, z_linear), {"pos": pos + 1, "window": window_state, "matrix": matrix}

    def effective_pattern(self, q, k, log_gate):
        window = self.window_pattern(rotate(self, q), rotate(self, k))
        return self._mix(window, gated_linear_attention_pattern(*self._linear_qk(q, k), log_gate))

    # ---- costs --------------------------------------------------------------------------------------
    def state_elements(self, context: int) -> int:
        return super().state_elements(context) + self.shape.n_heads * self.shape.d_head**2

    def mixing_flops_per_token(self, length: int) -> float:
        h, d = self.shape.n_heads, self.shape.d_head
        return super().mixing_flops_per_token(length) + 4.0 * h * d * d  # window part + GLA update/read-out
