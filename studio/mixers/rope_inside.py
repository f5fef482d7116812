"""RoPE applied inside a mixer's own math instead of by the base, for the hybrids that rotate only one
part (Liger, Lizard: the softmax window; their linear part reads unrotated q, k) or rotate what a
recurrence built (RAT: the chunk summaries of the keys).

`move_rope_inside(mixer)` keeps the base's `Rotary` as `mixer.inner_rotary` and sets `mixer.rotary` to
None, so the base hands q and k to the math unrotated: hook_rot_q / hook_rot_k do not fire, and analyses
that rebuild q, k from the cache read hook_q / hook_k, which is what such a mixer's effective_pattern
expects. The decoding state of such a mixer carries the position of the next token itself.
"""

from __future__ import annotations

import torch


def move_rope_inside(mixer) -> None:
    mixer.inner_rotary, mixer.rotary = mixer.rotary, None


def rotate(mixer, x: torch.Tensor, start: int = 0) -> torch.Tensor:
    """x [batch, head, time, d_head] at absolute positions start, start + 1, ... (one token: [batch,
    head, d_head] at position `start`); unchanged for NoPE layers."""
    if mixer.inner_rotary is None:
        return x
    one_token = x.ndim == 3
    x = x[:, :, None] if one_token else x
    positions = torch.arange(start, start + x.shape[2], device=x.device)
    x = mixer.inner_rotary(x.transpose(1, 2), positions).transpose(1, 2)
    return x[:, :, 0] if one_token else x
