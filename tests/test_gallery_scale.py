"""A gallery that scales to a ResNet-sized run (20 conv layers, 10,000 activation-maximization
thumbnails), and the layer texts of models other than featviz's own conv stack.

The run is synthetic (run.json, renders.jsonl and tiny PNGs, no model), so building it takes seconds.
The Chromium test is skipped, with the install command, when /usr/bin/chromium or playwright is missing.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest
from PIL import Image

from featviz.gallery.build import build_gallery
from featviz.run.renderset import settings_set_of
from featviz.run.schema import RenderRecord, RunInfo
from featviz.run.store import Run
from run_helpers import run_info

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SETTINGS = {
    "param": "fft",
    "transforms": "standard",
    "steps": 8,
    "lr": 0.05,
    "seed": 0,
    "size": 32,
    "target": "response",
}
MOMENTS = [(0, 0, "step 0 · init"), (1, 100, "step 100 · epoch 1")]  # (epoch, step, label)
BUDGET_S = 2.0


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (value, 128, 255 - value)).save(buf, format="PNG")
    return buf.getvalue()


def _layer(depth: int, out_ch: int, in_ch: int, **extra) -> dict:
    groups = extra.get("groups", 1)
    weights = out_ch * in_ch // groups * 9
    return {
        "name": f"block{depth}.conv",
        "depth": depth,
        "in_ch": in_ch,
        "out_ch": out_ch,
        "kernel": [3, 3],
        "stride": 1,
        "groups": groups,
        "weights": weights,
        "biases": 0,
        "params": weights,
        **extra,
    }


def _meta(layers: list[dict], model: dict | None = None) -> RunInfo:
    data = {
        "name": "synthetic",
        "image_channels": 3,
        "size": 32,
        "classes": [f"c{i}" for i in range(10)],
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
    }
    return run_info(
        "scale",
        1,
        seed=0,
        data=data,
        layers=layers,
        params_total=0,
        configs={
            "data": {"name": "synthetic", "size": 32},
            "model": model or {"arch": "resnet18"},
            "train": {"epochs": 1},
        },
    )


def synthetic_run(root: Path, layers: list[dict], moments_of_first: int = 2, model: dict | None = None) -> Run:
    """A run whose renders.jsonl lists one thumbnail per channel of every layer at the init, and a second
    moment for the first layer (so its slider has somewhere to go); filter frames at the same moments."""
    run = Run.create(root, "scale", _meta(layers, model))
    sid = settings_set_of(SETTINGS)
    pngs = [_png(0), _png(255)]
    records = []
    for layer in run.info.layers:
        for m, (epoch, step, lab) in enumerate(MOMENTS[: moments_of_first if layer.depth == 1 else 1]):
            when = {"epoch": epoch, "step": step, "point": f"epoch_{epoch:03d}", "label": lab}
            folder = run.path / "renders" / "am" / sid / layer.name / when["point"]
            folder.mkdir(parents=True, exist_ok=True)
            for c in range(layer.out_ch):
                # plain writes, not Run.write_artifact: its fsync per file would take ~6 s for 10,000 files
                (folder / f"ch_{c:04d}.png").write_bytes(pngs[m])
                records.append(
                    {
                        "kind": "am",
                        "layer": layer.name,
                        "depth": layer.depth,
                        "channel": c,
                        **when,
                        "file": run.rel(folder / f"ch_{c:04d}.png"),
                        "settings": SETTINGS,
                        "settings_set": sid,
                        "activation": 1.0 + c,
                    }
                )
            for kind, sub in (("filters", ""), ("filters_learned", "learned/")):
                path = run.write_artifact("renders", f"filters/{layer.name}/{sub}{when['point']}.png", pngs[m])
                records.append(
                    {
                        "kind": kind,
                        "layer": layer.name,
                        "depth": layer.depth,
                        **when,
                        "file": run.rel(path),
                        "scale": 1.0,
                        "settings": {"points": ["epoch_000", "epoch_001"]},
                    }
                )
    run.add_renders([RenderRecord.from_json(r) for r in records])
    return run


def resnet_like(n_layers: int = 20, channels: int = 500) -> list[dict]:
    """ResNet-18's 20 convs with ``channels`` channels each (10,000 thumbnails in all by default)."""
    return [
        _layer(d, channels, 3 if d == 1 else channels, rf_px=1 + 2 * d, batchnorm=True) for d in range(1, n_layers + 1)
    ]


