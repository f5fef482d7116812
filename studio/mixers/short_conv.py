"""Causal depthwise short convolution on the q/k/v projections (H3, arXiv 2212.14052; used by
Mamba, GLA, DeltaNet and Gated DeltaNet). One module for every mixer that switches it on."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortConv(nn.Module):
    """y_t = silu(sum_{j<K} w_j * x_{t-j}) per channel; the step keeps the last K-1 inputs."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, kernel_size))
        nn.init.normal_(self.weight, std=kernel_size**-0.5)

    def forward(self, x: torch.Tensor, history: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [batch, time, channels]; history: the previous K-1 inputs [batch, K-1, channels] or None
        (zeros). Returns (y, new history)."""
        b, t, c = x.shape
        if history is None:
            history = x.new_zeros(b, self.kernel_size - 1, c)
        full = torch.cat([history, x], dim=1)  # [b, K-1+t, c]
        y = F.conv1d(full.transpose(1, 2), self.weight[:, None, :], groups=c)  # [b, c, t]
        return F.silu(y.transpose(1, 2)), full[:, full.shape[1] - (self.kernel_size - 1) :]
