"""Layer configurations for ablations: where in a model a variant layer goes.

The configurations of Deconstructing Attention (Xue, Moosavi and Aletras, arXiv 2510.11602), which
relaxes one design principle of attention at a time and applies the relaxed layer either everywhere
or only in some layers, plus the placements needed to ask *where* a variant helps or hurts:

    apply_configuration(base, "hybrid", {"mixer": "lightning"})   # -> a spec dict (not validated)
    ratio_layers(8, {"mixer": "gla"}, {"mixer": "softmax"}, "3:1") # -> 8 layer dicts, GGGS GGGS

Layers are numbered from 0 (the one next to the embedding). With n base layers and k = ceil(n / 3):

| configuration | layers that take the variant | needs |
|---|---|---|
| `uniform`    | all of them | n >= 1 |
| `hybrid`     | the odd ones: 1, 3, 5, ... (the even ones keep the base layer) | n >= 2 |
| `skip`       | none: the odd layers are *removed*, leaving the ceil(n / 2) even ones (the hybrid without its variant layers; the control for `hybrid`) | n >= 2 |
| `bottom`     | the first k: 0 .. k-1 | n >= 3 |
| `middle`     | k layers starting at floor((n - k) / 2) | n >= 3 |
| `top`        | the last k: n-k .. n-1 | n >= 3 |
| `first-only` | layer 0 | n >= 2 |
| `last-only`  | layer n-1 | n >= 2 |

For example, with 6 layers: hybrid 1, 3, 5; skip keeps 0, 2, 4; bottom 0, 1; middle 2, 3; top 4, 5;
with 8 layers: bottom 0, 1, 2; middle 2, 3, 4; top 5, 6, 7. A chosen layer is *replaced* by a copy of
the variant layer dict (its mixer, positional scheme, per-layer mlp and mixer parameters all come from
the variant); the other layers are left exactly as in the base. Names may be written with '_' for '-'.

`ratio_layers` builds the MiniMax-style interleaving of linear and softmax layers: a ratio "a:b" is
a group of a linear layers followed by b softmax layers (the softmax layers last), repeated; "1:0" is
pure linear, "0:1" all softmax. n_layers must be a whole number of groups, so every group ends with
its softmax layer(s) and the realised ratio is the one asked for.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any

__all__ = ["CONFIGURATIONS", "apply_configuration", "configuration_layers", "ratio_layers", "parse_ratio",
           "softmax_share", "expand_layers"]

CONFIGURATIONS: dict[str, str] = {
    "uniform": "every layer takes the variant",
    "hybrid": "odd layers (1, 3, 5, ...) take the variant; even layers keep the base",
    "skip": "the hybrid with its variant layers removed: the even base layers only (fewer layers)",
    "top": "the last ceil(n/3) layers take the variant",
    "middle": "ceil(n/3) layers starting at floor((n - ceil(n/3)) / 2) take the variant",
    "bottom": "the first ceil(n/3) layers take the variant",
    "first-only": "layer 0 takes the variant",
    "last-only": "layer n-1 takes the variant",
}

# The smallest base model each configuration makes sense for (below it the configuration either
# changes nothing or coincides with another one).
_MIN_LAYERS = {"uniform": 1, "hybrid": 2, "skip": 2, "top": 3, "middle": 3, "bottom": 3,
               "first-only": 2, "last-only": 2}


def _normalise(configuration: str) -> str:
    if not isinstance(configuration, str):
        raise ValueError(f"configuration must be a name, got {configuration!r}; allowed: {', '.join(CONFIGURATIONS)}")
    name = configuration.strip().lower().replace("_", "-")
    if name not in CONFIGURATIONS:
        raise ValueError(f"unknown configuration {configuration!r}; allowed: {', '.join(CONFIGURATIONS)}")
    return name


def configuration_layers(n_layers: int, configuration: str) -> list[int]:
    """Indices (0-based) of the layers that take the variant (for `skip`: the layers that are removed)."""
    name = _normalise(configuration)
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 1:
        raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
    need = _MIN_LAYERS[name]
    if n_layers < need:
        raise ValueError(f"configuration {name!r} needs a base of at least {need} layers, the base has {n_layers}"
                         + ("; 'uniform' is the only configuration of a 1-layer model" if n_layers == 1 else
                            "; use 'uniform', 'hybrid', 'first-only' or 'last-only' with fewer than 3 layers"))
    k = math.ceil(n_layers / 3)
    if name == "uniform":
        return list(range(n_layers))
    if name in ("hybrid", "skip"):
        return list(range(1, n_layers, 2))
    if name == "bottom":
        return list(range(k))
    if name == "top":
        return list(range(n_layers - k, n_layers))
    if name == "middle":
        start = (n_layers - k) // 2
        return list(range(start, start + k))
    if name == "first-only":
        return [0]
    return [n_layers - 1]  # last-only


def _layer_dict(layer: Any, what: str) -> dict:
    if isinstance(layer, str):
        return {"mixer": layer}
    if hasattr(layer, "model_dump"):  # a LayerSpec
        layer = layer.model_dump(mode="json")
    if not isinstance(layer, dict) or not isinstance(layer.get("mixer"), str):
        raise ValueError(f"{what} must be a layer dict with a 'mixer' name (e.g. {{'mixer': 'lightning'}}) or a "
                         f"mixer name, got {layer!r}")
    return copy.deepcopy(layer)


def expand_layers(base: Any) -> dict:
    """The base as a plain spec dict with an explicit `layers` list (a `pattern`/`ratio` shorthand is
    expanded; nothing is validated, so mixers that are not registered yet pass through)."""
    from studio.spec import _expand_shorthand

    if hasattr(base, "to_dict") and not isinstance(base, dict):  # an ArchSpec
        base = base.to_dict()
    if not isinstance(base, dict):
        raise ValueError(f"the base must be a spec dict or an ArchSpec, got {type(base).__name__}")
    data = _expand_shorthand(copy.deepcopy(base))
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError("the base spec has no layers: give 'layers' or a 'pattern'/'ratio' shorthand with a "
                         "'pattern_map'")
    data["layers"] = [_layer_dict(layer, f"base layers[{i}]") for i, layer in enumerate(layers)]
    n = data.get("n_layers")
    if n is not None and n != len(data["layers"]):
        raise ValueError(f"the base's n_layers={n!r} but it lists {len(data['layers'])} layers; make them agree")
    data["n_layers"] = len(data["layers"])
    return data


def apply_configuration(base: Any, configuration: str, variant: dict | str | None) -> dict:
    """A spec dict: `base` (a spec dict, shorthand allowed, or an `ArchSpec`) with the layers chosen by
    `configuration` replaced by copies of `variant` (a layer dict such as {"mixer": "lightning"}, or a
    mixer name). For `skip` the variant is not used (it may be None): the odd layers are removed.
    The result is not validated; `ArchSpec.from_dict` it to build it."""
    name = _normalise(configuration)
    data = expand_layers(base)
    n = data["n_layers"]
    chosen = configuration_layers(n, name)
    if name == "skip":
        removed = set(chosen)
        data["layers"] = [layer for i, layer in enumerate(data["layers"]) if i not in removed]
    else:
        if variant is None:
            raise ValueError(f"configuration {name!r} needs a variant layer, e.g. {{'mixer': 'lightning'}}")
        layer = _layer_dict(variant, "the variant layer")
        for i in chosen:
            data["layers"][i] = copy.deepcopy(layer)
    data["n_layers"] = len(data["layers"])
    return data


_RATIO = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_ratio(ratio: str) -> tuple[int, int]:
    """'7:1' -> (7, 1): linear layers then softmax layers per group."""
    match = _RATIO.match(ratio) if isinstance(ratio, str) else None
    if not match:
        raise ValueError(f"ratio {ratio!r} must be 'linear:softmax' counts, e.g. '7:1', '3:1', '1:1', '1:0' (pure "
                         "linear) or '0:1' (all softmax)")
    a, b = int(match.group(1)), int(match.group(2))
    if a + b == 0:
        raise ValueError(f"ratio {ratio!r} has no layers; one of its counts must be positive, e.g. '3:1'")
    return a, b


def ratio_layers(n_layers: int, linear: dict | str | None, softmax: dict | str | None, ratio: str) -> list[dict]:
    """n_layers layer dicts: groups of `a` linear layers followed by `b` softmax layers for ratio 'a:b'
    (MiniMax: '7:1' is 7 linear then 1 softmax). '1:0' is pure linear (softmax unused, may be None),
    '0:1' all softmax (linear unused, may be None). n_layers must be a multiple of a + b."""
    a, b = parse_ratio(ratio)
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 1:
        raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
    group = a + b
    if n_layers % group:
        fits = ", ".join(str(group * i) for i in range(1, 4))
        raise ValueError(f"ratio {ratio!r} groups {group} layers ({a} linear then {b} softmax) but n_layers={n_layers} "
                         f"is not a multiple of {group}; use n_layers {fits}, ... or another ratio")
    lin = _layer_dict(linear, "the linear layer") if a else None
    soft = _layer_dict(softmax, "the softmax layer") if b else None
    return [copy.deepcopy(lin if i % group < a else soft) for i in range(n_layers)]


def softmax_share(layers: list, softmax_mixers: tuple[str, ...] = ("softmax",)) -> float:
    """The share of layers whose mixer is softmax attention (0.0 pure linear .. 1.0 all softmax)."""
    mixers = [layer.mixer if hasattr(layer, "mixer") else layer["mixer"] for layer in layers]
    return sum(m in softmax_mixers for m in mixers) / max(len(mixers), 1)
