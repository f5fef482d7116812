"""Mixers by name: `REGISTRY[name]` is the class; `@register` adds one."""

from __future__ import annotations

REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"a mixer named {cls.name!r} is already registered ({REGISTRY[cls.name].__qualname__})")
    REGISTRY[cls.name] = cls
    return cls