# ----------------------------------------------------------------------------- the HTML, no browser
def test_html_is_lazy_collapsible_and_indexed(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path, resnet_like(8, 5))
    html = Path(build_gallery(run)).read_text()
    thumbs = re.findall(r'<img class="am-img"[^>]*>', html)
    assert len(thumbs) == 8 * 5
    assert all(
        'loading="lazy"' in t and 'decoding="async"' in t and 'width="32"' in t and 'height="32"' in t for t in thumbs
    )  # the settings' 32 px: the space is reserved before the image arrives
    filters = re.findall(r'<img class="pix filter-img"[^>]*>', html)
    assert len(filters) == 8 and all('loading="lazy"' in f and 'width="4" height="4"' in f for f in filters)
    details = re.findall(r'<details class="depth-body"( open)?>', html)
    assert details == [" open"] + [""] * 7  # more than 6 layers: only the first is open
    index = re.search(r'<nav id="layer-index".*?</nav>', html, re.S).group(0)
    links = re.findall(r'<a href="#depth-(\d+)">([^<]*)</a>', index)
    assert [int(d) for d, _ in links] == list(range(1, 9))
    assert links[2][1] == "depth 3 · block3.conv · 5 channels"
    assert "8 conv layers, 40 activation-maximization" in index


def test_a_few_layers_are_all_open(tmp_path: Path) -> None:
    html = Path(build_gallery(synthetic_run(tmp_path, resnet_like(6, 2)))).read_text()
    assert html.count('<details class="depth-body" open>') == 6


def test_layer_texts_of_other_models(tmp_path: Path) -> None:
    """run.json of another architecture: rf_px, groups and batchnorm per layer, no kernels/pools lists."""
    layers = [
        _layer(1, 64, 3, rf_px=7, rf_exceeds=False, batchnorm=True),
        _layer(2, 64, 64, groups=64, rf_px=128, rf_exceeds=True, batchnorm=True),  # depthwise
        _layer(3, 128, 64, groups=4, batchnorm=True),  # grouped
        {**_layer(4, 10, 128), "batchnorm": False},
    ]  # no BatchNorm, no bias, no rf_px
    html = Path(build_gallery(synthetic_run(tmp_path, layers))).read_text()
    sections = re.findall(r'<section class="depth".*?</section>', html, re.S)
    explain = [re.search(r'<p class="explain">(.*?)</p>', s, re.S).group(1) for s in sections]
    assert "Receptive field of one unit: 7 x 7 px" in explain[0]
    assert "no biases (the BatchNorm after it shifts instead)" in explain[0]
    assert "Receptive field of one unit: at least 128 x 128 px, larger than the 32 px image" in explain[1]
    assert "Depthwise: one 3x3 kernel per channel (groups=64)" in explain[1]
    assert "64 filters x 1 input channel x 3 x 3 = 576 weights" in explain[1]
    assert "Each filter sees 16 of the 64 input channels (groups=4)" in explain[2]
    assert "128 filters x 16 input channels x 3 x 3 = 18,432 weights" in explain[2]
    assert "no biases, and no BatchNorm after it: nothing shifts its output" in explain[3]
    assert "BatchNorm adds" not in explain[3] and "Receptive field" not in explain[3]
    assert "max-pool" not in html  # no pools list: no pool is claimed


