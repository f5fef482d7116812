"""Shared test set-up: offline, quiet, deterministic."""

import os

for key, value in {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
}.items():
    os.environ.setdefault(key, value)

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Without a GPU, Triton kernels (kernels.softmax_attention_stats) run on CPU tensors through Triton's
# interpreter; it must be chosen before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
