"""Seeded task generators with scorers: `studio.tasks.get(name, **kwargs)`.

    task = studio.tasks.get("mqar", seq_len=64, num_pairs=8)
    batch = task.sample(32, torch.Generator().manual_seed(0))   # Batch(inputs, targets)
    metrics = task.score(model(batch.inputs), batch)            # {"accuracy": ..., ...}
"""

from __future__ import annotations

from studio.tasks import arithmetic
from studio.tasks.arithmetic import Arithmetic
from studio.tasks.base import IGNORE, Batch, Task
from studio.tasks.copying import Copy, SelectiveCopy
from studio.tasks.mqar import MQAR
from studio.tasks.needle import Needle
from studio.tasks.text import Text

REGISTRY: dict[str, type[Task]] = {cls.name: cls for cls in (MQAR, Needle, Copy, SelectiveCopy, Arithmetic, Text)}


def get(name: str, **kwargs) -> Task:
    """A task by name with its keyword arguments; unknown names or arguments get a clear error."""
    if name not in REGISTRY:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    try:
        return cls(**kwargs)
    except TypeError as err:
        import inspect

        allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ValueError(f"bad arguments for task {name!r} ({err}); allowed: {', '.join(allowed)}") from None


__all__ = ["REGISTRY", "get", "Task", "Batch", "IGNORE", "arithmetic"]
