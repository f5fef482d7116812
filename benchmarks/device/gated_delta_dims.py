"""Issue 7 probe: the gated delta kernels on the GPU at small head dims (the ablation grids' d_head 16) with
many chunks per sequence, which the CUDA tests (D = 128) do not cover. Usage: gated_delta_dims.py D DTYPE;
prints one JSON line per case (errors against the float32 reference), or the exception with the kernel that
raised it (run with CUDA_LAUNCH_BLOCKING=1 so the fault is reported at its launch)."""

import json
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # the test modules import kernel_testing
from test_gated_delta_kernel import _cuda_inputs, make_inputs, rel_err, run_both

d, dtype = int(sys.argv[1]), getattr(torch, sys.argv[2])
for t in (64, 200, 2048):
    for gate in ("mixed", None):
        row = {"D": d, "dtype": sys.argv[2], "T": t, "gate": gate}
        try:
            if dtype == torch.bfloat16:
                inputs = _cuda_inputs(20, 2, t, 4, d, gate, True)
            else:
                inputs = make_inputs(20, 2, t, 4, d, d, gate, True, device="cuda")
            results = run_both(inputs, scale=d**-0.5, chunk_size=64, ref_dtype=torch.float32)
            row.update({key: round(rel_err(x, ref), 5) for key, (x, ref) in results.items()})
        except Exception as err:  # noqa: BLE001
            frames = [f"{f.name}:{f.lineno}" for f in traceback.extract_tb(err.__traceback__)][-4:]
            row["error"] = f"{type(err).__name__}: {str(err)[:160]} at {frames}"
            print(json.dumps(row), flush=True)
            sys.exit(1)
        print(json.dumps(row), flush=True)
