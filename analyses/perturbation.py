"""The perturbation experiment of arXiv 2510.13554 ("Attention Illuminates LLM Reasoning", section 4).

Claim tested: the tokens that later tokens attend to most (high future attention influence, FAI) steer
the continuation more than the tokens with low FAI. Replacing the top-k FAI positions of the first part
of an answer changes what the model generates next more than replacing the bottom-k positions; the paper
reports a mean Jaccard similarity of the continuations of 0.534 (top) vs 0.631 (bottom) on Qwen3-4B-Base
/ GSM8K, top lower in 87% of trials (REFERENCE.md section 4).

One trial (`perturbation_trial`), for a sequence `tokens` = prompt + answer, answer = tokens[response_start:]:

1. cut = response_start + floor(split * len(answer)); the perturbable region is [response_start, cut)
   (the first `split` of the answer), the continuation is the n_new = len(tokens) - cut tokens after it.
2. FAI comes from `rhythm_fn(tokens, response_start)`. `fai_scope="full"` (default) scores the whole
   original sequence, so FAI_s measures how much the rest of the answer, continuation included, attends
   to s: the paper's analysis setting (FAI on the generated answer, H_hi = end of sequence when the
   rhythm_fn uses h_hi=None). `fai_scope="prefix"` scores only tokens[:cut] (strictly causal, nothing of
   the continuation is seen); the last `h_lo` positions of the region then have an empty FAI window
   T(s) (FAI = 0) and are not candidates.
3. top = the k region positions of largest FAI, bottom = the k of smallest (`choose_positions`); optionally
   a random control = k region positions drawn uniformly.
4. Each chosen token is replaced by a different token drawn uniformly from a replacement pool (`perturb`;
   the pool is the caller's choice: by default the whole vocabulary minus the excluded ids, e.g. special
   tokens; `replacement_pool`). Top, bottom and random use generators with the same seed.
5. `continue_fn` continues the original prefix tokens[:cut] (the reference) and each perturbed prefix by
   n_new tokens (greedy in the benchmark); identical prefixes are continued once (so k = 0 gives exactly
   1.0). The score is the Jaccard similarity of the token-id sets of each perturbed continuation and
   the reference continuation (`jaccard`). The reference is regenerated rather than read from the
   original tail so that every continuation comes from the same procedure; whether it equals the
   original tail is recorded (`reference_matches_original`).

`perturbation_experiment` runs one trial per sequence and summarises: mean Jaccard of top, bottom (and
random), the fraction of trials with top < bottom (strictly; ties are counted apart), and an exact
two-sided sign test over the untied trials.

Models are seen only through the two callables: `rhythm_fn(tokens [T], response_start) -> Rhythm or FAI
[T]` and `continue_fn(prefixes [B, P], n_new) -> list of B 1-D tensors of new tokens (at most n_new each)`.
`model_continue_fn` and `model_rhythm_fn` build them from a studio `HybridLM` (`generate`, and
`analyses.rhythm`), `generate_answers` produces the answers to analyse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = [
    "jaccard",
    "choose_positions",
    "replacement_pool",
    "perturb",
    "TooShort",
    "PerturbationTrial",
    "PerturbationSummary",
    "perturbation_trial",
    "perturbation_experiment",
    "sign_test",
    "model_continue_fn",
    "model_rhythm_fn",
    "generate_answers",
]

class TooShort(ValueError):
    """The answer is too short for a trial (nothing after the cut, or fewer than 2k candidates)."""


RhythmFn = Callable[[torch.Tensor, int], Any]
ContinueFn = Callable[[torch.Tensor, int], Sequence[torch.Tensor]]


def jaccard(a: Iterable[int], b: Iterable[int]) -> float:
    """Jaccard similarity |A & B| / |A | B| of the token-id sets of two sequences (the paper's measure
    of how similar two continuations are); two empty sequences give 1.0."""
    sa = {int(x) for x in (a.tolist() if isinstance(a, torch.Tensor) else a)}
    sb = {int(x) for x in (b.tolist() if isinstance(b, torch.Tensor) else b)}
    union = sa | sb
    return 1.0 if not union else len(sa & sb) / len(union)


def choose_positions(fai: torch.Tensor, start: int, stop: int, k: int, largest: bool = True) -> list[int]:
    """The k positions in [start, stop) with the largest (largest=True) or smallest FAI, sorted ascending.

    Ties: the earlier position is taken first; NaN counts as the least extreme value. k larger than the
    region takes the whole region. fai: [T] (any real dtype)."""
    values = torch.as_tensor(fai).detach().reshape(-1).to("cpu", torch.float64)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    start, stop = max(0, int(start)), min(int(stop), values.numel())
    if stop <= start or k == 0:
        return []
    region = values[start:stop]
    fill = -math.inf if largest else math.inf
    region = torch.where(torch.isnan(region), torch.full_like(region, fill), region)
    order = torch.sort(-region if largest else region, stable=True).indices[:k]
    return sorted(start + int(i) for i in order)


def replacement_pool(vocab_size: int, exclude: Iterable[int] = ()) -> torch.Tensor:
    """Candidate replacement ids: 0..vocab_size-1 minus `exclude` (e.g. the tokenizer's special ids, so
    that a perturbation never inserts an end-of-turn or end-of-text token)."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    keep = torch.ones(vocab_size, dtype=torch.bool)
    drop = [int(i) for i in exclude if 0 <= int(i) < vocab_size]
    if drop:
        keep[torch.tensor(drop)] = False
    return torch.nonzero(keep).reshape(-1)


