"""The app's Ablate tab without UI: a grid built from the tab's choices, the grid checked against the app's
caps, an ablation run in a background thread (stop, resume), the user's ablation folders, and the views
of a results table (summary rows, the comparison figure).

    grid = build_grid(base_spec("small-softmax"), mixers=["mlp_mixing"], configurations=["hybrid"])
    text = grid_yaml(grid)                      # shown (and editable) in the tab
    checked = check_grid(text)                  # GridError: one line per problem (studio.ablate's + the app's caps)
    job = jobs.start(user, checked, ablation_dir(root, user, checked.name))   # AblationBusy if one is running
    job.snapshot()                              # cells done / total, the current cell and step, status
    job.stop()                                  # after the current step; the cell keeps its checkpoint

An ablation of a user lives in `<runs root>/<user id>/ablations/<grid name>/` (the layout `studio ablate`
writes, docs/ablations.md); running the same grid into the same folder again resumes it. Folders are
found with the Train tab's path rules (`studio.training_jobs.user_dir`, `inside`): a name from the page
never leaves the user's folder. No gradio here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from studio.ablate import (DONE, FIGURE_KINDS, METRICS, Grid, GridError, ResultsTable, load_grid, load_results,
                           parse_grid_text, run_grid, stale_cells)
from studio.checkpoint import read_json
from studio.configurations import parse_ratio
from studio.job_registry import JobRegistry
from studio.training_jobs import BackgroundJob, inside, run_name, user_dir

__all__ = ["AblationBusy", "AblationJob", "AblationJobs", "build_grid", "base_spec", "grid_yaml", "check_grid",
           "grid_overview", "ablations_root", "ablation_dir", "ablation_folders", "resolve_folder", "changed_cells",
           "cells_done", "summary_table", "figure_choices", "default_figure", "comparison_figure", "results_status",
           "variant_mixers",
           "COMPOSE_BASE", "RATIOS", "TASK_CHOICES", "MAX_STEPS", "MAX_CELLS", "MAX_TOTAL_STEPS", "MAX_PARAMS",
           "MAX_BATCH", "MAX_SEQ_LEN", "MAX_SEEDS", "DEFAULT_STEPS", "ABLATIONS"]

# ---- the app's caps (the server trains on its CPU; bigger grids: `studio ablate`) ------------------------
DEFAULT_STEPS = 150
MAX_STEPS = 2000            # per cell, like the Train tab's cap on one run (5000) but for many runs
MAX_CELLS = 48
MAX_TOTAL_STEPS = 30_000    # cells x steps
MAX_PARAMS = 20_000_000     # per cell's model, the Train tab's cap
MAX_BATCH = 512
MAX_SEQ_LEN = 2048
MAX_SEEDS = 3
MAX_GRID_CHARS = 50_000
MAX_GRID_NODES = 20_000     # values in the grid once YAML aliases are expanded
CORPORA = ("pydoc", "shakespeare")  # the text task also reads file paths: never from the page

ABLATIONS = "ablations"     # the sub-folder of a user's runs folder that holds their ablations
COMPOSE_BASE = "the spec in Compose"
RATIOS = ("1:0", "7:1", "3:1", "1:1", "0:1")
TASK_CHOICES = ("mqar", "text")
# The design-principle variants of arXiv 2510.11602 first, then the linear recurrences, then the rest.
DESIGN_PRINCIPLE = ("mlp_mixing", "approx", "non_approx", "rnd_emb_qk", "fixed_seq_qk", "static_emb_qk")
LINEAR = ("linear", "lightning", "retnet", "gla", "hgrn2", "mamba2", "deltanet", "gated_delta")


def variant_mixers() -> list[str]:
    """Every registered mixer, design-principle ones first, then linear recurrences, then the rest."""
    from studio.mixers import REGISTRY

    first = [m for m in (*DESIGN_PRINCIPLE, *LINEAR) if m in REGISTRY]
    return first + sorted(m for m in REGISTRY if m not in first)


# ---- building a grid from the tab's choices ---------------------------------------------------------------
def base_spec(choice: str, spec_text: str = "", fmt: str = "JSON") -> dict:
    """The base spec dict: a preset of `studio.presets` by name, or (choice == COMPOSE_BASE) the Compose
    tab's editor text, validated (`SpecError` if it does not build). `name` and `vocab_size` are left out:
    every cell takes its task's vocabulary."""
    from studio.presets import PRESETS

    if choice == COMPOSE_BASE:
        from studio.app_helpers import load_spec_data, parse_spec

        parse_spec(spec_text, fmt)  # the spec's own messages (SpecError) before anything else
        data = load_spec_data(spec_text, fmt)
    elif choice in PRESETS:
        data = PRESETS[choice]
    else:
        raise ValueError(f"unknown base {choice!r}; choose one of: {COMPOSE_BASE}, {', '.join(PRESETS)}")
    data = copy.deepcopy(data)
    data.pop("name", None)
    data.pop("vocab_size", None)
    return data


