"""Shared set-up of the Triton kernel tests (tests/test_*_kernel.py), imported as the other test helpers are
(`from kernel_testing import ...`, tests/ is on sys.path under pytest).

Importing this module skips the importing test module when Triton is not installed, so import it before any
kernel module. Without a GPU, tests/conftest.py has already set TRITON_INTERPRET=1 (before any kernel module
is imported), and the kernels run on CPU tensors through Triton's interpreter."""

import pytest
import torch

pytest.importorskip("triton")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
F64 = torch.float64
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def needs_kernel(kernel_module):
    """Skip marker for tests that launch `kernel_module`'s kernels: they need a GPU, or kernels defined under
    the interpreter (the module's INTERPRET flag, read when it was imported)."""
    return pytest.mark.skipif(not CUDA and not kernel_module.INTERPRET,
                              reason="no GPU, and the kernels were defined without TRITON_INTERPRET=1")


def rel_rms(x, ref, floor=1e-30):
    """RMS(x - ref) / RMS(ref), both taken to float64 on the CPU; the reference's RMS is clamped below at
    `floor` (a reference that is (nearly) zero is compared against `floor` instead)."""
    x, ref = x.detach().to("cpu", F64), ref.detach().to("cpu", F64)
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(floor)).item()


def rel_err(x, ref):
    """||x - ref|| / ||ref|| (relative RMS error), both taken to float64 on the CPU."""
    x, ref = x.detach().to("cpu", F64), ref.detach().to("cpu", F64)
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()
