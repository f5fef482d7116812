"""Issue 7 probe: the Triton kernels in bf16 on the GPU at small head dims (8-32, the ablation grids' sizes),
which the CUDA tests (D >= 64) did not cover. Usage: small_head_dims.py OP D [PRECISION]; OP lightning,
sliding_window or gated_delta; PRECISION overrides the bf16 dot precision ("tf32" as shipped, "ieee").
Prints one JSON line: the test helper's verdict (its assertion message lists the errors over tolerance)."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # the test modules import kernel_testing

op, d = sys.argv[1], int(sys.argv[2])
precision = sys.argv[3] if len(sys.argv) > 3 else None
row = {"op": op, "D": d, "precision": precision or "as shipped"}
try:
    if op == "lightning":
        import kernels.lightning_attention as mod
        from tests.test_lightning_kernel import check_against_reference, make_inputs
        if precision:
            mod.DOT_PRECISION[torch.bfloat16] = precision
        q, k, v, _, h0 = make_inputs(16, 2, 301, 4, d, d, "mixed", True, dtype=torch.bfloat16)
        log_decay = torch.tensor([0.0, -0.05, -0.5, -4.0], device="cuda")
        check_against_reference(q * 0.25, k * 0.25, v, log_decay, h0, 64, tol=1e-2)
    elif op == "sliding_window":
        from tests.test_sliding_window_kernel import GPU_TOL, check, make_inputs
        q, k, v, do = make_inputs(d, 1, 1536, 4, 2, d, dtype=torch.bfloat16)
        check(q, k, v, do, 300, tol=GPU_TOL)
    else:
        import kernels.gated_delta_rule as mod
        from tests.test_gated_delta_kernel import _cuda_inputs, assert_close, run_both
        if precision:
            mod.DOT_PRECISION[torch.bfloat16] = precision
        for t in (64, 200):
            assert_close(run_both(_cuda_inputs(20, 2, t, 4, d, "mixed", True), scale=d**-0.5, chunk_size=64,
                                  ref_dtype=torch.float32), tol=2e-2)
    row["verdict"] = "pass"
except AssertionError as err:
    row["verdict"] = "FAIL " + str(err).split("\n")[0][:300]
except Exception as err:  # noqa: BLE001
    row["verdict"] = f"ERROR {type(err).__name__}: {str(err)[:200]}"
print(json.dumps(row), flush=True)
