"""Policy losses for RL fine-tuning of language models, as pure functions on token tensors.

- GRPO (DeepSeekMath, arXiv 2402.03300): group-relative advantages and the PPO clipped surrogate
  min(r A, clip(r, 1-eps, 1+eps) A), r = exp(logp - old_logp), no KL term.
- DAPO (Yu et al., arXiv 2503.14476): clip-higher [1-eps_low, 1+eps_high], token-level normalisation over the
  batch, dynamic sampling (drop groups whose rewards are all equal) and the soft overlong punishment.
- CISPO (MiniMax-M1, arXiv 2506.13585): J = (1/sum_i |o_i|) sum_i sum_t sg(rhat) A log pi_theta,
  rhat = clip(r, 1-eps_low, 1+eps_high): every token keeps its gradient, only its weight is capped.

Shapes: `logp`, `old_logp`, `advantages`, `mask` are [B, T]. `mask` is bool or 0/1 float (prompt and padding
tokens 0). Advantages are already per token (sequence advantage times any per-token credit gamma) and, like
`old_logp`, are treated as constants (detached). Masked positions contribute neither value nor gradient, even
when they hold -inf/NaN. An all-masked batch gives loss 0 (still attached to the graph, zero gradient).
Each loss returns `(loss, stats)`; `stats` is a dict of python floats over the valid tokens.
See REFERENCE.md section 6.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "grpo_loss",
    "dapo_loss",
    "cispo_loss",
    "group_advantages",
    "dynamic_sampling_mask",
    "overlong_penalty",
]

NORMS = ("token", "sequence")
RATIO_CAPS = ("relative", "absolute")


# ----------------------------------------------------------------------------------------------- validation


def _check_token_tensors(
    fn: str, logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Validate the four [B, T] inputs; return the mask as a bool tensor."""
    named = {"logp": logp, "old_logp": old_logp, "advantages": advantages, "mask": mask}
    for name, value in named.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{fn}: `{name}` must be a torch.Tensor, got {type(value).__name__}; wrap it with torch.as_tensor"
            )
    if logp.dim() != 2:
        raise ValueError(
            f"{fn}: `logp` must be 2-D [B, T] (batch, tokens), got shape {tuple(logp.shape)}; "
            "add a batch dimension with .unsqueeze(0) or flatten extra dimensions"
        )
    for name in ("old_logp", "advantages", "mask"):
        if named[name].shape != logp.shape:
            hint = " (broadcast sequence advantages with adv[:, None].expand_as(logp))" if name == "advantages" else ""
            raise ValueError(
                f"{fn}: `{name}` has shape {tuple(named[name].shape)} but `logp` has shape {tuple(logp.shape)}; "
                f"pass per-token tensors of the same [B, T] shape{hint}"
            )
    for name in ("logp", "old_logp", "advantages"):
        if not named[name].is_floating_point():
            raise ValueError(
                f"{fn}: `{name}` must be a floating-point tensor, got dtype {named[name].dtype}; cast it with .float()"
            )
    for name in ("old_logp", "advantages", "mask"):
        if named[name].device != logp.device:
            raise ValueError(
                f"{fn}: `{name}` is on {named[name].device} but `logp` is on {logp.device}; "
                "move it with .to(logp.device)"
            )
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex() or bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError(
            f"{fn}: `mask` must be bool or hold only 0 and 1 (dtype {mask.dtype}); build it as a bool tensor"
        )
    return mask != 0


def _check_eps(fn: str, name: str, value: float, below_one: bool = False) -> float:
    value = float(value)
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"{fn}: `{name}` must be >= 0, got {value}; pass a non-negative clip range such as 0.2")
    if below_one and value >= 1.0:
        raise ValueError(
            f"{fn}: `{name}` must be < 1 so that the lower ratio bound 1 - {name} stays positive, got {value}; "
            + ("use e.g. 0.2, or eps_low=None for no lower bound" if fn == "cispo_loss" else "use e.g. 0.2")
        )
    return value


def _check_norm(fn: str, norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"{fn}: `norm` must be one of {NORMS}, got {norm!r}")


