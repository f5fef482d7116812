"""Hybrid Attention Studio, the web app: `python app.py [--host 127.0.0.1] [--port 7860]`.

One page for now, "Compose": write or pick a spec, press Build, and see what it costs (per layer,
next to an all-softmax model) and what one head of one layer attends to on a piece of text.
"""

from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from studio.app_helpers import (  # noqa: E402
    DEFAULT_SPEC,
    DEFAULT_TEXT,
    FORMATS,
    MAX_PATTERN_PARAMS,
    MAX_TEXT_BYTES,
    PRESETS,
    attention_pattern,
    dump_spec_data,
    load_spec_data,
    parse_spec,
    pattern_figure,
    text_to_tokens,
)
from studio.spec import ArchSpec, SpecError  # noqa: E402
from studio.summary import human_count, summarize, summary_rows  # noqa: E402

log = logging.getLogger("studio.app")


# ---- messages ----------------------------------------------------------------------------------
def _code(text: str) -> str:
    """`text` as an inline code span (shown literally, on one wrapping line)."""
    text = " ".join(text.split())
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _spec_error(err: SpecError) -> str:
    lines = [f"{field}: {msg}" if field else msg for field, msg in err.problems]
    return "### Spec error\nFix the spec and press **Build** again.\n\n" + "\n".join(f"- {_code(l)}" for l in lines)


def _unexpected(err: Exception, doing: str) -> str:
    log.exception("unexpected error while %s", doing)
    return f"### Something went wrong while {doing}\n\n- {_code(f'{type(err).__name__}: {err}')}"


# ---- the pattern view --------------------------------------------------------------------------
def _pattern_view(spec: ArchSpec, text: str, layer: int, head: int):
    """(figure or None, notes for the status) for one head of one layer."""
    params = spec.estimated_params()
    if params > MAX_PATTERN_PARAMS:
        return None, [f"The pattern view is skipped: about {human_count(params)} parameters is over its cap "
                      f"of {human_count(MAX_PATTERN_PARAMS)} (the model would be built on the CPU)."]
    if not text:
        return None, ["Type some text to see an attention pattern."]
    tokens, labels, cut = text_to_tokens(text, spec.vocab_size)
    notes = [f"The text was cut to its first {MAX_TEXT_BYTES} bytes."] if cut else []
    if spec.vocab_size < 256:
        notes.append(f"Bytes are taken modulo vocab_size={spec.vocab_size}.")
    pattern = attention_pattern(spec, tokens, layer)
    mixer = spec.layers[layer].mixer
    title = f"layer {layer} ({mixer}), head {head}: effective attention pattern (seed 0)"
    return pattern_figure(pattern[head], labels, title), notes


def _clamp(value, top: int) -> int:
    return min(max(int(value or 0), 0), top)


# ---- event handlers ----------------------------------------------------------------------------
def build(spec_text: str, fmt: str, text: str, layer: float, head: float):
    """Validate the spec; show its cost table and one head's attention pattern."""
    no_table = gr.Dataframe(value=None, visible=False)
    try:
        spec = parse_spec(spec_text, fmt)
    except SpecError as err:
        return _spec_error(err), no_table, None, gr.Slider(), gr.Slider()
    except Exception as err:  # never a traceback in the page
        return _unexpected(err, "reading the spec"), no_table, None, gr.Slider(), gr.Slider()
    layer, head = _clamp(layer, spec.n_layers - 1), _clamp(head, spec.n_heads - 1)
    layer_slider = gr.Slider(maximum=max(spec.n_layers - 1, 1), value=layer, interactive=spec.n_layers > 1)
    head_slider = gr.Slider(maximum=max(spec.n_heads - 1, 1), value=head, interactive=spec.n_heads > 1)
    try:
        header, rows = summary_rows(summarize(spec))
        table = gr.Dataframe(value=pd.DataFrame(rows, columns=header), visible=True)
        figure, notes = _pattern_view(spec, text, layer, head)
    except Exception as err:
        return _unexpected(err, "building the model"), no_table, None, layer_slider, head_slider
    mixers = ", ".join(f"{m} ×{sum(l.mixer == m for l in spec.layers)}"
                       for m in dict.fromkeys(l.mixer for l in spec.layers))
    plural = "s" if spec.n_layers != 1 else ""
    status = f"### Built {_code(spec.name)}\n{spec.n_layers} layer{plural} ({mixers}), d_model={spec.d_model}, n_heads={spec.n_heads}."
    if notes:
        status += "\n\n" + "\n".join(f"- {n}" for n in notes)
    return status, table, figure, layer_slider, head_slider


