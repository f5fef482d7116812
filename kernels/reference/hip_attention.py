"""HiP attention (Lee et al., "HiP Attention: Sparse Sub-Quadratic Attention with Hierarchical Attention
Pruning", arXiv 2406.09827): a training-free top-k approximation of causal softmax attention.

The keys 0..t of a query at position t are cut into blocks of `block_size` (block j holds keys
j*b .. j*b + b - 1). Besides the blocks it always keeps (the first, "sink" block and the last b keys,
t - b < s <= t, its "local" block), the query keeps `top_k` blocks found by a coarse-to-fine search
over the remaining candidate blocks, in block units:

    1. split the candidate blocks into top_k contiguous nodes of (almost) equal size;
    2. split every node into two halves; score each half by q_t . k_rep, k_rep its representative key
       (the centre key of its span, the paper's choice); keep the top_k best halves of the 2 top_k;
    3. repeat 2 until every node is one block.

Then softmax over the kept keys only: M[t, s] = exp(q_t.k_s scale) / sum_{s' kept} exp(q_t.k_s' scale) for
kept s, 0 elsewhere. With top_k >= the number of candidate blocks every key is kept (exact softmax).

Deviations from the paper's kernel: the search runs per query (the paper shares one mask per block of
queries, which would let a query see its block's later queries' choices, breaking causality and
decoding == prefill), scores a node by one centre key (no max over a block of queries), and leaves out
the paper's RoPE adjustments of the search. Everything here works on any device and is float64-exact.
Queries sit at the last T of the S key positions (one query over a KV cache: the newest position).
"""

from __future__ import annotations

import torch

__all__ = ["hip_select_blocks", "hip_attention", "hip_pattern", "hip_computed_scores", "hip_attention_oracle"]

QUERY_CHUNK = 256  # queries handled at once: bounds the gathered keys to QUERY_CHUNK x kept x d


