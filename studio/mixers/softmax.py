"""Softmax attention (Vaswani et al., arXiv 1706.03762), causal, MHA or GQA (Ainslie et al.,
arXiv 2305.13245), with RoPE or NoPE. M[t, s] = softmax_s(q_t . k_s / sqrt(d)) over s <= t.
The decoding state is the KV cache (kept at n_kv_heads heads).

Minimal-transformer forms (Reducing the Transformer to a Minimum, arXiv 2410.13732), parameters `qk`, `vo`:

    qk "separate"   q = x W_Q, k = x W_K (the default)
       "collapsed"  one W_QK per head (d_model x d_model): q_h = x W_QK_h, k = x (one d_model-wide key head
                    shared by every head), score = x_t W_QK_h x_s^T / sqrt(d_head) (RoPE, if on, turns the
                    d_model-wide q and k)
       "symmetric"  W_K = W_Q: one projection, k = q (n_heads key heads), RoPE applied alike to both
    vo "separate"   v = x W_V, out = concat_h(z_h) W_O (the default)
       "collapsed"  one W_VO per kv head (d_model x d_model): out = sum_h M_h X W_VO_h, no o_proj

`weights(scores)` turns the masked scores into the pattern (softmax here); a subclass that changes it
(`approx`) changes the forward, the decoding step and the pattern at once."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kernels.dispatch import use_triton
from studio.mixers.base import Mixer, MixerParams
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


class SoftmaxParams(MixerParams):
    qk: Literal["separate", "collapsed", "symmetric"] = Field(
        default="separate", description="query-key weights: W_Q and W_K, one W_QK per head, or W_K = W_Q")
    vo: Literal["separate", "collapsed"] = Field(
        default="separate", description="value-output weights: W_V and W_O, or one W_VO per kv head")


@register
class Softmax(Mixer):
    name = "softmax"
    paper = "Attention Is All You Need (arXiv 1706.03762)"
    time_complexity = "O(T^2 d)"
    state_kind = "kv_cache"
    family = "softmax"
    group_kv = True
    Params = SoftmaxParams

    # ---- qk / vo forms (subclasses with their own Params keep the separate forms) ----------------
    @property
    def qk_form(self) -> str:
        return getattr(self.p, "qk", "separate")

    @property
    def vo_form(self) -> str:
        return getattr(self.p, "vo", "separate")

    @property
    def d_qk(self) -> int:
        return self.shape.d_model if self.qk_form == "collapsed" else self.shape.d_head

    @property
    def d_v(self) -> int:
        return self.shape.d_model if self.vo_form == "collapsed" else self.shape.d_head

    @property
    def n_k_heads(self) -> int:
        return {"collapsed": 1, "symmetric": self.shape.n_heads}.get(self.qk_form, self.shape.n_kv_heads)

    @property
    def k_is_q(self) -> bool:
        return self.qk_form == "symmetric"

    @property
    def has_k_proj(self) -> bool:
        return self.qk_form == "separate"  # collapsed: k is the q/k input itself; symmetric: k is q

    @property
    def has_o_proj(self) -> bool:
        return self.vo_form == "separate"

    def qkv(self, src, x):
        if self.qk_form == "collapsed":
            return self.q_proj(src), src, self.v_proj(x)
        return super().qkv(src, x)

    def residual_writers(self) -> dict[str, float]:
        if self.vo_form == "collapsed":  # n_heads d_model-wide heads summed: each a 1/sqrt(n_heads) share
            return {"v_proj": self.shape.n_heads**-0.5}
        return super().residual_writers()

    # ---- the math ------------------------------------------------------------------------------
    def weights(self, scores: torch.Tensor) -> torch.Tensor:
        """The pattern from scaled scores [.., T, S] that are -inf where masked: softmax over s."""
        return torch.softmax(scores, dim=-1)

    @property
    def window(self) -> int | None:
        """Keys a query may see (itself included); None: all earlier keys."""
        return None

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.shape.d_head)

    def _keep(self, keys: torch.Tensor, values: torch.Tensor):
        """The decoding cache: every key and value, or the last `window` of them as copies (a slice
        would keep the whole prompt's keys and values alive)."""
        w = self.window
        if w is None or keys.shape[2] <= w:
            return keys, values
        return keys[:, :, -w:].clone(), values[:, :, -w:].clone()

    def _same_heads(self, k, v):
        """k and v with one head count (collapsed q/k has one key head, symmetric n_heads)."""
        if k.shape[1] == v.shape[1]:
            return k, v
        if k.shape[1] == 1:
            return k.expand(-1, v.shape[1], -1, -1), v
        return self.expand_kv(k), self.expand_kv(v)

    def parallel(self, q, k, v):
        kk, vv = self._same_heads(k, v)
        if self.window is None:
            z = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, scale=self.scale, enable_gqa=True)
        else:
            z = self._banded(q, kk, vv)
        return z, self._keep(k, v)

    def _banded(self, q, k, v):
        if use_triton(q) and q.shape[-1] == v.shape[-1] <= 256:
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
        pattern = self.weights(causal_scores(q[:, :, None], self.expand_kv(keys), self.scale, self.window))
        return (pattern @ self.expand_kv(values))[:, :, 0], (keys, values)

    def effective_pattern(self, q, k):
        return self.weights(causal_scores(q, self.expand_kv(k), self.scale, self.window))
