"""Small worked examples of attention for the app's Learn tab: numbers, tables and plotly figures, no Gradio.

Every mixer is linear in v, so each one is an effective T x T matrix M with out = M @ v (DSF, arXiv
2405.15731). On one small random q, k, v this module shows

- softmax attention (Vaswani et al., arXiv 1706.03762), M[t,s] = softmax_s(q_t.k_s / sqrt(d)) over s <= t,
  and its sliding-window form (Longformer, arXiv 2004.05150; Mistral 7B, arXiv 2310.06825), t - w < s <= t;
- linear attention (Katharopoulos et al., arXiv 2006.16236), M[t,s] = phi(q_t).phi(k_s), optionally
  divided by its row sum;
- lightning attention (Lightning Attention-2, Qin et al., arXiv 2401.04658), M[t,s] = lambda^(t-s) phi(q_t).phi(k_s);
- the recurrent form S_t = lambda S_{t-1} + k_t v_t^T, o_t = q_t S_t next to the chunked form of
  Lightning Attention-2 (masked quadratic form inside a chunk, carried state across chunks): one function;
- the effective pattern of every registered mixer, and each mixer's cost (FLOPs per token, decoding
  memory) over the context length, from the mixers' own cost methods.

The matrices come from the studio's own mixers (`effective_pattern`) and the chunked / recurrent forms
from `kernels.reference`, so the page shows exactly what the studio computes. All math is float64 on
the CPU; tensors in and out are numpy arrays [T, d] (torch tensors are accepted too).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from kernels.reference import chunked_decay_linear_attention, recurrent_decay_linear_attention
from studio.mixers import REGISTRY, Mixer, MixerShape
from studio.mixers.feature_maps import FEATURE_MAPS

__all__ = [
    "MAX_LENGTH", "MAX_DIM", "DEFAULT_COST_LENGTHS", "GALLERY_PARAMS", "COST_PARAMS",
    "toy_qkv", "mixing_matrices", "mixing_titles", "mix_outputs", "mixing_table", "compare_figure",
    "ChunkedVsRecurrent", "chunked_vs_recurrent", "chunked_vs_recurrent_figure", "chunked_vs_recurrent_table",
    "mixer_gallery", "gallery_figure", "cost_curves", "cost_figure", "cost_table",
]

MAX_LENGTH = 64  # longest sequence a teaching view draws (a T x T heatmap stays readable)
MAX_DIM = 32  # widest head dimension of the toy q, k, v
DEFAULT_COST_LENGTHS = tuple(256 * 4 ** i for i in range(7))  # 256, 1K, 4K, 16K, 64K, 256K, 1M
# Parameters the gallery / cost curves give a mixer on top of its defaults (a mixer not named here
# is built with its defaults, so a newly registered mixer appears without changes here).
# Small blocks, chunks and windows so that a 12-token gallery shows each mixer's structure.
GALLERY_PARAMS: dict[str, dict] = {"sliding_window": {"window": 4}, "landmark": {"block_size": 4, "top_k": 1},
                                   "agent": {"chunk_size": 4, "n_agents": 2}, "dma": {"top_k": 4},
                                   "hip": {"block_size": 2, "top_k": 1},
                                   "deltallm": {"window": 4, "anchor_every": 4, "sink": 1}}
COST_PARAMS: dict[str, dict] = {"sliding_window": {"window": 4096}}  # Mistral 7B's window


# ---- validation ------------------------------------------------------------------------------
def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _check_decay(decay) -> float:
    try:
        decay = float(decay)
    except (TypeError, ValueError):
        raise ValueError(f"decay must be a number in (0, 1], got {decay!r}") from None
    if not (0.0 < decay <= 1.0):
        raise ValueError(f"decay must lie in (0, 1] (lambda = 1: no decay), got {decay}")
    return decay


def _check_feature_map(feature_map: str) -> str:
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {sorted(FEATURE_MAPS)}, got {feature_map!r}")
    return feature_map


def _as_tensor(name: str, x) -> torch.Tensor:
    """[T, d] array / tensor -> float64 torch tensor, checked against the teaching limits."""
    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu", torch.float64)
    else:
        t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if t.ndim != 2:
        raise ValueError(f"{name} must be a [length, dim] matrix, got shape {tuple(t.shape)}")
    if not 1 <= t.shape[0] <= MAX_LENGTH:
        raise ValueError(f"{name} has length {t.shape[0]}; a teaching view takes 1 to {MAX_LENGTH} positions")
    if not 1 <= t.shape[1] <= MAX_DIM:
        raise ValueError(f"{name} has dim {t.shape[1]}; a teaching view takes 1 to {MAX_DIM}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} has non-finite entries")
    return t


def _check_same(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None) -> None:
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v is not None and v.shape[0] != q.shape[0]:
        raise ValueError(f"v must have one row per position ({q.shape[0]}), got {v.shape[0]}")


# ---- toy q, k, v and the matrices of four mixers -----------------------------------------------
def toy_qkv(length: int = 8, dim: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Small random q, k, v, each float64 [length, dim], standard normal, reproducible from `seed`."""
    length = _check_int("length", length, 1, MAX_LENGTH)
    dim = _check_int("dim", dim, 1, MAX_DIM)
    seed = _check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((length, dim)) for _ in range(3))
    return q, k, v


