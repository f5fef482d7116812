"""Rollouts: G sampled completions per prompt, scored by the task's verifier, as padded token tensors.

    rollouts = sample_rollouts(model, tokenizer, prompts, verify, group_size=8, max_new_tokens=48,
                               generator=torch.Generator().manual_seed(0))
    logp = token_logprobs(model, rollouts.tokens)          # [B, T]: log pi(token t | tokens < t)

Every row is BOS + prompt + completion (+ EOS when the model stopped), right-padded with EOS. Position t
of a per-token tensor belongs to token t (the token the model produced at t), so `response_mask` marks the
completion tokens, the stop token included (stopping is an action too). Sampling decodes with each
mixer's recurrent `step` (`HybridLM.generate`): prompts of equal length share one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["Rollouts", "sample_rollouts", "token_logprobs"]


@dataclass
class Rollouts:
    """A batch of sampled completions. B = prompts x group_size rows, grouped by prompt (rows of group g
    are g * G ... g * G + G - 1)."""

    tokens: torch.Tensor          # [B, T] long, right-padded
    lengths: list[int]            # real length of each row
    prompt_lengths: list[int]     # BOS + prompt tokens: the first response position of each row
    prompts: list[str]            # per row
    completions: list[str]        # decoded completion per row (without the stop token)
    rewards: torch.Tensor         # [B] float, from the verifier
    truncated: torch.Tensor       # [B] bool: hit max_new_tokens without a stop token
    group_size: int
    info: dict = field(default_factory=dict)

    @property
    def groups(self) -> int:
        return len(self.lengths) // self.group_size

    def response_mask(self) -> torch.Tensor:
        """[B, T] bool: True at completion tokens (prompt_length <= t < length)."""
        t = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        starts = torch.tensor(self.prompt_lengths, device=self.tokens.device)[:, None]
        ends = torch.tensor(self.lengths, device=self.tokens.device)[:, None]
        return (t >= starts) & (t < ends)

    def completion_lengths(self) -> torch.Tensor:
        return torch.tensor([n - p for n, p in zip(self.lengths, self.prompt_lengths)], dtype=torch.float32)


@torch.no_grad()
def sample_rollouts(
    model,
    tokenizer,
    prompts: list[str],
    verify: Callable[[str, str], float],
    group_size: int = 8,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Rollouts:
    """`group_size` completions of each prompt, sampled at `temperature` until the tokenizer's EOS or
    `max_new_tokens`, each rewarded by `verify(prompt, completion)`."""
    if group_size < 1 or max_new_tokens < 1:
        raise ValueError(f"group_size and max_new_tokens must be >= 1, got {group_size} and {max_new_tokens}")
    if not prompts:
        raise ValueError("sample_rollouts needs at least one prompt")
    device = model.device if hasattr(model, "device") else next(model.parameters()).device
    encoded = [[tokenizer.bos] + tokenizer.encode(p) for p in prompts]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    rows: dict[int, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    try:
        for indices in by_length.values():  # one generate() per prompt length, every sample of those prompts
            batch = torch.tensor([encoded[i] for i in indices for _ in range(group_size)], device=device)
            out = model.generate(batch, max_new_tokens, temperature=temperature, generator=generator,
                                 stop_token=tokenizer.eos)
            for j, i in enumerate(indices):
                rows[i] = out[j * group_size:(j + 1) * group_size].cpu()
    finally:
        model.train(was_training)
    lengths, prompt_lengths, row_prompts, completions, rewards, truncated, ids_list = [], [], [], [], [], [], []
    for i, prompt in enumerate(prompts):
        start = len(encoded[i])
        for row in rows[i]:
            new = row[start:].tolist()
            stop = new.index(tokenizer.eos) if tokenizer.eos in new else None
            kept = new if stop is None else new[: stop + 1]
            text = tokenizer.decode(kept if stop is None else kept[:-1])
            ids_list.append(encoded[i] + kept)
            lengths.append(start + len(kept))
            prompt_lengths.append(start)
            row_prompts.append(prompt)
            completions.append(text)
            rewards.append(float(verify(prompt, text)))
            truncated.append(stop is None)
    width = max(lengths)
    tokens = torch.full((len(ids_list), width), tokenizer.eos, dtype=torch.long)
    for r, ids in enumerate(ids_list):
        tokens[r, : len(ids)] = torch.tensor(ids)
    return Rollouts(tokens.to(device), lengths, prompt_lengths, row_prompts, completions,
                    torch.tensor(rewards), torch.tensor(truncated), group_size)


def token_logprobs(model, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log pi(tokens[:, t] | tokens[:, :t]) at every position t >= 1 ([B, T]; position 0 is 0). With
    gradients unless called under torch.no_grad(). `temperature` divides the logits as sampling did."""
    logits = model(tokens)[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None])[..., 0]
    return torch.cat([logp.new_zeros(tokens.shape[0], 1), logp], 1)
