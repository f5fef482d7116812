"""Needle in a haystack (key-value retrieval; cf. Kamradt's test and RULER, arXiv 2404.06654).

Filler tokens, with one `[NEEDLE] key value` triple placed at a chosen depth (0 = start, 1 = end of
the haystack); the example ends with `[QUERY] key` and the model must produce the value. Accuracy
is reported per depth and length by `studio.tasks.needle.accuracy_by_depth`.
"""

from __future__ import annotations

import torch

from studio.tasks.base import IGNORE, Batch, Task, check


class Needle(Task):
    name = "needle"

    def __init__(self, vocab_size: int = 128, seq_len: int = 128, depth: float | None = None, num_keys: int = 16,
                 num_values: int = 16):
        check(num_keys >= 1 and num_values >= 2, "needle needs num_keys >= 1 and num_values >= 2")
        check(vocab_size >= 2 + num_keys + num_values + 8,
              f"vocab_size={vocab_size} is too small for 2 markers, {num_keys} keys, {num_values} values and filler")
        check(seq_len >= 8, f"needle needs seq_len >= 8, got {seq_len}")
        check(depth is None or 0 <= depth <= 1, f"depth must lie in [0, 1] or be None (random), got {depth}")
        self.vocab_size, self.seq_len, self.depth = vocab_size, seq_len, depth
        self.needle_token, self.query_token = 0, 1
        self.keys = torch.arange(2, 2 + num_keys)
        self.values = torch.arange(2 + num_keys, 2 + num_keys + num_values)
        self.filler_low = 2 + num_keys + num_values
        self._config = dict(vocab_size=vocab_size, seq_len=seq_len, depth=depth, num_keys=num_keys, num_values=num_values)

    def sample(self, batch: int, generator: torch.Generator) -> Batch:
        t = self.seq_len + 1
        seq = torch.randint(self.filler_low, self.vocab_size, (batch, t), generator=generator)
        key = self.keys[torch.randint(len(self.keys), (batch,), generator=generator)]
        value = self.values[torch.randint(len(self.values), (batch,), generator=generator)]
        room = t - 3 - 3  # the needle's start can go from 0 to room (the query takes the last 3 tokens)
        depth = torch.rand(batch, generator=generator) if self.depth is None else torch.full((batch,), float(self.depth))
        start = (depth * room).round().long()
        rows = torch.arange(batch)
        seq[rows, start], seq[rows, start + 1], seq[rows, start + 2] = self.needle_token, key, value
        seq[:, -3], seq[:, -2], seq[:, -1] = self.query_token, key, value
        targets = torch.full((batch, t - 1), IGNORE, dtype=torch.long)
        targets[:, -1] = value
        return Batch(seq[:, :-1], targets, {"depth": depth})


def accuracy_by_depth(model, task: Needle, depths=(0.0, 0.25, 0.5, 0.75, 1.0), examples: int = 64,
                      seed: int = 0) -> dict[float, float]:
    """Retrieval accuracy at each needle depth for this task's length."""
    results = {}
    for depth in depths:
        probe = Needle(**{**task.config(), "depth": depth})
        batch = probe.sample(examples, torch.Generator().manual_seed(seed)).to(model.device)
        with torch.no_grad():
            results[depth] = probe.score(model(batch.inputs), batch)["accuracy"]
    return results
