"""Training in the background for the app's Train tab: one `TrainingJob` runs `studio.train.train` in a
thread, collects its metrics records as they come, and stops cleanly (a checkpoint is written) when
asked. Also the per-user runs directories: every user of the app has a folder of their own, and names
that come from the page never leave it.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from studio.checkpoint import read_json
from studio.train import read_run, train

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def user_dir(runs_root: str | Path, user_id: str) -> Path:
    """The runs folder of one app user (a browser's id). Only ids of letters, digits, '_' and '-' are
    accepted, so an id can never point outside `runs_root`."""
    if not _SAFE_ID.match(user_id or ""):
        raise ValueError(f"invalid user id {user_id!r}")
    return Path(runs_root).resolve() / user_id


def run_name(text: str) -> str:
    """A run name typed in the page, made safe: letters, digits, '.', '_' and '-' only, no leading dot."""
    name = _UNSAFE_CHARS.sub("-", (text or "").strip()).strip(".-")[:64]
    if not name:
        raise ValueError("the run name is empty: type a name made of letters, digits, '.', '_' or '-'")
    return name


def inside(folder: Path, name: str) -> Path:
    """folder/name, refusing anything that resolves outside `folder` (.., absolute paths, links)."""
    folder = Path(folder).resolve()
    path = (folder / name).resolve()
    if path.parent != folder:
        raise ValueError(f"{name!r} is not a run of this user")
    return path


def user_runs(folder: Path) -> list[Path]:
    """The user's run directories (those holding a run.json), newest first."""
    if not folder.is_dir():
        return []
    runs = [p for p in folder.iterdir() if p.is_dir() and (p / "run.json").is_file()]
    return sorted(runs, key=lambda p: (p / "run.json").stat().st_mtime, reverse=True)


class BackgroundJob:
    """Stop / running / wait / status of a job whose `_thread` (a threading.Thread, or None before it starts)
    runs it and whose `_stop` event asks it to end. No annotations here: the subclasses are dataclasses."""

    def stop(self) -> None:
        self._stop.set()

    @property
    def running(self) -> bool:
        thread = getattr(self, "_thread", None)
        return thread is not None and thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        if getattr(self, "_thread", None) is not None:
            self._thread.join(timeout)
        return not self.running

    @property
    def status(self) -> str:
        """running or stopping while the thread runs, failed after an `error`, else `_ended_status()`."""
        if self.running:
            return "stopping" if self._stop.is_set() else "running"
        if getattr(self, "error", None):
            return "failed"
        return self._ended_status()

    def _ended_status(self) -> str:
        """The status of a job that is not running and has no error (each kind of job says)."""
        raise NotImplementedError


@dataclass
class TrainingJob(BackgroundJob):
    """`train(spec, task, steps, out_dir, **opts)` in a daemon thread. `records` grows with every step's
    metrics; `stop()` asks the trainer to stop after the current step (it writes a checkpoint first)."""

    spec: dict
    task: str
    steps: int
    out_dir: Path
    task_args: dict = field(default_factory=dict)
    opts: dict = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    error: str | None = None
    started: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "TrainingJob":
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"train {self.out_dir.name}", daemon=True)
        self._thread.start()
        return self

    def _callback(self, record: dict):
        self.records.append(record)
        return "stop" if self._stop.is_set() else None

    def _run(self) -> None:
        try:
            train(self.spec, self.task, self.steps, self.out_dir, callback=self._callback,
                  task_args=self.task_args, progress=False, **self.opts)
        except Exception as err:  # shown in the page; the run directory keeps what was saved
            self.error = f"{type(err).__name__}: {err}"

    def _ended_status(self) -> str:
        try:
            return read_run(self.out_dir).get("status", "unknown")
        except (OSError, ValueError):
            return "failed"


def metrics_figure(records: list[dict], title: str = "") -> go.Figure:
    """Loss (training, and eval where measured) and accuracy over steps, one panel each."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    steps = [r["step"] for r in records]
    fig.add_trace(go.Scatter(x=steps, y=[r["loss"] for r in records], name="train loss", mode="lines"), 1, 1)
    fig.add_trace(go.Scatter(x=steps, y=[r["accuracy"] for r in records], name="train accuracy", mode="lines"), 1, 2)
    evals = [r for r in records if "eval_loss" in r]
    if evals:
        fig.add_trace(go.Scatter(x=[r["step"] for r in evals], y=[r["eval_loss"] for r in evals],
                                 name="eval loss", mode="lines+markers"), 1, 1)
        fig.add_trace(go.Scatter(x=[r["step"] for r in evals], y=[r.get("eval_accuracy") for r in evals],
                                 name="eval accuracy", mode="lines+markers"), 1, 2)
    fig.update_xaxes(title_text="step")
    fig.update_layout(title={"text": title}, height=360, margin={"l": 50, "r": 20, "t": 60, "b": 40})
    return fig
