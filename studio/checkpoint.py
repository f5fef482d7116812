"""Model checkpoints: config.json (the spec) + model.safetensors, both written atomically.

Weights are read only from safetensors (no pickle anywhere). A write goes to a temporary file in the
same directory and is renamed over the target, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from safetensors.torch import load_model as _load_safetensors_model
from safetensors.torch import save_model as _save_safetensors_model

from studio.spec import ArchSpec, SpecError

if TYPE_CHECKING:
    from studio.model import HybridLM

FORMAT = "hybrid-attention-studio/model@1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path) for a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_model(model: "HybridLM", directory: str | Path) -> Path:
    directory = Path(directory)
    config = {"format": FORMAT, "spec": model.spec.to_dict(), "dtype": str(model.dtype).removeprefix("torch.")}
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: _save_safetensors_model(model, tmp))
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return directory


def read_json(path: str | Path) -> dict | None:
    """The JSON object in `path`, or None when it is missing, unreadable or not an object (e.g. being
    rewritten): for records that may not exist yet; `read_record` checks one that must."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_record(path: str | Path, expected_format: str, missing_hint: str) -> dict:
    """A JSON record the studio wrote (a model config or a run record), checked for its format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} in {str(path.parent)!r}: {missing_hint}")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (line {err.lineno}): {err.msg}") from None
    if not isinstance(record, dict) or record.get("format") != expected_format:
        raise ValueError(f"{path} is not a studio record of format {expected_format!r}")
    return record


def read_config(directory: str | Path) -> dict:
    config = read_record(Path(directory) / CONFIG_FILE, FORMAT, "is this a directory written by model.save?")
    if "spec" not in config:
        raise ValueError(f"{Path(directory) / CONFIG_FILE} has no spec")
    return config


MERGED_MODEL_DIR = "model"  # a run's merged model (studio linearize writes it beside its LoRA checkpoints)
TOKENIZER_DIR = "tokenizer"  # a transformers tokenizer saved beside a model (converted, linearized, SmolLM2 cache)


def resolve_model_dir(directory: str | Path) -> Path:
    """A model directory; a run directory whose merged `model/` exists (`studio linearize`: its checkpoints
    hold LoRA adapters, the merged model does not); or a training run directory (its last checkpoint)."""
    from studio.train import read_run

    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file() and (directory / MERGED_MODEL_DIR / CONFIG_FILE).is_file():
        return directory / MERGED_MODEL_DIR
    if not (directory / CONFIG_FILE).is_file() and (directory / "run.json").is_file():
        last = read_run(directory).get("last_checkpoint")
        if not last:
            raise FileNotFoundError(f"run {str(directory)!r} has no checkpoint yet")
        return directory / last
    return directory


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> "HybridLM":
    from studio.model import build_model

    directory = resolve_model_dir(directory)
    config = read_config(directory)
    spec = ArchSpec.from_dict(config["spec"])
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {str(directory)!r}")
    model = build_model(spec)
    dtype = getattr(torch, config.get("dtype", "float32"), torch.float32)
    model.to(dtype=dtype)
    missing, unexpected = _load_safetensors_model(model, str(weights), strict=False, device=str(device))
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match its config: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(device)


__all__ = ["atomic_write", "atomic_write_text", "save_model", "load_model", "read_config", "SpecError"]
