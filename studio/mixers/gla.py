"""Gated Linear Attention (GLA, Yang et al., arXiv 2312.06635): linear attention whose state decays
per key dimension by a data-dependent gate.

    S_t = diag(alpha_t) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t / sqrt(d)
    alpha_t = sigmoid(x_t W_a1 W_a2 + b)^(1/tau)      (low-rank gate, rank 16, tau = 16 as in the paper)
    M[t, s] = sum_i q_{t,i} k_{s,i} prod_{r=s+1..t} alpha_{r,i} / sqrt(d)

The gate has one value per key dimension of each kv head (shared by its query heads under GQA, as in
FLA). Output: per-head RMSNorm and swish gate (the paper's defaults). The paper uses no positional
encoding: set the layer's `positional` to "nope" for the paper's model (RoPE is the base's default).
Chunked form: kernels/reference/gated_linear_attention.py.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kernels.reference.gated_linear_attention import (
    chunked_gated_linear_attention,
    gated_linear_attention_pattern,
    gated_linear_attention_step,
)
from studio.mixers.base import Mixer, MixerParams
from studio.mixers.feature_maps import FEATURE_MAPS, FeatureMapName
from studio.mixers.registry import register


class GLAParams(MixerParams):
    gate_rank: int = Field(default=16, gt=0, description="rank of the gate projection W_a1 W_a2")
    gate_temperature: float = Field(default=16.0, gt=0, description="tau in alpha = sigmoid(.)^(1/tau)")
    feature_map: FeatureMapName = Field(default="identity", description="phi applied to q and k")
    chunk_size: int = Field(default=16, gt=0, description="chunk length of the chunked form")
    output_norm: bool = Field(default=True, description="per-head RMSNorm on z before the output projection")
    output_gate: Literal["none", "sigmoid", "swish"] = Field(default="swish", description="gate z with act(x W_g)")


@register
class GLA(Mixer):
    name = "gla"
    paper = "Gated Linear Attention Transformers (arXiv 2312.06635)"
    time_complexity = "O(T C d + T d^2)"
    state_kind = "matrix"
    family = "gated"
    Params = GLAParams

    def init_mixer(self):
        s = self.shape
        self.gate_proj = nn.Sequential(
            nn.Linear(s.d_model, self.p.gate_rank, bias=False),
            nn.Linear(self.p.gate_rank, s.n_kv_heads * s.d_head, bias=True),
        )

    def featurize(self, q, k):
        phi = FEATURE_MAPS[self.p.feature_map]
        return phi(q) * self.shape.d_head**-0.5, phi(k)

    def gates(self, x):
        """log alpha = logsigmoid(x W_a1 W_a2 + b) / tau, [batch, head, time, d_head]."""
        b, t, _ = x.shape
        log_alpha = F.logsigmoid(self.gate_proj(x)) / self.p.gate_temperature
        return {"log_gate": self.expand_kv(log_alpha.reshape(b, t, self.shape.n_kv_heads, -1).transpose(1, 2))}

    def parallel(self, q, k, v, log_gate):
        return chunked_gated_linear_attention(q, k, v, log_gate, self.p.chunk_size)

    def recurrent_step(self, q, k, v, state, log_gate):
        return gated_linear_attention_step(q, k, v, log_gate, state)

    def effective_pattern(self, q, k, log_gate):
        return gated_linear_attention_pattern(q, k, log_gate)
