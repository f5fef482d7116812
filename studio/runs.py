"""Run directories written by `studio.train`: list them and read their records."""

from __future__ import annotations

from pathlib import Path

from studio.train import read_run


def list_runs(directory: str | Path = "runs") -> list[dict]:
    """One summary per run directory under `directory` (newest first); unreadable runs are listed
    with status 'corrupt' and the reason instead of being skipped silently."""
    root = Path(directory)
    if not root.is_dir():
        return []
    rows = []
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir() and (p / "run.json").exists()):
        try:
            run = read_run(run_dir)
        except (ValueError, OSError) as err:
            rows.append({"name": run_dir.name, "path": str(run_dir), "task": "", "mixers": "", "step": 0, "steps": 0,
                         "status": "corrupt", "error": str(err), "created": ""})
            continue
        final = run.get("final") or {}
        mixers = sorted({layer["mixer"] for layer in run["spec"]["layers"]})
        rows.append({
            "name": run_dir.name, "path": str(run_dir), "task": run["task"]["name"], "mixers": "+".join(mixers),
            "step": run.get("step", 0), "steps": run.get("steps", 0), "status": run.get("status", "?"),
            "eval_loss": final.get("eval_loss"), "eval_accuracy": final.get("eval_accuracy"),
            "created": run.get("created", ""),
        })
    return sorted(rows, key=lambda r: r["created"], reverse=True)
