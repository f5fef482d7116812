"""Linearizing a pretrained softmax model into a hybrid, then fine-tuning it with LoRA.

Liger (Lan et al., arXiv 2503.01496) and Lizard (Van Nguyen et al., arXiv 2507.09025) show that a pretrained
softmax transformer becomes a gated linear hybrid cheaply: swap the attention of most layers for a gated linear
mixer that reuses the pretrained q/k/v/o projections, keep a few softmax layers, and recover the quality with a
short LoRA fine-tune (Hu et al., arXiv 2106.09685). Here:

    student = linearize(teacher, "liger", keep_softmax=[1, 15, 29])   # same shapes, teacher weights reused
    linearize_report(teacher, student)                                # layers changed, parameters reused / new
    inject_lora(student, LoraSettings(rank=8, alpha=16), train_also=report.new_param_names)
    ... studio.train.train(student, task, steps, out) ...             # base frozen; adapters + new params train
    merge_lora(student).save("model")                                 # a plain HybridLM checkpoint

`run_linearize` (`studio linearize`) does all of it into a resumable run directory:

    linearize.json        source, mixer, kept softmax layers, LoRA and training settings, parameters reused / new,
                          status ("training" until model/ is written, then "finished") and final metrics
    run.json, metrics.jsonl, checkpoints/step-N/    the trainer's run (checkpoints hold the model with its adapters)
    model/                the merged HybridLM (config.json + model.safetensors), loadable with HybridLM.load
    model/tokenizer/      the source model's tokenizer folder (SmolLM2's from the pretrained cache)

The fine-tune minimises the plain next-token loss on local text (`studio.tasks.text.Text`); there is no
teacher-student distillation (Liger and Lizard also fine-tune on the language-modelling loss alone).

Mixers: `SUPPORTED_MIXERS` (liger, lizard, gla, gated_delta). Each reuses the standard q/k/v/o projections, so
every teacher weight keeps its place. Liger's gate is computed from the key projection: it adds no parameter.
What is new keeps its fresh init: Lizard's low-rank gate and meta (sink) keys; GLA's low-rank gate, output norm
and swish output gate; Gated DeltaNet's beta and decay projections, decay parameters, short convolution, output
norm and output gate (switch the optional parts off through `mixer_params`, e.g. {"short_conv": 0}).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from studio.checkpoint import (CONFIG_FILE, FORMAT as MODEL_FORMAT, MERGED_MODEL_DIR as MODEL_DIR, TOKENIZER_DIR,
                               atomic_write_text, read_record)
from studio.model import HybridLM, build_model
from studio.spec import ArchSpec

__all__ = [
    "SUPPORTED_MIXERS", "MIXER_DEFAULTS", "DEFAULT_LORA_TARGETS", "LinearizeReport", "LoraSettings", "linearize",
    "linearized_spec", "linearize_report", "inject_lora", "merge_lora", "load_teacher", "run_linearize",
    "read_linearize_run",
]

SUPPORTED_MIXERS = ("liger", "lizard", "gla", "gated_delta")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LINEARIZE_FORMAT = "hybrid-attention-studio/linearize@1"
LINEARIZE_FILE = "linearize.json"
# Defaults of the new layers' mixer parameters in a linearized model (`mixer_params` overrides them): Liger's
# and Lizard's GLA part in chunks of 16 instead of 64 is the same function with a quarter of the memory in
# torch's reference form (its intra-chunk scores are [batch, head, chunk, chunk, d_head]).
MIXER_DEFAULTS = {"liger": {"block_size": 16}, "lizard": {"block_size": 16}}
# Training defaults for a short CPU fine-tune (any TrainConfig field can be given instead).
TRAIN_DEFAULTS = {"batch_size": 2, "lr": 1e-3, "weight_decay": 0.0, "eval_every": 50, "eval_batches": 2,
                  "ckpt_every": 50}
# Options that may differ when a run is continued: where and how it runs, not what it computes.
_RUNTIME_OPTIONS = ("device", "progress")


# ---- the architecture swap ----------------------------------------------------------------------------
def _check_mixer(mixer: str) -> None:
    from studio.mixers import REGISTRY

    if mixer not in SUPPORTED_MIXERS:
        known = "a registered mixer, but " if mixer in REGISTRY else ""
        raise ValueError(f"mixer {mixer!r} is {known}not supported for linearization; choose one of "
                         f"{', '.join(SUPPORTED_MIXERS)} (they reuse the softmax layer's q/k/v/o projections)")


def _check_teacher_and_request(teacher: HybridLM, mixer: str, keep_softmax: Iterable[int]) -> list[int]:
    _check_mixer(mixer)
    spec = teacher.spec
    not_softmax = [i for i, layer in enumerate(spec.layers)
                   if layer.mixer != "softmax" or layer.params.get("qk", "separate") != "separate"
                   or layer.params.get("vo", "separate") != "separate"]
    if not_softmax:
        raise ValueError(f"the teacher must be a softmax model with separate q/k/v/o projections; layers "
                         f"{not_softmax} are not (linearize a pretrained softmax model, e.g. from_hf('smollm2'))")
    keep = list(keep_softmax)
    bad = [i for i in keep if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < spec.n_layers]
    if bad:
        raise ValueError(f"keep_softmax {bad} out of range: layer indices run from 0 to {spec.n_layers - 1} "
                         f"(the teacher has {spec.n_layers} layers)")
    keep = sorted(set(keep))
    if len(keep) == spec.n_layers:
        raise ValueError(f"keep_softmax lists all {spec.n_layers} layers, so nothing would be linearized; "
                         "keep fewer softmax layers")
    return keep


def linearized_spec(spec: ArchSpec, mixer: str, keep_softmax: list[int], mixer_params: dict | None = None) -> ArchSpec:
    """`spec` with `mixer` (and `mixer_params`) in every layer not in `keep_softmax`; the kept layers, the
    sizes and every other field unchanged. New layers keep their layer's positional scheme (RoPE, for Liger and
    Lizard the window part's) and feed-forward; `mixer_params` (over MIXER_DEFAULTS) may also set "positional"."""
    data = spec.to_dict()
    data["name"] = f"{spec.name}-{mixer}"
    params = {**MIXER_DEFAULTS.get(mixer, {}), **(mixer_params or {})}
    data["layers"] = [layer if i in keep_softmax else
                      {"mixer": mixer, "positional": layer["positional"],
                       **({"mlp": layer["mlp"]} if "mlp" in layer else {}), **params}
                      for i, layer in enumerate(data["layers"])]
    return ArchSpec.from_dict(data)


