"""The architecture spec: what a hybrid model is, as data.

`ArchSpec` is a pydantic model that validates everything a user can get wrong before any tensor
exists, and says what went wrong in one line per problem: the field, the bad value, what is allowed.
Layers are listed explicitly (`layers`) or through a shorthand that is expanded on load:

    {"pattern": "LLLS", "pattern_map": {"L": "lightning", "S": "softmax"}}   # cycled to n_layers
    {"ratio": "7:1",    "pattern_map": {"L": "lightning", "S": "softmax"}}   # 7 L then 1 S, cycled

A `pattern_map` value is a mixer name or a full layer dict (`{"mixer": "sliding_window", "window": 64}`).

The feed-forward is `mlp` ("swiglu", "gelu", "none", or "moe": a routed mixture of experts configured by
the `moe` block, see `MoESpec`); a layer may override it with its own `"mlp"` key:

    {"mlp": "moe", "moe": {"n_experts": 8, "top_k": 2, "shared_experts": 1}}
    {"mlp": "swiglu", "moe": {...}, "pattern": "DM",
     "pattern_map": {"D": "softmax", "M": {"mixer": "lightning", "mlp": "moe"}}}         # MoE in every other layer

The canonical form (what `to_json`/`to_yaml` write) always lists the layers, so a spec round-trips
exactly through JSON and YAML.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

__all__ = ["ArchSpec", "LayerSpec", "MoESpec", "SpecError", "SpecLimits", "DEFAULT_LIMITS"]

MLPKind = Literal["none", "gelu", "swiglu", "moe"]


class SpecError(ValueError):
    """A spec that cannot be built. `problems` lists (field, message) pairs; str() is human-readable."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = [f"{field}: {msg}" if field else msg for field, msg in problems]
        super().__init__("invalid architecture spec:\n  " + "\n  ".join(lines))


@dataclass(frozen=True)
class SpecLimits:
    """Size caps that keep a typo (d_model=40960) from eating the machine.

    Override per call with `ArchSpec.model_validate(data, context={"limits": SpecLimits(...)})`, or
    for the whole process with the environment variables STUDIO_MAX_PARAMS, STUDIO_MAX_LAYERS,
    STUDIO_MAX_D_MODEL, STUDIO_MAX_VOCAB.
    """

    max_params: float = 8e9
    max_layers: int = 512
    max_d_model: int = 16384
    max_vocab: int = 1 << 20

    @classmethod
    def from_env(cls) -> "SpecLimits":
        base = cls()
        return cls(
            max_params=float(os.environ.get("STUDIO_MAX_PARAMS", base.max_params)),
            max_layers=int(os.environ.get("STUDIO_MAX_LAYERS", base.max_layers)),
            max_d_model=int(os.environ.get("STUDIO_MAX_D_MODEL", base.max_d_model)),
            max_vocab=int(os.environ.get("STUDIO_MAX_VOCAB", base.max_vocab)),
        )


DEFAULT_LIMITS = SpecLimits.from_env()


class MoESpec(BaseModel):
    """A routed mixture-of-experts feed-forward (Switch, arXiv 2101.03961; MiniMax-M1, arXiv 2506.13585;
    SmallThinker, arXiv 2507.20984), used by every layer whose mlp is "moe".

    Each token goes through its `top_k` highest-scoring experts, weighted by their router scores, plus
    the always-on shared experts. Every expert is an MLP of kind `expert_mlp` and width
    expert_ratio * d_model."""

    model_config = ConfigDict(extra="forbid")

    n_experts: int = Field(default=8, gt=0, le=1024, description="routed experts per layer")
    top_k: int = Field(default=2, gt=0, description="experts each token is routed to")
    shared_experts: int = Field(default=0, ge=0, le=64, description="always-on experts every token goes through")
    expert_ratio: float | None = Field(
        default=None, gt=0, description="hidden width of each expert / d_model (default: the spec's mlp_ratio)")
    expert_mlp: Literal["swiglu", "gelu"] = Field(default="swiglu", description="the MLP kind of each expert")
    router: Literal["softmax", "sigmoid"] = Field(
        default="softmax",
        description="router scores: softmax over experts (MiniMax) or per-expert sigmoid (SmallThinker)")
    normalize_weights: bool | None = Field(
        default=None, description="rescale the top-k scores to sum to 1 (default: yes for softmax with top_k > 1 as "
        "in MiniMax; no for top-1 as in Switch, where it would leave the router without a gradient, and for sigmoid)")

    @model_validator(mode="after")
    def _check(self) -> "MoESpec":
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k={self.top_k} is more than n_experts={self.n_experts}; "
                             f"pick top_k from 1 to {self.n_experts} or add experts")
        if self.normalize_weights is None:
            self.normalize_weights = self.router == "softmax" and self.top_k > 1
        return self


