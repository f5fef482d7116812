"""Linear attention (Katharopoulos et al., "Transformers are RNNs", arXiv 2006.16236).

M[t, s] = phi(q_t) . phi(k_s), divided by sum_{s'<=t} phi(q_t) . phi(k_s') (+ eps) when `normalize`.
State: S = sum_s phi(k_s) [v_s, 1]^T, d_k x (d_v + 1); the extra column carries the normaliser, so
the normalised and plain forms share one block-wise computation.
"""

from __future__ import annotations

import torch
from pydantic import Field

from kernels.dispatch import use_triton
from kernels.reference import chunked_decay_linear_attention
from studio.mixers.base import Mixer, MixerParams
from studio.mixers.feature_maps import FEATURE_MAPS, FeatureMapName
from studio.mixers.registry import register


class LinearParams(MixerParams):
    feature_map: FeatureMapName = Field(default="elu+1", description="phi applied to q and k")
    normalize: bool = Field(default=True, description="divide each row by its sum (Katharopoulos)")
    eps: float = Field(default=1e-6, ge=0, description="added to the normaliser")
    block_size: int = Field(default=64, gt=0, description="block length of the chunked form")


@register
class Linear(Mixer):
    name = "linear"
    paper = "Transformers are RNNs (arXiv 2006.16236)"
    time_complexity = "O(T d^2)"
    state_kind = "matrix"
    family = "linear"
    Params = LinearParams

    def state_elements(self, context: int) -> int:
        return self.shape.n_heads * self.shape.d_head * (self.shape.d_head + int(self.p.normalize))

    def featurize(self, q, k):
        phi = FEATURE_MAPS[self.p.feature_map]
        return phi(q), phi(k)

    def _with_ones(self, v: torch.Tensor) -> torch.Tensor:
        return torch.cat([v, torch.ones_like(v[..., :1])], dim=-1) if self.p.normalize else v

    def _read(self, out: torch.Tensor) -> torch.Tensor:
        return out[..., :-1] / (out[..., -1:] + self.p.eps) if self.p.normalize else out

    def parallel(self, q, k, v):
        if use_triton(q):
            from kernels.lightning_attention import lightning_attention
            out, state = lightning_attention(*(x.transpose(1, 2) for x in (q, k, self._with_ones(v))),
                                             output_final_state=True, chunk_size=self.p.block_size)
            out, state = out.transpose(1, 2), state.to(q.dtype)
        else:
            out, state = chunked_decay_linear_attention(q, k, self._with_ones(v), None, self.p.block_size)
        return self._read(out), state

    def recurrent_step(self, q, k, v, state):
        update = k[..., :, None] * self._with_ones(v)[..., None, :]
        state = update if state is None else state + update
        return self._read((q[..., None, :] @ state)[..., 0, :]), state

    def effective_pattern(self, q, k):
        m = (q @ k.transpose(-1, -2)).tril()
        return m / (m.sum(-1, keepdim=True) + self.p.eps) if self.p.normalize else m
