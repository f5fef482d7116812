"""Measuring a language model on real text: any `HybridLM` with the tokenizer its vocabulary came from.

    perplexity(model, "smollm2", "shakespeare", seq_len=256, windows=32)   held-out perplexity
    recovery(teacher_ppl, untrained_ppl, finetuned_ppl)                    % of the conversion's gap closed
    recall_probe(model, tokenizer, lengths=(256, 1024, 2048))             needle-in-a-haystack recall
    decode_cost(model, prompt_len=8192, new_tokens=16)                      decoding state bytes and speed

Everything is deterministic for a given seed: the perplexity windows are a fixed grid over the held-out
part of a corpus (`studio.tasks.text`: its last 5%, which training on `Text(split="train")` never sees),
and the recall probe's haystacks, names and numbers come from one seeded generator.

A tokenizer here is a name ("bytes", "smollm2": `studio.tasks.tokenizers.get_tokenizer`) or an object:
a transformers tokenizer (its `encode(text, add_special_tokens=False)`) or one of the studio's own.
"""

from __future__ import annotations

import math
import random
import re
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from studio.model import HybridLM
from studio.tasks.text import HELD_OUT, load_corpus

__all__ = ["perplexity", "held_out_ids", "held_out_text", "recovery", "recall_probe", "recall_items",
           "recall_answer_matches", "greedy_continuation", "decode_cost", "state_bytes", "encode_text"]


