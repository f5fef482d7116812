"""Time to 99% MQAR accuracy on this CPU, with a learning-rate sweep, and training tokens/s per mixer.

    python benchmarks/train_cpu.py [--models small-softmax small-lightning small-hybrid]
                                   [--lrs 1e-3 3e-3 1e-2] [--max-steps 3000] [--quick]

For each preset and learning rate it trains on MQAR (the task size is printed and recorded) until the
held-out accuracy reaches --target or --max-steps, and records the wall time, steps and final
accuracy. Then it measures training throughput (forward + backward + AdamW, tokens/s) of a 2-layer
model of every registered mixer. Prints two tables and writes benchmarks/results/train_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from studio import tasks
from studio.mixers import REGISTRY
from studio.presets import preset
from studio.spec import ArchSpec
from studio.train import train

RESULTS = Path(__file__).resolve().parent / "results"


def time_to_target(name: str, lr: float, task_args: dict, args) -> dict:
    task = tasks.get("mqar", **task_args)
    spec = preset(name, vocab_size=task.vocab_size)
    workdir = Path(tempfile.mkdtemp(prefix="train-cpu-"))
    start = time.perf_counter()
    try:
        out = train(spec, task, args.max_steps, workdir / "run", lr=lr, batch_size=args.batch_size,
                    warmup=args.warmup, eval_every=args.eval_every, eval_batches=2, ckpt_every=10**9,
                    stop_at_accuracy=args.target, progress=False, seed=args.seed)
        seconds = time.perf_counter() - start
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in records if "eval_accuracy" in r]
        last = evals[-1]
        return {"model": name, "lr": lr, "reached": last["eval_accuracy"] >= args.target, "steps": last["step"],
                "seconds": seconds, "eval_accuracy": last["eval_accuracy"], "eval_loss": last["eval_loss"],
                "tokens_per_s": records[-1]["tokens_per_s"],
                "curve": [(r["step"], round(r["eval_accuracy"], 4)) for r in evals]}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def training_throughput(mixer: str, task_args: dict, args, steps: int = 20) -> float:
    task = tasks.get("mqar", **task_args)
    spec = ArchSpec.from_dict({"vocab_size": task.vocab_size, "d_model": 64, "n_layers": 2, "n_heads": 4,
                               "layers": [{"mixer": mixer}] * 2})
    from studio.model import build_model

    model = build_model(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)

    def step():
        batch = task.sample(args.batch_size, gen)
        (task.loss_sum(model(batch.inputs), batch) / batch.scored).backward()
        opt.step()
        opt.zero_grad()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * args.batch_size * task.seq_len / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small-softmax", "small-lightning", "small-hybrid"])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--vocab-size", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--num-pairs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    task_args = {"vocab_size": args.vocab_size, "seq_len": args.seq_len, "num_pairs": args.num_pairs}
    print(f"MQAR {task_args}, batch {args.batch_size}, target {args.target:.0%}, "
          f"at most {args.max_steps} steps, {torch.get_num_threads()} threads")

    sweep = []
    for name in args.models:
        for lr in args.lrs:
            row = time_to_target(name, lr, task_args, args)
            sweep.append(row)
            print(f"  {name:<18} lr={lr:<8g} {'reached' if row['reached'] else 'missed ':<8} "
                  f"acc={row['eval_accuracy']:.4f} steps={row['steps']:<5} {row['seconds']:7.1f} s", flush=True)

    print(f"\n{'model':<18}{'best lr':>10}{'time to target':>16}{'steps':>8}{'final acc':>11}")
    for name in args.models:
        rows = [r for r in sweep if r["model"] == name]
        best = min(rows, key=lambda r: (not r["reached"], r["seconds"] if r["reached"] else -r["eval_accuracy"]))
        when = f"{best['seconds']:.1f} s" if best["reached"] else "not reached"
        print(f"{name:<18}{best['lr']:>10g}{when:>16}{best['steps']:>8}{best['eval_accuracy']:>11.4f}")

    throughput = {}
    if not args.skip_throughput:
        print(f"\n{'mixer':<18}{'train tokens/s':>16}   (2 layers, d_model 64, batch {args.batch_size} x {args.seq_len})")
        for mixer in sorted(REGISTRY):
            throughput[mixer] = training_throughput(mixer, task_args, args)
            print(f"{mixer:<18}{throughput[mixer]:>16,.0f}")

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "train_cpu.json"
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.machine(),
            "processor": platform.processor(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "task": {"name": "mqar", **task_args}, "batch_size": args.batch_size, "target": args.target,
            "max_steps": args.max_steps}
    out.write_text(json.dumps({"meta": meta, "sweep": sweep, "train_tokens_per_s": throughput}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