def perturb(tokens: torch.Tensor, positions: Iterable[int], pool: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A copy of tokens [T] whose tokens at `positions` are each replaced by a token drawn uniformly from
    `pool` (1-D ids) minus the token it replaces, so every chosen position changes and no other does.
    Seeded: positions are visited in ascending order with `torch.Generator().manual_seed(seed)`."""
    tokens = torch.as_tensor(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be [T], got {tuple(tokens.shape)}")
    pool = torch.as_tensor(pool).reshape(-1).to("cpu", torch.long)
    out = tokens.clone()
    generator = torch.Generator().manual_seed(int(seed))
    for pos in sorted({int(p) for p in positions}):
        if not 0 <= pos < tokens.numel():
            raise ValueError(f"position {pos} is outside the {tokens.numel()} tokens")
        candidates = pool[pool != int(tokens[pos])]
        if candidates.numel() == 0:
            raise ValueError(f"the replacement pool has no token other than {int(tokens[pos])}")
        pick = int(torch.randint(candidates.numel(), (1,), generator=generator))
        out[pos] = candidates[pick].to(out.dtype)
    return out


@dataclass
class PerturbationTrial:
    """One trial of `perturbation_trial`. Positions are absolute indices into the sequence; continuations
    are token ids; `texts` holds decoded continuations when a decode function was given."""

    jaccard_top: float
    jaccard_bottom: float
    jaccard_random: float | None
    top_positions: list[int]
    bottom_positions: list[int]
    random_positions: list[int] | None
    top_fai: list[float]
    bottom_fai: list[float]
    response_start: int
    cut: int
    answer_length: int
    n_new: int
    reference_matches_original: bool
    continuations: dict[str, list[int]] = field(default_factory=dict)
    texts: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PerturbationSummary:
    """Summary of `perturbation_experiment` (JSON-serialisable through `to_dict`).

    mean_top / mean_bottom / mean_random: mean Jaccard over the trials (mean_random None without the
    random control); frac_top_lower: share of trials with jaccard_top < jaccard_bottom (strict),
    frac_ties: share with equality; sign_test_p: exact two-sided sign test over the untied trials;
    mean_difference: mean of (bottom - top); skipped: sequences without a trial, with the reason."""

    n_trials: int
    mean_top: float
    mean_bottom: float
    mean_random: float | None
    frac_top_lower: float
    frac_ties: float
    sign_test_p: float
    mean_difference: float
    settings: dict[str, Any]
    trials: list[PerturbationTrial]
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["trials"] = [t.to_dict() for t in self.trials]
        return out


def _fai_of(result: Any) -> torch.Tensor:
    fai = getattr(result, "fai", result)
    return torch.as_tensor(fai).detach().reshape(-1).to("cpu", torch.float64)


def _continue_unique(continue_fn: ContinueFn, prefixes: list[torch.Tensor], n_new: int) -> list[list[int]]:
    """continue_fn on the distinct prefixes only (one batched call); results in the order given."""
    distinct: list[torch.Tensor] = []
    index: list[int] = []
    for p in prefixes:
        for j, d in enumerate(distinct):
            if torch.equal(p, d):
                index.append(j)
                break
        else:
            index.append(len(distinct))
            distinct.append(p)
    outs = continue_fn(torch.stack(distinct), n_new)
    if len(outs) != len(distinct):
        raise ValueError(f"continue_fn returned {len(outs)} continuations for {len(distinct)} prefixes")
    lists = [[int(x) for x in torch.as_tensor(o).reshape(-1).tolist()][:n_new] for o in outs]
    return [lists[j] for j in index]


def perturbation_trial(
    rhythm_fn: RhythmFn,
    continue_fn: ContinueFn,
    tokens: torch.Tensor,
    response_start: int,
    k: int = 5,
    split: float = 0.5,
    seed: int = 0,
    pool: torch.Tensor | None = None,
    vocab_size: int | None = None,
    fai_scope: str = "full",
    h_lo: int = 10,
    random_control: bool = False,
    decode: Callable[[list[int]], str] | None = None,
) -> PerturbationTrial:
    """One perturbation trial of arXiv 2510.13554 section 4 (see the module docstring for the protocol).

    tokens: [T] prompt + answer; response_start: first answer position. k: positions perturbed per
    condition; the region must hold at least 2k candidates so that top and bottom are disjoint (else
    TooShort, a ValueError, also raised when nothing follows the cut). split in (0, 1): the region's
    share of the answer. pool: replacement ids (default: `replacement_pool(vocab_size)`; give one of the
    two). fai_scope: "full" or "prefix"; h_lo: FAI's H_lo, used only by "prefix" to drop the positions
    with an empty FAI window. random_control: also perturb k uniformly drawn region positions.
    decode: ids -> text for `texts`."""
    tokens = torch.as_tensor(tokens).detach().reshape(-1).to("cpu", torch.long)
    n = tokens.numel()
    response_start = int(response_start)
    if not 0 <= response_start < n:
        raise ValueError(f"response_start must lie in [0, {n}), got {response_start}")
    if not 0.0 < split < 1.0:
        raise ValueError(f"split must lie in (0, 1), got {split}")
    if fai_scope not in ("full", "prefix"):
        raise ValueError(f"fai_scope must be 'full' or 'prefix', got {fai_scope!r}")
    if pool is None:
        if vocab_size is None:
            raise ValueError("give a replacement pool or a vocab_size")
        pool = replacement_pool(vocab_size)
    answer_length = n - response_start
    cut = response_start + int(split * answer_length)
    n_new = n - cut
    if n_new < 1:
        raise TooShort(f"no continuation after the cut at {cut} of {n} tokens")

    stop = cut if fai_scope == "full" else cut - h_lo
    candidates = max(0, stop - response_start)
    if candidates < 2 * k:  # checked before the (costly) analysis
        raise TooShort(f"the region holds {candidates} candidate positions, fewer than 2k = {2 * k}")
    fai = _fai_of(rhythm_fn(tokens if fai_scope == "full" else tokens[:cut], response_start))
    if fai.numel() < stop:
        raise ValueError(f"rhythm_fn gave {fai.numel()} FAI values, need at least {stop}")

    top = choose_positions(fai, response_start, stop, k, largest=True)
    bottom = choose_positions(fai, response_start, stop, k, largest=False)
    prefix = tokens[:cut]
    prefixes = [prefix, perturb(prefix, top, pool, seed), perturb(prefix, bottom, pool, seed)]
    randoms = None
    if random_control:
        g = torch.Generator().manual_seed(int(seed) + 1)
        randoms = sorted(response_start + int(i) for i in torch.randperm(candidates, generator=g)[:k])
        prefixes.append(perturb(prefix, randoms, pool, seed))
    outs = _continue_unique(continue_fn, prefixes, n_new)
    reference = outs[0]
    names = ["reference", "top", "bottom"] + (["random"] if random_control else [])
    return PerturbationTrial(
        jaccard_top=jaccard(outs[1], reference),
        jaccard_bottom=jaccard(outs[2], reference),
        jaccard_random=jaccard(outs[3], reference) if random_control else None,
        top_positions=top,
        bottom_positions=bottom,
        random_positions=randoms,
        top_fai=[float(fai[p]) for p in top],
        bottom_fai=[float(fai[p]) for p in bottom],
        response_start=response_start,
        cut=cut,
        answer_length=answer_length,
        n_new=n_new,
        reference_matches_original=reference == tokens[cut:].tolist(),
        continuations=dict(zip(names, outs)),
        texts={name: decode(o) for name, o in zip(names, outs)} if decode is not None else None,
    )


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: P(a split at least as uneven as wins:losses) under p = 1/2."""
    m = wins + losses
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(wins, losses) + 1)) / 2**m
    return min(1.0, 2 * tail)