# ---- tokens ----------------------------------------------------------------------------------------
def _tokenizer(tokenizer):
    if isinstance(tokenizer, str):
        from studio.tasks.tokenizers import get_tokenizer

        return get_tokenizer(tokenizer)
    return tokenizer


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens, for a transformers tokenizer or a studio one."""
    tokenizer = _tokenizer(tokenizer)
    if hasattr(tokenizer, "apply_chat_template"):  # transformers: never add BOS/EOS on our behalf
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def held_out_text(corpus: str = "shakespeare") -> str:
    """The held-out characters of a corpus (name or path; its last HELD_OUT share, as `studio.tasks.text`)."""
    text = load_corpus(corpus)
    return text[int(len(text) * (1 - HELD_OUT)):]


def held_out_ids(corpus: str = "shakespeare", tokenizer="smollm2") -> torch.Tensor:
    """The held-out token ids of a corpus: exactly `Text(corpus, tokenizer=name, split="eval").ids` for a
    tokenizer name; for a tokenizer object, the whole corpus encoded and cut at the same share."""
    if isinstance(tokenizer, str):
        from studio.tasks.text import Text

        return Text(corpus, seq_len=2, tokenizer=tokenizer, split="eval").ids
    ids = torch.tensor(encode_text(tokenizer, load_corpus(corpus)), dtype=torch.long)
    return ids[int(len(ids) * (1 - HELD_OUT)):]


# ---- perplexity --------------------------------------------------------------------------------------
def window_starts(n_tokens: int, seq_len: int, windows: int | None) -> list[int]:
    """Starts of `windows` non-overlapping windows of seq_len + 1 tokens, spread evenly over n_tokens
    (all of them when `windows` is None or more than fit)."""
    fit = (n_tokens - 1) // seq_len
    if fit < 1:
        raise ValueError(f"{n_tokens} held-out tokens are fewer than seq_len + 1 = {seq_len + 1}")
    if windows is None or windows >= fit:
        return [i * seq_len for i in range(fit)]
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    stride = fit // windows
    return [i * stride * seq_len for i in range(windows)]


@torch.no_grad()
def perplexity(model: HybridLM, tokenizer_or_ids="smollm2", corpus: str = "shakespeare", seq_len: int = 256,
               windows: int | None = 32, batch_size: int = 4) -> dict[str, Any]:
    """Held-out perplexity: exp of the mean next-token loss over fixed windows of the held-out split.

    `tokenizer_or_ids`: a tokenizer (name or object; the held-out split of `corpus` is encoded with it,
    see `held_out_ids`) or a 1-D tensor of token ids to use as they are. Each window is seq_len + 1
    consecutive tokens: the model reads the first seq_len and predicts the next token at each of them
    (as `Text` batches are scored), so seq_len predictions per window, each from 0..seq_len-1 tokens of
    context. Windows do not overlap and are spread evenly (`window_starts`); the same arguments give
    the same windows. Returns {"ppl", "loss" (mean nats per token), "tokens" (scored), "windows",
    "seq_len", "seconds"}."""
    if isinstance(tokenizer_or_ids, torch.Tensor):
        ids = tokenizer_or_ids.reshape(-1).long()
    else:
        ids = held_out_ids(corpus, tokenizer_or_ids)
    if int(ids.max()) >= model.spec.vocab_size:
        raise ValueError(f"token id {int(ids.max())} does not fit the model's vocab_size {model.spec.vocab_size}")
    starts = window_starts(len(ids), seq_len, windows)
    was_training = model.training
    model.eval()
    start_time = time.perf_counter()
    nll, scored = 0.0, 0
    try:
        for i in range(0, len(starts), batch_size):
            batch = torch.stack([ids[s: s + seq_len + 1] for s in starts[i: i + batch_size]]).to(model.device)
            logits = model(batch[:, :-1])
            nll += float(F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum"))
            scored += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    loss = nll / scored
    return {"ppl": math.exp(loss), "loss": loss, "tokens": scored, "windows": len(starts), "seq_len": seq_len,
            "seconds": time.perf_counter() - start_time}


def recovery(teacher_ppl: float, untrained_ppl: float, finetuned_ppl: float, on: str = "loss") -> float:
    """The share (in %) of the conversion's damage that fine-tuning repaired:

        recovery = 100 * (m(untrained) - m(finetuned)) / (m(untrained) - m(teacher))

    with m = log perplexity (the mean loss, `on="loss"`, the headline) or m = perplexity (`on="ppl"`).
    100: the fine-tuned model is as good as the teacher; 0: no better than the converted, untrained
    model; negative: worse than that; above 100: better than the teacher. NaN when there is no gap
    (the untrained conversion already matches the teacher): nothing to recover.

    The headline is on log perplexity because perplexity is exponential in the loss: an untrained
    conversion at ppl 2000 against a teacher at 20 makes ppl 60 look like 98% recovered on perplexity
    but 76% on loss. Liger (arXiv 2503.01496) reports "93% recovery" as the linearized model's mean
    benchmark accuracy over the teacher's (a ratio, not a share of a gap), so the two numbers are
    related but not the same measure."""
    if on not in ("loss", "ppl"):
        raise ValueError(f"on must be 'loss' or 'ppl', got {on!r}")
    values = [teacher_ppl, untrained_ppl, finetuned_ppl]
    if any(not v > 0 for v in values):
        raise ValueError(f"perplexities must be positive, got {values}")
    t, u, f = (math.log(v) for v in values) if on == "loss" else values
    if u == t:
        return float("nan")
    return 100.0 * (u - f) / (u - t)


# ---- recall: needle in a haystack ------------------------------------------------------------------
NAMES = ("Alice", "Bruno", "Chloe", "Daniel", "Elena", "Felix", "Grace", "Hugo", "Irene", "Jonas", "Karin",
         "Leon", "Marta", "Nadia", "Oscar", "Paula", "Rafael", "Sofia", "Tomas", "Ursula", "Victor", "Wanda",
         "Yusuf", "Zara")
FACT = "The secret number of {name} is {number}."
QUESTION = "What is the secret number of {name}?"
TEMPLATES = ("auto", "chat", "completion")


def recall_answer_matches(completion: str, answer: str) -> bool:
    """Exact match: the first run of digits in the model's completion is the answer, digit for digit
    ("4821." and "It is 4821" match 4821; "48210", "482" and "4 821" do not)."""
    found = re.search(r"\d+", completion)
    return found is not None and found.group(0) == answer


def resolve_template(tokenizer, template: str) -> str:
    """"auto" -> "chat" when the tokenizer has a chat template, else "completion"; others as given."""
    if template == "auto":
        return "chat" if getattr(_tokenizer(tokenizer), "chat_template", None) else "completion"
    return template


def _prompt(tokenizer, haystack: str, name: str, template: str) -> str:
    """The question after the haystack, ending where the number starts: "... The secret number of <name>
    is " (a trailing space: SmolLM2's tokenizer writes " 4821" as " ", "4", "8", "2", "1")."""
    question, answer_start = QUESTION.format(name=name), FACT.format(name=name, number="").removesuffix(".")
    template = resolve_template(tokenizer, template)
    if template == "chat":
        from studio.pretrained import chat_prompt

        return chat_prompt(tokenizer, f"{haystack}\n\n{question} Answer with the number only.") + answer_start
    if template == "completion":
        return f"{haystack}\n\n{question}\n{answer_start}"
    raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")


