"""The app's Explore and Train logic without the UI (studio.explore, studio.training_jobs): real runs
trained for a few steps, written and read back, analysed; the error paths a user can reach."""

from __future__ import annotations

import json
import time

import pytest
import torch

from studio import explore as ex
from studio.checkpoint import resolve_model_dir
from studio.training_jobs import TrainingJob, inside, metrics_figure, run_name, user_dir, user_runs

TEXT_SPEC = {"name": "tiny-text", "vocab_size": 258, "d_model": 32, "n_layers": 3, "n_heads": 2,
             "pattern": "LSW", "pattern_map": {"L": "lightning", "S": "softmax",
                                               "W": {"mixer": "sliding_window", "window": 8}}}
MQAR_SPEC = {**TEXT_SPEC, "name": "tiny-mqar", "vocab_size": 128}


def _train(job: TrainingJob) -> TrainingJob:
    job.start()
    assert job.wait(300), "training did not finish"
    assert job.error is None, job.error
    return job


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    _train(TrainingJob(TEXT_SPEC, "text", 6, folder / "text-run", {"seq_len": 64}, {"batch_size": 4, "eval_every": 3}))
    _train(TrainingJob(MQAR_SPEC, "mqar", 4, folder / "mqar-run", {}, {"batch_size": 4}))
    return folder


def test_user_folders_and_names_never_leave_the_runs_root(tmp_path):
    assert user_dir(tmp_path, "abc-123_x") == tmp_path.resolve() / "abc-123_x"
    for bad in ("", "../x", "a/b", ".", "x" * 65, "a b"):
        with pytest.raises(ValueError, match="invalid user id"):
            user_dir(tmp_path, bad)
    assert run_name("  my run/../../etc ") == "my-run-..-..-etc"
    assert inside(tmp_path, run_name("../../etc")) == tmp_path.resolve() / "etc"
    with pytest.raises(ValueError, match="empty"):
        run_name(" /.. ")
    for bad in ("../secret", "/etc", "a/b"):
        with pytest.raises(ValueError, match="not a run of this user"):
            inside(tmp_path, bad)


