"""The Compose tab's per-layer editor as plain data: a spec's layers as table rows and back, the
pattern/ratio shorthand re-expanded into layers, and a reference table of every mixer's parameters.
No Gradio here; all validation is `ArchSpec`'s own, so the table shows the spec's messages.

A row is `[layer, mixer, positional, params]`: `layer` is the row's index (shown, ignored on read:
row order is layer order), `params` a JSON object of the mixer's own parameters (`{"window": 64}`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

from studio.mixers import REGISTRY, MixerParams
from studio.spec import ArchSpec, SpecError

__all__ = ["LAYER_COLUMNS", "HELP_COLUMNS", "SHORTHAND_KEYS", "spec_to_rows", "rows_to_spec_data",
           "validate_rows", "apply_shorthand", "mixer_parameter_help"]

LAYER_COLUMNS = ["layer", "mixer", "positional", "params"]
HELP_COLUMNS = ["mixer", "family", "state", "parameters (defaults)", "paper"]
# Keys that describe the layers; everything else in a spec dict is a global field.
SHORTHAND_KEYS = ("pattern", "pattern_map", "ratio", "layers")
PARAMS_EXAMPLE = '{"window": 64}'


def spec_to_rows(spec: ArchSpec) -> list[list]:
    """One row per (expanded) layer: [index, mixer, positional, params as compact JSON]. A layer's own
    feed-forward (`"mlp"`, where it overrides the spec's) rides in the params cell."""
    rows = []
    for i, layer in enumerate(spec.layers):
        params = dict(layer.params)
        if layer.mlp is not None:
            params["mlp"] = layer.mlp
        rows.append([i, layer.mixer, layer.positional, json.dumps(params)])
    return rows


def _blank(cell: Any) -> bool:
    if isinstance(cell, float):
        return math.isnan(cell)
    return cell is None or (isinstance(cell, str) and not cell.strip())


def _json_object(cell: Any, field: str, example: str) -> dict:
    """A dict from a cell: a dict, JSON object text, or YAML flow text (`{window: 64}`); blank is {}."""
    if _blank(cell):
        return {}
    if isinstance(cell, dict):
        return dict(cell)
    text = str(cell).strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        problem = f"{err.msg} (column {err.colno})"
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = None
        if not isinstance(value, dict):
            raise SpecError([(field, f"not a JSON object: {problem} in {text!r}; write e.g. {example}")]) from None
    if not isinstance(value, dict):
        raise SpecError([(field, f"not a JSON object: got {text!r}; write e.g. {example}")])
    return value


def _row_list(rows) -> list[list]:
    """Rows as lists of cells in LAYER_COLUMNS order, from a DataFrame, a list of lists or a
    {"headers", "data"} dict."""
    if isinstance(rows, dict):
        rows = rows.get("data")
    if hasattr(rows, "columns") and hasattr(rows, "to_numpy"):  # a pandas DataFrame
        if all(c in rows.columns for c in LAYER_COLUMNS):
            rows = rows[LAYER_COLUMNS]
        rows = rows.to_numpy().tolist()
    rows = [list(row) + [None] * (len(LAYER_COLUMNS) - len(row)) for row in (rows or [])]
    while rows and all(_blank(cell) for cell in rows[-1]):  # the editor's empty trailing rows
        rows.pop()
    return rows


def _layer(i: int, row: list) -> dict:
    _, mixer, positional, params = row[: len(LAYER_COLUMNS)]
    field = f"layers[{i}]"
    params = _json_object(params, f"{field}.params", PARAMS_EXAMPLE)
    own = sorted({"mixer", "positional"} & set(params))
    if own:
        raise SpecError([(f"{field}.params", f"{', '.join(map(repr, own))} has its own column; "
                          f"keep only the mixer's parameters here, e.g. {PARAMS_EXAMPLE}")])
    layer = {"mixer": "" if _blank(mixer) else str(mixer).strip()}
    if not _blank(positional):
        layer["positional"] = str(positional).strip()
    return {**layer, **params}


def rows_to_spec_data(base: dict | ArchSpec, rows) -> dict:
    """A new spec dict: `base`'s global fields plus an explicit `layers` list from `rows` (n_layers =
    number of rows). Cells may be strings (Gradio); a blank params cell is {}. Bad cells raise
    `SpecError` naming every bad row and column; the layers themselves are not validated here."""
    if isinstance(base, ArchSpec):
        base = base.to_dict()
    data = {k: v for k, v in (base or {}).items() if k not in SHORTHAND_KEYS}
    layers, problems = [], []
    for i, row in enumerate(_row_list(rows)):
        try:
            layers.append(_layer(i, row))
        except SpecError as err:
            problems += err.problems
    if problems:
        raise SpecError(problems)
    return {**data, "n_layers": len(layers), "layers": layers}


def validate_rows(base: dict | ArchSpec, rows) -> ArchSpec:
    """The spec the table describes; raises `SpecError` (cell problems, then the spec's own)."""
    return ArchSpec.from_dict(rows_to_spec_data(base, rows))


def apply_shorthand(base: dict | ArchSpec, pattern: str | None = None, pattern_map: dict | str | None = None,
                    ratio: str | None = None) -> ArchSpec:
    """`base` with its layers replaced by a `pattern` ("LLLS") or `ratio` ("7:1") shorthand, expanded by
    the spec itself (cycled to base's n_layers). `pattern_map` may be a dict or JSON text; None or blank
    keeps base's own. Put the result in the table with `spec_to_rows`."""
    if isinstance(base, ArchSpec):
        base = base.to_dict()
    base = dict(base or {})
    data = {k: v for k, v in base.items() if k not in SHORTHAND_KEYS}
    if _blank(pattern_map):
        pattern_map = base.get("pattern_map")
    elif not isinstance(pattern_map, dict):
        pattern_map = _json_object(pattern_map, "pattern_map", '{"L": "lightning", "S": "softmax"}')
    for key, value in (("pattern", pattern), ("ratio", ratio), ("pattern_map", pattern_map)):
        if not _blank(value):
            data[key] = value.strip() if isinstance(value, str) else value
    return ArchSpec.from_dict(data)


def _defaults(params: type[MixerParams]) -> dict[str, Any]:
    """Parameter defaults, the mixer's own first, then the options every mixer shares."""
    shared = MixerParams.model_fields
    names = [n for n in params.model_fields if n not in shared] + [n for n in params.model_fields if n in shared]
    out = {}
    for name in names:
        field = params.model_fields[name]
        out[name] = "<required>" if field.is_required() else field.get_default(call_default_factory=True)
    return out


def mixer_parameter_help() -> list[list[str]]:
    """A reference row per registered mixer (HELP_COLUMNS): name, family, state kind, its parameters
    with defaults as a JSON object (copyable into a params cell), and its paper."""
    return [[name, cls.family, cls.state_kind, json.dumps(_defaults(cls.Params), default=str), cls.paper]
            for name, cls in sorted(REGISTRY.items())]
