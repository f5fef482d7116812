"""Issue 7 probe: where does the gated delta kernel lose accuracy in bf16 without decay? Runs the failing
case (tests/test_gated_delta_kernel.py::test_bf16_cuda[2-2048-True-None]) twice through the same kernels:
once in bf16, once in float32 on the same (bf16-rounded) inputs. Every kernel launch is recorded (its tensor
arguments copied after it ran), and each intermediate buffer of the bf16 run is compared with the float32
run's: relative RMS error per buffer, and per d_k column block for the d_k-shaped ones. The first buffer
whose error jumps past bf16 rounding (about 3e-3) is where to look. Writes JSON to argv[1]."""

import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import kernels.gated_delta_rule as gdr

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # the test modules import kernel_testing
from test_gated_delta_kernel import _cuda_inputs, make_inputs, rel_err, run_both

KERNELS = ["_wy_fwd_kernel", "_state_fwd_kernel", "_output_fwd_kernel", "_dv_local_kernel",
           "_state_bwd_kernel", "_chunk_bwd_kernel", "_wy_bwd_da_kernel", "_wy_bwd_dk_kernel"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class Recorder:
    """Stands in for a JIT kernel: launches it, then keeps a float64 copy of every tensor argument."""

    def __init__(self, name, kernel, log):
        self.name, self.kernel, self.log = name, kernel, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            bound = dict(zip(self.kernel.arg_names, args)) | kwargs
            before = {key: val.detach().clone() for key, val in bound.items() if isinstance(val, torch.Tensor)}
            self.kernel[grid](*args, **kwargs)
            self.log[self.name] = {key: val.detach().double().cpu() for key, val in bound.items()
                                   if isinstance(val, torch.Tensor) and val.dtype.is_floating_point}
            self.log["launch:" + self.name] = (grid, args, kwargs, before)
        return launch


def run(inputs, dtype, log, cotangents):
    for name in KERNELS:
        setattr(gdr, name, Recorder(name, ORIGINAL[name], log))
    leaves = [None if x is None else x.detach().to(dtype if i < 4 else x.dtype).requires_grad_()
              for i, x in enumerate(inputs)]
    o, state = gdr.gated_delta_rule(*leaves[:5], scale=128**-0.5, initial_state=leaves[5],
                                    output_final_state=True, chunk_size=64)
    ((o.double() * cotangents[0]).sum() + (state.double() * cotangents[1]).sum()).backward()
    for name in KERNELS:
        setattr(gdr, name, ORIGINAL[name])


def _inputs(gate, t):
    """The CUDA test's inputs (bf16); without a GPU, the same recipe in float32 on the CPU (the interpreter
    has no bf16 dots: this only checks the probe's plumbing, both runs are float32 there)."""
    d = int(os.environ.get("PROBE_D", "128"))  # head dim (the ablation grids use 16)
    if DEVICE == "cuda":
        return _cuda_inputs(20, 2, t, 4, d, gate, True)
    inputs = make_inputs(20, 2, t, 4, d, d, None, True, device="cpu")
    gen = torch.Generator().manual_seed(1020)
    inputs[3] = torch.rand(2, t, 4, generator=gen).sigmoid()
    if gate == "mixed":
        inputs[4] = F.logsigmoid(torch.randn(2, t, 4, generator=gen) * 2) / 4
    inputs[5] = inputs[5] * 0.5
    return inputs


def replay(name, launch):
    """The kernel once more on the bf16 run's own inputs, upcast to float32 (TF32x3 dots): the error of
    its outputs against the bf16 launch's is the error this kernel adds by itself."""
    grid, args, kwargs, before = launch
    names = ORIGINAL[name].arg_names
    wide = {key: (val.float() if val.dtype.is_floating_point else val).clone() for key, val in before.items()}
    new_args = [wide.get(key, arg) if isinstance(arg, torch.Tensor) else arg for key, arg in zip(names, args)]
    new_kwargs = {key: wide.get(key, val) if isinstance(val, torch.Tensor) else val for key, val in kwargs.items()}
    if "PRECISION" in new_kwargs:
        new_kwargs["PRECISION"] = gdr.DOT_PRECISION[torch.float32]
    ORIGINAL[name][grid](*new_args, **new_kwargs)
    return {key: val.double().cpu() for key, val in wide.items() if val.dtype.is_floating_point}


def rel(x, ref):
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def fla_yardstick(t):
    """The same no-decay case through flash-linear-attention 0.6.0's chunk_delta_rule (its bf16 kernels
    store the chunk states in bf16 as ours do) and through ours, both against the float32 reference: how
    close bf16 gets here at all."""
    rows = []
    try:
        from fla.ops.delta_rule import chunk_delta_rule
    except Exception as err:  # noqa: BLE001
        return [{"yardstick": "fla", "error": f"{type(err).__name__}: {err}"[:300]}]
    for gate in (None,):
        inputs = _inputs(gate, t)
        results = run_both(inputs, scale=128**-0.5, chunk_size=64, ref_dtype=torch.float32)
        ours = {key: rel_err(x, ref) for key, (x, ref) in results.items()}
        leaves = [None if x is None else x.detach().clone().requires_grad_() for x in inputs]
        try:
            o, state = chunk_delta_rule(leaves[0], leaves[1], leaves[2], leaves[3], scale=128**-0.5,
                                        initial_state=leaves[5], output_final_state=True)
            gen = torch.Generator().manual_seed(123)  # run_both's cotangents
            d_o = torch.randn(o.shape, generator=gen).to(o.device)
            d_state = torch.randn(state.shape, generator=gen).to(o.device)
            torch.autograd.backward((o, state.float()), (d_o.to(o.dtype), d_state))
            got = {"o": o, "final_state": state, "dq": leaves[0].grad, "dk": leaves[1].grad,
                   "dv": leaves[2].grad, "dbeta": leaves[3].grad, "dinitial_state": leaves[5].grad}
            fla = {key: rel_err(x, results[key][1]) for key, x in got.items() if x is not None}
        except Exception as err:  # noqa: BLE001
            fla = {"error": f"{type(err).__name__}: {err}"[:300]}
        for name, errs in (("ours", ours), ("fla chunk_delta_rule", fla)):
            row = {"yardstick": name, "gate": gate, "T": t, **errs}
            print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
            rows.append(row)
    return rows


ORIGINAL = {name: getattr(gdr, name) for name in KERNELS}
if __name__ == "__main__":
    out_path = sys.argv[1]
    t = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
    rows = []
    for gate in (None, "mixed"):
        inputs = _inputs(gate, t)
        gen = torch.Generator().manual_seed(7)
        shape_o = inputs[2].shape
        cot = (torch.randn(shape_o, generator=gen, dtype=torch.float64).to(DEVICE),
               torch.randn(inputs[5].shape, generator=gen, dtype=torch.float64).to(DEVICE))
        low, high = {}, {}
        run(inputs, inputs[0].dtype, low, cot)
        run(inputs, torch.float32, high, cot)
        for kname in KERNELS:
            launch = low["launch:" + kname]
            redone = replay(kname, launch)
            for arg, x in low[kname].items():
                if torch.equal(launch[3][arg].double().cpu(), x):
                    continue  # an input of this kernel
                row = {"gate": gate, "kernel": kname, "buffer": arg, "alone_rel": rel(x, redone[arg]),
                       "ref_rms": x.pow(2).mean().sqrt().item()}
                print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}),
                      flush=True)
                rows.append(row)
        for kname in KERNELS:
            for arg, x in low[kname].items():
                ref = high[kname][arg]
                if ref.shape != x.shape:
                    continue
                row = {"gate": gate, "kernel": kname, "buffer": arg, "rel": rel(x, ref),
                       "ref_rms": ref.pow(2).mean().sqrt().item()}
                if x.shape[-1] == 128 and x.dim() >= 3:
                    err = (x - ref).pow(2).flatten(0, -2).sum(0)
                    norm = ref.pow(2).flatten(0, -2).sum(0).clamp_min(1e-30)
                    row["by_32_cols"] = [round(((err[i:i + 32].sum() / norm[i:i + 32].sum()).sqrt().item()), 5)
                                         for i in range(0, 128, 32)]
                rows.append(row)
                print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}),
                      flush=True)
    rows.extend(fla_yardstick(t))
    with open(out_path, "w") as f:
        json.dump(rows, f, indent=1)
