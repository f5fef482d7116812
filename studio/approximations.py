"""Switch a trained model's softmax layers to a training-free approximation, and measure what it costs.

    approx = approximate(model, "hip", top_k=4, block_size=16)      # a copy; model is untouched
    rows = approximation_report(model, approx, tokens)             # per layer errors + one "all" row

The approximations are the registered mixers of the family "softmax approximation" (`hip`, `deltallm`):
subclasses of `softmax` with exactly its weights, so a layer swaps without touching a number. Only full
softmax layers (and layers already approximated) are swapped; `approximate(model, "softmax")` switches
approximated layers back. The model's spec follows, so an approximated model saves and loads as itself.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from studio.mixers import REGISTRY
from studio.mixers.softmax import Softmax
from studio.model import HybridLM
from studio.spec import LayerSpec

__all__ = ["APPROXIMATION_FAMILY", "approximation_names", "approximable_layers", "approximate",
           "approximation_report", "report_table"]

APPROXIMATION_FAMILY = "softmax approximation"
_BASE_FIELDS = ("short_conv", "output_norm", "output_gate", "rope_fraction")  # MixerParams, shared by all


def approximation_names() -> list[str]:
    """The registered softmax approximations."""
    return sorted(name for name, cls in REGISTRY.items() if cls.family == APPROXIMATION_FAMILY)


def _is_swappable(mixer) -> bool:
    """Softmax weights in the standard form (separate W_Q, W_K, W_V, W_O: not the minimal-transformer ones)."""
    standard = all(getattr(mixer.p, form, "separate") == "separate" for form in ("qk", "vo"))
    return isinstance(mixer, Softmax) and standard and (
        type(mixer).name == "softmax" or type(mixer).family == APPROXIMATION_FAMILY)


def _form_note(mixer) -> str:
    forms = {f: getattr(mixer.p, f) for f in ("qk", "vo") if getattr(mixer.p, f, "separate") != "separate"}
    return f" ({', '.join(f'{k}: {v}' for k, v in forms.items())})" if forms else ""


def approximable_layers(model: HybridLM) -> list[int]:
    """Indices of the layers that hold softmax weights (full softmax or an approximation of it)."""
    return [i for i, block in enumerate(model.blocks) if _is_swappable(block.attn)]


def _layer_indices(model: HybridLM, layers: Iterable[int] | None) -> list[int]:
    swappable = approximable_layers(model)
    if layers is None:
        if not swappable:
            raise ValueError("the model has no softmax layer to approximate")
        return swappable
    chosen = []
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(model.blocks):
            raise ValueError(f"layer {i!r} is not a layer index of this {len(model.blocks)}-layer model")
        if i not in swappable:
            mixer = model.blocks[i].attn
            raise ValueError(f"layer {i} is a {type(mixer).name!r} layer{_form_note(mixer)}; only softmax layers "
                             f"with separate W_Q, W_K, W_V, W_O can be approximated (those: {swappable})")
        chosen.append(i)
    return sorted(set(chosen))


def approximate(model: HybridLM, method: str, layers: Iterable[int] | None = None, inplace: bool = False,
                **params: Any) -> HybridLM:
    """`model` with the softmax layers `layers` (None: all of them) computed by `method` (a name from
    `approximation_names()`, or "softmax" to switch back to dense attention) with `params`. The weights
    are the layers' own, unchanged. The layers' base options (rope_fraction, output gate, ...) are kept.
    Returns a copy unless `inplace`; the copy shares every weight tensor with `model` (no memory is
    copied, and training one trains the other)."""
    allowed = [*approximation_names(), "softmax"]
    if method not in allowed:
        raise ValueError(f"unknown approximation {method!r}; choose from {', '.join(allowed)}")
    indices = _layer_indices(model, layers)
    cls = REGISTRY[method]
    bad = sorted(set(params) - set(cls.Params.model_fields))
    if bad:
        raise ValueError(f"unknown parameter(s) {', '.join(map(repr, bad))} for {method!r}; "
                         f"allowed: {', '.join(sorted(set(cls.Params.model_fields) - set(_BASE_FIELDS)))}")
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    target = model if inplace else copy.deepcopy(model, memo=shared)
    layer_specs = list(target.spec.layers)
    for i in indices:
        old = target.blocks[i].attn
        given = {**old.p.model_dump(include=set(_BASE_FIELDS), exclude_defaults=True), **params}
        with torch.device("meta"):
            new = cls(old.shape, **given)
        new.load_state_dict(old.state_dict(keep_vars=True), strict=True, assign=True)  # the same tensors
        new.train(old.training)
        target.blocks[i].attn = new
        layer_options = {f: getattr(layer_specs[i], f) for f in LayerSpec.model_fields if f != "mixer"}
        layer_specs[i] = LayerSpec.model_validate(
            {**layer_options, "mixer": method, **new.p.model_dump(exclude_defaults=True)})
    target.spec = target.spec.model_copy(update={"layers": layer_specs})
    target.setup()  # re-index the hook points of the new modules
    return target


# ---- measuring ------------------------------------------------------------------------------------
def _run_mixer(mixer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The mixer on input x [B, T, d_model]: its output, pattern and the q, k its math sees."""
    seen: dict[str, torch.Tensor] = {}
    rotated = mixer.rotary is not None
    names = {"pattern": "hook_pattern", "q": "hook_rot_q" if rotated else "hook_q",
             "k": "hook_rot_k" if rotated else "hook_k"}
    for key, hook in names.items():
        getattr(mixer, hook).add_hook(lambda t, hook, key=key: seen.__setitem__(key, t.detach()))
    try:
        seen["out"] = mixer(x).detach()
    finally:
        for hook in names.values():
            getattr(mixer, hook).remove_hooks()
    return seen