class LayerSpec(BaseModel):
    """One layer: its token mixer (a name in `studio.mixers.REGISTRY`), its positional scheme, its
    feed-forward if it differs from the spec's `mlp`, and the mixer's own parameters as extra keys
    (`{"mixer": "sliding_window", "window": 64}`)."""

    model_config = ConfigDict(extra="allow")

    mixer: str
    positional: Literal["rope", "nope"] = "rope"
    mlp: MLPKind | None = None  # None: the spec's `mlp`

    @model_serializer(mode="wrap")
    def _omit_default_mlp(self, handler):
        data = handler(self)
        if self.mlp is None:  # the canonical form names a layer's mlp only where it overrides the spec's
            data.pop("mlp", None)
        return data

    @model_validator(mode="after")
    def _check_mixer_params(self) -> "LayerSpec":
        from studio.mixers import REGISTRY

        if self.mixer not in REGISTRY:
            raise ValueError(
                f"unknown mixer {self.mixer!r}; registered mixers: {', '.join(sorted(REGISTRY))}"
            )
        cls = REGISTRY[self.mixer]
        given = dict(self.__pydantic_extra__ or {})
        allowed = sorted(cls.Params.model_fields)
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {', '.join(map(repr, unknown))} for mixer {self.mixer!r}; "
                f"allowed: {', '.join(allowed)}"
            )
        try:
            parsed = cls.Params.model_validate(given)
        except ValidationError as err:
            first = err.errors()[0]
            name = ".".join(str(p) for p in first["loc"])
            raise ValueError(
                f"mixer {self.mixer!r} parameter {name}={first.get('input')!r}: {first['msg']}"
            ) from None
        # Keep only what the user set, coerced to its declared type: specs stay short and exact.
        self.__pydantic_extra__ = parsed.model_dump(exclude_unset=True, mode="json")
        return self

    @property
    def params(self) -> dict[str, Any]:
        """The mixer parameters the user set (defaults live in the mixer's `Params`)."""
        return dict(self.__pydantic_extra__ or {})


def _parse_ratio(ratio: str, keys: list[str]) -> str:
    parts = ratio.split(":")
    if len(parts) != len(keys) or not all(p.strip().isdigit() for p in parts):
        raise _field_error("ratio", f"{ratio!r} must be counts separated by ':' with one count per pattern_map key "
            f"({', '.join(keys)}), e.g. '7:1'",
        )
    return "".join(key * int(count) for key, count in zip(keys, parts))


def _expand_shorthand(data: dict[str, Any]) -> dict[str, Any]:
    """Turn `pattern`/`ratio` + `pattern_map` into an explicit `layers` list."""
    pattern, ratio = data.pop("pattern", None), data.pop("ratio", None)
    pattern_map = data.pop("pattern_map", None)
    if pattern is None and ratio is None:
        if pattern_map is not None:
            raise _field_error("pattern_map", "given without 'pattern' or 'ratio'; add one of them")
        return data
    if pattern is not None and ratio is not None:
        raise _field_error("pattern", "give either 'pattern' or 'ratio', not both")
    if data.get("layers") is not None:
        raise _field_error("layers", "give either explicit 'layers' or a 'pattern'/'ratio' shorthand, not both")
    if not isinstance(pattern_map, dict) or not pattern_map:
        raise _field_error("pattern_map", "required with 'pattern' or 'ratio': a dict like {'L': 'lightning', 'S': 'softmax'}")
    if ratio is not None:
        pattern = _parse_ratio(str(ratio), list(pattern_map))
    if not isinstance(pattern, str) or not pattern:
        raise _field_error("pattern", f"{pattern!r} must be a non-empty string of pattern_map keys, e.g. 'LLLS'")
    missing = sorted(set(pattern) - set(pattern_map))
    if missing:
        raise _field_error("pattern", f"{pattern!r} uses {', '.join(map(repr, missing))} which pattern_map does not define "
            f"(defined: {', '.join(map(repr, pattern_map))})",
        )
    n_layers = data.setdefault("n_layers", len(pattern))
    if not isinstance(n_layers, int) or n_layers <= 0:
        n_layers = len(pattern)  # the n_layers field check reports the bad value
    layers = []
    for i in range(n_layers):
        entry = pattern_map[pattern[i % len(pattern)]]
        layers.append({"mixer": entry} if isinstance(entry, str) else dict(entry))
    data["layers"] = layers
    return data