def test_training_job_records_metrics_and_lists_the_run(runs):
    found = user_runs(runs)
    assert {p.name for p in found} == {"text-run", "mqar-run"}
    record = json.loads((runs / "text-run" / "run.json").read_text())
    assert record["status"] == "finished" and record["step"] == 6
    lines = (runs / "text-run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [1, 2, 3, 4, 5, 6]
    fig = metrics_figure([json.loads(l) for l in lines], "text-run")
    names = [trace.name for trace in fig.data]
    assert names == ["train loss", "train accuracy", "eval loss", "eval accuracy"]
    assert list(fig.data[2].x) == [3, 6]


def test_training_job_stops_when_asked_and_keeps_a_checkpoint(tmp_path):
    job = TrainingJob(TEXT_SPEC, "text", 10_000, tmp_path / "long", {"seq_len": 32}, {"batch_size": 2})
    job.start()
    while not job.records:
        assert job.running, job.error
        time.sleep(0.05)
    job.stop()
    assert job.wait(120)
    assert job.status == "stopped"
    record = json.loads((tmp_path / "long" / "run.json").read_text())
    assert record["status"] == "stopped" and 1 <= record["step"] < 10_000
    assert (tmp_path / "long" / record["last_checkpoint"] / "model.safetensors").is_file()


def test_training_job_reports_a_bad_task_instead_of_raising(tmp_path):
    job = TrainingJob(TEXT_SPEC, "text", 3, tmp_path / "bad", {"corpus": "no-such-corpus"})
    job.start()
    job.wait(60)
    assert job.status == "failed" and "no-such-corpus" in job.error


def test_explore_a_text_run_end_to_end(runs):
    sources = ex.model_sources(user_runs(runs), pretrained=False)
    source = sources["run: text-run"]
    model, tokenizer = ex.load_source(source)
    assert ex.load_source(source)[0] is model  # cached
    seq = ex.make_sequence(model, tokenizer, source, "The cat sat on the mat, and the dog sat on the log.")
    assert seq.response_start == 0 and len(seq.ids) == len(seq.labels) == 51
    exploration = ex.explore(model, seq)
    assert not exploration.streaming and exploration.rhythm.fai.shape == (51,)
    views = ex.views(model, exploration, layer=0)
    assert set(views) == {"heads", "rhythm", "text", "spans", "graph"}
    assert "lightning" in views["heads"].layout.title.text
    assert len([t for t in views["heads"].data if t.type == "heatmap"]) == 2  # one per head
    assert 'class="tok' in views["text"] and "anchor" in views["text"]
    line = ex.summary_line(model, exploration)
    assert line.startswith("51 tokens, response from token 0") and "materialised patterns" in line
    answer = ex.make_sequence(model, tokenizer, source, "To be or not", "answer", max_new_tokens=8)
    assert len(answer.ids) == len(tokenizer.encode("To be or not")) + 8 and answer.response_start == 12


def test_long_sequences_switch_to_streaming_with_the_same_numbers(runs):
    import analyses

    source = ex.model_sources(user_runs(runs), pretrained=False)["run: text-run"]
    model, tokenizer = ex.load_source(source)
    text = ("All the world's a stage, and all the men and women merely players. " * 9)[: ex.STREAMING_FROM + 5]
    seq = ex.make_sequence(model, tokenizer, source, text)
    exploration = ex.explore(model, seq)
    assert exploration.streaming
    want = analyses.rhythm(model, seq.ids, 0)
    assert torch.allclose(exploration.rhythm.fai, want.fai, atol=1e-6)
    assert torch.equal(exploration.rhythm.anchors, want.anchors)


def test_a_task_run_explores_a_task_example_and_refuses_text(runs):
    source = ex.model_sources(user_runs(runs), pretrained=False)["run: mqar-run"]
    model, tokenizer = ex.load_source(source)
    with pytest.raises(ex.ExploreError, match="task example"):
        ex.make_sequence(model, tokenizer, source, "hello")
    seq = ex.make_sequence(model, tokenizer, source, "", "task example")
    assert len(seq.ids) == 64 and seq.response_start > 0 and "mqar" in seq.note
    assert ex.explore(model, seq).rhythm.fai.shape == (64,)


@pytest.mark.parametrize("text, match", [("", "empty"), ("   ", "empty"), ("x" * 100_000, "100,000 characters"),
                                         ("y" * (ex.MAX_TOKENS + 1), "tokens long")])
def test_bad_texts_are_refused_with_the_fix(runs, text, match):
    source = ex.model_sources(user_runs(runs), pretrained=False)["run: text-run"]
    model, tokenizer = ex.load_source(source)
    with pytest.raises(ex.ExploreError, match=match):
        ex.make_sequence(model, tokenizer, source, text)


def test_missing_or_corrupt_runs_give_explore_errors(runs, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(runs / "text-run", broken)
    record = json.loads((broken / "run.json").read_text())
    (broken / record["last_checkpoint"] / "model.safetensors").write_bytes(b"not safetensors")
    source = ex.ModelSource("run: broken", "run", broken)
    with pytest.raises(ex.ExploreError, match="missing or corrupt"):
        ex.load_source(source)
    (broken / "run.json").write_text("{ no json")
    with pytest.raises(ex.ExploreError, match="corrupt|missing"):
        ex.load_source(source)
    with pytest.raises(ex.ExploreError, match="no longer exists|pick another"):
        ex.load_source(ex.ModelSource("run: gone", "run", tmp_path / "gone"))


# ---- converted models: a model folder with its own tokenizer/ (what studio linearize writes) -----------------
WORDS = "The cat sat on the mat , and the dog sat on the log . Who sat where ?"


def _word_tokenizer(folder):
    """A real transformers tokenizer (word level, with a chat template), saved as a tokenizer/ folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(sorted(set(WORDS.split())))}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} ?{% endfor %}"
    tokenizer.save_pretrained(str(folder))
    return tokenizer


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """runs/teacher (a model folder: config.json, weights, tokenizer/) and runs/lin-run (a linearized run:
    linearize.json and model/ with its tokenizer/, no run.json), sharing one tokenizer."""
    from studio.model import build_model

    folder = tmp_path_factory.mktemp("converted")
    tokenizer = _word_tokenizer(folder / "teacher" / "tokenizer")
    spec = {"vocab_size": len(tokenizer), "d_model": 32, "n_layers": 2, "n_heads": 2,
            "layers": [{"mixer": "softmax"}] * 2}
    build_model({**spec, "name": "teacher"}).save(folder / "teacher")
    hybrid = {**spec, "name": "hybrid", "layers": [{"mixer": "softmax"}, {"mixer": "liger", "window": 4}]}
    build_model(hybrid).save(folder / "lin-run" / "model")
    _word_tokenizer(folder / "lin-run" / "model" / "tokenizer")
    (folder / "lin-run" / "linearize.json").write_text(json.dumps({"settings": {"mixer": "liger"}}))
    return folder


def test_a_linearized_run_is_listed_and_read_with_its_own_tokenizer(converted):
    run = converted / "lin-run"
    assert set(ex.explorable_runs(converted)) == {run, converted / "teacher"}  # no run.json: listed all the same
    assert resolve_model_dir(run) == run / "model" and resolve_model_dir(run / "model") == run / "model"
    sources = ex.model_sources(ex.explorable_runs(converted), pretrained=False)
    model, tokenizer = ex.load_source(sources["run: lin-run"])
    assert hasattr(tokenizer, "apply_chat_template") and len(tokenizer) == model.spec.vocab_size
    seq = ex.make_sequence(model, tokenizer, sources["run: lin-run"], WORDS)
    assert seq.ids.tolist() == tokenizer.encode(WORDS) and seq.labels[:3] == ["The", "cat", "sat"]
    answer = ex.make_sequence(model, tokenizer, sources["run: lin-run"], "Who sat", "answer", max_new_tokens=4)
    assert answer.response_start == len(tokenizer.encode("Who sat ?")) == 3  # asked through the chat template


def test_teacher_and_hybrid_compare_on_the_same_tokens(converted):
    """Explore's side-by-side: the teacher's folder and the linearized run read one text as the same tokens."""
    teacher = ex.ModelSource("teacher", "run", converted / "teacher")
    hybrid = ex.ModelSource("run: lin-run", "run", converted / "lin-run")
    (t_model, t_tok), (h_model, h_tok) = ex.load_source(teacher), ex.load_source(hybrid)
    t_seq, h_seq = ex.make_sequence(t_model, t_tok, teacher, WORDS), ex.make_sequence(h_model, h_tok, hybrid, WORDS)
    assert torch.equal(t_seq.ids, h_seq.ids)
    t_view = ex.views(t_model, ex.explore(t_model, t_seq), layer=1)
    h_view = ex.views(h_model, ex.explore(h_model, h_seq), layer=1)
    assert "softmax" in t_view["heads"].layout.title.text and "liger" in h_view["heads"].layout.title.text


@pytest.mark.parametrize("where", ["lin-run", "lin-run/model", "teacher"])
def test_analyze_reads_a_converted_model_with_its_tokenizer(converted, tmp_path, where):
    from transformers import AutoTokenizer

    from studio.cli import main

    out = tmp_path / "r.json"
    assert main(["analyze", "--run", str(converted / where), "--text", WORDS, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(converted / "teacher" / "tokenizer"), local_files_only=True)
    assert [t["text"] for t in report["tokens"]] == [tokenizer.decode([i]) for i in tokenizer.encode(WORDS)]
