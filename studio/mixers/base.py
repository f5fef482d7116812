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

    def __init__(self, shape: MixerShape, **params: Any):
        super().__init__()
        self.shape = shape
        self.p = self.Params(**params)
        h, kv, d, dm = shape.n_heads, shape.n_kv_heads, shape.d_head, shape.d_model
        self.q_proj = nn.Linear(dm, h * d, bias=shape.bias)
        self.k_proj = nn.Linear(dm, kv * d, bias=shape.bias)
        self.v_proj = nn.Linear(dm, kv * d, bias=shape.bias)
        self.o_proj = nn.Linear(h * d, dm, bias=shape.bias)
        self.conv = ShortConv((h + 2 * kv) * d, self.p.short_conv) if self.p.short_conv else None
        self.rotary = (
            Rotary(d, shape.rope_base, self.p.rope_fraction) if shape.positional == "rope" else None
        )
        self.out_norm = nn.RMSNorm(d, eps=shape.norm_eps) if self.p.output_norm else None
        self.g_proj = nn.Linear(dm, h * d, bias=shape.bias) if self.p.output_gate != "none" else None
        for hook in ("q", "k", "v", "rot_q", "rot_k", "pattern", "z", "state"):
            setattr(self, f"hook_{hook}", HookPoint())
        self.init_mixer()

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

    def _project(self, x: torch.Tensor, conv_history: torch.Tensor | None):
        b, t, _ = x.shape
        h, kv, d = self.shape.n_heads, self.shape.n_kv_heads, self.shape.d_head
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.conv is not None:
            qkv, conv_history = self.conv(torch.cat([q, k, v], dim=-1), conv_history)
            q, k, v = qkv.split([h * d, kv * d, kv * d], dim=-1)
        q = self.hook_q(q.reshape(b, t, h, d))
        k = self.hook_k(k.reshape(b, t, kv, d))
        v = self.hook_v(v.reshape(b, t, kv, d))
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
        return self.o_proj(z)

    def forward(self, x: torch.Tensor, return_state: bool = False):
        """x [batch, time, d_model] -> [batch, time, d_model]; with `return_state`, also the decoding
        state after the last token (what `step` continues from)."""
        q, k, v, conv_history = self._project(x, None)
        positions = torch.arange(x.shape[1], device=x.device)
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

    def step(self, x: torch.Tensor, state: dict | None = None) -> tuple[torch.Tensor, dict]:
        """One token x [batch, d_model] with the state from `forward(..., return_state=True)` or a
        previous step (None: start of sequence) -> (out [batch, d_model], new state)."""
        state = state or {"pos": 0, "conv": None, "mix": None}
        x = x[:, None]
        q, k, v, conv_history = self._project(x, state["conv"])
        q, k = self._position(q, k, torch.tensor([state["pos"]], device=x.device))
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
        h, kv, d = self.shape.n_heads, self.shape.n_kv_heads, self.shape.d_head
        if self.state_kind == "matrix":
            return h * d * d
        window = getattr(self, "window", None)
        return 2 * kv * d * (context if window is None else min(context, window))

    def mixing_flops_per_token(self, length: int) -> float:
        """Forward FLOPs per token of the token mixing itself (projections excluded), averaged over
        the positions of a sequence of `length` tokens (recurrent form for matrix states)."""
        h, d = self.shape.n_heads, self.shape.d_head
        if self.state_kind == "matrix":
            return 4.0 * h * d * d  # state update k v^T and read-out q S
        window = getattr(self, "window", None)
        keys = (length + 1) / 2 if window is None else sum(min(t, window) for t in range(1, length + 1)) / length
        return 4.0 * h * d * keys  # q.k scores and the weighted sum of values

    def extra_repr(self) -> str:
        given = self.p.model_dump(exclude_defaults=True)
        return ", ".join([f"layer={self.shape.layer_idx}"] + [f"{k}={v}" for k, v in given.items()])
