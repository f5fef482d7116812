"""The `studio` command: mixers, summary, train, eval, runs, analyze, ablate.

Bad input ends with a one-paragraph message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from rich.console import Console
from rich.table import Table


def _table(title: str, header: list[str], rows: list[list[str]], right_from: int = 2) -> Table:
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(header):
        # the first column (a name) never wraps; the others fold when the console is narrow
        table.add_column(name, justify="right" if i >= right_from else "left", no_wrap=i == 0,
                         overflow="ellipsis" if i == 0 else "fold")
    for row in rows:
        table.add_row(*row)
    return table


def mixers_rows() -> tuple[list[str], list[list[str]]]:
    from studio.mixers import REGISTRY

    state = {
        "kv_cache": "KV cache: 2 x kv_heads x d_head x T",
        "window": "KV window: 2 x kv_heads x d_head x min(T, w)",
        "matrix": "matrix: heads x d_head x d_head (constant)",
        "chunk_cache": "chunk summaries: 2 x heads x d_head x T/L",
    }

    def describe(kind: str) -> str:  # combinations such as "window+matrix" list their parts
        return " + ".join(state.get(part, part) for part in kind.split("+"))

    rows = [[name, cls.family, cls.paper, cls.time_complexity, describe(cls.state_kind)]
            for name, cls in sorted(REGISTRY.items())]
    return ["name", "family", "paper", "time (sequence of T)", "inference state"], rows


def cmd_mixers(args) -> int:
    header, rows = mixers_rows()
    if args.json:
        print(json.dumps([dict(zip(header, r)) for r in rows], indent=2))
    else:
        Console(width=max(160, Console().width)).print(_table("Registered token mixers", header, rows, right_from=99))
    return 0


def cmd_summary(args) -> int:
    from studio.spec import ArchSpec
    from studio.summary import summarize, summary_rows

    spec = ArchSpec.load(args.spec)
    summary = summarize(spec, length=args.length, dtype_bytes=args.dtype_bytes)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
        return 0
    header, rows = summary_rows(summary)
    title = (f"{spec.name}: {spec.n_layers} layers, d_model {spec.d_model}, {spec.n_heads} heads "
             f"({spec.n_kv_heads} kv), state in {args.dtype_bytes}-byte numbers")
    Console(width=max(120, Console().width)).print(_table(title, header, rows))
    return 0


def _value(text: str):
    """A --task-args value: JSON when it parses (numbers, true/false, null, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _task_args(pairs: list[str], option: str = "--task-args", example: str = "seq_len=64 num_pairs=8") -> dict:
    """KEY=VALUE pairs of an option (--task-args, --mixer-args) as a dict of parsed values."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"{option} takes key=value pairs, got {pair!r} (e.g. {option} {example})")
        key, value = pair.split("=", 1)
        out[key.strip()] = _value(value)
    return out


def _spec_for(spec: str | None, task) -> "ArchSpec":
    from studio.presets import DEFAULT, PRESETS, preset
    from studio.spec import ArchSpec

    if spec is None or spec in PRESETS:
        return preset(spec or DEFAULT, vocab_size=task.vocab_size)
    return ArchSpec.load(spec)


def cmd_train(args) -> int:
    from studio import tasks
    from studio.train import train

    opts = {k: v for k, v in {
        "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup, "grad_clip": args.grad_clip,
        "eval_every": args.eval_every, "ckpt_every": args.ckpt_every, "seed": args.seed, "device": args.device,
        "stop_at_accuracy": args.stop_at_accuracy, "weight_decay": args.weight_decay,
        "aux_loss_coef": args.aux_loss_coef,
    }.items() if v is not None}
    opts["progress"] = not args.no_progress
    if args.resume:
        out = train(None, None, args.steps, args.out, resume=True, **opts)
    else:
        if args.task is None:
            raise ValueError("--task is required (one of: " + ", ".join(sorted(tasks.REGISTRY)) + ")")
        task = tasks.get(args.task, **_task_args(args.task_args))
        out = train(_spec_for(args.spec, task), task, args.steps, args.out, **opts)
    from studio.train import read_run

    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one report
        run = read_run(out)
        print(json.dumps({"run": str(out), "status": run["status"], **run.get("final", {})}, indent=2))
    return 0


def cmd_eval(args) -> int:
    from studio import tasks
    from studio.model import HybridLM
    from studio.train import evaluate, read_run

    run = read_run(args.run)
    name = args.task or run["task"]["name"]
    task_args = run["task"]["args"] if name == run["task"]["name"] else {}
    task = tasks.get(name, **{**task_args, **_task_args(args.task_args)})
    model = HybridLM.load(args.run)
    print(json.dumps({"run": str(args.run), "task": name, **evaluate(model, task, args.batches, args.batch_size,
                                                                      seed=args.seed)}, indent=2))
    return 0


def cmd_runs(args) -> int:
    from studio.runs import list_runs

    rows = list_runs(args.dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ["run", "task", "mixers", "step", "status", "eval loss", "eval accuracy", "created"]
    table_rows = [[r["name"], r["task"], r["mixers"], f"{r['step']}/{r['steps']}", r["status"],
                   "" if r.get("eval_loss") is None else f"{r['eval_loss']:.4f}",
                   "" if r.get("eval_accuracy") is None else f"{r['eval_accuracy']:.4f}", r["created"]] for r in rows]
    Console(width=max(140, Console().width)).print(_table(f"Runs in {args.dir}", header, table_rows, right_from=3))
    return 0


def cmd_analyze(args) -> int:
    import analyses
    from analyses.report import report_html, rhythm_report
    from studio.checkpoint import atomic_write_text

    if (args.run is None) == (args.pretrained is None):
        raise ValueError("give exactly one of --run DIR or --pretrained smollm2")
    if not args.text.strip():  # checked before any model is loaded
        raise ValueError("--text is empty; give the text (or, with --pretrained, the question) to analyse")
    if args.run is not None:
        from studio.explore import tokenizer_for
        from studio.model import HybridLM

        # a converted / linearized model reads text with the tokenizer saved beside it (tokenizer/)
        model, tokenizer = HybridLM.load(args.run), tokenizer_for(args.run)
        vocab = getattr(tokenizer, "vocab_size", None) or len(tokenizer)
        if vocab > model.spec.vocab_size:
            raise ValueError(f"the run's vocab_size {model.spec.vocab_size} is smaller than its tokenizer's "
                             f"{vocab}; analyze it from Python with token ids of its task")
        prompt, text = "", args.text
    else:
        from studio.pretrained import chat_prompt, load_smollm2

        model, tokenizer = load_smollm2()
        prompt = chat_prompt(tokenizer, args.text)
        text = None
    model.eval()
    import torch

    if text is None:  # the pretrained model answers, and the answer is analysed
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        ids = model.generate(torch.tensor([prompt_ids]), args.max_new_tokens, stop_token=tokenizer.eos_token_id)[0]
        response_start = len(prompt_ids)
        labels = [tokenizer.decode([int(i)]) for i in ids]
    else:
        ids = torch.tensor(tokenizer.encode(text))
        response_start = args.response_start or 0
        labels = [tokenizer.decode([int(i)]) for i in ids]
    if len(ids) < 2 or response_start >= len(ids):
        raise ValueError(f"{len(ids)} tokens with response_start={response_start}: nothing to analyse")
    r = analyses.rhythm(model, ids, response_start)
    report = rhythm_report(r, labels)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    if args.html:
        atomic_write_text(args.html, report_html(r, labels))
    print(json.dumps({"out": args.out, "html": args.html, "tokens": len(labels), "response_start": response_start,
                      "preplan": len(report["preplan"]), "anchors": len(report["anchors"])}, indent=2))
    return 0


def _mean_std(row: dict, metric: str) -> str:
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if mean is None:
        return ""
    digits = 2 if metric == "perplexity" else 4
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def set_threads(threads: int | None) -> None:
    """--threads: torch's CPU threads for this process (None: torch's choice)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def cmd_ablate(args) -> int:
    from studio.ablate import CellsFailed, load_grid, run_grid

    grid = load_grid(args.grid)
    cells = grid.cells()
    if args.dry_run:
        print(json.dumps({"grid": grid.name, "variants": list(grid.variants), "tasks": [t.label for t in grid.tasks],
                          "seeds": grid.seeds, "cells": [c.name for c in cells]}, indent=2))
        return 0
    set_threads(args.threads)
    shard = None
    if args.shard:
        index, _, count = args.shard.partition("/")
        if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
            raise ValueError(f"--shard must be I/N with 0 <= I < N, e.g. 0/4, got {args.shard!r}")
        shard = (int(index), int(count))
    if args.workers is not None:
        if args.workers < 1 or shard is not None or args.max_cells is not None:
            raise ValueError("--workers needs a count >= 1 and goes without --shard and --max-cells")
        failure = _ablate_workers(args)
        args.max_cells = 0  # below: only collect the workers' cells into the tables and figures
    else:
        failure = None
    try:
        table = run_grid(grid, args.out, progress=not args.no_progress, max_cells=args.max_cells,
                         device=args.device, shard=shard)
    except CellsFailed as err:  # the table of what finished still prints
        table, failure = err.table, err
    summary = table.summary()
    metrics = [m for m in grid.metrics if any(r.get(f"{m}_mean") is not None for r in summary)]
    header = ["variant", "task", "n", *(f"{m} (mean ± std)" for m in metrics), "params", "s / cell"]
    rows = [[r["variant"], r["task"], str(r["n"]) + (f" ({r['failed']} diverged)" if r["failed"] else ""),
             *(_mean_std(r, m) for m in metrics), "" if r.get("params") is None else f"{r['params']:,}",
             "" if r.get("seconds_mean") is None else f"{r['seconds_mean']:.1f}"] for r in summary]
    title = f"{grid.name}: {len(table)} of {len(cells)} cells done ({len(grid.seeds)} seed(s) each)"
    Console(width=max(140, Console().width)).print(_table(title, header, rows, right_from=2))
    print(f"results: {args.out}/results.csv, {args.out}/summary.csv, {args.out}/results.json")
    if table.figures:
        print(f"figures: {args.out}/figures/ ({', '.join(sorted(table.figures))})")
    if not table.complete:
        print(f"{len(cells) - len(table)} cell(s) left: run the same command again to continue")
    if failure is not None:
        raise failure
    return 0


