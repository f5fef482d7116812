"""Tensor kernels for the studio's mixers: readable torch references and (issue 7) Triton kernels.

This package knows tensors only, never models. Each op has a reference under `kernels.reference`
that the mixers use on every device today and that fast kernels are tested against.

Note on the name: Hugging Face also publishes a package called `kernels`, which transformers probes
for. Ours carries no `__version__` and is distributed as `hybrid-attention-studio` (version outside
the range transformers accepts), so `transformers.utils.is_kernels_available()` stays False;
tests/test_kernels_name.py checks it.
"""