def _check_rewards(fn: str, rewards: torch.Tensor) -> torch.Tensor:
    if not isinstance(rewards, torch.Tensor):
        rewards = torch.as_tensor(rewards)
    if rewards.dim() != 2:
        raise ValueError(
            f"{fn}: `rewards` must be 2-D [N_groups, G] (one row per prompt, G samples each), got shape "
            f"{tuple(rewards.shape)}; reshape with rewards.view(-1, G)"
        )
    return rewards


# ----------------------------------------------------------------------------------------------- helpers


def _masked_inputs(logp, old_logp, advantages, valid):
    """Log-ratio and advantages with masked positions set to 0, so garbage there cannot leak into value or grad."""
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    log_ratio = torch.where(valid, logp - old_logp.detach(), zero)
    adv = torch.where(valid, advantages.detach().to(logp.dtype), zero)
    return log_ratio, adv


def _reduce(per_token: torch.Tensor, valid: torch.Tensor, norm: str) -> torch.Tensor:
    """Average a [B, T] per-token quantity (already 0 at masked positions) over the valid tokens.

    "token": sum over all valid tokens of the batch / their number.
    "sequence": mean over each sequence's valid tokens, then mean over sequences with at least one valid token.
    With no valid token the result is 0 (sum of zeros), still attached to the graph.
    """
    weights = valid.to(per_token.dtype)
    if norm == "token":
        return per_token.sum() / weights.sum().clamp(min=1.0)
    lengths = weights.sum(dim=1)
    per_sequence = per_token.sum(dim=1) / lengths.clamp(min=1.0)
    return per_sequence.sum() / (lengths > 0).sum().clamp(min=1).to(per_token.dtype)


def _frac(flags: torch.Tensor, valid: torch.Tensor, n_tokens: int) -> float:
    return float((flags & valid).sum().item()) / n_tokens if n_tokens else 0.0


def _base_stats(ratio: torch.Tensor, adv: torch.Tensor, valid: torch.Tensor, loss: torch.Tensor) -> dict[str, float]:
    ratio, adv = ratio.detach(), adv.detach()
    n_tokens = int(valid.sum().item())
    if n_tokens:
        ratio_mean = float(ratio[valid].mean().item())
        ratio_max = float(ratio[valid].max().item())
        adv_mean = float(adv[valid].mean().item())
    else:
        ratio_mean = ratio_max = adv_mean = 0.0
    return {
        "loss": float(loss.detach().item()),
        "tokens": float(n_tokens),
        "ratio_mean": ratio_mean,
        "ratio_max": ratio_max,
        "adv_mean": adv_mean,
    }


def _clipped_surrogate_loss(fn, logp, old_logp, advantages, mask, eps_low, eps_high, norm):
    """-reduce(min(r A, clip(r, 1-eps_low, 1+eps_high) A)) and its stats (shared by GRPO and DAPO)."""
    valid = _check_token_tensors(fn, logp, old_logp, advantages, mask)
    _check_norm(fn, norm)
    log_ratio, adv = _masked_inputs(logp, old_logp, advantages, valid)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    surrogate = torch.minimum(unclipped, clipped)
    loss = -_reduce(surrogate, valid, norm)

    stats = _base_stats(ratio, adv, valid, loss)
    n_tokens = int(stats["tokens"])
    # The clipped branch is active (and the token's gradient is zero) where it is strictly the smaller term:
    # A > 0 with r > 1 + eps_high, or A < 0 with r < 1 - eps_low.
    clip_high = (adv > 0) & (ratio > 1.0 + eps_high)
    clip_low = (adv < 0) & (ratio < 1.0 - eps_low)
    stats["clip_high_frac"] = _frac(clip_high, valid, n_tokens)
    stats["clip_low_frac"] = _frac(clip_low, valid, n_tokens)
    stats["clip_frac"] = _frac(clip_high | clip_low, valid, n_tokens)
    return loss, stats


