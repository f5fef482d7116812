"""RL fine-tuning with anchor-aware credit: rollouts, rewards, group advantages, credit, a policy loss.

    run_dir = studio.rl.train(model, "countdown", steps=200, out_dir="runs/rl", loss="cispo", credit="coupled")

One step (arXiv 2510.13554 on GRPO / DAPO / CISPO, ../shared/REFERENCE.md sections 4-6):

1. sample `prompts_per_step` prompts of the task and `group_size` completions of each at temperature 1,
   decoding with the mixers' recurrent steps; the task's verifier gives each a reward (DAPO: minus the
   overlong penalty; groups whose rewards are all equal are dropped: they carry no signal);
2. advantages A_i = (R_i - mean R) / std R within each group (GRPO), the same for every token of a row;
3. one extra hooked forward over the batch (`analyses.rhythms`) gives each row's preplan-and-anchor rhythm,
   and `studio.rl.credit.gamma` turns it into per-token credit gamma_t (none / random / entropy / local /
   anchor / coupled); the token advantages are gamma_t A_i (gamma detached; both signs by default);
4. `inner_steps` optimizer steps on the policy loss (grpo / dapo / cispo) against the sampling policy's
   log-probabilities, so the importance ratios (and clipping) come into play from the second one.

The time of step 3 is logged as a share of the step (`rhythm_overhead_pct`; the paper reports 2.0-3.3%).
Each step draws its prompts and samples from generators seeded by (seed, step), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have. The run directory is a studio run
(run.json, metrics.jsonl, checkpoints/): `HybridLM.load(run_dir)` reads its last checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from studio.model import HybridLM
from studio.rl import credit as credit_module
from studio.rl import losses
from studio.rl.rollout import Rollouts, sample_rollouts, token_logprobs
from studio.train import (RUN_FILE, RUN_FORMAT, METRICS_FILE, _check_options, _load_checkpoint, _refuse_existing_run,
                          _resume_checkpoint, _save_checkpoint, read_run)

__all__ = ["RLConfig", "train", "evaluate_policy", "rl_task"]

LOSSES = ("grpo", "dapo", "cispo")


@dataclass
class RLConfig:
    loss: str = "cispo"                 # grpo | dapo | cispo
    credit: str = "none"                # studio.rl.credit.STRATEGIES
    credit_params: dict = field(default_factory=dict)  # gamma_amp, q, ... (studio.rl.credit.gamma)
    credit_signs: str = "both"          # both (paper v2) | positive (v1: only A >= 0 scaled)
    prompts_per_step: int = 8
    group_size: int = 8
    max_new_tokens: int = 48
    temperature: float = 1.0
    inner_steps: int = 2                # optimizer steps per batch of rollouts
    lr: float = 5e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eps: float = 0.2                    # grpo
    eps_low: float = 0.2                # dapo
    eps_high: float = 0.28              # dapo; cispo uses cispo_eps_high
    cispo_eps_high: float = 4.0         # cispo: ratio weight capped at 1 + 4 (verl-style relative cap)
    overlong_cache: int = 8             # dapo: soft overlong penalty over the last tokens before the limit
    dynamic_sampling: bool = True       # drop groups whose rewards are all equal (their advantages are 0)
    eval_every: int = 25
    eval_prompts: int = 64
    ckpt_every: int = 50
    keep_checkpoints: int = 1
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.credit not in credit_module.STRATEGIES:
            raise ValueError(f"credit must be one of {', '.join(credit_module.STRATEGIES)}, got {self.credit!r}")
        for name in ("prompts_per_step", "group_size", "max_new_tokens", "inner_steps", "eval_every", "ckpt_every",
                     "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages compare samples of one prompt), got {self.group_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


def rl_task(name: str, **kwargs):
    """A task with prompts and a verifier: countdown (default 3 numbers up to 10) or addition."""
    from studio.tasks.arithmetic import Arithmetic

    if name == "countdown":
        return Arithmetic(kind="countdown", **kwargs)
    if name == "addition":
        return Arithmetic(kind="addition", **kwargs)
    raise ValueError(f"RL needs a task with a verifier: countdown or addition, got {name!r}")


def _prompts(task, n: int, seed: int) -> list[str]:
    return [p.prompt for p in task.problems(n, torch.Generator().manual_seed(seed))]


@torch.no_grad()
def evaluate_policy(model: HybridLM, task, prompts: list[str], max_new_tokens: int) -> dict[str, float]:
    """Greedy completions of fixed prompts: accuracy (reward 1) and mean reward."""
    from studio.tasks.arithmetic import verify

    tok = task.tokenizer
    roll = sample_rollouts(model, tok, prompts, verify, group_size=1, max_new_tokens=max_new_tokens, temperature=0.0)
    return {"eval_accuracy": float((roll.rewards >= 1.0).float().mean()), "eval_reward": float(roll.rewards.mean())}


def _advantages(roll: Rollouts, cfg: RLConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row rewards (DAPO: with the overlong penalty), group advantages [B], and the rows kept [B]."""
    rewards = roll.rewards.clone()
    if cfg.loss == "dapo":
        rewards = rewards + losses.overlong_penalty(roll.completion_lengths(), cfg.max_new_tokens, cfg.overlong_cache)
    grouped = rewards.view(roll.groups, roll.group_size)
    adv = losses.group_advantages(grouped).reshape(-1)
    keep_groups = losses.dynamic_sampling_mask(grouped) if cfg.dynamic_sampling else torch.ones(roll.groups, dtype=torch.bool)
    return rewards, adv, keep_groups.repeat_interleave(roll.group_size)


