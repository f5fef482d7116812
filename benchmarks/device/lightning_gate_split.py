"""Lightning attention's gate-gradient path on the H200, before and after splitting float32 operands into
two bf16 parts (`kernels/lightning_attention.py` `_split_dot`) instead of running them as float32 with
tf32x3 products. Times forward+backward in bf16 (no gate / a gate without gradient / a gate with gradient)
and measures every gradient's relative RMS error against the float64 oracle on the CUDA test's case.

    python benchmarks/device/lightning_gate_split.py OUT.json [BEFORE.py]

BEFORE.py: the kernel file before the change (`git show REV:kernels/lightning_attention.py`), optional.
"""

import importlib.util
import json
import sys
from pathlib import Path

import torch
import triton

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[2] / "tests")]
import kernels.lightning_attention as after  # noqa: E402
import test_lightning_kernel as checks  # noqa: E402

versions = {"split (after)": after}
if len(sys.argv) > 2:
    spec = importlib.util.spec_from_file_location("lightning_before", sys.argv[2])
    before = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(before)
    versions = {"float32 tf32x3 (before)": before, **versions}


def gradient_errors(module):
    """The relative RMS error of every gradient against the float64 oracle: bf16, D = 128, packed
    sequences and segments (tests/test_lightning_kernel.py::test_bf16_cuda_gate_varlen_segments)."""
    lengths = [700, 64, 1500, 1]
    q, k, v, gate, log_decay, _ = checks.gated_inputs(50, 1, sum(lengths), 2, 128, 1.0)
    h0 = torch.randn(len(lengths), 2, 128, 128, device="cuda", generator=torch.Generator("cuda").manual_seed(5)) * 0.1
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), device="cuda")
    ins = [(q * 0.1).bfloat16(), (k * 0.1).bfloat16(), v.bfloat16(), gate, log_decay, h0]
    leaves = [x.detach().clone().requires_grad_() for x in ins]
    o, state = module.lightning_attention(leaves[0], leaves[1], leaves[2], leaves[4], leaves[5], output_final_state=True,
                                          gate=leaves[3], scale=1.0, cu_seqlens=cu, chunk_size=64, segment_len=256)
    ref = [x.detach().double().requires_grad_() for x in ins]
    g, bounds = ref[3] + ref[4], cu.tolist()
    pieces = [checks.oracle(ref[0][:, a:e], ref[1][:, a:e], ref[2][:, a:e], g[:, a:e], 1.0, ref[5][n:n + 1])
              for n, (a, e) in enumerate(zip(bounds, bounds[1:]))]
    ref_o, ref_state = torch.cat([p[0] for p in pieces], 1), torch.cat([p[1] for p in pieces], 0)
    gen = torch.Generator().manual_seed(99)
    d_o = torch.randn(o.shape, generator=gen).to("cuda", o.dtype)
    d_state = torch.randn(state.shape, generator=gen).to("cuda")
    torch.autograd.backward((o, state), (d_o, d_state))
    torch.autograd.backward((ref_o, ref_state), (d_o.double(), d_state.double()))
    return {name: checks.rel_rms(leaf.grad, r.grad) for name, leaf, r in
            zip(["q", "k", "v", "gate", "log_decay", "h0"], leaves, ref)}


rows = []
for name, module in versions.items():
    row = {"version": name, "errors": gradient_errors(module)}
    for d in (128, 64):
        h = 2048 // d  # d_model 2048
        for t in (2048, 16384):
            b = 65536 // t
            q, k, v = (torch.randn(b, t, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
            log_decay = -(8.0 / h) * torch.arange(h, device="cuda", dtype=torch.float32) * 0.5
            gate = (torch.nn.functional.logsigmoid(torch.randn(b, t, h, device="cuda")) / 16).requires_grad_()
            do = torch.randn_like(q)
            for label, kwargs in (("no_gate", {}), ("gate_no_grad", {"gate": gate.detach()}), ("gate_grad", {"gate": gate})):
                def step():
                    module.lightning_attention(q, k, v, log_decay, **kwargs)[0].backward(do)
                ms = triton.testing.do_bench(step)
                row[f"D{d}_T{t}_{label}_ms"] = ms
                row[f"D{d}_T{t}_{label}_mtok_s"] = b * t / ms / 1e3
    rows.append(row)
    print(json.dumps(row), flush=True)
info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "shape": "bf16, B*T = 65,536, d_model 2048 (H = 2048 / D), forward+backward", "rows": rows}
json.dump(info, open(sys.argv[1], "w"), indent=2)
for key in [k for k in rows[-1] if k.endswith("_ms")]:
    print(f"{key:<32}" + "".join(f"{r[key]:>10.2f}" for r in rows))
for r in rows:
    print(r["version"], {k: f"{v:.1e}" for k, v in r["errors"].items()})
