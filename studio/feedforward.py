"""The feed-forward half of a block: a dense MLP, or a routed mixture of experts (MoE).

MoE (Switch, arXiv 2101.03961; MiniMax-M1, arXiv 2506.13585; SmallThinker, arXiv 2507.20984): a router
scores every expert for each token, s = softmax(x W_r) or sigmoid(x W_r); the token goes through its
top_k experts E_i, weighted by their scores g_i (rescaled to sum 1 when `normalize_weights`), plus the
always-on shared experts S_j:

    y = sum_{i in top_k(s)} g_i E_i(x) + sum_j S_j(x)

The load-balance loss (Switch, eq. 4) is computed on every forward and kept in `last_aux_loss`:

    aux = n_experts * sum_i f_i P_i

f_i: the share of the tokens' n_tokens * top_k routing slots that went to expert i (no gradient);
P_i: the mean router probability of expert i (for the sigmoid router, each token's scores divided by
their sum). A perfectly balanced router gives aux = 1. `HybridLM.aux_loss()` sums it over the layers.

Hooks (TransformerLens names): blocks.{i}.mlp.hook_router_logits [batch, pos, n_experts],
.hook_expert_weights [batch, pos, top_k] (the g_i), .hook_expert_indices [batch, pos, top_k]; each
expert's own .experts.{e}.hook_pre / .hook_post see only the tokens routed to it [n_tokens, d_expert];
the shared experts' .shared.{j}.hook_pre / .hook_post see every token [batch, pos, d_expert].
An edit in a routing hook changes the output, as in TransformerLens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookPoint

from studio.spec import MoESpec

__all__ = ["MLP", "MoE", "load_balance_loss"]


class MLP(nn.Module):
    """GELU MLP, or SwiGLU (Shazeer, arXiv 2002.05202): hook_pre is the (gate) pre-activation,
    hook_post the activation fed to the output projection."""

    def __init__(self, d_model: int, d_hidden: int, kind: str, bias: bool = False):
        super().__init__()
        self.kind = kind
        self.fc_in = nn.Linear(d_model, d_hidden, bias=bias)
        self.fc_gate = nn.Linear(d_model, d_hidden, bias=bias) if kind == "swiglu" else None
        self.fc_out = nn.Linear(d_hidden, d_model, bias=bias)
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc_gate is None:
            post = F.gelu(self.hook_pre(self.fc_in(x)))
        else:
            post = F.silu(self.hook_pre(self.fc_gate(x))) * self.fc_in(x)
        return self.fc_out(self.hook_post(post))


def load_balance_loss(probs: torch.Tensor, indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch's n_experts * sum_i f_i P_i for router probabilities probs [n_tokens, n_experts] (rows sum
    to 1) and the chosen experts indices [n_tokens, top_k]. 1 when perfectly balanced."""
    counts = torch.bincount(indices.flatten(), minlength=n_experts).to(probs.dtype)
    dispatched = counts / max(indices.numel(), 1)  # f_i
    return n_experts * (dispatched * probs.mean(0)).sum()


class MoE(nn.Module):
    """Top-k routed experts plus optional shared experts; see the module docstring."""

    def __init__(self, d_model: int, d_expert: int, moe: MoESpec, bias: bool = False):
        super().__init__()
        self.config = moe
        self.router = nn.Linear(d_model, moe.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(d_model, d_expert, moe.expert_mlp, bias) for _ in range(moe.n_experts))
        self.shared = nn.ModuleList(MLP(d_model, d_expert, moe.expert_mlp, bias) for _ in range(moe.shared_experts))
        self.hook_router_logits = HookPoint()
        self.hook_expert_weights = HookPoint()
        self.hook_expert_indices = HookPoint()
        self.last_aux_loss: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [..., d_model] -> (weights [..., top_k], indices [..., top_k], probs [..., n_experts])."""
        logits = self.hook_router_logits(self.router(x))
        if self.config.router == "softmax":
            scores = probs = logits.softmax(-1)
        else:
            scores = torch.sigmoid(logits)
            probs = scores / scores.sum(-1, keepdim=True)
        weights, indices = scores.topk(self.config.top_k, dim=-1)
        if self.config.normalize_weights:
            weights = weights / weights.sum(-1, keepdim=True)
        return self.hook_expert_weights(weights), self.hook_expert_indices(indices), probs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, indices, probs = self.route(x)
        self.last_aux_loss = load_balance_loss(probs.flatten(0, -2), indices.flatten(0, -2), len(self.experts))
        tokens = x.reshape(-1, x.shape[-1])
        weights, indices = weights.reshape(-1, weights.shape[-1]), indices.reshape(-1, indices.shape[-1])
        out = torch.zeros_like(tokens)
        # Every expert runs, on no tokens if none chose it: all parameters take part in every backward
        # (zero gradients), which DDP requires.
        for e, expert in enumerate(self.experts):
            token, slot = (indices == e).nonzero(as_tuple=True)
            routed = expert(tokens[token]) * weights[token, slot, None]
            out.index_add_(0, token, routed.to(out.dtype))
        out = out.reshape(x.shape)
        for expert in self.shared:
            out = out + expert(x).to(out.dtype)
        return out
