"""The Gradio app (`app.py`): its helpers, its API (through gradio_client) and its page (through
Playwright driving Debian's Chromium)."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # app.py lives in the repository root

import app  # noqa: E402
from studio.app_helpers import (  # noqa: E402
    DEFAULT_SPEC,
    PRESETS,
    dump_spec_data,
    load_spec_data,
    parse_spec,
    pattern_figure,
    text_to_tokens,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
TIMEOUT_MS = 120_000  # generous: a cold CPU builds the model while the page waits
VALID = dump_spec_data(DEFAULT_SPEC, "JSON")
BAD = json.dumps({"vocab_size": 256, "d_model": 64, "n_layers": 2, "n_heads": 5,
                  "pattern": "S", "pattern_map": {"S": "softmax"}}, indent=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ARTIFACTS = Path(os.environ.get("STUDIO_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("app-runs")


@pytest.fixture(scope="module")
def results_root(tmp_path_factory):
    return tmp_path_factory.mktemp("app-results")


@pytest.fixture(scope="module")
def server_url(runs_root, results_root):
    demo = app.build_app(runs_dir=runs_root, results_dir=results_root)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


# ---- helpers, no server --------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid_in_both_formats(name):
    for fmt in ("JSON", "YAML"):
        text = dump_spec_data(PRESETS[name], fmt)
        assert load_spec_data(text, fmt) == PRESETS[name]
        parse_spec(text, fmt)


def test_switch_format_keeps_the_shorthand():
    editor, message = app.switch_format(VALID, "YAML")
    assert load_spec_data(editor.value, "YAML") == DEFAULT_SPEC
    assert "YAML" in message
    editor, message = app.switch_format("{ not json", "YAML")
    assert "Could not convert" in message and "not valid JSON" in message


def test_text_to_tokens_wraps_ids_and_cuts_long_text():
    tokens, labels, cut = text_to_tokens("hi there", vocab_size=100)
    assert tokens.tolist() == [[b % 100 for b in b"hi there"]]
    assert labels[2] == "␣" and not cut
    tokens, labels, cut = text_to_tokens("é" * 200, vocab_size=256, max_bytes=256)
    assert tokens.shape == (1, 256) and len(labels) == 256 and cut


def test_pattern_figure_labels_every_token_and_blanks_the_future():
    import numpy as np

    fig = pattern_figure(np.tril(np.ones((3, 3))) / 3, ["a", "a", "b"], "t")
    assert list(fig.layout.xaxis.ticktext) == ["a", "a", "b"]  # repeated tokens stay separate columns
    z = np.array(fig.data[0].z, dtype=float)
    assert np.isnan(z[0, 1]) and z[1, 0] == pytest.approx(1 / 3)


# ---- the API ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(server_url):
    from gradio_client import Client

    return Client(server_url, verbose=False, download_files=False)


def _new_client(server_url):
    from gradio_client import Client

    return Client(server_url, verbose=False, download_files=False)


def test_build_endpoint_reports_costs(client):
    status, table, plot, layer, head, diagram, layers = client.predict(VALID, "JSON", "hello world", 3, 1,
                                                                       api_name="/build")
    assert "Built" in status
    assert table["visible"] is True
    assert table["value"]["headers"][:2] == ["layer", "mixer"]
    mixers = [row[1] for row in table["value"]["data"]]
    assert mixers[:4] == ["lightning", "lightning", "lightning", "softmax"]
    assert "all-softmax total" in mixers and "this / all-softmax" in mixers
    assert plot is not None and "softmax" in json.dumps(plot)  # the title names the layer's mixer
    assert (layer["value"], layer["maximum"]) == (3, 3)  # the sliders follow the spec's shape
    assert (head["value"], head["maximum"]) == (1, 3)
    figure = json.loads(diagram["plot"])  # the architecture diagram: one trace per mixer family
    assert {"softmax", "linear"} <= {trace.get("name") for trace in figure["data"]}
    assert [row[1] for row in layers["data"]] == ["lightning", "lightning", "lightning", "softmax"]


def test_build_endpoint_names_a_bad_spec(client):
    status, table, plot, _, _, diagram, _ = client.predict(BAD, "JSON", "hello", 0, 0, api_name="/build")
    assert "d_model=64" in status and "n_heads=5" in status
    assert "Traceback" not in status
    assert table["visible"] is False and plot is None and diagram is None  # no stale results next to a bad spec
    # the server is still up after the error
    status, *_ = client.predict("vocab_size: 256\nd_model: 64\nn_layers: 2\nn_heads: 4\npattern: S\n"
                                "pattern_map: {S: softmax}\n", "YAML", "ok", 0, 0, api_name="/build")
    assert "Built" in status


def test_sliders_follow_the_built_spec(client):
    """After building an 8-layer spec, layer 7 can be chosen (the slider's range grew)."""
    spec = dump_spec_data(PRESETS["MiniMax 7:1 lightning:softmax"], "YAML")
    status, _, _, layer, *_ = client.predict(spec, "YAML", "abc", 0, 0, api_name="/build")
    assert "8 layers" in status and layer["maximum"] == 7
    status, _, plot, layer, *_ = client.predict(spec, "YAML", "abc", 7, 0, api_name="/build")
    assert layer["value"] == 7 and "layer 7 (softmax)" in json.dumps(plot)


def test_validate_endpoint_gives_the_specs_own_messages(client):
    assert "Spec OK" in client.predict(VALID, "JSON", api_name="/validate")
    message = client.predict(BAD, "JSON", api_name="/validate")
    assert "n_heads=5" in message and "Spec error" in message
    assert "not valid YAML" in client.predict("a: [", "YAML", api_name="/validate")


def test_apply_layers_rewrites_the_spec_and_names_bad_cells(client):
    rows = {"headers": ["layer", "mixer", "positional", "params"],
            "data": [[0, "sliding_window", "nope", '{"window": 16}'], [1, "softmax", "rope", ""]]}
    editor, status = client.predict(VALID, "JSON", rows, api_name="/apply_layers")
    spec = json.loads(editor["value"])  # an update of the editor's value
    assert spec["n_layers"] == 2 and spec["layers"][0] == {"mixer": "sliding_window", "positional": "nope", "window": 16}
    assert "pattern" not in spec and "rewritten" in status
    rows["data"][1][3] = "{window: "
    _, status = client.predict(VALID, "JSON", rows, api_name="/apply_layers")
    assert "layers[1].params" in status and "Spec error" in status
    rows["data"][1] = [1, "mamba", "rope", "{}"]
    _, status = client.predict(VALID, "JSON", rows, api_name="/apply_layers")
    assert "unknown mixer 'mamba'" in status


def _train(client, name, steps=20, arch="small hybrid (lightning + softmax)", task="mqar", task_args="{}", spec=""):
    job = client.submit("", arch, spec, "JSON", task, task_args, steps, 16, 3e-3, name, api_name="/train")
    job.result(timeout=600)
    return job.outputs()


def test_train_lists_shows_and_explores_a_run(client):
    outputs = _train(client, "api-run", steps=20)
    status, curve, runs = outputs[-1]
    assert "finished" in status and "step 20 of 20" in status and "vocab_size set from 256 to the task's 128" in status
    assert len(outputs) >= 2  # progress was streamed before the end
    curve = json.loads(curve["plot"])
    assert [t["name"] for t in curve["data"]][:2] == ["train loss", "train accuracy"] and len(curve["data"][0]["x"]) == 20
    assert runs["value"] == "api-run"
    assert client.predict("", api_name="/list_runs")["choices"][0][0] == "api-run"
    info, run_curve = client.predict("", "api-run", api_name="/show_run")
    assert "status finished" in info and "task mqar" in info and run_curve is not None
    out = client.predict("", "run: api-run", "task example", "", 64, 0, None, api_name="/explore")
    assert "an example of the task 'mqar'" in out[0] and out[1] is not None
    out = client.predict("", "run: api-run", "text", "hello", 64, 0, None, api_name="/explore")
    assert "too small for text" in out[0] and "task example" in out[0] and out[1] is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(task_args="{bad"), "task arguments are not valid JSON"),
    (dict(arch="the spec in Compose", spec="{ nope"), "not valid JSON"),
    (dict(arch="the spec in Compose", spec=json.dumps({**DEFAULT_SPEC, "d_model": 4096, "n_layers": 8})),
     "over the app's training cap"),
])
def test_train_refuses_bad_input_with_the_fix(client, kwargs, message):
    status, curve, _ = _train(client, "bad-run", **kwargs)[-1]
    assert message in status and curve is None and "Traceback" not in status