def recall_items(tokenizer, lengths: Sequence[int] = (256, 1024, 2048), depths: Sequence[float] = (0.1, 0.5, 0.9),
                 trials: int = 2, facts: int = 4, corpus: str = "shakespeare", template: str = "auto",
                 seed: int = 0) -> list[dict]:
    """The probe's prompts. For each length, depth and trial: `facts` sentences "The secret number of
    <name> is <4 digits>." (distinct names and numbers) planted between the lines of held-out corpus
    text, the asked one at `depth` (0: before the first line of filler, 1: after the last), the others
    at random depths (MQAR-style distractors, arXiv 2312.04927); then the question, as a chat turn
    (`template="chat"`, the tokenizer's chat template) or as plain text ("completion"), ending with
    "The secret number of <name> is" so that the next tokens are the number. The filler is cut so that
    the whole prompt has about `length` tokens (its exact count is in "tokens"). "auto": chat when the
    tokenizer has a chat template (as an instruct model is meant to be asked), else completion.
    Returns [{"length", "depth", "trial", "name", "answer", "prompt", "ids", "tokens"}]."""
    rng = random.Random(seed)
    filler_text = held_out_text(corpus)
    items = []
    for length in lengths:
        for depth in depths:
            for trial in range(trials):
                names = rng.sample(NAMES, facts)
                numbers = [str(n) for n in rng.sample(range(1000, 10000), facts)]
                fact_depths = [float(depth)] + [rng.random() for _ in range(facts - 1)]
                sentences = [FACT.format(name=n, number=x) for n, x in zip(names, numbers)]
                overhead = len(encode_text(tokenizer, _prompt(tokenizer, "\n".join(sentences), names[0], template)))
                budget = max(length - overhead, 0)
                start = rng.randrange(0, max(1, len(filler_text) - 8 * budget - 1))
                start = filler_text.find("\n", start) + 1  # begin at a line
                filler_ids = encode_text(tokenizer, filler_text[start: start + 8 * budget + 64])[:budget]
                filler = _decode(tokenizer, filler_ids).split("\n") if budget else []
                # each fact goes before filler line round(depth * lines); where facts share a slot, the
                # asked one comes first in the first half and last in the second (0 and 1 stay the ends)
                slots: dict[int, list[str]] = {}
                for d, sentence in reversed(list(zip(fact_depths, sentences))):
                    slots.setdefault(round(d * len(filler)), []).append(sentence)
                if depth < 0.5:
                    slots[round(depth * len(filler))].reverse()
                lines = []
                for at in range(len(filler) + 1):
                    lines += slots.get(at, []) + filler[at: at + 1]
                prompt = _prompt(tokenizer, "\n".join(lines), names[0], template)
                ids = encode_text(tokenizer, prompt)
                items.append({"length": length, "depth": float(depth), "trial": trial, "name": names[0],
                              "answer": numbers[0], "prompt": prompt, "ids": ids, "tokens": len(ids)})
    return items


def _decode(tokenizer, ids) -> str:
    return _tokenizer(tokenizer).decode([int(i) for i in ids])


def _stop_token(tokenizer) -> int | None:
    tokenizer = _tokenizer(tokenizer)
    stop = getattr(tokenizer, "eos_token_id", None)
    return stop if stop is not None else getattr(tokenizer, "eos", None)


@torch.no_grad()
def greedy_continuation(model: HybridLM, ids: Sequence[int], max_new_tokens: int, stop_token: int | None = None
                        ) -> list[int]:
    """Greedy new tokens after `ids`: one parallel prefill (last position's logits only), then the
    mixers' recurrent steps, as `HybridLM.generate` decodes."""
    logits, states = model.prefill(torch.tensor([list(ids)], device=model.device), last_only=True)
    logits, out = logits[:, -1], []
    for i in range(max_new_tokens):
        nxt = logits.argmax(-1)
        if stop_token is not None and int(nxt) == stop_token:
            break
        out.append(int(nxt))
        if i + 1 < max_new_tokens:
            logits, states = model.step(nxt, states)
    return out


@torch.no_grad()
def recall_probe(model: HybridLM, tokenizer, lengths: Sequence[int] = (256, 1024, 2048),
                 depths: Sequence[float] = (0.1, 0.5, 0.9), trials: int = 2, facts: int = 4,
                 corpus: str = "shakespeare", template: str = "auto", seed: int = 0,
                 max_new_tokens: int = 6) -> dict[str, Any]:
    """Needle-in-a-haystack recall (Kamradt's needle test, as in RULER, arXiv 2404.06654) with the
    tokenizer's text: the model greedily completes each prompt of `recall_items` and is scored by
    `recall_answer_matches`. Returns {"accuracy", "by_length" {length: accuracy}, "by_depth",
    "grid" {length: {depth: accuracy}}, "items" (each without its prompt text: length, depth, trial,
    tokens, answer, output, correct), "seconds"}."""
    model.eval()
    start_time = time.perf_counter()
    stop = _stop_token(tokenizer)
    rows = []
    for item in recall_items(tokenizer, lengths, depths, trials, facts, corpus, template, seed):
        if max(item["ids"]) >= model.spec.vocab_size:
            raise ValueError(f"the tokenizer's ids go beyond the model's vocab_size {model.spec.vocab_size}")
        output = _decode(tokenizer, greedy_continuation(model, item["ids"], max_new_tokens, stop))
        rows.append({k: item[k] for k in ("length", "depth", "trial", "tokens", "name", "answer")}
                    | {"output": output, "correct": recall_answer_matches(output, item["answer"])})

    def mean(selected):
        return sum(r["correct"] for r in selected) / len(selected) if selected else float("nan")

    return {
        "accuracy": mean(rows),
        "by_length": {n: mean([r for r in rows if r["length"] == n]) for n in lengths},
        "by_depth": {float(d): mean([r for r in rows if r["depth"] == float(d)]) for d in depths},
        "grid": {n: {float(d): mean([r for r in rows if r["length"] == n and r["depth"] == float(d)])
                     for d in depths} for n in lengths},
        "items": rows, "template": resolve_template(tokenizer, template), "facts": facts, "trials": trials,
        "seed": seed,
        "seconds": time.perf_counter() - start_time,
    }


