"""The credit-assignment experiment: one warmed-up policy, RL under each credit strategy x seed, compared.

    studio rl --task countdown --credit none,random,entropy,local,anchor,coupled --loss cispo --seeds 3 \\
              --steps 200 --out runs/credit

Layout of OUT: `warmup/` (supervised warm-up on the task's worked demonstrations, a studio training run;
by default none with --init), `<credit>/seed<k>/` (one RL run each, all starting from the same warmed-up weights),
`summary.json` and `summary.csv` (final greedy accuracy on the held-out prompts per run, and mean / std per
strategy), `figures/reward_curves.html` (mean training reward per strategy over steps, band = min..max over
seeds) and `figures/final_accuracy.html`. Finished runs are skipped and interrupted ones resume, so the
same command continues an experiment.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from studio.checkpoint import atomic_write_text

__all__ = ["run_experiment", "load_experiment", "summarize", "warm_up"]

DEFAULT_SPEC = {"name": "rl-countdown", "d_model": 128, "n_layers": 4, "n_heads": 4, "mlp": "swiglu",
                "mlp_ratio": 4.0, "pattern": "LS", "pattern_map": {"L": "lightning", "S": "softmax"}}


def warm_up(out: Path, spec: Any, task, steps: int, seed: int = 0, device: str = "auto", progress: bool = True) -> Path:
    """Supervised warm-up on the task's demonstrations (only the completions are scored) into `out`, from
    a fresh model of `spec` (None: DEFAULT_SPEC) or from a given `HybridLM`; a finished warm-up there is
    reused, an interrupted one resumed."""
    from studio.model import HybridLM
    from studio.model import build_model
    from studio.spec import ArchSpec
    from studio.train import read_run, train

    if (out / "run.json").exists():
        run = read_run(out)
        if run["status"] in ("finished", "reached_target") and run["steps"] == steps:
            return out
        if run["steps"] != steps:
            raise ValueError(f"{out} holds a warm-up of {run['steps']} steps, not {steps}; delete it or keep its steps")
        if run.get("last_checkpoint"):
            return train(None, None, steps, out, resume=True, progress=progress)
        shutil.rmtree(out)  # stopped before its first checkpoint: start again
    if isinstance(spec, HybridLM):
        model = spec
    else:
        if spec is None:
            spec = {**DEFAULT_SPEC, "vocab_size": task.vocab_size}
        model = build_model(ArchSpec.from_dict(spec) if isinstance(spec, dict) else spec, seed=seed)
    return train(model, task, steps, out, seed=seed, device=device, progress=progress,
                 eval_every=max(1, steps // 5), ckpt_every=max(1, steps // 5))


def run_experiment(out_dir: str | Path, credits: list[str], seeds: int, steps: int, task: str = "countdown",
                   task_args: dict | None = None, init: str | Path | None = None, spec: Any = None,
                   warmup_steps: int | None = None, device: str = "auto", progress: bool = True,
                   only_seed: int | None = None, **rl_opts: Any) -> dict:
    """Warm up, then RL-train every credit strategy x seed from the warmed-up weights; returns the summary.

    init: None (a fresh model of `spec`), a model or run directory, or "smollm2" (the converted
    SmolLM2-135M-Instruct, with its own tokenizer). warmup_steps: supervised steps on the task's worked
    demonstrations before RL (default 1500 for a fresh model, 0 with `init`). only_seed: run just this seed
    of the `seeds` (to spread one experiment over several processes writing to the same OUT; the summary
    covers every finished run there)."""
    from studio.model import HybridLM
    from studio.rl.credit import STRATEGIES
    from studio.rl.train import rl_task, train
    from studio.train import read_run

    bad = [c for c in credits if c not in STRATEGIES]
    if bad or not credits:
        raise ValueError(f"unknown credit strategy {bad or credits}; choose from {', '.join(STRATEGIES)}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if only_seed is not None and not 0 <= only_seed < seeds:
        raise ValueError(f"only_seed must be one of the seeds 0..{seeds - 1}, got {only_seed}")
    out = Path(out_dir)
    task_args = dict(task_args or {})
    base: Any = spec
    if init == "smollm2":
        from studio.pretrained import load_smollm2

        base = load_smollm2()[0]
        task_args.setdefault("tokenizer", "smollm2")
    elif init is not None:
        base = HybridLM.load(init)
    task_obj = rl_task(task, **task_args)
    if warmup_steps is None:
        warmup_steps = 0 if init is not None else 1500
    if warmup_steps > 0:
        start = warm_up(out / "warmup", base, task_obj, warmup_steps, device=device, progress=progress)
    else:
        start = base
    for seed in range(seeds) if only_seed is None else [only_seed]:  # seed by seed, so an interrupted experiment has every strategy at seed 0 first
        for credit in credits:
            run_dir = out / credit / f"seed{seed}"
            if (run_dir / "run.json").exists():
                run = read_run(run_dir)
                if run["status"] == "finished" and run["step"] >= steps:
                    continue
                if run.get("last_checkpoint"):
                    train(None, None, steps, run_dir, resume=True, progress=progress)
                    continue
                shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to resume, start again
            policy = copy.deepcopy(start) if isinstance(start, HybridLM) else start  # train() updates it in place
            train(policy, task_obj, steps, run_dir, credit=credit, seed=seed, device=device, progress=progress,
                  **rl_opts)
    return summarize(out)


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def load_experiment(out_dir: str | Path) -> dict:
    """Every RL run under OUT (<credit>/seed<k>/): its final eval accuracy and its curves, per strategy."""
    from studio.train import read_run

    out = Path(out_dir)
    runs = []
    for run_json in sorted(out.glob("*/seed*/run.json")):
        run_dir = run_json.parent
        run, records = read_run(run_dir), _metrics(run_dir)
        evals = [r for r in records if "eval_accuracy" in r]
        runs.append({"credit": run["config"]["credit"], "loss": run["config"]["loss"], "seed": run["config"]["seed"],
                     "steps": run["step"], "status": run["status"],
                     "initial_accuracy": evals[0]["eval_accuracy"] if evals else None,
                     "final_accuracy": evals[-1]["eval_accuracy"] if evals else None,
                     "final_reward": evals[-1]["eval_reward"] if evals else None,
                     "rhythm_overhead_pct": _mean([r["rhythm_overhead_pct"] for r in records if "rhythm_overhead_pct" in r]),
                     "curve": [[r["step"], r["reward"]] for r in records if "reward" in r]})
    strategies: dict[str, dict] = {}
    for r in runs:
        strategies.setdefault(r["credit"], {"runs": []})["runs"].append(r)
    for credit, entry in strategies.items():
        acc = [r["final_accuracy"] for r in entry["runs"] if r["final_accuracy"] is not None]
        entry.update(n=len(acc), accuracy_mean=_mean(acc), accuracy_std=statistics.stdev(acc) if len(acc) > 1 else None,
                     accuracies=acc, rhythm_overhead_pct=_mean([r["rhythm_overhead_pct"] for r in entry["runs"]
                                                                if r["rhythm_overhead_pct"] is not None]))
    return {"runs": runs, "strategies": strategies}


def summarize(out_dir: str | Path) -> dict:
    """Write OUT's summary.json, summary.csv and figures from every run there (finished or not: each run
    reports its steps and status) without training; returns the summary."""
    summary = load_experiment(out_dir)
    _write_outputs(Path(out_dir), summary)
    return summary


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def _write_outputs(out: Path, summary: dict) -> None:
    from studio.ablate_figures import save_figure
    from studio.rl.figures import final_accuracy_bars, reward_curves

    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["credit", "loss", "seed", "steps", "status", "initial_accuracy", "final_accuracy", "final_reward",
                     "rhythm_overhead_pct"])
    for r in summary["runs"]:
        writer.writerow([r[k] for k in ("credit", "loss", "seed", "steps", "status", "initial_accuracy",
                                        "final_accuracy", "final_reward", "rhythm_overhead_pct")])
    atomic_write_text(out / "summary.csv", buf.getvalue())
    for name, fig in (("reward_curves", reward_curves(summary)), ("final_accuracy", final_accuracy_bars(summary))):
        save_figure(fig, out / "figures", name)  # html (offline) + json
