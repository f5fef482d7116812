"""The shared plumbing of every token mixer, so that a mixer file holds only its own math.

`Mixer` owns what FLA repeats in each of its layer files: the q/k/v/output projections, head grouping
(GQA), RoPE or NoPE, the optional short convolution, the optional per-head output norm and output
gate, the TransformerLens hook points, and the decoding state's bookkeeping. A subclass says only
what makes it that mixer:

    Params             pydantic model of its own parameters (extends `MixerParams`)
    init_mixer()       create its own parameters or buffers (gates, decays), if any
    featurize(q, k)    feature map applied to q and k before the math (default: none)
    gates(x)           per-token gates computed from the layer input, [batch, head, time, ...]
    parallel(q, k, v, **gates)            -> (z, state)   training form over a whole sequence
    recurrent_step(q, k, v, state, **g)   -> (z, state)   one token; `state=None` means empty
    effective_pattern(q, k, **gates)      -> M [batch, head, T, T] with z = M @ v

and, when it departs from the standard layout, its projections (`projections`, `qkv`) and their sizes
(`d_qk`, `d_v`, `n_k_heads`, `n_v_heads`, `k_is_q`, `has_k_proj`, `has_o_proj`): collapsed W_QK / W_VO
and symmetric W_Q = W_K (arXiv 2410.13732) or a per-position MLP (arXiv 2510.11602) are such layouts.

Where q and k come from (`qk_source`; Deconstructing Attention, arXiv 2510.11602): "hidden", the layer
input x (every standard mixer); "random", fixed random per-position rows that the mixer makes itself
(`qk_input_of`); "embedding" (the token embeddings) and "fixed_sequence" (the layer input of one fixed
text run through the same stack), which need the model: `HybridLM` hands them to `forward` / `step` as
`qk_input` (a mixer used on its own falls back to x). v, gates and the output gate always read x.

q, k, v reach the math as [batch, head, time, d_head] (one time step: [batch, head, d_head]); k and v
have n_heads heads unless the mixer sets `group_kv = True`, in which case they keep n_kv_heads and
the mixer shares them itself. z = M @ v exactly (DSF, arXiv 2405.15731): `hook_z` sees this z; the
output norm and gate come after it.

Hooks (TransformerLens names and shapes): hook_q/hook_k/hook_v [batch, pos, head, d_head] after the
projection (and short convolution), hook_rot_q/hook_rot_k after RoPE, hook_pattern [batch, head, q, k],
hook_z [batch, pos, head, d_head], hook_state (recurrent mixers' matrix state). The pattern is
computed only when a hook on `hook_pattern` asks for it; then z is computed as pattern @ v, so an edit
of the pattern in a hook changes the output, as in TransformerLens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

QKSource = Literal["hidden", "random", "fixed_sequence", "embedding"]

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformer_lens.hook_points import HookPoint

from studio.mixers.short_conv import ShortConv
from studio.rope import Rotary


class MixerParams(BaseModel):
    """Options every mixer accepts; a mixer's own `Params` adds its parameters and may change defaults."""

    model_config = ConfigDict(extra="forbid")

    short_conv: int = Field(default=0, ge=0, le=16, description="causal depthwise conv kernel on q, k, v (0: off)")
    output_norm: bool = Field(default=False, description="per-head RMSNorm on z before the output projection")
    output_gate: Literal["none", "sigmoid", "swish"] = Field(default="none", description="gate z with act(x W_g)")
    rope_fraction: float = Field(default=1.0, gt=0, le=1, description="share of each head's dims that RoPE turns")

    def check_shape(self, n_heads: int, d_head: int) -> str | None:
        """A problem with these parameters for a layer of this shape, or None."""
        return None


@dataclass(frozen=True)
class MixerShape:
    """The sizes a mixer needs from the architecture spec."""

    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    layer_idx: int = 0
    n_layers: int = 1
    positional: Literal["rope", "nope"] = "rope"
    rope_base: float = 10000.0
    bias: bool = False
    norm_eps: float = 1e-5