def _query_positions(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    t, s = q.shape[2], k.shape[2]
    return torch.arange(s - t, s, device=q.device)


def _gather_keys(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, H, S, D], index [B, H, T, n] (valid key indices) -> [B, H, T, n, D]."""
    b, h, t, n = index.shape
    flat = index.reshape(b, h, t * n, 1).expand(-1, -1, -1, x.shape[-1])
    return x.gather(2, flat).reshape(b, h, t, n, x.shape[-1])


def _dot(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """q [B, H, T, D] . keys [B, H, T, n, D] -> [B, H, T, n]."""
    return (keys @ q[..., None])[..., 0]


def hip_select_blocks(q, k, positions, block_size: int, top_k: int, keep_sink: bool = True,
                      keep_local: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The hierarchical search. q [B, H, T, D] at `positions` [T], k [B, H, S, D] ->
    (blocks [B, H, T, top_k]: the kept candidate blocks, -1 for none;
     scored [B, H, T, n]: the representative keys the search scored, -1 for none)."""
    b_, h_, t_, _ = q.shape
    b = block_size
    pos = positions[:, None]
    lo = torch.full_like(pos, 1 if keep_sink else 0)  # the sink block is kept anyway
    hi = torch.maximum(pos // b + (0 if keep_local else 1), lo)  # blocks wholly inside the local block too
    n = hi - lo
    i = torch.arange(top_k, device=q.device)
    start = (lo + i * n // top_k).expand(b_, h_, t_, top_k)
    end = (lo + (i + 1) * n // top_k).expand(b_, h_, t_, top_k)
    scored = [q.new_full((b_, h_, t_, 0), -1, dtype=torch.long)]
    while bool((end - start).max() > 1):
        searching = (end - start).amax(-1, keepdim=True) > 1  # this query's own search still runs
        mid = (start + end) // 2  # a one-block node splits into (empty, itself)
        child_start, child_end = torch.cat([start, mid], -1), torch.cat([mid, end], -1)
        first_key = child_start * b
        last_key = torch.minimum(child_end * b, pos + 1) - 1
        centre = (first_key + last_key) // 2
        nonempty = child_end > child_start
        score = _dot(q, _gather_keys(k, centre.clamp(min=0))).masked_fill(~nonempty, float("-inf"))
        best = score.topk(top_k, dim=-1).indices
        start, end = child_start.gather(-1, best), child_end.gather(-1, best)
        scored.append(torch.where(nonempty & searching, centre, -1))
    return torch.where(end > start, start, -1), torch.cat(scored, -1)


def _kept_keys(blocks, positions, block_size: int, keep_sink: bool, keep_local: bool):
    """Key indices [B, H, T, K] a query attends to and whether each is used (disjoint, causal)."""
    b = block_size
    shape = blocks.shape[:3]
    pos = positions[:, None]
    offsets = torch.arange(b, device=blocks.device)
    window_start = pos - b + 1 if keep_local else pos + 1  # from here on: the local block's keys (or future ones)
    index, valid = [], []
    if keep_sink:
        index.append(offsets.expand(*shape, b))
        valid.append(((offsets <= pos) & (offsets < window_start)).expand(*shape, b))
    if keep_local:
        local = window_start + offsets
        index.append(local.expand(*shape, b))
        valid.append((local >= 0).expand(*shape, b))
    keys = (blocks[..., None] * b + offsets).flatten(-2)
    chosen = (blocks[..., None] >= 0).expand(*blocks.shape, b).flatten(-2)
    index.append(keys)
    valid.append(chosen & (keys < window_start))
    index = torch.cat(index, -1)
    valid = torch.cat(valid, -1)
    return index.masked_fill(~valid, 0), valid


def _sparse_softmax(q, k, positions, block_size, top_k, keep_sink, keep_local, scale):
    """(weights [B, H, T, K], key index [B, H, T, K], scored keys) of one chunk of queries."""
    blocks, scored = hip_select_blocks(q, k, positions, block_size, top_k, keep_sink, keep_local)
    index, valid = _kept_keys(blocks, positions, block_size, keep_sink, keep_local)
    logits = (_dot(q, _gather_keys(k, index)) * scale).masked_fill(~valid, float("-inf"))
    return torch.softmax(logits, -1), index, scored


def _chunks(q, k):
    positions = _query_positions(q, k)
    for start in range(0, q.shape[2], QUERY_CHUNK):
        yield slice(start, start + QUERY_CHUNK), positions[start : start + QUERY_CHUNK]


def hip_attention(q, k, v, block_size: int, top_k: int, keep_sink: bool = True, keep_local: bool = True,
                  scale: float = 1.0) -> torch.Tensor:
    """q [B, H, T, D], k, v [B, H, S, D] (queries at the last T positions) -> z [B, H, T, D]."""
    outs = []
    for rows, positions in _chunks(q, k):
        weights, index, _ = _sparse_softmax(q[:, :, rows], k, positions, block_size, top_k, keep_sink,
                                            keep_local, scale)
        outs.append((weights[..., None, :] @ _gather_keys(v, index))[..., 0, :])
    return torch.cat(outs, 2) if outs else v.new_zeros(*q.shape[:3], v.shape[-1])


def hip_pattern(q, k, block_size: int, top_k: int, keep_sink: bool = True, keep_local: bool = True,
                scale: float = 1.0) -> torch.Tensor:
    """The sparse pattern M [B, H, T, S] (z = M @ v exactly; zeros outside the kept keys)."""
    pattern = q.new_zeros(*q.shape[:3], k.shape[2])
    for rows, positions in _chunks(q, k):
        weights, index, _ = _sparse_softmax(q[:, :, rows], k, positions, block_size, top_k, keep_sink,
                                            keep_local, scale)
        pattern[:, :, rows] = pattern[:, :, rows].scatter_add(-1, index, weights)
    return pattern


def hip_computed_scores(q, k, block_size: int, top_k: int, keep_sink: bool = True,
                        keep_local: bool = True) -> torch.Tensor:
    """Which scores q_t . k_s the method evaluates, bool [B, H, T, S]: the kept keys and the search's
    representative keys."""
    uses = torch.zeros(*q.shape[:3], k.shape[2], dtype=torch.long, device=q.device)
    for rows, positions in _chunks(q, k):
        blocks, scored = hip_select_blocks(q[:, :, rows], k, positions, block_size, top_k, keep_sink, keep_local)
        index, valid = _kept_keys(blocks, positions, block_size, keep_sink, keep_local)
        part = uses[:, :, rows].scatter_add(-1, index, valid.long())
        uses[:, :, rows] = part.scatter_add(-1, scored.clamp(min=0), (scored >= 0).long())
    return uses > 0


def hip_attention_oracle(q, k, v, block_size: int, top_k: int, keep_sink: bool = True, keep_local: bool = True,
                         scale: float = 1.0) -> torch.Tensor:
    """The same method one query at a time, with Python lists: the readable oracle of the tests."""
    b = block_size
    out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=v.dtype, device=v.device)
    offset = k.shape[2] - q.shape[2]
    for bi in range(q.shape[0]):
        for hi in range(q.shape[1]):
            for ti in range(q.shape[2]):
                pos, query = offset + ti, q[bi, hi, ti]
                local = set(range(max(0, pos - b + 1), pos + 1)) if keep_local else set()
                kept = set(local) | (set(range(min(b, pos + 1))) if keep_sink else set())
                first = 1 if keep_sink else 0
                last = pos // b + (0 if keep_local else 1)  # candidate blocks first .. last - 1
                n = max(0, last - first)
                nodes = [(first + i * n // top_k, first + (i + 1) * n // top_k) for i in range(top_k)]
                while any(e - s > 1 for s, e in nodes):
                    children = []
                    for s, e in nodes:
                        mid = (s + e) // 2
                        children += [(s, mid), (mid, e)]
                    ranked = []
                    for s, e in children:
                        if e > s:
                            centre = (s * b + min(e * b, pos + 1) - 1) // 2
                            ranked.append((float(query @ k[bi, hi, centre]), (s, e)))
                    ranked.sort(key=lambda item: -item[0])
                    nodes = [node for _, node in ranked[:top_k]]
                for s, e in nodes:
                    if e > s:
                        kept |= set(range(s * b, min(s * b + b, pos + 1)))
                keys = sorted(kept)
                weights = torch.softmax((k[bi, hi, keys] @ query) * scale, -1)
                out[bi, hi, ti] = weights @ v[bi, hi, keys]
    return out
