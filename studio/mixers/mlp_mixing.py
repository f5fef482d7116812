"""No token mixing (Deconstructing Attention, arXiv 2510.11602, the "MLP" variant): the attention sublayer
replaced by a gated MLP (SwiGLU, Shazeer, arXiv 2002.05202) on each position,

    out_t = (SiLU(x_t W_gate) * (x_t W_in)) W_out,

written in the mixer contract with the identity as its pattern: v_t = SiLU(x_t W_gate) * (x_t W_in) (the
MLP's hidden activation, split into n_heads heads; hook_v / hook_z see it), M = I, z = M @ v = v, and
o_proj = W_out. So z = M @ v holds exactly, and a hook that edits the pattern mixes hidden activations
across positions. No q or k (zero-width hook_q / hook_k), no positions, nothing kept for decoding.

Hidden width (`hidden`): by default the smallest multiple of n_heads with 3 d_model hidden >= the
parameters of an attention layer of the same shape, d_model d_head (2 n_heads + 2 n_kv_heads); with
multi-head attention, about 4/3 d_model (MLP mixing at d_model 64, 4 heads: 16,896 weights vs 16,384).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from studio.mixers.base import Mixer, MixerParams
from studio.mixers.registry import register


class MLPMixingParams(MixerParams):
    hidden: int | None = Field(
        default=None, gt=0, description="SwiGLU hidden width, a multiple of n_heads (default: an attention "
        "layer's parameter count)")
    short_conv: Literal[0] = Field(default=0, description="always 0: a short convolution would mix tokens")

    def check_shape(self, n_heads: int, d_head: int) -> str | None:
        if self.hidden is not None and self.hidden % n_heads:
            return f"hidden={self.hidden} is not a multiple of n_heads={n_heads}"
        return None


@register
class MLPMixing(Mixer):
    name = "mlp_mixing"
    paper = "Deconstructing Attention (arXiv 2510.11602): MLP instead of attention"
    time_complexity = "O(T d d_hidden) (no token mixing)"
    state_kind = "none"
    family = "ablation"
    Params = MLPMixingParams

    @property
    def hidden(self) -> int:
        if self.p.hidden is not None:
            return self.p.hidden
        s = self.shape
        attention = s.d_model * s.d_head * (2 * s.n_heads + 2 * s.n_kv_heads)
        return math.ceil(attention / (3 * s.d_model) / s.n_heads) * s.n_heads

    @property
    def d_qk(self) -> int:
        return 0

    @property
    def d_v(self) -> int:
        return self.hidden // self.shape.n_heads

    @property
    def n_k_heads(self) -> int:
        return self.shape.n_heads

    @property
    def n_v_heads(self) -> int:
        return self.shape.n_heads

    def projections(self):
        problem = self.p.check_shape(self.shape.n_heads, self.shape.d_head)
        if problem:
            raise ValueError(problem)
        dm, bias = self.shape.d_model, self.shape.bias
        return None, None, nn.Linear(dm, self.hidden, bias=bias), nn.Linear(self.hidden, dm, bias=bias)

    def init_mixer(self):
        self.gate_proj = nn.Linear(self.shape.d_model, self.hidden, bias=self.shape.bias)

    def qkv(self, src, x):
        none = x.new_zeros(*x.shape[:-1], 0)
        return none, none, F.silu(self.gate_proj(x)) * self.v_proj(x)

    def parallel(self, q, k, v):
        return v, None

    def recurrent_step(self, q, k, v, state):
        return v, None

    def effective_pattern(self, q, k):
        b, h, t = q.shape[:3]
        return torch.eye(t, dtype=q.dtype, device=q.device).repeat(b, h, 1, 1)

    def state_elements(self, context: int) -> int:
        return 0

    def mixing_flops_per_token(self, length: int) -> float:
        return 0.0
