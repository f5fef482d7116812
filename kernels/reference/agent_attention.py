"""Causal agent attention, after Agent Attention (Han et al., arXiv 2312.08874).

Agent attention: n agent tokens A = pool(Q) first aggregate from the keys, V_A = softmax(A K^T * scale) V,
then broadcast to the queries, O = softmax(Q A^T * scale) V_A. The paper's models are not causal; the
causal form here cuts the sequence into chunks of C tokens. The agents of chunk c are the n window means
of the queries of chunk c - 1 (windows of C / n queries; chunk 0 has none) and aggregate from every key
before chunk c. A query of chunk c takes one softmax over its own chunk's keys so far and these agents:

    p = softmax({q_t.k_s * scale : cC <= s <= t} u {q_t.a * scale : agents a of chunk c})
    M[t, s] = p_s                                                   s in t's chunk
    M[t, s] = sum_a p_a softmax_{s' < cC}(a.k_s' * scale)[s]        s before t's chunk

Rows sum to 1. The aggregation costs n keys per earlier token once per chunk, so the whole is
O(T C d + n T^2 d / C). All heads here are query heads (repeat GQA kv heads first).
"""

from __future__ import annotations

import torch


def pool_agents(q_chunk: torch.Tensor, n_agents: int) -> torch.Tensor:
    """The agents of the next chunk [B, H, n, d]: means of n equal windows of a full chunk's queries [B, H, C, d]."""
    return q_chunk.unflatten(2, (n_agents, -1)).mean(dim=3)


def agent_aggregation(agents: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax_s(a.k_s * scale) [B, H, n, S] of agents [B, H, n, d] over keys [B, H, S, d]."""
    return torch.softmax((agents @ keys.transpose(-1, -2)) * scale, dim=-1)


def agent_weights(q, own_keys, agents, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of queries q [B, H, C, d] (the last C positions of their chunk, whose keys so far are
    own_keys [B, H, L, d]) over their chunk's tokens [B, H, C, L] and over the agents [B, H, C, n]."""
    c, n_own = q.shape[2], own_keys.shape[2]
    own = (q @ own_keys.transpose(-1, -2)) * scale
    future = torch.arange(n_own - c, n_own, device=q.device)[:, None] < torch.arange(n_own, device=q.device)
    own = own.masked_fill(future, float("-inf"))
    p = torch.softmax(torch.cat([own, (q @ agents.transpose(-1, -2)) * scale], dim=-1), dim=-1)
    return p[..., :n_own], p[..., n_own:]


def agent_attend(q, own_keys, own_values, agents, agent_values, scale: float) -> torch.Tensor:
    """Output [B, H, C, d_v] of `agent_weights`; agent_values [B, H, n, d_v] = aggregation @ earlier values."""
    own, through_agents = agent_weights(q, own_keys, agents, scale)
    return own @ own_values + through_agents @ agent_values


def _agents_of(q, k, v, chunk: int, chunk_size: int, n_agents: int, scale: float):
    """Agents of chunk `chunk` and their aggregated values (empty for chunk 0)."""
    start = chunk * chunk_size
    if chunk == 0:
        empty = q.new_zeros(*q.shape[:2], 0, q.shape[-1])
        return empty, empty.new_zeros(*q.shape[:2], 0, v.shape[-1])
    agents = pool_agents(q[:, :, start - chunk_size : start], n_agents)
    return agents, agent_aggregation(agents, k[:, :, :start], scale) @ v[:, :, :start]


def chunked_agent_attention(q, k, v, chunk_size: int, n_agents: int, scale: float):
    """q, k [B, H, T, d], v [B, H, T, d_v] -> (out [B, H, T, d_v], (agents, agent values) of the chunk
    that position T falls in: what decoding continues with)."""
    t = q.shape[2]
    outs = []
    for c, start in enumerate(range(0, t, chunk_size)):
        own = slice(start, start + chunk_size)
        agents, agent_values = _agents_of(q, k, v, c, chunk_size, n_agents, scale)
        outs.append(agent_attend(q[:, :, own], k[:, :, own], v[:, :, own], agents, agent_values, scale))
    out = torch.cat(outs, dim=2) if outs else q.new_zeros(*q.shape[:3], v.shape[-1])
    return out, _agents_of(q, k, v, t // chunk_size, chunk_size, n_agents, scale)


def agent_attention_pattern(q, k, chunk_size: int, n_agents: int, scale: float) -> torch.Tensor:
    """The effective matrix M [B, H, T, T] (out = M @ v) of `chunked_agent_attention`."""
    bsz, h, t, _ = q.shape
    pattern = q.new_zeros(bsz, h, t, t)
    for c, start in enumerate(range(0, t, chunk_size)):
        own = slice(start, start + chunk_size)
        rows = pattern[:, :, own]
        agents = pool_agents(q[:, :, start - chunk_size : start], n_agents) if c else q[:, :, :0]
        own_weights, through_agents = agent_weights(q[:, :, own], k[:, :, own], agents, scale)
        rows[..., own] = own_weights
        if c:
            rows[..., :start] = through_agents @ agent_aggregation(agents, k[:, :, :start], scale)
    return pattern
