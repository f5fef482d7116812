"""Issue 7 probe on the H200: why does the gated delta kernel's no-decay variant get dk / dbeta wrong in
bf16 at T = 2048 (tests/test_gated_delta_kernel.py::test_bf16_cuda[2-2048-True-None])? Runs that case with
one change at a time to `_wy_bwd_dk` (warps, d_k tile, stages) or to the dot precision of bf16 inputs, and
prints every output's relative RMS error against the float32 reference. Then times lightning attention
forward+backward in bf16 with and without a per-token gate that needs gradients (the float32-operand
path). Writes JSON to argv[1]."""

import json
import sys

import torch
import triton.testing

import kernels.gated_delta_rule as gdr
from kernels.lightning_attention import lightning_attention
from tests.test_gated_delta_kernel import _cuda_inputs, rel_err, run_both

rows = []
base_config = {name: dict(conf) for name, conf in gdr.CONFIG.items()}
base_precision = dict(gdr.DOT_PRECISION)
variants = {
    "baseline": ({}, None),
    "wy_bwd_dk warps 8": ({"wy_bwd_dk": {"num_warps": 8}}, None),
    "wy_bwd_dk warps 2": ({"wy_bwd_dk": {"num_warps": 2}}, None),
    "wy_bwd_dk BK 128": ({"wy_bwd_dk": {"BK": 128}}, None),
    "wy_bwd_dk stages 2": ({"wy_bwd_dk": {"num_stages": 2}}, None),
    "bf16 dots tf32x3": ({}, "tf32x3"),
    "bf16 dots ieee": ({}, "ieee"),
}
for gate in (None, "mixed"):
    for name, (change, precision) in variants.items():
        for kernel, conf in base_config.items():
            gdr.CONFIG[kernel] = {**conf, **change.get(kernel, {})}
        gdr.DOT_PRECISION.clear()
        gdr.DOT_PRECISION.update(base_precision)
        if precision:
            gdr.DOT_PRECISION[torch.bfloat16] = precision
        row = {"variant": name, "gate": gate}
        try:
            inputs = _cuda_inputs(20, 2, 2048, 4, 128, gate, True)
            results = run_both(inputs, scale=128**-0.5, chunk_size=64, ref_dtype=torch.float32)
            row.update({key: rel_err(x, ref) for key, (x, ref) in results.items()})
            dk, ref = (t.detach().float() for t in results["dk"])
            cols = ((dk - ref).pow(2).sum((0, 1, 2)) / ref.pow(2).sum((0, 1, 2))).sqrt()
            row["dk_cols_0_31"] = cols[:32].mean().item()
            row["dk_cols_32_63"] = cols[32:64].mean().item()
        except Exception as err:  # noqa: BLE001
            row["error"] = f"{type(err).__name__}: {err}"[:300]
        rows.append(row)
        print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
for kernel, conf in base_config.items():
    gdr.CONFIG[kernel] = conf
gdr.DOT_PRECISION.update(base_precision)

H, D = 16, 128
for T in (2048, 16384):
    B = 65536 // T
    q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    log_decay = -(8.0 / H) * torch.arange(H, device="cuda", dtype=torch.float32) * 0.5
    gate = (torch.nn.functional.logsigmoid(torch.randn(B, T, H, device="cuda")) / 16).requires_grad_()
    do = torch.randn_like(q)
    row = {"T": T, "B": B}
    for label, kwargs in (("no_gate", {}), ("gate_no_grad", {"gate": gate.detach()}), ("gate_grad", {"gate": gate})):
        def step():
            lightning_attention(q, k, v, log_decay, **kwargs)[0].backward(do)
        row[label + "_fwdbwd_ms"] = triton.testing.do_bench(step)
        row[label + "_mtok_s"] = B * T / row[label + "_fwdbwd_ms"] / 1e3
    rows.append(row)
    print(json.dumps(row), flush=True)
json.dump(rows, open(sys.argv[1], "w"), indent=2)
