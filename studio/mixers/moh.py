"""Mixture-of-Head attention (MoH; Jin et al., "MoH: Multi-Head Attention as Mixture-of-Head
Attention", arXiv 2410.11842): heads as experts. The first h_s heads are shared (always on); a router on
the layer input picks, per token, the top-k of the other R = H - h_s (routed) heads. Head i's causal
softmax attention output z_i is weighted by (the paper's two-stage routing)

    g_i = alpha_1 softmax(W_s x)_i                                           shared head i
    g_i = alpha_2 softmax(W_r x)_i  if (W_r x)_i is among the top-k, else 0   routed head i
    [alpha_1, alpha_2] = softmax(W_h x),

so M_i[t, s] = g_i(t) softmax_s(q_t.k_s / sqrt(d)). With no shared head, g_i = softmax(W_r x)_i alone
(if selected). With `unit_scale` (default) shared weights are multiplied by 2 h_s and routed ones by 2 R
(by R without shared heads), so that a uniform router weighs each active head 1, as multi-head attention
does (the authors' code does the same with the top-k renormalised and scaled by k; the paper's
un-renormalised weights keep a gradient to W_r even with top-1). A one-head group needs no router (its softmax is 1): W_s exists when
h_s >= 2, W_r when R >= 2, W_h when h_s >= 1. Unselected heads need not be computed; here every head
is computed and weighted (exact, simple), while the cost methods count only the active h_s + k heads.

After each forward (or step) `load_balance_loss` holds the routed heads' auxiliary loss
R sum_i f_i P_i (f_i: share of tokens that select head i, P_i: mean router probability; k when
perfectly balanced), as in the authors' code; the trainer does not add it yet. Decoding keeps the KV
cache of every head (a head may be selected later).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from studio.mixers.base import MixerParams
from studio.mixers.registry import register
from studio.mixers.softmax import Softmax


class MoHParams(MixerParams):
    shared_heads: int | None = Field(default=None, ge=0, description="always-on heads (default: n_heads // 2)")
    top_k: int | None = Field(
        default=None, gt=0, description="routed heads each token selects (default: half the routed heads, rounded up)")
    unit_scale: bool = Field(default=True, description="scale weights so a uniform router gives each active head 1")

    def heads(self, n_heads: int) -> tuple[int, int]:
        """(shared heads, top-k) for a layer of n_heads heads."""
        shared = n_heads // 2 if self.shared_heads is None else self.shared_heads
        top_k = -(-(n_heads - shared) // 2) if self.top_k is None else self.top_k
        return shared, top_k

    def check_shape(self, n_heads: int, d_head: int) -> str | None:
        shared, top_k = self.heads(n_heads)
        if shared >= n_heads:
            return f"shared_heads={shared} leaves no routed head of n_heads={n_heads}; use at most {n_heads - 1}"
        if top_k > n_heads - shared:
            return f"top_k={top_k} is more than the {n_heads - shared} routed heads; use 1 to {n_heads - shared}"
        return None


@register
class MixtureOfHeads(Softmax):
    name = "moh"
    paper = "MoH: Multi-Head Attention as Mixture-of-Head Attention (arXiv 2410.11842)"
    time_complexity = "O(T^2 d (h_s + k) / H)"
    state_kind = "kv_cache"
    family = "sparse"
    Params = MoHParams

    def init_mixer(self):
        problem = self.p.check_shape(self.shape.n_heads, self.shape.d_head)
        if problem:
            raise ValueError(problem)
        self.n_shared, self.top_k = self.p.heads(self.shape.n_heads)
        self.n_routed = self.shape.n_heads - self.n_shared
        dm = self.shape.d_model
        self.shared_router = nn.Linear(dm, self.n_shared, bias=False) if self.n_shared >= 2 else None
        self.routed_router = nn.Linear(dm, self.n_routed, bias=False) if self.n_routed >= 2 else None
        self.balance_router = nn.Linear(dm, 2, bias=False) if self.n_shared >= 1 else None
        self.load_balance_loss: torch.Tensor | None = None

    @staticmethod
    def _softmax_or_one(router: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        """softmax(router(x)) over its heads; a one-head group (no router) gets weight 1."""
        return torch.softmax(router(x), dim=-1) if router is not None else x.new_ones(*x.shape[:-1], 1)

    def gates(self, x):
        """The weight of each head for each token: {"head_weight": [batch, head, time]}."""
        routed = self._softmax_or_one(self.routed_router, x)  # [B, T, R]
        chosen = torch.zeros_like(routed).scatter(-1, routed.topk(self.top_k, dim=-1).indices, 1.0)
        self.load_balance_loss = self.n_routed * (chosen.flatten(0, 1).mean(0) * routed.flatten(0, 1).mean(0)).sum()
        routed = routed * chosen
        if self.n_shared == 0:
            weights = routed * (self.n_routed if self.p.unit_scale else 1.0)
        else:
            shared = self._softmax_or_one(self.shared_router, x)
            alpha = torch.softmax(self.balance_router(x), dim=-1)
            if self.p.unit_scale:
                shared, routed = shared * (2 * self.n_shared), routed * (2 * self.n_routed)
            weights = torch.cat([alpha[..., :1] * shared, alpha[..., 1:] * routed], dim=-1)
        return {"head_weight": weights.transpose(1, 2)}

    def parallel(self, q, k, v, head_weight):
        z, state = super().parallel(q, k, v)
        return z * head_weight[..., None].to(z.dtype), state

    def recurrent_step(self, q, k, v, state, head_weight):
        z, state = super().recurrent_step(q, k, v, state)
        return z * head_weight[..., None].to(z.dtype), state

    def effective_pattern(self, q, k, head_weight):
        return super().effective_pattern(q, k) * head_weight[..., None].to(q.dtype)

    def mixing_flops_per_token(self, length: int) -> float:
        """Softmax attention's cost for the active heads only (h_s + k of H)."""
        return super().mixing_flops_per_token(length) * (self.n_shared + self.top_k) / self.shape.n_heads