class Mixer(nn.Module):
    # What `studio mixers` lists about a mixer. Read `name` from the class (`type(mixer).name`):
    # inside a model, TransformerLens's setup() sets each module's instance `name` to its path.
    name: ClassVar[str]
    paper: ClassVar[str]
    time_complexity: ClassVar[str]  # training / prefill cost over a sequence of length T
    # What decoding keeps: "kv_cache", "window" (the last w keys/values), "matrix" (a fixed-size recurrent
    # state), or a combination such as "window+matrix"; mixers with other states override state_elements.
    state_kind: ClassVar[str]
    # The family the mixer belongs to, for grouping and colouring in views ("softmax", "linear", ...).
    family: ClassVar[str] = "other"
    Params: ClassVar[type[MixerParams]] = MixerParams
    group_kv: ClassVar[bool] = False
    # Where q and k come from (see the module docstring); v always comes from the layer input.
    qk_source: ClassVar[QKSource] = "hidden"

    def __init__(self, shape: MixerShape, **params: Any):
        super().__init__()
        self.shape = shape
        self.p = self.Params(**params)
        h, dm = shape.n_heads, shape.d_model
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = self.projections()
        k_width = 0 if self.k_is_q else self.n_k_heads * self.d_qk
        channels = h * self.d_qk + k_width + self.n_v_heads * self.d_v
        self.conv = ShortConv(channels, self.p.short_conv) if self.p.short_conv else None
        self.rotary = (
            Rotary(self.d_qk, shape.rope_base, self.p.rope_fraction)
            if shape.positional == "rope" and self.d_qk > 0 else None
        )
        self.out_norm = nn.RMSNorm(self.d_v, eps=shape.norm_eps) if self.p.output_norm else None
        self.g_proj = nn.Linear(dm, h * self.d_v, bias=shape.bias) if self.p.output_gate != "none" else None
        for hook in ("q", "k", "v", "rot_q", "rot_k", "pattern", "z", "state"):
            setattr(self, f"hook_{hook}", HookPoint())
        self.init_mixer()

    # ---- the layout of the projections (standard: q, k, v of d_head per head, k and v at n_kv_heads) ----
    @property
    def d_qk(self) -> int:
        """Width of each q / k head."""
        return self.shape.d_head

    @property
    def d_v(self) -> int:
        """Width of each v head (and of each head of z)."""
        return self.shape.d_head

    @property
    def n_k_heads(self) -> int:
        return self.shape.n_kv_heads

    @property
    def n_v_heads(self) -> int:
        return self.shape.n_kv_heads

    @property
    def k_is_q(self) -> bool:
        """k is q itself (one shared projection, W_K = W_Q): `qkv` returns k = None."""
        return False

    @property
    def has_k_proj(self) -> bool:
        """False: k is q (`k_is_q`) or `qkv` makes k without weights."""
        return not self.k_is_q

    @property
    def has_o_proj(self) -> bool:
        """False: every head writes d_model wide (d_v = d_model) and the heads' outputs are summed."""
        return True

    def projections(self) -> tuple[nn.Module | None, nn.Module | None, nn.Module, nn.Module | None]:
        """(q_proj, k_proj, v_proj, o_proj), None where `has_k_proj` / `has_o_proj` say so."""
        h, dm, bias = self.shape.n_heads, self.shape.d_model, self.shape.bias
        q = nn.Linear(dm, h * self.d_qk, bias=bias)
        k = nn.Linear(dm, self.n_k_heads * self.d_qk, bias=bias) if self.has_k_proj else None
        v = nn.Linear(dm, self.n_v_heads * self.d_v, bias=bias)
        o = nn.Linear(h * self.d_v, dm, bias=bias) if self.has_o_proj else None
        return q, k, v, o

    def qkv(self, src: torch.Tensor, x: torch.Tensor):
        """Flat q [batch, time, n_heads * d_qk], k [.., n_k_heads * d_qk] (None: k is q, taken after the short
        convolution), v [.., n_v_heads * d_v]: q and k from `src` (the q/k input, see `qk_source`), v from x."""
        return self.q_proj(src), None if self.k_proj is None else self.k_proj(src), self.v_proj(x)

    def qk_input_of(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """What q and k are computed from when the caller gives no `qk_input`: the layer input x [batch, T,
        d_model] (a "random" mixer returns its own rows for these positions, [1 or batch, T, d_model])."""
        return x

    def residual_writers(self) -> dict[str, float]:
        """The linear layers (attribute names) whose output goes to the residual stream, each with a factor
        on its initial scale; `HybridLM` initialises them like output projections (GPT-2's 1/sqrt(2 n_layers))."""
        return {} if self.o_proj is None else {"o_proj": 1.0}

    # ---- what a subclass provides ----------------------------------------------------------
    def init_mixer(self) -> None:
        """Create the mixer's own parameters and buffers."""

    def featurize(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-token gates from the layer input x [batch, time, d_model], each [batch, head, time, ...]."""
        return {}

    def parallel(self, q, k, v, **gates) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def recurrent_step(self, q, k, v, state, **gates) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def effective_pattern(self, q, k, **gates) -> torch.Tensor:
        raise NotImplementedError

    # ---- shared plumbing ---------------------------------------------------------------------
    @property
    def is_recurrent(self) -> bool:
        return self.state_kind == "matrix"

    def _project(self, x: torch.Tensor, conv_history: torch.Tensor | None, qk_input: torch.Tensor):
        b, t, _ = x.shape
        q, k, v = self.qkv(qk_input.expand(b, t, -1), x)
        parts = [q, v] if k is None else [q, k, v]
        if self.conv is not None:
            mixed, conv_history = self.conv(torch.cat(parts, dim=-1), conv_history)
            parts = mixed.split([part.shape[-1] for part in parts], dim=-1)
        q, v = parts[0], parts[-1]
        k = q if k is None else parts[1]
        q = self.hook_q(q.unflatten(-1, (self.shape.n_heads, self.d_qk)))
        k = self.hook_k(k.unflatten(-1, (self.n_k_heads, self.d_qk)))
        v = self.hook_v(v.unflatten(-1, (self.n_v_heads, self.d_v)))
        return q, k, v, conv_history

    def _position(self, q, k, positions):
        if self.rotary is not None:
            q = self.hook_rot_q(self.rotary(q, positions))
            k = self.hook_rot_k(self.rotary(k, positions))
        return q, k

    def expand_kv(self, x: torch.Tensor) -> torch.Tensor:
        """Repeat kv heads [batch, n_kv_heads, ...] to [batch, n_heads, ...] (GQA group order)."""
        groups = self.shape.n_heads // x.shape[1]
        return x if groups == 1 else x.repeat_interleave(groups, dim=1)

    def _heads_first(self, q, k, v):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [batch, head, time, d]
        if not self.group_kv:
            k, v = self.expand_kv(k), self.expand_kv(v)
        q, k = self.featurize(q, k)
        return q, k, v

    def _finish(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """z [batch, head, time, d] -> hook_z -> output norm, gate, projection -> [batch, time, d_model]."""
        z = self.hook_z(z.transpose(1, 2))
        if self.out_norm is not None:
            z = self.out_norm(z)
        z = z.flatten(2)
        if self.g_proj is not None:
            g = self.g_proj(x)
            z = z * (torch.sigmoid(g) if self.p.output_gate == "sigmoid" else F.silu(g))
        if self.o_proj is None:  # each head already writes d_model wide (collapsed W_VO): sum the heads
            return z.unflatten(-1, (self.shape.n_heads, self.d_v)).sum(-2)
        return self.o_proj(z)

    def forward(self, x: torch.Tensor, return_state: bool = False, qk_input: torch.Tensor | None = None):
        """x [batch, time, d_model] -> [batch, time, d_model]; with `return_state`, also the decoding
        state after the last token (what `step` continues from). `qk_input` [batch or 1, time, d_model]:
        what q and k are computed from instead of x (see `qk_source`); None: `qk_input_of(x, positions)`."""
        positions = torch.arange(x.shape[1], device=x.device)
        if qk_input is None:
            qk_input = self.qk_input_of(x, positions)
        q, k, v, conv_history = self._project(x, None, qk_input)
        q, k = self._position(q, k, positions)
        q, k, v = self._heads_first(q, k, v)
        gates = self.gates(x)
        state = None
        if self.hook_pattern.has_hooks():
            pattern = self.hook_pattern(self.effective_pattern(q, k, **gates))
            z = pattern.to(v.dtype) @ self.expand_kv(v)
            if return_state or self.hook_state.has_hooks():
                _, state = self.parallel(q, k, v, **gates)
        else:
            z, state = self.parallel(q, k, v, **gates)
        if self.is_recurrent and isinstance(state, torch.Tensor):
            state = self.hook_state(state)
        out = self._finish(z, x)
        if return_state:
            return out, {"pos": x.shape[1], "conv": conv_history, "mix": state}
        return out

    def pattern_of(self, x: torch.Tensor) -> torch.Tensor:
        """The effective pattern [batch, head, T, T] of one forward over x [batch, T, d_model], read
        through `hook_pattern` as any analysis sees it (autograd state is left to the caller)."""
        seen = []
        self.hook_pattern.add_hook(lambda pattern, hook: seen.append(pattern))
        try:
            self(x)
        finally:
            self.hook_pattern.remove_hooks()
        return seen[0]

    def step(self, x: torch.Tensor, state: dict | None = None,
             qk_input: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """One token x [batch, d_model] with the state from `forward(..., return_state=True)` or a
        previous step (None: start of sequence) -> (out [batch, d_model], new state). `qk_input`
        [batch or 1, d_model]: the q/k input at this position (as in `forward`)."""
        state = state or {"pos": 0, "conv": None, "mix": None}
        x = x[:, None]
        positions = torch.tensor([state["pos"]], device=x.device)
        qk_input = self.qk_input_of(x, positions) if qk_input is None else qk_input[:, None]
        q, k, v, conv_history = self._project(x, state["conv"], qk_input)
        q, k = self._position(q, k, positions)
        q, k, v = self._heads_first(q, k, v)
        gates = {name: g[:, :, 0] for name, g in self.gates(x).items()}
        z, mix = self.recurrent_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], state["mix"], **gates)
        if self.is_recurrent and isinstance(mix, torch.Tensor):
            mix = self.hook_state(mix)
        out = self._finish(z[:, :, None], x)
        return out[:, 0], {"pos": state["pos"] + 1, "conv": conv_history, "mix": mix}

    # ---- costs (for `studio summary`) ----------------------------------------------------------
    def state_elements(self, context: int) -> int:
        """Numbers held for decoding after `context` tokens (KV cache, window or matrix state)."""
        if self.state_kind == "matrix":
            return self.shape.n_heads * self.d_qk * self.d_v
        window = getattr(self, "window", None)
        per_token = self.n_k_heads * self.d_qk + self.n_v_heads * self.d_v
        return per_token * (context if window is None else min(context, window))

    def mixing_flops_per_token(self, length: int) -> float:
        """Forward FLOPs per token of the token mixing itself (projections excluded), averaged over
        the positions of a sequence of `length` tokens (recurrent form for matrix states)."""
        h, dqk, dv = self.shape.n_heads, self.d_qk, self.d_v
        if self.state_kind == "matrix":
            return 4.0 * h * dqk * dv  # state update k v^T and read-out q S
        window = getattr(self, "window", None)
        keys = (length + 1) / 2 if window is None else sum(min(t, window) for t in range(1, length + 1)) / length
        return 2.0 * h * (dqk + dv) * keys  # q.k scores and the weighted sum of values

    def extra_repr(self) -> str:
        given = self.p.model_dump(exclude_defaults=True)
        return ", ".join([f"layer={self.shape.layer_idx}"] + [f"{k}={v}" for k, v in given.items()])
