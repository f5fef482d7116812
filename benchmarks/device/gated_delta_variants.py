"""Issue 7 probe, second step: gated_delta_trace.py showed `_chunk_bwd` alone getting dW = -dV_new S^T wrong
on the H200 in bf16 (relative error 0.11-0.14, in d_k columns 0-31 and 64-95 of each 64-wide tile; dq,
computed from the same loaded S tile, is right). This runs the failing test case with variants of that
kernel (source edits, launch settings) and prints, per variant, dW's error against a float32 replay of the
same kernel on the same inputs and the end-to-end errors against the float32 reference. JSON to argv[1].
PROBE_D sets the head dim (default 128), PROBE_T the length (default 2048)."""

import importlib.util
import inspect
import json
import os
import sys
import tempfile
import textwrap

import kernels.gated_delta_rule as gdr
from benchmarks.device.gated_delta_trace import ORIGINAL, _inputs, rel, rel_err, replay, run, run_both

import torch

SOURCE = textwrap.dedent(inspect.getsource(ORIGINAL["_chunk_bwd_kernel"].fn))
LOAD_S = "_mat_t(states_ptr + ch * BKF * BVF, offs_k, offs_v, BVF)"
EDITS = {
    "original": [],
    "reload S for dW": [("dw = tl.dot(dvn, state_t, dw,", f"dw = tl.dot(dvn, {LOAD_S}.to(dt), dw,")],
    "dW before dq": [("        dq = tl.dot(do, state_t, dq, input_precision=PRECISION)\n", ""),
                     ("        dw = tl.dot(dvn, state_t, dw, input_precision=PRECISION)\n",
                      "        dw = tl.dot(dvn, state_t, dw, input_precision=PRECISION)\n"
                      "        dq = tl.dot(do, state_t, dq, input_precision=PRECISION)\n")],
    "dg_state from own loads": [
        ("dg_state += tl.sum(state_t.to(tl.float32) * dstate_t.to(tl.float32), 0)",
         f"dg_state += tl.sum({LOAD_S}.to(tl.float32) * "
         "_mat_t(dstates_ptr + ch * BKF * BVF, offs_k, offs_v, BVF).to(tl.float32), 0)")],
    "dvn as float32 accumulator-free": [("dw = tl.dot(dvn, state_t, dw,", "dw += tl.dot(dvn, state_t,")],
}
# (The source edits above run with CONFIG as shipped: before the fix that was 2 stages, now 1.)
SETTINGS = {"stages 2 (before the fix)": {"num_stages": 2}, "stages 1": {"num_stages": 1}, "BV 128": {"BV": 128},
            "warps 8": {"num_warps": 8}, "BK 128": {"BK": 128}}


def build(name, edits):
    src = SOURCE
    for old, new in edits:
        assert old in src, (name, old)
        src = src.replace(old, new)
    header = ("import triton\nimport triton.language as tl\nfrom kernels.gated_delta_rule import "
              "_chunk_info, _decay_matrix, _mat, _mat_store, _mat_t, _tok_store, _tok_tile, _tok_tile_t\n\n")
    path = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False, dir="/tmp").name
    with open(path, "w") as f:
        f.write(header + src)
    spec = importlib.util.spec_from_file_location(f"variant_{abs(hash(name))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._chunk_bwd_kernel


def measure(label, gate):
    inputs = _inputs(gate, int(os.environ.get("PROBE_T", "2048")))
    log = {}
    gen = torch.Generator().manual_seed(7)
    cot = (torch.randn(inputs[2].shape, generator=gen, dtype=torch.float64).to(inputs[0].device),
           torch.randn(inputs[5].shape, generator=gen, dtype=torch.float64).to(inputs[0].device))
    run(inputs, inputs[0].dtype, log, cot)
    dw = log["_chunk_bwd_kernel"]["dw_ptr"]
    redone = replay("_chunk_bwd_kernel", log["launch:_chunk_bwd_kernel"])["dw_ptr"]
    results = run_both(inputs, scale=128**-0.5, chunk_size=64, ref_dtype=torch.float32)
    row = {"variant": label, "gate": gate, "dW_alone": rel(dw, redone),
           **{key: rel_err(x, ref) for key, (x, ref) in results.items()}}
    print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return row


if __name__ == "__main__":
    rows = []
    base_conf = dict(gdr.CONFIG["chunk_bwd"])
    for name, edits in EDITS.items():
        try:
            kernel = build(name, edits)
            ORIGINAL["_chunk_bwd_kernel"] = kernel
            gdr._chunk_bwd_kernel = kernel
            for gate in (None, "mixed"):
                rows.append(measure(name, gate))
        except Exception as err:  # noqa: BLE001
            rows.append({"variant": name, "error": f"{type(err).__name__}: {err}"[:400]})
            print(rows[-1], flush=True)
    original = build("original", [])
    ORIGINAL["_chunk_bwd_kernel"] = gdr._chunk_bwd_kernel = original
    for name, change in SETTINGS.items():
        gdr.CONFIG["chunk_bwd"] = {**base_conf, **change}
        try:
            rows.append(measure(name, None))
        except Exception as err:  # noqa: BLE001
            rows.append({"variant": name, "error": f"{type(err).__name__}: {err}"[:400]})
            print(rows[-1], flush=True)
    gdr.CONFIG["chunk_bwd"] = base_conf
    with open(sys.argv[1], "w") as f:
        json.dump(rows, f, indent=1)