def cmd_rl(args) -> int:
    from studio.rl.experiment import run_experiment

    set_threads(args.threads)
    opts = {k: v for k, v in {
        "prompts_per_step": args.prompts_per_step, "group_size": args.group_size,
        "max_new_tokens": args.max_new_tokens, "inner_steps": args.inner_steps, "lr": args.lr,
        "eval_every": args.eval_every, "eval_prompts": args.eval_prompts, "ckpt_every": args.ckpt_every,
        "credit_signs": args.credit_signs,
    }.items() if v is not None}
    credits = [c.strip() for c in args.credit.split(",") if c.strip()]
    summary = run_experiment(args.out, credits, args.seeds, args.steps, task=args.task,
                             task_args=_task_args(args.task_args), init=args.init, spec=_rl_spec(args.spec),
                             warmup_steps=args.warmup_steps, device=args.device, progress=not args.no_progress,
                             loss=args.loss, only_seed=args.only_seed, **opts)
    header = ["credit", "runs", "final accuracy (mean ± std)", "per seed", "rhythm pass (% of step)"]
    rows = []
    for credit, entry in summary["strategies"].items():
        mean, std = entry["accuracy_mean"], entry["accuracy_std"]
        rows.append([credit, str(entry["n"]), "" if mean is None else f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else ""),
                     " / ".join(f"{a:.2f}" for a in entry["accuracies"]),
                     "" if entry["rhythm_overhead_pct"] is None else f"{entry['rhythm_overhead_pct']:.1f}"])
    Console(width=max(120, Console().width)).print(_table(f"studio rl {args.task} ({args.loss})", header, rows))
    print(f"summary: {args.out}/summary.json, {args.out}/summary.csv; figures: {args.out}/figures/")
    return 0


