"""The Gradio app (`app.py`): its helpers, its API (through gradio_client) and its page (through
Playwright driving Debian's Chromium)."""

from __future__ import annotations

import json
import os
import socket
import sys
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


@pytest.fixture(scope="module")
def server_url():
    demo = app.build_app()
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


# ---- the API -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(server_url):
    from gradio_client import Client

    return Client(server_url, verbose=False, download_files=False)


def test_build_endpoint_reports_costs(client):
    status, table, plot, layer, head = client.predict(VALID, "JSON", "hello world", 3, 1, api_name="/build")
    assert "Built" in status
    assert table["visible"] is True
    assert table["value"]["headers"][:2] == ["layer", "mixer"]
    mixers = [row[1] for row in table["value"]["data"]]
    assert mixers[:4] == ["lightning", "lightning", "lightning", "softmax"]
    assert "all-softmax total" in mixers and "this / all-softmax" in mixers
    assert plot is not None and "softmax" in json.dumps(plot)  # the title names the layer's mixer
    assert (layer["value"], layer["maximum"]) == (3, 3)  # the sliders follow the spec's shape
    assert (head["value"], head["maximum"]) == (1, 3)


def test_build_endpoint_names_a_bad_spec(client):
    status, table, plot, _, _ = client.predict(BAD, "JSON", "hello", 0, 0, api_name="/build")
    assert "d_model=64" in status and "n_heads=5" in status
    assert "Traceback" not in status
    assert table["visible"] is False and plot is None  # no stale results next to a bad spec
    # the server is still up after the error
    status, *_ = client.predict("vocab_size: 256\nd_model: 64\nn_layers: 2\nn_heads: 4\npattern: S\n"
                                "pattern_map: {S: softmax}\n", "YAML", "ok", 0, 0, api_name="/build")
    assert "Built" in status


def test_sliders_follow_the_built_spec(client):
    """After building an 8-layer spec, layer 7 can be chosen (the slider's range grew)."""
    spec = dump_spec_data(PRESETS["MiniMax 7:1 lightning:softmax"], "YAML")
    status, _, _, layer, _ = client.predict(spec, "YAML", "abc", 0, 0, api_name="/build")
    assert "8 layers" in status and layer["maximum"] == 7
    status, _, plot, layer, _ = client.predict(spec, "YAML", "abc", 7, 0, api_name="/build")
    assert layer["value"] == 7 and "layer 7 (softmax)" in json.dumps(plot)


# ---- the page ------------------------------------------------------------------------------------
@pytest.mark.browser
def test_page_builds_and_shows_errors(server_url, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium for the browser tests")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(server_url)
            page.get_by_role("button", name="Build").click()
            page.wait_for_selector("#pattern-plot .js-plotly-plot", timeout=TIMEOUT_MS)
            expect(page.locator("#summary-table")).to_contain_text("all-softmax", timeout=TIMEOUT_MS)
            expect(page.locator("#status")).to_contain_text("Built", timeout=TIMEOUT_MS)
            shot = tmp_path / "compose.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 0

            # moving the layer slider redraws the heatmap for that layer
            page.locator("input[type=range]").first.focus()
            page.keyboard.press("Home")
            expect(page.locator("#pattern-plot")).to_contain_text("layer 0 (lightning)", timeout=TIMEOUT_MS)

            editor = page.locator("#spec-editor .cm-content")
            editor.click()
            page.keyboard.press("ControlOrMeta+A")
            page.keyboard.insert_text(BAD)
            page.get_by_role("button", name="Build").click()
            status = page.locator("#status")
            expect(status).to_contain_text("n_heads=5", timeout=TIMEOUT_MS)
            expect(status).to_contain_text("d_model=64")
            expect(page.locator("body")).not_to_contain_text("Traceback")
        finally:
            browser.close()


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
