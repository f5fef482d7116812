"""`studio ablate`: layer configurations (arXiv 2510.11602) and linear:softmax ratios as spec helpers; grids
checked whole before anything trains; a tiny real grid writes tidy results, a summary over seeds and
figures; an interrupted grid resumes without touching finished cells and ends where an uninterrupted
one does; the command line end to end; the benchmark grid files parse."""

import json
import os
import subprocess
import sys
from pathlib import Path

import plotly.graph_objects as go
import pytest
import yaml

from studio import ArchSpec
from studio.ablate import COLUMNS, CellsFailed, GridError, load_grid, load_results, run_grid, stale_cells
from studio.ablate_figures import grouped_bars, ratio_curve, state_curve
from studio.configurations import CONFIGURATIONS, apply_configuration, configuration_layers, ratio_layers, softmax_share

ROOT = Path(__file__).resolve().parents[1]
STUDIO = str(Path(sys.executable).with_name("studio"))
# six distinguishable base layers: sliding windows 10, 11, ..., 15
BASE6 = {"vocab_size": 64, "d_model": 32, "n_heads": 2, "n_layers": 6,
         "layers": [{"mixer": "sliding_window", "window": 10 + i} for i in range(6)]}
VARIANT = {"mixer": "lightning"}
TINY_TASK = {"name": "mqar", "vocab_size": 32, "seq_len": 16, "num_pairs": 2}
TINY = {  # 2 variants x 1 task x 2 seeds, 4 steps of a 2-layer d_model 16 model
    "name": "tiny",
    "base": {"d_model": 16, "n_heads": 2, "n_layers": 2, "mlp_ratio": 2, "pattern": "S", "pattern_map": {"S": "softmax"}},
    "variants": {"standard": {}, "hybrid-lightning": {"configuration": "hybrid", "layer": {"mixer": "lightning"}}},
    "tasks": [TINY_TASK],
    "seeds": [0, 1],
    "train": {"steps": 4, "batch_size": 4, "lr": "3e-3", "warmup": 1, "eval_every": 2, "eval_batches": 1, "ckpt_every": 2},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Models this small train faster on one thread, and much faster when the cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- configurations --------------------------------------------------------------------------------
@pytest.mark.parametrize("configuration, changed", [
    ("uniform", [0, 1, 2, 3, 4, 5]), ("hybrid", [1, 3, 5]), ("top", [4, 5]), ("middle", [2, 3]),
    ("bottom", [0, 1]), ("first-only", [0]), ("last-only", [5]),
])
def test_each_configuration_replaces_exactly_its_layers(configuration, changed):
    spec = apply_configuration(BASE6, configuration, VARIANT)
    assert spec["n_layers"] == 6
    assert [i for i, layer in enumerate(spec["layers"]) if layer == VARIANT] == changed
    assert all(spec["layers"][i] == BASE6["layers"][i] for i in range(6) if i not in changed)  # the rest untouched
    ArchSpec.from_dict(spec)  # builds
    assert BASE6["layers"][0] == {"mixer": "sliding_window", "window": 10}  # the base is not mutated


def test_skip_removes_the_odd_layers_and_shorthand_and_specs_work():
    spec = apply_configuration(BASE6, "skip", None)
    assert spec["n_layers"] == 3 and [l["window"] for l in spec["layers"]] == [10, 12, 14]
    assert ArchSpec.from_dict(spec).n_layers == 3
    # a pattern shorthand base and an ArchSpec base; underscores allowed; 8 layers: thirds of 3
    base8 = {"vocab_size": 64, "d_model": 32, "n_heads": 2, "n_layers": 8, "pattern": "S", "pattern_map": {"S": "softmax"}}
    for base in (base8, ArchSpec.from_dict(base8)):
        for name, expected in (("bottom", [0, 1, 2]), ("middle", [2, 3, 4]), ("top", [5, 6, 7]), ("first_only", [0])):
            layers = apply_configuration(base, name, "gla")["layers"]
            assert [i for i, layer in enumerate(layers) if layer["mixer"] == "gla"] == expected
    assert set(CONFIGURATIONS) == {"uniform", "hybrid", "skip", "top", "middle", "bottom", "first-only", "last-only"}
    assert configuration_layers(7, "hybrid") == [1, 3, 5]


def test_configuration_errors_name_the_problem_and_the_allowed_values():
    with pytest.raises(ValueError, match="unknown configuration 'odd'.*uniform, hybrid, skip"):
        apply_configuration(BASE6, "odd", VARIANT)
    one = {**BASE6, "n_layers": 1, "layers": BASE6["layers"][:1]}
    with pytest.raises(ValueError, match="'skip' needs a base of at least 2 layers, the base has 1"):
        apply_configuration(one, "skip", None)
    with pytest.raises(ValueError, match="'hybrid' needs a base of at least 2"):
        apply_configuration(one, "hybrid", VARIANT)
    with pytest.raises(ValueError, match="'top' needs a base of at least 3"):
        apply_configuration({**BASE6, "n_layers": 2, "layers": BASE6["layers"][:2]}, "top", VARIANT)
    with pytest.raises(ValueError, match="needs a variant layer"):
        apply_configuration(BASE6, "uniform", None)
    with pytest.raises(ValueError, match="no layers"):
        apply_configuration({"vocab_size": 8, "d_model": 8, "n_heads": 1, "n_layers": 2}, "uniform", VARIANT)
    with pytest.raises(ValueError, match="layer dict with a 'mixer'"):
        apply_configuration(BASE6, "uniform", {"window": 3})


def test_ratio_layers_put_the_softmax_layers_last_in_each_group():
    L, S = {"mixer": "gla"}, {"mixer": "softmax"}

    def letters(layers):
        return "".join("S" if layer == S else "L" for layer in layers)

    assert letters(ratio_layers(8, L, S, "7:1")) == "LLLLLLLS"
    assert letters(ratio_layers(8, L, S, "3:1")) == "LLLSLLLS"
    assert letters(ratio_layers(8, L, S, "1:1")) == "LSLSLSLS"
    assert letters(ratio_layers(8, L, None, "1:0")) == "L" * 8
    assert letters(ratio_layers(8, None, "softmax", "0:1")) == "S" * 8
    assert softmax_share(ratio_layers(8, L, S, "7:1")) == 0.125 and softmax_share(ratio_layers(4, L, S, "1:1")) == 0.5
    layers = ratio_layers(4, L, S, "1:1")
    layers[0]["mixer"] = "changed"
    assert layers[2] == L and L == {"mixer": "gla"}  # copies, not shared dicts
    with pytest.raises(ValueError, match="not a multiple of 8; use n_layers 8, 16, 24"):
        ratio_layers(6, L, S, "7:1")
    with pytest.raises(ValueError, match="no layers"):
        ratio_layers(8, L, S, "0:0")
    with pytest.raises(ValueError, match="'linear:softmax' counts"):
        ratio_layers(8, L, S, "three to one")


# ---- grid checks -----------------------------------------------------------------------------------
def test_a_bad_grid_lists_every_problem_before_anything_trains(tmp_path):
    bad = {
        "base": {"d_model": 16, "n_heads": 2, "n_layers": 2, "pattern": "S", "pattern_map": {"S": "softmax"}},
        "variants": {
            "odd-one": {"configuration": "odd", "layer": "gla"},
            "no-layer": {"configuration": "hybrid"},
            "ghost": {"configuration": "uniform", "layer": {"mixer": "no_such_mixer"}},
            "uneven": {"ratio": "7:1", "linear": "gla"},
            "bad name!": {},
            "seeded": {"train": {"seed": 3}},
        },
        "tasks": [{"name": "mqar", "seq_len": 16, "num_pairs": 99}, {"name": "mqar"}, {"name": "mqar"},
                  {"name": "nope"}],
        "seeds": [0, 0],
        "train": {"batch_size": 4, "lr": "fast"},
    }
    with pytest.raises(GridError) as info:
        run_grid(bad, tmp_path / "out", progress=False)
    message = str(info.value)
    for text in ("variants.odd-one.configuration: unknown configuration 'odd'; allowed: uniform, hybrid, skip",
                 "variants.no-layer: configuration 'hybrid' needs the `layer`",
                 "variants.uneven: ratio '7:1' groups 8 layers",
                 "variants.bad name!: a variant name is",
                 "variants.seeded.train.seed: not a grid option (the seed comes from `seeds:`)",
                 "tasks[0] (mqar-seq_len16-num_pairs99): mqar needs 4 * num_pairs <= seq_len",
                 "share the label 'mqar'",
                 "tasks[3] (nope): unknown task 'nope'",
                 "seeds: [0, 0] must be a list of distinct",
                 "train.lr: 'fast' is not a number",
                 "train.steps: required"):
        assert text in message, (text, message)
    assert not (tmp_path / "out").exists()
    # a structurally sound grid whose spec does not build: named by variant, with the spec's own message
    ghost = {**TINY, "variants": {"ghost": {"configuration": "uniform", "layer": {"mixer": "no_such_mixer"}}}}
    grid = load_grid(ghost, check_specs=False)
    assert grid.unavailable() == ["mixer 'no_such_mixer'"]
    grid.validate(skip_unavailable=True)  # nothing else is wrong
    with pytest.raises(GridError, match="variants.ghost: its spec does not build: .*unknown mixer 'no_such_mixer'"):
        grid.validate()
    params = {**TINY, "variants": {"p": {"configuration": "uniform", "layer": {"mixer": "softmax", "zz": 1}}}}
    assert load_grid(params, check_specs=False).unavailable() == ["parameter 'zz' of mixer 'softmax'"]
    small = {**TINY, "base": {**TINY["base"], "vocab_size": 16}}
    with pytest.raises(GridError, match="vocab_size=16 is smaller than the task's 32 tokens"):
        load_grid(small)


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "grids").glob("*.yaml")), ids=lambda p: p.name)
def test_benchmark_grid_files_parse_and_validate(path):
    grid = load_grid(path, check_specs=False)  # structure, tasks and training options
    assert len(grid.seeds) == 3 and len(grid.cells()) == len(grid.variants) * len(grid.tasks) * 3
    assert grid.base["d_model"] == 64
    for layers in grid.layer_dicts().values():
        assert 3 <= len(layers) <= 8
    for task in grid.tasks:
        if task.name == "mqar":
            assert 128 <= task.task.vocab_size <= 256 and 64 <= task.task.seq_len <= 256
    grid.validate(skip_unavailable=True)  # every spec that can be built now builds
    missing = grid.unavailable()
    if missing:
        pytest.skip(f"{path.name}: not registered yet: {', '.join(missing)}")
    grid.validate()


