"""The preplan-and-anchor metrics (arXiv 2510.13554) without materialising any T x T pattern.

`analyses.metrics` works on materialised patterns [.., T, T]; this module computes the same numbers per
head straight from the queries and keys, in memory linear in T:

    streaming_softmax_stats(q, k, scale, window)        softmax / sliding-window attention
    streaming_linear_stats(q, k, log_decay, normalize)  linear / lightning (decayed linear) attention
    mixer_stats(mixer, q, k)                            dispatch on a studio mixer (by its class's `name`)
    mixer_qk_from_cache(model, cache, layer)            q, k as the mixer sees them, from a hook cache
    streaming_rhythm(model, tokens, response_start)     `analyses.rhythm` from q/k hooks only

Each stats function returns, per batch row b and head h,
    span [B, H]     d(h) = 1/|R| sum_{t in R} sum_{s<=t} A[t,s] (t - s)            (metrics.head_span)
    waad [B, H, T]  WAAD_t = sum_{s<=t} A[t,s] min(t - s, W)                       (metrics.waad)
    fai  [B, H, T]  FAI_s = 1/|T(s)| sum_{t in T(s)} A[t,s],
                    T(s) = {t in R : s + h_lo <= t <= min(T-1, s + h_hi)}, 0 where T(s) is empty (metrics.fai)
with R = {t >= response_start}. WAAD and FAI are linear in A, so the WAAD / FAI of a head-group average
pattern is the mean of the heads' series (what `streaming_rhythm` uses).

Softmax: `kernels.reference.softmax_attention_stats_reference` (torch, two passes over key blocks, memory
O(B H T block)): pass 1 accumulates each query row's log-sum-exp block by block; pass 2 recomputes each
block's probabilities p[t,s] = exp(q_t.k_s scale - lse_t) and accumulates per row sum_s p (t-s) and
sum_s p min(t-s, W), and per column the sum of p over t in T(s). |T(s)| is closed-form. On CUDA the Triton
kernel `kernels.softmax_attention_stats` computes the same (online softmax over rows, then a column pass).

Linear family, M[t,s] = lambda^(t-s) q_t.k_s (s <= t; lambda = exp(log_decay) per head, 1 without decay),
optionally divided by z_t = sum_{s<=t} M[t,s] + eps. Every quantity is a decayed prefix or suffix sum,
computed chunk-wise (inside a chunk of C positions an explicit C x C decay matrix, across chunks a carried
[D] state: Lightning Attention-2's scheme), O(T C D) time, O(T D + C^2) memory:
    P0_t = sum_{s<=t} lambda^(t-s) k_s,        P1_t = sum_{s<=t} lambda^(t-s) (t-s) k_s
    (recurrences P0_t = lambda P0_{t-1} + k_t, P1_t = lambda (P1_{t-1} + P0_{t-1}))
    row sum   r_t = q_t.P0_t          (z_t = r_t + eps when normalising)
    distance  a_t = q_t.P1_t          span = mean over R of a_t / z_t
    WAAD      min(t-s, W) = (t-s) - max(t-s-W, 0), so
              w_t = a_t - lambda^W q_t.P1_{t-W}       (0 correction for t < W), or, for W <= C, the band
              w_t = sum_{d<W} d lambda^d q_t.k_{t-d} + W (r_t - sum_{d<W} lambda^d q_t.k_{t-d})
              (the band form avoids the cancellation a_t - ... in float32); W >= T-1 or None: w_t = a_t.
    FAI       qn_t = q_t / z_t for t in R, 0 elsewhere; U_u = sum_{t>=u} lambda^(t-u) qn_t (a reverse
              prefix sum); column s sums over t in [s+h_lo, s+h_hi]:
              sum_t lambda^(t-s) qn_t.k_s = k_s.(lambda^h_lo U_{s+h_lo} - lambda^(h_hi+1) U_{s+h_hi+1}),
              U_u = 0 for u >= T (h_hi = None drops the second term).
"""

from __future__ import annotations

import importlib.util

import torch

from analyses.metrics import fai, head_groups, head_span, waad
from analyses.rhythm import Rhythm, finish, prepare
from kernels.reference.softmax_attention_stats import (
    check_block,
    check_options,
    check_qk,
    fai_count,
    fai_finish,
    softmax_attention_stats_reference,
    span_over_response,
    work_dtype,
)

__all__ = [
    "streaming_softmax_stats",
    "streaming_linear_stats",
    "mixer_stats",
    "mixer_qk_from_cache",
    "streaming_rhythm",
]


