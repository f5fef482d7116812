"""Hybrid Attention Studio, the web app: `python app.py [--host 127.0.0.1] [--port 7860] [--runs-dir DIR]`.

Six tabs, all logic in gradio-free modules (this file is layout and wiring only):
    Compose  spec editor (JSON/YAML, presets, per-layer table), live validation, diagram, cost table,
             one head's pattern                         studio.app_helpers, studio.layer_table, studio.diagram
    Train    a task, steps, live loss/accuracy, cancel; the user's runs     studio.training_jobs
    Explore  default models, saved runs (linearized ones too), SmolLM2: head grid, WAAD/FAI, preplan/anchor
             tokens, head spans, token graph; two models side by side       studio.explore
    Ablate   variants (mixers x configurations / linear:softmax ratios) x tasks x seeds as a grid (YAML,
             checked live), run in the background with a live comparison chart and summary, stop and
             resume; load a finished or partial ablation                   studio.ablate_jobs
    RL       a small RL run on Countdown (credit strategy, loss, group size), a live reward chart, stop and
             resume, and the per-token credit (gamma, preplan, anchors) of rollouts sampled from the policy
                                                                             studio.rl_jobs
    Learn    softmax vs linear vs lightning on small vectors, chunked == recurrent, every mixer's
             pattern, cost curves                                            studio.learn

Each browser gets a user id (kept in its local storage), and with it a runs folder of its own under
--runs-dir: users never see each other's runs, and a page reload keeps them. Training runs through a
queue (--train-concurrency jobs at once); ablations run in background threads, one per user and at most
--ablate-concurrency at once, into runs-dir/<user id>/ablations/; RL runs likewise (--rl-concurrency), into
runs-dir/<user id>/rl/. Errors show in the page; the server
keeps serving.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from studio import ablate_jobs as aj  # noqa: E402
from studio import explore as ex  # noqa: E402
from studio import learn  # noqa: E402
from studio import rl_jobs as rj  # noqa: E402
from studio.app_helpers import (  # noqa: E402
    DEFAULT_SPEC,
    DEFAULT_TEXT,
    FORMATS,
    MAX_PATTERN_PARAMS,
    MAX_TEXT_BYTES,
    PRESETS,
    attention_pattern,
    dump_spec_data,
    load_spec_data,
    parse_spec,
    pattern_figure,
    text_to_tokens,
)
from studio.cli import set_threads  # noqa: E402
from studio.defaults import DefaultModels  # noqa: E402
from studio.diagram import architecture_figure  # noqa: E402
from studio.layer_table import HELP_COLUMNS, LAYER_COLUMNS, mixer_parameter_help, rows_to_spec_data, spec_to_rows  # noqa: E402
from studio.spec import ArchSpec, SpecError  # noqa: E402
from studio.summary import human_count, summarize, summary_rows  # noqa: E402
from studio.tasks import REGISTRY as TASKS  # noqa: E402
from studio.training_jobs import TrainingJob, inside, metrics_figure, run_name, user_dir, user_runs  # noqa: E402

log = logging.getLogger("studio.app")

MAX_TRAIN_PARAMS = 20_000_000  # the app trains on the server's CPU; bigger models: `studio train`
MAX_TRAIN_STEPS = 5000
TASK_DEFAULT_ARGS = {"text": {"corpus": "pydoc", "seq_len": 128}, "mqar": {}, "copy": {}, "selective_copy": {},
                     "needle": {}, "arithmetic": {}}
COMPOSE_SPEC = "the spec in Compose"
REPO = Path(__file__).resolve().parent
FINDINGS_DIR = REPO / "benchmarks" / "results" / "ablations"  # the grids docs/findings.md reports


# ---- messages ----------------------------------------------------------------------------------
def _code(text: str) -> str:
    """`text` as an inline code span (shown literally, on one wrapping line)."""
    text = " ".join(text.split())
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _spec_error(err: SpecError, action: str = "press **Build** again") -> str:
    lines = [f"{field}: {msg}" if field else msg for field, msg in err.problems]
    return f"### Spec error\nFix the spec and {action}.\n\n" + "\n".join(f"- {_code(l)}" for l in lines)


def _error(title: str, message: str) -> str:
    return f"### {title}\n\n- {_code(message)}"


def _unexpected(err: Exception, doing: str) -> str:
    log.exception("unexpected error while %s", doing)
    return f"### Something went wrong while {doing}\n\n- {_code(f'{type(err).__name__}: {err}')}"


# ---- users -------------------------------------------------------------------------------------
class Studio:
    """Server-wide state: where runs live, the default models, the training jobs by user."""

    def __init__(self, runs_root: str | Path, defaults: DefaultModels | None = None,
                 shared: aj.SharedRoots = None, ablate_concurrency: int = 1, rl_concurrency: int = 1):
        self.runs_root = Path(runs_root).resolve()
        self.defaults = defaults if defaults is not None else DefaultModels()
        self.jobs: dict[str, TrainingJob] = {}
        self.lock = threading.Lock()
        # shared, read-only ablations: label prefix -> folder (results/, findings/)
        self.shared_ablations = {prefix: root.resolve() for prefix, root in aj.shared_roots(shared)}
        self.ablations = aj.AblationJobs(ablate_concurrency)
        self.rl = rj.RLJobs(rl_concurrency)

    def user(self, user_id: str | None, request: gr.Request | None) -> str:
        """The browser's id (from its local storage), else this page session's id (API clients)."""
        for candidate in (user_id, getattr(request, "session_hash", None)):
            try:
                user_dir(self.runs_root, candidate or "")
                return candidate
            except ValueError:
                continue
        return "anonymous"

    def folder(self, user: str) -> Path:
        return user_dir(self.runs_root, user)

    def run_labels(self, user: str) -> list[str]:
        return [p.name for p in user_runs(self.folder(user))]

    def sources(self, user: str) -> dict[str, ex.ModelSource]:
        return ex.model_sources(ex.explorable_runs(self.folder(user)), self.defaults.paths())


# A random id per browser, kept in its local storage: a reload or a restart of the server keeps it.
USER_ID_JS = """() => {
    const key = "hybrid-attention-studio-user";
    let id = window.localStorage.getItem(key);
    if (!id || !/^[0-9a-f]{32}$/.test(id)) {
        id = Array.from(crypto.getRandomValues(new Uint8Array(16)), b => b.toString(16).padStart(2, "0")).join("");
        window.localStorage.setItem(key, id);
    }
    return id;
}"""


# ---- Compose -----------------------------------------------------------------------------------
def _pattern_view(spec: ArchSpec, text: str, layer: int, head: int):
    """(figure or None, notes for the status) for one head of one layer."""
    params = spec.estimated_params()
    if params > MAX_PATTERN_PARAMS:
        return None, [f"The pattern view is skipped: about {human_count(params)} parameters is over its cap "
                      f"of {human_count(MAX_PATTERN_PARAMS)} (the model would be built on the CPU)."]
    if not text:
        return None, ["Type some text to see an attention pattern."]
    tokens, labels, cut = text_to_tokens(text, spec.vocab_size)
    notes = [f"The text was cut to its first {MAX_TEXT_BYTES} bytes."] if cut else []
    if spec.vocab_size < 256:
        notes.append(f"Bytes are taken modulo vocab_size={spec.vocab_size}.")
    pattern = attention_pattern(spec, tokens, layer)
    mixer = spec.layers[layer].mixer
    title = f"layer {layer} ({mixer}), head {head}: effective attention pattern (seed 0)"
    return pattern_figure(pattern[head], labels, title), notes


def _clamp(value, top: int) -> int:
    return min(max(int(value or 0), 0), top)


def _layer_frame(spec: ArchSpec | None) -> pd.DataFrame:
    return pd.DataFrame(spec_to_rows(spec) if spec is not None else [], columns=LAYER_COLUMNS)


def build(spec_text: str, fmt: str, text: str, layer: float, head: float):
    """Validate the spec; show its cost table, diagram, per-layer table and one head's pattern."""
    no_table = gr.Dataframe(value=None, visible=False)
    try:
        spec = parse_spec(spec_text, fmt)
    except SpecError as err:
        return _spec_error(err), no_table, None, gr.Slider(), gr.Slider(), None, gr.Dataframe()
    except Exception as err:  # never a traceback in the page
        return _unexpected(err, "reading the spec"), no_table, None, gr.Slider(), gr.Slider(), None, gr.Dataframe()
    layer, head = _clamp(layer, spec.n_layers - 1), _clamp(head, spec.n_heads - 1)
    layer_slider = gr.Slider(maximum=max(spec.n_layers - 1, 1), value=layer, interactive=spec.n_layers > 1)
    head_slider = gr.Slider(maximum=max(spec.n_heads - 1, 1), value=head, interactive=spec.n_heads > 1)
    try:
        header, rows = summary_rows(summarize(spec))
        table = gr.Dataframe(value=pd.DataFrame(rows, columns=header), visible=True)
        diagram = architecture_figure(spec)
        figure, notes = _pattern_view(spec, text, layer, head)
    except Exception as err:
        return _unexpected(err, "building the model"), no_table, None, layer_slider, head_slider, None, gr.Dataframe()
    mixers = ", ".join(f"{m} ×{sum(l.mixer == m for l in spec.layers)}"
                       for m in dict.fromkeys(l.mixer for l in spec.layers))
    plural = "s" if spec.n_layers != 1 else ""
    status = f"### Built {_code(spec.name)}\n{spec.n_layers} layer{plural} ({mixers}), d_model={spec.d_model}, n_heads={spec.n_heads}."
    if notes:
        status += "\n\n" + "\n".join(f"- {n}" for n in notes)
    return status, table, figure, layer_slider, head_slider, diagram, _layer_frame(spec)


