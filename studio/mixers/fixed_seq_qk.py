"""Sequence-independent mixing from one fixed text (Deconstructing Attention, arXiv 2510.11602, the
"FixedSeqQK" variant): softmax attention whose queries and keys at positions 0..T-1 are computed from
the hidden states of ONE fixed token sequence passed through the same stack (same layers, same
weights), q_t = h~_t W_Q, k_s = h~_s W_K, h~ this layer's input for the fixed text; values come from the
hidden states of the actual input. The pattern depends on the weights and positions, never on the
tokens.

`HybridLM` runs the fixed text (`studio.model.FIXED_QK_TEXT`'s bytes, repeated, modulo vocab_size)
through the blocks before the input, without gradient and with hooks silenced, and hands each such
layer the fixed text's residual entering it (normalised by the layer's own norm): see
`HybridLM._qk_resids`. Decoding advances the fixed text by one token per step alongside the input.
On its own (outside a model) the mixer has no fixed text and uses its input x, as softmax attention."""

from __future__ import annotations

from studio.mixers.registry import register
from studio.mixers.softmax import Softmax


@register
class FixedSeqQK(Softmax):
    name = "fixed_seq_qk"
    paper = "Deconstructing Attention (arXiv 2510.11602): Q, K from a fixed sequence's hidden states"
    time_complexity = "O(T^2 d) (+ the fixed text's forward)"
    state_kind = "kv_cache"
    family = "ablation"
    qk_source = "fixed_sequence"
