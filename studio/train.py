"""Training: AdamW, warm-up + cosine schedule, gradient clipping, periodic evaluation, metrics,
atomic checkpoints, exact resume, a NaN guard, and data parallelism through PyTorch's own DDP.

    run_dir = studio.train.train(spec, studio.tasks.get("mqar"), steps=2000, out_dir="runs/mqar")

Determinism: every step's batch comes from one seeded generator whose state is checkpointed, so a
run resumed from step K reproduces the uninterrupted run's losses. Under `torchrun` every process
draws the same global batch and trains on its slice; the loss is normalised by the global number of
scored tokens, so N processes compute the same update as one process with the same global batch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from studio.checkpoint import atomic_write_text, read_record, save_model
from studio.model import HybridLM, build_model
from studio.spec import ArchSpec
from studio.tasks import Task
from studio.tasks import get as get_task

RUN_FORMAT = "hybrid-attention-studio/run@1"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class TrainConfig:
    batch_size: int = 64          # global batch (all processes together)
    lr: float = 1e-3              # the best rate for small-softmax on MQAR (docs/benchmarks.md)
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    warmup: int = 50              # steps of linear warm-up
    min_lr_ratio: float = 0.1     # cosine decays to lr * min_lr_ratio at the last step
    grad_clip: float = 1.0        # max global gradient norm (0: off)
    eval_every: int = 100
    eval_batches: int = 4
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"          # auto | cpu | cuda
    stop_at_accuracy: float | None = None  # stop early once eval accuracy reaches this
    aux_loss_coef: float = 0.01   # weight of the MoE load-balance loss (model.aux_loss()) in the objective
    progress: bool = True

    def validate(self) -> None:
        problems = [
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (self.warmup >= 0, f"warmup must be >= 0, got {self.warmup}"),
            (0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}"),
            (self.aux_loss_coef >= 0, f"aux_loss_coef must be >= 0, got {self.aux_loss_coef}"),
            (self.eval_every >= 1 and self.ckpt_every >= 1, "eval_every and ckpt_every must be >= 1"),
            (self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}"),
        ]
        for ok, message in problems:
            if not ok:
                raise ValueError(message)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine down to cfg.lr * cfg.min_lr_ratio at `total`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, total - cfg.warmup)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---- distributed helpers ------------------------------------------------------------------------
def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("STUDIO_DDP_BACKEND") != "gloo" else "gloo"
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dist.init_process_group(backend, device_id=torch.device("cuda", local) if backend == "nccl" else None)
    if world > 1:
        return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but no CUDA GPU is visible; use device='cpu'")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


# ---- run directory --------------------------------------------------------------------------------
def _checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def read_run(run_dir: str | Path) -> dict:
    """The run record (run.json) of a run directory written by `train`."""
    return read_record(Path(run_dir) / RUN_FILE, RUN_FORMAT, "run directories are written by studio train")


def _write_run(run_dir: Path, run: dict) -> None:
    atomic_write_text(run_dir / RUN_FILE, json.dumps(run, indent=2) + "\n")


def _save_checkpoint(run_dir: Path, model: HybridLM, optimizer: torch.optim.Optimizer, step: int,
                     data_gen: torch.Generator, keep: int) -> Path:
    """model (config.json + model.safetensors), optimizer and RNG state, written to a temporary
    directory and renamed into place; older checkpoints beyond `keep` are removed."""
    root = run_dir / "checkpoints"
    final = root / _checkpoint_name(step)
    tmp = root / f".tmp-{_checkpoint_name(step)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp)
    tensors: dict[str, torch.Tensor] = {"rng.data": data_gen.get_state(), "rng.torch": torch.get_rng_state()}
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for group in optimizer.param_groups:
        groups.append({k: v for k, v in group.items() if k != "params"} | {"params": [names[id(p)] for p in group["params"]]})
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"opt.{names[id(p)]}.{key}"] = value.detach().cpu().contiguous().reshape(value.shape)
    save_file(tensors, str(tmp / "trainer.safetensors"))
    (tmp / "trainer.json").write_text(json.dumps({"step": step, "param_groups": groups}, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(path: Path, model: HybridLM, optimizer: torch.optim.Optimizer, data_gen: torch.Generator) -> int:
    """Restore weights, optimizer moments and RNG states; return the checkpoint's step."""
    from safetensors.torch import load_model as load_weights

    load_weights(model, str(path / "model.safetensors"), device=str(model.device))
    tensors = load_file(str(path / "trainer.safetensors"))
    meta = json.loads((path / "trainer.json").read_text())
    params = dict(model.named_parameters())
    order = [name for group in meta["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(order)}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "betas": tuple(g["betas"]),
               "params": [index[name] for name in g["params"]]} for g in meta["param_groups"]]
    state = {}
    for name in order:
        prefix = f"opt.{name}."
        entry = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
        if entry:
            state[index[name]] = {k: v if k == "step" else v.to(params[name].device) for k, v in entry.items()}
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    data_gen.set_state(tensors["rng.data"])
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["step"])


