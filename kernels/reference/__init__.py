"""Readable torch references of the studio's tensor ops (float64-exact, any device)."""

from kernels.reference.decay_linear_attention import chunked_decay_linear_attention, recurrent_decay_linear_attention
from kernels.reference.softmax_attention_stats import softmax_attention_stats_reference

__all__ = ["chunked_decay_linear_attention", "recurrent_decay_linear_attention", "softmax_attention_stats_reference"]
