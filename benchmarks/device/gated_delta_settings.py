"""Issue 7: forward+backward time of the gated delta kernels (bf16, B*T = 65,536, H = 16, D = 128, gate on)
with `_chunk_bwd`'s launch settings varied, to pick between the two that compute dW right (one stage, or
BV 128 with no loop). Prints one JSON line per setting (median ms of triton.testing.do_bench)."""

import json

import torch
import torch.nn.functional as F
import triton.testing

import kernels.gated_delta_rule as gdr

H, D = 16, 128
base = dict(gdr.CONFIG["chunk_bwd"])
for T in (2048, 16384):
    B = 65536 // T
    q, k, v = (F.normalize(torch.randn(B, T, H, D, device="cuda"), dim=-1).to(torch.bfloat16).requires_grad_()
               for _ in range(3))
    beta = torch.rand(B, T, H, device="cuda").to(torch.bfloat16).requires_grad_()
    la = (F.logsigmoid(torch.randn(B, T, H, device="cuda")) / 16).requires_grad_()
    d_o = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)
    for label, change in {"stages 1, BV 64": {"num_stages": 1, "BV": 64},
                          "stages 2, BV 64 (wrong dW)": {"num_stages": 2, "BV": 64},
                          "stages 1, BV 128": {"num_stages": 1, "BV": 128},
                          "stages 2, BV 128": {"num_stages": 2, "BV": 128}}.items():
        gdr.CONFIG["chunk_bwd"] = {**base, **change}

        def step():
            o, _ = gdr.gated_delta_rule(q, k, v, beta, la, scale=D**-0.5, chunk_size=64)
            o.backward(d_o)

        ms = triton.testing.do_bench(step, warmup=25, rep=200)
        print(json.dumps({"T": T, "chunk_bwd": label, "fwdbwd_ms": round(ms, 3),
                          "Mtok_s": round(65536 / ms / 1e3, 2)}), flush=True)
gdr.CONFIG["chunk_bwd"] = base