# ---- softmax / sliding window ----------------------------------------------------------------------
def streaming_softmax_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    window: int | None = None,
    response_start: int = 0,
    waad_window: int | None = 10,
    h_lo: int = 10,
    h_hi: int | None = 100,
    block: int = 128,
) -> dict[str, torch.Tensor]:
    """Head span, WAAD and FAI of causal (sliding-window) softmax attention without forming the pattern:
    the arguments and result of `kernels.reference.softmax_attention_stats_reference`, which documents them.
    CUDA tensors (not float64) go to the Triton kernel `kernels.softmax_attention_stats` when Triton is
    installed (`block` is then unused); anything else to that torch reference (blocks of `block` keys)."""
    if q.is_cuda and torch.float64 not in (q.dtype, k.dtype) and importlib.util.find_spec("triton") is not None:
        from kernels.softmax_attention_stats import softmax_attention_stats  # here: triton is Linux-only

        check_block(block)
        return softmax_attention_stats(q, k, scale, window, response_start, waad_window, h_lo, h_hi)
    return softmax_attention_stats_reference(q, k, scale, window, response_start, waad_window, h_lo, h_hi, block)


# ---- linear family ---------------------------------------------------------------------------------
def _decayed_prefix(x: torch.Tensor, log_decay: torch.Tensor, chunk: int, with_lag: bool):
    """P0_t = sum_{s<=t} lambda^(t-s) x_s and (with_lag) P1_t = sum_{s<=t} lambda^(t-s) (t-s) x_s,
    lambda = exp(log_decay) per head; x [B, H, T, D] -> [B, H, T, D] each (P1 None without with_lag).

    Chunk-wise: inside a chunk an explicit decay matrix, across chunks the carried P0, P1 of the chunk's
    last position: for t = c0 + i, sum over s < c0 gives lambda^(i+1) P0_{c0-1} and
    lambda^(i+1) ((i+1) P0_{c0-1} + P1_{c0-1})."""
    b, h, n, d = x.shape
    dtype, dev = x.dtype, x.device
    size = max(1, min(chunk, n))
    idx = torch.arange(size, device=dev)
    gap = idx[:, None] - idx[None, :]
    lam = log_decay.to(dtype=dtype, device=dev)[:, None, None]
    l0 = torch.exp(lam * gap.clamp(min=0).to(dtype)) * (gap >= 0).to(dtype)  # [H, C, C]
    l1 = l0 * gap.clamp(min=0).to(dtype)
    steps = (idx + 1).to(dtype)
    carry_pow = torch.exp(log_decay.to(dtype=dtype, device=dev)[:, None] * steps)  # [H, C] lambda^(i+1)
    p0 = torch.empty_like(x)
    p1 = torch.empty_like(x) if with_lag else None
    c0_state = torch.zeros((b, h, d), dtype=dtype, device=dev)
    c1_state = torch.zeros((b, h, d), dtype=dtype, device=dev)
    for c0 in range(0, n, size):
        c1 = min(n, c0 + size)
        m = c1 - c0
        xc = x[:, :, c0:c1]
        dec = carry_pow[:, :m, None]  # [H, m, 1]
        out0 = l0[:, :m, :m] @ xc + dec * c0_state[:, :, None, :]
        p0[:, :, c0:c1] = out0
        if with_lag:
            out1 = l1[:, :m, :m] @ xc + dec * (steps[:m, None] * c0_state[:, :, None, :] + c1_state[:, :, None, :])
            p1[:, :, c0:c1] = out1
            c1_state = out1[:, :, -1]
        c0_state = out0[:, :, -1]
    return p0, p1


def _shift_left(x: torch.Tensor, by: int) -> torch.Tensor:
    """y[..., t, :] = x[..., t + by, :], 0 past the end (time is dim 2)."""
    out = torch.zeros_like(x)
    n = x.shape[2]
    if by < n:
        out[:, :, : n - by] = x[:, :, by:]
    return out


