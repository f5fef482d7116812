"""Per-token credit gamma from the preplan-and-anchor rhythm (arXiv 2510.13554, "Attention Illuminates
LLM Reasoning"; /work/shared/REFERENCE.md section 5).

Token advantages are scaled, Atilde_t = gamma_t A_t, with gamma detached (`apply_credit`). `gamma(rhythm,
strategy)` builds gamma from one `analyses.rhythm.Rhythm` (or a list, one per sequence of a batch):

    none     gamma_t = 1
    local    gamma_t = 1 + (amp - 1) 1{t in T_loc}          (T_loc: preplan tokens, top q of Delta over R)
    anchor   gamma_t = 1 + (amp - 1) 1{t in T_glob}         (T_glob: anchors, top q of FAI over R)
    coupled  gamma_t = 1 + (amp-1) 1{t in T_glob \\ D} + (1-alpha)(amp-1) 1{t in D} + alpha (amp-1) 1{t in I(D)}
             D = {t in T_glob : WAAD_t <= tau_waad and max_{u in t-k..t-1} Delta_u >= tau_Delta},
             I(D) = {intro(s) : s in D}, intro(s) = the latest preplan token before s
    random   gamma_t = 1 + (amp - 1) 1{t in S}, S = |T_glob| positions of R drawn uniformly (the paper's baseline)
    entropy  gamma_t = 1 + (amp - 1) 1{t in top q of entropy over R} (the paper's baseline)

Indexing: gamma[b, t] belongs to token t of the sequence, the same index as `rhythm.tokens`, WAAD_t, FAI_t.
R = {t >= response_start}; positions before response_start always get gamma 1.

Choices where the paper is silent (the studio's, see REFERENCE.md section 5):
- tau_waad (default) = the median of WAAD over R, the usual median (mean of the two middle values when |R|
  is even); tau_Delta (default) = the smallest Delta inside T_loc (the threshold of the top-q preplan set;
  +inf when T_loc is empty, so nothing is dominated); alpha = 0.5; k = 3.
- the domination window u in t-k..t-1 is clipped to R (u >= response_start): the rhythm is a response
  property; an anchor at response_start has an empty window and is never dominated.
- intro(s) = the latest preplan token strictly before s (at any distance, not only within k); a dominated
  anchor with no preplan token before it contributes no intro.
- the coupled terms are summed as the formula reads: a position in both T_glob \\ D and I(D) gets
  1 + (1 + alpha)(amp - 1); one in both D and I(D) gets 1 + (amp - 1) = amp.
- entropy credit uses `rhythm.entropy[t]`, the entropy of the next-token distribution computed at position
  t (the one predicting token t + 1), aligned with WAAD_t as `analyses.rhythm` documents; the entropy of
  the distribution token t was drawn from is entropy[t - 1].
- random credit draws, per sequence, |T_glob| distinct positions of R from `generator` (else a generator
  seeded with `seed`, else torch's global generator, so `torch.manual_seed` makes it reproducible); the
  sequences of a batch draw one after another from the same generator.
- q: the Rhythm does not record its q. A stored set whose size is not top_count(q, |R|) was computed with
  another q and is recomputed as top_q(series, q, response_start) (Delta for T_loc, FAI for T_glob); a set
  of the right size is kept (for a Rhythm from `analyses.rhythm`, top_q would give that same set).
- batches of different lengths are padded on the right with gamma 1.0 to the longest sequence (or to
  `length`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from analyses.metrics import top_count, top_q
from analyses.rhythm import Rhythm

__all__ = ["STRATEGIES", "SIGNS", "gamma", "token_sets", "coupled_sets", "apply_credit", "credit_statistics"]

STRATEGIES = ("none", "local", "anchor", "coupled", "random", "entropy")
SIGNS = ("both", "positive")

GAMMA_AMP = 1.5
Q = 0.4
K = 3
ALPHA = 0.5


def _choice(name: str, value, valid: Sequence[str]) -> str:
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}; got {value!r}")
    return value


def _check_rhythm(rhythm) -> tuple[int, int]:
    """(T, response_start) of a Rhythm, after checking its series agree in length."""
    if not isinstance(rhythm, Rhythm):
        raise ValueError(f"rhythm must be an analyses.rhythm.Rhythm or a list of them; got {type(rhythm).__name__}")
    n = int(rhythm.waad.shape[-1])
    for name in ("waad", "waad_delta", "fai", "preplan", "anchors", "entropy"):
        series = getattr(rhythm, name)
        if series is not None and tuple(series.shape) != (n,):
            raise ValueError(f"rhythm.{name} must have shape ({n},) like rhythm.waad; got {tuple(series.shape)}")
    start = int(rhythm.response_start)
    if not 0 <= start <= n:
        raise ValueError(f"rhythm.response_start must lie in [0, {n}]; got {start}")
    return n, start


def _mask(stored: torch.Tensor, series: torch.Tensor, q: float, start: int) -> torch.Tensor:
    """The stored set if its size fits q, else top_q(series, q, start); never True before start."""
    n = series.shape[-1]
    stored = stored.detach().to("cpu", torch.bool).clone()
    stored[:start] = False
    if int(stored.sum()) == top_count(q, n - start):
        return stored
    return top_q(series.detach().to("cpu"), q, start)


def token_sets(rhythm: Rhythm, q: float = Q) -> tuple[torch.Tensor, torch.Tensor]:
    """(T_loc, T_glob): bool [T] masks (CPU) of the preplan tokens and anchors for share q; a stored set of
    another size is recomputed from the series with `analyses.metrics.top_q`."""
    _, start = _check_rhythm(rhythm)
    return (_mask(rhythm.preplan, rhythm.waad_delta, q, start), _mask(rhythm.anchors, rhythm.fai, q, start))


def coupled_sets(
    rhythm: Rhythm,
    q: float = Q,
    k: int = K,
    tau_waad: float | None = None,
    tau_delta: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T_glob, D, I(D)) as bool [T] masks (CPU): the anchors, the locally dominated anchors and their
    intros (latest preplan token before each dominated anchor). Defaults: tau_waad = median WAAD over R,
    tau_delta = smallest Delta inside T_loc."""
    n, start = _check_rhythm(rhythm)
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1 (the window t-k..t-1); got {k}")
    preplan, anchors = token_sets(rhythm, q)
    waad_t = rhythm.waad.detach().to("cpu", torch.float64)
    delta = rhythm.waad_delta.detach().to("cpu", torch.float64)
    if tau_waad is None:
        tau_waad = float(torch.quantile(waad_t[start:], 0.5)) if n > start else math.inf
    if tau_delta is None:
        tau_delta = float(delta[preplan].min()) if bool(preplan.any()) else math.inf
    dominated = torch.zeros(n, dtype=torch.bool)
    intro = torch.zeros(n, dtype=torch.bool)
    for t in torch.nonzero(anchors).flatten().tolist():
        lo = max(start, t - k)
        if lo >= t or not float(waad_t[t]) <= tau_waad:
            continue
        if float(delta[lo:t].max()) >= tau_delta:
            dominated[t] = True
            before = torch.nonzero(preplan[:t]).flatten()
            if before.numel():
                intro[int(before[-1])] = True
    return anchors, dominated, intro