def _one_head_mixer(name: str, dim: int, **params) -> Mixer:
    """A one-head mixer of head size `dim` (its projections are unused here; the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        shape = MixerShape(d_model=dim, n_heads=1, n_kv_heads=1, d_head=dim, positional="nope")
        return REGISTRY[name](shape, **params).double()


def mixing_matrices(q, k, *, window: int | None = None, feature_map: str = "elu+1", normalize: bool = True,
                    decay: float = 0.9) -> dict[str, np.ndarray]:
    """The effective matrices M [T, T] (out = M @ v) of four mixers on the same q, k [T, d]:

    "softmax"         softmax_s(q_t.k_s / sqrt(d)), s <= t (Vaswani 2017)
    "sliding_window"  the same over t - w < s <= t (Longformer / Mistral); only when `window` is given
    "linear"          phi(q_t).phi(k_s), divided by its row sum if `normalize` (Katharopoulos 2020)
    "lightning"       decay^(t-s) phi(q_t).phi(k_s), never normalised (Lightning Attention-2, Qin 2024)

    phi is `feature_map` (see `studio.mixers.feature_maps`), the same for linear and lightning, so that
    lightning with decay 1 is exactly unnormalised linear attention. Computed by the studio's own mixers.
    """
    q, k = _as_tensor("q", q), _as_tensor("k", k)
    _check_same(q, k)
    feature_map = _check_feature_map(feature_map)
    decay = _check_decay(decay)
    dim = q.shape[1]
    mixers = {"softmax": _one_head_mixer("softmax", dim)}
    if window is not None:
        window = _check_int("window", window, 1)
        mixers["sliding_window"] = _one_head_mixer("sliding_window", dim, window=window)
    mixers["linear"] = _one_head_mixer("linear", dim, feature_map=feature_map, normalize=bool(normalize))
    mixers["lightning"] = _one_head_mixer("lightning", dim, feature_map=feature_map, decay=[decay])
    out = {}
    with torch.no_grad():
        for name, mixer in mixers.items():
            fq, fk = mixer.featurize(q[None, None], k[None, None])
            out[name] = mixer.effective_pattern(fq, fk)[0, 0].numpy()
    return out


def mixing_titles(matrices: Mapping[str, np.ndarray], *, window: int | None = None, feature_map: str = "elu+1",
                  normalize: bool = True, decay: float = 0.9) -> dict[str, str]:
    """A readable title per key of `mixing_matrices` (pass the same options)."""
    titles = {
        "softmax": "softmax",
        "sliding_window": f"sliding window (w={window})",
        "linear": f"linear, φ={feature_map}" + (", normalised" if normalize else ", unnormalised"),
        "lightning": f"lightning, λ={decay:g}, φ={feature_map}",
    }
    return {name: titles.get(name, name) for name in matrices}


def mix_outputs(matrices: Mapping[str, np.ndarray], v) -> dict[str, np.ndarray]:
    """Each mixer's output M @ v [T, d_v] for the matrices of `mixing_matrices`."""
    v = _as_tensor("v", v).numpy()
    out = {}
    for name, m in matrices.items():
        if m.shape != (v.shape[0], v.shape[0]):
            raise ValueError(f"{name}: matrix {m.shape} does not fit v with {v.shape[0]} positions")
        out[name] = m @ v
    return out


