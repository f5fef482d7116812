"""Markdown tables of finished ablation grids, as docs/findings.md quotes them.

    python benchmarks/ablation_findings.py                       # every grid under benchmarks/results/ablations/
    python benchmarks/ablation_findings.py runs/ablate/minimal_transformer

MQAR accuracy is bimodal at this scale: a run either finds the associative-recall circuit (accuracy near
1) or stays on the ~0.35 plateau, so besides mean ± std over seeds each row gives every seed's value and
how many seeds solved the task (accuracy >= 0.9)."""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.ablate import load_results  # noqa: E402

SOLVED = 0.9


def _mean_std(values: list[float], digits: int) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def grid_table(out_dir: Path) -> str:
    """One markdown table: a row per variant x task, in the grid's order."""
    table = load_results(out_dir)
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in table.rows:
        groups.setdefault((row["variant"], row["task"]), []).append(row)
    lines = [f"**{table.name or out_dir.name}** ({len(table.rows)} of {table.cells_total or '?'} cells)", "",
             "| variant | task | seeds | accuracy | per seed | solved | loss | perplexity |",
             "|---|---|---|---|---|---|---|---|"]
    for (variant, task), rows in groups.items():
        done = [r for r in rows if r.get("accuracy") is not None]
        acc = [r["accuracy"] for r in done]
        ppl = [r["perplexity"] for r in done if r.get("perplexity") is not None]
        per_seed = " / ".join(f"{r['accuracy']:.2f}" for r in sorted(done, key=lambda r: r["seed"]))
        solved = f"{sum(a >= SOLVED for a in acc)}/{len(acc)}" if task.startswith("mqar") else ""
        failed = len(rows) - len(done)
        lines.append(f"| {variant} | {task} | {len(done)}{f' (+{failed} failed)' if failed else ''} | "
                     f"{_mean_std(acc, 3)} | {per_seed} | {solved} | "
                     f"{_mean_std([r['loss'] for r in done], 3)} | {_mean_std(ppl, 2)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", type=Path, help="grid output folders (default: every folder under "
                        "benchmarks/results/ablations/)")
    args = parser.parse_args(argv)
    dirs = args.dirs or sorted(p for p in (ROOT / "benchmarks" / "results" / "ablations").iterdir() if p.is_dir())
    print("\n\n".join(grid_table(d) for d in dirs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
