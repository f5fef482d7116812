"""Preplan-and-anchor metrics of "Attention Illuminates LLM Reasoning" (arXiv 2510.13554).

Pure tensor functions (torch only): they work on any device and keep the input's floating dtype
(float64 in, float64 out). Positions are 0-indexed; a pattern A[..., t, s] is the weight query t puts
on key s. Every formula sums only over s <= t, so entries above the diagonal are ignored. Linear and
lightning mixers give signed, unnormalised patterns; the formulas are applied to them unchanged.

Notation (docs: /work/shared/REFERENCE.md sections 4 and 5):
    R     = {t : response_start <= t <= N}, N = T - 1 the last index (the response positions)
    d     head span        d(l,h) = 1/|R| sum_{t in R} sum_{s<=t} A[t,s] (t - s)
    WAAD  windowed average attention distance  WAAD_t = sum_{s<=t} Abar_loc[t,s] min(t - s, W)
    FAI   future attention influence  FAI_s = 1/|T(s)| sum_{t in T(s)} Abar_glob[t,s],
          T(s) = {t in R : s + H_lo <= t <= min(N, s + H_hi)}
    Delta Delta_t = |WAAD_t - WAAD_{t+1}|
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "head_span",
    "head_groups",
    "waad",
    "fai",
    "waad_delta",
    "top_q",
    "select_layers",
    "rhythm_statistics",
    "top_count",
]

_EPS = 1e-9  # guards ceil(q * n) against float error: ceil(0.3 * 10) must be 3, not 4


def top_count(q: float, n: int) -> int:
    """How many of n items "the top q fraction" is: ceil(q * n) (computed as ceil(q * n - 1e-9), so that
    0.3 * 10 gives 3), at most n. q = 0 gives 0."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return min(n, max(0, math.ceil(q * n - _EPS)))