def linearize(teacher: HybridLM, mixer: str, keep_softmax: Iterable[int], mixer_params: dict | None = None,
              seed: int = 0) -> HybridLM:
    """A new hybrid model: the teacher with `mixer` in every layer not in `keep_softmax` (Liger, arXiv
    2503.01496; Lizard, arXiv 2507.09025). Same shapes (n_heads, n_kv_heads, d_head); every teacher weight
    whose name and shape the new model has is copied (embeddings, norms, MLPs, the q/k/v/o projections of
    every layer, the kept layers whole); the mixers' new parameters keep their init (seeded by `seed`). The
    teacher is not modified and shares no storage with the result, which is on the teacher's device and
    dtype, in the teacher's train/eval mode. `linearize_report(teacher, result)` says what changed.

    Raises ValueError for a mixer outside SUPPORTED_MIXERS, a teacher that is not a softmax model, or
    keep_softmax indices out of range; `studio.spec.SpecError` (a ValueError) for bad mixer_params."""
    keep = _check_teacher_and_request(teacher, mixer, keep_softmax)
    student = build_model(linearized_spec(teacher.spec, mixer, keep, mixer_params), seed=seed)
    target = student.state_dict()
    matched = {name: value.detach().to("cpu", torch.float32) for name, value in teacher.state_dict().items()
               if name in target and target[name].shape == value.shape}
    student.load_state_dict(matched, strict=False)  # copies into the student's own tensors
    return student.to(device=teacher.device, dtype=teacher.dtype).train(teacher.training)


