"""Verifiable reasoning with a written-out chain of thought, in plain text (byte-level tokens).

- addition: multi-digit addition worked column by column with carries, then `#### <sum>`.
- countdown: reach a target from given numbers with + - * / (Countdown, as used for RL in TinyZero
  and arXiv 2510.13554), worked step by step, then `#### <expression>`.

`verify(prompt, completion)` parses the final answer and returns a reward in [0, 1]: 1 for a
correct answer, 0.1 for a well-formed but wrong one, 0 otherwise. `demonstrations(n, seed)` gives
worked (prompt, completion) pairs for supervised warm-up; the task samples them as token batches
with only the completion scored.
"""

from __future__ import annotations

import ast
import random
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

import torch

from studio.tasks.base import IGNORE, Batch, Task, check
from studio.tasks.tokenizers import get_tokenizer

ANSWER = re.compile(r"####\s*([^\n]*)")
FORMAT_REWARD = 0.1


@dataclass(frozen=True)
class Problem:
    prompt: str
    completion: str  # a worked solution ending in "#### answer"
    answer: str


def addition_problem(rng: random.Random, digits: int) -> Problem:
    a, b = rng.randrange(10 ** (digits - 1), 10**digits), rng.randrange(10 ** (digits - 1), 10**digits)
    steps, carry = [], 0
    xa, xb = str(a)[::-1], str(b)[::-1]
    for i in range(digits):
        da, db = int(xa[i]), int(xb[i])
        total = da + db + carry
        steps.append(f"{da}+{db}" + (f"+{carry}" if carry else "") + f"={total}")
        carry = total // 10
    answer = str(a + b)
    return Problem(f"add {a}+{b}\n", " ".join(steps) + f"\n#### {answer}\n", answer)


def countdown_problem(rng: random.Random, count: int, largest: int) -> Problem:
    numbers = [rng.randint(1, largest) for _ in range(count)]
    expr, value, steps = str(numbers[0]), numbers[0], []
    for n in numbers[1:]:
        ops = ["+", "*"] + (["-"] if value > n else []) + (["/"] if n > 1 and value % n == 0 else [])
        op = rng.choice(ops)
        new = {"+": value + n, "-": value - n, "*": value * n, "/": value // n}[op]
        steps.append(f"{value}{op}{n}={new}")
        expr, value = f"({expr}{op}{n})", new
    expr = expr[1:-1] if expr.startswith("(") else expr
    shuffled = numbers[:]
    rng.shuffle(shuffled)
    prompt = f"reach {value} with {' '.join(map(str, shuffled))}\n"
    return Problem(prompt, ", ".join(steps) + f"\n#### {expr}\n", expr)


def final_answer(completion: str) -> str | None:
    match = ANSWER.search(completion)
    return match.group(1).strip() if match else None


def _evaluate(node) -> tuple[Fraction, list[int]]:
    """Value and literals of an arithmetic expression tree (+ - * / and integers only)."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return Fraction(node.value), [node.value]
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        (a, la), (b, lb) = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Div):
            if b == 0:
                raise ZeroDivisionError
            return a / b, la + lb
        return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}[type(node.op)], la + lb
    raise ValueError("not an arithmetic expression")


def verify(prompt: str, completion: str) -> float:
    """Reward in [0, 1] for `completion` answering `prompt` (an addition or a countdown prompt)."""
    answer = final_answer(completion)
    if answer is None or not answer:
        return 0.0
    add = re.match(r"add (\d+)\+(\d+)", prompt)
    if add:
        if not re.fullmatch(r"\d+", answer):
            return 0.0
        return 1.0 if int(answer) == int(add.group(1)) + int(add.group(2)) else FORMAT_REWARD
    count = re.match(r"reach (\d+) with ([\d ]+)", prompt)
    if not count:
        raise ValueError(f"not an arithmetic prompt: {prompt[:40]!r}")
    if not re.fullmatch(r"[\d+\-*/() ]{1,200}", answer):
        return 0.0
    try:
        value, literals = _evaluate(ast.parse(answer, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return 0.0
    allowed = Counter(int(x) for x in count.group(2).split())
    if Counter(literals) - allowed:  # a number used that was not given (or used too often)
        return FORMAT_REWARD
    return 1.0 if value == int(count.group(1)) else FORMAT_REWARD


class Arithmetic(Task):
    name = "arithmetic"

    def __init__(self, kind: str = "addition", digits: int = 3, count: int = 3, largest: int = 10, seq_len: int = 96,
                 tokenizer: str = "bytes"):
        check(kind in ("addition", "countdown", "mixed"), f"kind must be addition, countdown or mixed, got {kind!r}")
        check(1 <= digits <= 12, f"digits must lie in 1..12, got {digits}")
        check(2 <= count <= 6, f"count must lie in 2..6, got {count}")
        check(largest >= 2, f"largest must be >= 2, got {largest}")
        self.kind, self.digits, self.count, self.largest = kind, digits, count, largest
        self.tokenizer = get_tokenizer(tokenizer)  # bytes, or SmolLM2's (RL on the converted SmolLM2-135M)
        self.vocab_size, self.seq_len = self.tokenizer.vocab_size, seq_len
        self._config = dict(kind=kind, digits=digits, count=count, largest=largest, seq_len=seq_len)
        if tokenizer != "bytes":
            self._config["tokenizer"] = tokenizer
        rng = random.Random(0)
        need = max(len(self.tokenizer.encode(p.prompt + p.completion)) + 2 for p in (self._problem(rng) for _ in range(200)))
        check(seq_len >= need, f"seq_len={seq_len} cuts worked solutions short; use seq_len >= {need}")

    def _problem(self, rng: random.Random) -> Problem:
        kind = self.kind if self.kind != "mixed" else rng.choice(["addition", "countdown"])
        if kind == "addition":
            return addition_problem(rng, self.digits)
        return countdown_problem(rng, self.count, self.largest)

    def problems(self, n: int, generator: torch.Generator) -> list[Problem]:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = random.Random(seed)
        return [self._problem(rng) for _ in range(n)]

    def sample(self, batch: int, generator: torch.Generator) -> Batch:
        tok, t = self.tokenizer, self.seq_len + 1
        inputs = torch.full((batch, t), tok.eos, dtype=torch.long)
        scored = torch.zeros((batch, t), dtype=torch.bool)
        for i, p in enumerate(self.problems(batch, generator)):
            prompt, completion = [tok.bos] + tok.encode(p.prompt), tok.encode(p.completion) + [tok.eos]
            ids = (prompt + completion)[:t]
            inputs[i, : len(ids)] = torch.tensor(ids)
            scored[i, len(prompt) : len(ids)] = True
        targets = torch.where(scored[:, 1:], inputs[:, 1:], IGNORE)
        return Batch(inputs[:, :-1], targets)


def demonstrations(n: int, seed: int = 0, **task_kwargs) -> list[tuple[str, str]]:
    """n worked (prompt, completion) pairs."""
    task = Arithmetic(**task_kwargs)
    return [(p.prompt, p.completion) for p in task.problems(n, torch.Generator().manual_seed(seed))]