def _float(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _check_square(pattern: torch.Tensor, ndims: tuple[int, ...], what: str) -> int:
    if pattern.ndim not in ndims or pattern.shape[-1] != pattern.shape[-2]:
        shapes = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{what} must be a square {shapes} tensor [..., T, T], got {tuple(pattern.shape)}")
    return pattern.shape[-1]


def _check_start(response_start: int, n: int) -> int:
    response_start = int(response_start)
    if response_start < 0:
        raise ValueError(f"response_start must be >= 0, got {response_start}")
    return min(response_start, n)


def _lag(n: int, device, dtype) -> torch.Tensor:
    """lag[t, s] = t - s on and below the diagonal, 0 above it (those entries never count)."""
    idx = torch.arange(n, device=device)
    return (idx[:, None] - idx[None, :]).clamp(min=0).to(dtype)


def head_span(pattern: torch.Tensor, response_start: int = 0) -> torch.Tensor:
    """Head span (attention distance) of arXiv 2510.13554:
    d(l,h) = 1/|R| sum_{t in R} sum_{s<=t} A[t,s] (t - s), R = {t >= response_start}.

    pattern [H, T, T] -> [H], or [B, H, T, T] -> [B, H]. An empty R (response_start >= T) gives 0."""
    pattern = _float(pattern)
    n = _check_square(pattern, (3, 4), "pattern")
    start = _check_start(response_start, n)
    per_query = (pattern * _lag(n, pattern.device, pattern.dtype)).sum(-1)  # [..., T]
    if start >= n:
        return torch.zeros(per_query.shape[:-1], dtype=pattern.dtype, device=pattern.device)
    return per_query[..., start:].mean(-1)


def _order(values: torch.Tensor, largest: bool) -> torch.Tensor:
    """Indices of a 1-D tensor ordered by value (largest or smallest first); equal values keep index
    order (lower index first); NaN counts as the least extreme value."""
    v = values.detach()
    v = v if v.is_floating_point() else v.to(torch.float64)
    fill = -math.inf if largest else math.inf
    v = torch.where(torch.isnan(v), torch.full_like(v, fill), v)
    return torch.sort(-v if largest else v, stable=True).indices


def head_groups(spans: torch.Tensor, q: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Locally and globally focused heads (arXiv 2510.13554): the bottom q and top q of the head spans.

    spans [H] -> (local_idx, global_idx), LongTensors of head indices, each sorted ascending.
    spans [L, H] (spans over (layer, head) pairs, ranked together) -> (local_idx, global_idx), LongTensors
    [k, 2] of (row, head) pairs in row-major order; row is the position in the first dimension (map it to
    the real layer number yourself).

    Size: k = ceil(q * n) over n heads (n = H or L * H), at least 1, and at most floor(n / 2) when n >= 2
    so that the two groups never overlap (with one head, that head is both). Ties: among equal spans the
    lower (flattened, row-major) index is taken first, in both groups."""
    spans = _float(spans)
    if spans.ndim not in (1, 2) or spans.numel() == 0:
        raise ValueError(f"spans must be a non-empty [H] or [L, H] tensor, got {tuple(spans.shape)}")
    n = spans.numel()
    k = max(1, top_count(q, n))
    if n >= 2:
        k = min(k, n // 2)
    flat = spans.reshape(-1)
    local = torch.sort(_order(flat, largest=False)[:k]).values
    glob = torch.sort(_order(flat, largest=True)[:k]).values
    if spans.ndim == 2:
        width = spans.shape[1]
        local = torch.stack([local // width, local % width], dim=-1)
        glob = torch.stack([glob // width, glob % width], dim=-1)
    return local.to(spans.device), glob.to(spans.device)


def waad(avg_pattern: torch.Tensor, window: int | None = 10) -> torch.Tensor:
    """Windowed average attention distance (arXiv 2510.13554):
    WAAD_t = sum_{s<=t} Abar[t,s] min(t - s, W), W = window (None: no clip).

    avg_pattern [T, T] -> [T], or [B, T, T] -> [B, T]."""
    avg_pattern = _float(avg_pattern)
    n = _check_square(avg_pattern, (2, 3), "avg_pattern")
    lag = _lag(n, avg_pattern.device, avg_pattern.dtype)
    if window is not None:
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        lag = lag.clamp(max=window)
    return (avg_pattern * lag).sum(-1)


def fai(
    avg_pattern: torch.Tensor, h_lo: int = 10, h_hi: int | None = 100, response_start: int = 0
) -> torch.Tensor:
    """Future attention influence (arXiv 2510.13554):
    FAI_s = 1/|T(s)| sum_{t in T(s)} Abar[t,s], T(s) = {t in R : s + h_lo <= t <= min(N, s + h_hi)},
    R = {t >= response_start}, N = T - 1; FAI_s = 0 where T(s) is empty. h_hi=None: to the end of the
    sequence (the paper's section 4 analysis setting).

    avg_pattern [T, T] -> [T], or [B, T, T] -> [B, T]. s itself ranges over every position."""
    avg_pattern = _float(avg_pattern)
    n = _check_square(avg_pattern, (2, 3), "avg_pattern")
    if h_lo < 0:
        raise ValueError(f"h_lo must be >= 0 (only t >= s is attention to s), got {h_lo}")
    start = _check_start(response_start, n)
    idx = torch.arange(n, device=avg_pattern.device)
    lag = idx[:, None] - idx[None, :]  # [t, s]
    member = (lag >= h_lo) & (idx[:, None] >= start)
    if h_hi is not None:
        member &= lag <= h_hi
    member = member.to(avg_pattern.dtype)
    count = member.sum(0)  # |T(s)|
    total = (avg_pattern * member).sum(-2)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def waad_delta(waad_series: torch.Tensor) -> torch.Tensor:
    """Delta_t = |WAAD_t - WAAD_{t+1}| (arXiv 2510.13554); the last position, which has no t+1, is 0.

    [T] -> [T], or [B, T] -> [B, T]."""
    w = _float(waad_series)
    if w.ndim not in (1, 2):
        raise ValueError(f"waad_series must be [T] or [B, T], got {tuple(w.shape)}")
    delta = torch.zeros_like(w)
    delta[..., :-1] = (w[..., :-1] - w[..., 1:]).abs()
    return delta


def top_q(values: torch.Tensor, q: float, start: int = 0) -> torch.Tensor:
    """Bool mask of the top q fraction of positions t >= start (preplan tokens: top q of Delta over R;
    anchors: top q of FAI over R; arXiv 2510.13554, q = 0.4).

    Count: k = ceil(q * n), n = the number of positions >= start (see `top_count`). Ties: among equal
    values the earlier position wins; NaN ranks lowest. Positions < start are always False.
    values [T] -> [T] bool, or [B, T] -> [B, T] bool (each row on its own)."""
    values = torch.as_tensor(values)
    if values.ndim not in (1, 2):
        raise ValueError(f"values must be [T] or [B, T], got {tuple(values.shape)}")
    n_all = values.shape[-1]
    start = _check_start(start, n_all)
    k = top_count(q, n_all - start)
    if n_all == 0:
        return torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    rows = values.reshape(-1, n_all)
    mask = torch.zeros(rows.shape, dtype=torch.bool, device=values.device)
    for row, out in zip(rows, mask):
        if k:
            out[start + _order(row[start:], largest=True)[:k].to(values.device)] = True
    return mask.reshape(values.shape)


def select_layers(n_layers: int, count: int = 5) -> list[int]:
    """The paper's layers for RL (arXiv 2510.13554): `count` evenly spaced layers between floor(L/3) and
    floor(2L/3) inclusive. Layer i of count is lo + round((hi - lo) i / (count - 1)), rounding halves up
    (exact integer arithmetic), then deduplicated and sorted: L=30 -> [10, 13, 15, 18, 20]; L=3 -> [1, 2];
    L=1 -> [0]; count=1 -> the lower end of the middle (round-half-up of the midpoint)."""
    n_layers, count = int(n_layers), int(count)
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    lo, hi = n_layers // 3, (2 * n_layers) // 3
    if count == 1:
        return [(lo + hi + 1) // 2]
    span, steps = hi - lo, count - 1
    return sorted({lo + (2 * i * span + steps) // (2 * steps) for i in range(count)})


def rhythm_statistics(
    waad: torch.Tensor,
    fai: torch.Tensor,
    entropy: torch.Tensor | None = None,
    response_start: int = 0,
    generator: torch.Generator | None = None,
    q: float = 0.4,
    k: int = 3,
    n_random: int = 256,
    preplan: torch.Tensor | None = None,
    anchors: torch.Tensor | None = None,
) -> dict[str, float]:
    """The attention rhythm of arXiv 2510.13554 (its prose claims) measured against a random baseline.

    Inputs are one sequence: waad [T] (the WAAD series itself, not Delta), fai [T], entropy [T] or None.
    R = positions >= response_start. Preplan P = top_q(waad_delta(waad), q, response_start) and anchors
    A = top_q(fai, q, response_start), unless the masks are given. Observed statistics:

    (a) `entropy_preplan`: mean entropy over P (also `entropy_anchor`: over A, `entropy_response`: over R);
        `entropy_lift` = entropy_preplan - entropy_random (only when entropy is given).
    (b) `cooccur`: |A and P| / |A|, the fraction of anchors that are themselves preplan tokens.
    (c) `anchor_after_preplan`: the fraction of anchors a with a preplan token p in [a - k, a] (FAI peak at
        or at most k positions after a WAAD-Delta peak).

    Baselines (the "random" set keeps the size of the set it replaces, drawn uniformly without
    replacement from R): (a) a random set of |P| positions replaces P; (b) and (c) a random set of |A|
    positions replaces A, P fixed. For each statistic X:
        X_random    mean of X over n_random draws from `generator` (CPU; None: a fresh unseeded one),
        X_expected  the exact expectation of X under the baseline (mean entropy over R; |P|/|R|; the share
                    of R covered by [p, p + k] of some preplan p),
        X_pvalue    (1 + #draws with X_draw >= X) / (1 + n_random), one-sided (for entropy, X = preplan mean).
    Also `n_response`, `n_preplan`, `n_anchor`, `k`. An empty anchor set gives NaN for (b) and (c); an
    empty preplan set NaN for (a). With n_random = 0 the *_random and *_pvalue entries are NaN."""
    waad_t = _float(waad).detach().reshape(-1).to("cpu", torch.float64)
    fai_t = _float(fai).detach().reshape(-1).to("cpu", torch.float64)
    n = waad_t.numel()
    if fai_t.numel() != n:
        raise ValueError(f"waad and fai must have the same length, got {n} and {fai_t.numel()}")
    start = _check_start(response_start, n)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if preplan is None:
        preplan = top_q(waad_delta(waad_t), q, start)
    if anchors is None:
        anchors = top_q(fai_t, q, start)
    pre = torch.as_tensor(preplan).detach().reshape(-1).to("cpu", torch.bool).clone()
    anc = torch.as_tensor(anchors).detach().reshape(-1).to("cpu", torch.bool).clone()
    pre[:start] = False
    anc[:start] = False
    response = torch.arange(start, n)
    n_resp, n_pre, n_anc = len(response), int(pre.sum()), int(anc.sum())
    nan = math.nan
    out: dict[str, float] = {"n_response": float(n_resp), "n_preplan": float(n_pre), "n_anchor": float(n_anc),
                             "k": float(k)}

    # covered[t]: some preplan p with p <= t <= p + k
    covered = torch.zeros(n, dtype=torch.bool)
    for shift in range(min(k, n - 1) + 1):
        covered[shift:] |= pre[: n - shift]

    def draws(size: int) -> torch.Tensor:
        """[n_random, size] positions of R, each row a uniform random subset."""
        if n_random <= 0 or size == 0:
            return torch.zeros((max(n_random, 0), size), dtype=torch.long)
        keys = torch.rand((n_random, n_resp), generator=generator, dtype=torch.float64)
        return response[keys.argsort(dim=1)[:, :size]]

    def summarise(name: str, observed: float, random_values: torch.Tensor | None, expected: float) -> None:
        out[name] = observed
        out[f"{name}_expected"] = expected
        if random_values is None or random_values.numel() == 0 or math.isnan(observed):
            out[f"{name}_random"] = nan
            out[f"{name}_pvalue"] = nan
        else:
            out[f"{name}_random"] = float(random_values.mean())
            hits = int((random_values >= observed - 1e-12).sum())
            out[f"{name}_pvalue"] = (1 + hits) / (1 + random_values.numel())

    # (a) entropy at preplan tokens
    if entropy is not None:
        ent = _float(entropy).detach().reshape(-1).to("cpu", torch.float64)
        if ent.numel() != n:
            raise ValueError(f"entropy must have length {n}, got {ent.numel()}")
        mean_r = float(ent[start:].mean()) if n_resp else nan
        observed = float(ent[pre].mean()) if n_pre else nan
        rand = ent[draws(n_pre)].mean(dim=1) if (n_pre and n_random > 0) else None
        summarise("entropy_preplan", observed, rand, mean_r if n_pre else nan)
        out["entropy_anchor"] = float(ent[anc].mean()) if n_anc else nan
        out["entropy_response"] = mean_r
        out["entropy_lift"] = observed - out["entropy_preplan_random"]
        out["entropy_lift_expected"] = observed - mean_r

    # (b) anchors that coincide with a preplan token; (c) anchors at or <= k after a preplan token
    if n_anc:
        rand_sets = draws(n_anc) if n_random > 0 else None
        summarise("cooccur", float((anc & pre).sum()) / n_anc,
                  None if rand_sets is None else pre[rand_sets].to(torch.float64).mean(dim=1),
                  n_pre / n_resp)
        summarise("anchor_after_preplan", float((anc & covered).sum()) / n_anc,
                  None if rand_sets is None else covered[rand_sets].to(torch.float64).mean(dim=1),
                  float(covered[start:].sum()) / n_resp)
    else:
        summarise("cooccur", nan, None, nan)
        summarise("anchor_after_preplan", nan, None, nan)
    return out