# ----------------------------------------------------------------------------------------------- losses


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps: float = 0.2,
    norm: str = "token",
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO / PPO-clip loss: -mean over valid tokens of min(r A, clip(r, 1-eps, 1+eps) A), r = exp(logp - old_logp).

    Normalisation `norm`:
      "token" (default): token-level over the batch, sum over valid tokens / number of valid tokens
        (long sequences weigh more; as in DAPO and TRL's "dapo"/"bnpo").
      "sequence": mean over each sequence's valid tokens, then mean over sequences (the original GRPO of
        DeepSeekMath, arXiv 2402.03300); fully masked sequences are left out of the second mean.
    The gradient w.r.t. logp of a token is -r A / n where the unclipped branch is the min, 0 where the clipped one is.
    stats: clip_frac (= clip_low_frac + clip_high_frac, tokens whose clipped branch is strictly the min),
    ratio_mean, ratio_max, tokens, adv_mean, loss.
    """
    eps = _check_eps("grpo_loss", "eps", eps, below_one=True)
    return _clipped_surrogate_loss("grpo_loss", logp, old_logp, advantages, mask, eps, eps, norm)


def dapo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DAPO loss (arXiv 2503.14476): clip-higher PPO surrogate with ratio range [1-eps_low, 1+eps_high].

    Token-level normalisation over the batch: sum over all valid tokens / their number. Dynamic sampling and the
    overlong penalty are separate: `dynamic_sampling_mask`, `overlong_penalty`. Stats as for `grpo_loss`.
    """
    eps_low = _check_eps("dapo_loss", "eps_low", eps_low, below_one=True)
    eps_high = _check_eps("dapo_loss", "eps_high", eps_high)
    return _clipped_surrogate_loss("dapo_loss", logp, old_logp, advantages, mask, eps_low, eps_high, "token")


def cispo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_high: float = 4.0,
    eps_low: float | None = None,
    ratio_cap: str = "relative",
) -> tuple[torch.Tensor, dict[str, float]]:
    """CISPO loss (MiniMax-M1, arXiv 2506.13585): -(1/n_tokens) sum sg(rhat) A logp over valid tokens.

    rhat = clip(r, lower, upper), r = exp(logp - old_logp), detached: every token keeps the gradient
    -rhat A / n_tokens w.r.t. its logp (capped tokens too); only the weight is capped.
    `ratio_cap` says how the bounds are read:
      "relative" (default, the paper's notation): upper = 1 + eps_high, lower = 1 - eps_low (eps_low < 1).
      "absolute": upper = eps_high, lower = eps_low, both ratio values (TRL's reading of `epsilon_high`).
    eps_low=None means no lower bound (MiniMax: "eps_low large", only eps_high tuned).
    Conventions:
      default (eps_high=4.0, eps_low=None, "relative") caps the weight at 5.0 with no lower bound, which is
        TRL's `loss_type="cispo"` with `epsilon_high=5.0`; the same as (eps_high=5.0, ratio_cap="absolute").
      verl's `cispo` (two-sided [0.8, 1.2]): eps_high=0.2, eps_low=0.2, ratio_cap="relative".
    stats: clip_frac (share of valid tokens whose weight was capped, either bound), clip_high_frac,
    clip_low_frac, ratio_mean, ratio_max, tokens, adv_mean, loss, weight_cap (the upper bound used).
    """
    fn = "cispo_loss"
    if ratio_cap not in RATIO_CAPS:
        raise ValueError(
            f"{fn}: `ratio_cap` must be one of {RATIO_CAPS}, got {ratio_cap!r}; use \"relative\" for a cap of "
            "1 + eps_high (paper, verl) or \"absolute\" for a cap of eps_high (TRL)"
        )
    if ratio_cap == "relative":
        upper = 1.0 + _check_eps(fn, "eps_high", eps_high)
        lower = None if eps_low is None else 1.0 - _check_eps(fn, "eps_low", eps_low, below_one=True)
    else:
        upper = float(eps_high)
        if not upper > 0.0:
            raise ValueError(
                f"{fn}: with ratio_cap=\"absolute\", `eps_high` is the weight cap and must be > 0, got {upper}; "
                "use e.g. 5.0"
            )
        lower = None if eps_low is None else _check_eps(fn, "eps_low", eps_low)
        if lower is not None and lower >= upper:
            raise ValueError(
                f"{fn}: with ratio_cap=\"absolute\", `eps_low` ({lower}) is the weight floor and must be below the cap "
                f"`eps_high` ({upper}); use eps_low=None for no lower bound"
            )

    valid = _check_token_tensors(fn, logp, old_logp, advantages, mask)
    log_ratio, adv = _masked_inputs(logp, old_logp, advantages, valid)
    ratio = torch.exp(log_ratio).detach()
    weight = torch.clamp(ratio, min=lower, max=upper)
    safe_logp = torch.where(valid, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))
    loss = -_reduce(weight * adv * safe_logp, valid, "token")

    stats = _base_stats(ratio, adv, valid, loss)
    n_tokens = int(stats["tokens"])
    capped_high = ratio > upper
    capped_low = ratio < lower if lower is not None else torch.zeros_like(valid)
    stats["clip_high_frac"] = _frac(capped_high, valid, n_tokens)
    stats["clip_low_frac"] = _frac(capped_low, valid, n_tokens)
    stats["clip_frac"] = _frac(capped_high | capped_low, valid, n_tokens)
    stats["weight_cap"] = upper
    return loss, stats


