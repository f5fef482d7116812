"""Ablation grids: variants x tasks x seeds, trained cell by cell, resumable, with tidy results and figures.

    table = run_grid("benchmarks/grids/hybrid_ratio_mqar.yaml", "results/hybrid-ratio")   # or `studio ablate`
    table.summary()                      # mean, std and n over seeds per variant x task
    table = load_results("results/hybrid-ratio")                                           # later, e.g. in the app

The grid file (YAML or JSON; docs/ablations.md has the full reference and worked examples):

    name: hybrid-ratio-mqar              # optional; default: the file's stem
    description: ...                     # optional, free text
    base:                                # an ArchSpec dict (explicit `layers`, or `pattern`/`ratio` + `pattern_map`)
      d_model: 64
      n_heads: 4
      n_layers: 8
      pattern: S
      pattern_map: {S: softmax}
      # vocab_size: 256                  # optional: left out (or "auto"), each cell takes its task's vocabulary
    variants:                            # name -> how it differs from the base (names: letters, digits, . _ -)
      standard: {}                                                       # the base as is (also `standard:`)
      hybrid-lightning: {configuration: hybrid, layer: {mixer: lightning}}
      skip: {configuration: skip}                                        # skip takes no layer
      ratio-3to1-gla: {ratio: "3:1", linear: {mixer: gla}, softmax: {mixer: softmax}}
      all-softmax: {ratio: "0:1"}                                        # softmax defaults to {mixer: softmax}
      wide-heads: {spec: {n_heads: 2, d_head: 32}}                       # ArchSpec fields over the base
      no-mlp-linear: {spec: {mlp: none}, configuration: uniform, layer: linear}   # spec first, then the layers
      slow: {train: {lr: 3.0e-4}}                                        # per-variant training overrides
    tasks:                               # a task name + its studio.tasks.get kwargs; optional label and train
      - {name: mqar, seq_len: 64, num_pairs: 8}
      - {name: mqar, seq_len: 128, num_pairs: 16, label: mqar-128-16}
      - {name: text, corpus: pydoc, seq_len: 128, train: {steps: 2000}}  # text cells also report perplexity
    seeds: [0, 1, 2]                     # or a count: `seeds: 3` is [0, 1, 2]
    train: {steps: 600, batch_size: 64, lr: 1.0e-3, eval_every: 100}    # `steps` + TrainConfig fields
    figures: [grouped_bars, ratio_curve] # optional; default: grouped_bars, + ratio_curve if a variant uses
                                         # `ratio`, + state_curve if a variant sets `state_size`
    metrics: [accuracy, loss]            # optional; the metrics the figures show (default: accuracy, loss,
                                         # + perplexity with a text task)

A variant is the base as is (`{}`), a layer `configuration` (uniform, hybrid, skip, top, middle, bottom,
first-only, last-only; `studio.configurations`) with its `layer`, a linear:softmax `ratio` with its
`linear` (and `softmax`) layer, and/or `spec` overrides (a shallow merge over the base; giving `layers`,
`pattern` or `ratio` there replaces the base's layers). `configuration` and `ratio` exclude each other;
`spec` is applied first. A layer is a layer dict or a mixer name. A variant may also carry `train`
(overrides), `state_size` (the number of state elements to plot it at; default: computed) and
`description`. Training options merge grid `train` < task `train` < variant `train`; `seed` comes from
`seeds`, `device` from the caller, the trainer's progress bar is off and `keep_checkpoints` defaults to 1.
Numbers such as `1e-3` (a string to YAML 1.1) are read as numbers in `train` and task arguments.

Cells run seed by seed (every variant x task of the first seed, then the second seed, ...) so an
interrupted grid has a first complete picture early. Each cell is a run directory
`OUT/cells/<variant>__<task label>__seed<k>/` (run.json, metrics.jsonl, its last checkpoint), plus
`cell.json` (the cell's full definition and its digest, written before training) and `result.json`
(written once the cell is done). Resuming is automatic: a cell with `result.json` is not trained again;
a cell with a checkpoint continues from it (`train(..., resume=True)`, which reproduces the uninterrupted
run exactly); a cell whose definition changed since (its spec, task, steps, options or seed) is an error
naming it, before anything trains, and so is one whose spec now builds with other defaults than it was
trained with (cell.json keeps `resolved_spec`, `ArchSpec.resolved`: a mixer default changed in the code
would otherwise change what an unchanged grid means); `stale_cells` lists both kinds. A cell whose loss
diverges is recorded with status "diverged" and no metrics; the grid goes on. A cell that raises (a bug,
out of memory) keeps its error in cell.json and no result; the others still run, and `run_grid` then
raises `CellsFailed` naming each (running again retries them).

Outputs in OUT, refreshed after every cell: `results.csv` and `results.json` (tidy: one row per cell),
`summary.csv` (mean, sample std and n over seeds per variant x task; std is empty with one seed), a copy
of the grid as `grid.yaml`; at the end `figures/<kind>-<metric>.html` and `.json` (plotly; the HTML files
share `figures/plotly.min.js`, so they work offline).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import time
import traceback
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

from studio.checkpoint import read_json
from studio.configurations import CONFIGURATIONS, apply_configuration, expand_layers, parse_ratio, ratio_layers

__all__ = ["Grid", "GridError", "CellsFailed", "Variant", "TaskEntry", "Cell", "ResultsTable", "load_grid", "run_grid",
           "stale_cells", "load_results", "summarize_rows", "COLUMNS", "METRICS", "FIGURE_KINDS"]

CELL_FORMAT = "hybrid-attention-studio/ablation-cell@1"
RESULTS_FORMAT = "hybrid-attention-studio/ablation@1"
METRICS = ("accuracy", "exact_match", "loss", "perplexity")
FIGURE_KINDS = ("grouped_bars", "ratio_curve", "state_curve")
GRID_KEYS = ("name", "description", "base", "variants", "tasks", "seeds", "train", "figures", "metrics")
VARIANT_KEYS = ("configuration", "layer", "ratio", "linear", "softmax", "spec", "train", "state_size", "description")
TASK_KEYS = ("name", "label", "train")
LAYER_KEYS = ("layers", "pattern", "ratio", "pattern_map")
# What the runner sets itself, and where a grid sets it instead.
RESERVED_TRAIN = {"seed": "the seed comes from `seeds:`", "device": "the device is chosen when the grid runs "
                  "(run_grid(device=...), studio ablate --device)", "progress": "the runner shows one bar over cells"}
DONE = ("finished", "reached_target")
# The columns of results.csv, in order (configuration and size info, then the task, then the outcome).
COLUMNS = ("variant", "configuration", "layer", "ratio", "linear", "softmax_share", "mixers", "n_layers", "n_heads",
           "d_head", "state_size", "task", "task_name", "seq_len", "seed", "status", *METRICS, "params", "steps",
           "seconds", "device", "resumed", "cell", "definition", "error")
# Columns describing a variant x task, constant over seeds, carried into the summary.
SUMMARY_KEYS = ("variant", "task", "task_name", "configuration", "layer", "ratio", "linear", "softmax_share",
                "mixers", "n_layers", "n_heads", "d_head", "state_size", "params", "seq_len")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


class GridError(ValueError):
    """A grid that cannot run; `problems` lists one line per problem (each names the variant, task or
    field and how to fix it)."""

    def __init__(self, problems: list[str], name: str = ""):
        self.problems = list(problems)
        title = f"invalid ablation grid {name!r}" if name else "invalid ablation grid"
        super().__init__(title + ":\n  - " + "\n  - ".join(self.problems))


class CellsFailed(RuntimeError):
    """Cells that raised while training (not a divergence: a bug, a missing kernel, out of memory). The rest
    of the grid ran; `errors` maps each cell to its error, `table` holds what finished. The failed cells
    keep no result, so running the grid again retries them once the cause is fixed."""

    def __init__(self, errors: dict[str, str], table: "ResultsTable"):
        self.errors, self.table = dict(errors), table
        super().__init__(f"{len(errors)} cell(s) failed; the other cells ran and finished cells are kept. Fix the "
                         "cause and run the grid again to retry them:\n  - "
                         + "\n  - ".join(f"{name}: {error}" for name, error in errors.items()))


# ---- the grid ---------------------------------------------------------------------------------------
def _number(value: Any) -> Any:
    """'1e-3' (YAML 1.1 reads it as a string) -> 0.001; anything else unchanged."""
    if isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        return float(value)
    return value


def _layer(value: Any, where: str, problems: list[str]) -> dict | None:
    if isinstance(value, str) and value:
        return {"mixer": value}
    if isinstance(value, dict) and isinstance(value.get("mixer"), str):
        return copy.deepcopy(value)
    problems.append(f"{where}: {value!r} is not a layer; give a mixer name or a layer dict such as {{mixer: lightning}}")
    return None


def _describe(layer: dict | None) -> str:
    """A layer dict as short text: 'softmax qk=collapsed'."""
    if not layer:
        return ""
    extra = " ".join(f"{k}={v}" for k, v in layer.items() if k != "mixer")
    return f"{layer['mixer']} {extra}".strip()


@dataclass
class Variant:
    """One named architecture of a grid: how it differs from the base."""

    name: str
    configuration: str | None = None   # a studio.configurations name
    layer: dict | None = None          # the variant layer of a configuration
    ratio: str | None = None           # 'linear:softmax'
    linear: dict | None = None
    softmax: dict | None = None
    spec: dict = field(default_factory=dict)    # ArchSpec fields over the base
    train: dict = field(default_factory=dict)   # training overrides
    state_size: int | None = None
    description: str = ""

    @property
    def kind(self) -> str:
        """The `configuration` column: a configuration name, 'ratio', 'custom' (spec only) or 'base'."""
        if self.configuration:
            return self.configuration
        if self.ratio is not None:
            return "ratio"
        return "custom" if self.spec else "base"

    def build(self, base: dict) -> dict:
        """The variant's spec dict (explicit layers; vocab_size as the base or variant gives it)."""
        data = copy.deepcopy(base)
        if set(self.spec) & {"layers", "pattern", "ratio"}:
            for key in LAYER_KEYS:
                data.pop(key, None)
        data.update(copy.deepcopy(self.spec))
        if self.configuration:
            data = apply_configuration(data, self.configuration, self.layer)
        else:
            data = expand_layers(data)
            if self.ratio is not None:
                data["layers"] = ratio_layers(data["n_layers"], self.linear, self.softmax, self.ratio)
        data["name"] = self.name
        return data

    def info(self) -> dict:
        a, _ = parse_ratio(self.ratio) if self.ratio is not None else (0, 0)
        return {"variant": self.name, "configuration": self.kind, "layer": _describe(self.layer),
                "ratio": self.ratio or "", "linear": _describe(self.linear) if a else ""}