@pytest.mark.parametrize("kwargs, message", [(dict(task="no-such-task"), "not in the list of choices"),
                                             (dict(steps=0), "less than minimum value 1")])
def test_values_outside_a_components_range_are_refused_by_gradio(client, kwargs, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        _train(client, "bad-value", **kwargs)
    assert client.predict(VALID, "JSON", api_name="/validate").startswith("Spec OK")  # still serving


def test_a_name_that_exists_or_escapes_stays_inside_the_users_folder(client, runs_root):
    _train(client, "twice", steps=2)
    status, *_ = _train(client, "twice", steps=2)[-1]
    assert "already exists" in status
    status, *_ = _train(client, "../../escape", steps=2)[-1]
    assert "finished" in status
    folder = runs_root / client.session_hash
    assert (folder / "escape" / "run.json").is_file() and not (runs_root.parent / "escape").exists()
    info, _ = client.predict("", "../../etc", api_name="/show_run")
    assert "cannot be read" in info and "not a run of this user" in info


def test_cancel_stops_training_and_keeps_the_checkpoint(server_url, runs_root):
    from gradio_client.utils import Status

    user = _new_client(server_url)
    job = user.submit("", "small hybrid (lightning + softmax)", "", "JSON", "mqar", "{}", 5000, 16, 3e-3, "long",
                      api_name="/train")
    run = runs_root / user.session_hash / "long"
    for _ in range(1200):  # waiting for the first step, not timing it
        if (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().strip():
            break
        time.sleep(0.1)
    status = user.predict("", api_name="/cancel_training")
    assert "Cancelled" in status and "stopped" in status
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "stopped" and 1 <= record["step"] < 5000
    assert (run / record["last_checkpoint"] / "model.safetensors").is_file()
    try:  # the training event ends by itself once its job has stopped (or gradio cancelled it)
        final = job.result(timeout=120)[0]
        assert "stopped" in final
    except Exception as err:
        assert job.status().code == Status.CANCELLED, err
    assert "No training is running" in user.predict("", api_name="/cancel_training")


def test_training_runs_one_at_a_time_in_a_queue(server_url):
    from gradio_client.utils import Status

    first, second = _new_client(server_url), _new_client(server_url)
    job1 = first.submit("", "small hybrid (lightning + softmax)", "", "JSON", "mqar", "{}", 5000, 16, 3e-3, "q1",
                        api_name="/train")
    for _ in range(600):
        if job1.status().code == Status.PROCESSING:
            break
        time.sleep(0.1)
    job2 = second.submit("", "small hybrid (lightning + softmax)", "", "JSON", "mqar", "{}", 2, 16, 3e-3, "q2",
                         api_name="/train")
    time.sleep(2)
    assert job2.status().code == Status.IN_QUEUE  # the training queue holds it while job 1 runs
    first.predict("", api_name="/cancel_training")
    assert "finished" in job2.result(timeout=600)[0]


def test_users_never_see_each_others_runs(server_url, client):
    _train(client, "mine", steps=2)
    other = _new_client(server_url)
    assert other.predict("", api_name="/list_runs")["choices"] == []
    info, _ = other.predict("", "mine", api_name="/show_run")
    assert "cannot be read" in info
    out = other.predict("", "run: mine", "task example", "", 64, 0, None, api_name="/explore")
    assert "not a model you can open here" in out[0]


def test_explore_default_model_and_compare_with_smollm2(server_url):
    # a new page session: the layer slider's range is per session and follows the last model explored
    client = _new_client(server_url)
    text = "The cat sat on the mat. The dog sat on the log."
    out = client.predict("", "tiny-hybrid (default)", "text", text, 64, 2, None, api_name="/explore")
    status, heads, rhythm, tokens, spans, graph, layer, *compare = out
    assert "tiny-hybrid (default)" in status and f"{len(text)} tokens" in status
    assert "layer 2 (softmax)" in json.dumps(heads)  # the head grid of the chosen layer
    assert 'class="tok anchor"' in tokens or 'class="tok both"' in tokens
    assert rhythm is not None and spans is not None and graph is not None
    assert layer["maximum"] == 2 and compare == ["", None, None, ""]
    out = client.predict("", "SmolLM2-135M-Instruct (pretrained)", "answer", "What is 2 plus 3?", 16, 1,
                         "tiny-softmax (default)", api_name="/explore")
    assert "the model wrote" in out[0] and "of 30" in out[0] and "layer 1 (softmax)" in json.dumps(out[1])
    assert out[6]["maximum"] == 29  # the slider now spans SmolLM2's layers
    assert "tiny-softmax (default)" in out[7] and out[8] is not None and 'class="tok' in out[10]


@pytest.mark.parametrize("label, text, message", [
    ("tiny-hybrid (default)", "x" * 100_000, "100,000 characters"),
    ("tiny-hybrid (default)", "", "the text is empty"),
    ("tiny-hybrid (default)", "y" * 5000, "tokens long"),
    ("run: ../../etc", "abc", "not a model you can open here"),
    ("no such model", "abc", "not a model you can open here"),
])
def test_explore_errors_show_in_the_page(client, label, text, message):
    out = client.predict("", label, "text", text, 64, 0, None, api_name="/explore")
    assert "Cannot explore" in out[0] and message in out[0] and out[1] is None


def test_a_corrupt_run_gives_an_error_and_the_app_keeps_serving(client, runs_root):
    _train(client, "to-corrupt", steps=2)
    run = runs_root / client.session_hash / "to-corrupt"
    record = json.loads((run / "run.json").read_text())
    (run / record["last_checkpoint"] / "model.safetensors").write_bytes(b"\0garbage")
    out = client.predict("", "run: to-corrupt", "task example", "", 64, 0, None, api_name="/explore")
    assert "missing or corrupt" in out[0]
    (run / "run.json").write_text("{ not json")
    info, _ = client.predict("", "to-corrupt", api_name="/show_run")
    assert "cannot be read" in info
    assert client.predict(VALID, "JSON", api_name="/validate").startswith("Spec OK")  # still serving


# ---- the Ablate tab's API ------------------------------------------------------------------------------
# A tiny grid: 2 variants (the base, and lightning in its odd layer) x tiny MQAR x 1 seed, a few steps of
# a d_model 16, 2-layer model.
TINY_ABLATION = {"base": "small-softmax", "spec": "", "mixers": ["lightning"], "configurations": ["hybrid"],
                 "ratios": [], "standard": True, "tasks": ["mqar"], "mqar_seq_len": 16, "mqar_pairs": 2,
                 "text_seq_len": 128, "seeds": 1, "steps": 6, "batch": 8, "lr": 3e-3, "d_model": 16, "n_layers": 2,
                 "name": ""}
TINY_GRID_YAML = """name: {name}
base: {{d_model: 16, n_heads: 2, n_layers: 2, mlp_ratio: 2, pattern: S, pattern_map: {{S: softmax}}}}
variants:
  standard: {{train: {{steps: 3}}}}
  hybrid-lightning: {{configuration: hybrid, layer: lightning, train: {{steps: {steps}, ckpt_every: 5000}}}}
tasks:
  - {{name: mqar, vocab_size: 32, seq_len: 16, num_pairs: 2}}
train: {{steps: 3, batch_size: 4, eval_batches: 1}}
"""


def _ablate_build(client, **changes):
    c = {**TINY_ABLATION, **changes}
    grid, check = client.predict("", c["base"], c["spec"], "JSON", c["mixers"], c["configurations"], c["ratios"],
                                 c["standard"], c["tasks"], c["mqar_seq_len"], c["mqar_pairs"], c["text_seq_len"],
                                 c["seeds"], c["steps"], c["batch"], c["lr"], c["d_model"], c["n_layers"], c["name"],
                                 api_name="/ablate_build")
    return grid.get("value"), check


def _ablate_wait(client) -> tuple:
    """Poll until the user's ablation is no longer running (waiting on a condition, not timing it)."""
    for _ in range(6000):
        out = client.predict("", api_name="/ablate_poll")
        if ": running" not in out[0] and ": stopping" not in out[0]:
            return out
        time.sleep(0.2)
    raise AssertionError(f"the ablation never ended: {out[0]}")


def _variants(table) -> list[str]:
    return [row[0] for row in table["data"]]


def test_ablate_build_and_validate_endpoints(client):
    grid, check = _ablate_build(client, name="api-tiny")
    assert "Grid OK" in check and "api-tiny" in check and "**2 cells**" in check
    assert "`hybrid-lightning`: softmax · lightning" in check
    import yaml

    data = yaml.safe_load(grid)
    assert list(data["variants"]) == ["standard", "hybrid-lightning"] and data["base"]["d_model"] == 16
    assert data["tasks"] == [{"name": "mqar", "seq_len": 16, "num_pairs": 2}] and data["train"]["steps"] == 6
    _, check = _ablate_build(client, configurations=["hybrid", "top"])
    assert "Grid error" in check and "configuration 'top' needs a base of at least 3 layers" in check
    grid, check = _ablate_build(client, base=app.COMPOSE_SPEC, spec=BAD)
    assert grid is None and "Spec error" in check and "n_heads=5" in check
    grid, check = _ablate_build(client, base=app.COMPOSE_SPEC, spec=VALID, n_layers=0, d_model=0)
    assert "Grid OK" in check and "compose-" in check and "lightning · lightning · lightning · softmax" in check

    good = TINY_GRID_YAML.format(name="checked", steps=5)
    assert client.predict("", good, api_name="/ablate_validate").startswith("Grid OK")
    for text, message in (("a: [", "not valid YAML"),
                          (good.replace("configuration: hybrid", "configuration: odd"), "unknown configuration 'odd'"),
                          (good.replace("steps: 5,", "steps: 5000,"), "over the app's cap of 2000"),
                          (good.replace("num_pairs: 2}", "num_pairs: 2}\n  - {name: text, corpus: /etc/passwd}"),
                           "the app trains on pydoc or shakespeare"),
                          ("/etc/passwd", "a grid is a mapping")):
        message_shown = client.predict("", text, api_name="/ablate_validate")
        assert "Grid error" in message_shown and message in message_shown and "Traceback" not in message_shown
        assert "root:" not in message_shown  # never a file's content


def test_ablate_runs_polls_and_loads(server_url, runs_root, results_root):
    import shutil

    import yaml

    user = _new_client(server_url)
    grid, check = _ablate_build(user, name="api-ablation")
    assert "Grid OK" in check
    status, *_ = user.predict("", grid, api_name="/ablate_run")
    assert "Ablation `api-ablation`" in status
    status, plot, table, timer = _ablate_wait(user)
    assert "finished" in status and "2 of 2 cells done" in status and timer["active"] is False
    assert _variants(table) == ["standard", "hybrid-lightning"] and "accuracy" in table["headers"]
    figure = json.loads(plot["plot"])
    assert [trace["name"] for trace in figure["data"]] == ["standard", "hybrid-lightning"]  # grouped bars
    folder = runs_root / user.session_hash / "ablations" / "api-ablation"
    assert (folder / "results.csv").is_file() and (folder / "figures" / "grouped_bars-accuracy.html").is_file()

    assert "api-ablation" in [c[0] for c in user.predict("", api_name="/ablate_list")["choices"]]
    info, plot, table, figures = user.predict("", "api-ablation", api_name="/ablate_load")
    assert "all 2 cells finished" in info and _variants(table) == ["standard", "hybrid-lightning"]
    assert plot is not None and figures["value"] == "grouped_bars-accuracy"
    assert "grouped_bars-loss" in [c[0] for c in figures["choices"]]

    # a results/ folder under the repository (here the server's results_dir) is listed for everyone
    shutil.copytree(folder, results_root / "shared-ablation")
    other = _new_client(server_url)
    listed = [c[0] for c in other.predict("", api_name="/ablate_list")["choices"]]
    findings = sorted(p.name for p in app.FINDINGS_DIR.iterdir() if (p / "grid.yaml").is_file())
    assert listed[0] == "results/shared-ablation" and sorted(listed[1:]) == [f"findings/{n}" for n in findings]
    info, _, table, _ = other.predict("", "results/shared-ablation", api_name="/ablate_load")
    assert "all 2 cells finished" in info and _variants(table) == ["standard", "hybrid-lightning"]
    # the committed H200 grids of docs/findings.md, as they are in the repository
    info, plot, table, _ = other.predict("", "findings/hybrid_ratio_mqar", api_name="/ablate_load")
    assert "all 39 cells finished" in info and "gated_delta-3to1" in _variants(table) and plot is not None
    info, *_ = other.predict("", "api-ablation", api_name="/ablate_load")  # another user's: not theirs
    assert "not an ablation you can open here" in info

    # the same grid again: nothing to train, it says so; a changed grid under the same name is refused
    assert "2 of 2 cells are already done" in user.predict("", grid, api_name="/ablate_validate")
    user.predict("", grid, api_name="/ablate_run")
    status, *_ = _ablate_wait(user)
    assert "finished" in status and "2 from an earlier run" in status
    changed = yaml.safe_dump({**yaml.safe_load(grid), "train": {**yaml.safe_load(grid)["train"], "lr": 0.001}},
                             sort_keys=False)
    status, *_ = user.predict("", changed, api_name="/ablate_run")
    assert "Cannot run the ablation" in status and "another definition" in status and "another `name`" in status
    assert len(json.loads((folder / "results.json").read_text())["rows"]) == 2  # nothing was lost


def test_ablate_stop_keeps_cells_and_run_resumes(server_url, runs_root):
    user, other = _new_client(server_url), _new_client(server_url)
    grid = TINY_GRID_YAML.format(name="api-stop", steps=400)
    status, *_ = user.predict("", grid, api_name="/ablate_run")
    assert "Ablation `api-stop`" in status
    folder = runs_root / user.session_hash / "ablations" / "api-stop"
    cell = folder / "cells" / "hybrid-lightning__mqar__seed0"
    for _ in range(6000):  # waiting for the second cell's first step, not timing it
        if (cell / "metrics.jsonl").is_file() and (cell / "metrics.jsonl").read_text().strip():
            break
        time.sleep(0.05)
    status, *_ = user.predict("", grid, api_name="/ablate_run")
    assert "Cannot run the ablation" in status and "still running" in status
    status, *_ = other.predict("", TINY_GRID_YAML.format(name="other", steps=3), api_name="/ablate_run")
    assert "Cannot run the ablation" in status and "running 1 ablation" in status

    status, plot, table, timer, folders, info, *_ = user.predict("", api_name="/ablate_stop")
    assert "stopped" in status and "1 of 2 cells done" in status and "interrupted" in status and "resume" in status
    assert _variants(table) == ["standard"] and timer["active"] is False and folders["value"] == "api-stop"
    assert "1 of 2 cells done (partial" in info  # the Load view shows the stopped ablation
    record = json.loads((cell / "run.json").read_text())
    assert record["status"] == "stopped" and 1 <= record["step"] < 400
    assert (cell / record["last_checkpoint"] / "model.safetensors").is_file()
    assert (folder / "cells" / "standard__mqar__seed0" / "result.json").is_file()
    assert "No ablation of yours is running" in user.predict("", api_name="/ablate_stop")[0]
    info, _, table, _ = user.predict("", "api-stop", api_name="/ablate_load")  # a partial ablation loads too
    assert "1 of 2 cells done (partial" in info and _variants(table) == ["standard"]

    status, *_ = user.predict("", grid, api_name="/ablate_run")  # Run again: resumes
    assert "1 from an earlier run: resumed" in status
    status, _, table, _ = _ablate_wait(user)
    assert "finished" in status and _variants(table) == ["standard", "hybrid-lightning"]
    row = json.loads((cell / "result.json").read_text())
    assert row["resumed"] is True and row["steps"] == 400


def test_ablate_load_errors_show_and_the_app_keeps_serving(client, runs_root):
    from studio.ablate import RESULTS_FORMAT

    mine = runs_root / client.session_hash / "ablations"
    for name, content in (("corrupt", "{ not json"), ("wrong-format", json.dumps({"format": "x", "rows": []})),
                          ("bad-rows", json.dumps({"format": RESULTS_FORMAT, "rows": [{"x": 1}]}))):
        (mine / name).mkdir(parents=True)
        (mine / name / "results.json").write_text(content)
    (mine / "empty").mkdir()
    (mine / "empty" / "grid.yaml").write_text("name: empty\n")
    for label, message in (("corrupt", "Expecting property name"), ("wrong-format", "not an ablation results file"),
                           ("bad-rows", "'variant'"), ("empty", "no ablation results"),
                           ("../../etc", "not an ablation you can open here"),
                           ("results/../../etc", "not an ablation you can open here")):
        info, plot, table, _ = client.predict("", label, api_name="/ablate_load")
        assert "Cannot load this ablation" in info and message in info, (label, info)
        assert plot is None and "Traceback" not in info
    assert client.predict("", "", api_name="/ablate_load")[0] == "No ablation chosen."
    assert (mine / "corrupt" / "results.json").read_text() == "{ not json"  # never removed or rewritten
    assert client.predict(VALID, "JSON", api_name="/validate").startswith("Spec OK")  # still serving


# ---- the RL tab through the API -------------------------------------------------------------------------
RL_TINY = {"credit": "coupled", "loss": "cispo", "steps": 2, "group": 2, "prompts": 1,
           "start": "new: small-hybrid, warmed up on Countdown", "new_tokens": 8, "lr": 1e-4, "warmup": 2, "name": ""}


def _rl_start(client, **changes):
    c = {**RL_TINY, **changes}
    return client.predict("", c["credit"], c["loss"], c["steps"], c["group"], c["prompts"], c["start"],
                          c["new_tokens"], c["lr"], c["warmup"], c["name"], api_name="/rl_start")


def test_rl_errors_show_as_messages_and_the_app_keeps_serving(server_url, runs_root):
    user = _new_client(server_url)
    status, plot, timer = user.predict("", api_name="/rl_poll")  # (the State is not an API output)
    assert "No RL run is running" in status and plot is None and timer["active"] is False
    assert user.predict("", api_name="/rl_stop")[0] == "No RL run of yours is running."
    note, view = user.predict("", "coupled", 8, 0, api_name="/rl_credit")
    assert "Cannot show the credit" in note and "no RL run of yours yet" in note and view == ""
    for changes, message in (({"start": "run: ../../etc"}, "not a run of yours"),
                             ({"start": "run: nothing"}, "no such run"),
                             ({"name": "warmups"}, "folder of your warm-ups")):
        status, *_ = _rl_start(user, **changes)
        assert "Cannot start the RL run" in status and message in status, (changes, status)
        assert "Traceback" not in status
    assert not (runs_root / user.session_hash / "rl").exists()  # nothing was made
    assert user.predict(VALID, "JSON", api_name="/validate").startswith("Spec OK")  # still serving


# ---- the page ----------------------------------------------------------------------------------------
def _browser(p):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium for the browser tests")
    return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def _screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = _browser(p)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(server_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server_url)
    return page


@pytest.mark.browser
def test_page_compose_builds_and_shows_errors(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Compose").click()
    page.get_by_role("button", name="Build").click()
    page.wait_for_selector("#pattern-plot .js-plotly-plot", timeout=TIMEOUT_MS)
    page.wait_for_selector("#diagram-plot .js-plotly-plot", timeout=TIMEOUT_MS)
    expect(page.locator("#summary-table")).to_contain_text("all-softmax", timeout=TIMEOUT_MS)
    expect(page.locator("#status")).to_contain_text("Built", timeout=TIMEOUT_MS)
    expect(page.locator("#diagram-plot")).to_contain_text("L3 softmax")
    _screenshot(page, "compose")

    # moving the layer slider redraws the heatmap for that layer
    page.locator("input[type=range]").first.focus()
    page.keyboard.press("Home")
    expect(page.locator("#pattern-plot")).to_contain_text("layer 0 (lightning)", timeout=TIMEOUT_MS)

    editor = page.locator("#spec-editor .cm-content")
    editor.click()
    page.keyboard.press("ControlOrMeta+A")
    page.keyboard.insert_text(BAD)
    status = page.locator("#status")
    expect(status).to_contain_text("n_heads=5", timeout=TIMEOUT_MS)  # live validation, before Build
    page.get_by_role("button", name="Build").click()
    expect(status).to_contain_text("n_heads=5", timeout=TIMEOUT_MS)
    expect(status).to_contain_text("d_model=64")
    expect(page.locator("body")).not_to_contain_text("Traceback")
    editor.click()
    page.keyboard.press("ControlOrMeta+A")
    page.keyboard.insert_text(VALID)
    expect(status).to_contain_text("Spec OK", timeout=TIMEOUT_MS)


@pytest.mark.browser
def test_page_train_updates_the_plot_and_opens_the_run_in_explore(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Train").click()
    steps = page.get_by_label("Steps")
    steps.fill("40")
    page.get_by_label("Run name (blank: task and time)").fill("browser-run")
    page.locator("#train-button").click()
    status = page.locator("#train-status")
    expect(status).to_contain_text("step", timeout=TIMEOUT_MS)  # the live status while it trains
    page.wait_for_selector("#train-plot .js-plotly-plot", timeout=TIMEOUT_MS)
    expect(status).to_contain_text("finished", timeout=TIMEOUT_MS)
    expect(status).to_contain_text("step 40 of 40")
    _screenshot(page, "train")
    page.locator("#open-in-explore").click()
    expect(page.locator("#explore-model input")).to_have_value("run: browser-run", timeout=TIMEOUT_MS)


@pytest.mark.browser
def test_page_explore_shows_heads_and_highlighted_tokens(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Explore").click()
    model = page.locator("#explore-model input")
    model.click()
    page.get_by_role("option", name="tiny-hybrid (default)").click()
    page.locator("#explore-button").click()
    expect(page.locator("#explore-status")).to_contain_text("tokens, response from token 0", timeout=TIMEOUT_MS)
    page.wait_for_selector("#explore-heads .js-plotly-plot", timeout=TIMEOUT_MS)
    page.wait_for_selector("#explore-rhythm .js-plotly-plot", timeout=TIMEOUT_MS)
    page.wait_for_selector("#explore-graph .js-plotly-plot", timeout=TIMEOUT_MS)
    assert page.locator("#explore-tokens .tok.anchor, #explore-tokens .tok.both").count() > 0
    assert page.locator("#explore-tokens .tok.preplan, #explore-tokens .tok.both").count() > 0
    _screenshot(page, "explore")

    page.locator("#explore-text textarea").fill("z" * 100_000)
    page.locator("#explore-button").click()
    expect(page.locator("#explore-status")).to_contain_text("100,000 characters", timeout=TIMEOUT_MS)
    expect(page.locator("body")).not_to_contain_text("Traceback")


@pytest.mark.browser
def test_page_error_paths_show_in_the_page(page, runs_root):
    """Issue 5 item 6 in the browser: a spec over the size cap, an empty text, and a run whose files are
    corrupt each show their error in the page, and the page keeps working after each."""
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Compose").click()
    editor = page.locator("#spec-editor .cm-content")
    editor.click()
    page.keyboard.press("ControlOrMeta+A")
    page.keyboard.insert_text(json.dumps({**DEFAULT_SPEC, "d_model": 100_000}))
    expect(page.locator("#status")).to_contain_text("over the size cap", timeout=TIMEOUT_MS)
    expect(page.locator("#status")).to_contain_text("STUDIO_MAX_D_MODEL")

    page.get_by_role("tab", name="Explore").click()
    page.locator("#explore-text textarea").fill("")
    page.locator("#explore-button").click()
    expect(page.locator("#explore-status")).to_contain_text("the text is empty", timeout=TIMEOUT_MS)

    # the run trained in the Train test, corrupted on disk, then opened from the page
    (run,) = runs_root.glob("*/browser-run")
    record = json.loads((run / "run.json").read_text())
    (run / record["last_checkpoint"] / "model.safetensors").write_bytes(b"\0 not safetensors")
    model = page.locator("#explore-model input")
    model.click()
    page.get_by_role("option", name="run: browser-run").click()
    page.get_by_label("task example").check()
    page.locator("#explore-button").click()
    expect(page.locator("#explore-status")).to_contain_text("missing or corrupt", timeout=TIMEOUT_MS)
    expect(page.locator("body")).not_to_contain_text("Traceback")

    page.get_by_label("text", exact=True).check()  # and the page still works
    model.click()
    page.get_by_role("option", name="tiny-softmax (default)").click()
    page.locator("#explore-text textarea").fill("still serving")
    page.locator("#explore-button").click()
    expect(page.locator("#explore-status")).to_contain_text("13 tokens", timeout=TIMEOUT_MS)


@pytest.mark.browser
def test_page_learn_draws_every_view(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Learn").click()
    for plot in ("#learn-compare", "#learn-gallery"):
        page.wait_for_selector(f"{plot} .js-plotly-plot", timeout=TIMEOUT_MS)
    expect(page.locator("#learn-chunk-note")).to_contain_text("Largest difference", timeout=TIMEOUT_MS)
    for name in ("softmax", "sliding_window", "linear", "lightning"):
        expect(page.locator("#learn-gallery")).to_contain_text(name)
    _screenshot(page, "learn")


@pytest.mark.browser
def test_page_ablate_runs_a_grid_and_loads_it(page):
    """Build a tiny grid from the choices, run it, watch the chart and the summary fill in, load the
    finished folder back, and see an invalid grid's error."""
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Ablate").click()
    page.locator("#ablate-mixers .token", has_text="mlp_mixing").locator(".token-remove").click()
    for field, value in (("d-model", "16"), ("n-layers", "2"), ("mqar-len", "16"), ("mqar-pairs", "2"),
                         ("steps", "8"), ("batch", "8")):
        page.locator(f"#ablate-{field} input").fill(value)
    page.locator("#ablate-name input").fill("browser-ablation")
    page.locator("#ablate-build").click()
    check = page.locator("#ablate-check")
    expect(check).to_contain_text("browser-ablation", timeout=TIMEOUT_MS)
    expect(check).to_contain_text("2 variants x 1 task (mqar) x 1 seed = 2 cells of 8 steps")
    expect(page.locator("#ablate-grid")).to_contain_text("hybrid-lightning")

    page.locator("#ablate-run").click()
    status = page.locator("#ablate-status")
    expect(status).to_contain_text("Ablation browser-ablation", timeout=TIMEOUT_MS)
    expect(status).to_contain_text("finished", timeout=TIMEOUT_MS)
    expect(status).to_contain_text("2 of 2 cells done")
    page.wait_for_selector("#ablate-plot .js-plotly-plot", timeout=TIMEOUT_MS)
    for variant in ("standard", "hybrid-lightning"):
        expect(page.locator("#ablate-table")).to_contain_text(variant, timeout=TIMEOUT_MS)
        expect(page.locator("#ablate-plot")).to_contain_text(variant)
    _screenshot(page, "ablate")

    # the finished ablation in the Load view (shown when it ended), another figure of it, then loaded afresh
    expect(page.locator("#ablate-folders input")).to_have_value("browser-ablation", timeout=TIMEOUT_MS)
    expect(page.locator("#ablate-load-info")).to_contain_text("all 2 cells finished", timeout=TIMEOUT_MS)
    load_plot = page.locator("#ablate-load-plot")
    page.locator("#ablate-figure input").click()
    page.get_by_role("option", name="grouped_bars-loss").click()
    expect(load_plot).to_contain_text("held-out loss", timeout=TIMEOUT_MS)
    page.locator("#ablate-folders input").click()
    page.get_by_role("option", name="browser-ablation").click()
    page.locator("#ablate-load").click()
    expect(page.locator("#ablate-figure input")).to_have_value("grouped_bars-accuracy", timeout=TIMEOUT_MS)
    expect(load_plot).to_contain_text("held-out accuracy", timeout=TIMEOUT_MS)
    expect(page.locator("#ablate-load-info")).to_contain_text("all 2 cells finished")
    for variant in ("standard", "hybrid-lightning"):
        expect(page.locator("#ablate-load-table")).to_contain_text(variant)
    _screenshot(page, "ablate-load")
    # a committed grid of docs/findings.md, listed for every user
    page.locator("#ablate-folders input").click()
    page.get_by_role("option", name="findings/delta_vs_conv_mqar").click()
    page.locator("#ablate-load").click()
    expect(page.locator("#ablate-load-info")).to_contain_text("all 9 cells finished", timeout=TIMEOUT_MS)
    for variant in ("gated_delta-noconv", "lightning-conv4", "gla-conv4"):
        expect(page.locator("#ablate-load-table")).to_contain_text(variant)

    editor = page.locator("#ablate-grid .cm-content")
    editor.click()
    page.keyboard.press("ControlOrMeta+A")
    page.keyboard.insert_text(TINY_GRID_YAML.format(name="bad", steps=5).replace("hybrid", "odd"))
    expect(check).to_contain_text("unknown configuration 'odd'", timeout=TIMEOUT_MS)  # live, before Run
    page.locator("#ablate-run").click()
    expect(status).to_contain_text("Grid error", timeout=TIMEOUT_MS)
    expect(status).to_contain_text("unknown configuration 'odd'")
    expect(page.locator("body")).not_to_contain_text("Traceback")


@pytest.mark.browser
def test_page_rl_runs_shows_the_reward_chart_and_the_credit_view(page):
    """Start a tiny RL run in the RL tab, watch the reward chart get its points, then sample rollouts from the
    policy and see their tokens coloured by credit, with preplan tokens and anchors marked."""
    from playwright.sync_api import expect

    page.get_by_role("tab", name="RL", exact=True).click()
    for field, value in (("steps", "2"), ("group", "2"), ("prompts", "1")):
        page.locator(f"#rl-{field} input").fill(value)
    page.get_by_text("More settings").click()
    for field, value in (("warmup", "2"), ("new-tokens", "8")):
        page.locator(f"#rl-{field} input").fill(value)
    page.locator("#rl-name input").fill("browser-rl")
    page.locator("#rl-start").click()
    status = page.locator("#rl-status")
    expect(status).to_contain_text("RL run browser-rl", timeout=TIMEOUT_MS)
    expect(status).to_contain_text("finished", timeout=TIMEOUT_MS)
    expect(status).to_contain_text("step 2 of 2")
    page.wait_for_selector("#rl-plot .js-plotly-plot", timeout=TIMEOUT_MS)
    expect(page.locator("#rl-plot")).to_contain_text("reward (sampled)", timeout=TIMEOUT_MS)
    expect(page.locator("#rl-plot .scatterlayer .trace").first.locator(".point")).to_have_count(2, timeout=TIMEOUT_MS)

    page.locator("#rl-credit-button").click()
    view = page.locator("#rl-credit")
    expect(page.locator("#rl-credit-note")).to_contain_text("browser-rl", timeout=TIMEOUT_MS)
    expect(view).to_contain_text("reward", timeout=TIMEOUT_MS)
    tokens = view.locator(".rl-row .tok")
    assert tokens.count() >= 4
    gammas = [float(g) for g in tokens.evaluate_all("els => els.map(e => e.dataset.gamma)")]
    colours = set(tokens.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)"))
    assert any(g > 1.0 for g in gammas) and len(colours) >= 2  # boosted tokens stand out
    assert view.locator(".rl-row .tok.anchor").count() > 0 and view.locator(".rl-row .tok.preplan").count() > 0
    assert view.locator(".rl-row .tok.anchor").first.evaluate("e => getComputedStyle(e).borderTopColor") != \
        view.locator(".rl-row .tok:not(.anchor)").first.evaluate("e => getComputedStyle(e).borderTopColor")
    _screenshot(page, "rl")
    expect(page.locator("body")).not_to_contain_text("Traceback")


@pytest.mark.browser
def test_two_browsers_keep_their_runs_apart(server_url, browser):
    """Each browser gets its own id (local storage); one browser's runs are not listed in another."""
    from playwright.sync_api import expect

    first = browser.new_context().new_page()
    first.set_default_timeout(TIMEOUT_MS)
    first.goto(server_url)
    first.get_by_role("tab", name="Train").click()
    first.get_by_label("Steps").fill("2")
    first.get_by_label("Run name (blank: task and time)").fill("private-run")
    first.locator("#train-button").click()
    expect(first.locator("#train-status")).to_contain_text("finished", timeout=TIMEOUT_MS)
    first.reload()  # the same browser keeps its runs after a reload
    first.get_by_role("tab", name="Train").click()
    expect(first.locator("#runs-list input")).to_have_value("private-run", timeout=TIMEOUT_MS)

    second = browser.new_context().new_page()
    second.set_default_timeout(TIMEOUT_MS)
    second.goto(server_url)
    second.get_by_role("tab", name="Train").click()
    second.wait_for_timeout(2000)
    expect(second.locator("#runs-list input")).to_have_value("")
    first.context.close()
    second.context.close()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":  # LISTEN
                found.add(address)
    return found


def test_python_app_py_serves_on_loopback_only():
    """`python app.py` (what `make run` starts) serves the page, bound to 127.0.0.1 by default."""
    import subprocess
    import time
    import urllib.request

    port = _free_port()
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        page = None
        for _ in range(600):  # waiting for start-up, not timing it
            if proc.poll() is not None:
                break
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert page is not None and "Hybrid Attention Studio" in page, "app.py did not serve its page"
        assert _listening_addresses(port) == {"0100007F"}, "the app must listen on 127.0.0.1 only"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_explore_waits_for_default_models_still_being_built_or_names_their_failure(tmp_path):
    """A first start: the default models train in the background; Explore waits for them (progress in the
    page) and then answers; a build that failed gives a visible error, and the app keeps serving."""
    from gradio_client import Client

    from studio.defaults import DefaultModels

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    for cache, expect in ((tmp_path / "cache", "tokens, response from token 0"),
                          (blocker, "building the default models failed")):
        demo = app.build_app(runs_dir=tmp_path / "runs", defaults=DefaultModels(cache_dir=cache, steps=3))
        port = _free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
            out = client.predict("", "tiny-hybrid (default)", "text", "hello there", 64, 0, None, api_name="/explore")
            assert expect in out[0], out[0]
            assert client.predict(VALID, "JSON", api_name="/validate").startswith("Spec OK")
        finally:
            demo.close()


def test_threads_below_one_is_refused_before_the_server_starts(capsys):
    with pytest.raises(SystemExit) as stop:
        app.main(["--threads", "0", "--port", "0"])
    assert stop.value.code == 2
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err
