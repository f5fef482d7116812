"""Sliding-window softmax attention (Longformer, arXiv 2004.05150; Mistral 7B, arXiv 2310.06825):
softmax attention over the last `window` keys only, t - w < s <= t. State: the last w keys and values."""

from __future__ import annotations

from pydantic import Field

from studio.mixers.registry import register
from studio.mixers.softmax import Softmax, SoftmaxParams


class SlidingWindowParams(SoftmaxParams):
    window: int = Field(default=64, gt=0, description="keys each query sees, itself included")


@register
class SlidingWindow(Softmax):
    name = "sliding_window"
    paper = "Longformer (arXiv 2004.05150); Mistral 7B (arXiv 2310.06825)"
    time_complexity = "O(T w d)"
    state_kind = "window"
    family = "softmax"
    Params = SlidingWindowParams

    @property
    def window(self) -> int:
        return self.p.window
