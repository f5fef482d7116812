"""Gated DeltaNet (Yang, Kautz and Hatamizadeh, arXiv 2412.06464): the delta rule with a Mamba2 decay.

S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T, o_t = S_t q_t, with per head and token
alpha_t = exp(-exp(A_log) softplus(x_t W_a + dt_bias)) as in Mamba2 (arXiv 2405.21060) and
beta_t = sigmoid(x_t W_beta). The paper does not fix the decay's init; the defaults follow Mamba2:
A ~ U(a_init_range), dt log-uniform in dt_range (dt_bias = softplus^-1(dt)). L2-normalised q, k, short
conv 4, and the paper's block output: per-head RMSNorm then a SiLU (swish) output gate.
M[t, s] = beta_s k_s^T P(s+1..t) q_t, P(s+1..t) = prod_{r=s+1..t} alpha_r (I - beta_r k_r k_r^T).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from studio.mixers.deltanet import DeltaNet, DeltaNetParams
from studio.mixers.registry import register


class GatedDeltaParams(DeltaNetParams):
    output_gate: Literal["none", "sigmoid", "swish"] = Field(default="swish", description="gate z with act(x W_g) "
                                                             "(the paper: swish)")
    a_init_range: tuple[float, float] = Field(default=(1.0, 16.0), description="A = exp(A_log) starts uniform "
                                              "in this range (Mamba2)")
    dt_range: tuple[float, float] = Field(default=(0.001, 0.1), description="softplus(dt_bias) starts "
                                          "log-uniform in this range (Mamba2)")

    @field_validator("a_init_range", "dt_range")
    @classmethod
    def _positive_range(cls, value):
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"need 0 < low <= high, got {value}")
        return value


@register
class GatedDelta(DeltaNet):
    name = "gated_delta"
    paper = "Gated DeltaNet (arXiv 2412.06464)"
    family = "delta"
    Params = GatedDeltaParams

    def init_mixer(self):
        super().init_mixer()
        h = self.shape.n_heads
        self.decay_proj = nn.Linear(self.shape.d_model, h, bias=False)
        self.A_log = nn.Parameter(torch.empty(h).uniform_(*self.p.a_init_range).log())
        low, high = (math.log(x) for x in self.p.dt_range)
        dt = torch.exp(torch.rand(h) * (high - low) + low)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt

    def mixing_flops_per_token(self, length: int) -> float:
        return super().mixing_flops_per_token(length) + self.shape.n_heads * self.shape.d_head**2  # alpha_t S

    def gates(self, x):
        log_alpha = -self.A_log.exp() * F.softplus(self.decay_proj(x) + self.dt_bias)  # [batch, time, head]
        return {**super().gates(x), "log_alpha": log_alpha.transpose(1, 2)}