def cmd_linearize(args) -> int:
    from studio.linearize import LINEARIZE_FILE, LoraSettings, read_linearize_run, run_linearize

    set_threads(args.threads)
    try:
        keep = [int(i) for i in args.keep_softmax.replace(" ", "").split(",") if i not in ("", "none")]
    except ValueError:
        raise ValueError(f"--keep-softmax {args.keep_softmax!r}: give layer indices separated by commas, e.g. "
                         "1,15,29 (or 'none')") from None
    lora = LoraSettings(rank=args.lora_rank, alpha=args.lora_alpha,
                        targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()))
    opts = {k: v for k, v in {"batch_size": args.batch_size, "lr": args.lr, "eval_every": args.eval_every,
                              "ckpt_every": args.ckpt_every, "seed": args.seed}.items() if v is not None}
    finished_before = (os.path.isfile(os.path.join(args.out, LINEARIZE_FILE))
                       and read_linearize_run(args.out).get("status") == "finished")
    mixer_params = _task_args(args.mixer_args, "--mixer-args", "window=64 short_conv=0") or None
    record = run_linearize(args.out, args.source, args.mixer, keep, mixer_params=mixer_params,
                           lora=lora, corpus=args.corpus, seq_len=args.seq_len, tokenizer=args.tokenizer,
                           steps=args.steps, device=args.device, progress=not args.no_progress, **opts)
    if finished_before:
        print(f"studio linearize: {args.out} was finished already; nothing was trained. Its report:", file=sys.stderr)
    print(json.dumps({"run": str(args.out), "status": record["status"],
                      "model": os.path.join(str(args.out), record["model"]) if "model" in record else None,
                      **{k: record["report"][k] for k in ("replaced_layers", "reused_params", "new_params")},
                      "trainable": record["trainable"], **record.get("trainer", {}).get("final", {})}, indent=2))
    return 0