@dataclass
class TaskEntry:
    """One task of a grid: `studio.tasks.get(name, **args)`, shown as `label`."""

    label: str
    name: str
    args: dict
    train: dict = field(default_factory=dict)
    task: Any = field(default=None, repr=False)  # the resolved studio.tasks.Task


@dataclass
class Cell:
    """One training run of a grid: a variant on a task with a seed."""

    variant: Variant
    task: TaskEntry
    seed: int
    spec: dict
    steps: int
    opts: dict  # TrainConfig fields (without seed, device, progress)

    @property
    def name(self) -> str:
        return f"{self.variant.name}__{self.task.label}__seed{self.seed}"

    def definition(self) -> dict:
        """Everything that decides what the cell trains (the device does not)."""
        return {"variant": self.variant.name, "spec": self.spec, "task": {"name": self.task.name, "args": self.task.args},
                "steps": self.steps, "train": self.opts, "seed": self.seed}

    def digest(self) -> str:
        text = json.dumps(self.definition(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def resolved_spec(self) -> dict | None:
        """The spec with every default written out (`ArchSpec.resolved`): kept in cell.json when the cell
        starts, so that a default changed since shows (`_changed_defaults`); None if it does not build."""
        from studio.spec import ArchSpec

        try:
            return ArchSpec.from_dict(self.spec).resolved()
        except Exception:  # noqa: BLE001 - the grid check reports a spec that does not build
            return None


@dataclass
class Grid:
    name: str
    base: dict
    variants: dict[str, Variant]
    tasks: list[TaskEntry]
    seeds: list[int]
    train: dict
    figures: list[str]
    metrics: list[str]
    description: str = ""
    text: str = ""  # the grid file as given (copied to OUT/grid.yaml)

    def spec_for(self, variant: Variant, task: TaskEntry) -> dict:
        spec = variant.build(self.base)
        if spec.get("vocab_size") in (None, "auto"):
            spec["vocab_size"] = task.task.vocab_size
        return spec

    def train_for(self, variant: Variant, task: TaskEntry) -> tuple[int, dict]:
        opts = {"keep_checkpoints": 1, **self.train, **task.train, **variant.train}
        return int(opts.pop("steps")), opts

    def cells(self) -> list[Cell]:
        """Every cell in run order: seed by seed, then variant by variant, then task by task."""
        out = []
        for seed in self.seeds:
            for variant in self.variants.values():
                for task in self.tasks:
                    steps, opts = self.train_for(variant, task)
                    out.append(Cell(variant, task, seed, self.spec_for(variant, task), steps, opts))
        return out

    def layer_dicts(self) -> dict[str, list[dict]]:
        """Each variant's layers (built without validation)."""
        return {name: v.build(self.base)["layers"] for name, v in self.variants.items()}

    def unavailable(self) -> list[str]:
        """Mixers, and mixer parameters, the grid uses that are not registered (yet): e.g.
        ["mixer 'mlp_mixing'", "parameter 'qk' of mixer 'softmax'"]. Empty when every spec can build."""
        from studio.mixers import REGISTRY

        missing: list[str] = []
        for layers in self.layer_dicts().values():
            for layer in layers:
                mixer = layer["mixer"]
                if mixer not in REGISTRY:
                    item = f"mixer {mixer!r}"
                else:
                    allowed = set(REGISTRY[mixer].Params.model_fields) | {"mixer", "positional", "mlp"}
                    unknown = sorted(set(layer) - allowed)
                    item = ", ".join(f"parameter {p!r} of mixer {mixer!r}" for p in unknown)
                if item and item not in missing:
                    missing.append(item)
        return missing

    def validate(self, skip_unavailable: bool = False) -> None:
        """Build every variant's spec for every task's vocabulary (ArchSpec.from_dict) and check the task
        fits; raise `GridError` listing every problem. With `skip_unavailable`, variants that use a mixer
        or parameter that is not registered are left out of the check (see `unavailable`)."""
        from studio.mixers import REGISTRY
        from studio.spec import ArchSpec, SpecError

        problems = []
        for name, variant in self.variants.items():
            built = variant.build(self.base)
            if skip_unavailable and any(
                    layer["mixer"] not in REGISTRY
                    or set(layer) - set(REGISTRY[layer["mixer"]].Params.model_fields) - {"mixer", "positional", "mlp"}
                    for layer in built["layers"]):
                continue
            seen: set = set()
            for task in self.tasks:
                spec = self.spec_for(variant, task)
                if spec["vocab_size"] not in seen:
                    seen.add(spec["vocab_size"])
                    try:
                        ArchSpec.from_dict(spec)
                    except SpecError as err:
                        lines = "; ".join(f"{f}: {m}" if f else m for f, m in err.problems)
                        problems.append(f"variants.{name}: its spec does not build: {lines}")
                        break
                if isinstance(spec["vocab_size"], int) and spec["vocab_size"] < task.task.vocab_size:
                    problems.append(f"variants.{name} on task {task.label!r}: vocab_size={spec['vocab_size']} is smaller "
                                    f"than the task's {task.task.vocab_size} tokens; raise vocab_size to at least "
                                    f"{task.task.vocab_size}, or leave it out of the base so each cell takes its task's")
        if problems:
            raise GridError(problems, self.name)


def _read_source(source: Any) -> tuple[dict, str, str]:
    """(data, text, default name) of a grid given as a dict, a path or YAML/JSON text."""
    if isinstance(source, dict):
        return copy.deepcopy(source), yaml.safe_dump(source, sort_keys=False), ""
    text, name = None, ""
    if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source.strip()
                                           and len(source) < 4096):
        path = Path(source)
        if not path.is_file():
            raise GridError([f"no grid file at {str(path)!r}"])
        text, name = path.read_text(), path.stem
    elif isinstance(source, str):
        text = source
    else:
        raise GridError([f"a grid is a dict, a file path or YAML text, got {type(source).__name__}"])
    return parse_grid_text(text), text, name


def _check_train(opts: Any, where: str, problems: list[str], need_steps: bool = False) -> dict:
    """A `train` block: known keys with numbers of the right kind; returns it normalised."""
    from studio.train import TrainConfig

    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        problems.append(f"{where}: must be a mapping of training options, e.g. {{steps: 600, lr: 1.0e-3}}")
        return {}
    kinds = {f.name: f.type for f in fields(TrainConfig)}
    out = {}
    for key, value in opts.items():
        value = _number(value)
        if key in RESERVED_TRAIN:
            problems.append(f"{where}.{key}: not a grid option ({RESERVED_TRAIN[key]}); remove it")
            continue
        if key != "steps" and key not in kinds:
            allowed = ["steps", *(k for k in kinds if k not in RESERVED_TRAIN)]
            problems.append(f"{where}.{key}: unknown training option; allowed: {', '.join(allowed)}")
            continue
        kind = "int" if key == "steps" else str(kinds[key])
        ok = True
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind in ("float", "float | None"):
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) or (value is None and "None" in kind)
            value = float(value) if ok and value is not None else value
        elif kind.startswith("tuple"):
            ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
                isinstance(_number(v), (int, float)) for v in value)
            value = tuple(float(_number(v)) for v in value) if ok else value
        if not ok:
            wanted = "a pair of numbers" if kind.startswith("tuple") else "an integer" if kind == "int" else "a number"
            problems.append(f"{where}.{key}: {value!r} is not {wanted}")
            continue
        out[key] = value
    if "steps" in out and out["steps"] < 1:
        problems.append(f"{where}.steps: must be >= 1, got {out['steps']}")
    if need_steps and "steps" not in out:
        problems.append(f"{where}.steps: required: the optimizer steps of every cell, e.g. train: {{steps: 600}}")
    return out