def test_the_ratio_grid_has_every_ratio_for_every_linear_mixer():
    grid = load_grid(ROOT / "benchmarks" / "grids" / "hybrid_ratio_mqar.yaml")
    ratios = {(v.linear or {}).get("mixer"): set() for v in grid.variants.values()}
    for v in grid.variants.values():
        ratios[(v.linear or {}).get("mixer")].add(v.ratio)
    assert ratios == {m: {"1:0", "7:1", "3:1", "1:1"} for m in ("lightning", "gla", "gated_delta")} | {None: {"0:1"}}
    assert all(len(layers) == 8 for layers in grid.layer_dicts().values())


# ---- running ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The tiny grid run once without interruption."""
    out = tmp_path_factory.mktemp("ablate") / "straight"
    return run_grid(TINY, out, progress=False, device="cpu"), out


def test_a_tiny_grid_writes_tidy_results_a_summary_and_figures(straight):
    table, out = straight
    assert table.complete and len(table) == 4
    import csv

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert list(rows[0])[:len(COLUMNS)] == list(COLUMNS)
    assert [(r["variant"], r["task"], r["seed"]) for r in rows] == [
        ("standard", "mqar", "0"), ("standard", "mqar", "1"), ("hybrid-lightning", "mqar", "0"),
        ("hybrid-lightning", "mqar", "1")]
    for r in rows:
        assert r["status"] == "finished" and r["steps"] == "4" and r["device"] == "cpu"
        assert 0 <= float(r["accuracy"]) <= 1 and float(r["loss"]) > 0 and r["perplexity"] == ""  # not a text task
        assert int(r["params"]) > 0 and float(r["seconds"]) > 0
    hybrid = [r for r in rows if r["variant"] == "hybrid-lightning"][0]
    assert (hybrid["configuration"], hybrid["layer"], hybrid["mixers"], hybrid["softmax_share"]) == (
        "hybrid", "lightning", "lightning+softmax", "0.5")
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert [(s["variant"], s["task"], s["n"]) for s in summary] == [("standard", "mqar", "2"),
                                                                   ("hybrid-lightning", "mqar", "2")]
    losses = [float(r["loss"]) for r in rows if r["variant"] == "standard"]
    assert float(summary[0]["loss_mean"]) == pytest.approx(sum(losses) / 2)
    assert float(summary[0]["loss_std"]) == pytest.approx(abs(losses[0] - losses[1]) / 2 ** 0.5)
    cell = out / "cells" / "standard__mqar__seed0"
    assert {"run.json", "metrics.jsonl", "cell.json", "result.json"} <= {p.name for p in cell.iterdir()}
    assert yaml.safe_load((out / "grid.yaml").read_text())["name"] == "tiny"
    for stem in ("grouped_bars-accuracy", "grouped_bars-loss"):
        assert (out / "figures" / f"{stem}.html").is_file()
        assert json.loads((out / "figures" / f"{stem}.json").read_text())["data"]
    assert (out / "figures" / "plotly.min.js").is_file() and not (out / "figures" / "ratio_curve-loss.html").exists()
    loaded = load_results(out)  # what the app reads
    assert loaded.rows == table.rows and loaded.complete and "grouped_bars-loss" in loaded.figures
    fig = grouped_bars(loaded, "loss")
    assert isinstance(fig, go.Figure) and [t.name for t in fig.data] == ["standard", "hybrid-lightning"]
    assert fig.data[0].error_y.array[0] == pytest.approx(float(summary[0]["loss_std"]))
    with pytest.raises(ValueError, match="no variant of these results has a `ratio`"):
        ratio_curve(loaded)


