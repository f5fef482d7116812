"""Mamba-2 / SSD (Dao & Gu, arXiv 2405.21060): a selective state space model with one scalar decay per
head and token, written as gated linear attention with C = q, B = k, x = v.

    dt_t = softplus(x_t W_dt + dt_bias),   a_t = exp(-dt_t exp(A_log))          per head
    h_t = a_t h_{t-1} + B_t (dt_t x_t)^T,  y_t = h_t^T C_t + D x_t
    M[t, s] = C_t . B_s dt_s prod_{r=s+1..t} a_r  +  D [t = s]

The dt scaling of the input x_s is folded into the key (B_s dt_s), which is the same number. The skip
D x_t is linear in v, so it sits on the diagonal of the effective pattern and z = M @ v stays exact
(`d_skip=False` drops it). Defaults as in the paper: short convolution of 4 on x, B, C (the base's
short_conv on q, k, v), A = exp(A_log) drawn from [1, 16], dt from [0.001, 0.1] log-uniformly (dt_bias
its inverse softplus), D = 1, per-head RMSNorm and a swish gate on z. Deviations: the gate multiplies
after the norm (Mamba-2 gates before it); d_state is d_head; B and x share kv heads under GQA while C
has one head per query head (Mamba-2 shares B and C across heads and keeps x per head). The paper
uses no positional encoding: set the layer's `positional` to "nope" for the paper's model.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from kernels.dispatch import use_triton
from kernels.reference.gated_linear_attention import (
    chunked_gated_linear_attention,
    gated_linear_attention_pattern,
    gated_linear_attention_step,
)
from studio.mixers.base import Mixer, MixerParams
from studio.mixers.registry import register
from studio.mixers.ssm_decay import check_range, decay_parameters, dt_and_log_decay


class Mamba2Params(MixerParams):
    short_conv: int = Field(default=4, ge=0, le=16, description="causal depthwise conv kernel on q, k, v (0: off)")
    output_norm: bool = Field(default=True, description="per-head RMSNorm on z before the output projection")
    output_gate: Literal["none", "sigmoid", "swish"] = Field(default="swish", description="gate z with act(x W_g)")
    d_skip: bool = Field(default=True, description="add the skip D x_t (on the pattern's diagonal)")
    a_init_range: tuple[float, float] = Field(
        default=(1.0, 16.0), description="A = exp(A_log) drawn uniformly from this range")
    dt_init_range: tuple[float, float] = Field(
        default=(0.001, 0.1), description="initial dt drawn log-uniformly from this range (sets dt_bias)")
    chunk_size: int = Field(default=64, gt=0, description="chunk length of the chunked form")

    @field_validator("a_init_range", "dt_init_range")
    @classmethod
    def _positive_range(cls, value):
        return check_range(value)


@register
class Mamba2(Mixer):
    name = "mamba2"
    paper = "Transformers are SSMs: Mamba-2 / SSD (arXiv 2405.21060)"
    time_complexity = "O(T C d + T d^2)"
    state_kind = "matrix"
    family = "gated"
    Params = Mamba2Params

    def init_mixer(self):
        h = self.shape.n_heads
        self.dt_proj = nn.Linear(self.shape.d_model, h, bias=False)
        self.A_log, self.dt_bias = decay_parameters(h, self.p.a_init_range, self.p.dt_init_range)
        self.D = nn.Parameter(torch.ones(h)) if self.p.d_skip else None

    def gates(self, x):
        """dt [batch, head, time, 1] and the log decay log a = -dt exp(A_log), same shape."""
        dt, log_decay = dt_and_log_decay(self.dt_proj(x), self.A_log, self.dt_bias)
        return {"dt": dt[..., None], "log_decay": log_decay[..., None]}

    def skip(self, v: torch.Tensor) -> torch.Tensor | float:
        """D_h v, for v [batch, head, (time,) d]; 0 without the skip."""
        return 0.0 if self.D is None else self.D.reshape(-1, *(1,) * (v.ndim - 2)) * v

    def parallel(self, q, k, v, dt, log_decay):
        if use_triton(q):  # a scalar decay per head and token: the lightning kernel's simple-GLA gate
            from kernels.lightning_attention import lightning_attention
            z, state = lightning_attention(*(x.transpose(1, 2) for x in (q, k * dt, v)), output_final_state=True,
                                           chunk_size=self.p.chunk_size, gate=log_decay[..., 0].transpose(1, 2))
            return z.transpose(1, 2) + self.skip(v), state.to(q.dtype)
        z, state = chunked_gated_linear_attention(q, k * dt, v, log_decay, self.p.chunk_size)
        return z + self.skip(v), state

    def recurrent_step(self, q, k, v, state, dt, log_decay):
        z, state = gated_linear_attention_step(q, k * dt, v, log_decay, state)
        return z + self.skip(v), state

    def effective_pattern(self, q, k, dt, log_decay):
        pattern = gated_linear_attention_pattern(q, k * dt, log_decay)
        if self.D is not None:
            pattern = pattern + torch.diag_embed(self.D.to(pattern.dtype)[:, None].expand(-1, q.shape[2]))
        return pattern