def _resize(base: dict, d_model: int | None, n_layers: int | None) -> dict:
    """The base with another width and/or depth. An explicit `layers` list is cycled to the new depth
    (a `pattern` or `ratio` shorthand re-cycles by itself)."""
    data = copy.deepcopy(base)
    if d_model:
        data["d_model"] = int(d_model)
    if n_layers:
        n = int(n_layers)
        if isinstance(data.get("layers"), list) and data["layers"] and len(data["layers"]) != n:
            layers = data["layers"]
            data["layers"] = [copy.deepcopy(layers[i % len(layers)]) for i in range(n)]
        data["n_layers"] = n
    return data


def _ratio_name(ratio: str, mixer: str | None) -> str:
    a, b = parse_ratio(ratio)
    return "all-softmax" if a == 0 else f"ratio-{a}to{b}-{mixer}"


def build_grid(base: dict, mixers: list[str] | None = None, configurations: list[str] | None = None,
               ratios: list[str] | None = None, standard: bool = True, tasks: list[str] | None = None,
               mqar_seq_len: int = 64, mqar_pairs: int = 8, text_seq_len: int = 128, seeds: int = 1,
               steps: int = DEFAULT_STEPS, batch_size: int = 32, lr: float = 3e-3, d_model: int | None = None,
               n_layers: int | None = None, name: str = "", label: str = "ablation") -> dict:
    """The grid dict the choices describe (not validated: `check_grid` says what is wrong with it).

    Variants: `standard` (the base as is), then for every configuration every mixer
    (`<configuration>-<mixer>`; `skip` once, it takes no layer), then for every ratio every mixer as the
    linear layer (`ratio-<a>to<b>-<mixer>`; "0:1" once, as `all-softmax`). Tasks: MQAR
    (seq_len, num_pairs) and/or byte-level text on pydoc (seq_len). `name`: blank gives `<label>-<digest>`,
    the same for the same choices, so building the same grid again points at the same folder (and Run
    resumes it)."""
    mixers, configurations, ratios = list(mixers or []), list(configurations or []), list(ratios or [])
    variants: dict[str, dict] = {"standard": {}} if standard else {}
    for conf in configurations:
        if conf == "skip":
            variants["skip"] = {"configuration": "skip"}
            continue
        for mixer in mixers:
            variants[f"{conf}-{mixer}"] = {"configuration": conf, "layer": {"mixer": mixer}}
    for ratio in ratios:
        a, _ = parse_ratio(ratio)
        for mixer in (mixers if a else [None]):
            variant = {"ratio": ratio}
            if a:
                variant["linear"] = {"mixer": mixer}
            variants[_ratio_name(ratio, mixer)] = variant
    task_list: list[dict] = []
    for task in tasks if tasks is not None else ["mqar"]:
        if task == "mqar":
            task_list.append({"name": "mqar", "seq_len": int(mqar_seq_len), "num_pairs": int(mqar_pairs)})
        elif task == "text":
            task_list.append({"name": "text", "corpus": "pydoc", "seq_len": int(text_seq_len)})
        else:
            task_list.append({"name": task})
    steps = int(steps)
    train = {"steps": steps, "batch_size": int(batch_size), "lr": float(lr), "warmup": min(50, steps // 10),
             "eval_every": steps, "ckpt_every": max(1, min(100, steps // 2))}
    grid = {"name": "", "base": _resize(base, d_model, n_layers), "variants": variants, "tasks": task_list,
            "seeds": int(seeds), "train": train}
    if name and name.strip():
        grid["name"] = run_name(name)
    else:
        digest = hashlib.sha256(json.dumps(grid, sort_keys=True, default=str).encode()).hexdigest()[:8]
        grid["name"] = f"{run_name(label)[:40]}-{digest}"
    return grid


def grid_yaml(grid: dict) -> str:
    """A grid dict as the YAML the tab shows (flow style for the small mappings)."""
    return yaml.safe_dump(grid, sort_keys=False, default_flow_style=None, width=110)


# ---- checking a grid -----------------------------------------------------------------------------------
def _count(value: Any, limit: int) -> int:
    """Values in a YAML document once its aliases are expanded (stops counting past `limit`)."""
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        total += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


def _limits(grid: Grid) -> list[str]:
    """The app's caps on a grid that `studio.ablate` accepts."""
    from studio.spec import ArchSpec

    problems = []
    cells = grid.cells()
    if len(cells) > MAX_CELLS:
        problems.append(f"{len(cells)} cells ({len(grid.variants)} variants x {len(grid.tasks)} tasks x "
                        f"{len(grid.seeds)} seeds) is over the app's cap of {MAX_CELLS}; drop variants, tasks or "
                        "seeds, or run it with `studio ablate`")
    over = sorted({c.steps for c in cells if c.steps > MAX_STEPS})
    if over:
        problems.append(f"train.steps: {over[-1]} steps per cell is over the app's cap of {MAX_STEPS}; lower it, "
                        "or run the grid with `studio ablate`")
    total = sum(c.steps for c in cells)
    if total > MAX_TOTAL_STEPS and len(cells) <= MAX_CELLS and not over:
        problems.append(f"{total:,} training steps in all (cells x steps) is over the app's cap of "
                        f"{MAX_TOTAL_STEPS:,}; use fewer steps, variants or seeds, or `studio ablate`")
    batches = sorted({int(c.opts.get("batch_size", 64)) for c in cells})
    batches = [b for b in batches if b > MAX_BATCH]
    if batches:
        problems.append(f"train.batch_size: {batches[-1]} is over the app's cap of {MAX_BATCH}")
    for i, task in enumerate(grid.tasks):
        seq_len = getattr(task.task, "seq_len", None)
        if isinstance(seq_len, int) and seq_len > MAX_SEQ_LEN:
            problems.append(f"tasks[{i}] ({task.label}): seq_len={seq_len} is over the app's cap of {MAX_SEQ_LEN}")
    seen: set[str] = set()
    for cell in cells:
        if cell.variant.name in seen:
            continue
        seen.add(cell.variant.name)
        params = ArchSpec.from_dict(cell.spec).estimated_params()
        if params > MAX_PARAMS:
            problems.append(f"variants.{cell.variant.name}: about {params:,} parameters is over the app's cap of "
                            f"{MAX_PARAMS:,}; make the base smaller (d_model, n_layers) or use `studio ablate`")
    return problems


def check_grid(text: str) -> Grid:
    """The grid in the tab's editor (YAML or JSON text), checked whole: `studio.ablate.load_grid` (every
    spec built for every task) and the app's caps. Raises `GridError`, one line per problem. The text is
    always read as a grid, never as a file path."""
    if not text or not text.strip():
        raise GridError(["the grid is empty; build one from the choices above or write one (docs/ablations.md)"])
    if len(text) > MAX_GRID_CHARS:
        raise GridError([f"the grid text is {len(text):,} characters, over the app's cap of {MAX_GRID_CHARS:,}"])
    data = parse_grid_text(text)
    if _count(data, MAX_GRID_NODES) > MAX_GRID_NODES:
        raise GridError([f"the grid holds more than {MAX_GRID_NODES:,} values (with its YAML aliases expanded)"])
    problems = [] if data.get("name") else [
        "name: required in the app: it names the grid's folder (letters, digits, '.', '_' or '-')"]
    # before load_grid resolves the tasks: the text task reads any file path it is given as its corpus
    for i, task in enumerate(data.get("tasks") if isinstance(data.get("tasks"), list) else []):
        corpus = task.get("corpus") if isinstance(task, dict) else None
        if corpus is not None and corpus not in CORPORA:
            problems.append(f"tasks[{i}]: corpus {corpus!r}: the app trains on {' or '.join(CORPORA)} only (a file "
                            "path works with `studio ablate`)")
    if problems:
        raise GridError(problems, str(data.get("name") or ""))
    grid = load_grid(data)
    grid.text = text
    problems = _limits(grid)
    if problems:
        raise GridError(problems, grid.name)
    return grid


def grid_overview(grid: Grid) -> dict:
    """What a checked grid will train: counts and each variant's layers as mixer names."""
    cells = grid.cells()
    layers = {}
    for name, variant in grid.variants.items():
        built = variant.build(grid.base)["layers"]
        layers[name] = [layer["mixer"] for layer in built]
    return {"name": grid.name, "variants": len(grid.variants), "tasks": [t.label for t in grid.tasks],
            "seeds": list(grid.seeds), "cells": len(cells), "steps": sorted({c.steps for c in cells}),
            "total_steps": sum(c.steps for c in cells), "layers": layers}


# ---- folders ------------------------------------------------------------------------------------------------
def ablations_root(runs_root: str | Path, user: str) -> Path:
    """The folder that holds one user's ablations (inside their runs folder). A Train run of that name
    (it would hold a run.json) is not mistaken for it."""
    folder = user_dir(runs_root, user) / ABLATIONS
    if (folder / "run.json").exists():
        raise ValueError(f"{folder} holds a training run named {ABLATIONS!r}; rename that run to use ablations")
    return folder


def ablation_dir(runs_root: str | Path, user: str, name: str, create: bool = True) -> Path:
    """Where the user's ablation `name` lives (its parent folder created when `create`); never outside
    the user's folder."""
    folder = ablations_root(runs_root, user)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return inside(folder, run_name(name))


def _is_ablation(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("results.json", "grid.yaml", "cells"))


SharedRoots = str | Path | Mapping[str, str | Path] | None


def shared_roots(shared: SharedRoots) -> list[tuple[str, Path]]:
    """The read-only ablation folders every user can load, as (label prefix, folder): one folder (labels
    `results/<name>`) or a mapping prefix -> folder, e.g. {"results/": repo/results, "findings/":
    repo/benchmarks/results/ablations}. Folders given as None are left out."""
    if shared is None:
        return []
    if not isinstance(shared, Mapping):
        shared = {"results/": shared}
    return [(prefix if prefix.endswith("/") else prefix + "/", Path(folder))
            for prefix, folder in shared.items() if folder is not None]


def ablation_folders(runs_root: str | Path, user: str, shared: SharedRoots = None) -> list[str]:
    """Labels of the ablations this user can load, newest first: their own (`<name>`), then each shared
    folder's (`<prefix><name>`, e.g. `results/<name>`, `findings/<name>`)."""
    labels: list[str] = []
    try:
        mine = ablations_root(runs_root, user)
    except ValueError:
        mine = None
    for prefix, root in [("", mine), *shared_roots(shared)]:
        if root is None or not root.is_dir():
            continue
        found = [p for p in root.iterdir() if not p.is_symlink() and _is_ablation(p)]
        found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        labels += [prefix + p.name for p in found]
    return labels


def resolve_folder(label: str, runs_root: str | Path, user: str, shared: SharedRoots = None) -> Path:
    """The folder behind a label of `ablation_folders`; ValueError for anything else (.., absolute paths,
    links, other users' folders, folders that are not ablations)."""
    if not label or not isinstance(label, str):
        raise ValueError("no ablation chosen; pick one from the list")
    root, name = ablations_root(runs_root, user), label
    for prefix, folder in shared_roots(shared):
        if label.startswith(prefix):
            root, name = folder, label[len(prefix):]
            break
    try:  # `inside` refuses any name with a folder in it, so an unknown prefix never resolves
        path = inside(root, name)
    except ValueError:
        raise ValueError(f"{label!r} is not an ablation you can open here; pick one from the list") from None
    if not _is_ablation(path):
        raise ValueError(f"{label!r} is not an ablation you can open here (no such folder, or it holds no "
                         "grid.yaml, results.json or cells/); pick one from the list")
    return path


def changed_cells(grid: Grid, out: Path) -> list[str]:
    """Cells already in `out` that run_grid refuses (another definition, or changed defaults: `stale_cells`)."""
    return list(stale_cells(grid.cells(), Path(out) / "cells"))


def cells_done(grid: Grid, out: Path) -> int:
    """Cells of `grid` already finished in `out` (those a Run skips)."""
    done = 0
    for cell in grid.cells():
        result = read_json(Path(out) / "cells" / cell.name / "result.json")
        done += bool(result and result.get("definition") == cell.digest())
    return done


# ---- running ------------------------------------------------------------------------------------------------
class AblationBusy(ValueError):
    """An ablation cannot start now: the user's own is still running, or the server's slots are taken."""


@dataclass
class AblationJob(BackgroundJob):
    """`run_grid(grid, out_dir)` in a daemon thread. `snapshot()` says where it is; `stop()` ends it after
    the current training step (the interrupted cell keeps a checkpoint; running the grid again resumes)."""

    grid: Grid
    out_dir: Path
    device: str = "auto"
    cells_total: int = 0
    done_before: int = 0                   # cells already finished when this run started
    cell: str | None = None                # the cell training now
    record: dict | None = None             # its last training record
    error: str | None = None
    result: ResultsTable | None = None     # what run_grid returned (at the end)
    started: float = 0.0
    ended: float | None = None
    _steps: dict = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _table: tuple | None = None            # (results.json mtime, ResultsTable), a cache for `table()`

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        cells = self.grid.cells()
        self.cells_total = len(cells)
        self._steps = {c.name: c.steps for c in cells}
        self.done_before = cells_done(self.grid, self.out_dir)

    def start(self) -> "AblationJob":
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"ablate {self.out_dir.name}", daemon=True)
        self._thread.start()
        return self

    def _callback(self, cell_name: str, record: dict):
        self.cell, self.record = cell_name, record
        return "stop" if self._stop.is_set() else None

    def _run(self) -> None:
        try:
            self.result = run_grid(self.grid, self.out_dir, progress=False, device=self.device, callback=self._callback)
        except GridError as err:  # shown in the page; the folder keeps what was saved
            self.error = "; ".join(err.problems)
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.ended = time.monotonic()

    def table(self) -> ResultsTable | None:
        """The results so far (results.json, rewritten after every cell), or None before the first."""
        if self.result is not None and not self.running:
            return self.result
        path = self.out_dir / "results.json"
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return None
        if self._table is None or self._table[0] != stamp:
            try:
                self._table = (stamp, load_results(self.out_dir))
            except (OSError, ValueError, KeyError):
                return self._table[1] if self._table else None
        return self._table[1]

    def _ended_status(self) -> str:
        if self.result is not None and self.result.complete:
            return "finished"
        return "stopped"

    def snapshot(self) -> dict:
        """Where the ablation is: status, cells done / total, the current cell and its last step."""
        table = self.table()
        done = len(table.rows) if table is not None else self.done_before
        snap = {"name": self.grid.name, "folder": self.out_dir.name, "status": self.status, "cells_done": done,
                "cells_total": self.cells_total, "done_before": self.done_before, "cell": None, "step": None,
                "steps": None, "loss": None, "accuracy": None, "error": self.error,
                "seconds": (self.ended or time.monotonic()) - self.started if self.started else 0.0}
        if self.cell is not None and self.record is not None and self.status in ("running", "stopping", "stopped"):
            finished = table is not None and any(r.get("cell") == self.cell for r in table.rows)
            if not finished:
                snap.update(cell=self.cell, step=self.record.get("step"), steps=self._steps.get(self.cell),
                            loss=self.record.get("loss"), accuracy=self.record.get("accuracy"))
        return snap


class AblationJobs(JobRegistry[AblationJob]):
    """The server's ablations: at most one per user, and at most `max_running` at once."""

    busy = AblationBusy
    mine_running = ("your ablation {job.grid.name!r} is still running; press Stop first (its finished cells are "
                    "kept), or wait for it to finish")
    server_full = ("the server is running {running} ablation(s) already (its cap is {cap}); try again when one "
                   "has finished")

    def start(self, user: str, grid: Grid, out_dir: Path, device: str = "auto") -> AblationJob:
        return self._start(user, lambda: AblationJob(grid, Path(out_dir), device))


# ---- views of results ---------------------------------------------------------------------------------------
def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return round(value, 4)
    return "" if value is None else value


def summary_table(table: ResultsTable | None) -> tuple[list[str], list[list]]:
    """(header, rows) of the tidy summary: one row per variant x task, mean and std over seeds of every
    metric that has values, parameters and seconds. Columns empty in every row are left out."""
    if table is None or not table.rows:
        return ["variant", "task", "n"], []
    summary = table.summary()
    metrics = [m for m in METRICS if any(s.get(f"{m}_mean") is not None for s in summary)]
    columns = ["variant", "task", "configuration", "layer", "ratio", "mixers", "n", "failed", "seeds"]
    for metric in metrics:
        columns += [metric, f"{metric} std"]
    columns += ["params", "state_size", "seconds"]
    rows = []
    for s in summary:
        row = {k: s.get(k) for k in columns}
        for metric in metrics:
            row[metric], row[f"{metric} std"] = s.get(f"{metric}_mean"), s.get(f"{metric}_std")
        row["seconds"] = s.get("seconds_mean")
        rows.append(row)
    keep = [c for c in columns if c in ("variant", "task", "n") or any(r[c] not in (None, "") for r in rows)]
    return keep, [[_fmt(r[c]) for c in keep] for r in rows]


def figure_choices(table: ResultsTable | None) -> list[str]:
    """`<kind>-<metric>` for every figure these results can draw (grouped_bars-accuracy, ...)."""
    from studio.ablate_figures import applicable

    if table is None or not table.rows:
        return []
    summary = table.summary()
    return [f"{kind}-{metric}" for kind in FIGURE_KINDS for metric in table.metrics
            if applicable(kind, summary, metric)]


def default_figure(table: ResultsTable | None) -> str | None:
    """The comparison to show first: the ratio curve when the variants are linear:softmax ratios (every
    variant but the base is one), else grouped bars; of accuracy when there is any, else the first."""
    choices = figure_choices(table)
    if not choices:
        return None
    kinds = {r.get("configuration") for r in table.rows} - {"base"}
    kind = "ratio_curve" if kinds == {"ratio"} else "grouped_bars"
    for metric in ("accuracy", *METRICS):
        if f"{kind}-{metric}" in choices:
            return f"{kind}-{metric}"
    return choices[0]


def comparison_figure(table: ResultsTable | None, choice: str | None = None):
    """The plotly figure `choice` (`<kind>-<metric>`, default: `default_figure`), or None when the results
    have nothing to draw yet."""
    from studio.ablate_figures import FIGURES

    choice = choice or default_figure(table)
    if table is None or not table.rows or not choice:
        return None
    kind, _, metric = choice.partition("-")
    if kind not in FIGURES or metric not in METRICS:
        raise ValueError(f"unknown figure {choice!r}; choose one of: {', '.join(figure_choices(table))}")
    title = f"{table.name}: " if table.name else ""
    figure = FIGURES[kind](table, metric)
    figure.update_layout(title={"text": title + (figure.layout.title.text or "")})
    return figure


def results_status(table: ResultsTable) -> dict:
    """Counts of a loaded results table: cells done, total (None if unknown), finished or not, diverged."""
    return {"name": table.name, "cells_done": len(table.rows), "cells_total": table.cells_total,
            "complete": table.complete, "diverged": sum(r.get("status") not in DONE for r in table.rows),
            "variants": table.variants, "tasks": table.tasks, "figures": sorted(table.figures)}
