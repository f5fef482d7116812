"""The per-head, per-token scalar decay of Mamba-2 (arXiv 2405.21060), also used by Gated DeltaNet
(arXiv 2412.06464): dt_t = softplus(x_t W_dt + dt_bias), a_t = exp(-dt_t exp(A_log)). A helper module:
it registers no mixer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def check_range(value: tuple[float, float]) -> tuple[float, float]:
    """A (low, high) initialisation range with 0 < low <= high (a pydantic validator's body)."""
    low, high = value
    if not 0 < low <= high:
        raise ValueError(f"a range must satisfy 0 < low <= high, got {value}")
    return value


def decay_parameters(n_heads: int, a_range: tuple[float, float],
                     dt_range: tuple[float, float]) -> tuple[nn.Parameter, nn.Parameter]:
    """(A_log, dt_bias): A = exp(A_log) uniform in a_range, dt = softplus(dt_bias) log-uniform in dt_range."""
    a_log = nn.Parameter(torch.empty(n_heads).uniform_(*a_range).log())
    low, high = (math.log(x) for x in dt_range)
    dt = torch.exp(torch.rand(n_heads) * (high - low) + low)
    return a_log, nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt


def dt_and_log_decay(projected: torch.Tensor, a_log: torch.Tensor,
                     dt_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From x W_dt [batch, time, head]: dt and log a_t = -dt exp(A_log), both [batch, head, time]."""
    dt = F.softplus(projected + dt_bias).transpose(1, 2)
    return dt, -dt * a_log.exp()[:, None]