def validate_live(spec_text: str, fmt: str):
    """As the user types: the spec's own error messages, or a one-line OK."""
    try:
        spec = parse_spec(spec_text, fmt)
    except SpecError as err:
        return _spec_error(err, "the check reruns as you type")
    except Exception as err:
        return _unexpected(err, "checking the spec")
    return (f"Spec OK: {_code(spec.name)}, {spec.n_layers} layers, about {human_count(spec.estimated_params())} "
            "parameters. Press **Build** to see costs and patterns.")


def apply_layer_table(spec_text: str, fmt: str, rows):
    """Rewrite the editor's spec from the per-layer table (an explicit `layers` list)."""
    try:
        base = load_spec_data(spec_text, fmt) if spec_text.strip() else {}
        if not isinstance(base, dict):
            raise SpecError([("", "the spec must be a mapping of fields (like the presets)")])
        data = rows_to_spec_data(base, rows)
        ArchSpec.from_dict(data)
    except SpecError as err:
        return gr.Code(), _spec_error(err, "edit the table, then press **Apply table** again")
    except Exception as err:
        return gr.Code(), _unexpected(err, "reading the layer table")
    return gr.Code(value=dump_spec_data(data, fmt)), "Spec rewritten from the layer table. Press **Build**."


def redraw(spec_text: str, fmt: str, text: str, layer: float, head: float):
    """Redraw the heatmap for another layer or head (the built model is reused)."""
    try:
        spec = parse_spec(spec_text, fmt)
        layer, head = _clamp(layer, spec.n_layers - 1), _clamp(head, spec.n_heads - 1)
        figure, _ = _pattern_view(spec, text, layer, head)
        return figure
    except Exception:  # the status already says what is wrong after Build; keep the old figure
        log.info("redraw skipped", exc_info=True)
        return gr.Plot()


def load_preset(name: str | None, fmt: str):
    """Fill the editor with a preset, in the chosen format."""
    if name not in PRESETS:
        return gr.Code(), gr.Markdown()
    return gr.Code(value=dump_spec_data(PRESETS[name], fmt)), f"Loaded preset **{name}**. Press **Build**."


def switch_format(spec_text: str, fmt: str):
    """Rewrite the editor's text in the newly chosen format (shorthand keys are kept)."""
    other = "YAML" if fmt == "JSON" else "JSON"
    language = fmt.lower()
    try:
        data = load_spec_data(spec_text, other) if spec_text.strip() else None
    except SpecError as err:
        return (gr.Code(language=language),
                f"### Could not convert the spec to {fmt}\nThe text is left as it was.\n\n"
                + "\n".join(f"- {_code(msg)}" for _, msg in err.problems))
    if data is None:
        return gr.Code(language=language), gr.Markdown()
    return gr.Code(value=dump_spec_data(data, fmt), language=language), f"Spec rewritten as {fmt}."


# ---- Train -------------------------------------------------------------------------------------
def _train_spec(arch: str, spec_text: str, fmt: str, vocab_size: int) -> tuple[dict, list[str]]:
    """The spec dict to train, its vocabulary fitted to the task's."""
    notes = []
    if arch == COMPOSE_SPEC:
        spec = parse_spec(spec_text, fmt)
    elif arch in PRESETS:
        spec = ArchSpec.from_dict(PRESETS[arch])
    else:
        raise ValueError(f"unknown architecture {arch!r}; pick one from the list")
    data = spec.to_dict()
    if data["vocab_size"] != vocab_size:
        notes.append(f"vocab_size set from {data['vocab_size']} to the task's {vocab_size}.")
        data["vocab_size"] = vocab_size
    spec = ArchSpec.from_dict(data)
    if spec.estimated_params() > MAX_TRAIN_PARAMS:
        raise ValueError(f"about {human_count(spec.estimated_params())} parameters is over the app's training cap of "
                         f"{human_count(MAX_TRAIN_PARAMS)}; make the model smaller or use `studio train`")
    return spec.to_dict(), notes


def _task(task: str, task_args: str):
    from studio.tasks import get as get_task

    try:
        args = json.loads(task_args) if task_args and task_args.strip() else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"task arguments are not valid JSON ({err.msg}); write e.g. {{\"seq_len\": 64}}") from None
    if not isinstance(args, dict):
        raise ValueError("task arguments must be a JSON object, e.g. {\"seq_len\": 64}")
    return args, get_task(task, **args)


def _progress_text(job: TrainingJob, notes: list[str]) -> str:
    last = job.records[-1] if job.records else None
    head = f"### Run {_code(job.out_dir.name)}: {job.status}"
    if last is None:
        body = "Building the model and the first batch…"
    else:
        body = (f"step {last['step']} of {job.steps}, loss {last['loss']:.4f}, accuracy {last['accuracy']:.3f}, "
                f"{last['tokens_per_s']:,.0f} tokens/s")
        ev = next((r for r in reversed(job.records) if "eval_loss" in r), None)
        if ev is not None:
            body += f"; eval loss {ev['eval_loss']:.4f}, eval accuracy {ev.get('eval_accuracy', float('nan')):.3f}"
    if job.error:
        body += "\n\n" + _error("Training failed", job.error)
    return "\n\n".join([head, body, *[f"- {n}" for n in notes]])