def _optimizer(model: HybridLM, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only (frozen ones, e.g. base weights under LoRA, are left out);
    matrices other than the embedding decay."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameter (every requires_grad is False)")
    decay = [p for n, p in trainable if p.ndim >= 2 and not n.startswith("embed")]
    rest = [p for n, p in trainable if not (p.ndim >= 2 and not n.startswith("embed"))]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)


def evaluate(model: HybridLM, task: Task, batches: int = 4, batch_size: int = 32, seed: int = 1234) -> dict[str, float]:
    """Mean loss and task metrics on `batches` fixed batches (the same ones for the same seed)."""
    eval_task = task.eval_task() if hasattr(task, "eval_task") else task
    gen = torch.Generator().manual_seed(seed)
    totals: dict[str, float] = {}
    loss_sum, scored = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for _ in range(batches):
            batch = eval_task.sample(batch_size, gen).to(model.device)
            logits = model(batch.inputs)
            loss_sum += float(eval_task.loss_sum(logits, batch))
            scored += batch.scored
            for key, value in eval_task.score(logits, batch).items():
                totals[key] = totals.get(key, 0.0) + value * (batch.scored if key != "exact_match" else 1)
    model.train(was_training)
    out = {"loss": loss_sum / max(scored, 1)}
    for key, value in totals.items():
        if key == "scored_tokens":
            continue
        out[key] = value / (batches if key == "exact_match" else max(scored, 1))
    return out


