"""A linearized model against its teacher: held-out perplexity, recovery, recall and decoding cost (CPU).

    python benchmarks/linearize_eval.py --teacher smollm2 [--run runs/NAME ...] [--windows 32] [--seq-len 256]
        [--corpus shakespeare] [--lengths 256 1024 2048] [--depths 0.1 0.5 0.9] [--trials 2] [--facts 4]
        [--decode-lengths 2048 8192] [--new-tokens 16] [--skip-recall] [--skip-decode] [--skip-untrained]
        [--threads 1] [--name NAME] [--out benchmarks/results/linearize-NAME.json]

Models: the teacher (`--teacher smollm2`: SmolLM2-135M-Instruct from `studio.pretrained`, or a model folder
with its tokenizer/), and per `--run` (a `studio linearize` run directory, or a model folder) the fine-tuned
model (the run's merged model/, read with `HybridLM.load` / `studio.explore.tokenizer_for`) and, unless
--skip-untrained, the converted model before fine-tuning, rebuilt from the teacher with
`studio.linearize.linearize(teacher, mixer, keep_softmax)` as the run's linearize.json records it.

Measurements (`studio.lm_metrics`): perplexity on --windows fixed windows of --seq-len tokens of the corpus'
held-out 5%; recovery of the gap between the untrained conversion and the teacher (on loss, the headline,
and on perplexity); needle-in-a-haystack recall per prompt length; state bytes and decoding tokens/s after a
prefill of each --decode-lengths. Prints one table and writes JSON with the machine, date and versions.
Budget on a 2-core CPU with the defaults: about 3.5 minutes for the teacher (most of it the 8K prefill and the
2K recall prompts), more per linearized run (two models, and the reference linear mixers prefill slower).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, sys.path[0] is benchmarks/, whose analyses.py would shadow the analyses package.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

from studio import lm_metrics  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def load_teacher(which: str):
    """(model, tokenizer, tokenizer name for the held-out split or the tokenizer itself)."""
    if which == "smollm2":
        from studio.pretrained import load_smollm2

        model, tokenizer = load_smollm2()
        return model.eval(), tokenizer, "smollm2"
    from studio.explore import tokenizer_for
    from studio.model import HybridLM

    tokenizer = tokenizer_for(which)
    return HybridLM.load(which).eval(), tokenizer, tokenizer


def run_settings(run: Path) -> dict:
    """The linearize.json settings of a run ({} for a plain model folder or an unreadable record)."""
    record = run / "linearize.json"
    if not record.is_file():
        return {}
    try:
        data = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError) as err:
        print(f"  {run}: linearize.json unreadable ({err}); the untrained model is skipped", flush=True)
        return {}
    settings = data.get("settings") if isinstance(data, dict) else None
    return settings if isinstance(settings, dict) else {}


def untrained_model(teacher, settings: dict):
    """The converted model before fine-tuning, or None when the record does not say how to build it."""
    mixer, keep = settings.get("mixer"), settings.get("keep_softmax")
    if not isinstance(mixer, str) or not isinstance(keep, list):
        return None
    from studio.linearize import linearize

    seed = (settings.get("train") or {}).get("seed", 0)
    return linearize(teacher, mixer, keep, settings.get("mixer_params") or None, seed=seed).eval()


def measure(label: str, model, tokenizer, ppl_tokenizer, args) -> dict:
    row: dict = {"model": label, "spec": model.spec.name,
                 "mixers": sorted({type(block.attn).name for block in model.blocks})}
    ppl = lm_metrics.perplexity(model, ppl_tokenizer, args.corpus, seq_len=args.seq_len, windows=args.windows,
                                batch_size=args.batch_size)
    row["perplexity"] = ppl
    print(f"  {label}: ppl {ppl['ppl']:.2f} (loss {ppl['loss']:.4f}, {ppl['windows']} windows x {args.seq_len}) "
          f"in {ppl['seconds']:.1f} s", flush=True)
    if not args.skip_recall:
        recall = lm_metrics.recall_probe(model, tokenizer, args.lengths, args.depths, args.trials, args.facts,
                                         args.corpus, args.template, args.seed)
        row["recall"] = recall
        per = ", ".join(f"{n}: {a:.2f}" for n, a in recall["by_length"].items())
        print(f"  {label}: recall {recall['accuracy']:.2f} ({per}) in {recall['seconds']:.1f} s", flush=True)
    if not args.skip_decode:
        row["decode"] = {}
        for length in args.decode_lengths:
            cost = lm_metrics.decode_cost(model, length, args.new_tokens, args.repeats)
            row["decode"][length] = cost
            print(f"  {label}: decode after {length}: state {cost['state_bytes'] / 2**20:.1f} MiB, "
                  f"{cost['decode_tokens_per_s']:.1f} tok/s (prefill {cost['prefill_s']:.1f} s)", flush=True)
    return row


def table(rows: list[dict], args) -> str:
    header = ["model", "ppl", "loss", "recovery (loss)", "recovery (ppl)"]
    if not args.skip_recall:
        header += [f"recall@{n}" for n in args.lengths]
    if not args.skip_decode:
        for n in args.decode_lengths:
            header += [f"state@{n} MiB", f"tok/s@{n}"]
    lines = []
    for r in rows:
        rec = r.get("recovery") or {}
        cells = [r["model"], f"{r['perplexity']['ppl']:.2f}", f"{r['perplexity']['loss']:.4f}",
                 f"{rec['loss']:.1f}%" if "loss" in rec else "", f"{rec['ppl']:.1f}%" if "ppl" in rec else ""]
        if not args.skip_recall:
            cells += [f"{r['recall']['by_length'][n]:.2f}" for n in args.lengths]
        if not args.skip_decode:
            for n in args.decode_lengths:
                cost = r["decode"][n]
                cells += [f"{cost['state_bytes'] / 2**20:.1f}", f"{cost['decode_tokens_per_s']:.1f}"]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    out += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
            for cells in lines]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="smollm2", help="'smollm2' or a model folder with a tokenizer/")
    parser.add_argument("--run", action="append", default=[], type=Path, help="a linearized run or model folder "
                        "(repeatable)")
    parser.add_argument("--corpus", default="shakespeare", help="held-out text: shakespeare, pydoc or a file")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--windows", type=int, default=32, help="perplexity windows (evenly spread)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048], help="recall prompt lengths")
    parser.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    parser.add_argument("--trials", type=int, default=2, help="recall prompts per length and depth")
    parser.add_argument("--facts", type=int, default=4, help="facts planted per prompt (one is asked)")
    parser.add_argument("--template", choices=list(lm_metrics.TEMPLATES), default="auto",
                        help="recall prompt: chat turn, plain completion, or auto (chat when the tokenizer has "
                        "a template)")
    parser.add_argument("--decode-lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-recall", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--skip-untrained", action="store_true", help="do not rebuild the untrained conversion")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on a busy 2-core machine "
                        "two threads made decoding 4-6x slower, OpenMP threads waiting on a descheduled peer)")
    parser.add_argument("--name", help="results name (default: the runs' names, or 'teacher')")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/linearize-NAME.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.name or ("+".join(r.resolve().name for r in args.run) or "teacher")
    out = args.out or RESULTS / f"linearize-{name}.json"
    started = time.perf_counter()

    print(f"teacher {args.teacher}; {torch.get_num_threads()} threads", flush=True)
    teacher, teacher_tokenizer, teacher_ppl_tokenizer = load_teacher(args.teacher)
    rows = [measure("teacher", teacher, teacher_tokenizer, teacher_ppl_tokenizer, args)]
    teacher_ppl = rows[0]["perplexity"]["ppl"]
    for run in args.run:
        from studio.explore import tokenizer_for
        from studio.model import HybridLM

        settings = run_settings(run)
        tokenizer = tokenizer_for(run)
        ppl_tokenizer = settings.get("tokenizer") if isinstance(settings.get("tokenizer"), str) else (
            teacher_ppl_tokenizer)
        print(f"\n{run}: {settings.get('mixer', '?')} keeping softmax {settings.get('keep_softmax', '?')}", flush=True)
        untrained = None if args.skip_untrained else untrained_model(teacher, settings)
        untrained_row = None
        if untrained is not None:
            untrained_row = measure(f"{run.name} untrained", untrained, tokenizer, ppl_tokenizer, args)
            rows.append(untrained_row)
            del untrained
        finetuned = HybridLM.load(run).eval()
        row = measure(f"{run.name} fine-tuned", finetuned, tokenizer, ppl_tokenizer, args)
        row["run"], row["settings"] = str(run), settings
        if untrained_row is not None:
            u = untrained_row["perplexity"]["ppl"]
            row["recovery"] = {on: lm_metrics.recovery(teacher_ppl, u, row["perplexity"]["ppl"], on=on)
                               for on in ("loss", "ppl")}
        rows.append(row)
        del finetuned

    print("\n" + table(rows, args))
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": "cpu",
            "machine": platform.processor() or platform.machine(), "platform": platform.platform(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "teacher": args.teacher, "runs": [str(r) for r in args.run], "corpus": args.corpus,
            "seq_len": args.seq_len, "windows": args.windows, "lengths": args.lengths, "depths": args.depths,
            "trials": args.trials, "facts": args.facts, "template": args.template,
            "decode_lengths": args.decode_lengths, "new_tokens": args.new_tokens, "seed": args.seed,
            "seconds": time.perf_counter() - started,
            "recovery": "100 * (m(untrained) - m(fine-tuned)) / (m(untrained) - m(teacher)); m = loss (headline) "
                        "or perplexity (studio.lm_metrics.recovery)"}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out} ({meta['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
