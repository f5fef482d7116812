"""Agent attention (Han et al., "Agent Attention: On the Integration of Softmax and Linear Attention",
arXiv 2312.08874), in a causal form of the studio's own (the paper's models are not causal).

Agent attention: n agent tokens A = pool(Q) aggregate from the keys, V_A = softmax(A K^T / sqrt(d)) V, then
broadcast back, O = softmax(Q A^T / sqrt(d)) V_A. Causal form: chunks of C tokens; the agents of chunk c
are the n window means of chunk c - 1's queries (C / n queries each) and aggregate from every key before
chunk c; a query takes one softmax over its own chunk's keys so far (local attention) and those agents:

    p = softmax({q_t.k_s / sqrt(d) : s in t's chunk, s <= t} u {q_t.a / sqrt(d) : agents a of t's chunk})
    M[t, s] = p_s (own chunk),   M[t, s] = sum_a p_a softmax_{s' < chunk start}(a.k_s' / sqrt(d))[s] (before).

The paper's agent bias and depthwise convolution on V are left out (the shared `short_conv` option
convolves q, k, v). Decoding keeps the KV cache (each chunk's new agents aggregate over every earlier
key), the current agents with their aggregated values, and the running window means of the current
chunk's queries (math in kernels/reference/agent_attention.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from pydantic import Field, model_validator

from kernels.reference.agent_attention import (
    agent_aggregation,
    agent_attend,
    agent_attention_pattern,
    chunked_agent_attention,
)
from studio.mixers.base import Mixer, MixerParams
from studio.mixers.registry import register


class AgentParams(MixerParams):
    chunk_size: int = Field(
        default=64, gt=0, description="tokens per chunk; a chunk's queries pool the next chunk's agents")
    n_agents: int = Field(default=8, gt=0, description="agent tokens per chunk (must divide chunk_size)")

    @model_validator(mode="after")
    def _agents_divide_chunk(self) -> "AgentParams":
        if self.chunk_size % self.n_agents:
            raise ValueError(f"n_agents={self.n_agents} must divide chunk_size={self.chunk_size} "
                             "(each agent is the mean of chunk_size / n_agents queries)")
        return self


class AgentState(NamedTuple):
    keys: torch.Tensor  # [B, H_kv, S, d] every key so far
    values: torch.Tensor  # [B, H_kv, S, d]
    agents: torch.Tensor  # [B, H, n or 0, d] agents of the current chunk (none in chunk 0)
    agent_values: torch.Tensor  # [B, H, n or 0, d] their aggregated values
    query_pool: torch.Tensor  # [B, H, n, d] running window means of the current chunk's queries


@register
class Agent(Mixer):
    name = "agent"
    paper = "Agent Attention (arXiv 2312.08874)"
    time_complexity = "O(T C d + n T^2 d / C)"
    state_kind = "kv_cache"
    family = "sparse"
    Params = AgentParams
    group_kv = True

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.shape.d_head)

    def _pool(self, q_part: torch.Tensor, first: int = 0) -> torch.Tensor:
        """The share [B, H, n, d] of queries q_part [B, H, L, d], at offsets first.. of their chunk, in
        the chunk's window means."""
        size = self.p.chunk_size // self.p.n_agents
        pool = q_part.new_zeros(*q_part.shape[:2], self.p.n_agents, q_part.shape[-1])
        slots = (first + torch.arange(q_part.shape[2], device=q_part.device)) // size
        return pool.index_add(2, slots, q_part / size)

    def parallel(self, q, k, v):
        rep = self.expand_kv
        out, (agents, agent_values) = chunked_agent_attention(q, rep(k), rep(v), self.p.chunk_size,
                                                              self.p.n_agents, self.scale)
        start = q.shape[2] // self.p.chunk_size * self.p.chunk_size
        return out, AgentState(k, v, agents, agent_values, self._pool(q[:, :, start:]))

    def recurrent_step(self, q, k, v, state):
        if state is None:
            no_agents = q[:, :, None][:, :, :0]
            state = AgentState(k[:, :, None][:, :, :0], v[:, :, None][:, :, :0], no_agents, no_agents,
                               self._pool(no_agents))
        keys = torch.cat([state.keys, k[:, :, None]], dim=2)
        values = torch.cat([state.values, v[:, :, None]], dim=2)
        size, t = self.p.chunk_size, keys.shape[2] - 1
        start = t // size * size
        rep = self.expand_kv
        out = agent_attend(q[:, :, None], rep(keys[:, :, start:]), rep(values[:, :, start:]), state.agents,
                           state.agent_values, self.scale)
        pool = state.query_pool + self._pool(q[:, :, None], first=t - start)
        agents, agent_values = state.agents, state.agent_values
        if t + 1 - start == size:  # the chunk is complete: its queries become the next chunk's agents
            agents = pool
            agent_values = agent_aggregation(agents, rep(keys), self.scale) @ rep(values)
            pool = torch.zeros_like(pool)
        return out[:, :, 0], AgentState(keys, values, agents, agent_values, pool)

    def effective_pattern(self, q, k):
        return agent_attention_pattern(q, self.expand_kv(k), self.p.chunk_size, self.p.n_agents, self.scale)

    def state_elements(self, context: int) -> int:
        """The KV cache plus the agents, their values and the running query means."""
        d = self.shape.d_head
        return 2 * self.shape.n_kv_heads * d * context + 3 * self.shape.n_heads * self.p.n_agents * d

    def mixing_flops_per_token(self, length: int) -> float:
        """Per query: its chunk's tokens so far and the n agents (q.k and the weighted sum, 4 d each);
        per chunk after the first: its n agents' aggregation over every earlier key (4 d each)."""
        c, n = self.p.chunk_size, self.p.n_agents
        full, rest = divmod(length, c)
        own = full * c * (c + 1) / 2 + rest * (rest + 1) / 2
        agent_reads = n * max(length - c, 0)
        later_chunks = -(-length // c) - 1
        aggregation = n * c * later_chunks * (later_chunks + 1) / 2
        return 4.0 * self.shape.n_heads * self.shape.d_head * (own + agent_reads + aggregation) / length
