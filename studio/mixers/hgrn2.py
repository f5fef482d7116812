"""HGRN-2 (Qin et al., arXiv 2404.07904): gated linear attention whose key is tied to its forget gate.

    f_t = beta + (1 - beta) sigmoid(k_t)        forget gate per key dimension, lower bound beta
    S_t = diag(f_t) S_{t-1} + (1 - f_t) v_t^T,  o_t = S_t^T silu(q_t) / sqrt(d)
    M[t, s] = sum_i q_{t,i} (1 - f_{s,i}) prod_{r=s+1..t} f_{r,i}        (q = silu(q_t) / sqrt(d))

The base's k projection is HGRN-2's forget-gate projection (its output, after the optional short
convolution, are the gate logits), so there are no extra parameters. The forget gates carry position:
HGRN-2 has no positional encoding and this mixer never applies RoPE. `lower_bound` "depth" gives layer
l of L the bound l / L (HGRN's learned, per-channel lower bounds at their initialisation, here fixed;
the first layer has none). Output: per-head RMSNorm (the paper's output norm), no output gate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from kernels.reference.gated_linear_attention import (
    chunked_gated_linear_attention,
    gated_linear_attention_pattern,
    gated_linear_attention_step,
)
from studio.mixers.base import Mixer, MixerParams
from studio.mixers.registry import register


class HGRN2Params(MixerParams):
    lower_bound: str | float = Field(
        default="depth",
        description="forget-gate lower bound beta: 'depth' (layer l of L: l / L) or a number in [0, 1)")
    chunk_size: int = Field(default=16, gt=0, description="chunk length of the chunked form")
    output_norm: bool = Field(default=True, description="per-head RMSNorm on z before the output projection")

    @field_validator("lower_bound")
    @classmethod
    def _lower_bound(cls, value):
        if isinstance(value, str) and value != "depth":
            raise ValueError("lower_bound must be 'depth' or a number in [0, 1)")
        if not isinstance(value, str) and not 0 <= value < 1:
            raise ValueError(f"lower_bound must lie in [0, 1), got {value}")
        return value


@register
class HGRN2(Mixer):
    name = "hgrn2"
    paper = "HGRN2: Gated Linear RNNs with State Expansion (arXiv 2404.07904)"
    time_complexity = "O(T C d + T d^2)"
    state_kind = "matrix"
    family = "gated"
    Params = HGRN2Params

    def init_mixer(self):
        self.rotary = None  # the forget gates carry position; k holds gate logits, not a key to rotate

    @property
    def lower_bound(self) -> float:
        if self.p.lower_bound == "depth":
            return self.shape.layer_idx / self.shape.n_layers
        return float(self.p.lower_bound)

    def featurize(self, q, k):
        return F.silu(q) * self.shape.d_head**-0.5, k

    def forget_gate(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate logits k -> (log f, 1 - f), both computed without cancellation."""
        beta = self.lower_bound
        if beta == 0:
            return F.logsigmoid(k), torch.sigmoid(-k)
        return torch.log(beta + (1 - beta) * torch.sigmoid(k)), (1 - beta) * torch.sigmoid(-k)

    def parallel(self, q, k, v):
        log_f, key = self.forget_gate(k)
        return chunked_gated_linear_attention(q, key, v, log_f, self.p.chunk_size)

    def recurrent_step(self, q, k, v, state):
        log_f, key = self.forget_gate(k)
        return gated_linear_attention_step(q, key, v, log_f, state)

    def effective_pattern(self, q, k):
        log_f, key = self.forget_gate(k)
        return gated_linear_attention_pattern(q, key, log_f)