def _one(rhythm: Rhythm, strategy: str, amp: float, q: float, k: int, alpha: float, tau_waad, tau_delta,
         generator: torch.Generator | None) -> torch.Tensor:
    """gamma [T] (float64, CPU) of one sequence."""
    n, start = _check_rhythm(rhythm)
    inc = amp - 1.0
    out = torch.ones(n, dtype=torch.float64)
    if strategy == "none":
        return out
    if strategy == "local":
        out[token_sets(rhythm, q)[0]] += inc
    elif strategy == "anchor":
        out[token_sets(rhythm, q)[1]] += inc
    elif strategy == "coupled":
        anchors, dominated, intro = coupled_sets(rhythm, q, k, tau_waad, tau_delta)
        out[anchors & ~dominated] += inc
        out[dominated] += (1.0 - alpha) * inc
        out[intro] += alpha * inc
    elif strategy == "random":
        count = int(token_sets(rhythm, q)[1].sum())
        order = torch.randperm(n - start, generator=generator)
        out[start + order[:count]] += inc
    elif strategy == "entropy":
        if rhythm.entropy is None:
            raise ValueError("strategy 'entropy' needs rhythm.entropy; this Rhythm has entropy=None")
        out[top_q(rhythm.entropy.detach().to("cpu", torch.float64), q, start)] += inc
    out[:start] = 1.0
    return out