def _check_options(config: type, opts: dict, steps: int, what: str) -> None:
    """ValueError for an option that is not a field of the `config` dataclass (`what`: training, RL), or steps < 1."""
    known = {f.name for f in fields(config)}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown}; allowed: {sorted(known)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


def _refuse_existing_run(out: Path) -> None:
    """FileExistsError when `out` already holds a run: a new run never overwrites one."""
    if (out / RUN_FILE).exists():
        raise FileExistsError(f"{str(out)!r} already holds a run; pass resume=True (--resume) to continue it "
                              "or choose another output directory")


def _resume_checkpoint(out: Path, run: dict) -> Path:
    """The checkpoint the run in `out` resumes from (its run.json record `run`); FileNotFoundError if none."""
    ckpt = run.get("last_checkpoint")
    if not ckpt or not (out / ckpt).is_dir():
        raise FileNotFoundError(f"run {str(out)!r} has no checkpoint to resume from")
    return out / ckpt


def _check_fit(spec: ArchSpec, task: Task) -> None:
    if task.vocab_size > spec.vocab_size:
        raise ValueError(f"task {task.name!r} uses token ids up to {task.vocab_size - 1} but the spec's "
                         f"vocab_size is {spec.vocab_size}; set vocab_size >= {task.vocab_size}")


def train(
    spec_or_model: ArchSpec | HybridLM | dict | str,
    task: Task | str,
    steps: int,
    out_dir: str | Path,
    resume: bool = False,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    task_args: dict | None = None,
    **opts: Any,
) -> Path:
    """Train for `steps` optimizer steps (in total, counting resumed ones) and return the run directory.

    `opts` are `TrainConfig` fields. `callback(record)` is called with each metrics record; if it
    returns "stop", training stops after saving a checkpoint. `resume=True` continues the run in
    `out_dir` from its last checkpoint (spec, task and options come from the run record); the model is
    rebuilt from the recorded spec, unless `spec_or_model` is a `HybridLM` of that spec: then that very
    model is resumed, as it is (a model with LoRA adapters or frozen weights keeps them). Only parameters
    with requires_grad are optimised.
    """
    out = Path(out_dir)
    rank, world, local_rank = _distributed()
    _check_options(TrainConfig, opts, steps, "training")

    if resume:
        run = read_run(out)
        cfg = TrainConfig(**{**run["config"], "betas": tuple(run["config"]["betas"]), **opts})
        spec = ArchSpec.from_dict(run["spec"])
        task = get_task(run["task"]["name"], **run["task"]["args"])
        if isinstance(spec_or_model, HybridLM):
            if spec_or_model.spec.to_dict() != spec.to_dict():
                raise ValueError(f"the model given to resume {str(out)!r} is not of the run's spec (run.json); "
                                 "pass a model built from that spec, or None to rebuild it")
            model = spec_or_model
        else:
            model = build_model(spec, seed=cfg.seed)
    else:
        cfg = TrainConfig(**opts)
        if isinstance(task, str):
            task = get_task(task, **(task_args or {}))
        if isinstance(spec_or_model, HybridLM):
            model, spec = spec_or_model, spec_or_model.spec
        else:
            spec = spec_or_model if isinstance(spec_or_model, ArchSpec) else (
                ArchSpec.from_dict(spec_or_model) if isinstance(spec_or_model, dict) else ArchSpec.load(spec_or_model))
            model = build_model(spec, seed=cfg.seed)
        _refuse_existing_run(out)
    cfg.validate()
    _check_fit(spec, task)
    if world > 1:
        dist.barrier()  # every process has checked the run directory before rank 0 writes to it
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} does not split over {world} processes; use a multiple of {world}")
    device = _device(cfg, local_rank)
    model.to(device).train()
    optimizer = _optimizer(model, cfg)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    start = 0
    if resume:
        start = _load_checkpoint(_resume_checkpoint(out, run), model, optimizer, data_gen)
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        run = {"format": RUN_FORMAT, "spec": spec.to_dict(), "task": {"name": task.name, "args": task.config()},
               "config": asdict(cfg), "steps": steps, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "world_size": world, "status": "running", "step": 0, "last_checkpoint": None}
        _write_run(out, run)
    else:
        run = {}
    if rank == 0:
        _trim_metrics(out / METRICS_FILE, start)

    ddp = None
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    forward = ddp if ddp is not None else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    bar = tqdm(total=steps, initial=start, disable=not cfg.progress or rank != 0, desc=f"train {task.name}",
               dynamic_ncols=True)
    metrics_file = open(out / METRICS_FILE, "a") if rank == 0 else None
    status, last_eval = "interrupted", {}
    tokens_seen, t0 = 0, time.perf_counter()
    try:
        for step in range(start, steps):
            lr = lr_at(step, steps, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = task.sample(cfg.batch_size, data_gen)
            scored_global = batch.scored
            local = batch.shard(rank, world).to(device)
            with autocast:
                logits = forward(local.inputs)
                loss_sum = task.loss_sum(logits, local)
            objective = loss_sum * world / max(scored_global, 1)
            if model.moe_layers:
                objective = objective + cfg.aux_loss_coef * model.aux_loss()
            objective.backward()
            stats = torch.stack([loss_sum.detach().float(),
                                 ((logits.argmax(-1) == local.targets) & (local.targets >= 0)).sum().float()])
            if world > 1:
                dist.all_reduce(stats)
            loss = float(stats[0]) / max(scored_global, 1)
            accuracy = float(stats[1]) / max(scored_global, 1)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf")))
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                what = "loss" if not math.isfinite(loss) else "gradient norm"
                value = loss if not math.isfinite(loss) else grad_norm
                last = str(out / run["last_checkpoint"]) if run.get("last_checkpoint") else "none (none was written yet)"
                status = "diverged"
                raise TrainingDiverged(
                    f"the {what} became {value} at step {step + 1}; training stopped before that update. "
                    f"Last good checkpoint: {last}. Lower the learning rate (lr={cfg.lr:g}) or keep gradient "
                    f"clipping on (grad_clip={cfg.grad_clip:g}).")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens_seen += int(batch.inputs.numel())
            elapsed = time.perf_counter() - t0
            record = {"step": step + 1, "loss": loss, "accuracy": accuracy, "lr": lr, "grad_norm": grad_norm,
                      "tokens_per_s": tokens_seen / max(elapsed, 1e-9), "elapsed_s": elapsed}
            if model.moe_layers:
                record["aux_loss"] = float(model.aux_loss().detach())  # this process's batch slice
            done = step + 1 == steps
            if (step + 1) % cfg.eval_every == 0 or done:
                last_eval = evaluate(model, task, cfg.eval_batches, cfg.batch_size, seed=cfg.seed + 1_000_003)
                record.update({f"eval_{k}": v for k, v in last_eval.items()})
            stop = callback(record) == "stop" if callback is not None else False
            reached = cfg.stop_at_accuracy is not None and record.get("eval_accuracy", -1.0) >= cfg.stop_at_accuracy
            if metrics_file is not None:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}")
            if rank == 0 and ((step + 1) % cfg.ckpt_every == 0 or done or stop or reached):
                path = _save_checkpoint(out, model, optimizer, step + 1, data_gen, cfg.keep_checkpoints)
                run.update(step=step + 1, last_checkpoint=str(path.relative_to(out)))
                _write_run(out, run)
            if stop or reached:
                status = "stopped" if stop else "reached_target"
                break
        else:
            status = "finished"
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if rank == 0 and run:
            run.update(status=status, final={"step": run["step"], **{f"eval_{k}": v for k, v in last_eval.items()}})
            _write_run(out, run)
        if world > 1:
            _record_rank_checksums(model, out, rank, world)
    return out


def _record_rank_checksums(model: HybridLM, out: Path, rank: int, world: int) -> None:
    """Under DDP every process must end with the same weights: gather a checksum from each and
    record them in run.json (`ddp_checksums`), so a silent divergence is visible."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device) % 1009
    checksum = torch.stack([flat.sum(), (flat * weights).sum()])
    gathered = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(gathered, checksum)
    if rank == 0:
        run = read_run(out)
        run["ddp_checksums"] = [g.tolist() for g in gathered]
        _write_run(out, run)
    dist.barrier()


def _trim_metrics(path: Path, step: int) -> None:
    """Drop metric records past `step` (a resumed run rewrites them)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


__all__ = ["TrainConfig", "TrainingDiverged", "train", "evaluate", "read_run", "lr_at"]
