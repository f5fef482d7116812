"""studio.rl_jobs, the RL tab without UI: a tiny RL run really trains in the background (warm-up, RL steps,
live records), stops with a checkpoint and resumes, the reward chart, and the per-token credit view."""

from __future__ import annotations

import html
import json
import re
import time

import pytest
import torch

from studio import rl_jobs as rj
from studio.model import build_model
from studio.rl.train import rl_task

TINY = {"name": "tiny-rl", "vocab_size": 258, "d_model": 32, "n_layers": 2, "n_heads": 2, "mlp_ratio": 2.0,
        "pattern": "LS", "pattern_map": {"L": "lightning", "S": "softmax"}}
SMALL = dict(steps=2, group_size=2, prompts_per_step=1, max_new_tokens=8, warmup_steps=2)


@pytest.fixture(scope="module")
def task():
    return rl_task("countdown")


@pytest.fixture(scope="module")
def model():
    return build_model(TINY, seed=0).eval()


def _job(root, user="u1", start=None, **choices):
    opts = rj.rl_options(**{"credit": "coupled", "loss": "cispo", **SMALL, **choices})
    out = rj.rl_dir(root, user, rj.run_label(opts, rj.WARMUP_LABEL))
    warm = rj.warmup_dir(root, user, opts["warmup_steps"]) if start is None else None
    return rj.RLJob(out, opts, start, warm, device="cpu")


def _wait(job, timeout=120):
    assert job.wait(timeout), "the RL job did not end in time"
    return job.snapshot()