class ArchSpec(BaseModel):
    """A hybrid language model: sizes, block options and one `LayerSpec` per layer."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    name: str = "hybrid"
    vocab_size: int = Field(gt=0)
    d_model: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_kv_heads: int | None = Field(default=None, gt=0)
    d_head: int | None = Field(default=None, gt=0)
    mlp: MLPKind = "swiglu"
    mlp_ratio: float = Field(default=4.0, gt=0)
    moe: MoESpec | None = None  # the experts of the layers whose mlp is "moe"
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_eps: float = Field(default=1e-5, gt=0)
    tie_embeddings: bool = True
    bias: bool = False
    rope_base: float = Field(default=10000.0, gt=0)
    # Multiplier of tied-embedding logits. None: 1/sqrt(d_model), which keeps logits at unit scale
    # with unit-variance embeddings; models imported from elsewhere set 1.0.
    logit_scale: float | None = Field(default=None, gt=0)
    layers: list[LayerSpec]

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = _expand_shorthand(dict(data))
        return data

    @model_validator(mode="after")
    def _check_shapes(self, info) -> "ArchSpec":
        limits: SpecLimits = (info.context or {}).get("limits", DEFAULT_LIMITS)
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                    f"pick n_heads from {_divisors(self.d_model)} or set d_head explicitly"
                )
            self.d_head = self.d_model // self.n_heads
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}; "
                f"allowed: {_divisors(self.n_heads)}"
            )
        if len(self.layers) != self.n_layers:
            raise ValueError(
                f"layer count mismatch: n_layers={self.n_layers} but {len(self.layers)} layers are listed; "
                f"list exactly n_layers layers or use the 'pattern' shorthand"
            )
        from studio.mixers import REGISTRY

        for i, layer in enumerate(self.layers):
            problem = REGISTRY[layer.mixer].Params(**layer.params).check_shape(self.n_heads, self.d_head)
            if problem:
                raise ValueError(f"layers[{i}] ({layer.mixer}): {problem}")
        self._check_moe()
        checks = [
            ("n_layers", self.n_layers, limits.max_layers, "STUDIO_MAX_LAYERS"),
            ("d_model", self.d_model, limits.max_d_model, "STUDIO_MAX_D_MODEL"),
            ("vocab_size", self.vocab_size, limits.max_vocab, "STUDIO_MAX_VOCAB"),
            ("parameters (estimated)", self.estimated_params(), limits.max_params, "STUDIO_MAX_PARAMS"),
        ]
        for field, value, cap, env in checks:
            if value > cap:
                raise ValueError(
                    f"{field}={value:,.0f} is over the size cap of {cap:,.0f}; "
                    f"make the model smaller or raise the cap with {env}"
                )
        return self

    def _check_moe(self) -> None:
        moe_layers = [i for i in range(self.n_layers) if self.layer_mlp(i) == "moe"]
        if moe_layers and self.moe is None:
            field = "mlp" if self.mlp == "moe" else f"layers[{','.join(map(str, moe_layers))}].mlp"
            raise _field_error(field, "'moe' needs a 'moe' block of experts; add one, e.g. "
                               "\"moe\": {\"n_experts\": 8, \"top_k\": 2}, or pick mlp 'swiglu'")
        if self.moe is not None and not moe_layers:
            raise _field_error("moe", "given but no layer uses it; set \"mlp\": \"moe\" (for every layer, or in "
                               "a layer's own dict) or remove the 'moe' block")
        if self.moe is not None:
            if self.moe.expert_ratio is None:
                self.moe.expert_ratio = self.mlp_ratio
            if self.d_expert < 1:
                raise _field_error("moe.expert_ratio", f"{self.moe.expert_ratio} * d_model={self.d_model} rounds to "
                                   f"an expert width of 0; use expert_ratio >= {1 / self.d_model:.3g}")

    def layer_mlp(self, index: int) -> str:
        """The feed-forward kind of layer `index`: its own `mlp`, else the spec's."""
        return self.layers[index].mlp or self.mlp

    @property
    def resolved_logit_scale(self) -> float:
        return self.d_model**-0.5 if self.logit_scale is None else self.logit_scale

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def d_mlp(self) -> int:
        return int(round(self.mlp_ratio * self.d_model))

    @property
    def d_expert(self) -> int:
        """Hidden width of each MoE expert (0 without a `moe` block)."""
        ratio = (self.moe.expert_ratio or self.mlp_ratio) if self.moe is not None else 0.0
        return int(round(ratio * self.d_model))

    def estimated_params(self) -> int:
        """A quick count (projections, MLPs, experts, embeddings) for the size cap; `studio.summary` is exact."""
        d, h, kv, dh = self.d_model, self.n_heads, self.n_kv_heads or self.n_heads, self.d_head or 1
        attn = 2 * d * h * dh + 2 * d * kv * dh
        matrices = {"none": 0, "gelu": 2, "swiglu": 3}
        total = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        for i in range(self.n_layers):
            kind = self.layer_mlp(i)
            if kind == "moe":
                moe = self.moe
                experts = moe.n_experts + moe.shared_experts
                mlp = d * moe.n_experts + experts * matrices[moe.expert_mlp] * d * self.d_expert
            else:
                mlp = matrices[kind] * d * self.d_mlp
            total += attn + mlp
        return total

    # ---- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def resolved(self) -> dict[str, Any]:
        """`to_dict` with every default written out, each mixer's own parameters and each layer's
        feed-forward too: what a model built from this spec runs today. A changed default shows as a
        difference between two of these (`studio.ablate` keeps one per cell)."""
        from studio.mixers import REGISTRY

        data = self.to_dict()
        for i, (layer, out) in enumerate(zip(self.layers, data["layers"])):
            out.update(REGISTRY[layer.mixer].Params.model_validate(layer.params).model_dump(mode="json"))
            out["mlp"] = self.layer_mlp(i)
        return data

    def to_json(self, path: str | os.PathLike | None = None, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: Any, limits: SpecLimits | None = None) -> "ArchSpec":
        """Validate a dict; raise `SpecError` (never a pydantic or torch trace) on bad input."""
        if not isinstance(data, dict):
            raise SpecError([("", f"a spec must be a mapping of fields, got {type(data).__name__}")])
        try:
            context = {"limits": limits} if limits is not None else None
            return cls.model_validate(data, context=context)
        except ValidationError as err:
            raise SpecError(_problems(err)) from None

    @classmethod
    def from_json(cls, source: str | os.PathLike, limits: SpecLimits | None = None) -> "ArchSpec":
        """A JSON string or the path of a JSON file."""
        text = _read_source(source, "{")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError([("", f"not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}")]) from None
        return cls.from_dict(data, limits)

    @classmethod
    def from_yaml(cls, source: str | os.PathLike, limits: SpecLimits | None = None) -> "ArchSpec":
        """A YAML string or the path of a YAML file."""
        text = _read_source(source, None)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise SpecError([("", f"not valid YAML: {err}")]) from None
        return cls.from_dict(data, limits)

    @classmethod
    def load(cls, path: str | os.PathLike, limits: SpecLimits | None = None) -> "ArchSpec":
        """A spec file, JSON or YAML by its suffix."""
        p = Path(path)
        if not p.is_file():
            raise SpecError([("", f"no spec file at {str(p)!r}")])
        if p.suffix.lower() in (".yaml", ".yml"):
            return cls.from_yaml(p, limits)
        return cls.from_json(p, limits)


