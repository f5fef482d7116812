"""Forward throughput of every registered mixer, alone (projections included), on this machine.

    python benchmarks/mixer_throughput.py [--device cpu|cuda] [--lengths 256 1024 4096]

Prints a table (tokens/s, median of --repeats runs after a warm-up) and writes
benchmarks/results/mixer_throughput-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from studio.mixers import REGISTRY, MixerShape

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    shape = MixerShape(d_model=args.d_model, n_heads=args.heads, n_kv_heads=args.heads, d_head=args.d_model // args.heads)
    rows = []
    for name, cls in sorted(REGISTRY.items()):
        mixer = cls(shape).to(args.device, dtype).eval()
        for length in args.lengths:
            x = torch.randn(args.batch, length, args.d_model, device=args.device, dtype=dtype)
            with torch.no_grad():
                seconds = timed(lambda: mixer(x), args.repeats, args.device)
            rows.append({"mixer": name, "T": length, "seconds": seconds, "tokens_per_s": args.batch * length / seconds})
    print(f"{'mixer':<16}" + "".join(f"{'T=' + str(t):>14}" for t in args.lengths) + "   (tokens/s, forward)")
    for name in sorted(REGISTRY):
        cells = [r["tokens_per_s"] for r in rows if r["mixer"] == name]
        print(f"{name:<16}" + "".join(f"{c:>14,.0f}" for c in cells))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"mixer_throughput-{args.device}.json"
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": args.device,
            "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "dtype": str(dtype), "d_model": args.d_model, "heads": args.heads,
            "batch": args.batch}
    if args.device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name()
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
