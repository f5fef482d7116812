"""Latency of the app's Explore tab at 256 tokens: the default model and SmolLM2-135M-Instruct.

    python benchmarks/app.py [--tokens 256] [--repeats 5]

Starts the app in this process on a free loopback port, then calls its /explore endpoint through
gradio_client (what a press of Analyse costs, server and serialisation included) and, for comparison,
`studio.explore` directly. Median of --repeats calls after one warm-up (which loads the model).
Prints a table; writes benchmarks/results/app.json. Target (issue 5): <= 1 s for the default model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PASSAGE = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
           "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
           "it was the season of Darkness, it was the spring of hope, it was the winter of despair. ") * 8


def text_of(tokens: int, tokenizer) -> str:
    """The longest prefix of PASSAGE that is exactly `tokens` tokens (or just under) for this tokenizer."""
    ids = tokenizer.encode(PASSAGE)[:tokens]
    text = tokenizer.decode(ids)
    while len(tokenizer.encode(text)) > tokens:
        text = text[:-1]
    return text


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: loads the model, fills caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import app
    from gradio_client import Client

    from studio import explore as ex
    from studio.defaults import DefaultModels
    from studio.pretrained import load_smollm2, smollm2_available
    from studio.tasks.tokenizers import ByteTokenizer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.build_app(runs_dir=tempfile.mkdtemp(prefix="bench-app-runs-"))
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)

    models = [("tiny-hybrid (default)", ByteTokenizer()), ("tiny-softmax (default)", ByteTokenizer())]
    if smollm2_available():
        models.append((ex.SMOLLM2_LABEL, load_smollm2()[1]))
    rows = []
    try:
        for label, tokenizer in models:
            text = text_of(args.tokens, tokenizer)
            n = len(tokenizer.encode(text))

            def through_app():
                out = client.predict("", label, "text", text, 64, 0, None, api_name="/explore")
                if "Cannot explore" in out[0] or "went wrong" in out[0]:
                    raise RuntimeError(out[0])

            source = ex.model_sources([], DefaultModels().paths())[label]

            def direct():
                model, tok = ex.load_source(source)
                exploration = ex.explore(model, ex.make_sequence(model, tok, source, text))
                ex.views(model, exploration, 0)

            row = {"model": label, "tokens": n, "app_s": median_seconds(through_app, args.repeats),
                   "direct_s": median_seconds(direct, args.repeats)}
            rows.append(row)
            print(f"  {label:<38} {n:>5} tokens  app {row['app_s']:.3f} s  direct {row['direct_s']:.3f} s", flush=True)
    finally:
        demo.close()

    print(f"\n{'model':<38} {'tokens':>7} {'via /explore (s)':>17} {'studio.explore (s)':>19}")
    for r in rows:
        print(f"{r['model']:<38} {r['tokens']:>7} {r['app_s']:>17.3f} {r['direct_s']:>19.3f}")
    record = {"benchmark": "app-explore-latency", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch_threads": torch.get_num_threads(),
              "versions": {"python": platform.python_version(), "torch": torch.__version__,
                           "gradio": __import__("gradio").__version__},
              "settings": {"tokens": args.tokens, "repeats": args.repeats, "layer": 0, "mode": "text"},
              "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "app.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULTS / 'app.json'}")


if __name__ == "__main__":
    main()
