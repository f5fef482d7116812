"""What every task provides: seeded batches with next-token targets, and a scorer.

A `Batch` holds `inputs` [batch, T] and `targets` [batch, T]: targets[b, t] is the token the model
must predict after reading inputs[b, :t+1], or IGNORE where nothing is scored. The loss and the
accuracy are taken over the scored positions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

IGNORE = -100


@dataclass
class Batch:
    inputs: torch.Tensor
    targets: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)  # task-specific labels (e.g. needle depth)

    def to(self, device) -> "Batch":
        return Batch(self.inputs.to(device), self.targets.to(device), self.info)

    def shard(self, index: int, count: int) -> "Batch":
        """The index-th of `count` equal slices of the batch (for data-parallel training)."""
        size = self.inputs.shape[0]
        if size % count:
            raise ValueError(f"batch size {size} does not split evenly over {count} processes")
        part = slice(index * size // count, (index + 1) * size // count)
        info = {k: v[part] if isinstance(v, torch.Tensor) and v.shape[:1] == (size,) else v for k, v in self.info.items()}
        return Batch(self.inputs[part], self.targets[part], info)

    @property
    def scored(self) -> int:
        return int((self.targets != IGNORE).sum())


class Task:
    """A seeded task generator. Subclasses set `name`, `vocab_size`, `seq_len` and `sample`."""

    name: ClassVar[str]
    vocab_size: int
    seq_len: int

    def sample(self, batch: int, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this task (`studio.tasks.get(name, **config)`)."""
        return dict(self._config)

    def loss_sum(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Summed cross-entropy over the scored positions."""
        return F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(),
                               ignore_index=IGNORE, reduction="sum")

    def score(self, logits: torch.Tensor, batch: Batch) -> dict[str, float]:
        """Metrics of predictions (argmax) against targets, over scored positions."""
        mask = batch.targets != IGNORE
        correct = (logits.argmax(-1) == batch.targets) & mask
        total = int(mask.sum())
        return {
            "accuracy": float(correct.sum()) / max(total, 1),
            # an example counts only if every scored position in it is right
            "exact_match": float(((correct | ~mask).all(-1)).float().mean()),
            "scored_tokens": total,
        }


def check(condition: bool, message: str) -> None:
    """Task argument validation: a clear ValueError naming the argument and the fix."""
    if not condition:
        raise ValueError(message)
