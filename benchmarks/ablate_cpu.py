"""Ablation grid cells per minute on this CPU (`studio ablate` / studio.ablate.run_grid), for a default cell.

    python benchmarks/ablate_cpu.py [--steps 200] [--seeds 2] [--threads 1 2] [--layers 2]

The default cell is a small MQAR cell: vocab 128, length 64, 8 key-value pairs, batch 64; a model of
d_model 64, 4 heads, SwiGLU MLP (the `small-*` presets' size) with --layers layers; --steps steps with
an evaluation every 100 steps (4 batches) and a checkpoint at the end. The grid is 2 variants (all
softmax, and the hybrid with lightning in the odd layers) x 1 task x --seeds seeds, run end to end
through run_grid (validation, training, result files, summary, figures) once per torch thread count in
--threads, each in a fresh output folder. Reported: cells per minute, seconds per cell, training steps/s
and the per-cell overhead outside the training loop (model build, evaluation, checkpoint, result files),
so a grid's CPU time can be estimated as cells x (overhead + steps / steps_per_s) for models of this
size. Prints a table; writes benchmarks/results/ablate_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path (where `analyses.py` would shadow the
# `analyses` package): put the repository root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

import torch  # noqa: E402

from studio.ablate import run_grid  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def default_grid(steps: int, seeds: int, layers: int) -> dict:
    return {
        "name": "ablate-cpu",
        "base": {"d_model": 64, "n_heads": 4, "n_layers": layers, "pattern": "S", "pattern_map": {"S": "softmax"}},
        "variants": {"softmax": {}, "hybrid-lightning": {"configuration": "hybrid", "layer": {"mixer": "lightning"}}},
        "tasks": [{"name": "mqar", "vocab_size": 128, "seq_len": 64, "num_pairs": 8}],
        "seeds": list(range(seeds)),
        "train": {"steps": steps, "batch_size": 64, "lr": 3e-3, "warmup": 50, "eval_every": 100, "eval_batches": 4,
                  "ckpt_every": steps},
    }


def train_seconds(cell_dir: Path) -> float:
    """Seconds inside the training loop (the last record's elapsed_s)."""
    lines = [line for line in (cell_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return float(json.loads(lines[-1])["elapsed_s"])


def measure(grid: dict, threads: int) -> dict:
    torch.set_num_threads(threads)
    workdir = Path(tempfile.mkdtemp(prefix="ablate-cpu-"))
    try:
        start = time.perf_counter()
        table = run_grid(grid, workdir / "out", progress=False, device="cpu")
        total = time.perf_counter() - start
        inner = [train_seconds(workdir / "out" / "cells" / row["cell"]) for row in table.rows]
        steps = sum(row["steps"] for row in table.rows)
        cells = len(table.rows)
        return {"threads": threads, "cells": cells, "seconds": total, "cells_per_minute": 60 * cells / total,
                "seconds_per_cell": total / cells, "train_steps_per_s": steps / sum(inner),
                "overhead_s_per_cell": (total - sum(inner)) / cells,
                "per_cell": [{"cell": r["cell"], "seconds": r["seconds"], "accuracy": r["accuracy"], "loss": r["loss"]}
                          for r in table.rows]}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per cell (default 200)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per variant (default 2: 4 cells)")
    parser.add_argument("--layers", type=int, default=2, help="layers of the model (default 2)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to try")
    args = parser.parse_args()
    grid = default_grid(args.steps, args.seeds, args.layers)
    load_before = os.getloadavg()
    print(f"default cell: MQAR (vocab 128, length 64, 8 pairs), batch 64, {args.steps} steps, "
          f"d_model 64, 4 heads, {args.layers} layers; 2 variants x {args.seeds} seeds; load average "
          f"{load_before[0]:.2f} on {os.cpu_count()} cores")
    runs = []
    for threads in args.threads:
        runs.append(measure(grid, threads))
        r = runs[-1]
        print(f"  {threads} thread(s): {r['cells']} cells in {r['seconds']:.1f} s", flush=True)
    print(f"\n{'threads':>8}{'cells/min':>11}{'s/cell':>9}{'train steps/s':>15}{'overhead s/cell':>17}")
    for r in runs:
        print(f"{r['threads']:>8}{r['cells_per_minute']:>11.2f}{r['seconds_per_cell']:>9.1f}"
              f"{r['train_steps_per_s']:>15.1f}{r['overhead_s_per_cell']:>17.2f}")
    best = max(runs, key=lambda r: r["cells_per_minute"])
    print(f"\nbest: {best['cells_per_minute']:.2f} cells/minute with {best['threads']} thread(s) "
          f"({args.steps}-step cells)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "ablate_cpu.json"
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "load_average_before": load_before, "load_average_after": os.getloadavg(), "grid": grid}
    out.write_text(json.dumps({"meta": meta, "runs": runs, "best": {k: best[k] for k in (
        "threads", "cells_per_minute", "seconds_per_cell", "train_steps_per_s", "overhead_s_per_cell")}},
        indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