def test_featviz_model_config_still_gives_rf_and_pools(tmp_path: Path) -> None:
    model = {"kernels": [5, 3], "strides": [1, 1], "pools": [True, False], "batchnorm": False}
    layers = [{**_layer(1, 4, 3), "kernel": [5, 5], "biases": 4}, {**_layer(2, 8, 4), "biases": 8}]
    html = Path(build_gallery(synthetic_run(tmp_path, layers, model=model))).read_text()
    assert "Receptive field of one unit: 5 x 5 px" in html and "Receptive field of one unit: 10 x 10 px" in html
    assert html.count("max-pool after it") == 1 and "4 biases" in html and "BatchNorm adds" not in html


# ----------------------------------------------------------------------------- Chromium


# stamps, in the page's own clock (ms since navigation start), when the page has answered a click or a
# slider move: after the page's handlers (window listeners run last) and the next frame they drew
STAMP = """for (const type of ["click", "input"]) window.addEventListener(type, () =>
  requestAnimationFrame(() => setTimeout(() => { window.__answered = performance.now(); })));"""


def _answer_time(browser, url: str, act) -> tuple[float, float, list[str]]:
    """Open ``url``, do ``act(page)`` once the DOM is loaded: (DOMContentLoaded ms, answered ms, errors)."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.add_init_script(STAMP)
    page.goto(url, wait_until="domcontentloaded")
    act(page)
    page.wait_for_function("() => window.__answered !== undefined")
    dcl, answered = page.evaluate(
        "[performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd, window.__answered]"
    )
    page.wait_for_load_state("load")
    page.close()
    return dcl, answered, errors


def _click_last_layer(page) -> None:
    assert page.locator("details.depth-body[open]").count() == 1  # sections beyond the first are collapsed
    assert page.locator("#depth-20 img.am-img[src]").count() == 0  # ... and their images are not even requested
    page.locator("#layer-index a").last.click()
    page.wait_for_function("() => document.querySelector('#depth-20 details').open")
    page.wait_for_function("() => document.querySelector('#depth-20 img.am-img').src")  # set on opening


def _move_slider(page) -> None:
    first = page.locator("#depth-1 .tile img").first
    assert first.get_attribute("src").endswith("epoch_001/ch_0000.png")
    page.locator("#depth-1 .am-slider").fill("0")
    assert first.get_attribute("src").endswith("epoch_000/ch_0000.png")
    assert page.locator("#depth-1 .am .epoch-label").inner_text() == "step 0 · init"


@pytest.mark.browser
@pytest.mark.slow
def test_10000_thumbnails_are_interactive_within_2_s(browser, tmp_path: Path, record_property) -> None:
    layers = resnet_like()
    run = synthetic_run(tmp_path, layers)
    t0 = time.perf_counter()
    url = Path(build_gallery(run)).as_uri()
    record_property("build_s", round(time.perf_counter() - t0, 2))
    times = {
        "index link": _answer_time(browser, url, _click_last_layer),
        "slider": _answer_time(browser, url, _move_slider),
    }
    for what, (dcl, answered, errors) in times.items():
        print(f"\n10,000 thumbnails, {what}: DOMContentLoaded {dcl:.0f} ms, answered {answered:.0f} ms")
        record_property(f"{what} ms", [round(dcl), round(answered)])
        assert dcl < BUDGET_S * 1000 and answered < BUDGET_S * 1000, what
        assert errors == [], what
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(url)  # waits for the load event: every image near the viewport has arrived
    lazy = page.locator("img.am-img[loading=lazy]").count()
    assert lazy == page.locator("img.am-img").count() == sum(layer["out_ch"] for layer in layers) == 10_000
    assert page.locator("#layer-index a").count() == len(layers) == page.locator("section.depth").count()
    loaded = page.evaluate(
        "[...document.querySelectorAll('img.am-img')].filter(i => i.complete && i.naturalWidth).length"
    )
    assert 0 < loaded < 2_000  # only what is near the viewport was fetched
    page.close()
