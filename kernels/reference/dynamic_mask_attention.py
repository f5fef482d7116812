"""Top-k attention over keys ranked by a per-key bias: the math of Dynamic Mask Attention (DMA, Shi et
al., "Trainable Dynamic Mask Sparse Attention", arXiv 2508.02124).

Every key s carries a bias b_s (DMA computes it from the key's value; the caller supplies it). Query t
attends with softmax to S_t, the `top_k` keys s <= t of largest bias (on equal bias the later key
ranks higher), with the bias added to the logits:

    M[t, s] = exp(q_t.k_s * scale + b_s) / sum_{s' in S_t} exp(q_t.k_s' * scale + b_s'),  s in S_t.

The bias does not depend on the query, so S_t = top_k(S_{t-1} + {t}): a key that drops out never comes
back, and the `top_k` kept keys (with their values and biases) are the whole decoding state.
`chunked_topk_bias_attention` walks the queries in chunks, each against the kept keys and its own
chunk's keys: O(T (top_k + chunk) d). One chunk over the whole sequence is the dense T x T form
(`topk_bias_weights` on all keys), token by token the recurrent one.

Heads: q [B, H, T, d]; k, v [B, H_kv, T, d] and bias [B, H_kv, T] with H a multiple of H_kv (GQA: the
H / H_kv query heads of a group share their kv head's keys, bias and selection).
"""

from __future__ import annotations

import torch


def _expand(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, H_kv, ...] -> [B, H_kv * groups, ...], each kv head repeated for its query heads."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def bias_rank(bias: torch.Tensor) -> torch.Tensor:
    """Rank of each key [B, H_kv, N] (in time order) by (bias, position): 0 = first to drop out."""
    return bias.argsort(dim=-1, stable=True).argsort(dim=-1)


def topk_bias_weights(q: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor, top_k: int,
                      scale: float) -> torch.Tensor:
    """Attention weights [B, H, C, N] of the C queries q [B, H, C, d] over N keys [B, H_kv, N, d] with
    biases [B, H_kv, N], in time order; query i sits at the position of key N - C + i."""
    n, c = keys.shape[2], q.shape[2]
    groups = q.shape[1] // keys.shape[1]
    visible = (torch.arange(n - c, n, device=q.device)[:, None] >= torch.arange(n, device=q.device)[None, :])
    rank = torch.where(visible, bias_rank(bias)[:, :, None, :], -1)  # [B, H_kv, C, N], -1: future key
    kth = rank.topk(min(top_k, n), dim=-1).values[..., -1:]  # the k-th highest visible rank (or -1)
    selected = _expand(visible & (rank >= kth), groups)
    scores = (q @ _expand(keys, groups).transpose(-1, -2)) * scale + _expand(bias, groups)[:, :, None, :]
    return torch.softmax(scores.masked_fill(~selected, float("-inf")), dim=-1)


def keep_top_keys(keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, top_k: int):
    """The `top_k` keys of highest rank, with their values and biases, still in time order."""
    if keys.shape[2] <= top_k:
        return keys, values, bias
    kept = bias.argsort(dim=-1, stable=True)[..., -top_k:].sort(dim=-1).values  # [B, H_kv, top_k]
    return (keys.gather(2, kept[..., None].expand(-1, -1, -1, keys.shape[-1])),
            values.gather(2, kept[..., None].expand(-1, -1, -1, values.shape[-1])),
            bias.gather(2, kept))


def topk_bias_attend(q, keys, values, bias, top_k: int, scale: float, cache=None):
    """The C queries q [B, H, C, d] whose own keys, values, biases are `keys`, `values`, `bias` [.., C, ..],
    after the kept `cache` (keys, values, bias) or None. Returns (out [B, H, C, d_v], new cache)."""
    if cache is not None:
        keys, values, bias = (torch.cat([old, new], dim=2) for old, new in zip(cache, (keys, values, bias)))
    weights = topk_bias_weights(q, keys, bias, top_k, scale)
    out = weights @ _expand(values, q.shape[1] // keys.shape[1]).to(weights.dtype)
    return out, keep_top_keys(keys, values, bias, top_k)


def chunked_topk_bias_attention(q, k, v, bias, top_k: int, scale: float, chunk_size: int = 64, cache=None):
    """q [B, H, T, d]; k, v [B, H_kv, T, d]; bias [B, H_kv, T] -> (out [B, H, T, d_v], kept
    (keys, values, bias) after the last token). `cache`: the kept keys of an earlier prefix, or None."""
    outs = []
    for start in range(0, q.shape[2], chunk_size):
        end = start + chunk_size
        out, cache = topk_bias_attend(q[:, :, start:end], k[:, :, start:end], v[:, :, start:end],
                                      bias[:, :, start:end], top_k, scale, cache)
        outs.append(out)
    if cache is None:
        cache = (k, v, bias)  # an empty sequence keeps nothing
    out = torch.cat(outs, dim=2) if outs else q.new_zeros(*q.shape[:3], v.shape[-1])
    return out, cache


def recurrent_topk_bias_attention(q, k, v, bias, top_k: int, scale: float):
    """The same op token by token (the decoding form): the oracle of the chunked form."""
    return chunked_topk_bias_attention(q, k, v, bias, top_k, scale, chunk_size=1)
