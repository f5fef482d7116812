"""Compare a data-parallel run with a single-process run of the same global batch.

    python benchmarks/ddp_compare.py RUN_SINGLE RUN_DDP [--json OUT.json]

Prints, and writes as JSON: the world size, whether every process ended with the same weights (the
checksums `studio train` gathers under DDP), the largest weight difference from the single-process
run, the loss curves' largest relative difference, and each run's training tokens/s.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file

from studio.train import read_run


def compare(single: Path, ddp: Path) -> dict:
    a_run, b_run = read_run(single), read_run(ddp)
    a = load_file(str(single / a_run["last_checkpoint"] / "model.safetensors"))
    b = load_file(str(ddp / b_run["last_checkpoint"] / "model.safetensors"))
    max_abs = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    scale = max(float(a[k].float().abs().max()) for k in a)
    la = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    rel = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(la, lb))
    checks = b_run.get("ddp_checksums", [])
    return {
        "world_size": b_run["world_size"], "steps": b_run["step"],
        "ranks_identical": len(checks) == b_run["world_size"] and all(c == checks[0] for c in checks),
        "max_abs_weight_diff": max_abs, "max_weight": scale, "max_rel_loss_diff": rel,
        "single_tokens_per_s": la[-1]["tokens_per_s"], "ddp_tokens_per_s": lb[-1]["tokens_per_s"],
        "final_loss_single": la[-1]["loss"], "final_loss_ddp": lb[-1]["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("single", type=Path)
    parser.add_argument("ddp", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = compare(args.single, args.ddp)
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["torch"] = torch.__version__
    result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    result["gpus"] = torch.cuda.device_count()
    for key, value in result.items():
        print(f"{key:<24} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
