"""What a spec costs: parameters, forward FLOPs per token, and decoding memory, per layer and in
total, next to an all-softmax model of the same size (same spec, every layer `softmax`).

Parameters are counted exactly on a model built on the meta device (no memory, no time). FLOPs count
a multiply-add as 2; memory is the decoding state (KV cache, window or matrix state) in bytes. In a
mixture-of-experts layer a token uses only top_k of the routed experts: `active_params` counts what one
token uses (router, shared experts, top_k experts), `params` everything stored, and FLOPs follow the
active weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from studio.spec import ArchSpec

CONTEXTS = (1024, 32 * 1024, 1024 * 1024)


@dataclass
class LayerCost:
    index: int
    mixer: str
    params: int
    flops_per_token: float
    state_bytes: dict[int, int]
    active_params: int  # used by one token: all of them, except the routed experts a token skips


@dataclass
class Summary:
    spec: ArchSpec
    length: int
    dtype_bytes: int
    layers: list[LayerCost]
    embedding_params: int
    head_flops_per_token: float
    contexts: tuple[int, ...] = CONTEXTS
    baseline: "Summary | None" = field(default=None, repr=False)

    @property
    def params(self) -> int:
        return self.embedding_params + sum(layer.params for layer in self.layers)

    @property
    def active_params(self) -> int:
        return self.embedding_params + sum(layer.active_params for layer in self.layers)

    @property
    def has_moe(self) -> bool:
        return any(layer.active_params != layer.params for layer in self.layers)

    @property
    def flops_per_token(self) -> float:
        return self.head_flops_per_token + sum(layer.flops_per_token for layer in self.layers)

    def state_bytes(self, context: int) -> int:
        return sum(layer.state_bytes[context] for layer in self.layers)

    def to_dict(self) -> dict:
        out = {
            "length": self.length,
            "dtype_bytes": self.dtype_bytes,
            "params": self.params,
            "active_params": self.active_params,
            "flops_per_token": self.flops_per_token,
            "state_bytes": {str(c): self.state_bytes(c) for c in self.contexts},
            "layers": [
                {"index": l.index, "mixer": l.mixer, "params": l.params, "active_params": l.active_params,
                 "flops_per_token": l.flops_per_token,
                 "state_bytes": {str(c): b for c, b in l.state_bytes.items()}}
                for l in self.layers
            ],
        }
        if self.baseline is not None:
            out["all_softmax"] = self.baseline.to_dict()
        return out


def all_softmax(spec: ArchSpec) -> ArchSpec:
    """The same model with every layer a plain softmax layer (RoPE), feed-forwards unchanged."""
    data = spec.to_dict()
    data["layers"] = [{"mixer": "softmax", "mlp": layer.mlp} for layer in spec.layers]
    return ArchSpec.from_dict(data)


def summarize(spec: ArchSpec, length: int = 4096, dtype_bytes: int = 2, contexts=CONTEXTS,
              compare: bool = True) -> Summary:
    """Costs of `spec` at sequence `length` (for FLOPs) and the decoding `contexts` (for memory)."""
    from studio.feedforward import MoE
    from studio.model import HybridLM

    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    with torch.device("meta"):
        model = HybridLM(spec)
    layers = []
    for i, block in enumerate(model.blocks):
        params = sum(p.numel() for p in block.parameters())
        # every weight matrix is used once per token: 2 FLOPs per weight (norm scales are negligible)
        matmul = sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear))
        skipped_params = skipped_matmul = 0  # the routed experts a token does not go through
        if isinstance(block.mlp, MoE):
            idle, expert = block.mlp.config.n_experts - block.mlp.config.top_k, block.mlp.experts[0]
            skipped_params = idle * sum(p.numel() for p in expert.parameters())
            skipped_matmul = idle * sum(m.weight.numel() for m in expert.modules() if isinstance(m, torch.nn.Linear))
        flops = 2.0 * (matmul - skipped_matmul) + block.attn.mixing_flops_per_token(length)
        state = {c: block.attn.state_elements(c) * dtype_bytes for c in contexts}
        layers.append(LayerCost(i, spec.layers[i].mixer, params, flops, state, params - skipped_params))
    block_params = sum(l.params for l in layers)
    embedding = sum(p.numel() for p in model.parameters()) - block_params
    summary = Summary(spec, length, dtype_bytes, layers, embedding, 2.0 * spec.d_model * spec.vocab_size, tuple(contexts))
    if compare:
        summary.baseline = summarize(all_softmax(spec), length, dtype_bytes, contexts, compare=False)
    return summary


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_count(n: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def context_label(c: int) -> str:
    return f"{c // (1024 * 1024)}M" if c >= 1024 * 1024 else f"{c // 1024}K" if c >= 1024 else str(c)


def summary_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """The summary as a table (header, rows): per layer, total, all-softmax total, and the ratio."""
    ctx = summary.contexts
    moe = summary.has_moe  # an "active params" column only where some parameters sit idle per token

    def params(total: int, active: int) -> list[str]:
        return [human_count(total)] + ([human_count(active)] if moe else [])

    header = ["layer", "mixer", "params", *(["active params"] if moe else []),
              f"FLOPs/token @{context_label(summary.length)}"] + [f"state @{context_label(c)}" for c in ctx]
    rows = [[str(l.index), l.mixer, *params(l.params, l.active_params), human_count(l.flops_per_token)]
            + [human_bytes(l.state_bytes[c]) for c in ctx] for l in summary.layers]
    rows.append(["", "embeddings + head", *params(summary.embedding_params, summary.embedding_params),
                 human_count(summary.head_flops_per_token)] + ["" for _ in ctx])

    def total(s: Summary, label: str):
        return ["", label, *params(s.params, s.active_params), human_count(s.flops_per_token)] + [
            human_bytes(s.state_bytes(c)) for c in ctx]

    rows.append(total(summary, "total"))
    if summary.baseline is not None:
        b = summary.baseline
        rows.append(total(b, "all-softmax total"))
        rows.append(["", "this / all-softmax", f"{summary.params / b.params:.2f}x",
                     *([f"{summary.active_params / b.active_params:.2f}x"] if moe else []),
                     f"{summary.flops_per_token / b.flops_per_token:.2f}x"]
                    + [f"{summary.state_bytes(c) / b.state_bytes(c):.3f}x" for c in ctx])
    return header, rows