def test_figures_from_summaries():
    def row(variant, linear, ratio, share, acc, state, mixers):
        return {"variant": variant, "task": "mqar", "linear": linear, "ratio": ratio, "softmax_share": share,
                "state_size": state, "mixers": mixers, "n_heads": 4, "d_head": 16, "n": 3,
                "accuracy_mean": acc, "accuracy_std": 0.01}

    summary = [row("gla-1to0", "gla", "1:0", 0.0, 0.2, 100, "gla"), row("gla-3to1", "gla", "3:1", 0.25, 0.6, 200, "gla+softmax"),
               row("lightning-3to1", "lightning", "3:1", 0.25, 0.5, 200, "lightning+softmax"),
               row("all-softmax", "", "0:1", 1.0, 0.9, 800, "softmax")]
    fig = ratio_curve(summary)
    lines = {t.name: list(t.x) for t in fig.data}
    assert lines == {"gla": [0.0, 0.25, 1.0], "lightning": [0.25, 1.0]}  # all-softmax ends every line
    fig = state_curve(summary)
    assert fig.layout.xaxis.type == "log" and {t.name for t in fig.data} == {"gla", "gla+softmax", "lightning+softmax",
                                                                            "softmax"}


def test_an_interrupted_grid_resumes_without_redoing_finished_cells(tmp_path, monkeypatch, straight):
    import studio.train

    out = tmp_path / "resumed"
    first = run_grid(TINY, out, progress=False, device="cpu", max_cells=1)  # cells run seed by seed
    assert len(first) == 1 and not first.complete and first.rows[0]["cell"] == "standard__mqar__seed0"
    done = out / "cells" / "standard__mqar__seed0" / "result.json"
    before = (done.stat().st_mtime_ns, done.read_text())
    assert list(__import__("csv").DictReader((out / "results.csv").open()))[0]["cell"] == "standard__mqar__seed0"

    def interrupt(cell, record):  # Ctrl-C in the middle of the second cell, after its step-2 checkpoint
        if cell == "hybrid-lightning__mqar__seed0" and record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_grid(TINY, out, progress=False, device="cpu", callback=interrupt)
    second = out / "cells" / "hybrid-lightning__mqar__seed0"
    assert not (second / "result.json").exists() and json.loads((second / "run.json").read_text())["step"] == 2

    def stop(cell, record):  # a graceful stop (what a Stop button does) in the third cell
        return "stop" if cell == "standard__mqar__seed1" and record["step"] == 1 else None

    calls = []
    real = studio.train.train

    def spy(spec, task, steps, out_dir, resume=False, **kwargs):
        calls.append((Path(out_dir).name, resume))
        return real(spec, task, steps, out_dir, resume=resume, **kwargs)

    monkeypatch.setattr(studio.train, "train", spy)
    partial = run_grid(TINY, out, progress=False, device="cpu", callback=stop)
    assert calls == [("hybrid-lightning__mqar__seed0", True), ("standard__mqar__seed1", False)]
    assert len(partial) == 2 and not partial.complete
    calls.clear()
    final = run_grid(TINY, out, progress=False, device="cpu")
    assert calls == [("standard__mqar__seed1", True), ("hybrid-lightning__mqar__seed1", False)]
    assert (done.stat().st_mtime_ns, done.read_text()) == before  # the finished cell was left alone
    assert final.complete
    resumed = {r["cell"]: r for r in final.rows}
    assert resumed["hybrid-lightning__mqar__seed0"]["resumed"] and not resumed["hybrid-lightning__mqar__seed1"]["resumed"]
    for row in straight[0].rows:  # exact resume: the same numbers as the uninterrupted grid
        assert (resumed[row["cell"]]["loss"], resumed[row["cell"]]["accuracy"]) == (row["loss"], row["accuracy"])
    # a grid whose definition changed does not silently mix old and new cells
    changed = {**TINY, "train": {**TINY["train"], "lr": 1e-2}}
    with pytest.raises(GridError, match="cell standard__mqar__seed0 .* was run with another definition"):
        run_grid(changed, out, progress=False, device="cpu")