def streaming_linear_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    log_decay: torch.Tensor | float | None = None,
    normalize: bool = False,
    eps: float = 1e-6,
    response_start: int = 0,
    waad_window: int | None = 10,
    h_lo: int = 10,
    h_hi: int | None = 100,
    block: int = 128,
) -> dict[str, torch.Tensor]:
    """Head span, WAAD and FAI of the linear family M[t,s] = lambda_h^(t-s) q_t.k_s (s <= t), divided by
    z_t = sum_{s<=t} M[t,s] + eps when `normalize` (Katharopoulos), without forming M.

    q, k: [B, H, T, D], feature map already applied (k expanded to H heads). log_decay: log lambda, a
    scalar or one per head ([H]); None: no decay (plain linear attention). Returns
    {"span": [B, H], "waad": [B, H, T], "fai": [B, H, T]}; formulas in the module docstring.
    Chunks of `block` positions: O(T block D) time, O(T D + block^2) memory."""
    b, h, n, d = check_qk(q, k)
    start = check_options(n, response_start, waad_window, h_lo)
    block = check_block(block)
    dtype = work_dtype(q, k)
    q, k = q.to(dtype), k.to(dtype)
    dev = q.device
    if log_decay is None:
        ld = torch.zeros(h, dtype=dtype, device=dev)
    else:
        ld = torch.as_tensor(log_decay).to(dtype=dtype, device=dev).reshape(-1)
        ld = ld.expand(h) if ld.numel() == 1 else ld
        if ld.numel() != h:
            raise ValueError(f"log_decay must be a scalar or have one entry per head ({h}), got {ld.numel()}")

    def lam_pow(power: int) -> torch.Tensor:  # [H, 1] lambda^power
        return torch.exp(ld * float(power))[:, None]

    p0, p1 = _decayed_prefix(k, ld, int(block), with_lag=True)
    row = (q * p0).sum(-1)  # r_t = sum_s M[t,s]
    dist = (q * p1).sum(-1)  # a_t = sum_s M[t,s] (t - s)

    w = waad_window
    if w is None or w >= n - 1:
        clipped = dist
    elif w <= block:  # band of the last w offsets, then w times the rest of the row's mass
        band_mass = torch.zeros_like(row)
        band_dist = torch.zeros_like(row)
        for off in range(w):
            diag = (q[:, :, off:] * k[:, :, : n - off]).sum(-1) * lam_pow(off)
            band_mass[:, :, off:] += diag
            band_dist[:, :, off:] += off * diag
        clipped = band_dist + w * (row - band_mass)
    else:  # min(t-s, w) = (t-s) - max(t-s-w, 0): subtract lambda^w q_t.P1_{t-w}
        correction = torch.zeros_like(row)
        correction[:, :, w:] = (q[:, :, w:] * p1[:, :, : n - w]).sum(-1) * lam_pow(w)
        clipped = dist - correction

    if normalize:
        z = row + eps
        dist, clipped = dist / z, clipped / z
        qn = q / z[..., None]
    else:
        qn = q
    qn = qn * (torch.arange(n, device=dev) >= start).to(dtype)[:, None]  # only t in R count in FAI

    # U_u = sum_{t>=u} lambda^(t-u) qn_t: a prefix sum over reversed time
    suffix, _ = _decayed_prefix(qn.flip(2), ld, int(block), with_lag=False)
    suffix = suffix.flip(2)
    g = lam_pow(h_lo)[None, :, :, None] * _shift_left(suffix, h_lo)
    if h_hi is not None:
        g = g - lam_pow(h_hi + 1)[None, :, :, None] * _shift_left(suffix, h_hi + 1)
    total = (k * g).sum(-1)
    count = fai_count(n, start, h_lo, h_hi, dev, dtype)
    return {"span": span_over_response(dist, start), "waad": clipped, "fai": fai_finish(total, count)}


# ---- studio mixers ---------------------------------------------------------------------------------
_SOFTMAX = ("softmax", "sliding_window")
_LINEAR = ("linear", "lightning")


def mixer_stats(mixer, q: torch.Tensor, k: torch.Tensor, **kw) -> dict[str, torch.Tensor]:
    """Streaming span / WAAD / FAI of a studio mixer's effective pattern from its q, k ([B, H, T, D] as
    the mixer sees them: post-RoPE, feature map applied for the linear family; k may keep n_kv_heads
    heads, it is expanded here). kw: response_start, waad_window, h_lo, h_hi, block."""
    # The class attribute: TransformerLens' setup() overwrites an instance's `name` with its module path.
    name = getattr(type(mixer), "name", None)
    if k.shape[1] != q.shape[1]:
        k = mixer.expand_kv(k)
    if name in _SOFTMAX:
        return streaming_softmax_stats(q, k, mixer.scale, mixer.window, **kw)
    if name == "linear":
        return streaming_linear_stats(q, k, None, mixer.p.normalize, mixer.p.eps, **kw)
    if name == "lightning":
        return streaming_linear_stats(q, k, mixer.log_decay, False, **kw)
    raise NotImplementedError(f"no streaming statistics for mixer {name!r}; supported: {_SOFTMAX + _LINEAR}")