def redraw(spec_text: str, fmt: str, text: str, layer: float, head: float):
    """Redraw the heatmap for another layer or head (the built model is reused)."""
    try:
        spec = parse_spec(spec_text, fmt)
        layer, head = _clamp(layer, spec.n_layers - 1), _clamp(head, spec.n_heads - 1)
        figure, _ = _pattern_view(spec, text, layer, head)
        return figure
    except Exception:  # the status already says what is wrong after Build; keep the old figure
        log.info("redraw skipped", exc_info=True)
        return gr.Plot()


def load_preset(name: str | None, fmt: str):
    """Fill the editor with a preset, in the chosen format."""
    if name not in PRESETS:
        return gr.Code(), gr.Markdown()
    return gr.Code(value=dump_spec_data(PRESETS[name], fmt)), f"Loaded preset **{name}**. Press **Build**."


def switch_format(spec_text: str, fmt: str):
    """Rewrite the editor's text in the newly chosen format (shorthand keys are kept)."""
    other = "YAML" if fmt == "JSON" else "JSON"
    language = fmt.lower()
    try:
        data = load_spec_data(spec_text, other) if spec_text.strip() else None
    except SpecError as err:
        return (gr.Code(language=language),
                f"### Could not convert the spec to {fmt}\nThe text is left as it was.\n\n"
                + "\n".join(f"- {_code(msg)}" for _, msg in err.problems))
    if data is None:
        return gr.Code(language=language), gr.Markdown()
    return gr.Code(value=dump_spec_data(data, fmt), language=language), f"Spec rewritten as {fmt}."


# ---- layout ------------------------------------------------------------------------------------
def build_app() -> gr.Blocks:
    """The Studio's Gradio app (not launched)."""
    with gr.Blocks(title="Hybrid Attention Studio") as demo:
        gr.Markdown("# Hybrid Attention Studio")
        with gr.Tabs():
            with gr.Tab("Compose"):
                with gr.Row():
                    with gr.Column(scale=2):
                        with gr.Row():
                            preset = gr.Dropdown(list(PRESETS), value=None, label="Preset", scale=2)
                            fmt = gr.Radio(list(FORMATS), value="JSON", label="Format", scale=1)
                        editor = gr.Code(dump_spec_data(DEFAULT_SPEC, "JSON"), language="json",
                                         label="Spec", lines=16, max_lines=30, wrap_lines=True,
                                         elem_id="spec-editor")
                        text = gr.Textbox(DEFAULT_TEXT, label=f"Text (first {MAX_TEXT_BYTES} UTF-8 bytes are the tokens)",
                                          lines=2, max_lines=4)
                        with gr.Row():
                            layer = gr.Slider(0, 3, value=3, step=1, label="Layer")
                            head = gr.Slider(0, 3, value=0, step=1, label="Head")
                        build_btn = gr.Button("Build", variant="primary", elem_id="build-button")
                        status = gr.Markdown("Edit the spec or pick a preset, then press **Build**.",
                                             elem_id="status")
                    with gr.Column(scale=3):
                        plot = gr.Plot(label="Attention pattern", elem_id="pattern-plot")
                table = gr.Dataframe(label="Cost per layer (and an all-softmax model of the same size)",
                                     interactive=False, wrap=True, visible=False, elem_id="summary-table")

        inputs = [editor, fmt, text, layer, head]
        build_btn.click(build, inputs, [status, table, plot, layer, head], api_name="build")
        for slider in (layer, head):
            slider.input(redraw, inputs, plot, trigger_mode="always_last", api_visibility="private")
        preset.input(load_preset, [preset, fmt], [editor, status], api_visibility="private")
        fmt.input(switch_format, [editor, fmt], [editor, status], api_visibility="private")
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Hybrid Attention Studio web app")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    build_app().launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
