"""Retention (RetNet, Sun et al., arXiv 2307.08621): linear attention with a fixed decay gamma_h per head.

M[t, s] = gamma_h^(t-s) (q_t / sqrt(d)) . k_s. Multi-scale schedule of the paper: gamma_h = 1 - 2^(-5-h)
for head h (exposed: `decay` may list one gamma per head). xPos is the base's RoPE (NoPE on request);
the paper's GroupNorm is the per-head output RMSNorm (on by default, scale-invariant like GroupNorm,
which is why the paper's parallel-form row normalisations are left out: the norm undoes them), and
its swish output gate is on by default. Value heads have d_head dims (the paper doubles them).
The math is Lightning's fixed-decay linear attention; only the schedule, q scale and defaults differ.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, field_validator

from studio.mixers.base import MixerParams
from studio.mixers.lightning import Lightning
from studio.mixers.registry import register


class RetNetParams(MixerParams):
    decay: str | list[float] = Field(
        default="retnet", description="'retnet' (gamma_h = 1 - 2^(-5-h)) or one gamma in (0, 1] per head")
    block_size: int = Field(default=64, gt=0, description="block length of the chunked form")
    output_norm: bool = Field(default=True, description="per-head RMSNorm on z (the paper's GroupNorm)")
    output_gate: Literal["none", "sigmoid", "swish"] = Field(
        default="swish", description="gate z with act(x W_g) (the paper: swish)")

    @field_validator("decay")
    @classmethod
    def _decay(cls, value):
        if isinstance(value, str) and value != "retnet":
            raise ValueError("decay must be 'retnet' or a list of per-head gammas in (0, 1]")
        if isinstance(value, list) and not all(0 < x <= 1 for x in value):
            raise ValueError(f"every per-head gamma must lie in (0, 1], got {value}")
        return value

    def check_shape(self, n_heads: int, d_head: int) -> str | None:
        if isinstance(self.decay, list) and len(self.decay) != n_heads:
            return f"decay lists {len(self.decay)} gammas but the layer has n_heads={n_heads}; give one per head"
        return None


def retnet_log_decay(n_heads: int) -> torch.Tensor:
    """log gamma_h = log(1 - 2^(-5-h)), h = 0..H-1."""
    return torch.log1p(-(2.0 ** (-5.0 - torch.arange(n_heads, dtype=torch.float64))))


@register
class RetNet(Lightning):
    name = "retnet"
    paper = "Retentive Network (arXiv 2307.08621)"
    time_complexity = "O(T d^2)"
    state_kind = "matrix"
    family = "linear"
    Params = RetNetParams

    def init_mixer(self):
        if self.p.decay == "retnet":
            log_decay = retnet_log_decay(self.shape.n_heads)
        else:
            log_decay = torch.tensor([math.log(x) for x in self.p.decay], dtype=torch.float64)
        self.register_buffer("log_decay", log_decay, persistent=False)

    def featurize(self, q, k):
        return q * self.shape.d_head**-0.5, k
