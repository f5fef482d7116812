"""One layer's preplan/anchor analysis (head spans, head groups, WAAD, FAI; arXiv 2510.13554),
materialised vs streaming, time and peak extra memory over sequence length.

    python benchmarks/analyses.py [--device cpu|cuda] [--lengths 1024 ... 32768] [--heads 16] [--dim 64]

materialised: the layer's causal softmax pattern [1, H, T, T] in float32 (scores from float32 q, k), then analyses.metrics
              (head_span, head_groups, waad and fai of the group-mean patterns), as analyses.rhythm does.
streaming:    analyses.streaming.streaming_softmax_stats from q and k (the Triton kernel on CUDA, the
              block-wise torch reference on the CPU), then the group means of the per-head series, as
              analyses.streaming_rhythm does. Never forms a T x T tensor.

Peak extra memory: on CUDA torch's max_memory_allocated above what q and k hold; on the CPU the peak
resident set (VmHWM, reset through /proc/self/clear_refs) above the resident set after q and k exist,
each case in a fresh child process. The materialised path is skipped where it would need more than
--max-materialised-gib. Prints a table; writes benchmarks/results/analyses-<device>.json and merges the
rows into benchmarks/results/analyses.json (one entry per device).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path, and this file would shadow the
# `analyses` package: put the repository root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

from analyses.metrics import fai, head_groups, head_span, waad  # noqa: E402
from analyses.streaming import streaming_softmax_stats  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GIB = 2**30


def inputs(heads: int, length: int, dim: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random post-RoPE queries and keys [1, H, T, D]: bf16 on CUDA, float32 on the CPU."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    gen = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(1, heads, length, dim, device=device, dtype=dtype, generator=gen)
    k = torch.randn(1, heads, length, dim, device=device, dtype=dtype, generator=gen)
    return q, k


def group_series(spans: torch.Tensor, waad_heads: torch.Tensor, fai_heads: torch.Tensor):
    """Head groups from one layer's spans [H]; WAAD of the local group, FAI of the global group."""
    local, global_ = head_groups(spans[None], 0.3)
    return waad_heads[local[:, 1]].mean(0), fai_heads[global_[:, 1]].mean(0)


def materialised(q: torch.Tensor, k: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    n = q.shape[2]
    q, k = q.float(), k.float()  # float32 scores, as the streaming kernels accumulate them
    scores = (q @ k.transpose(-1, -2)) * scale
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    pattern = scores.masked_fill_(~causal, float("-inf")).softmax(-1)[0]  # [H, T, T]
    del scores
    spans = head_span(pattern)
    local, global_ = head_groups(spans[None], 0.3)
    return waad(pattern[local[:, 1]].mean(0)), fai(pattern[global_[:, 1]].mean(0))


def streaming(q: torch.Tensor, k: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    stats = streaming_softmax_stats(q, k, scale, block=512)  # the tile of the torch reference (CPU)
    return group_series(stats["span"][0], stats["waad"][0], stats["fai"][0])


METHODS = {"materialised": materialised, "streaming": streaming}


def materialised_gib(heads: int, length: int) -> float:
    """The float32 scores and the pattern, both [H, T, T], live at once."""
    return 2 * heads * length * length * 4 / GIB


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_case(method: str, heads: int, length: int, dim: int, device: str, repeats: int) -> dict:
    """Time and peak extra memory of one method at one length, in this process."""
    q, k = inputs(heads, length, dim, device)
    scale = dim**-0.5
    fn = METHODS[method]
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM)
        base = _rss_kib("VmRSS") * 1024
    out = fn(q, k, scale)  # warm-up (compiles Triton kernels on the first call) and the memory peak
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_kib("VmHWM") * 1024 - base
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(q, k, scale)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"method": method, "T": length, "ms": 1e3 * statistics.median(times), "peak_extra_gib": peak / GIB,
            "waad": out[0].float().cpu().tolist(), "fai": out[1].float().cpu().tolist()}