def parse_grid_text(text: str) -> dict:
    """A grid's YAML (or JSON) text -> its mapping; GridError when it is not YAML or not a mapping."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise GridError([f"not valid YAML: {err}"]) from None
    if not isinstance(data, dict):
        raise GridError([f"a grid is a mapping (name, base, variants, tasks, seeds, train), got "
                         f"{type(data).__name__}"])
    return data


def _parse_variant(name: Any, raw: Any, problems: list[str]) -> Variant | None:
    where = f"variants.{name}"
    if not isinstance(name, str) or not _NAME.match(name) or "__" in name:
        problems.append(f"{where}: a variant name is letters, digits, '.', '_' or '-' (no '__', at most 80), "
                        f"e.g. hybrid-lightning")
        return None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping, e.g. {{configuration: hybrid, layer: {{mixer: lightning}}}} "
                        "or {} for the base as is")
        return None
    unknown = sorted(set(raw) - set(VARIANT_KEYS))
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(VARIANT_KEYS)}")
    v = Variant(name, description=str(raw.get("description") or ""))
    n_before = len(problems)
    if "configuration" in raw and "ratio" in raw:
        problems.append(f"{where}: give either `configuration` or `ratio`, not both (make two variants)")
    if "configuration" in raw:
        conf = raw["configuration"]
        norm = conf.strip().lower().replace("_", "-") if isinstance(conf, str) else conf
        if norm not in CONFIGURATIONS:
            problems.append(f"{where}.configuration: unknown configuration {conf!r}; allowed: {', '.join(CONFIGURATIONS)}")
        else:
            v.configuration = norm
            if norm == "skip":
                if raw.get("layer") is not None:
                    problems.append(f"{where}: `skip` removes the odd layers whatever would replace them, so it takes "
                                    "no `layer`; remove it (one skip variant serves every hybrid)")
            elif "layer" not in raw:
                problems.append(f"{where}: configuration {norm!r} needs the `layer` that goes into the chosen layers, "
                                "e.g. layer: {mixer: lightning}")
            else:
                v.layer = _layer(raw["layer"], f"{where}.layer", problems)
    elif "layer" in raw:
        problems.append(f"{where}: `layer` without a `configuration`; add configuration: "
                        f"{' | '.join(CONFIGURATIONS)}")
    if "ratio" in raw:
        try:
            a, b = parse_ratio(str(raw["ratio"]))
            v.ratio = f"{a}:{b}"
        except ValueError as err:
            problems.append(f"{where}.ratio: {err}")
            a = b = 0
        if a:
            if "linear" not in raw:
                problems.append(f"{where}: ratio {v.ratio!r} has linear layers; give `linear`, e.g. linear: {{mixer: gla}}")
            else:
                v.linear = _layer(raw["linear"], f"{where}.linear", problems)
        v.softmax = _layer(raw.get("softmax", "softmax"), f"{where}.softmax", problems) if b else None
    for key in ("linear", "softmax"):
        if key in raw and "ratio" not in raw:
            problems.append(f"{where}: `{key}` without a `ratio`; add ratio: \"3:1\" (linear:softmax)")
    spec = raw.get("spec") or {}
    if not isinstance(spec, dict):
        problems.append(f"{where}.spec: must be a mapping of ArchSpec fields, e.g. {{n_heads: 2, d_head: 32}}")
    else:
        v.spec = spec
    v.train = _check_train(raw.get("train"), f"{where}.train", problems)
    if "state_size" in raw:
        size = raw["state_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            problems.append(f"{where}.state_size: a positive integer (state elements), got {size!r}")
        else:
            v.state_size = size
    return v if len(problems) == n_before else None


def _parse_tasks(raw: Any, problems: list[str]) -> list[TaskEntry]:
    from studio import tasks as task_registry

    if not isinstance(raw, list) or not raw:
        problems.append("tasks: a non-empty list of tasks, e.g. - {name: mqar, seq_len: 64, num_pairs: 8}")
        return []
    entries = []
    for i, item in enumerate(raw):
        where = f"tasks[{i}]"
        item = {"name": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            problems.append(f"{where}: a task is a mapping with a `name` ({', '.join(sorted(task_registry.REGISTRY))}) "
                            "and that task's arguments")
            continue
        args = {k: _number(v) for k, v in item.items() if k not in TASK_KEYS}
        train = _check_train(item.get("train"), f"{where}.train", problems)
        label = item.get("label")
        if label is not None and (not isinstance(label, str) or not _NAME.match(label) or "__" in label):
            problems.append(f"{where}.label: {label!r} must be letters, digits, '.', '_' or '-' (no '__'), e.g. mqar-128")
            continue
        entries.append(TaskEntry(label or "", item["name"], args, train))
    # default labels: the name when it is unique, else name + arguments
    for entry in entries:
        if not entry.label:
            same = [e for e in entries if e.name == entry.name]
            entry.label = entry.name if len(same) == 1 else re.sub(
                r"[^A-Za-z0-9._-]+", "-", "-".join([entry.name, *(f"{k}{v}" for k, v in entry.args.items())]))[:80]
    labels = [e.label for e in entries]
    for label in sorted({l for l in labels if labels.count(l) > 1}):
        where = ", ".join(f"tasks[{i}]" for i, l in enumerate(labels) if l == label)
        problems.append(f"{where} share the label {label!r}; give each a distinct `label`")
    for i, entry in enumerate(entries):
        try:
            entry.task = task_registry.get(entry.name, **entry.args)
        except (ValueError, FileNotFoundError) as err:
            problems.append(f"tasks[{i}] ({entry.label}): {err}")
    return entries


def load_grid(source: Any, check_specs: bool = True) -> Grid:
    """Read and check a grid (a dict, a YAML/JSON file path, or YAML text). The structure, every task
    (resolved with studio.tasks.get) and every training option are always checked; with `check_specs`
    every variant's spec is also built for every task (`Grid.validate`). Raises `GridError` with one
    line per problem, naming the variant, task or field."""
    data, text, default_name = _read_source(source)
    problems: list[str] = []
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        problems.append(f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(GRID_KEYS)}")
    name = data.get("name") or default_name or "grid"
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"name: {name!r} must be letters, digits, '.', '_' or '-'")
        name = "grid"
    base = data.get("base")
    if not isinstance(base, dict):
        problems.append("base: required: the ArchSpec dict every variant starts from, e.g. {d_model: 64, n_heads: 4, "
                        "n_layers: 6, pattern: S, pattern_map: {S: softmax}}")
        base = None
    else:
        try:
            expand_layers(base)
        except ValueError as err:
            problems.append(f"base: {err}")
            base = None
    raw_variants = data.get("variants")
    variants: dict[str, Variant] = {}
    if not isinstance(raw_variants, dict) or not raw_variants:
        problems.append("variants: a non-empty mapping of name -> variant, e.g. standard: {} and "
                        "hybrid-lightning: {configuration: hybrid, layer: {mixer: lightning}}")
    else:
        for vname, raw in raw_variants.items():
            variant = _parse_variant(vname, raw, problems)
            if variant is not None:
                variants[vname] = variant
    entries = _parse_tasks(data.get("tasks"), problems)
    seeds = data.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        seeds = list(range(seeds))
    if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                            for s in seeds) or len(set(seeds)) != len(seeds)):
        problems.append(f"seeds: {seeds!r} must be a list of distinct non-negative integers (e.g. [0, 1, 2]) or a count")
        seeds = [0]
    train = _check_train(data.get("train"), "train", problems)
    # every cell needs steps: from the grid, its task or its variant
    if "steps" not in train:
        lacking = [f"{v.name} on {t.label}" for v in variants.values() for t in entries
                   if "steps" not in t.train and "steps" not in v.train]
        if lacking:
            problems.append(f"train.steps: required (the optimizer steps of every cell, e.g. train: {{steps: 600}}); "
                            f"missing for {', '.join(lacking[:3])}{' ...' if len(lacking) > 3 else ''}")
    has_text = any(t.name == "text" for t in entries)
    metrics = data.get("metrics") or ["accuracy", "loss"] + (["perplexity"] if has_text else [])
    if not isinstance(metrics, list) or not all(m in METRICS for m in metrics):
        problems.append(f"metrics: {metrics!r} must be a list of: {', '.join(METRICS)}")
        metrics = ["accuracy"]
    figures = data.get("figures")
    if figures is None:
        figures = ["grouped_bars"]
        figures += ["ratio_curve"] if any(v.ratio is not None for v in variants.values()) else []
        figures += ["state_curve"] if any(v.state_size is not None for v in variants.values()) else []
    elif not isinstance(figures, list) or not all(f in FIGURE_KINDS for f in figures):
        problems.append(f"figures: {figures!r} must be a list of: {', '.join(FIGURE_KINDS)}")
        figures = ["grouped_bars"]
    # the layers of every variant (configuration needs enough layers, ratio needs whole groups, ...)
    if base is not None:
        for vname, variant in list(variants.items()):
            try:
                variant.build(base)
            except ValueError as err:
                problems.append(f"variants.{vname}: {err}")
                del variants[vname]
        # training options of every variant x task, checked by TrainConfig itself
        from studio.train import TrainConfig

        checked = set()
        for variant in variants.values():
            for entry in entries:
                opts = {**train, **entry.train, **variant.train}
                opts.pop("steps", None)
                key = json.dumps(opts, sort_keys=True, default=str)
                if key in checked:
                    continue
                checked.add(key)
                try:
                    TrainConfig(**opts).validate()
                except (ValueError, TypeError) as err:
                    problems.append(f"train (variant {variant.name}, task {entry.label}): {err}")
    if problems:
        raise GridError(problems, name)
    grid = Grid(name=name, base=base, variants=variants, tasks=entries, seeds=seeds, train=train, figures=figures,
                metrics=metrics, description=str(data.get("description") or ""), text=text)
    if check_specs:
        grid.validate()
    return grid


# ---- results ------------------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize_rows(rows: list[dict], metrics: tuple[str, ...] = METRICS) -> list[dict]:
    """Mean, sample standard deviation (None with one seed) and n over seeds per variant x task, in the
    order the rows first name them. Cells that diverged count in `failed`, not in the statistics."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["variant"], row["task"]), []).append(row)
    out = []
    for members in groups.values():
        ok = [r for r in members if r.get("status") in DONE]
        first = members[0]
        entry = {k: first.get(k) for k in SUMMARY_KEYS}
        entry["n"], entry["failed"] = len(ok), len(members) - len(ok)
        entry["seeds"] = " ".join(str(r["seed"]) for r in sorted(ok, key=lambda r: r["seed"]))
        for metric in (*metrics, "seconds", "steps"):
            values = [float(r[metric]) for r in ok if r.get(metric) is not None and math.isfinite(float(r[metric]))]
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = _mean_std(values)
        out.append(entry)
    return out


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buf.getvalue()


