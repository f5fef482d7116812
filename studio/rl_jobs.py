"""The app's RL tab without UI: a small RL run (anchor-aware credit, `studio.rl.train`) in a background
thread for one user, a live reward chart, and a per-token credit view of rollouts sampled from the policy.

    opts = rl_options(credit="coupled", loss="cispo", steps=50, group_size=4, prompts_per_step=4)
    out = rl_dir(root, user, run_label(opts, start_label))     # blank name: the same choices, the same folder
    job = jobs.start(user, RLJob(out, opts, start=resolve_start(label, root, user), warmup_dir=...))
    job.snapshot()                          # status, phase (warm-up / rl), step, records so far, error
    job.stop()                              # after the current step; a checkpoint is written: Start resumes
    reward_figure(job.snapshot()["records"])
    credit_view(policy(out), rl_task("countdown"), "coupled")   # HTML: tokens coloured by gamma

A user's RL runs live in `<runs root>/<user id>/rl/<name>/` (studio RL runs: run.json, metrics.jsonl,
checkpoints/); a warm-up (supervised training on Countdown demonstrations, shared by the user's runs that
start from it) in `<runs root>/<user id>/rl/warmups/<preset>-<steps>/`. Starting the same name again resumes
a stopped run (or continues a finished one to more steps). Folders follow the Train tab's path rules
(`studio.training_jobs.user_dir`, `inside`). No gradio here.
"""

from __future__ import annotations

import copy
import hashlib
import html
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch

from studio.checkpoint import read_json
from studio.job_registry import JobRegistry
from studio.rl.credit import GAMMA_AMP, STRATEGIES
from studio.rl.train import LOSSES
from studio.training_jobs import BackgroundJob, inside, run_name, user_dir, user_runs

__all__ = ["RLBusy", "RLJob", "RLJobs", "rl_options", "run_label", "rl_root", "rl_dir", "rl_runs", "warmup_dir",
           "start_choices", "resolve_start", "policy", "reward_figure", "credit_rows", "credit_html", "credit_view",
           "read_records", "LOSSES", "STRATEGIES", "WARMUP_LABEL", "WARMUP_PRESET", "MAX_STEPS", "MAX_GROUP",
           "MAX_PROMPTS", "MAX_NEW_TOKENS", "MAX_WARMUP_STEPS", "MAX_PARAMS", "MAX_VIEW_ROLLOUTS", "DEFAULTS"]

# ---- the app's caps (the server trains on its CPU; bigger runs: `studio rl`) -------------------------------
MAX_STEPS = 200
MAX_GROUP = 8
MAX_PROMPTS = 8
MAX_NEW_TOKENS = 64
MAX_WARMUP_STEPS = 2000
MAX_PARAMS = 20_000_000
MAX_VIEW_ROLLOUTS = 16        # rollouts the credit view samples at most (prompts x group)
EVAL_PROMPTS = 16             # held-out prompts of the greedy eval (studio rl: 64)

RL = "rl"                     # the sub-folder of a user's runs folder that holds their RL runs
WARMUPS = "warmups"           # ... and inside it, their warm-ups
WARMUP_PRESET = "small-hybrid"
WARMUP_LABEL = f"new: {WARMUP_PRESET}, warmed up on Countdown"
DEFAULTS = {"credit": "coupled", "loss": "cispo", "steps": 30, "group_size": 4, "prompts_per_step": 4,
            "max_new_tokens": 32, "lr": 1e-4, "warmup_steps": 300}


class RLBusy(ValueError):
    """An RL run cannot start now: the user's own is still running, or the server's slots are taken."""


