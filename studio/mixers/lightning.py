"""Lightning attention (Lightning Attention-2, arXiv 2401.04658; MiniMax-01, arXiv 2501.08313):
linear attention with a fixed decay lambda_h per head, computed block-wise (intra-block quadratic,
inter-block state), so its speed does not depend on the sequence length.

M[t, s] = lambda_h^(t-s) phi(q_t) . phi(k_s). Default schedule (MiniMax / FLA):
log lambda_h = -(8 / H) (1 - l / L) h for head h of H in layer l of L. State: d_k x d_v per head.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, field_validator

from kernels.dispatch import use_triton, use_triton_step
from kernels.reference import chunked_decay_linear_attention
from studio.mixers.base import Mixer, MixerParams
from studio.mixers.feature_maps import FEATURE_MAPS, FeatureMapName
from studio.mixers.registry import register


class LightningParams(MixerParams):
    decay: str | list[float] = Field(
        default="minimax", description="'minimax' (the schedule above) or one lambda in (0, 1] per head")
    feature_map: FeatureMapName = Field(default="silu", description="phi applied to q and k (MiniMax: silu)")
    block_size: int = Field(default=64, gt=0, description="block length of the chunked form")
    output_norm: bool = True  # unnormalised sums grow with length: MiniMax normalises z per head

    @field_validator("decay")
    @classmethod
    def _decay(cls, value):
        if isinstance(value, str) and value != "minimax":
            raise ValueError("decay must be 'minimax' or a list of per-head lambdas in (0, 1]")
        if isinstance(value, list) and not all(0 < x <= 1 for x in value):
            raise ValueError(f"every per-head lambda must lie in (0, 1], got {value}")
        return value

    def check_shape(self, n_heads: int, d_head: int) -> str | None:
        if isinstance(self.decay, list) and len(self.decay) != n_heads:
            return f"decay lists {len(self.decay)} lambdas but the layer has n_heads={n_heads}; give one per head"
        return None


def minimax_log_decay(n_heads: int, layer_idx: int, n_layers: int) -> torch.Tensor:
    """log lambda_h = -(8 / H) (1 - l / L) h, h = 0..H-1 (head 0 does not decay)."""
    return -(8.0 / n_heads) * (1.0 - layer_idx / n_layers) * torch.arange(n_heads, dtype=torch.float64)


@register
class Lightning(Mixer):
    name = "lightning"
    paper = "Lightning Attention-2 (arXiv 2401.04658); MiniMax-01 (arXiv 2501.08313)"
    time_complexity = "O(T d^2)"
    state_kind = "matrix"
    family = "linear"
    Params = LightningParams

    def init_mixer(self):
        h = self.shape.n_heads
        if self.p.decay == "minimax":
            log_decay = minimax_log_decay(h, self.shape.layer_idx, self.shape.n_layers)
        else:
            log_decay = torch.tensor([math.log(x) for x in self.p.decay], dtype=torch.float64)
        self.register_buffer("log_decay", log_decay, persistent=False)

    def featurize(self, q, k):
        phi = FEATURE_MAPS[self.p.feature_map]
        return phi(q), phi(k)

    def parallel(self, q, k, v):
        if use_triton(q):
            from kernels.lightning_attention import lightning_attention
            o, state = lightning_attention(*(x.transpose(1, 2) for x in (q, k, v)), self.log_decay.float(),
                                           output_final_state=True, chunk_size=self.p.block_size)
            return o.transpose(1, 2), state.to(q.dtype)
        return chunked_decay_linear_attention(q, k, v, self.log_decay, self.p.block_size)

    def recurrent_step(self, q, k, v, state):
        if use_triton_step(q):
            from kernels.decode_step import decay_linear_step
            o, state = decay_linear_step(q, k, v, state, self.log_decay)
            return o, state.to(q.dtype)
        update = k[..., :, None] * v[..., None, :]
        if state is not None:
            update = update + self.log_decay.to(q.dtype).exp()[:, None, None] * state
        return (q[..., None, :] @ update)[..., 0, :], update

    def effective_pattern(self, q, k):
        t = q.shape[2]
        pos = torch.arange(t, device=q.device, dtype=q.dtype)
        gap = pos[:, None] - pos[None, :]
        decay = torch.exp(self.log_decay.to(q.dtype)[:, None, None] * gap.clamp(min=0)) * (gap >= 0)
        return (q @ k.transpose(-1, -2)) * decay