def make_train_handlers(studio: Studio):
    def start_training(user_id, arch, spec_text, fmt, task, task_args, steps, batch_size, lr, name,
                       request: gr.Request, progress=gr.Progress()):
        user = studio.user(user_id, request)
        try:
            steps = int(steps)
            if not 1 <= steps <= MAX_TRAIN_STEPS:
                raise ValueError(f"steps must be between 1 and {MAX_TRAIN_STEPS}, got {steps}")
            args, task_obj = _task(task, task_args)
            spec, notes = _train_spec(arch, spec_text, fmt, task_obj.vocab_size)
            folder = studio.folder(user)
            folder.mkdir(parents=True, exist_ok=True)
            out = inside(folder, run_name(name or f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"))
            if out.exists():
                raise ValueError(f"a run named {out.name!r} already exists; choose another name")
        except SpecError as err:
            yield _spec_error(err, "start training again"), None, gr.Dropdown()
            return
        except ValueError as err:
            yield _error("Cannot start training", str(err)), None, gr.Dropdown()
            return
        job = TrainingJob(spec, task, steps, out, args, {"batch_size": int(batch_size), "lr": float(lr),
                                                          "eval_every": max(1, min(100, steps // 5)),
                                                          "ckpt_every": max(1, min(200, steps // 2))})
        with studio.lock:
            previous = studio.jobs.get(user)
            if previous is not None and previous.running:
                yield _error("Cannot start training", "a run of yours is still training; cancel it first"), None, gr.Dropdown()
                return
            studio.jobs[user] = job.start()
        try:
            shown = -1
            while job.running:
                time.sleep(0.5)
                if len(job.records) != shown:
                    shown = len(job.records)
                    progress((shown, steps), desc="training", unit="steps")
                    yield _progress_text(job, notes), metrics_figure(job.records, out.name), gr.Dropdown()
            choices = studio.run_labels(user)
            yield (_progress_text(job, notes), metrics_figure(job.records, out.name),
                   gr.Dropdown(choices=choices, value=out.name))
        finally:
            job.stop()  # the page went away or Cancel was pressed: stop at the next step (a checkpoint is saved)

    def cancel_training(user_id, request: gr.Request):
        user = studio.user(user_id, request)
        job = studio.jobs.get(user)
        if job is None or not job.running:
            return "No training is running."
        job.stop()
        job.wait(60)
        return _progress_text(job, ["Cancelled: the last step's checkpoint is saved; the run is in the list."])

    return start_training, cancel_training


def make_run_handlers(studio: Studio):
    def refresh_runs(user_id, request: gr.Request):
        user = studio.user(user_id, request)
        choices = studio.run_labels(user)
        return gr.Dropdown(choices=choices, value=choices[0] if choices else None)

    def show_run(user_id, name, request: gr.Request):
        user = studio.user(user_id, request)
        if not name:
            return "No run selected.", None
        try:
            path = inside(studio.folder(user), name)
            record = json.loads((path / "run.json").read_text())
            records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
        except (OSError, ValueError) as err:
            return _error("This run cannot be read", f"{name}: {err}. It may have been deleted or be corrupt."), None
        summary = (f"### Run {_code(name)}\nstatus {record.get('status')}, step {record.get('step')} of "
                   f"{record.get('steps')}, task {record.get('task', {}).get('name')}, "
                   f"spec {_code(record.get('spec', {}).get('name', '?'))}")
        return summary, metrics_figure(records, name)

    return refresh_runs, show_run


# ---- Explore -----------------------------------------------------------------------------------
def make_explore_handlers(studio: Studio):
    def model_choices(user_id, request: gr.Request):
        user = studio.user(user_id, request)
        labels = list(studio.sources(user))
        return gr.Dropdown(choices=labels, value=labels[0] if labels else None), gr.Dropdown(choices=labels)

    def _analyse(user, label, mode, text, new_tokens, progress=None):
        sources = studio.sources(user)
        if label not in sources:
            raise ex.ExploreError(f"{label!r} is not a model you can open here; pick one from the list")
        source = sources[label]
        if source.kind == "default":  # on a first start they are still being trained: say so while waiting
            while True:
                try:
                    studio.defaults.wait(source.path.name, timeout=1.0)
                    break
                except TimeoutError:
                    if progress is not None:
                        progress(None, desc=f"first start: {studio.defaults.status}")
                except RuntimeError as err:
                    raise ex.ExploreError(f"{err}; pick another model (the server log has the details)") from None
        model, tokenizer = ex.load_source(source)
        seq = ex.make_sequence(model, tokenizer, source, text, mode, int(new_tokens))
        return model, ex.explore(model, seq)

    def run_explore(user_id, label, mode, text, new_tokens, layer, compare_label, request: gr.Request,
                    progress=gr.Progress()):
        user = studio.user(user_id, request)
        empty = (None,) * 5
        try:
            model, exploration = _analyse(user, label, mode, text, new_tokens, progress)
            top = len(model.blocks) - 1
            layer = _clamp(layer if layer is not None else exploration.rhythm.layers[0], top)
            v = ex.views(model, exploration, layer)
            status = f"### {label}\n{ex.summary_line(model, exploration)}"
            main = (status, v["heads"], v["rhythm"], v["text"], v["spans"], v["graph"],
                    gr.Slider(maximum=max(top, 1), value=layer, interactive=top > 0), (label, exploration))
        except ex.ExploreError as err:
            return (_error("Cannot explore", str(err)), *empty, gr.Slider(), None, "", None, None, "")
        except Exception as err:
            return (_unexpected(err, "exploring"), *empty, gr.Slider(), None, "", None, None, "")
        if not compare_label:
            return (*main, "", None, None, "")
        try:
            other, other_exploration = _analyse(user, compare_label, mode, text, new_tokens, progress)
            other_layer = _clamp(layer, len(other.blocks) - 1)
            w = ex.views(other, other_exploration, other_layer)
            other_status = f"### {compare_label}\n{ex.summary_line(other, other_exploration)}"
            return (*main, other_status, w["heads"], w["rhythm"], w["text"])
        except ex.ExploreError as err:
            return (*main, _error("Cannot explore the second model", str(err)), None, None, "")
        except Exception as err:
            return (*main, _unexpected(err, "exploring the second model"), None, None, "")

    def change_layer(user_id, layer, state, request: gr.Request):
        if not state:
            return gr.Plot(), gr.Plot()
        label, exploration = state
        user = studio.user(user_id, request)
        try:
            source = studio.sources(user)[label]
            model, _ = ex.load_source(source)
            v = ex.views(model, exploration, _clamp(layer, len(model.blocks) - 1))
            return v["heads"], v["graph"]
        except Exception:
            log.info("layer redraw skipped", exc_info=True)
            return gr.Plot(), gr.Plot()

    return model_choices, run_explore, change_layer


# ---- Ablate ------------------------------------------------------------------------------------
ABLATE_DEFAULTS = {"base": "small-softmax", "mixers": ["mlp_mixing", "lightning"], "configurations": ["hybrid"],
                   "ratios": [], "standard": True, "tasks": ["mqar"], "mqar_seq_len": 64, "mqar_pairs": 8,
                   "text_seq_len": 128, "seeds": 1, "steps": aj.DEFAULT_STEPS, "batch_size": 32, "lr": 3e-3,
                   "d_model": 0, "n_layers": 0, "name": ""}


def _grid_error(err, action: str = "the check reruns as you edit") -> str:
    lines = getattr(err, "problems", None) or [str(err)]
    return (f"### Grid error\nFix the grid (or the choices) and {action}.\n\n"
            + "\n".join(f"- {_code(line)}" for line in lines))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _grid_ok(grid, done: int = 0) -> str:
    o = aj.grid_overview(grid)
    steps = " / ".join(str(s) for s in o["steps"])
    text = (f"Grid OK: {_code(o['name'])}: {_plural(o['variants'], 'variant')} x {_plural(len(o['tasks']), 'task')} "
            f"({', '.join(o['tasks'])}) x {_plural(len(o['seeds']), 'seed')} = **{_plural(o['cells'], 'cell')}** of "
            f"{steps} steps ({o['total_steps']:,} steps in all). Press **Run**.")
    if done:
        text += f"\n\n{done} of {o['cells']} cells are already done in its folder: **Run** resumes it."
    return text + "\n\n" + "\n".join(f"- {_code(name)}: {' · '.join(layers)}" for name, layers in o["layers"].items())


def _ablate_status(snap: dict | None) -> str:
    if snap is None:
        return "No ablation is running. Build a grid and press **Run**, or load one below."
    head = f"### Ablation {_code(snap['folder'])}: {snap['status']}"
    done, total = snap["cells_done"], snap["cells_total"]
    body = f"**{done} of {total} cells done**"
    if snap["done_before"]:
        body += f" ({snap['done_before']} from an earlier run: resumed)"
    if snap["cell"] is not None:
        step = f"step {snap['step']} of {snap['steps']}"
        if snap["loss"] is not None:
            step += f", loss {snap['loss']:.4f}, accuracy {snap['accuracy']:.3f}"
        where = "interrupted" if snap["status"] == "stopped" else "now"
        body += f"; {where}: {_code(snap['cell'])}, {step}"
    elif snap["status"] == "running":
        body += "; preparing the next cell"
    body += f". {snap['seconds']:.0f} s."
    if snap["status"] == "stopped":
        body += ("\n\nStopped: the finished cells are kept and the interrupted cell keeps its checkpoint. "
                 "Press **Run** with the same grid to resume.")
    elif snap["status"] == "finished":
        body += "\n\nFinished. The ablation is in the list below (figures saved in its `figures/` folder)."
    if snap["error"]:
        body += "\n\n" + _error("The ablation failed", snap["error"])
    return f"{head}\n\n{body}"


def _summary_frame(table) -> pd.DataFrame:
    header, rows = aj.summary_table(table)
    return pd.DataFrame(rows, columns=header)


def _safe_figure(table, choice=None):
    """(figure or None, a note when the figure cannot be drawn)."""
    try:
        return aj.comparison_figure(table, choice), ""
    except Exception as err:  # the table still shows
        log.info("ablation figure skipped", exc_info=True)
        return None, f"\n\nThe figure cannot be drawn: {_code(f'{type(err).__name__}: {err}')}"


def _no_load_update() -> tuple:
    """Updates that leave the Load view as it is."""
    return gr.Markdown(), gr.Plot(), gr.Dataframe(), gr.Dropdown()


def make_ablate_handlers(studio: Studio):
    def folders_update(user: str, value=None, keep: bool = False):
        """The user's ablations as the Load list: selecting `value`, or (keep) leaving the selection alone."""
        choices = aj.ablation_folders(studio.runs_root, user, studio.shared_ablations)
        if keep:
            return gr.Dropdown(choices=choices)
        return gr.Dropdown(choices=choices, value=value if value in choices else None)

    def build_grid(user_id, base, spec_text, fmt, mixers, configurations, ratios, standard, tasks, mqar_seq_len,
                   mqar_pairs, text_seq_len, seeds, steps, batch_size, lr, d_model, n_layers, name,
                   request: gr.Request):
        """The grid the choices describe (YAML) and its check."""
        try:
            base_dict = aj.base_spec(base, spec_text, fmt)
            label = "compose" if base == aj.COMPOSE_BASE else base
            grid = aj.build_grid(base_dict, mixers, configurations, ratios, bool(standard), tasks,
                                 int(mqar_seq_len or 0), int(mqar_pairs or 0), int(text_seq_len or 0), int(seeds or 1),
                                 int(steps or 0), int(batch_size or 0), float(lr or 0), int(d_model or 0),
                                 int(n_layers or 0), name or "", label)
        except SpecError as err:
            return gr.Code(), _spec_error(err, "build the grid again (the base is the spec in Compose)")
        except ValueError as err:
            return gr.Code(), _error("Cannot build the grid", str(err))
        except Exception as err:
            return gr.Code(), _unexpected(err, "building the grid")
        text = aj.grid_yaml(grid)
        return gr.Code(value=text), check_grid(user_id, text, request)

    def check_grid(user_id, text, request: gr.Request):
        """Live validation of the grid text: GridError's lines, or what it will train."""
        user = studio.user(user_id, request)
        try:
            grid = aj.check_grid(text)
        except aj.GridError as err:
            return _grid_error(err)
        except Exception as err:
            return _unexpected(err, "checking the grid")
        try:
            out = aj.ablation_dir(studio.runs_root, user, grid.name, create=False)
            done = aj.cells_done(grid, out) if out.is_dir() else 0
        except (ValueError, OSError):
            done = 0
        return _grid_ok(grid, done)

    def live(user: str, force: bool, shown):
        """(status, figure, table, timer, shown, folders, *the Load view) of the user's ablation; the figure
        and table only when they changed since `shown` (a redrawn plot flickers). Once it has ended, the Load
        view shows its folder."""
        job = studio.ablations.get(user)
        if job is None:
            return (_ablate_status(None), None if force else gr.Plot(),
                    _summary_frame(None) if force else gr.Dataframe(), gr.Timer(active=False), shown, gr.Dropdown(),
                    *_no_load_update())
        snap = job.snapshot()
        table = job.table()
        version = (job.out_dir.name, snap["cells_done"], snap["status"], job.started)
        running = job.running
        status = _ablate_status(snap)
        changed = force or version != shown
        if changed:
            figure, note = _safe_figure(table)
            plot, frame = figure, _summary_frame(table)
            status += note
        else:
            plot, frame = gr.Plot(), gr.Dataframe()
        if running or not changed:
            folders, loaded = gr.Dropdown(), _no_load_update()
        else:
            folders, loaded = folders_update(user, job.out_dir.name), load_view(user, job.out_dir.name)
        return status, plot, frame, gr.Timer(active=running), version, folders, *loaded

    def run_ablation(user_id, text, request: gr.Request):
        """Check the grid and start (or resume) it in the background; the timer then polls it."""
        user = studio.user(user_id, request)
        try:
            grid = aj.check_grid(text)
            out = aj.ablation_dir(studio.runs_root, user, grid.name)
            changed = aj.changed_cells(grid, out)
            if changed:
                more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
                raise ValueError(f"the folder {out.name!r} holds cells run with another definition of this grid "
                                 "(or with defaults that have changed since) "
                                 f"({', '.join(changed[:3])}{more}); give the grid another `name` (a new folder), "
                                 "or load the old results below")
            studio.ablations.start(user, grid, out)
        except aj.GridError as err:
            return (_grid_error(err, "press **Run** again"), None, None, gr.Timer(active=False), None, gr.Dropdown(),
                    *_no_load_update())
        except ValueError as err:  # AblationBusy, a changed folder, a bad folder
            return (_error("Cannot run the ablation", str(err)), gr.Plot(), gr.Dataframe(), gr.Timer(), None,
                    gr.Dropdown(), *_no_load_update())
        except Exception as err:
            return (_unexpected(err, "starting the ablation"), None, None, gr.Timer(active=False), None,
                    gr.Dropdown(), *_no_load_update())
        status, plot, frame, timer, shown, *_ = live(user, True, None)
        return (status, plot, frame, gr.Timer(active=True), shown, folders_update(user, keep=True), *_no_load_update())

    def tick(user_id, shown, request: gr.Request):
        return live(studio.user(user_id, request), False, shown)

    def poll(user_id, request: gr.Request):
        """The user's ablation now: status, comparison figure, summary table (and the timer's state)."""
        status, plot, frame, timer, *_ = live(studio.user(user_id, request), True, None)
        return status, plot, frame, timer

    def stop(user_id, request: gr.Request):
        """Stop after the current step: finished cells stay, the interrupted cell keeps its checkpoint."""
        user = studio.user(user_id, request)
        job = studio.ablations.get(user)
        if job is None or not job.running:
            return ("No ablation of yours is running.", gr.Plot(), gr.Dataframe(), gr.Timer(), gr.Dropdown(),
                    *_no_load_update())
        job.stop()
        job.wait(300)
        status, plot, frame, timer, _, *rest = live(user, True, None)
        return status, plot, frame, timer, *rest

    def list_folders(user_id, request: gr.Request):
        user = studio.user(user_id, request)
        choices = aj.ablation_folders(studio.runs_root, user, studio.shared_ablations)
        return gr.Dropdown(choices=choices, value=choices[0] if choices else None)

    def _load(user: str, label: str):
        path = aj.resolve_folder(label, studio.runs_root, user, studio.shared_ablations)
        return aj.load_results(path)

    def load(user_id, label, request: gr.Request):
        """A finished (or partial) ablation of this user (or of results/): summary, figure, figure list."""
        return load_view(studio.user(user_id, request), label)

    def load_view(user: str, label: str):
        empty = _summary_frame(None)
        if not label:
            return "No ablation chosen.", None, empty, gr.Dropdown(choices=[], value=None)
        try:
            path = aj.resolve_folder(label, studio.runs_root, user, studio.shared_ablations)
        except ValueError as err:
            return _error("Cannot load this ablation", str(err)), None, empty, gr.Dropdown(choices=[], value=None)
        try:
            table = aj.load_results(path)
            frame = _summary_frame(table)
            info = aj.results_status(table)
            choices = aj.figure_choices(table)
        except (ValueError, OSError, KeyError, TypeError, AttributeError) as err:
            return (_error("Cannot load this ablation", f"{label}: {err}. It may be corrupt, still empty, or "
                           "deleted; pick another."), None, empty, gr.Dropdown(choices=[], value=None))
        except Exception as err:
            return _unexpected(err, "loading the ablation"), None, empty, gr.Dropdown(choices=[], value=None)
        choice = aj.default_figure(table)
        figure, note = _safe_figure(table, choice)
        total = info["cells_total"]
        done = (f"all {total} cells finished" if info["complete"] else
                f"{info['cells_done']} of {total if total is not None else '?'} cells done (partial: run the same "
                "grid again to finish it)")
        text = (f"### Ablation {_code(label)}\n{done}; variants {', '.join(_code(v) for v in info['variants'])}; "
                f"tasks {', '.join(_code(t) for t in info['tasks'])}.")
        if info["diverged"]:
            text += f" {info['diverged']} cell(s) diverged (no metrics)."
        if info["figures"]:
            text += f"\n\nSaved figures (in `figures/`): {', '.join(info['figures'])}."
        return text + note, figure, frame, gr.Dropdown(choices=choices, value=choice)

    def show_figure(user_id, label, choice, request: gr.Request):
        try:
            return aj.comparison_figure(_load(studio.user(user_id, request), label), choice)
        except Exception:
            log.info("ablation figure skipped", exc_info=True)
            return gr.Plot()

    return dict(build=build_grid, check=check_grid, run=run_ablation, tick=tick, poll=poll, stop=stop,
                list=list_folders, load=load, figure=show_figure)


# ---- RL ----------------------------------------------------------------------------------------
def _rl_status(snap: dict | None) -> str:
    if snap is None:
        return ("No RL run is running. Pick a credit strategy and a loss, then press **Start** (a new small model "
                "is warmed up on Countdown demonstrations first).")
    head = f"### RL run {_code(snap['name'])}: {snap['status']}"
    last, ev = snap["last"], snap["eval"]
    if snap["phase"] == "warm-up":
        body = f"warming up on Countdown demonstrations: step {snap['warmup_step']} of {snap['warmup_steps']}"
    elif last is None and snap["status"] in ("running", "stopping"):
        body = "sampling the first rollouts…" if ev is not None else "measuring the starting policy…"
    elif last is None:
        body = "no RL step yet"
    else:
        groups = _plural(int(last.get("groups_kept", 0)), "group")
        body = (f"step {last['step']} of {snap['steps']}: reward {last['reward']:.3f}, accuracy "
                f"{last['accuracy']:.3f}, length {last['length']:.1f} tokens, {groups} with a reward "
                f"signal, credit boosted {100 * last.get('credit_boosted', 0.0):.0f}% of the tokens, rhythm overhead "
                f"{last.get('rhythm_overhead_pct', 0.0):.1f}%")
    if ev is not None:
        body += f"; eval accuracy {ev['eval_accuracy']:.3f} (step {ev['step']})"
    if snap["resumed_from"]:
        body += f"; resumed from step {snap['resumed_from']}"
    body += f". {snap['seconds']:.0f} s."
    if snap["status"] == "stopped":
        body += "\n\nStopped with a checkpoint: press **Start** with the same choices (and name) to resume."
    elif snap["status"] == "finished":
        body += ("\n\nFinished. Press **Show credit on sampled rollouts** to see the policy's rollouts; raise "
                 "**Steps** and press **Start** to continue it.")
    if snap["error"]:
        body += "\n\n" + _error("The RL run failed", snap["error"])
    return f"{head}\n\n{body}"


def make_rl_handlers(studio: Studio):
    def live(user: str, force: bool, shown):
        """(status, figure, timer, shown): the figure only when new records came since `shown`."""
        job = studio.rl.get(user)
        if job is None:
            return _rl_status(None), None if force else gr.Plot(), gr.Timer(active=False), None
        snap = job.snapshot()
        version = (snap["name"], len(snap["records"]), snap["status"], job.started)
        figure = (rj.reward_figure(snap["records"], f"{snap['name']}: reward")
                  if force or version != shown else gr.Plot())
        return _rl_status(snap), figure, gr.Timer(active=job.running), version

    def start(user_id, credit, loss, steps, group_size, prompts, start_label, max_new_tokens, lr, warmup_steps,
              name, request: gr.Request):
        """Check the choices and start (or resume) the run in the background; the timer then polls it."""
        user = studio.user(user_id, request)
        try:
            opts = rj.rl_options(credit, loss, steps, group_size, prompts, max_new_tokens, lr, warmup_steps)
            origin = rj.resolve_start(start_label, studio.runs_root, user)
            label = rj.run_label(opts, start_label or rj.WARMUP_LABEL, name or "")
            out = rj.rl_dir(studio.runs_root, user, label)
            warm = rj.warmup_dir(studio.runs_root, user, opts["warmup_steps"]) if origin is None else None
            studio.rl.start(user, rj.RLJob(out, opts, origin, warm))
        except ValueError as err:  # RLBusy, a bad choice, a run of other settings, a bad folder
            return _error("Cannot start the RL run", str(err)), gr.Plot(), gr.Timer(), None
        except Exception as err:
            return _unexpected(err, "starting the RL run"), gr.Plot(), gr.Timer(), None
        status, figure, _, shown = live(user, True, None)
        return status, figure, gr.Timer(active=True), shown

    def tick(user_id, shown, request: gr.Request):
        try:
            return live(studio.user(user_id, request), False, shown)
        except Exception as err:
            return _unexpected(err, "polling the RL run"), gr.Plot(), gr.Timer(active=False), shown

    def poll(user_id, request: gr.Request):
        """The user's RL run now: status, reward chart (and the timer's state)."""
        try:
            return live(studio.user(user_id, request), True, None)
        except Exception as err:
            return _unexpected(err, "polling the RL run"), None, gr.Timer(active=False), None

    def stop(user_id, request: gr.Request):
        """Stop after the current step (a checkpoint is written; Start resumes)."""
        user = studio.user(user_id, request)
        job = studio.rl.get(user)
        if job is None or not job.running:
            return "No RL run of yours is running.", gr.Plot(), gr.Timer(active=False), None
        job.stop()
        job.wait(300)
        return live(user, True, None)

    def starts(user_id, request: gr.Request):
        """The models this user's RL runs can start from (a new warm-up, their Train runs on arithmetic)."""
        user = studio.user(user_id, request)
        return gr.Dropdown(choices=rj.start_choices(studio.runs_root, user))

    def credit(user_id, strategy, max_new_tokens, seed, request: gr.Request):
        """Rollouts sampled from the policy of the user's RL run, tokens coloured by their credit."""
        user = studio.user(user_id, request)
        try:
            job = studio.rl.get(user)
            if job is not None and (job.out_dir / "run.json").exists():
                out = job.out_dir
            else:
                names = rj.rl_runs(studio.runs_root, user)
                if not names:
                    raise ValueError("there is no RL run of yours yet: press **Start** first (the view samples "
                                     "from its policy)")
                out = rj.rl_dir(studio.runs_root, user, names[0], create=False)
            from studio.rl.train import rl_task

            model = rj.policy(out)
            html = rj.credit_view(model, rl_task("countdown"), strategy, prompts=2, group_size=2,
                                  max_new_tokens=int(max_new_tokens or 0), seed=int(seed or 0),
                                  title=f"{out.name}, credit {strategy}")
        except ValueError as err:
            return _error("Cannot show the credit", str(err)), ""
        except Exception as err:
            return _unexpected(err, "sampling rollouts"), ""
        note = (f"Rollouts of {_code(out.name)}'s policy (its last checkpoint), seed {int(seed or 0)}: the same seed "
                "gives the same rollouts, so strategies can be compared on them.")
        return note, html

    return dict(start=start, tick=tick, poll=poll, stop=stop, starts=starts, credit=credit)


# ---- Learn -------------------------------------------------------------------------------------
def learn_compare(length, decay, window, feature_map, normalize, seed):
    try:
        q, k, v = learn.toy_qkv(int(length), 4, int(seed))
        window = int(window) if window else None
        opts = dict(window=window, feature_map=feature_map, normalize=bool(normalize), decay=float(decay))
        matrices = learn.mixing_matrices(q, k, **opts)
        titles = learn.mixing_titles(matrices, **opts)
        outputs = learn.mix_outputs(matrices, v)
        header, rows = learn.mixing_table(matrices, v, titles)
        return "", learn.compare_figure(matrices, outputs, titles), pd.DataFrame(rows, columns=header)
    except ValueError as err:
        return _error("Check the settings", str(err)), None, None


def learn_chunks(length, decay, chunk, seed):
    try:
        q, k, v = learn.toy_qkv(int(length), 4, int(seed))
        result = learn.chunked_vs_recurrent(q, k, v, float(decay), int(chunk))
        header, rows = learn.chunked_vs_recurrent_table(result)
        note = (f"Largest difference between the chunked and the recurrent outputs: **{result.max_abs_diff:.1e}** "
                f"({len(result.chunks)} chunks of {int(chunk)}).")
        return note, learn.chunked_vs_recurrent_figure(result), pd.DataFrame(rows, columns=header)
    except ValueError as err:
        return _error("Check the settings", str(err)), None, None


def learn_gallery(length, seed):
    try:
        return "", learn.gallery_figure(learn.mixer_gallery(int(length), int(seed)))
    except ValueError as err:
        return _error("Check the settings", str(err)), None


def learn_costs(d_model, n_heads):
    try:
        rows = learn.cost_curves(d_model=int(d_model), n_heads=int(n_heads))
        header, table = learn.cost_table(rows)
        return "", learn.cost_figure(rows), pd.DataFrame(table, columns=header)
    except ValueError as err:
        return _error("Check the settings", str(err)), None, None


# ---- layout ------------------------------------------------------------------------------------
def _compose_tab():
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                preset = gr.Dropdown(list(PRESETS), value=None, label="Preset", scale=2)
                fmt = gr.Radio(list(FORMATS), value="JSON", label="Format", scale=1)
            editor = gr.Code(dump_spec_data(DEFAULT_SPEC, "JSON"), language="json", label="Spec (JSON or YAML; "
                             "`pattern`/`ratio` shorthands or an explicit `layers` list)", lines=16, max_lines=30,
                             wrap_lines=True, elem_id="spec-editor")
            text = gr.Textbox(DEFAULT_TEXT, label=f"Text (first {MAX_TEXT_BYTES} UTF-8 bytes are the tokens)",
                              lines=2, max_lines=4)
            with gr.Row():
                layer = gr.Slider(0, 3, value=3, step=1, label="Layer")
                head = gr.Slider(0, 3, value=0, step=1, label="Head")
            build_btn = gr.Button("Build", variant="primary", elem_id="build-button")
            status = gr.Markdown("Edit the spec or pick a preset, then press **Build**.", elem_id="status")
        with gr.Column(scale=3):
            plot = gr.Plot(label="Attention pattern", elem_id="pattern-plot")
            diagram = gr.Plot(label="Architecture", elem_id="diagram-plot")
    table = gr.Dataframe(label="Cost per layer (and an all-softmax model of the same size)",
                         interactive=False, wrap=True, visible=False, elem_id="summary-table")
    with gr.Accordion("Per-layer editor", open=False):
        layer_table = gr.Dataframe(headers=LAYER_COLUMNS, column_count=(len(LAYER_COLUMNS), "fixed"),
                                   interactive=True, label="One row per layer: mixer, positional (rope/nope), "
                                   "params (a JSON object). Add or delete rows to change the depth.",
                                   elem_id="layer-table")
        apply_btn = gr.Button("Apply table to the spec")
        gr.Dataframe(pd.DataFrame(mixer_parameter_help(), columns=HELP_COLUMNS), label="Mixers and their parameters",
                     interactive=False, wrap=True)

    inputs = [editor, fmt, text, layer, head]
    build_btn.click(build, inputs, [status, table, plot, layer, head, diagram, layer_table], api_name="build")
    for slider in (layer, head):
        slider.input(redraw, inputs, plot, trigger_mode="always_last", api_visibility="private")
    preset.input(load_preset, [preset, fmt], [editor, status], api_visibility="private")
    fmt.input(switch_format, [editor, fmt], [editor, status], api_visibility="private")
    editor.input(validate_live, [editor, fmt], status, trigger_mode="always_last", api_name="validate")
    apply_btn.click(apply_layer_table, [editor, fmt, layer_table], [editor, status], api_name="apply_layers")
    return editor, fmt


def _train_tab(studio: Studio, user, editor, fmt, train_concurrency: int):
    with gr.Row():
        with gr.Column(scale=2):
            arch = gr.Dropdown([COMPOSE_SPEC, *PRESETS], value="small hybrid (lightning + softmax)"
                               if "small hybrid (lightning + softmax)" in PRESETS else COMPOSE_SPEC,
                               label="Architecture")
            with gr.Row():
                task = gr.Dropdown(sorted(TASKS), value="mqar", label="Task")
                task_args = gr.Textbox("{}", label="Task arguments (JSON)", max_lines=1)
            with gr.Row():
                steps = gr.Number(200, label="Steps", precision=0, minimum=1, maximum=MAX_TRAIN_STEPS)
                batch = gr.Number(32, label="Batch size", precision=0, minimum=1, maximum=512)
                lr = gr.Number(3e-3, label="Learning rate", minimum=1e-6, maximum=1.0)
            name = gr.Textbox("", label="Run name (blank: task and time)", max_lines=1)
            with gr.Row():
                start = gr.Button("Train", variant="primary", elem_id="train-button")
                cancel = gr.Button("Cancel", variant="stop", elem_id="cancel-button")
            status = gr.Markdown("Pick an architecture and a task, then press **Train**.", elem_id="train-status")
        with gr.Column(scale=3):
            curve = gr.Plot(label="Loss and accuracy", elem_id="train-plot")
    with gr.Row():
        runs = gr.Dropdown([], label="Your runs", elem_id="runs-list", scale=3, allow_custom_value=True)
        refresh = gr.Button("Refresh", scale=1)
        open_btn = gr.Button("Open in Explore", scale=1, elem_id="open-in-explore")
    run_info = gr.Markdown(elem_id="run-info")
    run_curve = gr.Plot(label="Run curves")
    task.input(lambda t: json.dumps(TASK_DEFAULT_ARGS.get(t, {})), task, task_args, api_visibility="private")

    start_training, cancel_training = make_train_handlers(studio)
    refresh_runs, show_run = make_run_handlers(studio)
    event = start.click(start_training, [user, arch, editor, fmt, task, task_args, steps, batch, lr, name],
                        [status, curve, runs], api_name="train", concurrency_limit=train_concurrency,
                        concurrency_id="train")
    cancel.click(cancel_training, [user], status, cancels=[event], api_name="cancel_training")
    refresh.click(refresh_runs, [user], runs, api_name="list_runs")
    runs.change(show_run, [user, runs], [run_info, run_curve], api_name="show_run")
    return runs, open_btn, refresh_runs


def _explore_tab(studio: Studio, user):
    shared = list(ex.model_sources([], studio.defaults.paths()))  # every user's runs are added on page load
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(shared, value=shared[0] if shared else None, label="Model", elem_id="explore-model",
                                allow_custom_value=True)
            mode = gr.Radio(list(ex.MODES), value="text", label="Analyse",
                            info="text: the text itself; answer: the model answers it; task example: a run's task")
            text = gr.Textbox("The cat sat on the mat. The dog sat on the log. The cat sat on the",
                              label=f"Text or prompt (at most {ex.MAX_TOKENS} tokens)", lines=4, elem_id="explore-text")
            new_tokens = gr.Slider(8, 256, value=64, step=8, label="New tokens (answer mode)")
            compare = gr.Dropdown(shared, value=None, label="Compare with (optional)", elem_id="compare-model",
                                  allow_custom_value=True)
            go_btn = gr.Button("Analyse", variant="primary", elem_id="explore-button")
            status = gr.Markdown("Pick a model, type a text, press **Analyse**.", elem_id="explore-status")
            # Its range follows the model after the first analysis (the wide start keeps API calls valid).
            layer = gr.Slider(0, 127, value=0, step=1, label="Layer for the head grid and the token graph",
                              interactive=False, elem_id="explore-layer")
        with gr.Column(scale=3):
            tokens = gr.HTML(elem_id="explore-tokens")
            rhythm = gr.Plot(label="WAAD and FAI", elem_id="explore-rhythm")
    heads = gr.Plot(label="Head grid", elem_id="explore-heads")
    with gr.Row():
        spans = gr.Plot(label="Head spans", elem_id="explore-spans")
        graph = gr.Plot(label="Token graph", elem_id="explore-graph")
    with gr.Accordion("Second model", open=True):
        other_status = gr.Markdown(elem_id="compare-status")
        other_tokens = gr.HTML(elem_id="compare-tokens")
        with gr.Row():
            other_rhythm = gr.Plot(label="WAAD and FAI (second model)")
            other_heads = gr.Plot(label="Head grid (second model)")
    state = gr.State(None)
    model_choices, run_explore, change_layer = make_explore_handlers(studio)
    go_btn.click(run_explore, [user, model, mode, text, new_tokens, layer, compare],
                 [status, heads, rhythm, tokens, spans, graph, layer, state, other_status, other_heads,
                  other_rhythm, other_tokens], api_name="explore", concurrency_limit=2, concurrency_id="explore")
    layer.input(change_layer, [user, layer, state], [heads, graph], trigger_mode="always_last",
                api_visibility="private")
    return model, compare, model_choices


def _ablate_tab(studio: Studio, user, editor, fmt):
    from studio.configurations import CONFIGURATIONS
    from studio.presets import PRESETS as BASES

    d = ABLATE_DEFAULTS
    with gr.Row():
        with gr.Column(scale=2):
            base = gr.Dropdown([aj.COMPOSE_BASE, *BASES], value=d["base"], label="Base architecture",
                               elem_id="ablate-base")
            with gr.Row():
                d_model = gr.Number(d["d_model"], label="d_model (0: the base's)", precision=0, minimum=0,
                                    maximum=4096, elem_id="ablate-d-model")
                n_layers = gr.Number(d["n_layers"], label="Layers (0: the base's)", precision=0, minimum=0,
                                     maximum=64, elem_id="ablate-n-layers")
            mixers = gr.Dropdown(aj.variant_mixers(), value=d["mixers"], multiselect=True, label="Variant mixers",
                                 info="design-principle variants first (arXiv 2510.11602), then linear recurrences",
                                 elem_id="ablate-mixers")
            configurations = gr.CheckboxGroup(list(CONFIGURATIONS), value=d["configurations"],
                                              label="Configurations: which layers take the variant",
                                              elem_id="ablate-configurations")
            ratios = gr.CheckboxGroup(list(aj.RATIOS), value=d["ratios"], elem_id="ablate-ratios",
                                      label="linear:softmax ratios (a variant mixer as the linear layer)")
            standard = gr.Checkbox(d["standard"], label="Include the base as is (standard)", elem_id="ablate-standard")
            tasks = gr.CheckboxGroup(list(aj.TASK_CHOICES), value=d["tasks"], label="Tasks", elem_id="ablate-tasks")
            with gr.Row():
                mqar_seq_len = gr.Number(d["mqar_seq_len"], label="MQAR length", precision=0, minimum=8,
                                         maximum=aj.MAX_SEQ_LEN, elem_id="ablate-mqar-len")
                mqar_pairs = gr.Number(d["mqar_pairs"], label="MQAR pairs", precision=0, minimum=1, maximum=512,
                                       elem_id="ablate-mqar-pairs")
                text_seq_len = gr.Number(d["text_seq_len"], label="Text length", precision=0, minimum=8,
                                         maximum=aj.MAX_SEQ_LEN, elem_id="ablate-text-len")
            with gr.Row():
                seeds = gr.Slider(1, aj.MAX_SEEDS, value=d["seeds"], step=1, label="Seeds", elem_id="ablate-seeds")
                steps = gr.Number(d["steps"], label="Steps per cell", precision=0, minimum=1, maximum=aj.MAX_STEPS,
                                  elem_id="ablate-steps")
            with gr.Row():
                batch = gr.Number(d["batch_size"], label="Batch size", precision=0, minimum=1, maximum=aj.MAX_BATCH,
                                  elem_id="ablate-batch")
                lr = gr.Number(d["lr"], label="Learning rate", minimum=1e-6, maximum=1.0, elem_id="ablate-lr")
            name = gr.Textbox(d["name"], label="Ablation name (blank: from the choices)", max_lines=1,
                              elem_id="ablate-name")
            build_btn = gr.Button("Build grid", elem_id="ablate-build")
        with gr.Column(scale=3):
            grid_text = gr.Code(_default_grid_text(), language="yaml", lines=18, max_lines=40, wrap_lines=True,
                                label="Grid (YAML, editable; docs/ablations.md has every key)", elem_id="ablate-grid")
            check = gr.Markdown(elem_id="ablate-check")
            with gr.Row():
                run_btn = gr.Button("Run", variant="primary", elem_id="ablate-run")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="ablate-stop")
                refresh = gr.Button("Refresh", elem_id="ablate-refresh")
            status = gr.Markdown(_ablate_status(None), elem_id="ablate-status")
    plot = gr.Plot(label="Comparison (updates as cells finish)", elem_id="ablate-plot")
    table = gr.Dataframe(_summary_frame(None), label="Summary over seeds", interactive=False, wrap=True,
                         elem_id="ablate-table")
    timer = gr.Timer(1.0, active=False)
    shown = gr.State(None)
    with gr.Accordion("Load an ablation (finished or partial)", open=True):
        with gr.Row():
            folders = gr.Dropdown([], label="Your ablations (and results/)", allow_custom_value=True, scale=3,
                                  elem_id="ablate-folders")
            figure = gr.Dropdown([], label="Figure", scale=2, elem_id="ablate-figure")
            with gr.Column(scale=1, min_width=120):
                load_btn = gr.Button("Load", variant="primary", elem_id="ablate-load")
                list_btn = gr.Button("Refresh list", elem_id="ablate-list")
        load_info = gr.Markdown(elem_id="ablate-load-info")
        load_plot = gr.Plot(label="Figure", elem_id="ablate-load-plot")
        load_table = gr.Dataframe(_summary_frame(None), label="Summary over seeds", interactive=False, wrap=True,
                                  elem_id="ablate-load-table")

    h = make_ablate_handlers(studio)
    choices = [user, base, editor, fmt, mixers, configurations, ratios, standard, tasks, mqar_seq_len, mqar_pairs,
               text_seq_len, seeds, steps, batch, lr, d_model, n_layers, name]
    # one build at a time, in order: the grid shown is always the one of the latest choices
    build_btn.click(h["build"], choices, [grid_text, check], api_name="ablate_build", concurrency_limit=1,
                    concurrency_id="ablate_build")
    for control in choices[1:]:
        if control in (editor, fmt):
            continue
        control.input(h["build"], choices, [grid_text, check], trigger_mode="always_last", api_visibility="private",
                      concurrency_limit=1, concurrency_id="ablate_build")
    grid_text.input(h["check"], [user, grid_text], check, trigger_mode="always_last", api_name="ablate_validate")
    load_out = [load_info, load_plot, load_table, figure]
    live_out = [status, plot, table, timer, shown, folders, *load_out]
    run_btn.click(h["run"], [user, grid_text], live_out, api_name="ablate_run")
    timer.tick(h["tick"], [user, shown], live_out, api_visibility="private")
    refresh.click(h["poll"], [user], [status, plot, table, timer], api_name="ablate_poll")
    stop_btn.click(h["stop"], [user], [status, plot, table, timer, folders, *load_out], api_name="ablate_stop")
    list_btn.click(h["list"], [user], folders, api_name="ablate_list").then(
        h["load"], [user, folders], load_out, api_visibility="private")
    load_btn.click(h["load"], [user, folders], load_out, api_name="ablate_load")
    folders.input(h["load"], [user, folders], load_out, api_visibility="private")
    figure.input(h["figure"], [user, folders, figure], load_plot, api_visibility="private")
    return {"check": (h["check"], [user, grid_text], check), "poll": (h["tick"], [user, shown], live_out),
            "list": (h["list"], [user], folders), "load": (h["load"], [user, folders], load_out)}


def _default_grid_text() -> str:
    d = ABLATE_DEFAULTS
    try:
        grid = aj.build_grid(aj.base_spec(d["base"]), d["mixers"], d["configurations"], d["ratios"], d["standard"],
                             d["tasks"], d["mqar_seq_len"], d["mqar_pairs"], d["text_seq_len"], d["seeds"], d["steps"],
                             d["batch_size"], d["lr"], label=d["base"])
        return aj.grid_yaml(grid)
    except Exception:  # the tab still opens; Build shows what is wrong
        log.exception("the default ablation grid does not build")
        return ""


def _rl_tab(studio: Studio, user):
    d = rj.DEFAULTS
    gr.Markdown("RL fine-tuning on Countdown with anchor-aware credit (arXiv 2510.13554): every step samples "
                "*group size* completions of each prompt, rewards them with the verifier, and scales each "
                "token's advantage by its credit γ from the model's preplan-and-anchor rhythm. Bigger runs: "
                "`studio rl`.")
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                credit = gr.Dropdown(list(rj.STRATEGIES), value=d["credit"], label="Credit strategy",
                                     elem_id="rl-credit-strategy")
                loss = gr.Dropdown(list(rj.LOSSES), value=d["loss"], label="Loss", elem_id="rl-loss")
            with gr.Row():
                steps = gr.Number(d["steps"], label="Steps", precision=0, minimum=1, maximum=rj.MAX_STEPS,
                                  elem_id="rl-steps")
                group = gr.Number(d["group_size"], label="Group size", precision=0, minimum=2, maximum=rj.MAX_GROUP,
                                  elem_id="rl-group")
                prompts = gr.Number(d["prompts_per_step"], label="Prompts per step", precision=0, minimum=1,
                                    maximum=rj.MAX_PROMPTS, elem_id="rl-prompts")
            with gr.Accordion("More settings", open=False):
                start_from = gr.Dropdown([rj.WARMUP_LABEL], value=rj.WARMUP_LABEL, label="Start from",
                                         info="a new warm-up, or one of your Train runs on the arithmetic task",
                                         allow_custom_value=True,
                                         elem_id="rl-start-from")
                with gr.Row():
                    warmup = gr.Number(d["warmup_steps"], label="Warm-up steps", precision=0, minimum=1,
                                       maximum=rj.MAX_WARMUP_STEPS, elem_id="rl-warmup")
                    new_tokens = gr.Number(d["max_new_tokens"], label="Max new tokens", precision=0, minimum=4,
                                           maximum=rj.MAX_NEW_TOKENS, elem_id="rl-new-tokens")
                    lr = gr.Number(d["lr"], label="Learning rate", minimum=1e-7, maximum=0.1, elem_id="rl-lr")
                name = gr.Textbox("", label="Run name (blank: from the choices)", max_lines=1, elem_id="rl-name")
            with gr.Row():
                start_btn = gr.Button("Start", variant="primary", elem_id="rl-start")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="rl-stop")
                refresh = gr.Button("Refresh", elem_id="rl-refresh")
            status = gr.Markdown(_rl_status(None), elem_id="rl-status")
        with gr.Column(scale=3):
            plot = gr.Plot(label="Reward (updates while it runs)", elem_id="rl-plot")
    with gr.Row():
        credit_btn = gr.Button("Show credit on sampled rollouts", variant="primary", scale=2,
                               elem_id="rl-credit-button")
        seed = gr.Number(0, label="Sample seed", precision=0, minimum=0, maximum=2**31 - 1, scale=1,
                         elem_id="rl-seed")
    credit_note = gr.Markdown(elem_id="rl-credit-note")
    credit_view = gr.HTML(elem_id="rl-credit")
    timer = gr.Timer(1.0, active=False)
    shown = gr.State(None)

    h = make_rl_handlers(studio)
    live = [status, plot, timer, shown]
    start_btn.click(h["start"], [user, credit, loss, steps, group, prompts, start_from, new_tokens, lr, warmup, name],
                    live, api_name="rl_start")
    timer.tick(h["tick"], [user, shown], live, api_visibility="private")
    refresh.click(h["poll"], [user], live, api_name="rl_poll").then(h["starts"], [user], start_from,
                                                                   api_visibility="private")
    stop_btn.click(h["stop"], [user], live, api_name="rl_stop")
    credit_btn.click(h["credit"], [user, credit, new_tokens, seed], [credit_note, credit_view], api_name="rl_credit",
                     concurrency_limit=2, concurrency_id="rl_credit")
    return {"poll": (h["poll"], [user], live), "starts": (h["starts"], [user], start_from)}


def _learn_tab():
    gr.Markdown("Attention on a handful of small random vectors: every matrix below is computed by the studio's "
                "own mixers. Move a slider and everything is recomputed.")
    with gr.Accordion("Softmax vs linear vs lightning on the same q, k, v", open=True):
        with gr.Row():
            length = gr.Slider(2, 32, value=8, step=1, label="Tokens")
            decay = gr.Slider(0.05, 1.0, value=0.8, step=0.05, label="Lightning decay λ")
            window = gr.Slider(0, 16, value=3, step=1, label="Sliding window (0: off)")
            fmap = gr.Dropdown(["elu+1", "relu", "identity", "exp", "silu"], value="elu+1", label="Feature map")
            normalize = gr.Checkbox(True, label="Normalise linear rows")
            seed = gr.Number(0, label="Seed", precision=0)
        compare_note = gr.Markdown()
        compare_plot = gr.Plot(elem_id="learn-compare")
        compare_table = gr.Dataframe(interactive=False, label="Rows at a glance")
    with gr.Accordion("Chunked == recurrent (Lightning Attention-2), step by step", open=True):
        with gr.Row():
            chunk_len = gr.Slider(2, 32, value=12, step=1, label="Tokens")
            chunk_decay = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Decay λ")
            chunk = gr.Slider(1, 16, value=4, step=1, label="Chunk size")
        chunk_note = gr.Markdown(elem_id="learn-chunk-note")
        chunk_plot = gr.Plot()
        chunk_table = gr.Dataframe(interactive=False, label="Per step")
    with gr.Accordion("Every mixer's effective matrix", open=True):
        with gr.Row():
            gal_len = gr.Slider(4, 32, value=12, step=1, label="Tokens")
            gal_seed = gr.Number(0, label="Seed", precision=0)
        gal_note = gr.Markdown()
        gal_plot = gr.Plot(elem_id="learn-gallery")
    with gr.Accordion("Cost over length", open=True):
        with gr.Row():
            d_model = gr.Number(1024, label="d_model", precision=0)
            n_heads = gr.Number(8, label="Heads", precision=0)
        cost_note = gr.Markdown()
        cost_plot = gr.Plot()
        cost_table = gr.Dataframe(interactive=False)

    compare_in = [length, decay, window, fmap, normalize, seed]
    for control in compare_in:
        control.change(learn_compare, compare_in, [compare_note, compare_plot, compare_table],
                       trigger_mode="always_last", api_visibility="private")
    chunk_in = [chunk_len, chunk_decay, chunk, seed]
    for control in chunk_in[:3]:
        control.change(learn_chunks, chunk_in, [chunk_note, chunk_plot, chunk_table], trigger_mode="always_last",
                       api_visibility="private")
    for control in (gal_len, gal_seed):
        control.change(learn_gallery, [gal_len, gal_seed], [gal_note, gal_plot], trigger_mode="always_last",
                       api_visibility="private")
    for control in (d_model, n_heads):
        control.change(learn_costs, [d_model, n_heads], [cost_note, cost_plot, cost_table], trigger_mode="always_last",
                       api_visibility="private")
    return [(learn_compare, compare_in, [compare_note, compare_plot, compare_table]),
            (learn_chunks, chunk_in, [chunk_note, chunk_plot, chunk_table]),
            (learn_gallery, [gal_len, gal_seed], [gal_note, gal_plot]),
            (learn_costs, [d_model, n_heads], [cost_note, cost_plot, cost_table])]


def build_app(runs_dir: str | Path = "runs/app", defaults: DefaultModels | None = None,
              train_concurrency: int = 1, results_dir: str | Path | None = REPO / "results",
              ablate_concurrency: int = 1, rl_concurrency: int = 1,
              findings_dir: str | Path | None = FINDINGS_DIR) -> gr.Blocks:
    """The Studio's Gradio app (not launched). Runs go to `runs_dir/<user id>/`, ablations to
    `runs_dir/<user id>/ablations/`, RL runs to `runs_dir/<user id>/rl/`. Everyone can load the ablations
    under `results_dir` (e.g. `studio ablate --out results/X`; labels `results/X`) and the committed grids
    of docs/findings.md under `findings_dir` (labels `findings/<grid>`); None leaves either out."""
    studio = Studio(runs_dir, defaults, {"results/": results_dir, "findings/": findings_dir}, ablate_concurrency,
                    rl_concurrency)
    studio.defaults.start()  # trains any missing default model in the background (first start only)
    with gr.Blocks(title="Hybrid Attention Studio") as demo:
        gr.Markdown("# Hybrid Attention Studio")
        # The browser's user id: made and kept in its local storage by USER_ID_JS before anything else
        # runs on page load (a server-side default would race with the storage being read).
        user = gr.Textbox("", visible=False, elem_id="user-id")
        with gr.Tabs() as tabs:
            with gr.Tab("Compose", id="compose"):
                editor, fmt = _compose_tab()
            with gr.Tab("Train", id="train"):
                runs, open_btn, refresh_runs = _train_tab(studio, user, editor, fmt, train_concurrency)
            with gr.Tab("Explore", id="explore"):
                model, compare, model_choices = _explore_tab(studio, user)
            with gr.Tab("Ablate", id="ablate"):
                ablate_views = _ablate_tab(studio, user, editor, fmt)
            with gr.Tab("RL", id="rl"):
                rl_views = _rl_tab(studio, user)
            with gr.Tab("Learn", id="learn"):
                learn_views = _learn_tab()

        def open_in_explore(user_id, name, request: gr.Request):
            """Switch to Explore with the chosen run selected."""
            labels = list(studio.sources(studio.user(user_id, request)))
            label = f"run: {name}" if name and f"run: {name}" in labels else (labels[0] if labels else None)
            return gr.Tabs(selected="explore"), gr.Dropdown(choices=labels, value=label), gr.Dropdown(choices=labels)

        open_btn.click(open_in_explore, [user, runs], [tabs, model, compare], api_visibility="private")

        def on_load(user_id, request: gr.Request):
            """Fill the model and run lists for this browser's user."""
            first, second = model_choices(user_id, request)
            return first, second, refresh_runs(user_id, request)

        loaded = demo.load(None, None, user, js=USER_ID_JS).then(on_load, [user], [model, compare, runs],
                                                                   api_visibility="private")
        # the Ablate tab: this user's ablations, and the live view of one still running (after a reload)
        for fn, inputs, outputs in (ablate_views["list"], ablate_views["load"], ablate_views["poll"],
                                    ablate_views["check"], rl_views["starts"], rl_views["poll"]):
            loaded = loaded.then(fn, inputs, outputs, api_visibility="private")
        for fn, inputs, outputs in learn_views:
            demo.load(fn, inputs, outputs, api_visibility="private")
    demo.queue(default_concurrency_limit=4)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Hybrid Attention Studio web app")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--runs-dir", default="runs/app", help="where users' runs are saved (default runs/app)")
    parser.add_argument("--train-concurrency", type=int, default=1, help="training jobs at once (default 1)")
    parser.add_argument("--ablate-concurrency", type=int, default=1, help="ablations at once, all users (default 1)")
    parser.add_argument("--rl-concurrency", type=int, default=1, help="RL runs at once, all users (default 1)")
    parser.add_argument("--results-dir", default="results", help="ablations anyone can load (default results)")
    parser.add_argument("--findings-dir", default=str(FINDINGS_DIR), help="the committed ablation grids of "
                        "docs/findings.md, loadable by everyone as findings/<grid> ('' hides them)")
    parser.add_argument("--threads", type=int, help="torch CPU threads, shared by every job and view of the app "
                        "(default: torch's choice, one per core; with several jobs at once on a small machine, 1 "
                        "avoids OpenMP threads waiting on each other)")
    args = parser.parse_args(argv)
    try:
        set_threads(args.threads)
    except ValueError as err:
        parser.error(str(err))
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    build_app(args.runs_dir, train_concurrency=args.train_concurrency, results_dir=args.results_dir,
              findings_dir=args.findings_dir or None,
              ablate_concurrency=args.ablate_concurrency, rl_concurrency=args.rl_concurrency).launch(
        server_name=args.host, server_port=args.port, allowed_paths=[])


if __name__ == "__main__":
    main()
