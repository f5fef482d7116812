"""Mixer configurations the tests sweep: every registered mixer, with and without the shared options.
Cases of the mixer zoo live in one file per family (tests/cases_*.py) and are merged here."""

import importlib
import pkgutil
from pathlib import Path

import torch

from studio.mixers import REGISTRY, MixerShape

CASES = {
    "softmax-rope-gqa": ("softmax", {}, dict(n_kv_heads=2)),
    "softmax-nope": ("softmax", {}, dict(positional="nope")),
    "softmax-halfrope-gate": ("softmax", {"rope_fraction": 0.5, "output_gate": "sigmoid"}, {}),
    "sliding_window-5": ("sliding_window", {"window": 5}, dict(n_kv_heads=2)),
    "sliding_window-1": ("sliding_window", {"window": 1}, dict(positional="nope")),
    "linear-elu-norm": ("linear", {}, {}),
    "linear-identity-plain": ("linear", {"feature_map": "identity", "normalize": False, "block_size": 7}, {}),
    "linear-conv-gqa": ("linear", {"short_conv": 4, "block_size": 16}, dict(n_kv_heads=1)),
    "lightning-default": ("lightning", {"block_size": 16}, dict(layer_idx=1, n_layers=4)),
    "lightning-list-decay": ("lightning", {"decay": [0.9, 0.5, 1.0, 0.99], "block_size": 5,
                                           "output_gate": "swish", "short_conv": 3}, dict(positional="nope")),
}

for _module in pkgutil.iter_modules([str(Path(__file__).parent)]):
    if _module.name.startswith("cases_"):
        CASES.update(importlib.import_module(_module.name).CASES)

# Every registered mixer must appear in the sweep.
assert {name for name, _, _ in CASES.values()} == set(REGISTRY), "add the new mixer to tests/mixer_cases.py"


def make_mixer(case: str, d_model: int = 16, n_heads: int = 4, d_head: int = 4):
    name, params, shape_kw = CASES[case]
    shape = MixerShape(**{"d_model": d_model, "n_heads": n_heads, "n_kv_heads": n_heads, "d_head": d_head, **shape_kw})
    return REGISTRY[name](shape, **params)


def run_steps(mixer, x, state=None):
    """Feed x [batch, T, d_model] one token at a time through `mixer.step`: (outputs [batch, T, d_model], state)."""
    outs = []
    for t in range(x.shape[1]):
        out, state = mixer.step(x[:, t], state)
        outs.append(out)
    return torch.stack(outs, dim=1), state
