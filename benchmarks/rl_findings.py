"""Markdown table of an RL credit experiment (`studio rl ... --out DIR`), as docs/findings.md quotes it.

    python benchmarks/rl_findings.py benchmarks/results/rl/h200-countdown-34m [--at-step N]

Every run is compared at the same RL step: N, or by default the last step at which every run has a
held-out evaluation (runs stopped by a time budget reach different steps; comparing each at its own
last step would give some strategies more training). Per strategy: held-out greedy accuracy before and
at step N (mean ± std and per seed), the change, the mean training reward over the first and the last 10
steps up to N, and the rhythm pass's share of the step.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ORDER = ["none", "random", "entropy", "local", "anchor", "coupled"]


def read_runs(exp: Path) -> dict[str, dict[int, list[dict]]]:
    runs: dict[str, dict[int, list[dict]]] = {}
    for metrics in sorted(exp.glob("*/seed*/metrics.jsonl")):
        credit, seed = metrics.parent.parent.name, int(metrics.parent.name.removeprefix("seed"))
        runs.setdefault(credit, {})[seed] = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    return runs


def common_eval_step(runs: dict[str, dict[int, list[dict]]]) -> int:
    steps = [{r["step"] for r in records if "eval_accuracy" in r} for seeds in runs.values() for records in seeds.values()]
    shared = set.intersection(*steps) if steps else set()
    if not shared:
        raise ValueError("no step at which every run has a held-out evaluation")
    return max(shared)


def _fmt(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def table(exp: Path, at_step: int | None = None) -> str:
    runs = read_runs(exp)
    step = at_step if at_step is not None else common_eval_step(runs)
    lines = [f"Compared at RL step {step} (held-out greedy accuracy; every run has an evaluation there).", "",
             "| credit | seeds | accuracy before | at step " + str(step) + " (mean ± std) | per seed | change | "
             "training reward, first 10 -> last 10 steps | rhythm pass (% of step) |",
             "|---|---|---|---|---|---|---|---|"]
    for credit in sorted(runs, key=lambda c: ORDER.index(c) if c in ORDER else len(ORDER)):
        before, after, first, last, overhead = [], [], [], [], []
        for seed in sorted(runs[credit]):
            records = runs[credit][seed]
            evals = {r["step"]: r["eval_accuracy"] for r in records if "eval_accuracy" in r}
            if step not in evals:
                raise ValueError(f"{credit}/seed{seed} has no evaluation at step {step}")
            before.append(evals[0])
            after.append(evals[step])
            rewards = [r["reward"] for r in records if "reward" in r and r["step"] <= step]
            first.append(statistics.mean(rewards[:10]))
            last.append(statistics.mean(rewards[-10:]))
            overhead.extend(r["rhythm_overhead_pct"] for r in records if "rhythm_overhead_pct" in r and r["step"] <= step)
        change = statistics.mean(after) - statistics.mean(before)
        lines.append(f"| {credit} | {len(after)} | {_fmt(before)} | {_fmt(after)} | "
                     f"{' / '.join(f'{a:.2f}' for a in after)} | {change:+.3f} | "
                     f"{statistics.mean(first):.3f} -> {statistics.mean(last):.3f} | {statistics.mean(overhead):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path)
    parser.add_argument("--at-step", type=int, help="compare at this RL step (default: the last shared evaluation)")
    args = parser.parse_args()
    print(table(args.experiment, args.at_step))


if __name__ == "__main__":
    main()
