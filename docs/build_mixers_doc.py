"""Write docs/mixers.md: one row per registered mixer (family, paper, its effective pattern as a small
image, decoding state, whether a decoding step costs O(1) in the length), from the mixers themselves.

    python docs/build_mixers_doc.py [--no-images]

Patterns: `studio.learn.mixer_gallery` (16 tokens, random weights, head 0) drawn by
`studio.learn.gallery_figure`, rendered to PNG by Debian's Chromium through Playwright (the tools the
browser tests use). State: `studio.learn.cost_curves` (d_model 1024, 8 heads, bf16) at 1K and 1M tokens.
Rerun after adding a mixer; tests/test_cli.py checks that every registered mixer is listed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "docs"]

from studio.learn import cost_curves, gallery_figure, mixer_gallery  # noqa: E402
from studio.mixers import REGISTRY  # noqa: E402
from studio.summary import human_bytes  # noqa: E402

DOC = ROOT / "docs" / "mixers.md"
IMAGES = ROOT / "docs" / "img" / "mixers"
CHROMIUM = "/usr/bin/chromium"


def render_images(gallery: dict) -> None:
    """One PNG per mixer: its gallery panel alone, 240 x 240 pixels."""
    from playwright.sync_api import sync_playwright

    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 240, "height": 240})
        for name, matrix in gallery.items():
            fig = gallery_figure({name: matrix}, title=" ", cols=1)
            fig.update_layout(width=240, height=240, margin={"l": 20, "r": 10, "t": 30, "b": 20}, showlegend=False)
            fig.update_traces(showscale=False)
            html = Path(tmp) / f"{name}.html"
            html.write_text(fig.to_html(include_plotlyjs=True, full_html=True, config={"staticPlot": True}))
            page.goto(html.as_uri())
            page.wait_for_selector(".js-plotly-plot")
            page.screenshot(path=str(IMAGES / f"{name}.png"))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-images", action="store_true", help="rewrite the table only")
    args = parser.parse_args()
    gallery = mixer_gallery(length=16, seed=0)
    if not args.no_images:
        render_images(gallery)
    costs = {(r["mixer"], r["length"]): r for r in cost_curves(lengths=(1024, 1_048_576))}
    lines = [
        "# The mixers",
        "",
        "Every registered token mixer (`studio mixers` lists the same). Pattern: the effective matrix M",
        "(z = M @ v; rows = queries, columns = keys) of head 0 of one layer with random weights on 16 random",
        "tokens. State: what decoding keeps, for one layer of 8 heads of 128 (bf16). Written by",
        "`python docs/build_mixers_doc.py`; rerun it after adding a mixer.",
        "",
        "| mixer | family | paper | pattern | state @ 1K | state @ 1M | step O(1) in length |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, cls in sorted(REGISTRY.items()):
        small, large = costs[(name, 1024)]["state_bytes"], costs[(name, 1_048_576)]["state_bytes"]
        constant = "yes" if small == large else "no"
        lines.append(f"| `{name}` | {cls.family} | {cls.paper} | ![{name}](img/mixers/{name}.png) | "
                     f"{human_bytes(small)} | {human_bytes(large)} | {constant} |")
    DOC.write_text("\n".join(lines) + "\n")
    print(f"wrote {DOC} ({len(REGISTRY)} mixers)")


if __name__ == "__main__":
    main()