def gamma(
    rhythm: Rhythm | Sequence[Rhythm],
    strategy: str,
    *,
    amp: float = GAMMA_AMP,
    q: float = Q,
    k: int = K,
    alpha: float = ALPHA,
    tau_waad: float | None = None,
    tau_delta: float | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    length: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-token credit gamma [B, T] (detached, no grad) for one Rhythm (B = 1) or a list of them.

    strategy: one of STRATEGIES (see the module docstring). amp: gamma_amp (1.5); q: share of R in each set
    (0.4); k, alpha, tau_waad, tau_delta: the coupled rule (3, 0.5, median WAAD over R, smallest Delta in
    T_loc; scalars apply to every sequence). generator / seed: random credit's draws. Sequences of
    different lengths are right-padded with 1.0 to the longest, or to `length` (>= every T). dtype: of the
    result; device: default the first rhythm's WAAD device."""
    _choice("strategy", strategy, STRATEGIES)
    rhythms = [rhythm] if isinstance(rhythm, Rhythm) else list(rhythm)
    if not rhythms:
        raise ValueError("rhythm must be a Rhythm or a non-empty list of Rhythms; got an empty list")
    amp, alpha = float(amp), float(alpha)
    if not math.isfinite(amp):
        raise ValueError(f"amp must be finite; got {amp}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha}")
    top_count(q, 0)  # validates q
    if strategy == "random" and generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    rows = [_one(r, strategy, amp, q, k, alpha, tau_waad, tau_delta, generator) for r in rhythms]
    longest = max(row.shape[0] for row in rows)
    if length is None:
        length = longest
    elif int(length) < longest:
        raise ValueError(f"length must be >= the longest sequence ({longest}); got {length}")
    out = torch.ones((len(rows), int(length)), dtype=torch.float64)
    for b, row in enumerate(rows):
        out[b, : row.shape[0]] = row
    if device is None:
        device = rhythms[0].waad.device
    return out.to(device=device, dtype=dtype).detach()


def apply_credit(advantages: torch.Tensor, gamma: torch.Tensor, signs: str = "both") -> torch.Tensor:
    """gamma * A with gamma detached. signs="both" (paper v2, default) scales every advantage; "positive"
    (paper v1) scales only A >= 0 and leaves negative advantages unchanged. advantages [B, T] (or any shape
    that broadcasts with gamma, e.g. GRPO's per-sequence [B, 1]); returns the broadcast shape."""
    _choice("signs", signs, SIGNS)
    g = gamma.detach().to(device=advantages.device, dtype=advantages.dtype)
    scaled = g * advantages
    if signs == "positive":
        scaled = torch.where(advantages >= 0, scaled, advantages.expand_as(scaled))
    return scaled


def credit_statistics(gamma: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, float]:
    """Logging summary of gamma [B, T] over the tokens of `mask` (bool [B, T], e.g. the response mask;
    None: every token): `credit_boosted` (share with gamma > 1), `credit_mean` (mean gamma),
    `credit_max`, `credit_tokens` (how many tokens). An empty mask gives NaN."""
    g = gamma.detach().to(torch.float64)
    if mask is None:
        values = g.reshape(-1)
    else:
        mask = torch.as_tensor(mask, device=g.device).to(torch.bool)
        if mask.shape != g.shape:
            raise ValueError(f"mask must have gamma's shape {tuple(g.shape)}; got {tuple(mask.shape)}")
        values = g[mask]
    n = values.numel()
    if n == 0:
        return {"credit_boosted": math.nan, "credit_mean": math.nan, "credit_max": math.nan, "credit_tokens": 0.0}
    return {
        "credit_boosted": float((values > 1.0).to(torch.float64).mean()),
        "credit_mean": float(values.mean()),
        "credit_max": float(values.max()),
        "credit_tokens": float(n),
    }