def perturbation_experiment(
    rhythm_fn: RhythmFn,
    continue_fn: ContinueFn,
    sequences: Sequence[tuple[torch.Tensor, int]],
    k: int = 5,
    split: float = 0.5,
    seed: int = 0,
    progress: Callable[[int, PerturbationTrial | None], None] | None = None,
    **trial_kwargs,
) -> PerturbationSummary:
    """`perturbation_trial` on each (tokens, response_start) of `sequences` (trial i seeded seed + i) and
    the summary of arXiv 2510.13554 section 4: mean Jaccard top vs bottom, share of trials with top lower.

    A sequence whose answer is too short for a trial (region < 2k candidates, or nothing after the cut)
    is skipped and listed in `skipped`. trial_kwargs go to `perturbation_trial` (pool, vocab_size,
    fai_scope, h_lo, random_control, decode). progress(i, trial or None) is called after each sequence."""
    trials: list[PerturbationTrial] = []
    skipped: list[dict[str, Any]] = []
    for i, (tokens, response_start) in enumerate(sequences):
        try:
            trial = perturbation_trial(rhythm_fn, continue_fn, tokens, response_start, k=k, split=split,
                                       seed=seed + i, **trial_kwargs)
        except TooShort as err:
            skipped.append({"index": i, "reason": str(err)})
            trial = None
        else:
            trials.append(trial)
        if progress is not None:
            progress(i, trial)
    n = len(trials)
    nan = math.nan
    tops = [t.jaccard_top for t in trials]
    bottoms = [t.jaccard_bottom for t in trials]
    randoms = [t.jaccard_random for t in trials if t.jaccard_random is not None]
    wins = sum(a < b for a, b in zip(tops, bottoms))
    losses = sum(a > b for a, b in zip(tops, bottoms))
    settings = {"k": k, "split": split, "seed": seed, "fai_scope": trial_kwargs.get("fai_scope", "full"),
                "random_control": bool(trial_kwargs.get("random_control", False))}
    if settings["fai_scope"] == "prefix":
        settings["h_lo"] = trial_kwargs.get("h_lo", 10)
    return PerturbationSummary(
        n_trials=n,
        mean_top=sum(tops) / n if n else nan,
        mean_bottom=sum(bottoms) / n if n else nan,
        mean_random=sum(randoms) / len(randoms) if randoms else None,
        frac_top_lower=wins / n if n else nan,
        frac_ties=(n - wins - losses) / n if n else nan,
        sign_test_p=sign_test(wins, losses),
        mean_difference=sum(b - a for a, b in zip(tops, bottoms)) / n if n else nan,
        settings=settings,
        trials=trials,
        skipped=skipped,
    )


