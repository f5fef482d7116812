"""`HybridLM`: a pre-norm decoder whose layers each use the token mixer the spec names.

A TransformerLens `HookedRootModule` with TransformerLens hook names, so `run_with_cache`,
`run_with_hooks` and every TransformerLens habit work on any mix of mixers:

    hook_embed
    blocks.{i}.hook_resid_pre, .ln1.hook_normalized, .attn.hook_{q,k,v,rot_q,rot_k,pattern,z,state},
    blocks.{i}.hook_attn_out, .hook_resid_mid, .ln2.hook_normalized, .mlp.hook_pre, .mlp.hook_post,
    blocks.{i}.hook_mlp_out, .hook_resid_post
    ln_final.hook_normalized

A mixture-of-experts layer (mlp "moe", `studio.feedforward.MoE`) has instead of .mlp.hook_pre/hook_post
.mlp.hook_router_logits, .mlp.hook_expert_weights, .mlp.hook_expert_indices and each expert's own hooks;
`aux_loss()` sums the layers' load-balance losses of the last forward.

`attn` is the layer's mixer whatever it is (the name keeps TransformerLens tools working).

q/k sources (Deconstructing Attention, arXiv 2510.11602): a mixer whose `qk_source` is "embedding" or
"fixed_sequence" computes q and k from a tensor the model hands it (`HybridLM._qk_resids`), normalised by
the layer's own norm: the embedding output, or the residual entering that layer when the fixed text
`FIXED_QK_TEXT` (its bytes repeated, modulo vocab_size) runs through the stack. The fixed run uses the
same weights, runs under torch.no_grad (the layer's W_Q / W_K learn, the fixed text's hidden states are
data, as the input's tokens are) with every hook silenced (caches and hooks see only the input), before
the input's forward, and only through the blocks below the last such layer; decoding advances it one
token per step, its states kept under "fixed" in the layers' decoding states.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from studio.feedforward import MLP, MoE
from studio.mixers import REGISTRY, Mixer, MixerShape
from studio.spec import ArchSpec

# The text whose hidden states give the queries and keys of "fixed_sequence" layers (fixed_seq_qk).
FIXED_QK_TEXT = "The quick brown fox jumps over the lazy dog. "


def fixed_sequence_tokens(length: int, vocab_size: int, device=None, start: int = 0) -> torch.Tensor:
    """Positions start .. start + length - 1 of FIXED_QK_TEXT's UTF-8 bytes repeated, modulo vocab_size [length]."""
    data = torch.tensor(list(FIXED_QK_TEXT.encode()), dtype=torch.long, device=device)
    return data[torch.arange(start, start + length, device=device) % len(data)] % vocab_size