def _columns(rows: list[dict], first: tuple[str, ...]) -> list[str]:
    extra = [k for row in rows for k in row if k not in first]
    return [*first, *dict.fromkeys(extra)]


@dataclass
class ResultsTable:
    """The tidy results of a grid: `rows` (one dict per finished cell, keys `COLUMNS`), their
    `summary()` over seeds, CSV/JSON/pandas views, and where they were written."""

    rows: list[dict]
    name: str = ""
    cells_total: int | None = None
    out_dir: Path | None = None
    figures: dict[str, Path] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    @property
    def complete(self) -> bool:
        return self.cells_total is not None and len(self.rows) >= self.cells_total

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys(r["variant"] for r in self.rows))

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(r["task"] for r in self.rows))

    @property
    def metrics(self) -> list[str]:
        """The metrics that have a value in some row."""
        return [m for m in METRICS if any(r.get(m) is not None for r in self.rows)]

    def summary(self) -> list[dict]:
        return summarize_rows(self.rows)

    def to_csv(self, path: str | Path | None = None) -> str:
        text = _csv(self.rows, _columns(self.rows, COLUMNS))
        if path is not None:
            _write(path, text)
        return text

    def summary_csv(self, path: str | Path | None = None) -> str:
        summary = self.summary()
        stats = [f"{m}_{s}" for m in (*METRICS, "seconds", "steps") for s in ("mean", "std")]
        text = _csv(summary, _columns(summary, (*SUMMARY_KEYS, "n", "failed", "seeds", *stats)))
        if path is not None:
            _write(path, text)
        return text

    def to_dict(self) -> dict:
        return {"format": RESULTS_FORMAT, "name": self.name, "cells_total": self.cells_total,
                "cells_done": len(self.rows), "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "rows": self.rows, "summary": self.summary()}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False, default=str) + "\n"
        if path is not None:
            _write(path, text)
        return text

    def to_dataframe(self):
        """The rows as a pandas DataFrame (pandas comes with the app's extras)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=_columns(self.rows, COLUMNS))

    def summary_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.summary())


def _write(path: str | Path, text: str) -> None:
    from studio.checkpoint import atomic_write_text

    atomic_write_text(path, text)


def _sort_rows(rows: list[dict], grid: Grid | None = None) -> list[dict]:
    """Grid order (variant, then task, then seed) when the grid is known; else as found."""
    if grid is None:
        return sorted(rows, key=lambda r: (r["variant"], r["task"], r["seed"]))
    vi = {name: i for i, name in enumerate(grid.variants)}
    ti = {t.label: i for i, t in enumerate(grid.tasks)}
    return sorted(rows, key=lambda r: (vi.get(r["variant"], 1 << 30), ti.get(r["task"], 1 << 30), r["seed"]))


def load_results(out_dir: str | Path) -> ResultsTable:
    """The results of a grid run in `out_dir` (finished or not): results.json, or, if that is missing,
    every cell's result.json."""
    out = Path(out_dir)
    path = out / "results.json"
    figures = {p.stem: p for p in sorted((out / "figures").glob("*.html"))} if (out / "figures").is_dir() else {}
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("format") != RESULTS_FORMAT:
            raise ValueError(f"{path} is not an ablation results file (format {RESULTS_FORMAT!r})")
        return ResultsTable(data["rows"], data.get("name", ""), data.get("cells_total"), out, figures)
    cells = sorted((out / "cells").glob("*/result.json")) if (out / "cells").is_dir() else []
    if not cells:
        raise FileNotFoundError(f"no ablation results in {str(out)!r}: it has neither results.json nor "
                                "cells/*/result.json (run `studio ablate GRID --out DIR` first)")
    rows = []
    for cell in cells:
        row = json.loads(cell.read_text())
        row.pop("format", None)
        rows.append(row)
    return ResultsTable(_sort_rows(rows), out.name, None, out, figures)


# ---- running -------------------------------------------------------------------------------------------
def _device_name(device: str) -> str:
    import torch

    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu or auto")
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


def _final_eval(cell_dir: Path) -> dict:
    """The last evaluation record of a finished run (metrics.jsonl)."""
    last = None
    for line in (cell_dir / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if "eval_loss" in record:
                last = record
    if last is None:
        raise RuntimeError(f"{cell_dir} finished without an evaluation record in metrics.jsonl")
    return last


def _finite(value: Any) -> float | None:
    """A metric as a float, or None when missing or not finite (results.json stays standard JSON)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _cell_info(cell: Cell) -> dict:
    """The descriptive columns of a cell's row (everything but the outcome)."""
    from studio.configurations import softmax_share

    layers = cell.spec["layers"]
    n_heads = cell.spec["n_heads"]
    d_head = cell.spec.get("d_head") or cell.spec["d_model"] // n_heads
    return {**cell.variant.info(), "softmax_share": softmax_share(layers),
            "mixers": "+".join(sorted({layer["mixer"] for layer in layers})), "n_layers": len(layers),
            "n_heads": n_heads, "d_head": d_head, "state_size": cell.variant.state_size, "task": cell.task.label,
            "task_name": cell.task.name, "seq_len": getattr(cell.task.task, "seq_len", None), "seed": cell.seed}


def _sizes(cell: Cell) -> tuple[int | None, int | None]:
    """(parameters, decoding state elements over all layers at the task's length), from studio.summary."""
    from studio.spec import ArchSpec
    from studio.summary import summarize

    length = getattr(cell.task.task, "seq_len", None) or 1024
    try:
        s = summarize(ArchSpec.from_dict(cell.spec), length=length, dtype_bytes=1, contexts=(length,), compare=False)
        return s.params, s.state_bytes(length)
    except Exception:  # a cost model that fails must not lose a trained cell
        return None, None


def _run_cell(cell: Cell, cell_dir: Path, device: str, callback: Callable | None) -> dict | None:
    """Train (or resume, or just collect) one cell; write and return its result row, or None if the
    callback stopped it before the end."""
    from studio.train import TrainingDiverged, read_run, train

    state = read_json(cell_dir / "cell.json") or {}
    seconds_before = float(state.get("seconds", 0.0)) if state.get("digest") == cell.digest() else 0.0
    mode = "fresh"
    if (cell_dir / "run.json").exists():
        try:
            run = read_run(cell_dir)
        except (ValueError, OSError):
            run = {}
        if run.get("status") in DONE:
            mode = "collect"
        elif run.get("last_checkpoint") and (cell_dir / run["last_checkpoint"]).is_dir():
            mode = "resume"
    if mode == "fresh" and cell_dir.exists():
        shutil.rmtree(cell_dir)  # a start without any checkpoint: nothing to resume from
    # the defaults the cell was trained with: computed when it starts, kept while it resumes or is collected
    resolved = cell.resolved_spec() if mode == "fresh" else state.get("resolved_spec")
    record = {"format": CELL_FORMAT, "cell": cell.name, "digest": cell.digest(), "definition": cell.definition(),
              **({"resolved_spec": resolved} if resolved is not None else {}), "seconds": seconds_before}
    _write(cell_dir / "cell.json", json.dumps(record, indent=2, default=str) + "\n")
    hook = (lambda rec: callback(cell.name, rec)) if callback is not None else None
    error, start = None, time.perf_counter()
    try:
        if mode == "fresh":
            train(cell.spec, cell.task.task, cell.steps, cell_dir, callback=hook, seed=cell.seed, device=device,
                  progress=False, **cell.opts)
        elif mode == "resume":
            train(None, None, cell.steps, cell_dir, resume=True, callback=hook, device=device, progress=False)
    except TrainingDiverged as err:
        error = str(err)
    finally:
        record["seconds"] = seconds_before + time.perf_counter() - start
        _write(cell_dir / "cell.json", json.dumps(record, indent=2, default=str) + "\n")
    run = read_run(cell_dir)
    if error is None and run.get("status") not in DONE:
        return None  # stopped by the callback: resumes from its checkpoint next time
    params, state_elements = _sizes(cell)
    row = {**_cell_info(cell), "status": "diverged" if error else run["status"],
           **{m: None for m in METRICS}, "params": params, "steps": run.get("step"),
           "seconds": record["seconds"], "device": _device_name(device), "resumed": mode != "fresh",
           "cell": cell.name, "definition": cell.digest(), "error": error}
    if row["state_size"] is None:
        row["state_size"] = state_elements
    if error is None:
        final = _final_eval(cell_dir)
        row.update(accuracy=_finite(final.get("eval_accuracy")), exact_match=_finite(final.get("eval_exact_match")),
                   loss=_finite(final["eval_loss"]), steps=final["step"])
        if cell.task.name == "text" and row["loss"] is not None:
            row["perplexity"] = math.exp(min(row["loss"], 700.0))
    _write(cell_dir / "result.json", json.dumps({"format": CELL_FORMAT, **row}, indent=2) + "\n")
    return row


def _changed_defaults(before: Any, now: Any, path: str = "") -> list[str]:
    """`key: old -> new` for every value two resolved specs both have and disagree on (a parameter added
    or removed since is not a change of what the cell trained)."""
    if isinstance(before, dict) and isinstance(now, dict):
        return [change for key in before if key in now
                for change in _changed_defaults(before[key], now[key], f"{path}.{key}" if path else str(key))]
    if isinstance(before, list) and isinstance(now, list) and len(before) == len(now):
        return [change for i, (b, n) in enumerate(zip(before, now)) for change in _changed_defaults(b, n, f"{path}.{i}")]
    return [] if before == now else [f"{path}: {before!r} -> {now!r}"]


def stale_cells(cells: list[Cell], cells_dir: str | Path) -> dict[str, str]:
    """Cells already in `cells_dir` that `run_grid` refuses, by name, each with why: run with another
    definition than the grid gives it now, or trained with defaults that have changed since."""
    cells_dir, stale = Path(cells_dir), {}
    for cell in cells:
        state = read_json(cells_dir / cell.name / "cell.json") or {}
        stored = (state.get("digest"), (read_json(cells_dir / cell.name / "result.json") or {}).get("definition"))
        if any(digest and digest != cell.digest() for digest in stored):
            stale[cell.name] = (f"cell {cell.name} in {cells_dir} was run with another definition (the grid changed "
                                f"its spec, task, steps, training options or seed); delete {cells_dir / cell.name} "
                                "to run it again as defined now, or write to a new output folder")
            continue
        now = cell.resolved_spec() if state.get("resolved_spec") else None
        changed = _changed_defaults(state["resolved_spec"], now) if now is not None else []  # (None: does not build)
        if changed:
            stale[cell.name] = (f"cell {cell.name} in {cells_dir} was trained with defaults that have changed since "
                                f"({'; '.join(changed[:3])}{'; ...' if len(changed) > 3 else ''}); set the old "
                                f"values in the grid to keep it, or delete {cells_dir / cell.name} to run it again "
                                "with today's defaults")
    return stale


def _check_definitions(cells: list[Cell], cells_dir: Path) -> None:
    """Cells already in the output folder must be the grid's cells as defined now, built with the defaults
    they were trained with (`stale_cells`)."""
    problems = list(stale_cells(cells, cells_dir).values())
    if problems:
        raise GridError(problems)


def _write_outputs(out: Path, grid: Grid, rows: dict[str, dict], total: int) -> ResultsTable:
    table = ResultsTable(_sort_rows(list(rows.values()), grid), grid.name, total, out)
    table.to_csv(out / "results.csv")
    table.to_json(out / "results.json")
    table.summary_csv(out / "summary.csv")
    return table


def _finished_rows(cells: list[Cell], cells_dir: Path) -> dict[str, dict]:
    """The result rows of the cells finished under their current definition, by cell name."""
    rows = {}
    for cell in cells:
        result = read_json(cells_dir / cell.name / "result.json")
        if result and result.get("definition") == cell.digest():
            result.pop("format", None)
            rows[cell.name] = result
    return rows


def run_grid(grid: Grid | dict | str | Path, out_dir: str | Path, progress: bool = True, max_cells: int | None = None,
             device: str = "auto", callback: Callable[[str, dict], Any] | None = None,
             shard: tuple[int, int] | None = None) -> ResultsTable:
    """Run every cell of `grid` (a `Grid`, dict, file path or YAML text) into `out_dir` and return the
    results table. The whole grid is checked first (`GridError`, nothing trains). Finished cells are
    skipped; interrupted ones resume from their checkpoint. `max_cells` trains at most that many cells
    in this call (cells already done do not count). `device`: auto | cpu | cuda. `callback(cell_name,
    record)` sees every training record; returning "stop" ends the grid after that cell's checkpoint
    (the next call resumes it). results.csv, results.json and summary.csv are rewritten after every
    cell; the figures at the end of the call. `shard=(i, n)` trains only the cells at positions i, i + n,
    i + 2n, ... so n processes can share a grid (`studio ablate --workers n`); every write re-reads the
    finished cells of all of them."""
    from tqdm.auto import tqdm

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if max_cells is not None and (not isinstance(max_cells, int) or max_cells < 0):
        raise ValueError(f"max_cells must be a non-negative integer, got {max_cells!r}")
    if shard is not None and not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
    _device_name(device)  # a missing GPU is an error before anything runs
    if not isinstance(grid, Grid):
        grid = load_grid(grid)
    out = Path(out_dir)
    cells_dir = out / "cells"
    cells = grid.cells()
    _check_definitions(cells, cells_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "grid.yaml", grid.text)
    rows = _finished_rows(cells, cells_dir)
    table = _write_outputs(out, grid, rows, len(cells))
    mine = {c.name for i, c in enumerate(cells) if shard is None or i % shard[1] == shard[0]}
    trained, errors = 0, {}
    bar = tqdm(total=len(cells), initial=len(rows), disable=not progress, desc=f"ablate {grid.name}", unit="cell",
               dynamic_ncols=True)
    try:
        for cell in cells:
            if cell.name in rows or cell.name not in mine:
                continue
            if max_cells is not None and trained >= max_cells:
                break
            bar.set_postfix_str(cell.name)
            trained += 1
            try:
                row = _run_cell(cell, cells_dir / cell.name, device, callback)
            except Exception as err:  # one broken cell does not stop the others; it runs again next time
                errors[cell.name] = f"{type(err).__name__}: {err}"
                _note_error(cells_dir / cell.name, errors[cell.name], traceback.format_exc())
                bar.write(f"cell {cell.name} failed ({errors[cell.name]}); going on with the others")
                continue
            if row is None:
                break
            rows = {**_finished_rows(cells, cells_dir), cell.name: row}  # other shards' cells too
            table = _write_outputs(out, grid, rows, len(cells))
            bar.update(1)
    finally:
        bar.close()
    if table.rows:
        from studio.ablate_figures import write_figures

        table.figures = write_figures(table, out / "figures", grid.figures, grid.metrics)
    if errors:
        raise CellsFailed(errors, table)
    return table


def _note_error(cell_dir: Path, error: str, trace: str) -> None:
    """Keep a failed cell's error (and traceback) in its cell.json, beside its definition."""
    record = read_json(cell_dir / "cell.json") or {}
    record.update(error=error, traceback=trace)
    cell_dir.mkdir(parents=True, exist_ok=True)
    _write(cell_dir / "cell.json", json.dumps(record, indent=2, default=str) + "\n")
