"""Token mixers, one file each, registered by name in `REGISTRY`.

Every mixer subclasses `studio.mixers.base.Mixer` (shared projections, heads, RoPE, hooks, state)
and adds only its own math: its gates, its parallel form, its step, and its effective pattern.
"""

from studio.mixers.base import Mixer, MixerParams, MixerShape
from studio.mixers.registry import REGISTRY, register

# Importing a mixer module registers it: every module of this package is imported, so a new mixer is
# one new file (helper modules register nothing).
import importlib  # noqa: E402
import pkgutil  # noqa: E402

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Mixer", "MixerParams", "MixerShape", "register"]
