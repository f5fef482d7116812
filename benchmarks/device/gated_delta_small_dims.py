"""Issue 7: the gated delta kernels on the GPU at small head dims, bf16 inputs against the float32 torch
reference (kernels.reference.chunked_delta_rule) on the same bf16-rounded inputs: outputs and every input
gradient, relative RMS. Rows "as shipped" (half precision below HALF_MIN_CUDA_HEAD_DIM runs the float32
kernels) and, with --forced, "bf16 kernels" (that threshold set to 0: the case it guards against; one process
per call, since it can fault). Usage: gated_delta_small_dims.py OUT.jsonl [--forced D T]."""

import json
import sys

import torch
import torch.nn.functional as F

import kernels.gated_delta_rule as gdr
from kernels.reference.delta_rule import chunked_delta_rule


def case(d, t, gate, seed=0):
    gen = torch.Generator().manual_seed(seed)
    b, h = 2, 4
    q, k = (F.normalize(torch.randn(b, t, h, d, generator=gen), dim=-1) for _ in range(2))
    v = torch.randn(b, t, h, d, generator=gen)
    beta = torch.rand(b, t, h, generator=gen).sigmoid()
    log_alpha = F.logsigmoid(torch.randn(b, t, h, generator=gen) * 2) / 4 if gate else None
    h0 = torch.randn(b, h, d, d, generator=gen) * 0.5
    do, dh = torch.randn(b, t, h, d, generator=gen), torch.randn(b, h, d, d, generator=gen)
    ins = [x.to("cuda", torch.bfloat16) for x in (q, k, v, beta)] + \
          [None if log_alpha is None else log_alpha.cuda(), h0.cuda()]
    errs = {}
    grads = []
    for dtype in (torch.bfloat16, torch.float32):
        leaves = [None if x is None else x.detach().to(dtype if i < 4 else torch.float32).requires_grad_()
                  for i, x in enumerate(ins)]
        if dtype == torch.bfloat16:
            o, s = gdr.gated_delta_rule(*leaves[:5], scale=d**-0.5, initial_state=leaves[5],
                                        output_final_state=True)
        else:
            args = [x.transpose(1, 2) for x in leaves[:4]] + [None if leaves[4] is None else leaves[4].transpose(1, 2)]
            o, s = chunked_delta_rule(*args, 64, leaves[5])
            o = o.transpose(1, 2) * d**-0.5
        torch.autograd.backward((o, s), (do.to("cuda", o.dtype), dh.cuda()))
        grads.append([o, s] + [None if x is None else x.grad for x in leaves])
    names = ["o", "final_state", "dq", "dk", "dv", "dbeta", "dlog_alpha", "dh0"]
    for name, x, ref in zip(names, *grads):
        if x is not None:
            x, ref = x.detach().double(), ref.detach().double()
            errs[name] = round(((x - ref).norm() / ref.norm()).item(), 5)
    return errs


out = open(sys.argv[1], "a")
if "--forced" in sys.argv:
    gdr.HALF_MIN_CUDA_HEAD_DIM = 0
    d, t = int(sys.argv[-2]), int(sys.argv[-1])
    grid = [(d, t, True), (d, t, False)]
    label = "bf16 kernels"
else:
    grid = [(d, t, gate) for d in (16, 32, 64, 128) for t in (64, 200, 2048) for gate in (True, False)]
    label = "as shipped"
for d, t, gate in grid:
    row = {"run": label, "D": d, "T": t, "gate": "mixed" if gate else None}
    try:
        row.update(case(d, t, gate))
    except Exception as err:  # noqa: BLE001
        row["error"] = f"{type(err).__name__}: {str(err)[:150]}"
    print(json.dumps(row), flush=True)
    out.write(json.dumps(row) + "\n")
    if "error" in row:
        break
