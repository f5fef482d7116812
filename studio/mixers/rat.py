"""RAT (Wei et al., "RAT: Bridging RNN Efficiency and Attention Accuracy in Language Modeling",
arXiv 2507.04416): split the sequence into chunks of L tokens; a gated linear recurrence inside each
chunk summarises it, and softmax attention across chunks reads the summaries.

For token t in chunk c = t // L (the recurrences restart at every chunk start):

    k~_t = f_t * k~_{t-1} + (1 - f_t) * k_t      f_t = sigmoid(x_t W_f + b_f), one per key dimension
    v~_t = a_t  v~_{t-1} + (1 - a_t)  v_t      a_t = sigmoid(x_t w_a + b_a), one per head
    z_t  = sum_{j<c} p_tj v~_{e_j} + p_t,own v~_t,   e_j = jL + L - 1 (the last token of chunk j)
    p_t  = softmax([q_t . R k~_{e_j} / sqrt(d)]_{j<c}, q_t . R k~_t / sqrt(d))

R is RoPE applied after the recurrence (inside the math, see rope_inside): the summary of chunk j
sits at position e_j, the running summary at t. Everything is linear in v, so
M[t, s] = p_tj W[e_j, s] for s in a finished chunk j and p_t,own W[t, s] in the own chunk, with W the
chunk-local EMA weights (1 - a_s) prod_{r=s+1..t} a_r.

Deviation from the paper, to keep z = M @ v with one M per head: the paper's value recurrence forgets
per dimension (the same per-dimension gate as the keys); here the value gate is one scalar per head and
token (a per-dimension value gate would need a different M for each value dimension). The key
recurrence keeps the paper's per-dimension gate. Gate biases start at log u, u ~ U(1, L - 1), as in
the paper's code (forgetting over roughly a chunk); the output gate (sigmoid) is on by default, as in
the paper. Cost: O(T (T / L + L) d); decoding keeps one key and value per finished chunk plus the
running summaries (the KV cache shrinks L times).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from kernels.reference.chunk_hybrids import (
    chunk_ema_matrix,
    chunk_gated_ema,
    chunk_summary_attention,
    chunk_summary_probabilities,
)
from studio.mixers.base import Mixer, MixerParams
from studio.mixers.registry import register
from studio.mixers.rope_inside import move_rope_inside, rotate


class RATParams(MixerParams):
    chunk_size: int = Field(default=16, gt=0, description="L: tokens per chunk (1: softmax-like, >= T: an RNN)")
    output_gate: Literal["none", "sigmoid", "swish"] = Field(
        default="sigmoid", description="gate z with act(x W_g) (RAT's output gate: sigmoid)")


@register
class RAT(Mixer):
    name = "rat"
    paper = "RAT (arXiv 2507.04416)"
    time_complexity = "O(T (T/L + L) d)"
    state_kind = "chunk_cache"  # one key and value summary per finished chunk
    family = "hybrid"
    Params = RATParams

    def init_mixer(self):
        move_rope_inside(self)
        h, d, dm = self.shape.n_heads, self.shape.d_head, self.shape.d_model
        self.key_forget = nn.Linear(dm, h * d, bias=False)
        self.value_forget = nn.Linear(dm, h, bias=False)
        # biases outside the Linear layers: HybridLM's init zeroes Linear biases
        self.key_forget_bias = nn.Parameter(self._initial_bias(h * d))
        self.value_forget_bias = nn.Parameter(self._initial_bias(h))

    def _initial_bias(self, n: int) -> torch.Tensor:
        top = max(self.p.chunk_size - 1, 1)
        return torch.empty(n).uniform_(1, top).log() if top > 1 else torch.zeros(n)

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.shape.d_head)

    def gates(self, x):
        b, t, _ = x.shape
        h = self.shape.n_heads
        key_forget = (self.key_forget(x) + self.key_forget_bias).reshape(b, t, h, -1).transpose(1, 2)
        value_forget = (self.value_forget(x) + self.value_forget_bias).transpose(1, 2)[..., None]
        return {"key_forget": key_forget, "value_forget": value_forget}  # logits [B, H, T, d] / [B, H, T, 1]

    def _summaries(self, k, v, key_forget, value_forget):
        """Rotated k~ and v~ at every position [B, H, T, d], and the unrotated last k~."""
        chunk = self.p.chunk_size
        k_tilde = chunk_gated_ema(k, key_forget, chunk)
        return rotate(self, k_tilde), chunk_gated_ema(v, value_forget, chunk), k_tilde[:, :, -1]

    def parallel(self, q, k, v, key_forget, value_forget):
        chunk = self.p.chunk_size
        keys, values, last_key = self._summaries(k, v, key_forget, value_forget)
        z = chunk_summary_attention(rotate(self, q), keys, values, chunk, self.scale)
        state = {"pos": q.shape[2], "keys": keys[:, :, chunk - 1 :: chunk], "values": values[:, :, chunk - 1 :: chunk],
                 "running_key": last_key, "running_value": values[:, :, -1]}
        return z, state

    def recurrent_step(self, q, k, v, state, key_forget, value_forget):
        pos = 0 if state is None else state["pos"]
        f, a = torch.sigmoid(key_forget), torch.sigmoid(value_forget)
        if pos % self.p.chunk_size == 0:  # a new chunk: the recurrences restart
            running_key, running_value = (1 - f) * k, (1 - a) * v
        else:
            running_key = f * state["running_key"] + (1 - f) * k
            running_value = a * state["running_value"] + (1 - a) * v
        own_key = rotate(self, running_key, pos)
        keys = own_key[:, :, None] if state is None else torch.cat([state["keys"], own_key[:, :, None]], dim=2)
        values = running_value[:, :, None] if state is None else \
            torch.cat([state["values"], running_value[:, :, None]], dim=2)
        p = torch.softmax((keys @ rotate(self, q, pos)[..., None])[..., 0] * self.scale, dim=-1)
        z = (p[:, :, None] @ values)[:, :, 0]
        finished = (pos + 1) % self.p.chunk_size == 0  # the running summary becomes the chunk's summary
        new_state = {"pos": pos + 1, "keys": keys if finished else keys[:, :, :-1],
                     "values": values if finished else values[:, :, :-1],
                     "running_key": running_key, "running_value": running_value}
        return z, new_state

    def effective_pattern(self, q, k, key_forget, value_forget):
        chunk = self.p.chunk_size
        keys = rotate(self, chunk_gated_ema(k, key_forget, chunk))
        p_prev, p_own = chunk_summary_probabilities(rotate(self, q), keys, chunk, self.scale)
        ema = chunk_ema_matrix(value_forget[..., 0], chunk)  # v~ = ema @ v
        return p_prev @ ema[:, :, chunk - 1 :: chunk] + p_own[..., None] * ema

    # ---- costs --------------------------------------------------------------------------------------
    def state_elements(self, context: int) -> int:
        h, d = self.shape.n_heads, self.shape.d_head
        return 2 * h * d * (context // self.p.chunk_size + 1)  # finished chunks' summaries + the running ones

    def mixing_flops_per_token(self, length: int) -> float:
        h, d, chunk = self.shape.n_heads, self.shape.d_head, self.p.chunk_size
        full, rest = divmod(length, chunk)  # keys seen by token t: t // L finished chunks + the running summary
        keys = (chunk * full * (full + 1) / 2 + rest * (full + 1)) / length
        return 4.0 * h * d * keys + 6.0 * h * d  # attention + the two gated recurrences
