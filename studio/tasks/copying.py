"""Copying tasks (Jelassi et al., "Repeat After Me", arXiv 2402.01032; selective copying from
Mamba, Gu & Dao, arXiv 2312.00752).

copy: `x_1 .. x_n [SEP] x_1 .. x_n`; the second half is scored.
selective_copy: n data tokens scattered among noise tokens in a span, then `[SEP]` and the data
tokens in order; the answer is scored.
"""

from __future__ import annotations

import torch

from studio.tasks.base import IGNORE, Batch, Task, check


class Copy(Task):
    name = "copy"

    def __init__(self, vocab_size: int = 32, length: int = 16):
        check(vocab_size >= 3, f"copy needs vocab_size >= 3, got {vocab_size}")
        check(length >= 1, f"length must be >= 1, got {length}")
        self.vocab_size, self.length, self.sep = vocab_size, length, 0
        self.seq_len = 2 * length
        self._config = dict(vocab_size=vocab_size, length=length)

    def sample(self, batch: int, generator: torch.Generator) -> Batch:
        data = torch.randint(1, self.vocab_size, (batch, self.length), generator=generator)
        seq = torch.cat([data, torch.full((batch, 1), self.sep), data], dim=1)
        targets = torch.full((batch, self.seq_len), IGNORE, dtype=torch.long)
        targets[:, self.length :] = data
        return Batch(seq[:, :-1], targets)


class SelectiveCopy(Task):
    name = "selective_copy"

    def __init__(self, vocab_size: int = 32, num_tokens: int = 8, span: int = 32):
        check(vocab_size >= 4, f"selective_copy needs vocab_size >= 4, got {vocab_size}")
        check(1 <= num_tokens <= span, f"need 1 <= num_tokens <= span, got num_tokens={num_tokens}, span={span}")
        self.vocab_size, self.num_tokens, self.span = vocab_size, num_tokens, span
        self.noise, self.sep = 0, 1
        self.seq_len = span + num_tokens
        self._config = dict(vocab_size=vocab_size, num_tokens=num_tokens, span=span)

    def sample(self, batch: int, generator: torch.Generator) -> Batch:
        n = self.num_tokens
        data = torch.randint(2, self.vocab_size, (batch, n), generator=generator)
        positions = torch.rand(batch, self.span, generator=generator).argsort(-1)[:, :n].sort(-1).values
        region = torch.full((batch, self.span), self.noise)
        region.scatter_(1, positions, data)
        seq = torch.cat([region, torch.full((batch, 1), self.sep), data], dim=1)
        targets = torch.full((batch, self.seq_len), IGNORE, dtype=torch.long)
        targets[:, self.span :] = data
        return Batch(seq[:, :-1], targets)