def _rl_spec(spec: str | None):
    """--spec for the warm-up: a preset name or a spec file (None: the experiment's default)."""
    if spec is None:
        return None
    from studio.presets import PRESETS, preset
    from studio.spec import ArchSpec

    return preset(spec, vocab_size=258) if spec in PRESETS else ArchSpec.load(spec)


def _ablate_workers(args) -> RuntimeError | None:
    """Run `args.workers` shards of the grid as child processes (one torch thread each unless --threads)
    and wait for them; returns the error naming the failed workers, if any (their finished cells are kept,
    and the other workers ran to the end)."""
    import subprocess

    base = [sys.executable, "-m", "studio", "ablate", args.grid, "--out", args.out, "--device", args.device,
            "--no-progress", "--threads", str(args.threads or 1)]
    children = [subprocess.Popen([*base, "--shard", f"{i}/{args.workers}"]) for i in range(args.workers)]
    failed = [f"{i}/{args.workers}" for i, child in enumerate(children) if child.wait() != 0]
    if failed:
        return RuntimeError(f"ablation worker(s) {', '.join(failed)} failed (messages above); finished cells are "
                            "kept: run the same command again to continue")
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="studio", description="Hybrid Attention Studio")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("mixers", help="list the registered token mixers")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_mixers)
    p = sub.add_parser("summary", help="parameters, FLOPs per token and decoding memory of a spec")
    p.add_argument("spec", help="a spec file (.json, .yaml or .yml)")
    p.add_argument("--length", type=int, default=4096, help="sequence length for FLOPs per token (default 4096)")
    p.add_argument("--dtype-bytes", type=int, default=2, help="bytes per stored number (default 2: bf16)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("train", help="train a model on a task (works under torchrun for DDP)")
    p.add_argument("--spec", help="a spec file or a preset name (default: small-softmax)")
    p.add_argument("--task", help="mqar, needle, copy, selective_copy, arithmetic or text")
    p.add_argument("--task-args", nargs="*", default=[], metavar="KEY=VALUE", help="task arguments, e.g. seq_len=64")
    p.add_argument("--steps", type=int, required=True, help="total optimizer steps")
    p.add_argument("--out", required=True, help="run directory (e.g. runs/NAME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    for flag, kind in (("--batch-size", int), ("--lr", float), ("--warmup", int), ("--grad-clip", float),
                       ("--eval-every", int), ("--ckpt-every", int), ("--seed", int), ("--weight-decay", float),
                       ("--stop-at-accuracy", float), ("--aux-loss-coef", float)):
        p.add_argument(flag, type=kind)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's model on a task")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--task", help="task name (default: the run's task)")
    p.add_argument("--task-args", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=4321)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("analyze", help="preplan/anchor rhythm of a text (arXiv 2510.13554) as JSON and HTML")
    p.add_argument("--run", help="a run or model directory; read with its tokenizer/ folder (converted and "
                   "linearized models), else its task's tokenizer, else bytes")
    p.add_argument("--pretrained", choices=["smollm2"], help="SmolLM2-135M-Instruct answers --text, then is analysed")
    p.add_argument("--text", required=True, help="the text to analyse (with --pretrained: the question)")
    p.add_argument("--response-start", type=int, default=0, help="first response position (with --run)")
    p.add_argument("--max-new-tokens", type=int, default=96, help="answer length (with --pretrained)")
    p.add_argument("--out", required=True, help="report.json path")
    p.add_argument("--html", help="report.html path")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("rl", help="RL fine-tuning with anchor-aware credit: warm-up, then credit strategies x seeds")
    p.add_argument("--task", default="countdown", choices=["countdown", "addition"])
    p.add_argument("--task-args", nargs="*", default=[], metavar="KEY=VALUE", help="e.g. count=3 largest=10")
    p.add_argument("--credit", default="coupled", help="one strategy or a comma list: none, random, entropy, local, "
                   "anchor, coupled")
    p.add_argument("--loss", default="cispo", choices=["grpo", "dapo", "cispo"])
    p.add_argument("--seeds", type=int, default=1, help="seeds per strategy (0..N-1)")
    p.add_argument("--only-seed", type=int, help="run only seed K of --seeds (several processes can share one --out, "
                   "one seed each; the summary covers every finished run)")
    p.add_argument("--steps", type=int, required=True, help="RL steps per run")
    p.add_argument("--out", required=True, help="experiment directory (resumable: the same command continues it)")
    p.add_argument("--init", help="start from this model or run directory, or 'smollm2' (the converted "
                   "SmolLM2-135M-Instruct with its tokenizer), instead of a fresh model")
    p.add_argument("--spec", help="spec file or preset for the warm-up model (default: 4 layers, lightning + softmax)")
    p.add_argument("--warmup-steps", type=int, help="supervised steps on worked demonstrations before RL "
                   "(default 1500 for a fresh model, 0 with --init)")
    for flag, kind in (("--prompts-per-step", int), ("--group-size", int), ("--max-new-tokens", int),
                       ("--inner-steps", int), ("--lr", float), ("--eval-every", int), ("--eval-prompts", int),
                       ("--ckpt-every", int)):
        p.add_argument(flag, type=kind)
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest for small models on a busy machine)")
    p.add_argument("--credit-signs", choices=["both", "positive"], help="scale both advantage signs (default) or "
                   "only A >= 0 (the paper's v1)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_rl)

    p = sub.add_parser("linearize", help="turn a pretrained softmax model into a hybrid (Liger / Lizard style) and "
                       "fine-tune it with LoRA on local text; rerun to resume")
    p.add_argument("--from", dest="source", required=True, help="'smollm2', or a studio model / run directory, or "
                   "a local Hugging Face Llama folder")
    p.add_argument("--mixer", required=True, choices=["liger", "lizard", "gla", "gated_delta"])
    p.add_argument("--keep-softmax", required=True, help="layers that stay softmax, e.g. 1,15,29 ('none': none)")
    p.add_argument("--out", required=True, help="run directory (e.g. runs/NAME); the same command again resumes it")
    p.add_argument("--steps", type=int, default=200, help="fine-tuning steps (default 200)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=int, help="sequences per step (default 2)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--corpus", default="pydoc", help="pydoc, shakespeare or a text file (default pydoc)")
    p.add_argument("--tokenizer", choices=["smollm2", "bytes"], help="the text's tokenizer (default: smollm2 "
                   "for --from smollm2, else bytes)")
    p.add_argument("--mixer-args", nargs="*", default=[], metavar="KEY=VALUE", help="the new layers' mixer "
                   "parameters, e.g. window=64 short_conv=0")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj", help="linear layers given adapters "
                   "(default: the attention projections of every layer)")
    for flag in ("--eval-every", "--ckpt-every", "--seed"):
        p.add_argument(flag, type=int)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_linearize)

    p = sub.add_parser("ablate", help="train a grid of variants x tasks x seeds (resumable) into tidy results + figures")
    p.add_argument("grid", help="a grid file (.yaml or .json; see docs/ablations.md)")
    p.add_argument("--out", required=True, help="results folder (e.g. results/NAME); rerun to resume")
    p.add_argument("--max-cells", type=int, help="train at most N cells in this call (finished cells do not count)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 is fastest for "
                   "small models on a shared CPU, see docs/ablations.md)")
    p.add_argument("--dry-run", action="store_true", help="check the grid and list its cells; train nothing")
    p.add_argument("--workers", type=int, help="train the cells in N parallel processes (e.g. many small models "
                   "on one GPU), then collect the tables and figures")
    p.add_argument("--shard", help="I/N: train only cells I, I+N, I+2N, ... (what each --workers process runs)")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("runs", help="list runs with their final metrics")
    p.add_argument("--dir", default="runs", help="directory holding run directories (default: runs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:  # SpecError is a ValueError
        print(f"studio {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command not in ("ablate", "linearize"):
            raise
        print(f"studio {args.command}: interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