def run_case_in_child(method: str, args, length: int) -> dict:
    """A fresh process per CPU case, so that one case's peak resident set is not another's."""
    cmd = [sys.executable, __file__, "--child", method, "--heads", str(args.heads), "--dim", str(args.dim),
           "--device", args.device, "--repeats", str(repeats_for(args, length)), "--lengths", str(length)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{method} at T={length} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def repeats_for(args, length: int) -> int:
    return args.repeats if length <= 4096 else 1


def versions() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="default: 1K..32K on the CPU, 1K..131,072 on CUDA")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=None, help="head dim (default 64 on the CPU, 128 on CUDA)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (1 above T=4096)")
    parser.add_argument("--max-materialised-gib", type=float, default=None,
                        help="skip the materialised path above this estimate (default 8 on the CPU, 100 on CUDA)")
    parser.add_argument("--child", choices=sorted(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dim = args.dim or (128 if args.device == "cuda" else 64)
    if args.child:
        row = run_case(args.child, args.heads, args.lengths[0], args.dim, args.device, args.repeats)
        print(json.dumps(row))
        return
    lengths = args.lengths or ([1024, 2048, 4096, 8192, 16384, 32768] if args.device == "cpu"
                               else [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072])
    cap = args.max_materialised_gib or (8.0 if args.device == "cpu" else 100.0)

    rows = []
    for length in lengths:
        results = {}
        for method in METHODS:
            if method == "materialised" and materialised_gib(args.heads, length) > cap:
                rows.append({"method": method, "T": length, "ms": None, "peak_extra_gib": None,
                             "skipped": f"needs ~{materialised_gib(args.heads, length):.0f} GiB > {cap:g} GiB"})
                continue
            if args.device == "cpu":
                row = run_case_in_child(method, args, length)
            else:
                row = run_case(method, args.heads, length, args.dim, args.device, repeats_for(args, length))
                torch.cuda.empty_cache()
            results[method] = row
            rows.append(row)
            print(f"  {method:<13} T={length:>7}  {row['ms']:10.1f} ms  {row['peak_extra_gib']:8.3f} GiB", flush=True)
        if len(results) == 2:  # both ran: the numbers agree
            for key in ("waad", "fai"):
                a, b = (torch.tensor(results[m][key]) for m in METHODS)
                results["streaming"][f"max_abs_diff_{key}"] = float((a - b).abs().max())
    for row in rows:
        row.pop("waad", None)
        row.pop("fai", None)

    print(f"\n{'T':>8} {'materialised ms':>16} {'GiB':>8} {'streaming ms':>13} {'GiB':>8} {'max |diff| WAAD/FAI':>22}")
    for length in lengths:
        mat, stream = (next(r for r in rows if r["T"] == length and r["method"] == m) for m in METHODS)
        mat_ms = "skipped" if mat["ms"] is None else f"{mat['ms']:.1f}"
        mat_gib = "-" if mat["ms"] is None else f"{mat['peak_extra_gib']:.3f}"
        diff = (f"{stream['max_abs_diff_waad']:.1e} / {stream['max_abs_diff_fai']:.1e}"
                if "max_abs_diff_waad" in stream else "-")
        print(f"{length:>8} {mat_ms:>16} {mat_gib:>8} {stream['ms']:>13.1f} {stream['peak_extra_gib']:>8.3f} {diff:>22}")

    record = {
        "benchmark": "analyses", "device": args.device, "machine": machine(args.device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions(),
        "settings": {"batch": 1, "heads": args.heads, "head_dim": args.dim,
                     "dtype": "bfloat16" if args.device == "cuda" else "float32", "waad_window": 10,
                     "h_lo": 10, "h_hi": 100, "head_group_quantile": 0.3, "repeats": args.repeats},
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"analyses-{args.device}.json").write_text(json.dumps(record, indent=2) + "\n")
    merged_path = RESULTS / "analyses.json"
    merged = json.loads(merged_path.read_text()) if merged_path.exists() else {}
    merged[args.device] = record
    merged_path.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"wrote {RESULTS / f'analyses-{args.device}.json'} and {merged_path}")


if __name__ == "__main__":
    main()