# ---------------------------------------------------------------------------------- advantages and DAPO pieces


def _all_equal_rows(rewards: torch.Tensor) -> torch.Tensor:
    return (rewards == rewards[:, :1]).all(dim=1)


def group_advantages(
    rewards: torch.Tensor, eps: float = 1e-6, scale: bool = True, unbiased: bool = True
) -> torch.Tensor:
    """GRPO advantages within each group: (R - mean R) / (std R + eps), rewards and result [N_groups, G].

    std is the SAMPLE std over the group (unbiased=True, divisor G-1, as torch.std in TRL and verl);
    unbiased=False gives the population std (divisor G). scale=False returns R - mean R (Dr. GRPO).
    Groups whose rewards are all equal (and groups of one) get exactly 0, never NaN.
    """
    rewards = _check_rewards("group_advantages", rewards)
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    eps = _check_eps("group_advantages", "eps", eps)
    constant = _all_equal_rows(rewards)
    if rewards.shape[1] < 2:
        return torch.zeros_like(rewards)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (rewards.std(dim=1, keepdim=True, correction=1 if unbiased else 0) + eps)
    return torch.where(constant[:, None], torch.zeros_like(centred), centred)


def dynamic_sampling_mask(rewards: torch.Tensor) -> torch.Tensor:
    """DAPO dynamic sampling: bool [N_groups], True for groups whose G rewards are not all equal (keep them)."""
    rewards = _check_rewards("dynamic_sampling_mask", rewards)
    return ~_all_equal_rows(rewards)


def overlong_penalty(lengths: torch.Tensor | Sequence[int], max_length: int, cache: int) -> torch.Tensor:
    """DAPO soft overlong punishment for response lengths L (a reward term, added to the task reward).

    0 if L <= max_length - cache; (max_length - cache - L) / cache if max_length - cache < L <= max_length
    (linear from 0 to -1); -1 if L > max_length. Returns a float tensor shaped like `lengths`.
    """
    fn = "overlong_penalty"
    if not max_length > 0:
        raise ValueError(f"{fn}: `max_length` must be > 0, got {max_length}")
    if not 0 < cache <= max_length:
        raise ValueError(
            f"{fn}: `cache` (the soft punishment interval) must satisfy 0 < cache <= max_length ({max_length}), "
            f"got {cache}; DAPO used max_length=20480 with cache=4096"
        )
    lengths = torch.as_tensor(lengths)
    if lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError(f"{fn}: `lengths` must hold real token counts, got dtype {lengths.dtype}")
    lengths = lengths.to(torch.float64 if lengths.dtype == torch.float64 else torch.get_default_dtype())
    soft_start = max_length - cache
    linear = (soft_start - lengths) / cache
    penalty = torch.where(lengths <= soft_start, torch.zeros_like(lengths), linear)
    return torch.where(lengths > max_length, torch.full_like(lengths, -1.0), penalty)
