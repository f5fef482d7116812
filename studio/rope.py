"""Rotary position embedding (RoPE; Su et al., arXiv 2104.09864).

Half-split convention (GPT-NeoX, Hugging Face Llama): dimension i pairs with i + r/2 and turns at
frequency base^(-2i/r), r the rotated width. `fraction` < 1 rotates only the first part of each head
(MiniMax-Text-01 rotates half). Angles are computed in float64 so that float64 tests stay exact.
"""

from __future__ import annotations

import torch
from torch import nn


class Rotary(nn.Module):
    def __init__(self, d_head: int, base: float = 10000.0, fraction: float = 1.0):
        super().__init__()
        self.rotary_dim = max(2, int(d_head * fraction) // 2 * 2)
        self.base = float(base)

    def angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.rotary_dim
        inv_freq = self.base ** (-torch.arange(0, r, 2, dtype=torch.float64, device=positions.device) / r)
        theta = positions.to(torch.float64)[:, None] * inv_freq[None, :]
        return theta.cos(), theta.sin()

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: [batch, pos, head, d_head]; positions: [pos] (absolute token positions)."""
        cos, sin = self.angles(positions)
        cos = cos.to(x.dtype)[None, :, None, :]
        sin = sin.to(x.dtype)[None, :, None, :]
        half = self.rotary_dim // 2
        x1, x2, rest = x[..., :half], x[..., half : self.rotary_dim], x[..., self.rotary_dim :]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)

    def extra_repr(self) -> str:
        return f"rotary_dim={self.rotary_dim}, base={self.base:g}"
