"""Landmark attention (Mohtashami & Jaggi, arXiv 2305.16300): the sequence in blocks of b tokens, one
landmark key l_j per complete block j; a query reads its own block's tokens directly and earlier blocks
through their landmarks (the paper's grouped softmax).

For query t in block c = t // b and R_t a set of earlier complete blocks (all of them, as the paper
trains, or the `top_k` of highest landmark score q_t.l_j, its retrieval at inference):

    p = softmax over {q_t.k_s * scale : cb <= s <= t}  and  {q_t.l_j * scale : j in R_t}
    M[t, s] = p_s                                                       s in t's own block
    M[t, s] = p_{l_j} softmax_{s' in block j}(q_t.k_s' * scale)[s]      s in a block j of R_t
    M[t, s] = 0                                                         otherwise

Rows sum to 1. `landmark_weights` computes the weights of a run of queries against their own block and
the earlier blocks; `chunked_landmark_attention` walks the query blocks, O(T (b + T/b + k b) d) with
top-k retrieval (O(T^2 d) when every block is read); `landmark_attention_pattern` writes the dense
T x T matrix from the same weights. All heads here are query heads (repeat GQA kv heads first).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class LandmarkWeights(NamedTuple):
    own: torch.Tensor  # [B, H, C, L] weights of the own block's tokens
    blocks: torch.Tensor | None  # [B, H, C, m] indices of the retrieved blocks; None: all n blocks in order
    tokens: torch.Tensor  # [B, H, C, m, b] weights of the retrieved blocks' tokens


def _pick(blocks: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """blocks [B, H, n, b, d], ids [B, H, C, m] -> the chosen blocks per query [B, H, C, m, b, d]."""
    b, h = blocks.shape[:2]
    return blocks[torch.arange(b, device=ids.device)[:, None, None, None],
                  torch.arange(h, device=ids.device)[None, :, None, None], ids]


def landmark_weights(q, own_keys, landmarks, block_keys, top_k: int | None, scale: float) -> LandmarkWeights:
    """q [B, H, C, d]: queries at the last C positions of their block, whose keys so far are own_keys
    [B, H, L, d] (L >= C); landmarks [B, H, n, d] and block_keys [B, H, n, b, d] of the n earlier blocks."""
    c, n_own, n = q.shape[2], own_keys.shape[2], landmarks.shape[2]
    own = (q @ own_keys.transpose(-1, -2)) * scale
    future = torch.arange(n_own - c, n_own, device=q.device)[:, None] < torch.arange(n_own, device=q.device)
    own = own.masked_fill(future, float("-inf"))
    marks = (q @ landmarks.transpose(-1, -2)) * scale  # [B, H, C, n]
    ids = None
    if top_k is not None and top_k < n:
        ids = marks.topk(top_k, dim=-1).indices
        marks = marks.gather(-1, ids)
        inner = torch.einsum("bhcd,bhcmsd->bhcms", q, _pick(block_keys, ids)) * scale
    else:
        inner = torch.einsum("bhcd,bhnsd->bhcns", q, block_keys) * scale
    upper = torch.softmax(torch.cat([own, marks], dim=-1), dim=-1)
    tokens = upper[..., n_own:, None] * torch.softmax(inner, dim=-1)
    return LandmarkWeights(upper[..., :n_own], ids, tokens)


def landmark_attend(q, own_keys, own_values, landmarks, block_keys, block_values, top_k, scale):
    """The output [B, H, C, d_v] of `landmark_weights` (block_values [B, H, n, b, d_v])."""
    w = landmark_weights(q, own_keys, landmarks, block_keys, top_k, scale)
    if w.blocks is None:
        far = torch.einsum("bhcns,bhnsd->bhcd", w.tokens, block_values)
    else:
        far = torch.einsum("bhcms,bhcmsd->bhcd", w.tokens, _pick(block_values, w.blocks))
    return w.own @ own_values + far


def _blocks(x: torch.Tensor, n: int, b: int) -> torch.Tensor:
    """The first n blocks of x [B, H, T, d] as [B, H, n, b, d]."""
    return x[:, :, : n * b].unflatten(2, (n, b))


def chunked_landmark_attention(q, k, v, landmarks, block_size: int, top_k: int | None, scale: float):
    """q, k [B, H, T, d], v [B, H, T, d_v], landmarks [B, H, T // b, d] -> out [B, H, T, d_v]."""
    b, outs = block_size, []
    for c, start in enumerate(range(0, q.shape[2], b)):
        own = slice(start, start + b)
        outs.append(landmark_attend(q[:, :, own], k[:, :, own], v[:, :, own], landmarks[:, :, :c],
                                    _blocks(k, c, b), _blocks(v, c, b), top_k, scale))
    return torch.cat(outs, dim=2) if outs else q.new_zeros(*q.shape[:3], v.shape[-1])


def landmark_attention_pattern(q, k, landmarks, block_size: int, top_k: int | None, scale: float):
    """The effective matrix M [B, H, T, T] (out = M @ v) of `chunked_landmark_attention`."""
    bsz, h, t, _ = q.shape
    b = block_size
    pattern = q.new_zeros(bsz, h, t, t)
    for c, start in enumerate(range(0, t, b)):
        own = slice(start, start + b)
        w = landmark_weights(q[:, :, own], k[:, :, own], landmarks[:, :, :c], _blocks(k, c, b), top_k, scale)
        rows = pattern[:, :, own]
        rows[..., own] = w.own
        if w.blocks is None:
            rows[..., : c * b] = w.tokens.flatten(-2)
        else:
            columns = (w.blocks[..., None] * b + torch.arange(b, device=q.device)).flatten(-2)
            rows.scatter_(-1, columns, w.tokens.flatten(-2))
    return pattern