class Norm(nn.Module):
    """RMSNorm (Zhang & Sennrich, arXiv 1910.07467) or LayerNorm (Ba et al., arXiv 1607.06450)."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        if spec.norm == "rmsnorm":
            self.norm = nn.RMSNorm(spec.d_model, eps=spec.norm_eps)
        else:
            self.norm = nn.LayerNorm(spec.d_model, eps=spec.norm_eps)
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_normalized(self.norm(x))


class Block(nn.Module):
    def __init__(self, spec: ArchSpec, index: int):
        super().__init__()
        layer = spec.layers[index]
        shape = MixerShape(
            d_model=spec.d_model, n_heads=spec.n_heads, n_kv_heads=spec.n_kv_heads, d_head=spec.d_head,
            layer_idx=index, n_layers=spec.n_layers, positional=layer.positional,
            rope_base=spec.rope_base, bias=spec.bias, norm_eps=spec.norm_eps,
        )
        self.ln1 = Norm(spec)
        self.attn: Mixer = REGISTRY[layer.mixer](shape, **layer.params)
        kind = spec.layer_mlp(index)
        self.ln2 = Norm(spec) if kind != "none" else None
        self.mlp: MLP | MoE | None = None
        if kind == "moe":
            self.mlp = MoE(spec.d_model, spec.d_expert, spec.moe, bias=spec.bias)
        elif kind != "none":
            self.mlp = MLP(spec.d_model, spec.d_mlp, kind, bias=spec.bias)
        for hook in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"):
            setattr(self, f"hook_{hook}", HookPoint())

    def _mlp(self, resid: torch.Tensor) -> torch.Tensor:
        resid = self.hook_resid_mid(resid)
        if self.mlp is not None:
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid)

    def _qk_input(self, qk_resid: torch.Tensor | None) -> torch.Tensor | None:
        """The mixer's q/k input from a residual-stream tensor (embeddings, the fixed text's residual):
        normalised like the layer input, by the norm itself (ln1's hook sees only the layer input)."""
        return None if qk_resid is None else self.ln1.norm(qk_resid)

    def forward(self, resid: torch.Tensor, return_state: bool = False, qk_resid: torch.Tensor | None = None):
        resid = self.hook_resid_pre(resid)
        mixed = self.attn(self.ln1(resid), return_state=return_state, qk_input=self._qk_input(qk_resid))
        mixed, state = mixed if return_state else (mixed, None)
        out = self._mlp(resid + self.hook_attn_out(mixed))
        return (out, state) if return_state else out

    def step(self, resid: torch.Tensor, state: dict | None, qk_resid: torch.Tensor | None = None):
        """One position: resid [batch, d_model] (qk_resid [batch or 1, d_model], see `forward`)."""
        resid = self.hook_resid_pre(resid)
        mixed, state = self.attn.step(self.ln1(resid), state, qk_input=self._qk_input(qk_resid))
        return self._mlp(resid + self.hook_attn_out(mixed)), state


class HybridLM(HookedRootModule):
    """A hybrid-attention language model built from an `ArchSpec` (see `studio.build_model`)."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.d_model)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(Block(spec, i) for i in range(spec.n_layers))
        self.ln_final = Norm(spec)
        self.unembed = None if spec.tie_embeddings else nn.Linear(spec.d_model, spec.vocab_size, bias=False)
        self._init_weights()
        self.setup()

    # ---- weights -----------------------------------------------------------------------------
    def _init_weights(self) -> None:
        """Fan-in init: linear weights N(0, 1/fan_in), output projections further scaled by
        1/sqrt(2 n_layers) (GPT-2), zero biases; embeddings N(0, 1). At d_model 64 this forms MQAR's
        induction circuit in about a third of the steps GPT-2's fixed N(0, 0.02) needed (docs/benchmarks.md)."""
        out_scale = 1.0 / math.sqrt(2 * self.spec.n_layers)
        writers = {id(getattr(block.attn, attr)): factor
                   for block in self.blocks for attr, factor in block.attn.residual_writers().items()}
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                factor = out_scale * writers[id(module)] if id(module) in writers else (
                    out_scale if name.endswith(("o_proj", "fc_out")) else 1.0)
                std = module.in_features**-0.5 * factor
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=1.0)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def moe_layers(self) -> list[MoE]:
        return [block.mlp for block in self.blocks if isinstance(block.mlp, MoE)]

    def aux_loss(self) -> torch.Tensor:
        """The sum over MoE layers of their load-balance losses in the last forward (0 without MoE
        layers); add it, scaled by a small coefficient, to the training loss."""
        losses = [moe.last_aux_loss for moe in self.moe_layers if moe.last_aux_loss is not None]
        return torch.stack(losses).sum() if losses else torch.zeros((), device=self.device)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    # ---- forward -----------------------------------------------------------------------------
    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError("tokens must be an integer tensor of shape [batch, pos]")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [batch, pos], got {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.spec.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.spec.vocab_size}), got {int(tokens.min())}..{int(tokens.max())}"
            )
        return tokens.to(self.device)

    def _logits(self, resid: torch.Tensor) -> torch.Tensor:
        x = self.ln_final(resid)
        if self.unembed is not None:
            return self.unembed(x)
        return (x @ self.embed.weight.T) * self.spec.resolved_logit_scale

    def forward(
        self,
        tokens: torch.Tensor,
        return_type: Literal["logits", "loss", "both"] | None = "logits",
        loss_mask: torch.Tensor | None = None,
    ):
        """tokens [batch, pos] -> logits [batch, pos, vocab] (or next-token loss, or both).

        `loss_mask` [batch, pos - 1] selects which predictions count in the loss."""
        tokens = self._check_tokens(tokens)
        resid = self.hook_embed(self.embed(tokens))
        qk_resids, _ = self._qk_resids(resid)
        for block, qk_resid in zip(self.blocks, qk_resids):
            resid = block(resid, qk_resid=qk_resid)
        if return_type is None:
            return None
        logits = self._logits(resid)
        if return_type == "logits":
            return logits
        loss = next_token_loss(logits, tokens, loss_mask)
        return loss if return_type == "loss" else (logits, loss)

    # ---- q/k sources (see the module docstring) ---------------------------------------------------
    @property
    def _fixed_layers(self) -> int:
        """Blocks the fixed text must run through: up to the last "fixed_sequence" layer (0: none)."""
        fixed = [i for i, block in enumerate(self.blocks) if type(block.attn).qk_source == "fixed_sequence"]
        return fixed[-1] + 1 if fixed else 0

    @contextmanager
    def _hooks_silenced(self):
        """Every hook point without hooks for the duration (the fixed text's run is not the input's)."""
        saved = []
        for module in self.modules():
            if isinstance(module, HookPoint):
                saved.append((module, module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
                              module._backward_pre_hooks, module.fwd_hooks, module.bwd_hooks))
                module._forward_hooks, module._forward_pre_hooks = OrderedDict(), OrderedDict()
                module._backward_hooks, module._backward_pre_hooks = OrderedDict(), OrderedDict()
                module.fwd_hooks, module.bwd_hooks = [], []
        try:
            yield
        finally:
            for module, fwd, fwd_pre, bwd, bwd_pre, fwd_hooks, bwd_hooks in saved:
                module._forward_hooks, module._forward_pre_hooks = fwd, fwd_pre
                module._backward_hooks, module._backward_pre_hooks = bwd, bwd_pre
                module.fwd_hooks, module.bwd_hooks = fwd_hooks, bwd_hooks

    def _sources(self, embedded: torch.Tensor, fixed: list[torch.Tensor] | None, upto: int | None = None) -> list:
        """Per block, its qk_resid: the embeddings for "embedding" layers, the fixed text's residual for
        "fixed_sequence" layers (None in the fixed run itself: there, its own layer input), else None."""
        out = []
        for i, block in enumerate(self.blocks[:upto]):
            source = type(block.attn).qk_source
            out.append(embedded if source == "embedding" else
                       fixed[i] if source == "fixed_sequence" and fixed is not None else None)
        return out

    @torch.no_grad()
    def _fixed_run(self, length: int, return_state: bool = False):
        """The fixed text's first `length` tokens through the blocks below the last fixed_sequence layer:
        (the residual entering each of those blocks and that layer [1, length, d_model], their states)."""
        upto = self._fixed_layers
        tokens = fixed_sequence_tokens(length, self.spec.vocab_size, self.device)[None]
        records, states = [], []
        with self._hooks_silenced():
            embedded = resid = self.embed(tokens)
            for block, qk_resid in zip(self.blocks[: upto - 1], self._sources(embedded, None, upto - 1)):
                records.append(resid)
                out = block(resid, return_state=return_state, qk_resid=qk_resid)
                resid, state = out if return_state else (out, None)
                states.append(state)
            records.append(resid)
        return records, states

    @torch.no_grad()
    def _fixed_step(self, pos: int, states: list[dict | None]):
        """The fixed text's token at `pos` through the same blocks as `_fixed_run`, continuing its states."""
        upto = self._fixed_layers
        token = fixed_sequence_tokens(1, self.spec.vocab_size, self.device, start=pos)
        records, new_states = [], []
        with self._hooks_silenced():
            embedded = resid = self.embed(token)
            for block, qk_resid, state in zip(self.blocks[: upto - 1], self._sources(embedded, None, upto - 1),
                                              states):
                records.append(resid)
                resid, state = block.step(resid, state, qk_resid=qk_resid)
                new_states.append(state)
            records.append(resid)
        return records, new_states

    def _qk_resids(self, embedded: torch.Tensor, return_state: bool = False):
        """Per block, what its q and k come from when that is not its own input (else None), and the fixed
        run's states (per block below the last fixed_sequence layer; [] without such layers)."""
        fixed, fixed_states = (None, [])
        if self._fixed_layers:
            fixed, fixed_states = self._fixed_run(embedded.shape[1], return_state)
        return self._sources(embedded, fixed), fixed_states

    # ---- decoding ----------------------------------------------------------------------------
    def prefill(self, tokens: torch.Tensor, last_only: bool = False) -> tuple[torch.Tensor, list[dict]]:
        """Run the prompt in parallel form; return its logits and every layer's decoding state.
        `last_only`: the last position's logits only ([batch, 1, vocab]; a long prompt's full logits are
        T x vocab floats, 1.6 GB for 8K tokens of a 49K vocabulary)."""
        tokens = self._check_tokens(tokens)
        resid = self.hook_embed(self.embed(tokens))
        qk_resids, fixed_states = self._qk_resids(resid, return_state=True)
        states = []
        for i, (block, qk_resid) in enumerate(zip(self.blocks, qk_resids)):
            resid, state = block(resid, return_state=True, qk_resid=qk_resid)
            if i < len(fixed_states):
                state["fixed"] = fixed_states[i]
            states.append(state)
        return self._logits(resid[:, -1:] if last_only else resid), states

    def step(self, token: torch.Tensor, states: list[dict | None] | None = None):
        """One token per sequence, token [batch] -> (logits [batch, vocab], new states).
        `states=None` starts empty sequences."""
        token = self._check_tokens(token.reshape(-1, 1))[:, 0]
        states = states or [None] * len(self.blocks)
        resid = self.hook_embed(self.embed(token))
        fixed, fixed_states = None, []
        if self._fixed_layers:
            pos = states[0]["pos"] if states[0] is not None else 0
            old = [state.get("fixed") if state is not None else None for state in states]
            fixed, fixed_states = self._fixed_step(pos, old)
        new_states = []
        for i, (block, state, qk_resid) in enumerate(zip(self.blocks, states, self._sources(resid, fixed))):
            resid, state = block.step(resid, state, qk_resid=qk_resid)
            if i < len(fixed_states):
                state["fixed"] = fixed_states[i]
            new_states.append(state)
        return self._logits(resid), new_states

    @torch.no_grad()
    def generate(
        self,
        tokens: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        stop_token: int | None = None,
    ) -> torch.Tensor:
        """Continue `tokens` [batch, pos] by `max_new_tokens`, decoding with each mixer's recurrent
        `step` from the prefilled states. temperature 0 is greedy. Returns [batch, pos + new]."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        tokens = self._check_tokens(tokens)
        if tokens.shape[1] == 0:
            raise ValueError("generate needs at least one prompt token")
        logits, states = self.prefill(tokens)
        logits = logits[:, -1]
        out = [tokens]
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        for i in range(max_new_tokens):
            nxt = sample(logits, temperature, top_k, generator)
            if stop_token is not None:
                nxt = torch.where(finished, torch.full_like(nxt, stop_token), nxt)
                finished |= nxt == stop_token
            out.append(nxt[:, None])
            if i + 1 == max_new_tokens or (stop_token is not None and bool(finished.all())):
                break
            logits, states = self.step(nxt, states)
        return torch.cat(out, dim=1)

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write config.json (the spec) and model.safetensors, each atomically."""
        from studio.checkpoint import save_model

        return save_model(self, directory)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "HybridLM":
        """Read a directory written by `save` (safetensors only: no pickle)."""
        from studio.checkpoint import load_model

        return load_model(directory, device)


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of predicting tokens[:, 1:] from logits[:, :-1] (optionally masked)."""
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
    if mask is None:
        return losses.mean()
    mask = mask.flatten().to(losses.dtype)
    return (losses * mask).sum() / mask.sum().clamp(min=1)


def sample(logits: torch.Tensor, temperature: float, top_k: int | None, generator=None) -> torch.Tensor:
    """Greedy (temperature 0) or temperature / top-k sampling over logits [batch, vocab]."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]


def build_model(spec: ArchSpec | dict | str, seed: int = 0) -> HybridLM:
    """A freshly initialised `HybridLM` from a spec (an `ArchSpec`, a dict, or JSON/YAML text or path).
    The same spec and seed give the same weights."""
    if not isinstance(spec, ArchSpec):
        spec = ArchSpec.from_dict(spec) if isinstance(spec, dict) else _spec_from_text(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return HybridLM(spec)


def _spec_from_text(source: str) -> ArchSpec:
    text = str(source).strip()
    if text.startswith("{") or text.endswith(".json"):
        return ArchSpec.from_json(source)
    return ArchSpec.from_yaml(source)
