"""The studio's Triton kernels against flash-linear-attention 0.6.0 and torch SDPA on one GPU.

    python benchmarks/kernels.py [--ops lightning,sliding_window,gated_delta] [--lengths 2048 ... 65536]
                                 [--tune] [--out benchmarks/results/kernels-h200.json]

Every case: B * T = 65,536 tokens, H = 16 heads, head dim 128, bf16, random inputs; forward (under no_grad)
and forward + backward (gradients of every input), each the median of triton.testing.do_bench.

    lightning       ours: kernels.lightning_attention (MiniMax per-head decay, layer 1 of 4);
                    FLA: chunk_lightning_attn (the same decays)
    sliding_window  ours: kernels.sliding_window_attention, window 512; FLA: parallel_attn(window_size=512)
    gated_delta     ours: kernels.gated_delta_rule (L2-normalised q, k; sigmoid beta; log-sigmoid gates);
                    FLA: chunk_gated_delta_rule (refuses on Triton 3.4-3.7 on Hopper: recorded as null)
    sdpa            torch.nn.functional.scaled_dot_product_attention, causal, full (flash backend): the
                    softmax baseline each row carries.

Extra rows (the simple-GLA gate of the lightning kernel against FLA's chunk_simple_gla and chunk_gla) go to
the same file's companion `*-extra.json`. `--tune` first sweeps the lightning kernels' launch settings and
uses the fastest. Prints a table; writes the rows as a JSON list.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

TOKENS, HEADS, DIM, WINDOW = 65_536, 16, 128, 512
LENGTHS = [2048, 4096, 8192, 16384, 32768, 65536]
OPS = ["lightning", "sliding_window", "gated_delta"]


def minimax_log_decay(heads: int, layer_idx: int = 1, n_layers: int = 4) -> torch.Tensor:
    return -(8 / heads * (1 - layer_idx / n_layers)) * torch.arange(heads, dtype=torch.float32)


def make_inputs(op: str, t: int, seed: int = 0) -> dict:
    b = TOKENS // t
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=gen) * scale).to(torch.bfloat16).requires_grad_()

    x = {"q": randn(b, t, HEADS, DIM), "k": randn(b, t, HEADS, DIM), "v": randn(b, t, HEADS, DIM)}
    if op == "gated_delta":
        with torch.no_grad():
            x["q"].copy_(F.normalize(x["q"].float(), dim=-1))
            x["k"].copy_(F.normalize(x["k"].float(), dim=-1))
        x["beta"] = torch.rand(b, t, HEADS, device="cuda", generator=gen).to(torch.bfloat16).requires_grad_()
        x["g"] = F.logsigmoid(torch.randn(b, t, HEADS, device="cuda", generator=gen) + 3).requires_grad_()
    if op == "simple_gla":
        x["g"] = F.logsigmoid(torch.randn(b, t, HEADS, device="cuda", generator=gen) + 3).requires_grad_()
    return x


# ---- the three contenders per op: each returns a callable giving the output tensor ------------------
def ours(op: str, x: dict):
    scale = DIM**-0.5
    if op == "lightning":
        from kernels.lightning_attention import lightning_attention
        ld = minimax_log_decay(HEADS).cuda()
        return lambda: lightning_attention(x["q"], x["k"], x["v"], ld, scale=scale)[0]
    if op == "simple_gla":
        from kernels.lightning_attention import lightning_attention
        return lambda: lightning_attention(x["q"], x["k"], x["v"], gate=x["g"], scale=scale)[0]
    if op == "sliding_window":
        from kernels.sliding_window_attention import sliding_window_attention
        return lambda: sliding_window_attention(x["q"], x["k"], x["v"], WINDOW, scale=scale)
    if op == "gated_delta":
        from kernels.gated_delta_rule import gated_delta_rule
        return lambda: gated_delta_rule(x["q"], x["k"], x["v"], x["beta"], x["g"], scale=scale)[0]
    raise ValueError(op)


def fla(op: str, x: dict):
    scale = DIM**-0.5
    if op == "lightning":
        from fla.ops.lightning_attn import chunk_lightning_attn
        return lambda: chunk_lightning_attn(x["q"], x["k"], x["v"], layer_idx=1, num_layers=4, scale=scale)[0]
    if op == "simple_gla":
        from fla.ops.simple_gla import chunk_simple_gla
        return lambda: chunk_simple_gla(x["q"], x["k"], x["v"], g=x["g"], scale=scale)[0]
    if op == "gla":
        from fla.ops.gla import chunk_gla
        g = x["g"][..., None].expand(*x["q"].shape).contiguous().detach().requires_grad_()
        return lambda: chunk_gla(x["q"], x["k"], x["v"], g, scale=scale)[0]
    if op == "sliding_window":
        from fla.ops.attn import parallel_attn
        return lambda: parallel_attn(x["q"], x["k"], x["v"], scale=scale, window_size=WINDOW)
    if op == "gated_delta":
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        return lambda: chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], scale=scale)[0]
    raise ValueError(op)


def sdpa(op: str, x: dict):
    q, k, v = (x[n].transpose(1, 2) for n in "qkv")
    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


def time_ms(make, x: dict) -> tuple[float, float]:
    """(forward ms under no_grad, forward + backward ms), medians of do_bench."""
    from triton.testing import do_bench
    fn = make()
    leaves = [t for t in x.values() if t.requires_grad]
    with torch.no_grad():
        fwd = do_bench(fn, warmup=25, rep=100, return_mode="median")
    grad = torch.randn_like(fn())

    def fwd_bwd():
        fn().backward(grad)

    both = do_bench(fwd_bwd, warmup=25, rep=100, grad_to_none=leaves, return_mode="median")
    return fwd, both


def attempt(make, x):
    try:
        return time_ms(make, x), None
    except Exception as error:  # FLA's guards, a missing kernel: a null with the reason
        return (None, None), f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"


def agreement(a, b, x) -> float:
    """Relative RMS difference of two implementations' outputs (a sanity check of the comparison)."""
    with torch.no_grad():
        oa, ob = a().float(), b().float()
    return ((oa - ob).pow(2).mean().sqrt() / ob.pow(2).mean().sqrt()).item()


