"""Gated DeltaNet (Yang, Kautz and Hatamizadeh, arXiv 2412.06464): the delta rule with a Mamba2 decay.

S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T, o_t = S_t q_t, with per head and token
alpha_t = exp(-exp(A_log) softplus(x_t W_a + dt_bias)) as in Mamba2 (arXiv 2405.21060) and
beta_t = sigmoid(x_t W_beta). The paper does not fix the decay's init; the defaults follow Mamba2:
A ~ U(a_init_range), dt log-uniform in dt_range (dt_bias = softplus^-1(dt)). L2-normalised q, k, short
conv 4, and the paper's block output: per-head RMSNorm then a SiLU (swish) output gate.
M[t, s] = beta_s k_s^T P(s+1..t) q_t, P(s+1..t) = prod_{r=s+1..t} alpha_r (I - beta_r k_r k_r^T).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from torch import nn

from studio.mixers.deltanet import DeltaNet, DeltaNetParams
from studio.mixers.registry import register
from studio.mixers.ssm_decay import check_range, decay_parameters, dt_and_log_decay


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
        return check_range(value)


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
        self.A_log, self.dt_bias = decay_parameters(h, self.p.a_init_range, self.p.dt_range)

    def mixing_flops_per_token(self, length: int) -> float:
        return super().mixing_flops_per_token(length) + self.shape.n_heads * self.shape.d_head**2  # alpha_t S

    def gates(self, x):
        _, log_alpha = dt_and_log_decay(self.decay_proj(x), self.A_log, self.dt_bias)  # [batch, head, time]
        return {**super().gates(x), "log_alpha": log_alpha}
