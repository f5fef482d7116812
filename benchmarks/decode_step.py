"""One decoding step of the recurrent mixers: the torch reference step vs the fused Triton kernel
(kernels/decode_step.py), bf16 q, k, v, H = 16, D = 128, B in {1, 8, 64}, on CUDA.

    python benchmarks/decode_step.py [--device-name h200] [--batches 1 8 64] [--heads 16] [--dim 128]

ops:      decay_linear  S = lambda_h S + k v^T, o = S^T q   (torch: Lightning.recurrent_step, its float64
                        log-decay buffer cast per call, as the mixer runs it)
          gated_delta   S = alpha S, S += beta k (v - S^T k)^T, o = S^T q   (torch: delta_rule_step)
columns:  torch bf16      the reference in the model's dtype, state in bf16 (what the mixers do today)
          torch fp32 S    the reference with q, k, v upcast and a float32 state (the kernel's numerics)
          kernel          decay_linear_step / gated_delta_step, new float32 state
          kernel inplace  the same with inplace=True (no state allocation)
Times: triton.testing.do_bench medians (L2 flushed between runs), microseconds, after a warm-up call that
also autotunes. GB/s: the kernel's bytes moved (float32 state read and written, q, k, v, o) over its time.
rel err: RMS of kernel - float64 reference over RMS of the reference, on the same bf16 inputs.
Prints a table; writes benchmarks/results/decode-step-<device name>.json.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its files would shadow packages
# (benchmarks/analyses.py vs analyses/): put the repository root first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The torch side is the mixers' own step: keep them off the kernels they would dispatch to on CUDA.
os.environ["STUDIO_KERNELS"] = "reference"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("torch_bf16", "torch_fp32_state", "kernel", "kernel_inplace")


def inputs(b: int, h: int, d: int, seed: int = 0) -> SimpleNamespace:
    """bf16 q, k (unit-norm, as Gated DeltaNet's), v [B, H, D]; float32 state [B, H, D, D]; a MiniMax-style
    per-head log decay [H] (float64, as Lightning's buffer); bf16 beta in (0, 1) and log alpha < 0 [B, H]."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    kw = dict(device="cuda", generator=gen)
    q = torch.randn(b, h, d, **kw).bfloat16()
    k = torch.nn.functional.normalize(torch.randn(b, h, d, **kw), dim=-1).bfloat16()
    v = torch.randn(b, h, d, **kw).bfloat16()
    state = torch.randn(b, h, d, d, **kw) * 0.1
    log_decay = -(8.0 / h) * 0.5 * torch.arange(h, device="cuda", dtype=torch.float64)
    beta = torch.rand(b, h, **kw).bfloat16()
    log_alpha = (-torch.rand(b, h, **kw) * 0.5).bfloat16()
    return SimpleNamespace(q=q, k=k, v=v, state=state, log_decay=log_decay, beta=beta, log_alpha=log_alpha)


def reference_step(op: str, x: SimpleNamespace, dtype: torch.dtype, state: torch.Tensor):
    """The torch step on q, k, v, beta, alpha cast to `dtype` (the state is passed in that dtype)."""
    from kernels.reference.delta_rule import delta_rule_step
    from studio.mixers.lightning import Lightning

    q, k, v = (t.to(dtype) for t in (x.q, x.k, x.v))
    if op == "decay_linear":
        mixer = SimpleNamespace(log_decay=x.log_decay)
        return lambda: Lightning.recurrent_step(mixer, q, k, v, state)
    beta, log_alpha = x.beta.to(dtype), x.log_alpha.to(dtype)
    return lambda: delta_rule_step(q, k, v, beta, log_alpha, state)


def kernel_step(op: str, x: SimpleNamespace, state: torch.Tensor, inplace: bool):
    from kernels.decode_step import decay_linear_step, gated_delta_step

    if op == "decay_linear":
        return lambda: decay_linear_step(x.q, x.k, x.v, state, x.log_decay, inplace=inplace)
    return lambda: gated_delta_step(x.q, x.k, x.v, x.beta, x.log_alpha, state, inplace=inplace)


def rel_err(out, ref) -> float:
    out, ref = out.double(), ref.double()
    return float((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())


def kernel_bytes(b: int, h: int, d: int) -> int:
    """float32 state read and written, bf16 q, k, v read and o written (scalars left out)."""
    return b * h * (2 * d * d * 4 + 4 * d * 2)


def tuned_config(op: str) -> str | None:
    import kernels.decode_step as module

    kernel = module._DECAY_LINEAR if op == "decay_linear" else module._GATED_DELTA
    config = getattr(kernel, "best_config", None)
    return None if config is None else str(config)


def run_case(op: str, b: int, h: int, d: int) -> dict:
    import triton.testing

    x = inputs(b, h, d)
    steps = {
        "torch_bf16": reference_step(op, x, torch.bfloat16, x.state.bfloat16()),
        "torch_fp32_state": reference_step(op, x, torch.float32, x.state.clone()),
        "kernel": kernel_step(op, x, x.state, inplace=False),
        "kernel_inplace": kernel_step(op, x, x.state.clone(), inplace=True),
    }
    with torch.inference_mode():
        ref_o, ref_state = reference_step(op, x, torch.float64, x.state.double())()
        out, new_state = steps["kernel"]()  # warm-up: compiles and autotunes
        row = {"op": op, "B": b, "H": h, "D": d, "config": tuned_config(op),
               "rel_err_o": rel_err(out, ref_o), "rel_err_state": rel_err(new_state, ref_state)}
        for method, fn in steps.items():
            fn()  # warm-up (the in-place kernel: tunes on a scratch state, then runs)
            torch.cuda.synchronize()
            row[f"{method}_us"] = 1e3 * triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    row["speedup_vs_torch_bf16"] = row["torch_bf16_us"] / row["kernel_us"]
    row["speedup_vs_torch_fp32_state"] = row["torch_fp32_state_us"] / row["kernel_us"]
    row["kernel_gb_s"] = kernel_bytes(b, h, d) / (row["kernel_us"] * 1e-6) / 1e9
    row["kernel_inplace_gb_s"] = kernel_bytes(b, h, d) / (row["kernel_inplace_us"] * 1e-6) / 1e9
    return row


def versions() -> dict:
    import triton

    return {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device-name", default="h200", help="names the result file: decode-step-<name>.json")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128, help="head dim (d_k = d_v)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/decode_step.py times Triton kernels on a CUDA GPU, and this machine has none "
                 "(the kernels' correctness is tested on the CPU by tests/test_decode_step_kernel.py)")

    rows = []
    print(f"{'op':<13} {'B':>3} {'torch bf16':>11} {'torch fp32 S':>13} {'kernel':>9} {'inplace':>9} "
          f"{'x bf16':>7} {'x fp32':>7} {'GB/s':>7} {'rel err o/S':>17}  (microseconds)")
    for op in ("decay_linear", "gated_delta"):
        for b in args.batches:
            row = run_case(op, b, args.heads, args.dim)
            rows.append(row)
            print(f"{op:<13} {b:>3} {row['torch_bf16_us']:>11.1f} {row['torch_fp32_state_us']:>13.1f} "
                  f"{row['kernel_us']:>9.1f} {row['kernel_inplace_us']:>9.1f} {row['speedup_vs_torch_bf16']:>7.1f} "
                  f"{row['speedup_vs_torch_fp32_state']:>7.1f} {row['kernel_gb_s']:>7.0f} "
                  f"{row['rel_err_o']:>8.1e}/{row['rel_err_state']:.1e}", flush=True)
            torch.cuda.empty_cache()

    record = {
        "benchmark": "decode_step", "device": args.device_name, "machine": torch.cuda.get_device_name(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions(),
        "settings": {"heads": args.heads, "head_dim": args.dim, "batches": args.batches, "dtype": "bfloat16",
                     "state_dtype_kernel": "float32", "timer": "triton.testing.do_bench median, rep=200 ms",
                     "methods": list(METHODS)},
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"decode-step-{args.device_name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