def _policy_loss(cfg: RLConfig, logp, old_logp, adv, mask):
    if cfg.loss == "grpo":
        return losses.grpo_loss(logp, old_logp, adv, mask, eps=cfg.eps)
    if cfg.loss == "dapo":
        return losses.dapo_loss(logp, old_logp, adv, mask, eps_low=cfg.eps_low, eps_high=cfg.eps_high)
    return losses.cispo_loss(logp, old_logp, adv, mask, eps_high=cfg.cispo_eps_high)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def train(
    model: HybridLM | str | Path | None,
    task: Any,
    steps: int,
    out_dir: str | Path,
    resume: bool = False,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    task_args: dict | None = None,
    **opts: Any,
) -> Path:
    """RL fine-tune `model` (a HybridLM, updated in place, or a model / run directory to load) on `task`
    ("countdown", "addition" or an Arithmetic task) for `steps` steps in total; returns the run directory.

    `opts` are `RLConfig` fields. `callback(record)` sees each metrics record; returning "stop" ends the
    run after a checkpoint. `resume=True` continues the run in `out_dir` (model, task, options from it)."""
    out = Path(out_dir)
    _check_options(RLConfig, opts, steps, "RL")
    if resume:
        run = read_run(out)
        if run.get("kind") != "rl":
            raise ValueError(f"{str(out)!r} is not an RL run (studio rl writes those); resume it with studio train")
        cfg = RLConfig(**{**run["config"], **opts})
        task = rl_task(run["task"]["name"], **run["task"]["args"])
        model = HybridLM.load(out / run["initial_model"]) if run.get("initial_model") else None
    else:
        cfg = RLConfig(**opts)
        if isinstance(task, str):
            task = rl_task(task, **(task_args or {}))
        if not isinstance(model, HybridLM):
            model = HybridLM.load(model)
        _refuse_existing_run(out)
    cfg.validate()
    if task.vocab_size > model.spec.vocab_size:
        raise ValueError(f"task {task.name!r} needs vocab_size >= {task.vocab_size}; the model has "
                         f"{model.spec.vocab_size}")
    device = _device(cfg.device)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    torch.manual_seed(cfg.seed)
    start = 0
    if resume:
        start = _load_checkpoint(_resume_checkpoint(out, run), model, optimizer, torch.Generator())
    else:
        out.mkdir(parents=True, exist_ok=True)
        model.save(out / "initial")  # the policy before RL: the reference every run of a comparison shares
        run = {"format": RUN_FORMAT, "kind": "rl", "spec": model.spec.to_dict(),
               "task": {"name": "countdown" if task.kind == "countdown" else "addition",
                        "args": {k: v for k, v in task.config().items() if k != "kind"}},
               "config": asdict(cfg), "steps": steps, "initial_model": "initial",
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "status": "running", "step": 0, "last_checkpoint": None}
        _write(out / RUN_FILE, run)
    _trim(out / METRICS_FILE, start)
    eval_prompts = _prompts(task, cfg.eval_prompts, seed=10_000 + cfg.seed)  # fixed, apart from training prompts
    from studio.tasks.arithmetic import verify

    bar = tqdm(total=steps, initial=start, disable=not cfg.progress, desc=f"rl {cfg.loss}/{cfg.credit}",
               dynamic_ncols=True)
    status, record = "interrupted", {}
    metrics = open(out / METRICS_FILE, "a")
    try:
        if start == 0:
            record = {"step": 0, **evaluate_policy(model, task, eval_prompts, cfg.max_new_tokens)}
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
        for step in range(start, steps):
            t0 = time.perf_counter()
            step_seed = cfg.seed * 1_000_003 + step
            prompts = _prompts(task, cfg.prompts_per_step, seed=step_seed)
            sampler = torch.Generator(device).manual_seed(step_seed)
            roll = sample_rollouts(model, task.tokenizer, prompts, verify, cfg.group_size, cfg.max_new_tokens,
                                   cfg.temperature, sampler)
            t_sampled = time.perf_counter()
            rewards, adv, keep = _advantages(roll, cfg)
            mask = roll.response_mask() & keep.to(device)[:, None]
            t_rhythm = time.perf_counter()
            gamma = torch.ones(roll.tokens.shape, device=device)
            if cfg.credit != "none" and bool(keep.any()):
                rows = [int(i) for i in keep.nonzero()[:, 0]]
                found = _rhythms(model, roll, rows)
                params = {**cfg.credit_params}
                if cfg.credit == "random":
                    params.setdefault("generator", torch.Generator().manual_seed(step_seed))
                part = credit_module.gamma(found, cfg.credit, length=roll.tokens.shape[1], **params)
                gamma[rows] = part.to(device, gamma.dtype)
            rhythm_seconds = time.perf_counter() - t_rhythm
            token_adv = credit_module.apply_credit(adv.to(device)[:, None].expand_as(gamma), gamma, cfg.credit_signs)
            with torch.no_grad():
                old_logp = token_logprobs(model, roll.tokens, cfg.temperature)
            stats: dict[str, float] = {}
            for _ in range(cfg.inner_steps):
                logp = token_logprobs(model, roll.tokens, cfg.temperature)
                loss, stats = _policy_loss(cfg, logp, old_logp, token_adv, mask)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if not math.isfinite(loss.item()):
                    raise RuntimeError(f"the RL loss became {float(loss)} at step {step + 1}; lower lr (now {cfg.lr})")
                optimizer.step()
            seconds = time.perf_counter() - t0
            record = {
                "step": step + 1, "loss": loss.item(), "reward": float(roll.rewards.mean()),
                "accuracy": float((roll.rewards >= 1.0).float().mean()),
                "shaped_reward": float(rewards.mean()), "length": float(roll.completion_lengths().mean()),
                "truncated": float(roll.truncated.float().mean()), "groups_kept": int(keep.sum()) // cfg.group_size,
                "grad_norm": float(grad_norm), **{f"loss_{k}": v for k, v in stats.items()},
                **credit_module.credit_statistics(gamma, roll.response_mask()),
                "rhythm_seconds": rhythm_seconds, "sample_seconds": t_sampled - t0, "seconds": seconds,
                "rhythm_overhead_pct": 100.0 * rhythm_seconds / seconds,
            }
            done = step + 1 == steps
            if (step + 1) % cfg.eval_every == 0 or done:
                record.update(evaluate_policy(model, task, eval_prompts, cfg.max_new_tokens))
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            bar.update(1)
            bar.set_postfix(reward=f"{record['reward']:.2f}", acc=f"{record['accuracy']:.2f}")
            stop = callback(record) == "stop" if callback is not None else False
            if (step + 1) % cfg.ckpt_every == 0 or done or stop:
                path = _save_checkpoint(out, model, optimizer, step + 1, torch.Generator(), cfg.keep_checkpoints)
                run.update(step=step + 1, last_checkpoint=str(path.relative_to(out)))
                _write(out / RUN_FILE, run)
            if stop:
                status = "stopped"
                break
        else:
            status = "finished"
    finally:
        metrics.close()
        bar.close()
        run.update(status=status, final=record)
        _write(out / RUN_FILE, run)
    return out


def _rhythms(model: HybridLM, roll: Rollouts, rows: list[int]):
    """The rhythm of the given rows, one hooked forward (response R = the completion)."""
    from analyses.rhythm import rhythms

    n = max(roll.lengths[i] for i in rows)
    return rhythms(model, roll.tokens[rows, :n], [roll.prompt_lengths[i] for i in rows],
                   [roll.lengths[i] for i in rows])


def _write(path: Path, record: dict) -> None:
    from studio.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")


def _trim(path: Path, step: int) -> None:
    """Drop metrics records past `step` (written after the checkpoint a resume starts from)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))
