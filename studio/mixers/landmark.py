"""Landmark attention (Mohtashami & Jaggi, "Random-Access Infinite Context Length for Transformers",
arXiv 2305.16300): blocks of b tokens, each summarised by a landmark key; a query attends to its own
block's tokens and, through one softmax shared with them, to the landmarks of earlier complete blocks;
a landmark's weight is spread over its block's tokens by a softmax inside the block (grouped softmax):

    p = softmax({q_t.k_s / sqrt(d) : s in t's block, s <= t} u {q_t.l_j / sqrt(d) : j in R_t})
    M[t, s] = p_s (own block),   M[t, s] = p_{l_j} softmax_{s' in block j}(q_t.k_s' / sqrt(d))[s] (block j in R_t).

R_t: the `top_k` earlier blocks of highest landmark score (the paper's retrieval), or all of them
(`top_k` None, the paper's training form). The paper inserts a learned landmark token after each block;
here the sequence keeps its length and the landmark key is computed from the block's keys (after RoPE):
their mean ("mean") or a learned per-head attention pooling softmax_s(u_h.k_s / sqrt(d)) ("pooled",
u_h starts at 0, i.e. at the mean). Block size 1 with every block read is exactly softmax attention.
Decoding keeps the KV cache and one landmark per complete block (math in
kernels/reference/landmark_attention.py).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from pydantic import Field
from torch import nn

from kernels.reference.landmark_attention import chunked_landmark_attention, landmark_attend, landmark_attention_pattern
from studio.mixers.base import Mixer, MixerParams
from studio.mixers.registry import register


class LandmarkParams(MixerParams):
    block_size: int = Field(default=64, gt=0, description="tokens per block (one landmark each)")
    top_k: int | None = Field(default=4, gt=0, description="earlier blocks each query retrieves (None: all)")
    landmark: Literal["mean", "pooled"] = Field(
        default="mean", description="landmark key: mean of the block's keys, or learned attention pooling")


class LandmarkState(NamedTuple):
    keys: torch.Tensor  # [B, H_kv, S, d] every key so far
    values: torch.Tensor  # [B, H_kv, S, d]
    landmarks: torch.Tensor  # [B, H_kv, S // b, d] one per complete block


@register
class Landmark(Mixer):
    name = "landmark"
    paper = "Landmark Attention (arXiv 2305.16300)"
    time_complexity = "O(T (b + T/b + k b) d)"
    state_kind = "kv_cache"
    family = "sparse"
    Params = LandmarkParams
    group_kv = True

    def init_mixer(self):
        if self.p.landmark == "pooled":
            self.landmark_query = nn.Parameter(torch.zeros(self.shape.n_kv_heads, self.shape.d_head))

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.shape.d_head)

    def _landmarks(self, block_keys: torch.Tensor) -> torch.Tensor:
        """Landmark keys [B, H_kv, n, d] of complete blocks [B, H_kv, n, b, d]."""
        if self.p.landmark == "mean":
            return block_keys.mean(dim=-2)
        u = self.landmark_query.to(block_keys.dtype)[None, :, None, :, None]  # [1, H_kv, 1, d, 1]
        pool = torch.softmax((block_keys @ u) * self.scale, dim=-2)  # [B, H_kv, n, b, 1]
        return (pool * block_keys).sum(dim=-2)

    def _all_landmarks(self, k: torch.Tensor) -> torch.Tensor:
        b = self.p.block_size
        n = k.shape[2] // b
        return self._landmarks(k[:, :, : n * b].unflatten(2, (n, b)))

    def parallel(self, q, k, v):
        landmarks = self._all_landmarks(k)
        rep = self.expand_kv
        out = chunked_landmark_attention(q, rep(k), rep(v), rep(landmarks), self.p.block_size, self.p.top_k,
                                         self.scale)
        return out, LandmarkState(k, v, landmarks)

    def recurrent_step(self, q, k, v, state):
        keys, values = k[:, :, None], v[:, :, None]
        landmarks = k.new_zeros(k.shape[0], k.shape[1], 0, k.shape[2])
        if state is not None:
            keys, values = torch.cat([state.keys, keys], dim=2), torch.cat([state.values, values], dim=2)
            landmarks = state.landmarks
        b, t = self.p.block_size, keys.shape[2] - 1
        start = t // b * b
        old_keys = keys[:, :, :start].unflatten(2, (-1, b))
        old_values = values[:, :, :start].unflatten(2, (-1, b))
        rep = self.expand_kv
        out = landmark_attend(q[:, :, None], rep(keys[:, :, start:]), rep(values[:, :, start:]), rep(landmarks),
                              rep(old_keys), rep(old_values), self.p.top_k, self.scale)
        if (t + 1) % b == 0:  # the block is complete: add its landmark
            landmarks = torch.cat([landmarks, self._landmarks(keys[:, :, None, start:])], dim=2)
        return out[:, :, 0], LandmarkState(keys, values, landmarks)

    def effective_pattern(self, q, k):
        landmarks = self.expand_kv(self._all_landmarks(k))
        return landmark_attention_pattern(q, self.expand_kv(k), landmarks, self.p.block_size, self.p.top_k,
                                          self.scale)

    def state_elements(self, context: int) -> int:
        """The KV cache plus one landmark key per complete block."""
        kv, d = self.shape.n_kv_heads, self.shape.d_head
        return kv * d * (2 * context + context // self.p.block_size)

    def mixing_flops_per_token(self, length: int) -> float:
        """Per query t: its own block's tokens so far and the retrieved blocks' tokens (q.k and the
        weighted sum, 4 d each) and every earlier landmark (q.l, 2 d), averaged over t < length."""
        b, k = self.p.block_size, self.p.top_k
        full, rest = divmod(length, b)
        own = full * b * (b + 1) / 2 + rest * (rest + 1) / 2
        blocks = torch.arange(full + 1, dtype=torch.float64, device="cpu")  # index c of each query block
        sizes = torch.full_like(blocks, b)
        sizes[-1] = rest
        landmarks = float((blocks * sizes).sum())
        retrieved = b * float((blocks.clamp(max=k if k is not None else full) * sizes).sum())
        h, d = self.shape.n_heads, self.shape.d_head
        return h * d * (4.0 * (own + retrieved) + 2.0 * landmarks) / length
