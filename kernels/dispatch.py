"""Which implementation a mixer runs: the Triton kernels on CUDA tensors, the torch references elsewhere.

`STUDIO_KERNELS=reference` forces the references everywhere; `STUDIO_KERNELS=triton` forces the kernels
(on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before the kernels were imported);
unset or `auto` picks the kernels exactly when the tensors are on a CUDA device.
"""

from __future__ import annotations

import os

import torch

CHOICES = ("auto", "reference", "triton")


def kernel_choice() -> str:
    """The value of STUDIO_KERNELS (default "auto"), checked."""
    choice = os.environ.get("STUDIO_KERNELS", "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"STUDIO_KERNELS={os.environ['STUDIO_KERNELS']!r} is not one of {', '.join(CHOICES)}; "
                         "unset it (auto: Triton on CUDA tensors, torch references elsewhere) or pick one")
    return choice


def interpreting() -> bool:
    import triton
    return bool(triton.knobs.runtime.interpret)


def use_triton(x: torch.Tensor) -> bool:
    """Whether an op on tensors like x should run its Triton kernel."""
    choice = kernel_choice()
    if choice == "reference":
        return False
    if choice == "auto":
        return x.is_cuda
    if not x.is_cuda and not interpreting():
        raise ValueError(f"STUDIO_KERNELS=triton but the tensors are on {x.device} and TRITON_INTERPRET is not 1; "
                         "run on a CUDA device, set TRITON_INTERPRET=1 before starting (slow: for tests), or "
                         "unset STUDIO_KERNELS")
    return True


# Decoding steps: one token per sequence is a few microseconds of work, so below this many (batch x head)
# state tiles the fused kernel's launch and checks cost more than torch's few small ops (measured on the H200,
# benchmarks/results/decode-step-h200.json: 0.6-0.7x at batch 1-8, 1.1-2.2x at batch 64, 16 heads).
STEP_KERNEL_MIN_ROWS = 512


def use_triton_step(q: torch.Tensor) -> bool:
    """Whether one decoding step on q [batch, head, d] should run the fused step kernel."""
    if torch.is_grad_enabled() and q.requires_grad:
        return False
    if kernel_choice() == "triton":
        return use_triton(q)
    return use_triton(q) and q.shape[0] * q.shape[1] >= STEP_KERNEL_MIN_ROWS