def test_shards_split_the_cells_and_see_each_others_results(tmp_path):
    out = tmp_path / "out"
    first = run_grid(TINY, out, progress=False, device="cpu", shard=(0, 2))
    # cells run seed by seed (standard s0, hybrid s0, standard s1, hybrid s1): shard 0 of 2 takes positions 0, 2
    assert sorted(r["cell"] for r in first.rows) == ["standard__mqar__seed0", "standard__mqar__seed1"]
    second = run_grid(TINY, out, progress=False, device="cpu", shard=(1, 2))
    assert second.complete and len(load_results(out)) == 4
    with pytest.raises(ValueError, match="shard must be"):
        run_grid(TINY, out, progress=False, device="cpu", shard=(2, 2))


def test_a_diverging_cell_is_recorded_and_the_grid_goes_on(tmp_path):
    grid = {**TINY, "seeds": [0], "variants": {"standard": {}},
            "train": {"steps": 3, "batch_size": 4, "lr": 1e30, "grad_clip": 0.0, "warmup": 0}}
    table = run_grid(grid, tmp_path / "out", progress=False, device="cpu")
    (row,) = table.rows
    assert row["status"] == "diverged" and row["loss"] is None and "Lower the learning rate" in row["error"]
    (summary,) = table.summary()
    assert summary["n"] == 0 and summary["failed"] == 1 and summary["loss_mean"] is None


