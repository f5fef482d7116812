"""Queries and keys decoupled from the evolving hidden states (Deconstructing Attention, arXiv
2510.11602, the "StaticEmbQK" variant): Q, K = Emb(token) W: q_t = e(x_t) W_Q, k_s = e(x_s) W_K from the
token embeddings e (the model's embedding output, normalised by the layer's own norm, a function of the
token id alone); values from the hidden states as usual. The score of a pair (t, s) depends only on
their token ids (and positions, with RoPE).

`HybridLM` hands the embeddings to the layer (see `HybridLM._qk_resids`); on its own (outside a model)
the mixer uses its input x, as softmax attention."""

from __future__ import annotations

from studio.mixers.registry import register
from studio.mixers.softmax import Softmax


@register
class StaticEmbQK(Softmax):
    name = "static_emb_qk"
    paper = "Deconstructing Attention (arXiv 2510.11602): Q, K from the token embeddings"
    time_complexity = "O(T^2 d)"
    state_kind = "kv_cache"
    family = "ablation"
    qk_source = "embedding"