def mixing_table(matrices: Mapping[str, np.ndarray], v=None,
                 titles: Mapping[str, str] | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per mixer, its row sums (1 for softmax), how many keys each query weighs, the
    largest |weight|, and (with v) the norm of the last output."""
    outputs = mix_outputs(matrices, v) if v is not None else {}
    header = ["mixer", "row sums (min … max)", "nonzero keys per query (min … max)", "max |M[t,s]|"]
    if outputs:
        header.append("‖o_T‖ (last output)")
    rows = []
    for name, m in matrices.items():
        sums, nonzero = m.sum(-1), (np.abs(m) > 0).sum(-1)
        row = [(titles or {}).get(name, name), f"{sums.min():.4f} … {sums.max():.4f}",
               f"{nonzero.min()} … {nonzero.max()}", f"{np.abs(m).max():.4f}"]
        if outputs:
            row.append(f"{np.linalg.norm(outputs[name][-1]):.4f}")
        rows.append(row)
    return header, rows


# ---- heatmap grids -----------------------------------------------------------------------------
def _colour(values: np.ndarray) -> dict:
    """Diverging RdBu centred at 0 if any entry is negative, else sequential Blues from 0 (house style)."""
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() < 0:
        m = float(np.abs(finite).max()) or 1.0
        return {"colorscale": "RdBu", "reversescale": True, "cmid": 0.0, "cmin": -m, "cmax": m}
    top = float(finite.max()) if finite.size else 1.0
    return {"colorscale": "Blues", "reversescale": False, "cmin": 0.0, "cmax": top if top > 0 else 1.0}


def _heatmap_grid(panels: Sequence[tuple[str, np.ndarray, bool]], title: str, cols: int,
                  x_title: str = "key s", y_title: str = "query t") -> go.Figure:
    """One heatmap per (title, matrix, causal) panel, each on its own colour axis and colour bar; causal
    panels are square with the entries above the diagonal blank. Rows of a matrix go down."""
    n = len(panels)
    rows = max(1, math.ceil(n / cols))
    height = max(340, 300 * rows + 80)
    # about 70 pixels between rows whatever their number (a fixed fraction squeezes many rows to nothing)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p[0] for p in panels],
                        horizontal_spacing=0.09, vertical_spacing=min(0.16, 70 / height) if rows > 1 else 0.0)
    for i, (name, m, causal) in enumerate(panels):
        z = np.asarray(m, dtype=np.float64).copy()
        if causal:
            z[np.triu_indices(z.shape[0], k=1)] = np.nan
        r, c = i // cols + 1, i % cols + 1
        axis = "coloraxis" if i == 0 else f"coloraxis{i + 1}"
        fig.add_trace(go.Heatmap(z=z, x=list(range(z.shape[1])), y=list(range(z.shape[0])), coloraxis=axis,
                                 name=name, hovertemplate=f"{name}<br>{y_title} %{{y}}, {x_title} %{{x}}"
                                 "<br>value %{z:.4f}<extra></extra>"), row=r, col=c)
        xdom = fig.get_subplot(r, c).xaxis.domain
        ydom = fig.get_subplot(r, c).yaxis.domain
        fig.layout[axis] = {**_colour(z), "colorbar": {"x": xdom[1] + 0.005, "y": (ydom[0] + ydom[1]) / 2,
                                                        "len": (ydom[1] - ydom[0]), "thickness": 10,
                                                        "tickfont": {"size": 9}}}
    fig.update_xaxes(title={"text": x_title}, side="bottom")
    fig.update_yaxes(title={"text": y_title}, autorange="reversed")
    fig.update_layout(title={"text": title}, height=height,
                      margin={"l": 60, "r": 40, "t": 90, "b": 40}, plot_bgcolor="white")
    return fig


def compare_figure(matrices: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray] | None = None,
                   titles: Mapping[str, str] | None = None, title: str | None = None) -> go.Figure:
    """Side-by-side heatmaps of the matrices of `mixing_matrices` (rows = query t, cols = key s, future
    keys blank); with `outputs` (from `mix_outputs`) a second row of heatmaps of M @ v (rows = t, cols =
    channel). One trace per matrix (plus one per output)."""
    if not matrices:
        raise ValueError("matrices is empty: nothing to draw")
    titles = dict(titles or {})
    panels = [(titles.get(name, name), m, True) for name, m in matrices.items()]
    if not outputs:
        return _heatmap_grid(panels, title or "the same q, k through each mixer: M[t, s]", cols=len(panels))
    missing = set(matrices) - set(outputs)
    if missing:
        raise ValueError(f"outputs lacks {sorted(missing)}; pass mix_outputs(matrices, v)")
    out_panels = [(f"{titles.get(n, n)}: M @ v", outputs[n], False) for n in matrices]
    fig = _heatmap_grid(panels + out_panels, title or "the same q, k, v through each mixer: M and M @ v",
                        cols=len(panels))
    for c in range(1, len(panels) + 1):  # the output panels: channels across
        fig.update_xaxes(title={"text": "channel"}, row=2, col=c)
    return fig


# ---- chunked == recurrent (Lightning Attention-2) -----------------------------------------------
@dataclass
class ChunkedVsRecurrent:
    """Both forms of decayed linear attention on one q, k, v.

    steps: per position t a dict: t, chunk, i (position inside the chunk), state_norm ||S_t|| (recurrent),
      recurrent (o_t, list), chunked (o_t, list), intra (chunk-local part of the chunked o_t, list),
      inter (part from the carried state, list), abs_diff (max |recurrent - chunked| at t).
    chunks: per chunk a dict: chunk, start, end (exclusive), carried_in_norm ||S|| entering the chunk,
      carried_out_norm ||S|| leaving it, state_diff (max |chunked state - recurrent S_{end-1}|), and
      intra_matrix (the chunk's masked, decayed q k^T, [n, n] list of lists).
    """

    decay: float
    chunk: int
    recurrent: np.ndarray  # [T, d_v]
    chunked: np.ndarray  # [T, d_v]
    states: np.ndarray  # recurrent S_t, [T, d_k, d_v]
    steps: list[dict] = field(default_factory=list)
    chunks: list[dict] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        """max over t and channels of |o_t(recurrent) - o_t(chunked)|."""
        return float(np.abs(self.recurrent - self.chunked).max()) if self.recurrent.size else 0.0


def chunked_vs_recurrent(q, k, v, decay: float = 0.9, chunk: int = 4,
                         feature_map: str = "identity") -> ChunkedVsRecurrent:
    """Decayed linear attention two ways (Lightning Attention-2, Qin et al. 2024, arXiv 2401.04658):

    recurrent  S_t = decay S_{t-1} + phi(k_t) v_t^T, o_t = phi(q_t) S_t, one token at a time;
    chunked    per chunk of `chunk` positions: intra = (masked, decayed phi(q) phi(k)^T) @ v inside the chunk,
               inter = decay^(i+1) phi(q_t) S (the state carried in from earlier chunks), o = intra + inter;
               then S <- decay^n S + sum_s decay^(n-1-s) phi(k_s) v_s^T.

    Both come from `kernels.reference`; the chunked one is run chunk by chunk with the carried state,
    so each chunk's intra / inter split is visible. Returns a `ChunkedVsRecurrent` (max_abs_diff ~ 1e-15).
    """
    q, k, v = _as_tensor("q", q), _as_tensor("k", k), _as_tensor("v", v)
    _check_same(q, k, v)
    decay = _check_decay(decay)
    chunk = _check_int("chunk", chunk, 1)
    phi = FEATURE_MAPS[_check_feature_map(feature_map)]
    q, k, v = phi(q)[None, None], phi(k)[None, None], v[None, None]  # [1, 1, T, d]
    log_decay = torch.tensor([math.log(decay)], dtype=torch.float64)
    t_len, dk, dv = q.shape[2], q.shape[3], v.shape[3]

    # recurrent: the oracle, and each state S_t along the way
    rec_out, _ = recurrent_decay_linear_attention(q, k, v, log_decay)
    states, state = [], q.new_zeros(1, 1, dk, dv)
    for t in range(t_len):
        _, state = recurrent_decay_linear_attention(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1],
                                                    log_decay, initial_state=state)
        states.append(state[0, 0])
    states = torch.stack(states)

    # chunked: chunk by chunk, carrying the state
    carried, pieces, steps, chunks = q.new_zeros(1, 1, dk, dv), [], [], []
    for c, start in enumerate(range(0, t_len, chunk)):
        end = min(t_len, start + chunk)
        qc, kc, vc = q[:, :, start:end], k[:, :, start:end], v[:, :, start:end]
        n = end - start
        out, new_state = chunked_decay_linear_attention(qc, kc, vc, log_decay, chunk, initial_state=carried)
        intra, _ = chunked_decay_linear_attention(qc, kc, vc, log_decay, chunk)  # empty state: the chunk alone
        idx = torch.arange(n, dtype=torch.float64)
        inter = (qc * (decay ** (idx + 1))[:, None]) @ carried
        gap = idx[:, None] - idx[None, :]
        intra_matrix = (qc @ kc.transpose(-1, -2))[0, 0] * torch.where(gap >= 0, decay ** gap.clamp(min=0), 0.0)
        chunks.append({"chunk": c, "start": start, "end": end,
                       "carried_in_norm": float(carried.norm()), "carried_out_norm": float(new_state.norm()),
                       "state_diff": float((new_state[0, 0] - states[end - 1]).abs().max()),
                       "intra_matrix": intra_matrix.tolist()})
        for i in range(n):
            t = start + i
            steps.append({"t": t, "chunk": c, "i": i, "state_norm": float(states[t].norm()),
                          "recurrent": rec_out[0, 0, t].tolist(), "chunked": out[0, 0, i].tolist(),
                          "intra": intra[0, 0, i].tolist(), "inter": inter[0, 0, i].tolist(),
                          "abs_diff": float((rec_out[0, 0, t] - out[0, 0, i]).abs().max())})
        pieces.append(out)
        carried = new_state
    chunked = torch.cat(pieces, dim=2)
    return ChunkedVsRecurrent(decay=decay, chunk=chunk, recurrent=rec_out[0, 0].numpy(),
                              chunked=chunked[0, 0].numpy(), states=states.numpy(), steps=steps, chunks=chunks)


def chunked_vs_recurrent_table(result: ChunkedVsRecurrent, digits: int = 4) -> tuple[list[str], list[list[str]]]:
    """(header, rows), one row per position t: chunk, ||S_t||, the recurrent and chunked o_t, the chunked
    o_t's intra-chunk and carried-state parts, and |difference|."""
    def vec(x):
        return "[" + ", ".join(f"{v:.{digits}f}" for v in x) + "]"

    header = ["t", "chunk", "i in chunk", "‖S_t‖", "o_t recurrent", "o_t chunked = intra + inter",
              "intra (this chunk)", "inter (carried state)", "max |diff|"]
    rows = [[str(s["t"]), str(s["chunk"]), str(s["i"]), f"{s['state_norm']:.{digits}f}", vec(s["recurrent"]),
             vec(s["chunked"]), vec(s["intra"]), vec(s["inter"]), f"{s['abs_diff']:.1e}"] for s in result.steps]
    return header, rows


def chunked_vs_recurrent_figure(result: ChunkedVsRecurrent, title: str | None = None) -> go.Figure:
    """Three stacked panels over t: each output channel of o_t (recurrent: lines, chunked: markers), the
    state norm ||S_t|| with the carried state at each chunk end (markers), and max |difference| per step.
    Chunk boundaries are dotted vertical lines. Traces: 2 d_v + 3."""
    rec, chk = result.recurrent, result.chunked
    t = list(range(rec.shape[0]))
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.5, 0.25, 0.25],
                        subplot_titles=("outputs o_t: recurrent (lines) and chunked (markers)",
                                        "state norm ‖S_t‖ (recurrent) and the carried state (chunked)",
                                        "max |o_t recurrent − o_t chunked|"))
    for j in range(rec.shape[1]):
        colour = palette[j % len(palette)]
        fig.add_trace(go.Scatter(x=t, y=rec[:, j], mode="lines", name=f"recurrent [{j}]", legendgroup=str(j),
                                 line={"color": colour}), row=1, col=1)
        fig.add_trace(go.Scatter(x=t, y=chk[:, j], mode="markers", name=f"chunked [{j}]", legendgroup=str(j),
                                 marker={"color": colour, "symbol": "circle-open", "size": 9}), row=1, col=1)
    fig.add_trace(go.Scatter(x=t, y=[s["state_norm"] for s in result.steps], mode="lines", name="‖S_t‖ recurrent",
                             line={"color": "#444444"}), row=2, col=1)
    fig.add_trace(go.Scatter(x=[c["end"] - 1 for c in result.chunks], y=[c["carried_out_norm"] for c in result.chunks],
                             mode="markers", name="‖S‖ carried (chunked)",
                             marker={"color": "#e6862e", "size": 10, "symbol": "diamond"}), row=2, col=1)
    fig.add_trace(go.Bar(x=t, y=[s["abs_diff"] for s in result.steps], name="|difference|",
                         marker={"color": "#7b3fb5"}), row=3, col=1)
    for c in result.chunks[1:]:
        fig.add_vline(x=c["start"] - 0.5, line={"dash": "dot", "color": "#999999", "width": 1})
    fig.update_xaxes(title={"text": "position t"}, row=3, col=1)
    fig.update_layout(title={"text": title or (f"chunked == recurrent (λ={result.decay:g}, chunk {result.chunk}): "
                                               f"max |diff| = {result.max_abs_diff:.1e}")},
                      height=720, margin={"l": 60, "r": 20, "t": 90, "b": 40}, plot_bgcolor="white")
    return fig


