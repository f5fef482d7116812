"""Sequence-independent mixing from random embeddings (Deconstructing Attention, arXiv 2510.11602, the
"RndEmbQK" variant): softmax attention whose queries and keys are computed from fixed random
per-position embeddings r_t instead of the hidden states, q_t = r_t W_Q, k_s = r_s W_K; values come
from the hidden states as usual. The pattern depends only on the positions (and W_Q, W_K), never on
the tokens.

r_t ~ N(0, I_{d_model}), not trained and not saved: regenerated from (`seed`, layer index, position)
in blocks of 256 positions, so any length works, row t never depends on the sequence length, and each
layer has its own rows. The decoding step uses the row of its position."""

from __future__ import annotations

import torch
from pydantic import Field

from studio.mixers.registry import register
from studio.mixers.softmax import Softmax, SoftmaxParams

ROWS_PER_BLOCK = 256


class RndEmbQKParams(SoftmaxParams):
    seed: int = Field(default=0, ge=0, description="seed of the fixed random per-position embeddings")


@register
class RndEmbQK(Softmax):
    name = "rnd_emb_qk"
    paper = "Deconstructing Attention (arXiv 2510.11602): Q, K from fixed random embeddings"
    time_complexity = "O(T^2 d)"
    state_kind = "kv_cache"
    family = "ablation"
    qk_source = "random"
    Params = RndEmbQKParams

    def init_mixer(self):
        self._rows: dict[tuple, torch.Tensor] = {}  # (device, dtype) -> the first rows, a cache

    def _block(self, index: int) -> torch.Tensor:
        seed = ((self.p.seed * 1_000_003 + self.shape.layer_idx) * 1_000_003 + index) % (1 << 63)
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(ROWS_PER_BLOCK, self.shape.d_model, generator=generator, dtype=torch.float64)

    def random_rows(self, positions: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """r_t [len(positions), d_model] for absolute positions t."""
        need = int(positions.max()) + 1 if positions.numel() else 0
        rows = self._rows.get((device, dtype))
        if rows is None or rows.shape[0] < need:
            blocks = max(1, -(-need // ROWS_PER_BLOCK))
            rows = torch.cat([self._block(i) for i in range(blocks)]).to(device=device, dtype=dtype)
            self._rows[(device, dtype)] = rows
        return rows[positions.to(rows.device)]

    def qk_input_of(self, x, positions):
        return self.random_rows(positions, x.dtype, x.device)[None]
