"""studio.rl end to end on a tiny model on the CPU: rollouts, log-probs, a 2-step RL run per credit strategy
through `studio rl` (warm-up, summary, figures, resume), and exact resume of an interrupted run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from studio.model import HybridLM, build_model
from studio.rl.rollout import sample_rollouts, token_logprobs
from studio.rl.train import rl_task, train
from studio.tasks.arithmetic import verify

STUDIO = str(Path(sys.executable).with_name("studio"))
TINY = {"name": "tiny-rl", "vocab_size": 258, "d_model": 32, "n_layers": 2, "n_heads": 2, "mlp_ratio": 2.0,
        "pattern": "LS", "pattern_map": {"L": "lightning", "S": "softmax"}}
FAST = dict(prompts_per_step=2, group_size=3, max_new_tokens=10, eval_prompts=4, eval_every=1, progress=False)


@pytest.fixture(scope="module")
def model():
    return build_model(TINY, seed=0)


def test_rollouts_hold_g_samples_per_prompt_with_masks_and_rewards(model):
    task = rl_task("countdown")
    prompts = ["reach 12 with 3 4 1\n", "reach 7 with 2 5 9\n", "reach 100 with 10 10 1\n"]
    roll = sample_rollouts(model, task.tokenizer, prompts, verify, group_size=4, max_new_tokens=9,
                           generator=torch.Generator().manual_seed(0))
    assert roll.tokens.shape[0] == 12 and roll.groups == 3 and roll.prompts[4] == prompts[1]
    mask = roll.response_mask()
    for row in range(12):
        start, end = roll.prompt_lengths[row], roll.lengths[row]
        assert start == len(prompts[row // 4]) + 1  # BOS + the prompt's bytes
        assert 1 <= end - start <= 9 and int(mask[row].sum()) == end - start
        assert task.tokenizer.decode(roll.tokens[row, 1:start].tolist()) == prompts[row // 4]
        ends_with_stop = int(roll.tokens[row, end - 1]) == task.tokenizer.eos
        assert bool(roll.truncated[row]) == (not ends_with_stop) and (ends_with_stop or end - start == 9)
        assert roll.rewards[row] == verify(roll.prompts[row], roll.completions[row])
    again = sample_rollouts(model, task.tokenizer, prompts, verify, group_size=4, max_new_tokens=9,
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.tokens, roll.tokens)  # the generator decides every sample


def test_token_logprobs_are_the_models_next_token_log_probabilities(model):
    tokens = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(1))
    logp = token_logprobs(model, tokens)
    by_hand = torch.log_softmax(model(tokens).float(), -1)
    assert logp.shape == (2, 7) and torch.all(logp[:, 0] == 0)
    for t in range(1, 7):
        assert torch.allclose(logp[:, t], by_hand[torch.arange(2), t - 1, tokens[:, t]], atol=1e-6)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_studio_rl_smoke_two_steps_per_strategy_with_summary_and_resume(tmp_path):
    out = tmp_path / "exp"
    cmd = [STUDIO, "rl", "--task", "countdown", "--credit", "none,coupled,random", "--loss", "cispo", "--seeds", "1",
           "--steps", "2", "--warmup-steps", "2", "--out", str(out), "--spec", _spec_file(tmp_path),
           "--prompts-per-step", "2", "--group-size", "3", "--max-new-tokens", "10", "--eval-prompts", "4",
           "--eval-every", "1", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "final accuracy" in result.stdout and "coupled" in result.stdout
    for credit in ("none", "coupled", "random"):
        run_dir = out / credit / "seed0"
        run = json.loads((run_dir / "run.json").read_text())
        assert run["status"] == "finished" and run["step"] == 2 and run["config"]["credit"] == credit
        steps = [r for r in _records(run_dir) if "reward" in r]
        assert [r["step"] for r in steps] == [1, 2]
        for r in steps:
            assert 0.0 <= r["reward"] <= 1.0 and "loss_clip_frac" in r and "eval_accuracy" in r
            assert r["credit_boosted"] == 0.0 if credit == "none" else r["credit_boosted"] >= 0.0
            assert 0.0 <= r["rhythm_overhead_pct"] < 100.0
        HybridLM.load(run_dir)  # an RL run is a studio run: its last checkpoint loads
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["strategies"]) == {"none", "coupled", "random"}
    assert (out / "figures" / "reward_curves.html").is_file() and (out / "summary.csv").is_file()
    # the same command again: everything is finished, nothing trains again
    before = {c: (out / c / "seed0" / "metrics.jsonl").read_text() for c in ("none", "coupled")}
    assert subprocess.run(cmd, capture_output=True, text=True, env=env).returncode == 0
    assert before == {c: (out / c / "seed0" / "metrics.jsonl").read_text() for c in ("none", "coupled")}


def _spec_file(tmp_path: Path) -> str:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def test_an_interrupted_rl_run_resumes_exactly(tmp_path):
    task = rl_task("countdown")
    opts = dict(credit="anchor", loss="dapo", ckpt_every=1, **FAST)
    straight = train(build_model(TINY, seed=0), task, 3, tmp_path / "straight", **opts)
    stopped = train(build_model(TINY, seed=0), task, 3, tmp_path / "resumed",
                    callback=lambda r: "stop" if r["step"] == 2 else None, **opts)
    assert json.loads((stopped / "run.json").read_text())["status"] == "stopped"
    train(None, None, 3, stopped, resume=True)
    a, b = _records(straight), _records(stopped)
    assert [r["step"] for r in b] == [0, 1, 2, 3]
    for x, y in zip(a, b):
        assert x.get("loss") == pytest.approx(y.get("loss"), abs=1e-6) and x.get("reward") == y.get("reward")
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(build_model(TINY), task, 3, straight, **opts)
    with pytest.raises(ValueError, match="credit must be one of"):
        train(build_model(TINY), task, 1, tmp_path / "bad", credit="anchors", **FAST)


def test_an_experiment_restarts_a_run_killed_before_its_first_checkpoint(tmp_path):
    from studio.rl.experiment import run_experiment

    start = tmp_path / "start"
    build_model(TINY, seed=0).save(start)
    opts = dict(prompts_per_step=2, group_size=2, max_new_tokens=6, eval_prompts=2, eval_every=1, ckpt_every=5)
    run_experiment(tmp_path / "exp", ["none", "random"], 1, 1, init=start, progress=False, device="cpu", **opts)
    initial = [(tmp_path / "exp" / c / "seed0" / "initial" / "model.safetensors").read_bytes() for c in ("none", "random")]
    assert initial[0] == initial[1] == (start / "model.safetensors").read_bytes()  # every run starts from init
    run_dir = tmp_path / "exp" / "none" / "seed0"
    run = json.loads((run_dir / "run.json").read_text())
    for path in (run_dir / "checkpoints").iterdir():  # as if killed before its first checkpoint
        import shutil

        shutil.rmtree(path)
    (run_dir / "run.json").write_text(json.dumps({**run, "status": "interrupted", "last_checkpoint": None}))
    summary = run_experiment(tmp_path / "exp", ["none", "random"], 1, 1, init=start, progress=False, device="cpu",
                             **opts)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert summary["strategies"]["none"]["n"] == 1 and summary["strategies"]["random"]["n"] == 1


def test_every_run_of_an_experiment_starts_from_the_same_weights(tmp_path, monkeypatch):
    """studio.rl.train updates a given model in place; the experiment must hand each run its own copy."""
    import studio.rl.train as rl_train
    from studio.rl.experiment import run_experiment

    real_train, seen = rl_train.train, []

    def train_and_change_in_place(model, *args, **kwargs):
        seen.append(next(model.parameters()).detach().clone())
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5)  # what training does to the object it was given
        return real_train(model, *args, **kwargs)

    start = tmp_path / "start"
    build_model(TINY, seed=0).save(start)
    monkeypatch.setattr(rl_train, "train", train_and_change_in_place)
    run_experiment(tmp_path / "exp", ["none", "anchor"], 1, 1, init=start, progress=False, device="cpu",
                   prompts_per_step=1, group_size=2, max_new_tokens=4, eval_prompts=1)
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])


def test_only_seed_runs_one_seed_and_processes_can_share_an_experiment(tmp_path):
    """--only-seed K: each process runs one seed into the same OUT; the last summary covers all finished runs."""
    from studio.rl.experiment import run_experiment

    start = tmp_path / "start"
    build_model(TINY, seed=0).save(start)
    opts = dict(prompts_per_step=2, group_size=2, max_new_tokens=6, eval_prompts=2, eval_every=1)
    out = tmp_path / "exp"
    summary = run_experiment(out, ["none"], 2, 1, init=start, progress=False, device="cpu", only_seed=1, **opts)
    assert (out / "none" / "seed1" / "run.json").is_file() and not (out / "none" / "seed0").exists()
    assert summary["strategies"]["none"]["n"] == 1
    summary = run_experiment(out, ["none"], 2, 1, init=start, progress=False, device="cpu", only_seed=0, **opts)
    assert summary["strategies"]["none"]["n"] == 2
    with pytest.raises(ValueError, match="only_seed must be one of the seeds 0..1"):
        run_experiment(out, ["none"], 2, 1, init=start, progress=False, device="cpu", only_seed=2, **opts)


def test_rl_findings_compares_every_run_at_the_last_shared_evaluation():
    """benchmarks/rl_findings.py on the committed H200 experiment: runs stopped at different steps are compared
    at one step, and that step is one every run evaluated."""
    from benchmarks.rl_findings import common_eval_step, read_runs, table

    exp = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "rl" / "h200-countdown-34m"
    runs = read_runs(exp)
    assert set(runs) == {"none", "random", "entropy", "local", "anchor", "coupled"}
    assert all(set(seeds) == {0, 1, 2} for seeds in runs.values())
    step = common_eval_step(runs)
    last_steps = [max(r["step"] for r in records) for seeds in runs.values() for records in seeds.values()]
    assert step <= min(last_steps) and len(set(last_steps)) > 1
    text = table(exp)
    assert f"at step {step}" in text and text.count("\n| ") == 7  # header + 6 strategies
    with pytest.raises(ValueError, match="has no evaluation at step 141"):
        table(exp, at_step=141)