# ---- every registered mixer --------------------------------------------------------------------
def _mixer_params(name: str, defaults: Mapping[str, dict], params: Mapping[str, dict] | None) -> dict:
    if params:
        unknown = set(params) - set(REGISTRY)
        if unknown:
            raise ValueError(f"params names unknown mixers {sorted(unknown)}; registered: {sorted(REGISTRY)}")
    return {**defaults.get(name, {}), **(params or {}).get(name, {})}


def _build(name: str, shape: MixerShape, params: dict) -> Mixer:
    cls = REGISTRY[name]
    try:
        problem = cls.Params(**params).check_shape(shape.n_heads, shape.d_head)
    except ValueError as err:
        raise ValueError(f"mixer {name!r}: bad parameters {params}: {err}") from None
    if problem:
        raise ValueError(f"mixer {name!r}: {problem}")
    return cls(shape, **params)


def _check_heads(d_model, n_heads) -> tuple[int, int]:
    d_model = _check_int("d_model", d_model, 1)
    n_heads = _check_int("n_heads", n_heads, 1)
    if d_model % n_heads:
        raise ValueError(f"n_heads={n_heads} must divide d_model={d_model}")
    return d_model, n_heads


def mixer_gallery(length: int = 12, seed: int = 0, d_model: int = 32, n_heads: int = 2, head: int = 0,
                  params: Mapping[str, dict] | None = None) -> dict[str, np.ndarray]:
    """The effective pattern M [length, length] (head `head`) of every mixer in `REGISTRY`, each a single
    mixer layer with small random weights (PyTorch's default init, from `seed`) on the same random input
    x [1, length, d_model]. Mixer parameters: its defaults, then `GALLERY_PARAMS`, then `params[name]`.
    A newly registered mixer appears here without changes. The global torch RNG is left alone."""
    length = _check_int("length", length, 1, MAX_LENGTH)
    seed = _check_int("seed", seed, 0)
    d_model, n_heads = _check_heads(d_model, n_heads)
    head = _check_int("head", head, 0, n_heads - 1)
    shape = MixerShape(d_model=d_model, n_heads=n_heads, n_kv_heads=n_heads, d_head=d_model // n_heads)
    gallery = {}
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        x = torch.randn(1, length, d_model, dtype=torch.float64)
        for name in REGISTRY:
            torch.manual_seed(seed)
            mixer = _build(name, shape, _mixer_params(name, GALLERY_PARAMS, params)).double().eval()
            gallery[name] = mixer.pattern_of(x)[0, head].numpy()
    return gallery


def gallery_figure(gallery: Mapping[str, np.ndarray], title: str | None = None, cols: int | None = None) -> go.Figure:
    """A grid of heatmaps, one per mixer of `mixer_gallery` (rows = query t, cols = key s, future keys
    blank), each on its own colour scale. One trace per mixer."""
    if not gallery:
        raise ValueError("gallery is empty: nothing to draw")
    cols = cols or min(len(gallery), 4)
    cols = _check_int("cols", cols, 1)
    panels = [(name, m, True) for name, m in gallery.items()]
    return _heatmap_grid(panels, title or "effective attention pattern of every mixer (M with z = M @ v)", cols)


# ---- cost over length --------------------------------------------------------------------------
def cost_curves(lengths: Iterable[int] = DEFAULT_COST_LENGTHS, d_model: int = 1024, n_heads: int = 8,
                dtype_bytes: int = 2, params: Mapping[str, dict] | None = None) -> list[dict]:
    """Per registered mixer and length T, a row {"mixer", "length", "flops_per_token", "state_bytes"}:
    the token-mixing FLOPs per token averaged over a sequence of T (`Mixer.mixing_flops_per_token`,
    projections excluded, as `studio.summary`) and the decoding state after T tokens in bytes
    (`Mixer.state_elements` x `dtype_bytes`). One layer of `n_heads` heads of d_model / n_heads, built
    on the meta device (free). Mixer parameters: defaults, then `COST_PARAMS`, then `params[name]`."""
    lengths = [_check_int("each length", n, 1) for n in lengths]
    if not lengths:
        raise ValueError("lengths is empty: give at least one sequence length")
    d_model, n_heads = _check_heads(d_model, n_heads)
    dtype_bytes = _check_int("dtype_bytes", dtype_bytes, 1)
    shape = MixerShape(d_model=d_model, n_heads=n_heads, n_kv_heads=n_heads, d_head=d_model // n_heads)
    rows = []
    for name in REGISTRY:
        with torch.device("meta"):
            mixer = _build(name, shape, _mixer_params(name, COST_PARAMS, params))
        for n in sorted(set(lengths)):
            rows.append({"mixer": name, "length": n, "flops_per_token": float(mixer.mixing_flops_per_token(n)),
                         "state_bytes": int(mixer.state_elements(n)) * dtype_bytes})
    return rows


def cost_table(rows: Sequence[Mapping]) -> tuple[list[str], list[list[str]]]:
    """The rows of `cost_curves` as a table (header, rows): mixer, length, FLOPs/token, state memory."""
    from studio.summary import context_label, human_bytes, human_count

    header = ["mixer", "length", "mixing FLOPs/token", "decoding state"]
    return header, [[r["mixer"], context_label(r["length"]), human_count(r["flops_per_token"]),
                     human_bytes(r["state_bytes"])] for r in rows]


def cost_figure(rows: Sequence[Mapping], title: str | None = None) -> go.Figure:
    """Two log-log panels over the length T: mixing FLOPs per token (left) and decoding state memory in
    bytes (right), one line per mixer in each (traces: 2 x mixers; the right one hides its legend)."""
    if not rows:
        raise ValueError("rows is empty: nothing to draw")
    by_mixer: dict[str, list[Mapping]] = {}
    for r in rows:
        by_mixer.setdefault(r["mixer"], []).append(r)
    palette = ["#4a6fa5", "#e6862e", "#2e9e5b", "#7b3fb5", "#d62728", "#8c564b", "#17becf", "#bcbd22"]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("token-mixing FLOPs per token", "decoding state memory (bytes)"))
    for i, (name, rs) in enumerate(by_mixer.items()):
        rs = sorted(rs, key=lambda r: r["length"])
        x = [r["length"] for r in rs]
        colour = palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=x, y=[r["flops_per_token"] for r in rs], mode="lines+markers", name=name,
                                 legendgroup=name, line={"color": colour},
                                 hovertemplate=f"{name}<br>T=%{{x}}<br>%{{y:.3s}} FLOPs/token<extra></extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=[r["state_bytes"] for r in rs], mode="lines+markers", name=name,
                                 legendgroup=name, showlegend=False, line={"color": colour},
                                 hovertemplate=f"{name}<br>T=%{{x}}<br>%{{y:.3s}}B<extra></extra>"),
                      row=1, col=2)
    fig.update_xaxes(type="log", title={"text": "sequence length T"})
    fig.update_yaxes(type="log")
    fig.update_yaxes(title={"text": "FLOPs / token"}, row=1, col=1)
    fig.update_yaxes(title={"text": "bytes"}, row=1, col=2)
    fig.update_layout(title={"text": title or "cost over length: quadratic vs windowed vs constant-state mixers"},
                      height=460, margin={"l": 60, "r": 20, "t": 90, "b": 50}, plot_bgcolor="white")
    return fig
