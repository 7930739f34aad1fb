"""The gallery of a ResNet-18 run in Chromium: layers by stage, shortcut convs as branches, the layers the
default render skipped named with the command that renders them, and heatmap plots with their labels inside
the figure. The run is synthetic (ResNet-18's traced layers; renders of the default selection; tiny PNGs)."""

from __future__ import annotations

import dataclasses

import pytest
import torchvision

from browser_helpers import MARKS, open_page
from featviz.gallery.build import build_gallery
from featviz.layers import default_layers, trace
from test_gallery_scale import _layer, synthetic_run

pytestmark = MARKS


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    layers = trace(torchvision.models.resnet18(num_classes=10).eval(), 3, 32)
    chosen = {la.name for la in default_layers(layers)}
    as_json = [
        {**_layer(la.depth, 4 if la.name in chosen else 1, 3), **dataclasses.asdict(la), "kernel": list(la.kernel)}
        for la in layers
    ]
    run = synthetic_run(tmp_path_factory.mktemp("resnet"), as_json)
    # only the default selection has renders, as after a default featviz render
    index = [r for r in run.render_index() if r.layer in chosen]
    (run.path / "renders.jsonl").write_text("".join(__import__("json").dumps(r.to_json()) + "\n" for r in index))
    build_gallery(run)
    return run, layers, chosen


def test_the_page_names_depths_branches_stages_and_skipped_layers(resnet_run) -> None:
    run, layers, chosen = resnet_run
    html = (run.path / "gallery" / "index.html").read_text()
    assert "<h3>layer2</h3>" in html and "<h3>conv1</h3>" in html
    assert "Depth 6 · layer2.0.downsample.0" in html and "a branch beside depth 6" in html
    skipped = [la.name for la in layers if la.name not in chosen]
    assert len(skipped) == 15
    for name in skipped:
        assert f"featviz render RUN --layers {name}</code>" in html, name


def test_in_chromium_nothing_overlaps_and_every_image_loads(browser, resnet_run) -> None:
    run, _, _ = resnet_run
    page, errors = open_page(browser, run.path / "gallery" / "index.html")
    page.locator("#open-all").click()
    page.evaluate("document.querySelectorAll('img[loading=lazy]').forEach(i => { i.loading = 'eager'; })")
    page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=20_000)
    broken = page.evaluate("[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    assert broken == []
    boxes = page.eval_on_selector_all(
        "#layer-index li, #layer-index h3",
        "els => els.map(e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })",
    )
    assert len(boxes) == 20 + 5
    for i, a in enumerate(boxes):  # no two entries of the layer list overlap (columns, stage headings)
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] + 0.5 or b[2] <= a[0] + 0.5 or a[3] <= b[1] + 0.5 or b[3] <= a[1] + 0.5, (a, b)
    assert page.locator(".unselected").count() == 2 * 15
    assert errors == []