# ---- decoding cost -----------------------------------------------------------------------------------
def state_bytes(states) -> int:
    """Bytes of every tensor in a decoding state (nested dicts / lists / tuples of tensors), as held:
    numel x element size of each tensor, however it shares storage."""
    if isinstance(states, torch.Tensor):
        return states.numel() * states.element_size()
    if isinstance(states, dict):
        return sum(state_bytes(v) for v in states.values())
    if isinstance(states, (list, tuple)):
        return sum(state_bytes(v) for v in states)
    return 0


def _storages(states, seen: dict) -> dict:
    if isinstance(states, torch.Tensor):
        storage = states.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    elif isinstance(states, dict):
        for v in states.values():
            _storages(v, seen)
    elif isinstance(states, (list, tuple)):
        for v in states:
            _storages(v, seen)
    return seen


def retained_bytes(states) -> int:
    """Bytes of the distinct storages behind a decoding state: what it keeps alive. More than
    `state_bytes` when a state tensor is a view of a larger one (a window of keys sliced from the
    prompt's keys keeps all of them until the first step replaces it)."""
    return sum(_storages(states, {}).values())


def _rss() -> tuple[int | None, int | None]:
    """(current, peak) resident set size in bytes from /proc (None elsewhere)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None, None
    found = {k: int(v) * 1024 for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M)}
    return found.get("VmRSS"), found.get("VmHWM")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@torch.no_grad()
def decode_cost(model: HybridLM, prompt_len: int, new_tokens: int = 16, repeats: int = 3,
                seed: int = 0) -> dict[str, Any]:
    """What decoding after a prompt of `prompt_len` tokens costs: one parallel prefill (last logits
    only), then `new_tokens` greedy recurrent steps, timed `repeats` times from the same prefilled state.

    Returns {"prompt_len", "prefill_s", "state_bytes" (every layer's decoding state after the prefill:
    KV caches, windows, matrices, short-conv histories), "state_bytes_by_mixer", "predicted_state_bytes"
    (the mixers' own `state_elements` x dtype bytes, short convolutions excluded), "retained_bytes"
    (`retained_bytes`), "state_bytes_after_decode", "decode_tokens_per_s" (median over the repeats),
    "step_ms" (median ms per token), "rss_bytes" (resident memory after the prefill), "peak_rss_bytes"
    (peak during prefill and decoding; reset first where Linux allows, else the process' peak)}.
    The prompt is random token ids from `seed`: the cost does not depend on the text."""
    model.eval()
    tokens = torch.randint(0, model.spec.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(seed))
    peak_was_reset = _reset_peak_rss()
    start = time.perf_counter()
    logits, states = model.prefill(tokens.to(model.device), last_only=True)
    prefill_s = time.perf_counter() - start
    rss, _ = _rss()
    by_mixer: dict[str, int] = {}
    for block, state in zip(model.blocks, states):
        name = type(block.attn).name
        by_mixer[name] = by_mixer.get(name, 0) + state_bytes(state)
    element = torch.finfo(model.dtype).bits // 8
    predicted = sum(block.attn.state_elements(prompt_len) for block in model.blocks) * element
    speeds, final = [], states
    for _ in range(repeats):
        current, nxt = states, logits[:, -1].argmax(-1)
        start = time.perf_counter()
        for _ in range(new_tokens):
            step_logits, current = model.step(nxt, current)
            nxt = step_logits.argmax(-1)
        speeds.append(new_tokens / (time.perf_counter() - start))
        final = current
    _, peak = _rss()
    speed = statistics.median(speeds)
    return {"prompt_len": prompt_len, "new_tokens": new_tokens, "repeats": repeats, "prefill_s": prefill_s,
            "state_bytes": state_bytes(states), "state_bytes_by_mixer": by_mixer, "predicted_state_bytes": predicted,
            "retained_bytes": retained_bytes(states), "state_bytes_after_decode": state_bytes(final),
            "decode_tokens_per_s": speed, "step_ms": 1000.0 / speed, "rss_bytes": rss, "peak_rss_bytes": peak,
            "peak_rss_reset": peak_was_reset}