def test_a_cell_that_raises_does_not_stop_the_grid_and_runs_again_next_time(tmp_path, monkeypatch):
    """A bug in one cell (here: the trainer raising for the hybrid variant) leaves the other cells to finish,
    keeps the error in that cell's cell.json and no result, and the next run retries just that cell."""
    import studio.train

    real_train = studio.train.train

    def broken_for_hybrids(spec, *args, **kwargs):
        name = spec.get("name") if isinstance(spec, dict) else getattr(spec, "name", None)
        if name == "hybrid-lightning":
            raise RuntimeError("out of resource: shared memory")
        return real_train(spec, *args, **kwargs)

    grid, out = {**TINY, "seeds": [0]}, tmp_path / "out"
    monkeypatch.setattr(studio.train, "train", broken_for_hybrids)
    with pytest.raises(CellsFailed, match="hybrid-lightning__mqar__seed0: RuntimeError: out of resource") as caught:
        run_grid(grid, out, progress=False, device="cpu")
    assert [r["cell"] for r in caught.value.table.rows] == ["standard__mqar__seed0"]
    record = json.loads((out / "cells" / "hybrid-lightning__mqar__seed0" / "cell.json").read_text())
    assert "out of resource" in record["error"] and "broken_for_hybrids" in record["traceback"]
    assert not (out / "cells" / "hybrid-lightning__mqar__seed0" / "result.json").exists()
    monkeypatch.setattr(studio.train, "train", real_train)
    table = run_grid(grid, out, progress=False, device="cpu")
    assert table.complete and {r["resumed"] for r in table.rows} == {False}