def _relative(err: torch.Tensor, ref: torch.Tensor) -> float:
    return float(err.double().norm() / ref.double().norm().clamp(min=1e-30))


def _logit_stats(logits: torch.Tensor, dense: torch.Tensor) -> dict[str, float]:
    return {"logit_rel_err": _relative(logits - dense, dense),
            "top1_agreement": float((logits.argmax(-1) == dense.argmax(-1)).double().mean())}


def _logits_from_layer(model: HybridLM, index: int, resid_pre: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """The dense model's logits with layer `index`'s mixer output replaced by `attn_out`, run from that
    layer on (the layers before it are unchanged, so their output is the cached `resid_pre`)."""
    block = model.blocks[index]
    block.hook_attn_out.add_hook(lambda out, hook: attn_out)
    try:
        resid = block(resid_pre)
    finally:
        block.hook_attn_out.remove_hooks()
    for later in model.blocks[index + 1 :]:
        resid = later(resid)
    return model._logits(resid)


def approximation_report(model: HybridLM, approx_model: HybridLM, tokens, layer_logits: bool = True) -> list[dict]:
    """Per approximated layer (where `approx_model`'s mixer is an approximation and `model`'s is softmax),
    the layer measured alone on the dense model's input to that layer:

        pattern_max_abs_err, pattern_mean_abs_err   |M_approx - M_softmax| (mean over causal entries)
        output_max_abs_err, output_mean_abs_err     of the layer's output (after o_proj), and output_rel_err
        logit_rel_err, top1_agreement               ||logits - dense logits|| / ||dense logits|| and argmax
                                                    agreement with only this layer approximated
                                                    (None unless `layer_logits`)
        computed_fraction                           scores q_t.k_s evaluated / T(T+1)/2 causal entries

    then one row with layer "all": the whole approximated model's logit error and agreement, the largest
    max and the mean of the mean errors, and the mean computed fraction. tokens: [batch, pos] or [pos]."""
    tokens = torch.as_tensor(tokens)
    tokens = tokens[None] if tokens.ndim == 1 else tokens
    tokens = model._check_tokens(tokens)
    layers = [i for i, (a, b) in enumerate(zip(model.blocks, approx_model.blocks))
              if type(a.attn).name == "softmax" and type(b.attn).family == APPROXIMATION_FAMILY]
    if not layers:
        raise ValueError("approx_model approximates none of model's softmax layers (see approximate())")
    rows = []
    with torch.no_grad():
        inputs = {f"blocks.{i}.{name}" for i in layers for name in ("ln1.hook_normalized", "hook_resid_pre")}
        dense_logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in inputs)
        t = tokens.shape[1]
        for i in layers:
            x = cache[f"blocks.{i}.ln1.hook_normalized"]
            dense, approx = _run_mixer(model.blocks[i].attn, x), _run_mixer(approx_model.blocks[i].attn, x)
            mixer = approx_model.blocks[i].attn
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            pattern_err = (approx["pattern"] - dense["pattern"]).abs()
            output_err = (approx["out"] - dense["out"]).abs()
            computed = mixer.computed_scores(approx["q"].transpose(1, 2), approx["k"].transpose(1, 2))
            row = {
                "layer": i, "mixer": type(mixer).name, "params": mixer.p.model_dump(exclude_defaults=True),
                "pattern_max_abs_err": float(pattern_err.max()),
                "pattern_mean_abs_err": float(pattern_err[..., causal].double().mean()),
                "output_max_abs_err": float(output_err.max()),
                "output_mean_abs_err": float(output_err.double().mean()),
                "output_rel_err": _relative(approx["out"] - dense["out"], dense["out"]),
                "logit_rel_err": None, "top1_agreement": None,
                "computed_fraction": float((computed & causal).double().sum() / (computed.shape[0] * computed.shape[1]
                                                                                 * causal.sum())),
            }
            if layer_logits:
                logits = _logits_from_layer(model, i, cache[f"blocks.{i}.hook_resid_pre"], approx["out"])
                row.update(_logit_stats(logits, dense_logits))
            rows.append(row)
        whole = _logit_stats(approx_model(tokens), dense_logits)
    rows.append({
        "layer": "all", "mixer": "+".join(dict.fromkeys(r["mixer"] for r in rows)), "params": None,
        **{key: max(r[key] for r in rows) for key in ("pattern_max_abs_err", "output_max_abs_err")},
        **{key: sum(r[key] for r in rows) / len(rows)
           for key in ("pattern_mean_abs_err", "output_mean_abs_err", "output_rel_err", "computed_fraction")},
        **whole,
    })
    return rows


def report_table(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """The rows of `approximation_report` as a table (header, rows of strings)."""
    header = ["layer", "mixer", "pattern max|err|", "pattern mean|err|", "output rel err", "logit rel err",
              "top-1 agree", "computed"]

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    return header, [[str(r["layer"]), r["mixer"], fmt(r["pattern_max_abs_err"], ".3g"),
                     fmt(r["pattern_mean_abs_err"], ".3g"), fmt(r["output_rel_err"], ".3g"),
                     fmt(r["logit_rel_err"], ".3g"), fmt(r["top1_agreement"], ".1%"),
                     fmt(r["computed_fraction"], ".1%")] for r in rows]
