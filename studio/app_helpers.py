"""Plain helpers behind the Gradio app (`app.py`): spec text in either format, presets, byte tokens,
and the attention-pattern heatmap. No Gradio here, so all of it can be used and tested on its own."""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import plotly.graph_objects as go
import torch
import yaml

from studio.model import HybridLM, build_model
from studio.presets import PRESETS as _PRESETS
from studio.spec import ArchSpec, SpecError

FORMATS = ("JSON", "YAML")
MAX_TEXT_BYTES = 256
# The pattern view builds the model for real (on the CPU); above this many parameters it is skipped
# and only the (free) summary is shown.
MAX_PATTERN_PARAMS = 300_000_000

DEFAULT_SPEC = {
    "name": "lightning-3to1",
    "vocab_size": 256,
    "d_model": 64,
    "n_layers": 4,
    "n_heads": 4,
    "pattern": "LLLS",
    "pattern_map": {"L": "lightning", "S": "softmax"},
}

# Presets shown in the app: label -> spec dict (from `studio.presets`, at the app's vocabulary).
PRESETS = {
    label: {"name": name, "vocab_size": 256, **_PRESETS[name]}
    for label, name in (("all-softmax", "all-softmax"), ("MiniMax 7:1 lightning:softmax", "minimax-7to1"),
                        ("SmallThinker: RoPE sliding window + NoPE softmax", "smallthinker-nope-rope"),
                        ("small hybrid (lightning + softmax)", "small-hybrid"),
                        ("3:1 Gated DeltaNet:softmax", "gated-deltanet-3to1"), ("Liger (SWA + GLA in every layer)", "liger"),
                        ("SmallThinker with MoE", "smallthinker-moe"), ("one layer of each family", "zoo-hybrid"))
}

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog."


# ---- spec text ---------------------------------------------------------------------------------
def dump_spec_data(data: dict, fmt: str) -> str:
    """A spec dict as editor text in `fmt` ("JSON" or "YAML"); shorthand keys are kept as written."""
    if fmt == "YAML":
        return yaml.safe_dump(data, sort_keys=False)
    return json.dumps(data, indent=2) + "\n"


def load_spec_data(text: str, fmt: str):
    """Parse editor text (not validated); raise `SpecError` with a readable message if it does not parse."""
    if fmt == "YAML":
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise SpecError([("", f"not valid YAML: {err}")]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError([("", f"not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}")]) from None


def parse_spec(text: str, fmt: str) -> ArchSpec:
    """Validate editor text as a spec; bad input raises `SpecError`."""
    if not text or not text.strip():
        raise SpecError([("", "the spec is empty; pick a preset or write one")])
    return ArchSpec.from_dict(load_spec_data(text, fmt))


# ---- tokens ------------------------------------------------------------------------------------
def byte_label(b: int) -> str:
    """A short, readable label for one byte: the character, '␣' for a space, or a hex escape."""
    if b == 32:
        return "␣"
    if 32 < b < 127:
        return chr(b)
    return f"\\x{b:02x}"


def text_to_tokens(text: str, vocab_size: int, max_bytes: int = MAX_TEXT_BYTES) -> tuple[torch.Tensor, list[str], bool]:
    """UTF-8 bytes of `text` (first `max_bytes`) as token ids modulo `vocab_size`.
    Returns (tokens int64 [1, pos], one label per token, whether the text was cut)."""
    data = text.encode("utf-8")
    cut = len(data) > max_bytes
    data = data[:max_bytes]
    tokens = torch.tensor([[b % vocab_size for b in data]], dtype=torch.int64)
    return tokens, [byte_label(b) for b in data], cut


# ---- patterns ----------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _cached_model(spec_json: str, seed: int) -> HybridLM:
    return build_model(ArchSpec.from_json(spec_json), seed=seed).eval()


def attention_pattern(spec: ArchSpec, tokens: torch.Tensor, layer: int, seed: int = 0) -> np.ndarray:
    """The effective attention pattern [head, q, k] of `layer` for `tokens` [1, pos] (model built with
    `seed`; the last model is kept, so trying another layer or head does not rebuild it)."""
    if not 0 <= layer < spec.n_layers:
        raise ValueError(f"layer {layer} does not exist; the model has layers 0..{spec.n_layers - 1}")
    model = _cached_model(spec.to_json(), seed)
    name = f"blocks.{layer}.attn.hook_pattern"
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == name)
    return cache[name][0].float().cpu().numpy()


def pattern_figure(pattern: np.ndarray, labels: list[str], title: str) -> go.Figure:
    """A heatmap of one head's pattern [q, k]: queries down, keys across, tokens as tick labels.
    Future keys (k > q) are left blank; signed patterns (linear mixers) get a diverging scale."""
    n = pattern.shape[0]
    z = pattern.astype(float).copy()
    z[np.triu_indices(n, k=1)] = np.nan
    signed = np.nanmin(z) < 0 if n else False
    step = max(1, -(-n // 48))  # at most ~48 tick labels per axis
    ticks = list(range(0, n, step))
    ticktext = [labels[i] for i in ticks]
    hover = [[f"query {q} '{labels[q]}'<br>key {k} '{labels[k]}'" for k in range(n)] for q in range(n)]
    heat = go.Heatmap(
        z=z,
        x=list(range(n)),
        y=list(range(n)),
        text=hover,
        hovertemplate="%{text}<br>weight %{z:.4f}<extra></extra>",
        colorscale="RdBu" if signed else "Blues",
        reversescale=bool(signed),
        zmid=0 if signed else None,
        zmin=None if signed else 0,
        colorbar={"title": {"text": "weight"}},
    )
    fig = go.Figure(heat)
    axis = {"tickmode": "array", "tickvals": ticks, "ticktext": ticktext, "tickangle": 0}
    fig.update_layout(
        title={"text": title},
        xaxis={**axis, "title": {"text": "key"}, "side": "top"},
        yaxis={**axis, "title": {"text": "query"}, "autorange": "reversed", "scaleanchor": "x"},
        height=560,
        margin={"l": 60, "r": 20, "t": 90, "b": 20},
        plot_bgcolor="white",
    )
    return fig
