"""Multi-query associative recall (Zoology, Arora et al., arXiv 2312.04927).

Each example opens with N distinct key-value pairs (keys from the lower half of the vocabulary,
values from the upper half); then every key is queried again, at gaps drawn from a power law, and
the model must produce its value. Only those answer positions are scored; the rest is random filler.
"""

from __future__ import annotations

import torch

from studio.tasks.base import IGNORE, Batch, Task, check


class MQAR(Task):
    name = "mqar"

    def __init__(self, vocab_size: int = 128, seq_len: int = 64, num_pairs: int = 8, power_a: float = 0.01):
        check(vocab_size > seq_len, f"mqar needs vocab_size > seq_len (got {vocab_size} <= {seq_len}); raise vocab_size")
        check(num_pairs >= 1, f"num_pairs must be >= 1, got {num_pairs}")
        check(4 * num_pairs <= seq_len, f"mqar needs 4 * num_pairs <= seq_len (got 4 * {num_pairs} > {seq_len}); "
              "lower num_pairs or raise seq_len")
        check(num_pairs <= vocab_size // 2 - 1, f"num_pairs={num_pairs} exceeds the {vocab_size // 2 - 1} distinct keys")
        check(0 < power_a <= 1, f"power_a must lie in (0, 1], got {power_a}")
        self.vocab_size, self.seq_len, self.num_pairs, self.power_a = vocab_size, seq_len, num_pairs, power_a
        self._config = dict(vocab_size=vocab_size, seq_len=seq_len, num_pairs=num_pairs, power_a=power_a)

    def sample(self, batch: int, generator: torch.Generator) -> Batch:
        v, n, t = self.vocab_size, self.num_pairs, self.seq_len + 1  # one extra token: inputs/targets shift
        half = v // 2
        keys = torch.rand(batch, half - 1, generator=generator).argsort(-1)[:, :n] + 1  # distinct, never 0
        values = torch.randint(half, v, (batch, n), generator=generator)
        seq = torch.randint(1, v, (batch, t), generator=generator)  # filler
        seq[:, 0 : 2 * n : 2], seq[:, 1 : 2 * n : 2] = keys, values
        # query slots: pairs of positions after the context, gap ~ power law (Zoology)
        slots = (t - 2 * n) // 2
        gaps = torch.arange(1, slots + 1, dtype=torch.float64)
        weights = (self.power_a * gaps ** (self.power_a - 1)).expand(batch, slots)
        chosen = torch.multinomial(weights, n, replacement=False, generator=generator)  # [batch, n]
        order = torch.rand(batch, n, generator=generator).argsort(-1)
        key_pos = 2 * n + 2 * chosen
        rows = torch.arange(batch)[:, None]
        seq[rows, key_pos] = keys.gather(1, order)
        seq[rows, key_pos + 1] = values.gather(1, order)
        targets = torch.full((batch, t - 1), IGNORE, dtype=torch.long)
        targets[rows, key_pos] = seq[rows, key_pos + 1]  # after reading the key, predict its value
        return Batch(seq[:, :-1], targets, {"gap": key_pos - 2 * n})
