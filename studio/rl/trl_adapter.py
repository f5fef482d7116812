"""Rhythm credit and the studio's policy losses inside TRL's `GRPOTrainer` (for users who outgrow the studio).

`CreditGRPOTrainer` is a subclass of `trl.GRPOTrainer` (written against TRL 1.16.0) that replaces only the
loss: TRL still generates the rollouts, calls the reward functions, computes the group advantages, the old /
reference log-probs, logging, checkpointing and everything else. In each loss call it

1. runs ONE extra no-grad forward of the policy on prompt + completion with `output_attentions=True`, keeps
   the attention patterns of the middle layers (`analyses.metrics.select_layers`: 5 evenly spaced layers
   between floor(L/3) and floor(2L/3)), and builds every sequence's preplan-and-anchor rhythm over its
   completion (response_start = the real prompt length) with the public metric functions of
   `analyses.rhythm.series_from_patterns` plus `analyses.metrics` (waad_delta, top_q), the same steps as
   `analyses.rhythm` (REFERENCE.md section 4);
2. turns the rhythm into a per-token credit gamma with `studio.rl.credit.gamma` (strategy `credit`,
   parameters `credit_params`) and scales TRL's advantages, A_t -> gamma_t A_t (`apply_credit`, gamma
   detached; `credit_signs="both"` scales both signs as the paper's v2, "positive" only A >= 0 as v1);
3. computes the policy loss with `studio.rl.losses` (`policy_loss="cispo"` default, "grpo" or "dapo") on
   TRL's per-token log-probs, and logs the loss and credit statistics through TRL's metrics dict
   (keys `studio/...` and `credit/...`, next to TRL's own `entropy`, `kl`, rewards, ...).

The model MUST use eager attention: SDPA / flash kernels never materialise the attention matrix, and
transformers returns no attentions for them. Load it with `attn_implementation="eager"` (for a model id:
`GRPOConfig(model_init_kwargs={"attn_implementation": "eager"})`); the trainer checks this at construction
and raises a ValueError otherwise.

Usage::

    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig
    from studio.rl.trl_adapter import CreditGRPOTrainer

    model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen3-0.6B", attn_implementation="eager")
    trainer = CreditGRPOTrainer(
        model=model,
        reward_funcs=my_reward,                    # anything TRL accepts
        args=GRPOConfig(output_dir="out", num_generations=8, max_completion_length=256),
        train_dataset=dataset,                     # a "prompt" column, as for GRPOTrainer
        credit="coupled",                          # none | local | anchor | coupled | random | entropy
        credit_params={"amp": 1.5, "q": 0.4},      # keyword arguments of studio.rl.credit.gamma
        credit_signs="both",                       # or "positive" (paper v1)
        policy_loss="cispo",                       # or "grpo" / "dapo"
        loss_params={"eps_high": 4.0},             # keyword arguments of the studio loss
    )
    trainer.train()

Clip conventions (REFERENCE.md section 6). TRL's `loss_type`, `epsilon` and `epsilon_high` are NOT read by
this loss: `policy_loss` and `loss_params` decide, with the studio functions' defaults.
- cispo: `cispo_loss(eps_high=4.0, eps_low=None, ratio_cap="relative")` caps the (detached) ratio weight at
  1 + eps_high = 5.0 with no lower bound. TRL's `loss_type="cispo"` reads `epsilon_high` as an ABSOLUTE
  cap (clamp(r, max=epsilon_high)), so TRL with `epsilon_high=5.0` is our default; to copy a TRL run with
  `epsilon_high=E` pass `loss_params={"eps_high": E, "ratio_cap": "absolute"}`. verl's two-sided cispo
  [0.8, 1.2] is `loss_params={"eps_high": 0.2, "eps_low": 0.2}`.
- grpo: symmetric clip(r, 1-eps, 1+eps), `eps=0.2`; `loss_params={"norm": "sequence"}` gives TRL's
  `loss_type="grpo"` sequence-mean aggregation (default "token": TRL's "bnpo").
- dapo: clip-higher [1 - 0.2, 1 + 0.28].
Aggregation: the studio losses average over the valid completion tokens of the micro-batch (TRL's "bnpo"
reading); the result is divided by the gradient-accumulation steps in training, as TRL does.
`aggregation="global"` instead rescales the token sum by TRL's `num_items_in_batch` normaliser (TRL's
"dapo"/"cispo" reading, tokens counted over the whole generation batch).

TRL pieces kept: the KL penalty (`beta`, k3 estimator as in TRL, token-averaged over the micro-batch), the
MoE aux loss, and the per-token multipliers TRL applies to the loss (off-policy mask, top-entropy mask,
vLLM importance-sampling correction). These multipliers are >= 0 and detached, so they are folded into the
advantages: for CISPO -w rhat A logp = -rhat (wA) logp and for the clipped surrogate
-w min(rA, clip(r)A) = -min(r wA, clip(r) wA) for w >= 0, i.e. exactly TRL's per-token loss times w.
Refused with a clear error: `importance_sampling_level="sequence"` (the studio losses are token-level), the
entropy bonus (`entropy_coef`, `use_adaptive_entropy`) and `delta` (two-sided clipping).

verl. The same functions slot into verl's policy-loss registry: verl (`verl.trainer.ppo.core_algos`)
registers policy losses by name with the decorator `register_policy_loss("name")`, and the actor looks the
function up from `actor.policy_loss.loss_mode` (older versions: `actor.loss_mode`). The signature is
roughly `fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
rollout_is_weights=None)`; older versions return `(pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower)`,
newer ones `(pg_loss, metrics_dict)`; check the installed version. Note the argument ORDER: verl passes
old_log_prob first, the studio losses take logp first. `verl_policy_loss` below builds such a function
(verl stays optional, nothing here imports it)::

    from verl.trainer.ppo.core_algos import register_policy_loss
    from studio.rl.trl_adapter import verl_policy_loss
    register_policy_loss("studio_cispo")(verl_policy_loss("cispo", eps_high=4.0))
    # then: actor_rollout_ref.actor.policy_loss.loss_mode=studio_cispo

The policy-loss function sees no model, so in verl the rhythm credit has to be applied to the advantages
before the loss: compute the attentions in the actor (eager attention), build gamma with
`credit_gamma_from_attentions` and multiply `data["advantages"]` by it (e.g. in a custom advantage
estimator registered with verl's `register_adv_est`, or in the actor's `update_policy`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from analyses.metrics import select_layers, top_q, waad_delta
from analyses.rhythm import Rhythm, series_from_patterns
from studio.rl import credit as credit_lib
from studio.rl.losses import cispo_loss, dapo_loss, grpo_loss

try:  # TRL is an optional extra (`pip install hybrid-attention-studio[rl]`)
    import trl
    from trl import GRPOTrainer as _GRPOTrainer

    TRL_IMPORT_ERROR: Exception | None = None
except Exception as error:  # pragma: no cover - exercised only without trl
    trl = None
    TRL_IMPORT_ERROR = error

    class _GRPOTrainer:  # type: ignore[no-redef]
        def __init__(self, *args, **kwargs):
            raise ImportError(
                "CreditGRPOTrainer needs TRL: pip install 'trl==1.16.0' (or the studio's [rl] extra); "
                f"importing trl failed with: {TRL_IMPORT_ERROR!r}"
            )


__all__ = [
    "POLICY_LOSSES",
    "TESTED_TRL_VERSION",
    "CreditGRPOTrainer",
    "rhythms_from_attentions",
    "credit_gamma_from_attentions",
    "credit_policy_loss",
    "verl_policy_loss",
]

TESTED_TRL_VERSION = "1.16.0"
POLICY_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, dict[str, float]]]] = {
    "cispo": cispo_loss,
    "grpo": grpo_loss,
    "dapo": dapo_loss,
}
RHYTHM_KEYS = ("layers", "q_heads", "window", "h_lo", "h_hi")


# ------------------------------------------------------------------------------------ rhythm from HF attentions


def _layer_list(attentions) -> list[torch.Tensor]:
    if attentions is None or len(attentions) == 0:
        raise ValueError(
            "no attention patterns: the model returned no attentions for output_attentions=True; it must run "
            "eager attention (load it with attn_implementation='eager', or call "
            "model.set_attn_implementation('eager'))"
        )
    layers = list(attentions)
    for i, a in enumerate(layers):
        if a is None or a.ndim != 4 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"attentions[{i}] must be a [B, H, T, T] tensor, got "
                             f"{None if a is None else tuple(a.shape)}")
    return layers


def _row_rhythm(patterns: dict[int, torch.Tensor], tokens: torch.Tensor, response_start: int, layers: list[int],
                q_heads: float, window: int | None, h_lo: int, h_hi: int | None, q: float,
                entropy: torch.Tensor | None) -> Rhythm:
    """Steps 1-5 of `analyses.rhythm` from the selected layers' patterns {layer: [H, n, n]} of one sequence,
    from `analyses.rhythm.series_from_patterns` (no statistics: RL does not need them)."""
    spans, local_heads, global_heads, waad_t, fai_t = series_from_patterns(
        patterns, response_start, layers, q_heads, window, h_lo, h_hi)
    delta = waad_delta(waad_t)
    return Rhythm(
        layers=list(layers), head_span=spans, local_heads=local_heads, global_heads=global_heads,
        waad=waad_t, waad_delta=delta, fai=fai_t, preplan=top_q(delta, q, response_start),
        anchors=top_q(fai_t, q, response_start), entropy=entropy, statistics={}, tokens=tokens,
        response_start=int(response_start),
    )


def rhythms_from_attentions(
    attentions: Sequence[torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_starts: Sequence[int] | torch.Tensor,
    *,
    layers: Sequence[int] | None = None,
    q_heads: float = 0.3,
    window: int | None = 10,
    h_lo: int = 10,
    h_hi: int | None = 100,
    q: float = 0.4,
    entropy: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> list[Rhythm | None]:
    """One `analyses.rhythm.Rhythm` per row from a Hugging Face forward's `attentions` (eager attention).

    attentions: per-layer [B, H, T, T] (the `output_attentions=True` tuple, all layers). input_ids,
    attention_mask: [B, T]; padding may sit on the left (TRL's prompts) and on the right (completions): each
    row's real tokens (mask 1) must be contiguous, and only the [H, n, n] block of those tokens is used
    (queries never attend to masked keys, and rotary position offsets cancel). response_starts[b]: the
    index of the first response token AMONG ROW b's REAL TOKENS (= its real prompt length). layers: the
    analysed layers (default `select_layers(L)`, the paper's middle layers); q_heads, window, h_lo, h_hi,
    q: as in `analyses.rhythm.rhythm`. entropy: optional [B, T] next-token entropies aligned with the input
    positions (only strategy "entropy" uses them). dtype: of the analysis (default float64, float32 on mps).
    A row with no response token (response_start >= n) gives None."""
    all_layers = _layer_list(attentions)
    n_layers = len(all_layers)
    layers = select_layers(n_layers) if layers is None else sorted({int(layer) for layer in layers})
    if not layers or layers[0] < 0 or layers[-1] >= n_layers:
        raise ValueError(f"layers must be a non-empty subset of 0..{n_layers - 1}, got {layers}")
    input_ids = torch.as_tensor(input_ids)
    mask = torch.as_tensor(attention_mask).to(torch.bool)
    b, t = input_ids.shape
    if mask.shape != (b, t):
        raise ValueError(f"attention_mask must have input_ids' shape {(b, t)}, got {tuple(mask.shape)}")
    if all_layers[0].shape[0] != b or all_layers[0].shape[-1] != t:
        raise ValueError(f"attentions are {tuple(all_layers[0].shape)} but input_ids is {(b, t)}")
    starts = [int(s) for s in torch.as_tensor(response_starts).reshape(-1).tolist()]
    if len(starts) != b:
        raise ValueError(f"need one response start per row ({b}), got {len(starts)}")
    if dtype is None:
        dtype = torch.float32 if all_layers[0].device.type == "mps" else torch.float64
    out: list[Rhythm | None] = []
    for row in range(b):
        idx = torch.nonzero(mask[row]).flatten()
        n = int(idx.numel())
        if n and int(idx[-1] - idx[0]) + 1 != n:
            raise ValueError(f"row {row}: the real tokens (attention_mask 1) must be contiguous")
        start = starts[row]
        if not 0 <= start <= n:
            raise ValueError(f"row {row}: response_start must lie in [0, {n}], got {start}")
        if start >= n:
            out.append(None)
            continue
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        patterns = {layer: all_layers[layer][row, :, lo:hi, lo:hi].detach().to(dtype) for layer in layers}
        if not all(bool(torch.isfinite(pattern).all()) for pattern in patterns.values()):
            raise ValueError(f"row {row}: the attention patterns hold NaN/inf (a float64 model with padding gives "
                             "NaN in transformers' eager masking; run the model in float32/bfloat16)")
        ent = None if entropy is None else entropy[row, lo:hi].detach().to(dtype)
        out.append(_row_rhythm(patterns, input_ids[row, lo:hi], start, layers, q_heads, window, h_lo, h_hi, q,
                               ent))
    return out


def credit_gamma_from_attentions(
    attentions: Sequence[torch.Tensor],
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    strategy: str = "coupled",
    credit_params: dict[str, Any] | None = None,
    rhythm_params: dict[str, Any] | None = None,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[Rhythm | None]]:
    """Per-completion-token credit gamma [B, C] from the attentions of the forward on cat(prompt, completion).

    TRL's layout: prompts [B, P] left-padded (prompt_mask), completions [B, C] right-padded
    (completion_mask, 1 up to and including EOS). Row b's response starts at its real prompt length
    prompt_mask[b].sum(). gamma[b, j] is the credit of completion token j (`studio.rl.credit.gamma` with
    `strategy` and `credit_params`, e.g. amp, q, k, alpha, tau_waad, tau_delta, seed); padding and rows with
    an empty completion get 1. `credit_params["q"]` is also the rhythm's q (share of R marked preplan /
    anchor). rhythm_params: layers, q_heads, window, h_lo, h_hi. entropy: [B, C] entropies of the
    next-token distributions computed AT the completion positions (needed by strategy "entropy" only).
    Returns (gamma float32 on completion_ids' device, the rhythms)."""
    credit_params = dict(credit_params or {})
    rhythm_params = dict(rhythm_params or {})
    unknown = set(rhythm_params) - set(RHYTHM_KEYS)
    if unknown:
        raise ValueError(f"unknown rhythm_params {sorted(unknown)}; allowed: {', '.join(RHYTHM_KEYS)}")
    credit_lib._choice("credit", strategy, credit_lib.STRATEGIES)
    b, c = completion_ids.shape
    p = prompt_ids.shape[1]
    gamma = torch.ones((b, c), dtype=torch.float32, device=completion_ids.device)
    if strategy == "none":
        return gamma, [None] * b
    if strategy == "entropy" and entropy is None:
        raise ValueError("credit 'entropy' needs the completion entropies (entropy=[B, C])")
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    full_entropy = None
    if entropy is not None:
        full_entropy = torch.zeros((b, p + c), dtype=entropy.dtype, device=entropy.device)
        full_entropy[:, p:] = entropy
    starts = prompt_mask.to(torch.long).sum(dim=1)
    rhythms = rhythms_from_attentions(attentions, input_ids, mask, starts, q=credit_params.get("q", credit_lib.Q),
                                      entropy=full_entropy, **rhythm_params)
    for row, rhythm in enumerate(rhythms):
        if rhythm is None:
            continue
        start = rhythm.response_start
        g = credit_lib.gamma(rhythm, strategy, **credit_params)[0]  # [n], 1 before start
        resp = g[start:]
        gamma[row, : resp.shape[0]] = resp.to(gamma.device, gamma.dtype)
    return gamma.detach(), rhythms


# ------------------------------------------------------------------------------------ the loss with credit


def credit_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    gamma: torch.Tensor | None = None,
    *,
    policy_loss: str = "cispo",
    signs: str = "both",
    loss_params: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The studio policy loss on credited advantages: POLICY_LOSSES[policy_loss](logp, old_logp,
    apply_credit(A, gamma, signs), mask, **loss_params). advantages: [B, T] or per-sequence [B] / [B, 1]
    (broadcast over tokens). gamma None: no credit (plain studio loss)."""
    if policy_loss not in POLICY_LOSSES:
        raise ValueError(f"policy_loss must be one of {', '.join(map(repr, POLICY_LOSSES))}; got {policy_loss!r}")
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    advantages = advantages.expand_as(logp)
    if gamma is not None:
        advantages = credit_lib.apply_credit(advantages, gamma, signs)
    return POLICY_LOSSES[policy_loss](logp, old_logp, advantages, mask, **dict(loss_params or {}))


# ------------------------------------------------------------------------------------ the TRL trainer


def _unwrap(trainer, model):
    try:
        return trainer.accelerator.unwrap_model(model)
    except Exception:  # pragma: no cover - accelerate not set up yet
        return model


def _attn_implementation(model) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) if config is not None else None


class CreditGRPOTrainer(_GRPOTrainer):
    """`trl.GRPOTrainer` with the studio's rhythm credit and policy loss (TRL 1.16.0; see the module docstring).

    Extra constructor arguments (all keyword):
      credit:        "none" | "local" | "anchor" | "coupled" (default) | "random" | "entropy"
                     (`studio.rl.credit.STRATEGIES`).
      credit_params: keyword arguments of `studio.rl.credit.gamma` (amp=1.5, q=0.4, k=3, alpha=0.5,
                     tau_waad, tau_delta, seed); q is also the rhythm's top-q share.
      credit_signs:  "both" (paper v2, default) or "positive" (v1: only A >= 0 scaled).
      rhythm_params: layers (default: the 5 middle layers), q_heads=0.3, window=10, h_lo=10, h_hi=100.
      policy_loss:   "cispo" (default) | "grpo" | "dapo" (`studio.rl.losses`).
      loss_params:   keyword arguments of that loss (defaults: the studio's, NOT TRL's epsilon /
                     epsilon_high). CISPO convention: ours is relative, upper cap 1 + eps_high (5.0 by
                     default) and no lower bound; TRL's `loss_type="cispo"` caps at the absolute
                     `epsilon_high`; pass `{"ratio_cap": "absolute", "eps_high": E}` to reproduce it.
      aggregation:   "local" (default): the studio loss's own token mean over the micro-batch, divided by
                     the gradient-accumulation steps; "global": TRL's dapo/cispo normaliser
                     (num_items_in_batch over the generation batch).
    Overridden TRL internals: `_compute_loss(model, inputs)` (called by `compute_loss`). The model must use
    eager attention (checked here, ValueError otherwise).

    After each loss call `last_gamma` ([B, C] CPU tensor), `last_stats` (the loss and credit statistics)
    and `credit_calls` (how many loss calls computed a credit) are updated, for inspection and tests."""

    def __init__(
        self,
        *args,
        credit: str = "coupled",
        credit_params: dict[str, Any] | None = None,
        credit_signs: str = "both",
        rhythm_params: dict[str, Any] | None = None,
        policy_loss: str = "cispo",
        loss_params: dict[str, Any] | None = None,
        aggregation: str = "local",
        **kwargs,
    ):
        credit_lib._choice("credit", credit, credit_lib.STRATEGIES)
        credit_lib._choice("credit_signs", credit_signs, credit_lib.SIGNS)
        credit_lib._choice("policy_loss", policy_loss, tuple(POLICY_LOSSES))
        credit_lib._choice("aggregation", aggregation, ("local", "global"))
        rhythm_params = dict(rhythm_params or {})
        unknown = set(rhythm_params) - set(RHYTHM_KEYS)
        if unknown:
            raise ValueError(f"unknown rhythm_params {sorted(unknown)}; allowed: {', '.join(RHYTHM_KEYS)}")
        credit_params = dict(credit_params or {})
        if credit != "none":  # fail early on bad credit parameters rather than mid-training
            allowed = {"amp", "q", "k", "alpha", "tau_waad", "tau_delta", "generator", "seed"}
            bad = set(credit_params) - allowed
            if bad:
                raise ValueError(f"unknown credit_params {sorted(bad)}; allowed: {', '.join(sorted(allowed))}")
        super().__init__(*args, **kwargs)
        self.credit = credit
        self.credit_params = credit_params
        self.credit_signs = credit_signs
        self.rhythm_params = rhythm_params
        self.policy_loss = policy_loss
        self.loss_params = dict(loss_params or {})
        self.aggregation = aggregation
        self.last_gamma: torch.Tensor | None = None
        self.last_stats: dict[str, float] = {}
        self.credit_calls = 0
        if self.credit == "random" and "generator" not in self.credit_params and "seed" in self.credit_params:
            # one generator for the whole run: a fixed seed per call would draw the same positions every step
            self.credit_params["generator"] = torch.Generator().manual_seed(int(self.credit_params.pop("seed")))
        self._check_supported()

    # -------------------------------------------------------------------------------- checks

    def _check_supported(self) -> None:
        args = self.args
        if getattr(args, "importance_sampling_level", "token") != "token":
            raise ValueError("CreditGRPOTrainer: importance_sampling_level must be 'token' (the studio losses and "
                             "the credit are per token); got " + repr(args.importance_sampling_level))
        if getattr(self, "_entropy_bonus_enabled", False) or getattr(args, "use_adaptive_entropy", False):
            raise ValueError("CreditGRPOTrainer does not reproduce TRL's entropy bonus; set entropy_coef=0.0 and "
                             "use_adaptive_entropy=False")
        if getattr(args, "delta", None) is not None:
            raise ValueError("CreditGRPOTrainer does not support `delta` (two-sided clipping); leave it None")
        if self.credit != "none":
            model = _unwrap(self, self.model)
            impl = _attn_implementation(model)
            if impl != "eager":
                raise ValueError(
                    f"CreditGRPOTrainer(credit={self.credit!r}) reads attention patterns and needs eager attention, "
                    f"but the model uses {impl!r}. Load it with attn_implementation='eager' (for a model id: "
                    "GRPOConfig(model_init_kwargs={'attn_implementation': 'eager'})) or call "
                    "model.set_attn_implementation('eager'); credit='none' needs no attentions."
                )

    # -------------------------------------------------------------------------------- credit

    @torch.no_grad()
    def compute_credit(self, model, inputs) -> tuple[torch.Tensor, list[Rhythm | None]]:
        """gamma [B, C] for a TRL batch: one extra no-grad forward with output_attentions=True (eval mode,
        so no dropout), then `credit_gamma_from_attentions`."""
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        if self.credit == "none":
            return torch.ones(completion_ids.shape, dtype=torch.float32, device=completion_ids.device), []
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        impl = _attn_implementation(_unwrap(self, model))
        if impl != "eager":
            raise ValueError(f"rhythm credit needs eager attention; the model now uses {impl!r} "
                             "(model.set_attn_implementation('eager'))")
        # for entropy credit, the logits at the completion positions; otherwise only the last one (memory)
        keep = completion_ids.shape[1] if self.credit == "entropy" else 1
        was_training = model.training
        model.eval()
        try:
            outputs = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True,
                            use_cache=False, logits_to_keep=keep)
        finally:
            model.train(was_training)
        entropy = None
        if self.credit == "entropy":
            logp = torch.log_softmax(outputs.logits[:, -keep:].float(), dim=-1)
            entropy = -(logp.exp() * logp).sum(-1)
        return credit_gamma_from_attentions(outputs.attentions, prompt_ids, prompt_mask, completion_ids,
                                            completion_mask, self.credit, self.credit_params, self.rhythm_params,
                                            entropy)

    def _record(self, mode: str, stats: dict[str, float]) -> None:
        for key, value in stats.items():
            value = float(value)
            tensor = torch.tensor(value, dtype=torch.float64, device=self.accelerator.device)
            self._metrics[mode][key].append(self.accelerator.gather(tensor).nanmean().item())

    # -------------------------------------------------------------------------------- TRL override

    def _compute_loss(self, model, inputs):
        """TRL 1.16 `GRPOTrainer._compute_loss`, with the policy term replaced by the studio loss on credited
        advantages (see the class docstring)."""
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        mode = "train" if self.model.training else "eval"

        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{key: inputs.get(key) for key in (
                "pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")},
        )
        old_per_token_logps = inputs.get("old_per_token_logps")
        old_per_token_logps = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps

        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        advantages = advantages.expand_as(per_token_logps)

        # TRL's per-token multipliers (>= 0, constant), folded into the advantages (module docstring)
        weight = torch.ones_like(per_token_logps)
        if self.off_policy_mask_threshold is not None:
            sampling = inputs.get("sampling_per_token_logps", old_per_token_logps)
            weight = weight * self.get_off_policy_mask(advantages[:, :1], per_token_logps, sampling, mask,
                                                       self.off_policy_mask_threshold)
        if self.top_entropy_quantile < 1.0:
            weight = weight * self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)
        if self.use_vllm and self.vllm_importance_sampling_correction:
            weight = weight * inputs["importance_sampling_ratio"]
        advantages = advantages * weight.detach()

        gamma, _ = self.compute_credit(model, inputs)
        mask_bool = mask.to(torch.bool)
        loss, stats = credit_policy_loss(
            per_token_logps, old_per_token_logps, advantages, mask_bool,
            None if self.credit == "none" else gamma,
            policy_loss=self.policy_loss, signs=self.credit_signs, loss_params=self.loss_params,
        )
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        if self.aggregation == "global":
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            loss = loss * mask_bool.sum().clamp(min=1) / normalizer
        else:
            loss = loss / accumulation

        if self.beta != 0.0:
            ref = inputs["ref_per_token_logps"]
            per_token_kl = torch.exp(ref - per_token_logps) - (ref - per_token_logps) - 1
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * torch.exp(per_token_logps - old_per_token_logps)
            maskf = mask.to(per_token_kl.dtype)
            kl = (per_token_kl * maskf).sum() / maskf.sum().clamp(min=1.0)
            loss = loss + self.beta * kl / accumulation
            self._record(mode, {"kl": kl.detach().item()})
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        maskf = mask.to(entropies.dtype)
        entropy_mean = ((entropies * maskf).sum() / maskf.sum().clamp(min=1.0)).item()
        logged = {"entropy": entropy_mean}
        logged.update({f"studio/{key}": value for key, value in stats.items()})
        if self.credit != "none":
            self.credit_calls += 1
            credit_stats = credit_lib.credit_statistics(gamma, mask_bool)
            logged.update({f"credit/{key.removeprefix('credit_')}": value for key, value in credit_stats.items()})
            stats = {**stats, **credit_stats}
        self._record(mode, logged)
        self.last_gamma = gamma.detach().cpu()
        self.last_stats = stats
        return loss


# ------------------------------------------------------------------------------------ verl


def verl_policy_loss(policy_loss: str = "cispo", legacy_tuple: bool = False, **loss_params) -> Callable:
    """A function for verl's policy-loss registry running the studio loss (verl is not imported here).

    Register it with `verl.trainer.ppo.core_algos.register_policy_loss("studio_cispo")(verl_policy_loss(
    "cispo", eps_high=4.0))`. The returned function has (roughly) verl's signature
        fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
           rollout_is_weights=None)
    and returns (pg_loss, {"actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"}) as newer verl
    versions do, or with legacy_tuple=True the older (pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower)
    tensors. Clip ranges come from `loss_params` (the studio defaults), not from verl's config.clip_ratio*.
    loss_agg_mode: "token-mean" (all losses), "seq-mean-token-mean" (grpo only: norm="sequence"); others
    raise. rollout_is_weights (>= 0, detached) are folded into the advantages. Advantages arrive already
    credited: multiply verl's advantages by `credit_gamma_from_attentions` beforehand."""
    if policy_loss not in POLICY_LOSSES:
        raise ValueError(f"policy_loss must be one of {', '.join(map(repr, POLICY_LOSSES))}; got {policy_loss!r}")

    def studio_policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                           config=None, rollout_is_weights=None, **_ignored):
        params = dict(loss_params)
        if loss_agg_mode == "seq-mean-token-mean" and policy_loss == "grpo":
            params["norm"] = "sequence"
        elif loss_agg_mode != "token-mean":
            raise ValueError(f"studio {policy_loss} supports loss_agg_mode 'token-mean'"
                             + (" and 'seq-mean-token-mean'" if policy_loss == "grpo" else "")
                             + f"; got {loss_agg_mode!r}")
        adv = advantages if rollout_is_weights is None else advantages * rollout_is_weights.detach()
        loss, stats = POLICY_LOSSES[policy_loss](log_prob, old_log_prob, adv, response_mask, **params)
        valid = response_mask.to(torch.bool)
        diff = (old_log_prob - log_prob).detach()
        ppo_kl = diff[valid].mean() if bool(valid.any()) else diff.new_zeros(())
        clip_high = torch.tensor(stats["clip_high_frac"], device=log_prob.device)
        clip_low = torch.tensor(stats["clip_low_frac"], device=log_prob.device)
        if legacy_tuple:
            return loss, clip_high, ppo_kl, clip_low
        return loss, {"actor/pg_clipfrac": float(clip_high), "actor/ppo_kl": float(ppo_kl),
                      "actor/pg_clipfrac_lower": float(clip_low)}

    studio_policy_loss.__name__ = f"studio_{policy_loss}_policy_loss"
    return studio_policy_loss