# ---- choices and folders ------------------------------------------------------------------------------------
@pytest.mark.parametrize("choice, message", [
    ({"credit": "best"}, "credit must be one of none, local, anchor, coupled, random, entropy"),
    ({"loss": "ppo"}, "loss must be one of grpo, dapo, cispo"),
    ({"steps": 0}, "steps must be a whole number between 1 and 200"),
    ({"steps": 201}, "steps must be a whole number between 1 and 200"),
    ({"group_size": 1}, "group size must be a whole number between 2 and 8"),
    ({"group_size": 9}, "group size must be a whole number between 2 and 8"),
    ({"prompts_per_step": 2.5}, "prompts per step must be a whole number"),
    ({"max_new_tokens": None}, "max new tokens must be a whole number"),
    ({"warmup_steps": 5000}, "warm-up steps must be a whole number between 1 and 2000"),
    ({"lr": "fast"}, "learning rate must be a number"),
    ({"lr": 0}, "learning rate must be a number in (0, 0.1]"),
])
def test_rl_options_name_the_bad_choice_and_its_range(choice, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        rj.rl_options(**choice)


def test_options_labels_and_folders(tmp_path):
    opts = rj.rl_options(credit="anchor", loss="grpo", steps=10, group_size=4, prompts_per_step=2)
    assert opts["steps"] == 10 and opts["rl"]["credit"] == "anchor" and opts["rl"]["group_size"] == 4
    label = rj.run_label(opts, rj.WARMUP_LABEL)
    assert label.startswith("anchor-grpo-")
    assert rj.run_label(rj.rl_options(credit="anchor", loss="grpo", steps=50, group_size=4, prompts_per_step=2),
                        rj.WARMUP_LABEL) == label  # more steps: the same run (resumed)
    assert rj.run_label(rj.rl_options(credit="anchor", loss="grpo", steps=10, group_size=2, prompts_per_step=2),
                        rj.WARMUP_LABEL) != label
    assert rj.run_label(opts, rj.WARMUP_LABEL, " my run/../x ") == "my-run-..-x"
    out = rj.rl_dir(tmp_path, "u1", "../../etc")
    assert out.parent == (tmp_path / "u1" / "rl").resolve()
    with pytest.raises(ValueError, match="invalid user id"):
        rj.rl_dir(tmp_path, "../u", "x")
    with pytest.raises(ValueError, match="folder of your warm-ups"):
        rj.rl_dir(tmp_path, "u1", "warmups")
    assert rj.start_choices(tmp_path, "u1") == [rj.WARMUP_LABEL] and rj.rl_runs(tmp_path, "u1") == []
    assert rj.resolve_start(rj.WARMUP_LABEL, tmp_path, "u1") is None
    for label, message in (("run: ../../etc", "not a run of yours"), ("run: nothing", "no such run"),
                           ("/etc/passwd", "not a model you can start from")):
        with pytest.raises(ValueError, match=message):
            rj.resolve_start(label, tmp_path, "u1")
    text_run = tmp_path / "u1" / "text-run"  # a Train run of a 256-token model cannot start an RL run
    text_run.mkdir(parents=True)
    (text_run / "run.json").write_text(json.dumps({"spec": {"vocab_size": 256}, "last_checkpoint": "c"}))
    assert rj.start_choices(tmp_path, "u1") == [rj.WARMUP_LABEL]
    with pytest.raises(ValueError, match="vocab_size >= 258"):
        rj.resolve_start("run: text-run", tmp_path, "u1")


# ---- running ------------------------------------------------------------------------------------------------
def test_a_tiny_run_warms_up_trains_and_shows_its_records(tmp_path):
    job = _job(tmp_path)
    assert job.snapshot()["status"] == "not started" and job.snapshot()["records"] == []
    jobs = rj.RLJobs()
    jobs.start("u1", job)
    snap = job.snapshot()
    assert snap["status"] in ("running", "finished") and snap["warming_up"]
    snap = _wait(job)
    assert snap["status"] == "finished" and snap["error"] is None and snap["phase"] == "done"
    assert [r["step"] for r in snap["records"]] == [0, 1, 2]
    assert snap["last"]["step"] == 2 and 0.0 <= snap["last"]["reward"] <= 1.0 and "credit_boosted" in snap["last"]
    assert snap["eval"]["step"] == 2 and snap["warmup_step"] == 2
    warm = json.loads((tmp_path / "u1" / "rl" / "warmups" / "small-hybrid-2" / "run.json").read_text())
    assert warm["status"] == "finished" and warm["spec"]["vocab_size"] == 258
    run = json.loads((job.out_dir / "run.json").read_text())
    assert run["kind"] == "rl" and run["config"]["credit"] == "coupled" and run["step"] == 2
    assert rj.rl_runs(tmp_path, "u1") == [job.out_dir.name]
    assert rj.read_records(job.out_dir) == snap["records"]

    fig = rj.reward_figure(snap["records"], "tiny")
    reward, accuracy, evals = fig.data
    assert list(reward.x) == [1, 2] and list(evals.x) == [0, 1, 2]  # eval every step of a 2-step run
    assert fig.layout.title.text == "tiny" and list(accuracy.y) == [r["accuracy"] for r in snap["records"][1:]]

    # the same choices again: finished, so refused with the fix; other settings under that name: refused
    with pytest.raises(ValueError, match="already finished its 2 steps; raise Steps"):
        _job(tmp_path)
    other = rj.rl_options(credit="none", loss="cispo", **SMALL)
    with pytest.raises(ValueError, match=r"other settings \(credit\)"):
        rj.RLJob(job.out_dir, other, None, job.warmup)

    # a second run of the user reuses the finished warm-up
    second = _job(tmp_path, credit="none")
    jobs.start("u1", second)
    snap = _wait(second)
    assert snap["status"] == "finished" and [r["step"] for r in snap["records"]] == [0, 1, 2]
    assert snap["records"][-1]["credit_boosted"] == 0.0
    assert sorted(rj.rl_runs(tmp_path, "u1")) == sorted([job.out_dir.name, second.out_dir.name])


def test_stop_keeps_a_checkpoint_and_start_resumes(tmp_path):
    jobs = rj.RLJobs(max_running=1)
    job = jobs.start("u1", _job(tmp_path, steps=100))
    with pytest.raises(rj.RLBusy, match="still running; press Stop"):
        jobs.start("u1", _job(tmp_path, credit="none"))
    with pytest.raises(rj.RLBusy, match="running 1 RL run"):
        jobs.start("u2", _job(tmp_path, user="u2"))
    deadline = time.monotonic() + 120
    while not any(r.get("step", 0) >= 1 for r in job.records):  # waiting for the first RL step, not timing it
        assert time.monotonic() < deadline and job.running, job.error
        time.sleep(0.05)
    job.stop()
    snap = _wait(job)
    assert snap["status"] == "stopped" and snap["error"] is None
    run = json.loads((job.out_dir / "run.json").read_text())
    stopped_at = run["step"]
    assert run["status"] == "stopped" and 1 <= stopped_at < 100 and (job.out_dir / run["last_checkpoint"]).is_dir()

    again = _job(tmp_path, steps=stopped_at + 2)  # the same choices: the same folder, resumed
    assert again.out_dir == job.out_dir and again.resume and again.resumed_from == stopped_at
    assert [r["step"] for r in again.records] == list(range(stopped_at + 1))  # the curve so far
    jobs.start("u1", again)
    snap = _wait(again)
    assert snap["status"] == "finished" and snap["resumed_from"] == stopped_at
    assert [r["step"] for r in snap["records"]] == list(range(stopped_at + 3))
    assert [r["step"] for r in rj.read_records(job.out_dir)] == list(range(stopped_at + 3))


def test_stop_during_the_warm_up_and_a_failure_show_in_the_snapshot(tmp_path):
    job = _job(tmp_path, warmup_steps=2000, steps=1)
    job.start()
    deadline = time.monotonic() + 60
    while job.warmup_step < 1:
        assert time.monotonic() < deadline and job.running, job.error
        time.sleep(0.05)
    job.stop()
    snap = _wait(job)
    assert snap["status"] == "stopped" and snap["records"] == [] and not (job.out_dir / "run.json").exists()
    assert json.loads((job.warmup / "run.json").read_text())["status"] == "stopped"  # Start resumes it

    broken = tmp_path / "u1" / "broken"  # a start model whose files are corrupt: the job fails, with the reason
    broken.mkdir()
    (broken / "run.json").write_text(json.dumps({"spec": {"vocab_size": 258}, "last_checkpoint": "nothing"}))
    bad = _job(tmp_path, start=rj.resolve_start("run: broken", tmp_path, "u1"), credit="none")
    snap = _wait(bad.start())
    assert snap["status"] == "failed" and snap["error"] and "Traceback" not in snap["error"]


def test_policy_reads_the_last_checkpoint_or_says_there_is_none(tmp_path):
    with pytest.raises(ValueError, match="has no model yet"):
        rj.policy(tmp_path / "nothing")


# ---- the credit view ----------------------------------------------------------------------------------------
def test_credit_rows_and_html_mark_every_token(model, task):
    rows = rj.credit_rows(model, task, "coupled", prompts=2, group_size=2, max_new_tokens=12, seed=3)
    assert len(rows) == 4
    again = rj.credit_rows(model, task, "coupled", prompts=2, group_size=2, max_new_tokens=12, seed=3)
    assert [r["completion"] for r in again] == [r["completion"] for r in rows]  # seeded
    for row in rows:
        assert 1 <= len(row["tokens"]) <= 12 and row["reward"] in (0.0, 0.1, 1.0)
        assert any(t["preplan"] for t in row["tokens"]) or len(row["tokens"]) < 3
        for t in row["tokens"]:
            assert t["gamma"] >= 1.0 and t["label"]
    assert any(t["gamma"] > 1.0 for r in rows for t in r["tokens"])
    assert all(t["gamma"] == 1.0 for r in rj.credit_rows(model, task, "none", seed=3) for t in r["tokens"])

    page = rj.credit_view(model, task, "coupled", prompts=2, group_size=2, max_new_tokens=12, seed=3)
    spans = re.findall(r'<span class="tok([^"]*)" data-gamma="([0-9.]+)" title="[^"]*" '
                       r'style="background:(rgb\([^)]*\))">([^<]*)</span>', page)
    tokens = [t for r in rows for t in r["tokens"]]
    assert len(spans) == len(tokens)
    for (classes, g, colour, text), t in zip(spans, tokens):
        assert text == html.escape(t["label"]) and float(g) == pytest.approx(t["gamma"], abs=1e-4)
        assert ("preplan" in classes) == t["preplan"] and ("anchor" in classes) == t["anchor"]
        assert (colour == "rgb(247,247,247)") == (t["gamma"] == 1.0)
    for row in rows:
        assert f'data-reward="{row["reward"]:.4f}"' in page and f"reward {row['reward']:.2f}" in page
        assert html.escape(row["prompt"].rstrip()) in page
    assert "preplan</span> underlined" in page and "anchor</span> boxed" in page and "γ 1.00" in page


def test_credit_html_escapes_arbitrary_text():
    rows = [{"prompt": "reach <b>1</b> & \"x\"\n", "completion": "", "reward": 0.1, "truncated": True,
             "tokens": [{"id": 60, "label": "<", "gamma": 1.75, "preplan": True, "anchor": True},
                        {"id": 38, "label": "&", "gamma": 1.0, "preplan": False, "anchor": False},
                        {"id": 34, "label": '"', "gamma": 0.5, "preplan": False, "anchor": True}]}]
    page = rj.credit_html(rows, "coupled", title="<script>alert(1)</script>")
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert "reach &lt;b&gt;1&lt;/b&gt; &amp; &quot;x&quot;" in page and "<b>1</b>" not in page
    assert '">&lt;</span>' in page and '">&amp;</span>' in page and '">&quot;</span>' in page
    assert 'class="tok preplan anchor" data-gamma="1.7500"' in page and "rgb(214,96,77)" in page  # the top
    assert "rgb(67,147,195)" in page and "reward 0.10 (cut)" in page  # below 1: blue
    assert rj.credit_html([], "none") == '<div class="rl-credit">No rollouts.</div>'


@pytest.mark.parametrize("kwargs, message", [
    ({"credit": "best"}, "credit must be one of"),
    ({"credit": "coupled", "prompts": 4, "group_size": 8}, "at most 16 rollouts"),
    ({"credit": "coupled", "prompts": 0}, "prompts must be a whole number between 1 and 16"),
    ({"credit": "coupled", "max_new_tokens": 500}, "max new tokens must be a whole number between 1 and 64"),
])
def test_credit_view_refuses_bad_input(model, task, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        rj.credit_view(model, task, **kwargs)


def test_credit_view_refuses_a_model_without_the_tasks_vocabulary(task):
    small = build_model({**TINY, "vocab_size": 256}, seed=0)
    with pytest.raises(ValueError, match="vocabulary"):
        rj.credit_view(small, task, "none")
    assert torch.is_grad_enabled()
