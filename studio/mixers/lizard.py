"""Lizard (Van Nguyen et al., "Lizard: An Efficient Linearization Framework for Large Language Models",
arXiv 2507.09025): gated linear attention for the global context plus sliding-window softmax with
"meta memory" for local detail, inside one layer:

    z = w SWA_meta(RoPE q, RoPE k, v) + (1 - w) GLA(phi(q), phi(k), v; g)
    g_t = logsigmoid(x_t W_down W_up + b) / 16          (GLA's low-rank gate, arXiv 2312.06635)
    SWA_meta: p_t = softmax([q_t . mu_j / sqrt(d)]_{j<m}, [q_t . k_s / sqrt(d)]_{t-w<s<=t}),
              z_t = sum_s p_ts v_s   (the meta columns dropped)

Meta memory here: m learned keys mu_j per head (not rotated: they have no position) that every query
sees inside the window softmax. Their value slot is zero, so they act as learned attention sinks: they
take probability mass from the window (a query can attend "nowhere") without adding any value. This keeps
z = M @ v exact over the real tokens (a learned meta value would add a term no token's v carries); rows
of the window part sum to 1 minus the sinks' share. `meta_tokens = 0` gives plain sliding-window softmax.

Where the paper leaves a choice open: the gate is GLA's low-rank sigmoid gate (rank `gate_rank`,
normaliser 16), phi is a fixed feature map (softmax over the head dimension, as in Liger) rather than a
learned one, and the two parts are mixed with a weight w (`mix`, 0.5, optionally learned per head). The
rest (RoPE on the window part only, the state, the costs) is Liger's; see studio/mixers/liger.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kernels.reference.chunk_hybrids import sliding_window_attention_with_sinks, softmax_with_sinks
from studio.mixers.liger import Liger, LigerParams
from studio.mixers.registry import register
from studio.mixers.softmax import causal_scores


class LizardParams(LigerParams):
    meta_tokens: int = Field(default=4, ge=0, le=256, description="learned sink keys (meta memory) per head")
    gate_rank: int = Field(default=16, gt=0, description="rank of the gate projection x W_down W_up")


@register
class Lizard(Liger):
    name = "lizard"
    paper = "Lizard (arXiv 2507.09025)"
    time_complexity = "O(T (w + m + d) d)"
    state_kind = "window+matrix"
    family = "hybrid"
    Params = LizardParams

    def init_mixer(self):
        super().init_mixer()
        h, d, dm = self.shape.n_heads, self.shape.d_head, self.shape.d_model
        self.gate_down = nn.Linear(dm, self.p.gate_rank, bias=False)
        self.gate_up = nn.Linear(self.p.gate_rank, h * d, bias=True)
        m = self.p.meta_tokens
        self.meta_keys = nn.Parameter(torch.randn(h, m, d) * d**-0.5) if m else None

    def gates(self, x):
        b, t, _ = x.shape
        g = F.logsigmoid(self.gate_up(self.gate_down(x))) / self.p.gate_normalizer
        return {"log_gate": g.reshape(b, t, self.shape.n_heads, -1).transpose(1, 2)}

    def _sink_scores(self, q):
        return (q @ self.meta_keys.to(q.dtype).transpose(-1, -2)) * self.scale

    def window_parallel(self, q, k, v):
        if self.meta_keys is None:
            return super().window_parallel(q, k, v)
        z = sliding_window_attention_with_sinks(
            q, self.expand_kv(k), self.expand_kv(v), self.window, self.scale, self.meta_keys.to(q.dtype))
        return z, self._keep(k, v)

    def window_step(self, q, k, v, state):
        if self.meta_keys is None:
            return super().window_step(q, k, v, state)
        keys, values = k[:, :, None], v[:, :, None]
        if state is not None:
            keys, values = torch.cat([state[0], keys], dim=2), torch.cat([state[1], values], dim=2)
        keys, values = self._keep(keys, values)
        scores = causal_scores(q[:, :, None], self.expand_kv(keys), self.scale, self.window)
        p = softmax_with_sinks(scores, self._sink_scores(q[:, :, None]))
        return (p @ self.expand_kv(values))[:, :, 0], (keys, values)

    def window_pattern(self, q, k):
        if self.meta_keys is None:
            return super().window_pattern(q, k)
        scores = causal_scores(q, self.expand_kv(k), self.scale, self.window)
        return softmax_with_sinks(scores, self._sink_scores(q))

    def mixing_flops_per_token(self, length: int) -> float:
        sinks = 2.0 * self.shape.n_heads * self.shape.d_head * self.p.meta_tokens  # q . mu_j
        return super().mixing_flops_per_token(length) + sinks
