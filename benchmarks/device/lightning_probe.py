"""A first look at kernels/lightning_attention.py on the H200 (issue 7 starts here): forward and
forward+backward time against FLA's chunk_lightning_attn and the torch reference, bf16, B*T = 65,536,
H = 16, D = 128. Prints rows; not yet the issue's benchmarks/kernels.py."""

import json
import sys

import torch
import triton.testing

from kernels.lightning_attention import lightning_attention
from kernels.reference.decay_linear_attention import chunked_decay_linear_attention

H, D = 16, 128
rows = []
for T in (2048, 8192, 32768):
    B = 65536 // T
    q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    log_decay = -(8.0 / H) * torch.arange(H, device="cuda", dtype=torch.float32) * 0.5
    do = torch.randn_like(q)

    chunk = int(sys.argv[2]) if len(sys.argv) > 2 else 64

    def ours():
        return lightning_attention(q, k, v, log_decay, chunk_size=chunk)[0]

    def fwdbwd(fn):
        def run():
            out = fn()
            out.backward(do)
        return run

    row = {"T": T, "B": B, "chunk": chunk}
    row["ours_fwd_ms"] = triton.testing.do_bench(ours)
    row["ours_fwdbwd_ms"] = triton.testing.do_bench(fwdbwd(ours))
    try:
        from fla.ops.lightning_attn import chunk_lightning_attn

        def fla():
            return chunk_lightning_attn(q, k, v, layer_idx=4, num_layers=8)[0]

        row["fla_fwd_ms"] = triton.testing.do_bench(fla)
        row["fla_fwdbwd_ms"] = triton.testing.do_bench(fwdbwd(fla))
    except Exception as err:  # noqa: BLE001
        row["fla_error"] = f"{type(err).__name__}: {err}"[:200]
    for key in [k for k in row if k.endswith("_ms")]:
        row[key.replace("_ms", "_mtok_s")] = B * T / row[key] / 1e3
    rows.append(row)
    print(json.dumps(row), flush=True)
json.dump(rows, open(sys.argv[1], "w"), indent=2)
