"""The unit pages as a person sees them, in Debian's Chromium: a 3-depth run whose depth-3 units see more
than 9 inputs, rendered and analyzed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from browser_helpers import MARKS, open_page
from featviz.config import DataConfig, ModelConfig, RenderConfig, TrainConfig
from featviz.gallery.build import build_gallery
from featviz.optvis import RenderSettings
from featviz.pipeline import analyze_run, render_run, train_run
from featviz.run.store import Run

pytestmark = MARKS

DEEPER = ModelConfig(widths=(4, 12, 12), kernels=(3, 3, 3), strides=(1, 1, 1), pools=(True, False, False))


@pytest.fixture(scope="module")
def wired_run(tmp_path_factory) -> Run:
    data = DataConfig(name="shapes", n_train=200, n_val=50, size=16)
    run = train_run(
        data, DEEPER, TrainConfig(epochs=2, batch_size=32), out_dir=tmp_path_factory.mktemp("units"), name="u"
    )
    render_run(run, RenderConfig(moments="all", settings=RenderSettings(steps=4)))
    analyze_run(run, probe_size=40)
    return run


def _all_loaded(page) -> None:
    page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)", timeout=10_000)


def test_every_unit_has_a_page_and_every_tile_links_to_it(wired_run: Run) -> None:
    pages = sorted(
        p.relative_to(wired_run.path / "gallery") for p in (wired_run.path / "gallery/units").rglob("*.html")
    )
    assert len(pages) == 4 + 12 + 12
    index = (wired_run.path / "gallery/index.html").read_text()
    assert index.count('href="units/features.conv3/') == 12


def test_a_depth_3_page_shows_inputs_outputs_and_the_slider_changes_the_inputs(browser, wired_run: Run) -> None:
    page, errors = open_page(browser, wired_run.path / "gallery/units/features.conv3/5.html")
    _all_loaded(page)
    rendered = [
        r for r in wired_run.render_index() if r.kind == "am" and r.layer == "features.conv3" and r.channel == 5
    ]
    assert page.locator(".moments img").count() == len(rendered) == len(wired_run.snapshot_epochs())  # "all": epochs
    cards = page.locator("#inputs .unit")
    assert cards.count() == 9  # 12 inputs: the 9 strongest
    assert page.locator("#inputs .unit img").count() == 9  # each input's own picture (depth 2 is rendered)
    last = cards.all_inner_texts()
    page.locator("#snap").fill("0")
    assert page.locator("#snap-label").inner_text().startswith("step 0 · init")
    first = page.locator("#inputs .unit").all_inner_texts()
    assert first != last  # other kernels (and usually other inputs) at the init
    _all_loaded(page)
    assert "step" in page.locator("#wired").inner_text()
    assert page.locator("#expanded .unit").count() == 4  # depth 1 has 4 units: all of them two layers down
    assert "Not shown" not in page.content()
    # an input's card links to that unit's page
    href = page.locator("#inputs .unit").first.get_attribute("href")
    assert href.startswith("../../units/features.conv2/") and href.endswith(".html")
    page.locator("#inputs .unit").first.click()
    page.wait_for_load_state("load")
    assert "features.conv2 · unit" in page.locator("h1").inner_text()
    assert page.locator(".outputs .unit").count() == 9  # depth 3 reads it: its 9 strongest readers
    _all_loaded(page)
    assert errors == []


def test_a_depth_1_page_names_the_image_channels_and_explains_what_is_missing(browser, wired_run: Run) -> None:
    page, errors = open_page(browser, wired_run.path / "gallery/units/features.conv1/0.html")
    assert page.locator("#inputs .unit").all_inner_texts()[0].split("\n")[1].endswith("channel of the image")
    assert "two layers down is the input image" in page.locator("#expanded-reason").inner_text() or (
        "the layer below is the input image" in page.locator("#expanded-reason").inner_text()
    )
    assert "it sees at most 9 inputs" in page.locator("#wired").inner_text()
    _all_loaded(page)
    assert errors == []


def test_a_hostile_run_name_stays_text_on_unit_pages(browser, wired_run: Run, tmp_path: Path) -> None:
    dst = tmp_path / "<img src=x onerror=alert(3)>"
    shutil.copytree(wired_run.path, dst)
    build_gallery(Run.open(dst))
    page, errors = open_page(browser, dst / "gallery/units/features.conv2/0.html")
    assert "<img src=x onerror=alert(3)>" in page.locator("nav a").first.inner_text()
    _all_loaded(page)
    assert errors == []
