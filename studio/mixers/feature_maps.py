"""Feature maps phi for linear-attention mixers (Katharopoulos et al., arXiv 2006.16236).

M[t, s] = phi(q_t) . phi(k_s): a positive map keeps the normaliser positive.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

FeatureMapName = Literal["identity", "elu+1", "relu", "silu", "softmax"]

FEATURE_MAPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "elu+1": lambda x: F.elu(x) + 1.0,
    "relu": F.relu,
    "silu": F.silu,
    # softmax over the head dimension, as in Liger (arXiv 2503.01496)
    "softmax": lambda x: torch.softmax(x, dim=-1),
}