# ---- callables from a studio model ------------------------------------------------------------------
def model_continue_fn(model, stop_token: int | None = None) -> ContinueFn:
    """continue_fn from anything with `generate(tokens [B, P], max_new_tokens, stop_token=...)` (a studio
    `HybridLM`): greedy, the prefixes as one batch; each continuation is cut after its first stop token."""

    def continue_fn(prefixes: torch.Tensor, n_new: int) -> list[torch.Tensor]:
        prefixes = torch.as_tensor(prefixes)
        if prefixes.ndim == 1:
            prefixes = prefixes[None]
        device = getattr(model, "device", prefixes.device)
        with torch.no_grad():
            out = model.generate(prefixes.to(device), n_new, stop_token=stop_token)
        rows = []
        for row in out[:, prefixes.shape[1]:].cpu():
            if stop_token is not None:
                hits = (row == stop_token).nonzero()
                if hits.numel():
                    row = row[: int(hits[0]) + 1]
            rows.append(row)
        return rows

    return continue_fn


def model_rhythm_fn(model, **rhythm_kwargs) -> RhythmFn:
    """rhythm_fn calling `analyses.rhythm(model, tokens, response_start, **rhythm_kwargs)` (e.g. h_hi=None
    for the paper's section 4 setting, FAI to the end of the sequence)."""
    from analyses.rhythm import rhythm

    def rhythm_fn(tokens: torch.Tensor, response_start: int):
        device = getattr(model, "device", "cpu")
        return rhythm(model, torch.as_tensor(tokens).to(device), response_start, **rhythm_kwargs)

    return rhythm_fn


def generate_answers(continue_fn: ContinueFn, prompts: Sequence[torch.Tensor], max_new_tokens: int
                     ) -> list[tuple[torch.Tensor, int]]:
    """(prompt + answer, len(prompt)) for each prompt [P], the answer from continue_fn (one at a time:
    prompts differ in length)."""
    out = []
    for prompt in prompts:
        prompt = torch.as_tensor(prompt).reshape(-1).to("cpu", torch.long)
        answer = torch.as_tensor(continue_fn(prompt[None], max_new_tokens)[0]).reshape(-1).to("cpu", torch.long)
        out.append((torch.cat([prompt, answer]), prompt.numel()))
    return out
