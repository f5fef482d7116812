"""What the app's Explore tab and `studio analyze` do, without any UI: pick a model, turn a text (or the
model's answer to a prompt, or an example of the task it was trained on) into tokens, and run the
preplan/anchor analysis (arXiv 2510.13554) with the views of `analyses.figures`.

    sources = model_sources(runs_dir, defaults)        what can be explored (labels -> ModelSource)
    model, tokenizer = load_source(source)             cached; runs and defaults read from safetensors
    seq = make_sequence(model, tokenizer, source, text, mode)      ids, labels, response_start
    exploration = explore(model, seq)                  the rhythm (streaming above STREAMING_FROM tokens)
    views(model, exploration, layer)                   plotly figures + highlighted text for one layer

Errors a user can cause (empty text, text over the cap, a run that is missing or corrupt, a text that
the model's vocabulary cannot hold) raise `ExploreError` with a message that names the fix.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

import analyses
from analyses.figures import graph_figure, head_grid, head_span_bars, highlighted_text_html, rhythm_trace
from analyses.graph import token_graph
from analyses.streaming import streaming_rhythm
from studio.checkpoint import MERGED_MODEL_DIR, TOKENIZER_DIR, resolve_model_dir
from studio.model import HybridLM
from studio.tasks.tokenizers import ByteTokenizer

MAX_TOKENS = 1024  # the longest sequence Explore analyses (patterns of one layer: heads x T x T floats)
MAX_CHARS = 20_000  # texts longer than this are refused before tokenising
STREAMING_FROM = 512  # from this many tokens on, the rhythm is computed without T x T patterns
SMOLLM2_LABEL = "SmolLM2-135M-Instruct (pretrained)"
Mode = Literal["text", "answer", "task example"]
MODES: tuple[str, ...] = ("text", "answer", "task example")


class ExploreError(ValueError):
    """A problem with what the user asked for; the message says what to change."""


@dataclass(frozen=True)
class ModelSource:
    """Something Explore can load: an embedded default, a saved run (a training run, or a model folder
    such as a linearized run's, loaded with the tokenizer it came with: `tokenizer_for`), or the
    pretrained SmolLM2."""

    label: str
    kind: Literal["default", "run", "pretrained"]
    path: Path | None = None


def model_sources(runs: list[Path] = (), defaults: dict[str, Path] | None = None,
                  pretrained: bool | None = None) -> dict[str, ModelSource]:
    """label -> source, defaults first, then runs (newest first as given), then SmolLM2 when installed."""
    from studio.pretrained import smollm2_available

    out: dict[str, ModelSource] = {}
    for name, path in (defaults or {}).items():
        out[f"{name} (default)"] = ModelSource(f"{name} (default)", "default", Path(path))
    for path in runs:
        label = f"run: {Path(path).name}"
        out[label] = ModelSource(label, "run", Path(path))
    if smollm2_available() if pretrained is None else pretrained:
        out[SMOLLM2_LABEL] = ModelSource(SMOLLM2_LABEL, "pretrained")
    return out


# ---- loading -----------------------------------------------------------------------------------------
_CACHE: OrderedDict[tuple, tuple[HybridLM, object]] = OrderedDict()
_CACHE_SIZE = 4
_LOCK = threading.Lock()


def _run_task(path: Path) -> dict | None:
    """The task record of a run directory (None for a plain model directory)."""
    record = path / "run.json"
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text()).get("task")
    except (OSError, json.JSONDecodeError) as err:
        raise ExploreError(f"the run {path.name!r} has a corrupt run.json ({err}); train it again or delete it") from None


def tokenizer_dir(path: str | Path) -> Path | None:
    """The transformers tokenizer folder that came with a model (`tokenizer/` in the model folder, the
    run folder or its `model/`), or None."""
    path = Path(path)
    candidates = [path / TOKENIZER_DIR]
    try:  # the model folder behind a run (its merged model/ or last checkpoint)
        candidates.insert(0, resolve_model_dir(path) / TOKENIZER_DIR)
    except (OSError, ValueError):
        pass
    return next((c for c in candidates if (c / "tokenizer_config.json").is_file()), None)


def tokenizer_for(path: str | Path):
    """The tokenizer of a model or run folder: its own `tokenizer/` folder (a converted or linearized
    model: transformers' AutoTokenizer, local files only), else the tokenizer its training task named
    (run.json, e.g. tokenizer=smollm2), else bytes."""
    path = Path(path)
    folder = tokenizer_dir(path)
    if folder is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    task = _run_task(path) or {}
    name = (task.get("args") or {}).get("tokenizer", "bytes")
    if name == "bytes":
        return ByteTokenizer()
    from studio.tasks.tokenizers import get_tokenizer

    return get_tokenizer(name)



def is_converted_run(path: str | Path) -> bool:
    """A linearized run (linearize.json), a folder holding a merged model/, or a model folder with its
    own tokenizer/ (a converted model)."""
    path = Path(path)
    return ((path / "linearize.json").is_file() or (path / MERGED_MODEL_DIR / "config.json").is_file()
            or ((path / "config.json").is_file() and (path / TOKENIZER_DIR / "tokenizer_config.json").is_file()))


def explorable_runs(folder: str | Path) -> list[Path]:
    """The training runs of a folder (newest first, `studio.training_jobs.user_runs`), then the converted
    models that have no run.json of their own (`is_converted_run`), newest first."""
    from studio.training_jobs import user_runs

    folder = Path(folder)
    runs = user_runs(folder)
    if not folder.is_dir():
        return runs
    extra = [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and p not in runs
             and is_converted_run(p)]
    return runs + sorted(extra, key=lambda p: p.stat().st_mtime, reverse=True)


def _stamp(path: Path) -> tuple:
    folder = resolve_model_dir(path)
    weights = folder / "model.safetensors"
    return str(folder), weights.stat().st_mtime_ns if weights.exists() else 0


def load_source(source: ModelSource) -> tuple[HybridLM, object]:
    """(model in eval mode, tokenizer); the last few are kept in memory, keyed by file and mtime."""
    try:
        key = ("pretrained",) if source.kind == "pretrained" else _stamp(source.path)
    except FileNotFoundError as err:
        raise ExploreError(f"{source.label}: {err}; pick another model or train this run further") from None
    except (OSError, ValueError) as err:  # a corrupt run.json or config
        raise ExploreError(f"{source.label}: its files are corrupt ({err}); pick another model or train it again") from None
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    if source.kind == "pretrained":
        from studio.pretrained import load_smollm2

        model, tokenizer = load_smollm2()
    else:
        if not source.path.exists():
            raise ExploreError(f"{source.label}: {source.path.name!r} no longer exists; pick another model")
        try:
            model, tokenizer = HybridLM.load(source.path), tokenizer_for(source.path)
        except ExploreError:
            raise
        except Exception as err:  # corrupt config or weights: say so, never a traceback
            raise ExploreError(f"{source.label} could not be loaded ({type(err).__name__}: {err}); "
                               "its files are missing or corrupt: pick another model or train it again") from None
    model.eval()
    with _LOCK:
        _CACHE[key] = (model, tokenizer)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return model, tokenizer


# ---- sequences ---------------------------------------------------------------------------------------
@dataclass
class Sequence:
    ids: torch.Tensor  # [T] int64
    labels: list[str]  # one readable label per token
    response_start: int  # the analysis' R = positions >= response_start
    note: str = ""


def _labels(tokenizer, ids) -> list[str]:
    return [tokenizer.decode([int(i)]) for i in ids]


def _check_text(text: str) -> str:
    if not text or not text.strip():
        raise ExploreError("the text is empty: type a text (or a question, in answer mode) to explore")
    if len(text) > MAX_CHARS:
        raise ExploreError(f"the text has {len(text):,} characters; Explore takes at most {MAX_CHARS:,} "
                           f"(and {MAX_TOKENS:,} tokens): paste a shorter passage")
    return text


def _check_length(n: int) -> None:
    if n > MAX_TOKENS:
        raise ExploreError(f"the text is {n:,} tokens long; Explore analyses at most {MAX_TOKENS:,}: shorten it")
    if n < 2:
        raise ExploreError("the text is a single token; give at least two")


def make_sequence(model: HybridLM, tokenizer, source: ModelSource, text: str, mode: Mode = "text",
                  max_new_tokens: int = 64, seed: int = 0) -> Sequence:
    """The tokens to analyse.

    text: the text itself (all of it is the response: R = every position);
    answer: the model writes a greedy answer to `text` (as a chat turn when the tokenizer has a chat
    template: SmolLM2 and the models converted from it); R = the answer;
    task example: one sequence of the task the run was trained on (for runs whose vocabulary is not text).
    """
    if mode not in MODES:
        raise ExploreError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "task example":
        return _task_example(source, seed)
    text = _check_text(text)
    vocab = getattr(tokenizer, "vocab_size", None) or len(tokenizer)
    if vocab > model.spec.vocab_size:
        raise ExploreError(f"{source.label} has a vocabulary of {model.spec.vocab_size} tokens, too small for text "
                           "(bytes need 258): choose the mode 'task example'")
    if mode == "text":
        ids = tokenizer.encode(text)
        _check_length(len(ids))
        return Sequence(torch.tensor(ids), _labels(tokenizer, ids), 0)
    if getattr(tokenizer, "chat_template", None):  # SmolLM2 and models converted from it: a chat turn
        from studio.pretrained import chat_prompt

        prompt_ids = tokenizer.encode(chat_prompt(tokenizer, text), add_special_tokens=False)
        stop = tokenizer.eos_token_id
    else:
        prompt_ids, stop = tokenizer.encode(text), None
    _check_length(len(prompt_ids) + max_new_tokens)
    with torch.no_grad():
        ids = model.generate(torch.tensor([prompt_ids]), max_new_tokens, stop_token=stop)[0]
    return Sequence(ids, _labels(tokenizer, ids), len(prompt_ids), f"the model wrote {len(ids) - len(prompt_ids)} tokens")


def _task_example(source: ModelSource, seed: int) -> Sequence:
    from studio.tasks import get as get_task

    task = _run_task(source.path) if source.path is not None else None
    if not task:
        raise ExploreError(f"{source.label} has no training task to draw an example from; use the mode 'text'")
    example = get_task(task["name"], **(task.get("args") or {})).sample(1, torch.Generator().manual_seed(seed))
    ids = example.inputs[0][: MAX_TOKENS]
    scored = (example.targets[0][: len(ids)] >= 0).nonzero()
    start = int(scored[0]) if len(scored) else 0  # the first position the task scores
    return Sequence(ids, [str(int(i)) for i in ids], start, f"an example of the task {task['name']!r} (token ids)")


# ---- analysis and views ------------------------------------------------------------------------------
@dataclass
class Exploration:
    sequence: Sequence
    rhythm: analyses.Rhythm
    streaming: bool


def explore(model: HybridLM, seq: Sequence, layers: list[int] | None = None) -> Exploration:
    """The rhythm of `seq`: materialised patterns for short sequences, streaming statistics (the same
    numbers, linear memory) from STREAMING_FROM tokens on."""
    if seq.response_start >= len(seq.ids) - 1:
        raise ExploreError("the response is empty: nothing follows the prompt; ask for more new tokens")
    use_streaming = len(seq.ids) >= STREAMING_FROM
    with torch.no_grad():
        run = streaming_rhythm if use_streaming else analyses.rhythm
        r = run(model, seq.ids, seq.response_start, layers=layers)
    return Exploration(seq, r, use_streaming)


def layer_pattern(model: HybridLM, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """The effective attention pattern [H, T, T] of one layer (any mixer)."""
    if not 0 <= layer < len(model.blocks):
        raise ExploreError(f"layer {layer} does not exist; the model has layers 0..{len(model.blocks) - 1}")
    name = f"blocks.{layer}.attn.hook_pattern"
    with torch.no_grad():
        _, cache = model.run_with_cache(ids[None], names_filter=lambda n: n == name)
    return cache[name][0].float()


def views(model: HybridLM, exploration: Exploration, layer: int, graph_top_k: int = 2) -> dict:
    """Figures for the page: the layer's head grid, the WAAD/FAI trace, the highlighted text, the head
    spans and the token graph of the layer's head-mean pattern (top `graph_top_k` keys per query)."""
    seq, r = exploration.sequence, exploration.rhythm
    pattern = layer_pattern(model, seq.ids, layer)
    mixer = type(model.blocks[layer].attn).name
    graph = token_graph(pattern.mean(0), seq.labels, top_k=graph_top_k)
    return {
        "heads": head_grid(pattern, seq.labels, title=f"layer {layer} ({mixer}): effective attention per head"),
        "rhythm": rhythm_trace(r, seq.labels, title="WAAD (local heads) and FAI (global heads)"),
        "text": highlighted_text_html(seq.labels, r.preplan, r.anchors, r.response_start),
        "spans": head_span_bars(r.head_span, r.local_heads, r.global_heads, title="head span per layer"),
        "graph": graph_figure(graph, title=f"token graph of layer {layer} (head mean, top {graph_top_k} per token)"),
    }


def summary_line(model: HybridLM, exploration: Exploration) -> str:
    seq, r = exploration.sequence, exploration.rhythm
    how = "streaming statistics" if exploration.streaming else "materialised patterns"
    parts = [f"{len(seq.ids)} tokens, response from token {seq.response_start}",
             f"layers analysed {r.layers} of {len(model.blocks)}", f"{int(r.preplan.sum())} preplan and "
             f"{int(r.anchors.sum())} anchor tokens", how]
    if seq.note:
        parts.insert(0, seq.note)
    return "; ".join(parts) + "."