def _read_source(source: str | os.PathLike, json_start: str | None) -> str:
    """A spec given as text or as the path of a file; a missing file is named as such."""
    if isinstance(source, os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise SpecError([("", f"no spec file at {str(path)!r}")])
        return path.read_text()
    stripped = source.strip()
    if "\n" not in stripped and not stripped.startswith("{") and len(stripped) < 4096:
        path = Path(stripped)
        if path.is_file():
            return path.read_text()
        if path.suffix.lower() in (".json", ".yaml", ".yml"):
            raise SpecError([("", f"no spec file at {stripped!r}")])
    return source


def _field_error(field: str, message: str) -> ValueError:
    return ValueError(f"{field}: {message}")


def _divisors(n: int) -> list[int]:
    return [i for i in range(1, n + 1) if n % i == 0]


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "model")):  # pydantic's validator frames, not fields
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _problems(err: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        field = _loc(e["loc"])
        if e["type"] == "extra_forbidden" and e["loc"][:1] == ("moe",):
            msg = f"unknown field; allowed fields of 'moe': {', '.join(MoESpec.model_fields)}"
        elif e["type"] == "extra_forbidden":
            msg = f"unknown field; allowed fields: {', '.join([*ArchSpec.model_fields, 'pattern', 'ratio', 'pattern_map'])}"
        elif e["type"] not in ("value_error",) and "input" in e and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        problems.append((field, msg))
    return _merge_layers(problems)


def _merge_layers(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One line for the same problem in several layers: 'layers[0,1,2].window: ...'."""
    merged: dict[tuple[str, str], list[str]] = {}
    for field, msg in problems:
        match = re.fullmatch(r"layers\[(\d+)\](.*)", field)
        key = (f"layers[{{}}]{match.group(2)}", msg) if match else (field, msg)
        merged.setdefault(key, []).append(match.group(1) if match else "")
    return [(field.format(",".join(idx)) if "{}" in field else field, msg) for (field, msg), idx in merged.items()]
