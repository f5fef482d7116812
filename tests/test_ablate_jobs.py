"""The Ablate tab's logic without UI (`studio.ablate_jobs`): the grid built from the tab's choices, the
app's caps on a grid, the user's ablation folders and their path safety, an ablation run in a thread
that stops and resumes, one ablation per user, and the summary / figure views."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from studio import ablate_jobs as aj
from studio.ablate import GridError, ResultsTable, load_results
from studio.spec import SpecError

TINY_BASE = {"d_model": 16, "n_heads": 2, "n_layers": 2, "mlp_ratio": 2, "pattern": "S",
             "pattern_map": {"S": "softmax"}}


def tiny_grid(name="tiny", steps=4, variants=None, **train):
    return {"name": name, "base": TINY_BASE,
            "variants": variants or {"standard": {},
                                     "hybrid-lightning": {"configuration": "hybrid", "layer": "lightning"}},
            "tasks": [{"name": "mqar", "vocab_size": 32, "seq_len": 16, "num_pairs": 2}], "seeds": 1,
            "train": {"steps": steps, "batch_size": 4, "warmup": 1, "eval_every": steps, "eval_batches": 1,
                      "ckpt_every": max(1, steps // 2), **train}}


def wait_for(condition, what: str, tries: int = 6000):
    """Wait on a condition (not a clock): generous, and says what never happened."""
    for _ in range(tries):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Models this small train faster on one thread, and much faster when the cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- the grid from the tab's choices ---------------------------------------------------------------------
def test_build_grid_names_every_variant_and_checks():
    base = aj.base_spec("small-softmax")
    assert "name" not in base and "vocab_size" not in base  # every cell takes its task's vocabulary
    grid = aj.build_grid(base, ["mlp_mixing", "lightning"], ["hybrid", "skip"], ["1:1", "1:0", "0:1"], True,
                         ["mqar", "text"], mqar_seq_len=32, mqar_pairs=4, text_seq_len=64, seeds=2, steps=10,
                         label="small-softmax")
    assert list(grid["variants"]) == ["standard", "hybrid-mlp_mixing", "hybrid-lightning", "skip",
                                      "ratio-1to1-mlp_mixing", "ratio-1to1-lightning", "ratio-1to0-mlp_mixing",
                                      "ratio-1to0-lightning", "all-softmax"]
    assert grid["variants"]["skip"] == {"configuration": "skip"}  # once, without a layer
    assert grid["variants"]["ratio-1to1-lightning"] == {"ratio": "1:1", "linear": {"mixer": "lightning"}}
    assert grid["variants"]["all-softmax"] == {"ratio": "0:1"}
    assert grid["tasks"] == [{"name": "mqar", "seq_len": 32, "num_pairs": 4},
                             {"name": "text", "corpus": "pydoc", "seq_len": 64}]
    assert grid["seeds"] == 2 and grid["train"]["steps"] == 10 and grid["train"]["eval_every"] == 10
    text = aj.grid_yaml(grid)
    assert yaml.safe_load(text) == grid
    checked = aj.check_grid(text)
    assert checked.text == text and len(checked.cells()) == 9 * 2 * 2
    overview = aj.grid_overview(checked)
    assert overview["layers"]["hybrid-lightning"] == ["softmax", "lightning"]
    assert overview["layers"]["skip"] == ["softmax"] and overview["total_steps"] == 36 * 10


def test_the_default_name_follows_the_choices_so_the_same_grid_finds_its_folder():
    base = aj.base_spec("small-softmax")
    one = aj.build_grid(base, ["approx"], ["uniform"], label="small-softmax")
    assert one["name"] == aj.build_grid(base, ["approx"], ["uniform"], label="small-softmax")["name"]
    assert one["name"].startswith("small-softmax-")
    assert one["name"] != aj.build_grid(base, ["approx"], ["uniform"], steps=151, label="small-softmax")["name"]
    assert aj.build_grid(base, ["approx"], ["uniform"], name="my run/../x")["name"] == "my-run-..-x"
    with pytest.raises(ValueError, match="the run name is empty"):
        aj.build_grid(base, ["approx"], ["uniform"], name="../")


def test_width_and_depth_overrides_cycle_an_explicit_layer_list():
    base = {"d_model": 32, "n_heads": 2, "layers": [{"mixer": "softmax"}, {"mixer": "lightning"}]}
    grid = aj.build_grid(base, ["approx"], ["top"], d_model=16, n_layers=6, name="deep")
    assert grid["base"]["d_model"] == 16 and grid["base"]["n_layers"] == 6
    assert [layer["mixer"] for layer in grid["base"]["layers"]] == ["softmax", "lightning"] * 3
    checked = aj.check_grid(aj.grid_yaml(grid))
    assert aj.grid_overview(checked)["layers"]["top-approx"] == ["softmax", "lightning", "softmax", "lightning",
                                                                  "approx", "approx"]


def test_the_base_is_a_preset_or_the_compose_spec():
    spec = json.dumps({"name": "mine", "vocab_size": 256, "d_model": 32, "n_heads": 2, "n_layers": 3,
                       "pattern": "LS", "pattern_map": {"L": "lightning", "S": "softmax"}})
    base = aj.base_spec(aj.COMPOSE_BASE, spec, "JSON")
    assert base == {"d_model": 32, "n_heads": 2, "n_layers": 3, "pattern": "LS",
                    "pattern_map": {"L": "lightning", "S": "softmax"}}
    with pytest.raises(SpecError, match="n_heads"):
        aj.base_spec(aj.COMPOSE_BASE, spec.replace('"n_heads": 2', '"n_heads": 5'), "JSON")
    with pytest.raises(ValueError, match="unknown base 'nope'"):
        aj.base_spec("nope")
    mixers = aj.variant_mixers()
    assert mixers[:6] == ["mlp_mixing", "approx", "non_approx", "rnd_emb_qk", "fixed_seq_qk", "static_emb_qk"]
    assert {"lightning", "gla", "gated_delta", "softmax"} <= set(mixers)


# ---- checking ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (lambda g: g["variants"].update(odd={"configuration": "odd", "layer": "gla"}), "unknown configuration 'odd'"),
    (lambda g: g["variants"].update(top={"configuration": "top", "layer": "gla"}), "at least 3 layers"),
    (lambda g: g["train"].update(steps=aj.MAX_STEPS + 1), "over the app's cap of 2000"),
    (lambda g: g.update(seeds=[0, 1, 2], variants={f"v{i}": {} for i in range(17)}), "51 cells"),
    (lambda g: g["train"].update(steps=1000) or g.update(seeds=[0, 1, 2], variants={f"v{i}": {} for i in range(11)}),
     "33,000 training steps in all"),
    (lambda g: g["base"].update(d_model=2048, n_layers=2), "parameters is over the app's cap"),
    (lambda g: g["tasks"].append({"name": "text", "corpus": "/etc/hostname"}),
     "the app trains on pydoc or shakespeare"),
    (lambda g: g["tasks"][0].update(seq_len=4096, num_pairs=8, vocab_size=8192), "seq_len=4096 is over the app's cap"),
    (lambda g: g["train"].update(batch_size=1024), "batch_size: 1024 is over the app's cap"),
    (lambda g: g.pop("name"), "name: required in the app"),
])
def test_check_grid_gives_studio_ablates_messages_and_the_apps_caps(change, message):
    grid = tiny_grid()
    grid["base"] = dict(grid["base"])
    change(grid)
    with pytest.raises(GridError, match=message):
        aj.check_grid(yaml.safe_dump(grid, sort_keys=False))


def test_check_grid_never_reads_a_file_and_refuses_bad_text(tmp_path):
    secret = tmp_path / "grid.yaml"
    secret.write_text(yaml.safe_dump(tiny_grid(name="secret-grid"), sort_keys=False))
    with pytest.raises(GridError, match="a grid is a mapping") as err:
        aj.check_grid(str(secret))  # a path is just a string here
    assert "secret-grid" not in str(err.value)
    with pytest.raises(GridError, match="not valid YAML"):
        aj.check_grid("a: [")
    with pytest.raises(GridError, match="the grid is empty"):
        aj.check_grid("  \n")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(6))
    with pytest.raises(GridError, match="more than 20,000 values"):
        aj.check_grid(bomb)


# ---- folders ---------------------------------------------------------------------------------------------------
def _fake_ablation(folder: Path, name="x") -> Path:
    folder.mkdir(parents=True)
    (folder / "grid.yaml").write_text(f"name: {name}\n")
    return folder


def test_folders_stay_inside_the_users_folder_and_list_results(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    out = aj.ablation_dir(runs, "alice", "first")
    assert out == (runs / "alice" / "ablations" / "first").resolve()
    assert aj.ablation_dir(runs, "alice", "../../escape").parent == out.parent  # made safe, never outside
    with pytest.raises(ValueError, match="invalid user id"):
        aj.ablation_dir(runs, "../bob", "x")
    _fake_ablation(out)
    time.sleep(0.01)
    _fake_ablation(runs / "alice" / "ablations" / "second")
    (runs / "alice" / "ablations" / "not-one").mkdir()            # neither grid.yaml, results.json nor cells/
    _fake_ablation(runs / "bob" / "ablations" / "bobs")
    _fake_ablation(results / "shared")
    (results / "link").symlink_to(runs / "bob" / "ablations" / "bobs")
    assert aj.ablation_folders(runs, "alice", results) == ["second", "first", "results/shared"]
    assert aj.ablation_folders(runs, "carol", None) == []
    assert aj.resolve_folder("first", runs, "alice", results) == out
    assert aj.resolve_folder("results/shared", runs, "alice", results) == (results / "shared").resolve()
    for label in ("bobs", "../bob/ablations/bobs", "../../bob/ablations/bobs", str(runs / "bob" / "ablations" / "bobs"),
                  "results/link",
                  "results/../runs/alice/ablations/first", "not-one", "missing", "", "results/shared/..",
                  "results/x"):
        with pytest.raises(ValueError, match="not an ablation you can open here|no ablation chosen"):
            aj.resolve_folder(label, runs, "alice", results)
    with pytest.raises(ValueError, match="not an ablation you can open here"):
        aj.resolve_folder("results/shared", runs, "alice", None)
    # several shared folders, each under its own label prefix
    findings = tmp_path / "findings"
    _fake_ablation(findings / "grid-a")
    shared = {"results/": results, "findings/": findings}
    assert aj.ablation_folders(runs, "alice", shared) == ["second", "first", "results/shared", "findings/grid-a"]
    assert aj.resolve_folder("findings/grid-a", runs, "alice", shared) == (findings / "grid-a").resolve()
    assert aj.ablation_folders(runs, "alice", {"results/": None, "findings/": findings}) == ["second", "first",
                                                                                           "findings/grid-a"]
    for label in ("findings/../results/shared", "findings/shared", "results/grid-a", "other/grid-a"):
        with pytest.raises(ValueError, match="not an ablation you can open here"):
            aj.resolve_folder(label, runs, "alice", shared)


def test_a_train_run_named_ablations_is_not_taken_for_the_folder(tmp_path):
    run = tmp_path / "dave" / "ablations"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    with pytest.raises(ValueError, match="holds a training run named 'ablations'"):
        aj.ablation_dir(tmp_path, "dave", "x")
    assert aj.ablation_folders(tmp_path, "dave") == []


# ---- running ---------------------------------------------------------------------------------------------------
def test_a_job_runs_a_grid_with_live_snapshots(tmp_path):
    grid = aj.check_grid(yaml.safe_dump(tiny_grid(), sort_keys=False))
    job = aj.AblationJob(grid, tmp_path / "tiny", device="cpu").start()
    seen = []
    wait_for(lambda: seen.append(job.snapshot()) or not job.running, "the job ends")
    snap = job.snapshot()
    assert snap["status"] == "finished" and (snap["cells_done"], snap["cells_total"]) == (2, 2), snap
    assert snap["cell"] is None and snap["error"] is None
    assert any(s["status"] == "running" for s in seen)
    table = job.table()
    assert table.variants == ["standard", "hybrid-lightning"] and table.complete
    assert load_results(tmp_path / "tiny").variants == table.variants
    header, rows = aj.summary_table(table)
    assert header[:3] == ["variant", "task", "configuration"] and "accuracy" in header and "loss std" not in header
    assert [row[0] for row in rows] == ["standard", "hybrid-lightning"]
    assert aj.default_figure(table) == "grouped_bars-accuracy"
    figure = aj.comparison_figure(table)
    assert [trace.name for trace in figure.data] == ["standard", "hybrid-lightning"]
    assert "grouped_bars-loss" in aj.figure_choices(table)
    assert aj.comparison_figure(table, "grouped_bars-loss").layout.yaxis.title.text.startswith("held-out loss")


def test_stop_keeps_the_cells_and_running_again_resumes(tmp_path):
    grid = aj.check_grid(yaml.safe_dump(tiny_grid(name="long", variants={
        "standard": {"train": {"steps": 3}},
        "hybrid-lightning": {"configuration": "hybrid", "layer": "lightning",
                             "train": {"steps": 600, "ckpt_every": 1000}},
    }), sort_keys=False))
    out = tmp_path / "long"
    jobs = aj.AblationJobs(max_running=1)
    job = jobs.start("alice", grid, out, device="cpu")
    wait_for(lambda: job.cell == "hybrid-lightning__mqar__seed0" or not job.running, "the second cell trains")
    with pytest.raises(aj.AblationBusy, match="your ablation 'long' is still running"):
        jobs.start("alice", grid, out)
    with pytest.raises(aj.AblationBusy, match="running 1 ablation"):
        jobs.start("bob", grid, tmp_path / "bobs")
    job.stop()
    assert job.wait(300)
    snap = job.snapshot()
    assert snap["status"] == "stopped" and snap["cells_done"] == 1 and snap["cell"] == "hybrid-lightning__mqar__seed0"
    cell = out / "cells" / "hybrid-lightning__mqar__seed0"
    run = json.loads((cell / "run.json").read_text())
    assert run["status"] == "stopped" and 1 <= run["step"] < 600
    assert (cell / run["last_checkpoint"] / "model.safetensors").is_file()  # written by the stop
    assert (out / "cells" / "standard__mqar__seed0" / "result.json").is_file()
    assert aj.cells_done(grid, out) == 1 and aj.changed_cells(grid, out) == []

    again = jobs.start("alice", grid, out, device="cpu")
    assert again.done_before == 1
    wait_for(lambda: not again.running, "the resumed job ends")
    assert again.status == "finished", again.error
    rows = {r["variant"]: r for r in again.table().rows}
    assert rows["hybrid-lightning"]["resumed"] is True and rows["hybrid-lightning"]["steps"] == 600
    assert rows["standard"]["resumed"] is False
    changed = aj.check_grid(yaml.safe_dump(tiny_grid(name="long", steps=5), sort_keys=False))
    assert aj.changed_cells(changed, out) == ["standard__mqar__seed0", "hybrid-lightning__mqar__seed0"]


def test_a_failing_grid_is_a_message_and_users_run_side_by_side_under_a_larger_cap(tmp_path):
    jobs = aj.AblationJobs(max_running=2)
    grid = aj.check_grid(yaml.safe_dump(tiny_grid(steps=2), sort_keys=False))
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the folder should be")
    failed = jobs.start("alice", grid, blocker, device="cpu")
    other = jobs.start("bob", grid, tmp_path / "bobs", device="cpu")
    assert failed.wait(300) and other.wait(300)
    assert failed.status == "failed" and failed.error and failed.snapshot()["error"] == failed.error
    assert blocker.read_text() == "a file where the folder should be"
    assert other.status == "finished"


def test_ratio_variants_default_to_the_ratio_curve():
    rows = []
    for variant, ratio, share, linear in (("ratio-1to0-gla", "1:0", 0.0, "gla"), ("ratio-1to1-gla", "1:1", 0.5, "gla"),
                                          ("all-softmax", "0:1", 1.0, "")):
        rows.append({"variant": variant, "configuration": "ratio", "ratio": ratio, "linear": linear,
                     "softmax_share": share, "mixers": "gla+softmax", "task": "mqar", "task_name": "mqar", "seed": 0,
                     "status": "finished", "accuracy": share, "loss": 1.0 - share, "state_size": 100, "steps": 5,
                     "seconds": 1.0})
    table = ResultsTable(rows, "ratios", 3)
    assert aj.default_figure(table) == "ratio_curve-accuracy"
    figure = aj.comparison_figure(table)
    assert figure.layout.title.text.startswith("ratios: ") and [t.name for t in figure.data] == ["gla"]
    with pytest.raises(ValueError, match="unknown figure"):
        aj.comparison_figure(table, "pie-accuracy")
    assert aj.summary_table(None) == (["variant", "task", "n"], [])
    assert aj.comparison_figure(ResultsTable([], "empty", 2)) is None