@dataclass(frozen=True)
class LinearizeReport:
    """What `linearize` changed: the layers given the new mixer, and the parameters (counted in numbers)
    copied from the teacher or new (at their init), with the new ones' names."""

    mixer: str
    keep_softmax: list[int]
    replaced_layers: list[int]
    reused_params: int
    new_params: int
    new_param_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def linearize_report(teacher: HybridLM, student: HybridLM) -> LinearizeReport:
    """Compare a teacher and its linearized student (by parameter names and shapes, not values)."""
    source = dict(teacher.named_parameters())
    reused, new, names = 0, 0, []
    for name, p in student.named_parameters():
        if name in source and source[name].shape == p.shape:
            reused += p.numel()
        else:
            new += p.numel()
            names.append(name)
    mixers = [layer.mixer for layer in student.spec.layers]
    replaced = [i for i, (a, b) in enumerate(zip(teacher.spec.layers, student.spec.layers)) if a != b]
    changed = sorted({mixers[i] for i in replaced})
    return LinearizeReport(mixer=",".join(changed), keep_softmax=[i for i in range(len(mixers)) if i not in replaced],
                           replaced_layers=replaced, reused_params=reused, new_params=new, new_param_names=names)


# ---- LoRA ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraSettings:
    """LoRA (Hu et al., arXiv 2106.09685): W x + (alpha / rank) B A x on the linear layers whose names end
    with one of `targets` (default: every layer's attention projections), B = 0 at the start, dropout 0."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"LoRA targets must be module names such as {','.join(DEFAULT_LORA_TARGETS)}, "
                             f"got {self.targets!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def inject_lora(model: HybridLM, settings: LoraSettings = LoraSettings(), train_also: Iterable[str] = (),
                seed: int = 0) -> HybridLM:
    """In place (and returned): LoRA adapters through peft (`LoraConfig` + `inject_adapter_in_model`) on every
    linear layer named by `settings.targets`; every weight is then frozen except the adapters and the
    parameters named in `train_also` (e.g. a linearized model's new parameters, which train fully). The model
    computes exactly what it did before (B starts at zero; A's random init is drawn from `seed`, leaving the
    global RNG as it was). Raises ValueError for a target that names no linear layer, or a `train_also` name
    the model does not have."""
    from peft import LoraConfig, inject_adapter_in_model

    linear = _linear_names(model)
    unmatched = [t for t in settings.targets if not any(n == t or n.endswith("." + t) for n in linear)]
    if unmatched:
        short = sorted({n.rsplit(".", 1)[-1] for n in linear if not n.rsplit(".", 1)[-1].isdigit()})
        raise ValueError(f"LoRA target(s) {unmatched} name no linear layer of this model; linear layers end with: "
                         f"{', '.join(short)}")
    params = dict(model.named_parameters())
    missing = [n for n in train_also if n not in params]
    if missing:
        raise ValueError(f"train_also names parameters the model does not have: {missing[:5]}")
    extra = [params[n] for n in train_also]
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=list(settings.targets),
                        lora_dropout=0.0, bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model)
    for p in extra:  # the same tensors, wherever the injection moved them (a targeted layer's base_layer)
        p.requires_grad_(True)
    return model


def merge_lora(model: HybridLM) -> HybridLM:
    """In place (and returned): fold every LoRA adapter into its base weight (W + (alpha / rank) B A) and put
    the plain layer back, so the model is an ordinary `HybridLM` again (every parameter trainable), saved and
    loaded without peft."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in adapted:
        module.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    if "peft_config" in vars(model):
        del model.peft_config
    for p in model.parameters():
        p.requires_grad_(True)
    return model


# ---- sources -------------------------------------------------------------------------------------------
def _is_studio_dir(path: Path) -> bool:
    from studio.train import RUN_FILE

    if (path / RUN_FILE).is_file():
        return True
    try:
        return json.loads((path / CONFIG_FILE).read_text()).get("format") == MODEL_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_teacher(source: str | os.PathLike) -> HybridLM:
    """The model to linearize: "smollm2" (SmolLM2-135M-Instruct, offline), a studio model or run directory
    (`HybridLM.load`), or a local Hugging Face Llama folder (`studio.convert.from_hf`)."""
    from studio.convert import from_hf
    from studio.convert.hf import is_pretrained_name

    source = str(source)
    if not is_pretrained_name(source) and _is_studio_dir(Path(source)):
        return HybridLM.load(source)
    return from_hf(source)


def _canonical_source(source: str | os.PathLike) -> str:
    from studio.convert.hf import is_pretrained_name

    source = str(source)
    return "smollm2" if is_pretrained_name(source) else str(Path(source).expanduser().resolve())


def _copy_tokenizer(source: str, target: Path) -> str | None:
    """Put the source model's tokenizer folder at `target`; returns where it came from (None: it has none)."""
    from studio.convert.hf import TOKENIZER_FILES, load_folder_tokenizer

    if source == "smollm2":
        from studio.pretrained import default_cache_dir

        folder = default_cache_dir() / TOKENIZER_DIR
    elif (Path(source) / TOKENIZER_DIR).is_dir():
        folder = Path(source) / TOKENIZER_DIR
    elif any((Path(source) / f).is_file() for f in TOKENIZER_FILES):
        load_folder_tokenizer(Path(source)).save_pretrained(str(target))
        return source
    else:
        return None
    shutil.copytree(folder, target)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(target, 0o777 & ~umask)  # the cache's folder may be private (mkdtemp); the copy is an ordinary one
    return str(folder)


# ---- the run -------------------------------------------------------------------------------------------
def read_linearize_run(out_dir: str | Path) -> dict:
    """The record (linearize.json) of a run directory written by `run_linearize`."""
    return read_record(Path(out_dir) / LINEARIZE_FILE, LINEARIZE_FORMAT, "it is written by studio linearize")


def _write_record(out: Path, record: dict) -> None:
    atomic_write_text(out / LINEARIZE_FILE, json.dumps(record, indent=2) + "\n")


def _check_same_settings(recorded: dict, settings: dict, out: Path) -> None:
    differ = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
    if differ:
        detail = "; ".join(f"{k}: {recorded.get(k)!r} there, {settings.get(k)!r} now" for k in differ)
        raise ValueError(f"{str(out)!r} holds a linearize run with other settings ({detail}); repeat its own "
                         "command to continue it, or choose another --out")


def _save_merged(model: HybridLM, source: str, out: Path) -> str | None:
    """model/ (merged weights + tokenizer/), written beside and renamed into place."""
    final, tmp = out / MODEL_DIR, out / f".{MODEL_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save(tmp)
        tokenizer_from = _copy_tokenizer(source, tmp / TOKENIZER_DIR)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer_from


def run_linearize(out_dir: str | Path, source: str | os.PathLike, mixer: str, keep_softmax: Iterable[int], *,
                  mixer_params: dict | None = None, lora: LoraSettings = LoraSettings(), corpus: str = "pydoc",
                  seq_len: int = 256, tokenizer: str | None = None, steps: int = 200,
                  callback: Callable[[dict], Any] | None = None, **train_opts: Any) -> dict:
    """Linearize `source` (see `load_teacher`), fine-tune it with LoRA on `corpus` for `steps` steps with the
    studio trainer (next-token loss), merge, and write `out_dir` (see the module docstring). Returns the run
    record (linearize.json).

    Resumable: the same call again continues an interrupted run from its last checkpoint (with the adapters),
    or, when the run is finished, only returns its record. A different setting for an existing run is refused.
    `tokenizer`: the text task's ("smollm2" or "bytes"; default: "smollm2" for the SmolLM2 source, else
    "bytes"). `train_opts`: `TrainConfig` fields over TRAIN_DEFAULTS (warm-up default: steps // 10, at most
    50); `device` and `progress` may change between calls. `callback(record)` sees each metrics record; when it
    returns "stop", training stops after a checkpoint and the run stays resumable (status "training")."""
    from studio import tasks
    from studio.train import METRICS_FILE, RUN_FILE, TrainConfig, read_run, train

    out = Path(out_dir)
    _check_mixer(mixer)  # before any model is loaded
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    source = _canonical_source(source)
    known = {f for f in TrainConfig.__dataclass_fields__}
    unknown = sorted(set(train_opts) - known)
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown}; allowed: {sorted(known)}")
    opts = {**TRAIN_DEFAULTS, "warmup": min(50, steps // 10), **train_opts}
    settings = {
        "source": source, "mixer": mixer, "keep_softmax": sorted(set(keep_softmax)), "mixer_params": mixer_params or {},
        "lora": lora.to_dict(), "corpus": corpus, "seq_len": seq_len,
        "tokenizer": tokenizer or ("smollm2" if source == "smollm2" else "bytes"), "steps": steps,
        "train": {k: v for k, v in sorted(opts.items()) if k not in _RUNTIME_OPTIONS},
    }
    runtime = {k: v for k, v in opts.items() if k in _RUNTIME_OPTIONS}

    record = read_linearize_run(out) if (out / LINEARIZE_FILE).exists() else None
    if record is not None:
        _check_same_settings(record["settings"], settings, out)
        if record.get("status") == "finished" and (out / MODEL_DIR / CONFIG_FILE).is_file():
            return record
    elif (out / RUN_FILE).exists():
        raise FileExistsError(f"{str(out)!r} holds a training run that studio linearize did not start; "
                              "choose another --out")
    run = read_run(out) if (out / RUN_FILE).exists() else None

    if run is None or not run.get("last_checkpoint"):
        # Start (or start again: an attempt killed before its first checkpoint left nothing to resume).
        for name in (RUN_FILE, METRICS_FILE):
            (out / name).unlink(missing_ok=True)
        teacher = load_teacher(source)
        student = linearize(teacher, mixer, settings["keep_softmax"], mixer_params, seed=opts.get("seed", 0))
        report = linearize_report(teacher, student)
        del teacher
        inject_lora(student, lora, train_also=report.new_param_names, seed=opts.get("seed", 0))
        record = {"format": LINEARIZE_FORMAT, "settings": settings, "report": report.to_dict(),
                  "trainable": _trainable_counts(student), "status": "training"}
        out.mkdir(parents=True, exist_ok=True)
        _write_record(out, record)
        task = tasks.get("text", corpus=corpus, seq_len=seq_len, tokenizer=settings["tokenizer"])
        train(student, task, steps, out, callback=callback, **opts)
    else:
        student = build_model(ArchSpec.from_dict(run["spec"]))  # the weights come from the checkpoint
        inject_lora(student, lora, train_also=record["report"]["new_param_names"], seed=opts.get("seed", 0))
        if run["step"] < steps:
            train(student, None, steps, out, resume=True, callback=callback, **runtime)
        else:  # trained to the end, stopped before model/ was written
            from safetensors.torch import load_model as load_weights

            load_weights(student, str(out / run["last_checkpoint"] / "model.safetensors"))
    run = read_run(out)
    record["trainer"] = {"status": run["status"], "step": run["step"], "final": run.get("final", {})}
    if run["step"] < steps:  # stopped by the callback: resumable
        _write_record(out, record)
        return record
    merge_lora(student.to("cpu"))
    record["tokenizer_from"] = _save_merged(student, source, out)
    record.update(status="finished", model=MODEL_DIR)
    _write_record(out, record)
    return record


def _trainable_counts(model: nn.Module) -> dict[str, int]:
    counts = {"lora": 0, "new": 0, "frozen": 0}
    for name, p in model.named_parameters():
        key = "frozen" if not p.requires_grad else "lora" if ".lora_" in name else "new"
        counts[key] += p.numel()
    return counts