# ---- the tab's choices --------------------------------------------------------------------------------------
def _int(name: str, value: Any, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number between {low} and {high}, got {value!r}") from None
    if number != number or number != int(number) or not low <= number <= high:
        raise ValueError(f"{name} must be a whole number between {low} and {high}, got {value!r}")
    return int(number)


def rl_options(credit: str = DEFAULTS["credit"], loss: str = DEFAULTS["loss"], steps: Any = DEFAULTS["steps"],
               group_size: Any = DEFAULTS["group_size"], prompts_per_step: Any = DEFAULTS["prompts_per_step"],
               max_new_tokens: Any = DEFAULTS["max_new_tokens"], lr: Any = DEFAULTS["lr"],
               warmup_steps: Any = DEFAULTS["warmup_steps"], seed: Any = 0) -> dict:
    """The tab's choices checked against the app's caps: {"steps", "warmup_steps", "rl": RLConfig fields}.
    ValueError names the first bad choice and its range."""
    if credit not in STRATEGIES:
        raise ValueError(f"credit must be one of {', '.join(STRATEGIES)}, got {credit!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    steps = _int("steps", steps, 1, MAX_STEPS)
    group_size = _int("group size", group_size, 2, MAX_GROUP)
    prompts = _int("prompts per step", prompts_per_step, 1, MAX_PROMPTS)
    new_tokens = _int("max new tokens", max_new_tokens, 4, MAX_NEW_TOKENS)
    warmup = _int("warm-up steps", warmup_steps, 1, MAX_WARMUP_STEPS)
    seed = _int("seed", seed, 0, 2**31 - 1)
    try:
        lr = float(lr)
    except (TypeError, ValueError):
        raise ValueError(f"learning rate must be a number in (0, 0.1], got {lr!r}") from None
    if not 0 < lr <= 0.1:
        raise ValueError(f"learning rate must be a number in (0, 0.1], got {lr!r}")
    every = max(1, min(25, steps // 4))
    rl = {"credit": credit, "loss": loss, "group_size": group_size, "prompts_per_step": prompts,
          "max_new_tokens": new_tokens, "lr": lr, "seed": seed, "eval_every": every, "eval_prompts": EVAL_PROMPTS,
          "ckpt_every": every, "keep_checkpoints": 1}
    return {"steps": steps, "warmup_steps": warmup, "rl": rl}


# the options that must match to resume a run (steps may grow)
_SAME = ("credit", "loss", "group_size", "prompts_per_step", "max_new_tokens", "lr", "seed")


def run_label(opts: dict, start: str, name: str = "") -> str:
    """The run's folder name: `name` made safe, or (blank) `<credit>-<loss>-<digest>`, the same for the same
    choices and start model (steps aside), so Start after Stop resumes."""
    if name and name.strip():
        return run_name(name)
    keyed = {k: opts["rl"][k] for k in _SAME}
    keyed.update(start=start, warmup_steps=opts["warmup_steps"] if start == WARMUP_LABEL else None)
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:8]
    return f"{opts['rl']['credit']}-{opts['rl']['loss']}-{digest}"


# ---- folders ------------------------------------------------------------------------------------------------
def rl_root(runs_root: str | Path, user: str) -> Path:
    """The folder of one user's RL runs (inside their runs folder); a Train run named `rl` is not taken for it."""
    folder = user_dir(runs_root, user) / RL
    if (folder / "run.json").exists():
        raise ValueError(f"{folder} holds a training run named {RL!r}; rename that run to use the RL tab")
    return folder


def rl_dir(runs_root: str | Path, user: str, name: str, create: bool = True) -> Path:
    """Where the user's RL run `name` lives (its parent created when `create`); never outside their folder."""
    folder = rl_root(runs_root, user)
    if run_name(name) == WARMUPS:
        raise ValueError(f"{WARMUPS!r} is the folder of your warm-ups; choose another run name")
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return inside(folder, run_name(name))


def warmup_dir(runs_root: str | Path, user: str, steps: int, create: bool = True) -> Path:
    folder = rl_root(runs_root, user) / WARMUPS
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return inside(folder, f"{WARMUP_PRESET}-{int(steps)}")


def rl_runs(runs_root: str | Path, user: str) -> list[str]:
    """Names of the user's RL runs, newest first."""
    try:
        folder = rl_root(runs_root, user)
    except ValueError:
        return []
    return [p.name for p in user_runs(folder) if (read_json(p / "run.json") or {}).get("kind") == "rl"]


def _usable(path: Path) -> bool:
    """A Train run an RL run can start from: a byte model with room for BOS/EOS (vocab >= 258)."""
    run = read_json(path / "run.json") or {}
    spec = run.get("spec") if isinstance(run.get("spec"), dict) else {}
    return run.get("kind") != "rl" and int(spec.get("vocab_size") or 0) >= 258 and bool(run.get("last_checkpoint"))


def start_choices(runs_root: str | Path, user: str) -> list[str]:
    """What an RL run can start from: a new warm-up, or one of the user's Train runs (`run: <name>`) whose
    model has the Countdown vocabulary (a Train run on the arithmetic task)."""
    try:
        runs = user_runs(user_dir(runs_root, user))
    except ValueError:
        runs = []
    return [WARMUP_LABEL] + [f"run: {p.name}" for p in runs if _usable(p)]


def resolve_start(label: str, runs_root: str | Path, user: str) -> Path | None:
    """The run directory behind a `start_choices` label (None: a new warm-up); ValueError for anything else."""
    if not label or label == WARMUP_LABEL:
        return None
    if not isinstance(label, str) or not label.startswith("run: "):
        raise ValueError(f"{label!r} is not a model you can start from; pick one from the list")
    try:
        path = inside(user_dir(runs_root, user), label[len("run: "):])
    except ValueError:
        raise ValueError(f"{label!r} is not a run of yours; pick one from the list") from None
    if not (path / "run.json").is_file():
        raise ValueError(f"{label!r} is not a run of yours (no such run); pick one from the list")
    if not _usable(path):
        raise ValueError(f"{label!r} cannot start an RL run: it needs a byte model with vocab_size >= 258 and a "
                         "checkpoint (train one on the `arithmetic` task with kind countdown)")
    return path


def read_records(out_dir: Path) -> list[dict]:
    """The metrics records of a run directory (an empty list when it has none or they cannot be read)."""
    path = Path(out_dir) / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def policy(out_dir: str | Path):
    """The policy of an RL run directory on the CPU: its last checkpoint, else its initial model."""
    from studio.model import HybridLM

    out = Path(out_dir)
    for _ in range(3):  # a checkpoint can be replaced while a running job writes the next one
        run = read_json(out / "run.json") or {}
        ckpt = run.get("last_checkpoint")
        try:
            if ckpt and (out / ckpt).is_dir():
                return HybridLM.load(out / ckpt).eval()
            if (out / "initial").is_dir():
                return HybridLM.load(out / "initial").eval()
        except (OSError, ValueError):
            time.sleep(0.2)
            continue
        break
    raise ValueError(f"the RL run {out.name!r} has no model yet (it is still warming up?); try again in a moment")


# ---- running ------------------------------------------------------------------------------------------------
@dataclass
class RLJob(BackgroundJob):
    """One RL run in a daemon thread: a warm-up first when it starts from none (skipped when the user's warm-up
    of those steps is finished; resumed when it was stopped), then `studio.rl.train` (resumed when `out_dir`
    holds a run). `snapshot()` says where it is; `stop()` ends it after the current step with a checkpoint."""

    out_dir: Path
    opts: dict                            # rl_options(...)
    start_from: Path | None = None        # a run / model directory; None: warm up into `warmup`
    warmup: Path | None = None
    device: str = "auto"
    phase: str = "starting"               # warm-up | rl | done
    resumed_from: int = 0                 # the RL step a resumed run started at
    warmup_step: int = 0
    records: list[dict] = field(default_factory=list)
    error: str | None = None
    started: float = 0.0
    ended: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self.steps = int(self.opts["steps"])
        run = read_json(self.out_dir / "run.json")
        self.resume = run is not None
        if run is not None:
            if run.get("kind") != "rl":
                raise ValueError(f"the folder {self.out_dir.name!r} holds something other than an RL run; choose "
                                 "another name")
            stored = run.get("config") or {}
            changed = [k for k in _SAME if stored.get(k) != self.opts["rl"][k]]
            if changed:
                raise ValueError(f"the RL run {self.out_dir.name!r} was run with other settings ({', '.join(changed)}"
                                 "); give this run another name, or set those back to resume it")
            self.resumed_from = int(run.get("step") or 0)
            if not run.get("last_checkpoint"):
                raise ValueError(f"the RL run {self.out_dir.name!r} has no checkpoint to resume from; give this "
                                 "run another name")
            if run.get("status") == "finished" and self.resumed_from >= self.steps:
                raise ValueError(f"the RL run {self.out_dir.name!r} already finished its {self.resumed_from} steps; "
                                 "raise Steps to continue it, or change a choice (or the name) for a new run")
            self.records = [r for r in read_records(self.out_dir) if r.get("step", 0) <= self.resumed_from]
        elif self.start_from is None and self.warmup is None:
            raise ValueError("an RL run needs a model to start from or a warm-up folder")

    def start(self) -> "RLJob":
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"rl {self.out_dir.name}", daemon=True)
        self._thread.start()
        return self

    def _callback(self, record: dict):
        if not self.records:  # the policy before RL (step 0's eval) is written, not passed to the callback
            self.records.extend(r for r in read_records(self.out_dir) if r.get("step", 0) < record.get("step", 0))
        self.records.append(record)
        return "stop" if self._stop.is_set() else None

    def _warmup_callback(self, record: dict):
        self.warmup_step = int(record.get("step", 0))
        return "stop" if self._stop.is_set() else None

    def _warm_up(self) -> Path | None:
        """The warmed-up model's run directory, or None when stopped during the warm-up."""
        from studio.model import build_model
        from studio.presets import PRESETS
        from studio.rl.train import rl_task
        from studio.train import read_run, train

        out, steps = Path(self.warmup), int(self.opts["warmup_steps"])
        self.phase = "warm-up"
        if (out / "run.json").exists():
            run = read_run(out)
            self.warmup_step = int(run.get("step") or 0)
            if run["status"] in ("finished", "reached_target") and run["steps"] == steps:
                return out
            train(None, None, steps, out, resume=True, callback=self._warmup_callback, progress=False)
        else:
            task = rl_task("countdown")
            spec = {**copy.deepcopy(PRESETS[WARMUP_PRESET]), "name": f"rl-{WARMUP_PRESET}",
                    "vocab_size": task.vocab_size}
            every = max(1, steps // 5)
            seed = int(self.opts["rl"]["seed"])
            train(build_model(spec, seed=seed), task, steps, out, callback=self._warmup_callback, progress=False,
                  device=self.device, batch_size=32, lr=3e-3, warmup=min(50, steps // 10), eval_every=every,
                  ckpt_every=every, keep_checkpoints=1, seed=seed)
        run = read_run(out)
        return out if run["status"] in ("finished", "reached_target") else None

    def _run(self) -> None:
        from studio.rl.train import train

        try:
            if self.resume:
                self.phase = "rl"
                train(None, None, self.steps, self.out_dir, resume=True, callback=self._callback, progress=False,
                      device=self.device)
            else:
                start = self.start_from if self.start_from is not None else self._warm_up()
                if start is None:  # stopped while warming up: Start again resumes the warm-up
                    return
                self.phase = "rl"
                train(start, "countdown", self.steps, self.out_dir, callback=self._callback, progress=False,
                      device=self.device, **self.opts["rl"])
        except Exception as err:  # shown in the page; the run directory keeps what was saved
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.phase = "done"
            self.ended = time.monotonic()

    @property
    def status(self) -> str:
        return "not started" if self._thread is None else super().status

    def _ended_status(self) -> str:
        run = read_json(self.out_dir / "run.json")
        if run is None:
            return "stopped"  # during the warm-up
        return str(run.get("status", "unknown"))

    def snapshot(self) -> dict:
        """Where the run is: status, phase, steps, the records so far (a copy), the last record, the last eval."""
        records = list(self.records)
        steps = [r for r in records if "reward" in r]
        evals = [r for r in records if "eval_accuracy" in r]
        return {"name": self.out_dir.name, "status": self.status, "phase": self.phase, "steps": self.steps,
                "step": steps[-1]["step"] if steps else self.resumed_from, "records": records,
                "last": steps[-1] if steps else None, "eval": evals[-1] if evals else None,
                "warmup_step": self.warmup_step, "warmup_steps": int(self.opts["warmup_steps"]),
                "warming_up": self.start_from is None and not self.resume, "resumed_from": self.resumed_from,
                "error": self.error,
                "seconds": (self.ended or time.monotonic()) - self.started if self.started else 0.0}


class RLJobs(JobRegistry[RLJob]):
    """The server's RL runs: at most one per user, and at most `max_running` at once."""

    busy = RLBusy
    mine_running = ("your RL run {job.out_dir.name!r} is still running; press Stop first (it keeps a checkpoint), "
                    "or wait for it to finish")
    server_full = ("the server is running {running} RL run(s) already (its cap is {cap}); try again when one has "
                   "finished")

    def start(self, user: str, job: RLJob) -> RLJob:
        return self._start(user, lambda: job)


# ---- the reward chart ---------------------------------------------------------------------------------------
def reward_figure(records: list[dict], title: str = "") -> go.Figure:
    """Mean training reward and accuracy of the sampled rollouts per step, and the greedy eval accuracy on
    held-out prompts where measured (step 0 is the policy before RL)."""
    fig = go.Figure()
    steps = [r for r in records if "reward" in r]
    evals = [r for r in records if "eval_accuracy" in r]
    fig.add_scatter(x=[r["step"] for r in steps], y=[r["reward"] for r in steps], name="reward (sampled)",
                    mode="lines+markers")
    fig.add_scatter(x=[r["step"] for r in steps], y=[r.get("accuracy") for r in steps], name="accuracy (sampled)",
                    mode="lines", line={"dash": "dot"})
    fig.add_scatter(x=[r["step"] for r in evals], y=[r["eval_accuracy"] for r in evals],
                    name="eval accuracy (greedy, held-out)", mode="lines+markers")
    fig.update_layout(title={"text": title or "Reward"}, xaxis_title="RL step", yaxis_title="reward / accuracy",
                      yaxis_range=[-0.02, 1.02], template="plotly_white", height=360,
                      margin={"l": 50, "r": 20, "t": 60, "b": 40})
    return fig


# ---- the credit view ----------------------------------------------------------------------------------------
def _token_label(token: int, tokenizer) -> str:
    if token == getattr(tokenizer, "eos", None):
        return "⟨eos⟩"
    if token == getattr(tokenizer, "bos", None):
        return "⟨bos⟩"
    if token == 10:
        return "⏎"
    if token == 32:
        return "␣"
    if 32 < token < 127:
        return chr(token)
    if 0 <= token < 256:
        return f"\\x{token:02x}"
    return f"⟨{token}⟩"


@torch.no_grad()
def credit_rows(model, task, credit: str, prompts: int = 2, group_size: int = 2, max_new_tokens: int = 32,
                seed: int = 0, temperature: float = 1.0, credit_params: dict | None = None) -> list[dict]:
    """Rollouts sampled from `model` (seeded: the same seed gives the same rollouts) with their rhythm and
    credit: one dict per rollout with prompt, completion, reward, and per completion token its label, id,
    gamma, preplan and anchor flags (`studio.rl.credit.token_sets`, the sets credit uses)."""
    from analyses.rhythm import rhythms
    from studio.rl.credit import gamma, token_sets
    from studio.rl.rollout import sample_rollouts
    from studio.tasks.arithmetic import verify

    if credit not in STRATEGIES:
        raise ValueError(f"credit must be one of {', '.join(STRATEGIES)}, got {credit!r}")
    prompts = _int("prompts", prompts, 1, MAX_VIEW_ROLLOUTS)
    group_size = _int("group size", group_size, 1, MAX_VIEW_ROLLOUTS)
    if prompts * group_size > MAX_VIEW_ROLLOUTS:
        raise ValueError(f"the credit view samples at most {MAX_VIEW_ROLLOUTS} rollouts; got {prompts} prompts x "
                         f"{group_size}")
    max_new_tokens = _int("max new tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
    if task.vocab_size > model.spec.vocab_size:
        raise ValueError(f"the model's vocabulary ({model.spec.vocab_size}) is smaller than the task's "
                         f"({task.vocab_size})")
    device = next(model.parameters()).device
    problems = task.problems(prompts, torch.Generator().manual_seed(int(seed)))
    texts = [p.prompt for p in problems]
    roll = sample_rollouts(model, task.tokenizer, texts, verify, group_size, max_new_tokens, temperature,
                           torch.Generator(device).manual_seed(int(seed)))
    found = rhythms(model, roll.tokens[:, : max(roll.lengths)], roll.prompt_lengths, roll.lengths)
    params = dict(credit_params or {})
    if credit == "random":
        params.setdefault("generator", torch.Generator().manual_seed(int(seed)))
    gammas = gamma(found, credit, **params).cpu()
    rows = []
    for i, rhythm in enumerate(found):
        q = params.get("q")
        preplan, anchors = token_sets(rhythm, q) if q is not None else token_sets(rhythm)
        start, end = roll.prompt_lengths[i], roll.lengths[i]
        ids = roll.tokens[i, start:end].tolist()
        rows.append({
            "prompt": roll.prompts[i], "completion": roll.completions[i], "reward": float(roll.rewards[i]),
            "truncated": bool(roll.truncated[i]),
            "tokens": [{"id": int(t), "label": _token_label(int(t), task.tokenizer),
                        "gamma": float(gammas[i, start + j]), "preplan": bool(preplan[start + j]),
                        "anchor": bool(anchors[start + j])} for j, t in enumerate(ids)],
        })
    return rows


_LOW, _HIGH = (247, 247, 247), (214, 96, 77)   # gamma 1 (no boost) .. the largest gamma: white to red


def _colour(g: float, top: float) -> str:
    """The background of a token of credit g: grey-white at 1, red at `top`, blue below 1."""
    if g < 1.0:
        share = min(1.0, (1.0 - g) / 0.5)
        rgb = [round(a + (b - a) * share) for a, b in zip(_LOW, (67, 147, 195))]
    else:
        share = 0.0 if top <= 1.0 else min(1.0, (g - 1.0) / (top - 1.0))
        rgb = [round(a + (b - a) * share) for a, b in zip(_LOW, _HIGH)]
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"


_STYLE = """<style>
.rl-credit{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:14px;line-height:2.1}
.rl-credit .rl-row{margin:6px 0;padding:4px 6px;border-bottom:1px solid #e5e5e5}
.rl-credit .rl-prompt{color:#777;white-space:pre-wrap}
.rl-credit .rl-reward{display:inline-block;min-width:7em;font-weight:600;margin-right:8px}
.rl-credit .tok{padding:1px 2px;margin:0 1px;border-radius:3px;color:#111;border:2px solid transparent}
.rl-credit .tok.preplan{text-decoration:underline;text-decoration-thickness:3px;text-decoration-color:#1f77b4;
  text-underline-offset:4px}
.rl-credit .tok.anchor{border-color:#2ca02c}
.rl-credit .rl-legend{margin-bottom:6px}
</style>"""


def credit_html(rows: list[dict], credit: str, title: str = "") -> str:
    """The rollouts of `credit_rows` as HTML: each completion token on a background coloured by its gamma
    (white at 1, red at the largest; blue below 1), preplan tokens underlined in blue, anchors boxed in green,
    a token's gamma in its tooltip; every rollout's reward before it. All text is escaped."""
    if not rows:
        return '<div class="rl-credit">No rollouts.</div>'
    top = max([GAMMA_AMP] + [t["gamma"] for r in rows for t in r["tokens"]])
    steps = [1.0 + (top - 1.0) * k / 4 for k in range(5)]
    legend = "".join(f'<span class="tok" style="background:{_colour(g, top)}">γ {g:.2f}</span>' for g in steps)
    head = (f'<div class="rl-legend"><b>{html.escape(title or f"credit: {credit}")}</b> · '
            f"token colour = credit γ: {legend} · "
            '<span class="tok preplan" style="background:#f7f7f7">preplan</span> underlined · '
            '<span class="tok anchor" style="background:#f7f7f7">anchor</span> boxed</div>')
    body = []
    for i, row in enumerate(rows):
        spans = []
        for t in row["tokens"]:
            kinds = [k for k in ("preplan", "anchor") if t[k]]
            tip = f"γ {t['gamma']:.3f}" + "".join(f" · {k}" for k in kinds)
            spans.append(f'<span class="{" ".join(["tok", *kinds])}" data-gamma="{t["gamma"]:.4f}" '
                         f'title="{html.escape(tip, quote=True)}" style="background:{_colour(t["gamma"], top)}">'
                         f'{html.escape(t["label"])}</span>')
        reward = f"reward {row['reward']:.2f}" + (" (cut)" if row.get("truncated") else "")
        body.append(f'<div class="rl-row" data-row="{i}" data-reward="{row["reward"]:.4f}">'
                    f'<span class="rl-reward">{html.escape(reward)}</span>'
                    f'<span class="rl-prompt">{html.escape(row["prompt"].rstrip())} → </span>{"".join(spans)}</div>')
    return f'{_STYLE}<div class="rl-credit">{head}{"".join(body)}</div>'


def credit_view(model, task, credit: str, prompts: int = 2, group_size: int = 2, max_new_tokens: int = 32,
                seed: int = 0, temperature: float = 1.0, credit_params: dict | None = None, title: str = "") -> str:
    """HTML of a few rollouts sampled from the policy `model` on `task`, every completion token coloured by its
    credit gamma under `credit`, preplan tokens and anchors marked, the reward of each rollout shown."""
    rows = credit_rows(model, task, credit, prompts, group_size, max_new_tokens, seed, temperature, credit_params)
    return credit_html(rows, credit, title)