# ---- command line ----------------------------------------------------------------------------------
def test_studio_ablate_end_to_end(tmp_path):
    grid = {**TINY, "seeds": [0], "train": {**TINY["train"], "steps": 2}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    out = tmp_path / "results"
    result = subprocess.run([STUDIO, "ablate", str(path), "--out", str(out), "--device", "cpu", "--threads", "1",
                             "--no-progress", "--workers", "2"],  # two processes, one cell each, then collected
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "tiny: 2 of 2 cells done" in result.stdout
    for text in ("standard", "hybrid-lightning", "accuracy (mean ± std)", "results.csv", "summary.csv", "figures:"):
        assert text in result.stdout, text
    assert len(load_results(out)) == 2 and (out / "figures" / "grouped_bars-accuracy.html").is_file()


def test_studio_ablate_reports_a_bad_grid_and_lists_cells(tmp_path, capsys):
    from studio.cli import main

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({**TINY, "variants": {"x": {"configuration": "sideways", "layer": "gla"}}}))
    assert main(["ablate", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "studio ablate: invalid ablation grid 'tiny'" in err and "unknown configuration 'sideways'" in err
    assert not (tmp_path / "out").exists()
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    assert main(["ablate", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["cells"][:2] == ["standard__mqar__seed0", "hybrid-lightning__mqar__seed0"] and len(listed["cells"]) == 4
    assert main(["ablate", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "out")]) == 2
    assert "no grid file" in capsys.readouterr().err


def test_a_cell_trained_with_defaults_that_changed_since_is_refused(tmp_path):
    """cell.json keeps the spec with every default written out; when today's code builds the same grid with
    another default (here: as if lightning's short_conv default had been 4 when the cell trained), running
    the grid again names the cell and the change before anything trains. Parameters added or removed since
    are not changes."""
    grid, out = {**TINY, "seeds": [0], "variants": {"hybrid-lightning": TINY["variants"]["hybrid-lightning"]}}, \
        tmp_path / "out"
    run_grid(grid, out, progress=False, device="cpu")
    cell_json = out / "cells" / "hybrid-lightning__mqar__seed0" / "cell.json"
    record = json.loads(cell_json.read_text())
    layers = record["resolved_spec"]["layers"]
    assert [layer["mixer"] for layer in layers] == ["softmax", "lightning"]
    assert layers[1]["short_conv"] == 0 and layers[1]["decay"] == "minimax" and layers[0]["qk"] == "separate"

    layers[1]["retired_option"] = 1          # a parameter removed since: not a change
    del layers[0]["qk"]                      # a parameter added since: not a change
    cell_json.write_text(json.dumps(record))
    assert len(run_grid(grid, out, progress=False, device="cpu")) == 1  # collected, not retrained
    assert "retired_option" in json.loads(cell_json.read_text())["resolved_spec"]["layers"][1]  # kept as trained

    layers[1]["short_conv"] = 4
    cell_json.write_text(json.dumps(record))
    assert list(stale_cells(load_grid(grid).cells(), out / "cells")) == ["hybrid-lightning__mqar__seed0"]  # the app asks this
    with pytest.raises(GridError, match=r"trained with defaults that have changed since \(layers\.1\.short_conv: "
                                        r"4 -> 0\); set the old values in the grid"):
        run_grid(grid, out, progress=False, device="cpu")