def has_streaming_stats(mixer) -> bool:
    """Whether `mixer_stats` has a streaming form for this mixer (others fall back to their pattern)."""
    return getattr(type(mixer), "name", None) in _SOFTMAX + _LINEAR


def pattern_stats(pattern: torch.Tensor, response_start: int = 0, waad_window: int | None = 10, h_lo: int = 10,
                  h_hi: int | None = 100, block: int = 128) -> dict[str, torch.Tensor]:
    """The same per-head dict as `mixer_stats`, from a materialised pattern [B, H, T, T] (`block` unused):
    the fallback for mixers without a streaming form."""
    b, h, n, _ = pattern.shape
    flat = pattern.reshape(b * h, n, n)
    return {"span": head_span(pattern, response_start),
            "waad": waad(flat, waad_window).reshape(b, h, n),
            "fai": fai(flat, h_lo, h_hi, response_start).reshape(b, h, n)}


def _qk_names(mixer, layer: int) -> tuple[str, str]:
    if mixer.rotary is not None:
        return f"blocks.{layer}.attn.hook_rot_q", f"blocks.{layer}.attn.hook_rot_k"
    return f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k"


def mixer_qk_from_cache(model, cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, k) [B, H, T, D] of layer `layer` as its mixer (`model.blocks[layer].attn`) computes its pattern
    from them: the RoPE'd hooks (hook_rot_q / hook_rot_k) when the layer uses RoPE, else hook_q / hook_k,
    transposed to heads-first; for mixers that do not group kv heads themselves, k expanded to the query
    heads; then the mixer's `featurize` (feature map of the linear family; identity for softmax)."""
    mixer = model.blocks[layer].attn
    q_name, k_name = _qk_names(mixer, layer)
    q, k = cache[q_name].transpose(1, 2), cache[k_name].transpose(1, 2)
    if not mixer.group_kv:
        k = mixer.expand_kv(k)
    return mixer.featurize(q, k)


def streaming_rhythm(
    model,
    tokens: torch.Tensor,
    response_start: int,
    layers: list[int] | None = None,
    q_heads: float = 0.3,
    window: int | None = 10,
    h_lo: int = 10,
    h_hi: int | None = 100,
    q: float = 0.4,
    block: int = 128,
) -> Rhythm:
    """`analyses.rhythm` without patterns: ONE hooked forward caching only the selected layers' q/k hooks
    (never hook_pattern), then per-head streaming statistics (`mixer_stats`). A layer whose mixer has no
    streaming form (`has_streaming_stats`) falls back to its pattern, cached in the same forward. Head groups from the
    streaming spans (`metrics.head_groups` over the [layers, heads] span matrix); WAAD / FAI = the mean of
    the group heads' per-head series (WAAD and FAI are linear in the pattern). Same arguments and result
    as `analyses.rhythm` (plus `block`, the key / chunk block size)."""
    tokens, response_start, layers = prepare(model, tokens, response_start, layers)
    streamed = [layer for layer in layers if has_streaming_stats(model.blocks[layer].attn)]
    names = {name for layer in streamed for name in _qk_names(model.blocks[layer].attn, layer)}
    names |= {f"blocks.{layer}.attn.hook_pattern" for layer in layers if layer not in streamed}
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens[None], names_filter=lambda name: name in names)
        dtype = torch.float64 if logits.device.type == "cpu" else torch.float32  # CUDA: the Triton kernel
        kw = dict(response_start=response_start, waad_window=window, h_lo=h_lo, h_hi=h_hi, block=block)
        stats = {}
        for layer in layers:
            if layer not in streamed:  # no streaming form for this mixer: its (materialised) pattern
                stats[layer] = pattern_stats(cache[f"blocks.{layer}.attn.hook_pattern"].to(dtype), **kw)
                continue
            lq, lk = mixer_qk_from_cache(model, cache, layer)
            stats[layer] = mixer_stats(model.blocks[layer].attn, lq.detach().to(dtype), lk.detach().to(dtype), **kw)

    spans = {layer: stats[layer]["span"][0] for layer in layers}  # [H]
    local_idx, global_idx = head_groups(torch.stack([spans[layer] for layer in layers]), q_heads)
    local_heads = [(layers[row], head) for row, head in local_idx.tolist()]
    global_heads = [(layers[row], head) for row, head in global_idx.tolist()]
    waad_t = torch.stack([stats[layer]["waad"][0, head] for layer, head in local_heads]).mean(0)
    fai_t = torch.stack([stats[layer]["fai"][0, head] for layer, head in global_heads]).mean(0)
    return finish(layers, spans, local_heads, global_heads, waad_t, fai_t, logits[0], tokens, response_start, q, dtype)
