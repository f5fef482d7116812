"""DeltaNet: linear attention with the delta rule (Schlag et al., arXiv 2102.11174), trained with the
chunked WY / UT-transform form of Yang et al. (arXiv 2406.06484).

S_t = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T, o_t = S_t q_t: each token first erases what the
state holds under its key, then writes its value there, with strength beta_t = sigmoid(x_t W_beta) per
head. q and k are L2-normalised; a short convolution (kernel 4, SiLU) on q, k, v and a per-head output
RMSNorm are on by default, as in the papers' layer (arXiv 2406.06484; FLA's DeltaNet).
M[t, s] = beta_s k_s^T P(s+1..t) q_t with P(s+1..t) = prod_{r=s+1..t} (I - beta_r k_r k_r^T).
State: d_k x d_v per head. The math lives in kernels/reference/delta_rule.py.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from kernels.dispatch import use_triton, use_triton_step
from kernels.reference.delta_rule import chunked_delta_rule, delta_rule_pattern, delta_rule_step
from studio.mixers.base import Mixer, MixerParams
from studio.mixers.registry import register


class DeltaNetParams(MixerParams):
    short_conv: int = Field(default=4, ge=0, le=16, description="causal depthwise conv kernel on q, k, v "
                            "(0: off; the papers use 4)")
    output_norm: bool = Field(default=True, description="per-head RMSNorm on z before the output projection "
                              "(as in the papers' layer)")
    chunk_size: int = Field(default=64, gt=0, description="chunk length of the chunked (UT transform) form")
    l2_eps: float = Field(default=1e-6, gt=0, description="q and k are divided by sqrt(|x|^2 + l2_eps)")


@register
class DeltaNet(Mixer):
    name = "deltanet"
    paper = "DeltaNet (arXiv 2102.11174); parallel form (arXiv 2406.06484)"
    time_complexity = "O(T C d + T d^2)"
    state_kind = "matrix"
    family = "delta"
    Params = DeltaNetParams

    def init_mixer(self):
        self.beta_proj = nn.Linear(self.shape.d_model, self.shape.n_heads, bias=False)

    def mixing_flops_per_token(self, length: int) -> float:
        h, d = self.shape.n_heads, self.shape.d_head
        return 6.0 * h * d * d  # recall S^T k, rank-1 write k (v - S^T k)^T, read-out S^T q

    def featurize(self, q, k):
        eps = self.p.l2_eps
        return tuple(x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps) for x in (q, k))

    def gates(self, x):
        return {"beta": torch.sigmoid(self.beta_proj(x)).transpose(1, 2)}

    def parallel(self, q, k, v, beta, log_alpha=None):
        if use_triton(q):
            from kernels.gated_delta_rule import gated_delta_rule
            o, state = gated_delta_rule(*(x.transpose(1, 2) for x in (q, k, v, beta)),
                                        None if log_alpha is None else log_alpha.transpose(1, 2),
                                        output_final_state=True, chunk_size=self.p.chunk_size)
            return o.transpose(1, 2), state.to(q.dtype)
        return chunked_delta_rule(q, k, v, beta, log_alpha, self.p.chunk_size)

    def recurrent_step(self, q, k, v, state, beta, log_alpha=None):
        if use_triton_step(q):
            from kernels.decode_step import gated_delta_step
            o, state = gated_delta_step(q, k, v, beta, log_alpha, state)
            return o, state.to(q.dtype)
        return delta_rule_step(q, k, v, beta, log_alpha, state)

    def effective_pattern(self, q, k, beta, log_alpha=None):
        return delta_rule_pattern(q, k, beta, log_alpha, self.p.chunk_size)
