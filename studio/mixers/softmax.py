"""Softmax attention (Vaswani et al., arXiv 1706.03762), causal, MHA or GQA (Ainslie et al.,
arXiv 2305.13245), with RoPE or NoPE. M[t, s] = softmax_s(q_t . k_s / sqrt(d)) over s <= t.
The decoding state is the KV cache (kept at n_kv_heads heads)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels.dispatch import use_triton
from studio.mixers.base import Mixer
from studio.mixers.registry import register


def causal_scores(q: torch.Tensor, k: torch.Tensor, scale: float, window: int | None = None) -> torch.Tensor:
    """q [B, H, T, D] . k [B, H, S, D] -> scaled scores, -inf where s > t (or t - s >= window).
    Query i sits at absolute position S - T + i, so a one-token query sees the whole cache."""
    t, s = q.shape[2], k.shape[2]
    scores = (q @ k.transpose(-1, -2)) * scale
    gap = torch.arange(s - t, s, device=q.device)[:, None] - torch.arange(s, device=q.device)[None, :]
    allowed = gap >= 0
    if window is not None:
        allowed &= gap < window
    return scores.masked_fill(~allowed, float("-inf"))


@register
class Softmax(Mixer):
    name = "softmax"
    paper = "Attention Is All You Need (arXiv 1706.03762)"
    time_complexity = "O(T^2 d)"
    state_kind = "kv_cache"
    family = "softmax"
    group_kv = True

    @property
    def window(self) -> int | None:
        """Keys a query may see (itself included); None: all earlier keys."""
        return None

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.shape.d_head)

    def _keep(self, keys: torch.Tensor, values: torch.Tensor):
        w = self.window
        return (keys, values) if w is None else (keys[:, :, -w:], values[:, :, -w:])

    def parallel(self, q, k, v):
        if self.window is None:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=True)
        else:
            z = self._banded(q, k, v)
        return z, self._keep(k, v)

    def _banded(self, q, k, v):
        if use_triton(q):
            from kernels.sliding_window_attention import sliding_window_attention
            z = sliding_window_attention(*(x.transpose(1, 2) for x in (q, k, v)), self.window, scale=self.scale)
            return z.transpose(1, 2)
        return self._banded_reference(q, k, v)

    def _banded_reference(self, q, k, v):
        """Window attention block by block: each block of queries sees only its band of keys, so the
        cost is O(T (block + w)) rather than a T x T mask."""
        t, w = q.shape[2], self.window
        block = max(64, w)
        outs = []
        for start in range(0, t, block):
            end, first = min(t, start + block), max(0, start - w + 1)
            gap = torch.arange(start, end, device=q.device)[:, None] - torch.arange(first, end, device=q.device)
            band = (gap >= 0) & (gap < w)
            outs.append(F.scaled_dot_product_attention(
                q[:, :, start:end], k[:, :, first:end], v[:, :, first:end],
                attn_mask=band, scale=self.scale, enable_gqa=True))
        return torch.cat(outs, dim=2)

    def recurrent_step(self, q, k, v, state):
        keys, values = k[:, :, None], v[:, :, None]
        if state is not None:
            keys, values = torch.cat([state[0], keys], dim=2), torch.cat([state[1], values], dim=2)
        keys, values = self._keep(keys, values)
        pattern = torch.softmax(causal_scores(q[:, :, None], self.expand_kv(keys), self.scale, self.window), -1)
        return (pattern @ self.expand_kv(values))[:, :, 0], (keys, values)

    def effective_pattern(self, q, k):
        return torch.softmax(causal_scores(q, self.expand_kv(k), self.scale, self.window), dim=-1)