def tune_lightning(t_values=(4096, 65536)) -> dict:
    """Greedy sweep of the lightning kernels' launch settings (per kernel warps/stages, tile, chunk,
    segment length), timing forward + backward; returns and applies the best."""
    import kernels.lightning_attention as lk
    from kernels.lightning_attention import lightning_attention
    ld = minimax_log_decay(HEADS).cuda()
    state = {"chunk": 64, "segment_mult": 1.0}

    def measure():
        total = 0.0
        for t in t_values:
            x = make_inputs("lightning", t)
            seg = None
            if state["segment_mult"] != 1.0:
                from kernels.lightning_attention import _segment_length
                seg = int(_segment_length(TOKENS, HEADS, state["chunk"], torch.device("cuda")) * state["segment_mult"])
            (_, both), err = attempt(lambda: (lambda: lightning_attention(
                x["q"], x["k"], x["v"], ld, chunk_size=state["chunk"], scale=DIM**-0.5, segment_len=seg)[0]), x)
            total += both if both is not None else math.inf
        return total

    log = []
    best = measure()
    log.append(("default", best))
    for kind in ["fwd", "dq", "dk", "dv", "segment"]:
        for warps, stages in [(4, 1), (4, 2), (4, 3), (8, 1), (8, 2), (8, 3)]:
            old = lk.LAUNCH.get(kind)
            lk.LAUNCH[kind] = (warps, stages)
            ms = measure()
            log.append((f"{kind} warps={warps} stages={stages}", ms))
            if ms < best:
                best = ms
            elif old is None:
                del lk.LAUNCH[kind]
            else:
                lk.LAUNCH[kind] = old
    for tile in [32, 128]:
        old = lk.TILE
        lk.TILE = tile
        ms = measure()
        log.append((f"tile={tile}", ms))
        if ms < best:
            best = ms
        else:
            lk.TILE = old
    for key, values in [("chunk", [32, 128]), ("segment_mult", [0.5, 2.0, 4.0])]:
        for value in values:
            old = state[key]
            state[key] = value
            ms = measure()
            log.append((f"{key}={value}", ms))
            if ms < best:
                best = ms
            else:
                state[key] = old
    for name, ms in log:
        print(f"tune  {name:32s} {ms:8.3f} ms (sum over T={list(t_values)})", flush=True)
    chosen = {"launch": dict(lk.LAUNCH), "tile": lk.TILE, **state, "sum_ms": best}
    print("tune  chosen", chosen, flush=True)
    return chosen


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--extra", action="store_true", help="also the simple-GLA gate rows")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/kernels-h200.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/kernels.py needs a CUDA GPU (it compares Triton kernels on one); none is visible")
    import triton
    versions = {"torch": torch.__version__, "triton": triton.__version__, "gpu": torch.cuda.get_device_name()}
    try:
        import fla as fla_package  # not `fla`: that name is this script's FLA runner
        versions["fla"] = fla_package.__version__
    except Exception as error:
        versions["fla"] = f"unavailable ({error})"
    print(versions, flush=True)
    tuned = tune_lightning() if args.tune else None

    rows, extra, notes = [], [], {}
    ops = args.ops.split(",")
    for op in ops:
        for t in args.lengths:
            x = make_inputs(op, t)
            (o_f, o_b), err = attempt(lambda: ours(op, x), x)
            if err:
                notes[f"ours {op} T={t}"] = err
                traceback.print_exc()
            (f_f, f_b), ferr = attempt(lambda: fla(op, x), x)
            if ferr:
                notes[f"fla {op} T={t}"] = ferr
            (s_f, s_b), serr = attempt(lambda: sdpa(op, x), x)
            row = {"op": op, "T": t, "ours_fwdbwd_ms": o_b, "fla_fwdbwd_ms": f_b, "sdpa_fwdbwd_ms": s_b,
                   "ours_fwd_ms": o_f, "fla_fwd_ms": f_f}
            if not err and not ferr and op != "gated_delta":
                row["rel_diff_vs_fla"] = agreement(ours(op, x), fla(op, x), x)
            rows.append(row)
            print(json.dumps(row), flush=True)
            del x
            torch.cuda.empty_cache()
        if args.extra and op == "lightning":
            for t in args.lengths:
                x = make_inputs("simple_gla", t)
                (o_f, o_b), err = attempt(lambda: ours("simple_gla", x), x)
                (f_f, f_b), ferr = attempt(lambda: fla("simple_gla", x), x)
                (g_f, g_b), gerr = attempt(lambda: fla("gla", x), x)
                row = {"op": "simple_gla", "T": t, "ours_fwdbwd_ms": o_b, "fla_simple_gla_fwdbwd_ms": f_b,
                       "fla_chunk_gla_fwdbwd_ms": g_b, "ours_fwd_ms": o_f, "fla_simple_gla_fwd_ms": f_f}
                for name, e in (("ours", err), ("fla simple_gla", ferr), ("fla gla", gerr)):
                    if e:
                        notes[f"{name} T={t}"] = e
                extra.append(row)
                print(json.dumps(row), flush=True)
                del x
                torch.cuda.empty_cache()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    meta = {"versions": versions, "tokens": TOKENS, "heads": HEADS, "dim": DIM, "window": WINDOW,
            "tuned": tuned, "notes": notes, "extra_rows": extra}
    out.with_name(out.stem + "-extra.json").write_text(json.dumps(meta, indent=1) + "\n")

    def mtok(ms):
        return f"{TOKENS / ms / 1e3:6.1f}" if ms else "     -"

    print(f"\n{'op':15s} {'T':>6s} | fwd+bwd Mtok/s: {'ours':>6s} {'FLA':>6s} {'SDPA':>6s} | fwd ms: "
          f"{'ours':>7s} {'FLA':>7s}")
    for r in rows:
        print(f"{r['op']:15s} {r['T']:6d} |                 {mtok(r['ours_fwdbwd_ms'])} {mtok(r['fla_fwdbwd_ms'])} "
              f"{mtok(r['sdpa_fwdbwd_ms'])} |         {r['ours_fwd_ms'] or 0:7.3f} {r['fla_fwd_ms'] or 0:7.3f}")
    for r in extra:
        print(f"{'simple_gla':15s} {r['T']:6d} | ours {mtok(r['ours_fwdbwd_ms'])}  FLA simple_gla "
              f"{mtok(r['fla_simple_gla_fwdbwd_ms'])}  FLA chunk_gla {mtok(r['fla_chunk_gla_fwdbwd_ms'])}")
    for key, value in notes.items():
        print(f"note: {key}: {value}")


if __name__ == "__main__":
    main()
