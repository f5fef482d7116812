"""Token mixers, one file each, registered by name in `REGISTRY`.

Every mixer subclasses `studio.mixers.base.Mixer` (shared projections, heads, RoPE, hooks, state)
and adds only its own math: its gates, its parallel form, its step, and its effective pattern.
"""

from studio.mixers.base import Mixer, MixerParams, MixerShape
from studio.mixers.registry import REGISTRY, register

# Importing a mixer module registers it.
from studio.mixers import lightning, linear, sliding_window, softmax  # noqa: E402,F401  isort: skip

__all__ = ["REGISTRY", "Mixer", "MixerParams", "MixerShape", "register"]
