"""The `studio` command: `mixers` lists every registered mixer; `summary` prints the per-layer table
with the all-softmax comparison, and its figures follow from the model itself."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio import ArchSpec, build_model
from studio.mixers import REGISTRY

STUDIO = str(Path(sys.executable).with_name("studio"))
SPEC = {"vocab_size": 1000, "d_model": 64, "n_layers": 8, "n_heads": 4, "n_kv_heads": 2,
        "ratio": "7:1", "pattern_map": {"L": "lightning", "S": "softmax"}}


def studio(*args, check=True):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([STUDIO, *args], capture_output=True, text=True, check=check, env=env)


def test_console_script_is_installed():
    assert os.access(STUDIO, os.X_OK), "pip install -e . must install the `studio` console script"


def test_mixers_lists_every_registered_mixer():
    rows = json.loads(studio("mixers", "--json").stdout)
    assert {r["name"] for r in rows} == set(REGISTRY)
    assert all("arXiv" in r["paper"] for r in rows)
    assert all(r["family"] == REGISTRY[r["name"]].family != "other" for r in rows)  # every mixer names its family
    table = studio("mixers").stdout
    for name in REGISTRY:
        assert name in table


@pytest.fixture()
def spec_file(tmp_path):
    path = tmp_path / "minimax.json"
    path.write_text(json.dumps(SPEC))
    return path


def test_summary_table_has_layers_and_all_softmax_comparison(spec_file):
    out = studio("summary", str(spec_file)).stdout
    lines = out.splitlines()
    assert sum(" lightning " in l for l in lines) == 7 and sum(" softmax " in l for l in lines) == 1
    for text in ("all-softmax total", "this / all-softmax", "state @1K", "state @32K", "state @1M"):
        assert text in out, text


def test_summary_figures(spec_file):
    data = json.loads(studio("summary", str(spec_file), "--json", "--length", "2048").stdout)
    model = build_model(ArchSpec.from_dict(SPEC))
    assert data["params"] == sum(p.numel() for p in model.parameters())
    kv, h, d = 2, 4, 16
    softmax, lightning = data["layers"][7], data["layers"][0]
    assert softmax["mixer"] == "softmax" and lightning["mixer"] == "lightning"
    for ctx in (1024, 32768, 1048576):
        assert softmax["state_bytes"][str(ctx)] == 2 * kv * d * ctx * 2  # K and V, bf16
        assert lightning["state_bytes"][str(ctx)] == h * d * d * 2       # constant in the context
    base = data["all_softmax"]
    assert base["state_bytes"]["1048576"] == 8 * 2 * kv * d * 1048576 * 2
    assert data["flops_per_token"] < base["flops_per_token"]


def test_summary_of_a_bad_spec_is_a_message_not_a_traceback(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**SPEC, "n_heads": 5}))
    result = studio("summary", str(path), check=False)
    assert result.returncode == 2
    assert "n_heads=5" in result.stderr and "Traceback" not in result.stderr
    result = studio("summary", str(tmp_path / "missing.yaml"), check=False)
    assert result.returncode == 2 and "no spec file" in result.stderr


def test_analyze_a_run_writes_json_and_html(tmp_path):
    from studio import tasks
    from studio.presets import preset
    from studio.train import train

    run = train(preset("small-hybrid", 258), tasks.get("text", seq_len=32), 3, tmp_path / "run", batch_size=4,
                progress=False)
    text = "Lists are mutable; tuples are not. A <b>list</b> can grow."
    studio("analyze", "--run", str(run), "--text", text, "--response-start", "12",
           "--out", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html"))
    report = json.loads((tmp_path / "r.json").read_text())
    n = len(text.encode())
    assert len(report["tokens"]) == len(report["waad"]) == len(report["fai"]) == n
    assert "".join(t["text"] for t in report["tokens"]) == text
    assert report["preplan"] and all(i >= 12 for i in report["preplan"] + report["anchors"])
    page = (tmp_path / "r.html").read_text()
    assert "&lt;" in page and "<b>list" not in page and "<b>" not in page and "plotly" in page
    result = studio("analyze", "--text", "x", "--out", str(tmp_path / "x.json"), check=False)
    assert result.returncode == 2 and "exactly one of --run" in result.stderr


def test_analyze_pretrained_smollm2_answer(tmp_path):
    env = {**os.environ, "COLUMNS": "200", "STUDIO_CACHE": str(tmp_path / "cache")}
    subprocess.run([STUDIO, "analyze", "--pretrained", "smollm2", "--text", "Tom has 3 apples and buys 5 more. "
                    "How many apples does he have?", "--max-new-tokens", "40", "--out", str(tmp_path / "r.json"),
                    "--html", str(tmp_path / "r.html")], check=True, capture_output=True, env=env)
    report = json.loads((tmp_path / "r.json").read_text())
    answer = "".join(t["text"] for t in report["tokens"][report["response_start"]:])
    assert "8" in answer  # the model really answered
    assert report["anchors"] and min(report["anchors"]) >= report["response_start"]
    assert len(report["layers"]) == 5 and all(10 <= layer <= 20 for layer in report["layers"])  # 30 layers
    assert (tmp_path / "r.html").stat().st_size > 10_000


def test_a_hybrid_of_six_mixer_families_trains_on_mqar(tmp_path):
    """Issue 6: examples/zoo_hybrid.yaml (softmax, linear, gated, delta, hybrid and sparse mixers in one
    model) trains on MQAR through `studio train`: the loss falls well below its start and the run's
    checkpoint loads back."""
    from studio import ArchSpec, HybridLM

    spec_path = Path(__file__).resolve().parents[1] / "examples" / "zoo_hybrid.yaml"
    spec = ArchSpec.load(spec_path)
    families = {REGISTRY[layer.mixer].family for layer in spec.layers}
    assert len(families) >= 5, families
    from studio.presets import preset

    assert preset("zoo-hybrid").layers == spec.layers  # the app's preset is the same model
    out = tmp_path / "zoo"
    studio("train", "--spec", str(spec_path), "--task", "mqar", "--steps", "40", "--batch-size", "32",
           "--lr", "3e-3", "--warmup", "10", "--eval-every", "20", "--out", str(out), "--no-progress")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(r["loss"] for r in records[:3]) / 3, sum(r["loss"] for r in records[-3:]) / 3
    assert len(records) == 40 and last < first - 1.5, (first, last)
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    model = HybridLM.load(out)
    assert [type(block.attn).name for block in model.blocks] == ["gla", "lightning", "gated_delta", "liger", "moh", "softmax"]


def test_docs_mixers_table_lists_every_registered_mixer():
    """docs/mixers.md (written by docs/build_mixers_doc.py) has a row and an image for every mixer."""
    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "mixers.md").read_text()
    for name in REGISTRY:
        assert f"| `{name}` |" in doc, f"rerun `python docs/build_mixers_doc.py`: {name} is missing"
        assert (root / "docs" / "img" / "mixers" / f"{name}.png").is_file(), name


@pytest.mark.parametrize("command", [["ablate", "GRID", "--out", "OUT"],
                                     ["rl", "--steps", "1", "--out", "OUT"],
                                     ["linearize", "--from", "smollm2", "--mixer", "liger", "--keep-softmax", "1", "--out",
                                      "OUT"]])
def test_threads_below_one_is_a_message_before_any_work(tmp_path, command):
    """--threads 0 is refused with the option named, before a grid cell, an RL step or a model load runs."""
    out = tmp_path / "out"
    grid = Path(__file__).resolve().parents[1] / "benchmarks" / "grids" / "hybrid_ratio_mqar.yaml"
    args = [{"OUT": str(out), "GRID": str(grid)}.get(a, a) for a in command]
    result = studio(*args, "--threads", "0", check=False)
    assert result.returncode == 2, result.stderr
    assert "--threads must be >= 1, got 0" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
