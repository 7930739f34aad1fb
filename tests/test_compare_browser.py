"""The comparison page in real headless Chromium (Debian's): every image loads, no console error, links to
each run's gallery resolve. Skipped without /usr/bin/chromium or playwright, as the gallery's browser tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from browser_helpers import CHROMIUM, FLAGS, MARKS, playwright
from featviz.compare import compare
from featviz.config import RenderConfig
from featviz.gallery.compare_page import write_comparison
from featviz.optvis import RenderSettings
from featviz.pipeline import analyze_run, render_run
from featviz.run.store import Run

pytestmark = MARKS


def test_every_image_of_the_comparison_page_loads(tiny_run: Run, tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b#1"):  # a name that needs percent-encoding in links
        shutil.copytree(tiny_run.path, tmp_path / name)
        run = Run.open(tmp_path / name)
        render_run(run, RenderConfig(moments="last", settings=RenderSettings(steps=4)))
        analyze_run(run, probe_size=40)
        runs.append(run)
    pictures: list = []
    data = compare(runs, probe_size=40, device="cpu", transfer_steps=8, class_images=pictures)
    page = write_comparison(data, runs, tmp_path / "cmp", pictures)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=FLAGS,
        )
        try:
            tab = browser.new_page()
            errors: list[str] = []
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(page.as_uri())
            tab.wait_for_load_state("load")
            images = tab.evaluate(
                "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
            )
            assert len(images) >= 8 and [src for src, ok in images if not ok] == []
            assert any("renders" in src for src, _ in images)  # matched channels show the runs' own pictures
            shown = {src for src, _ in images}
            assert {"rotation.png", "probe_accuracy.png", "cka_to_final.png"} <= shown  # analyzed runs' curves
            links = tab.evaluate("Array.from(document.querySelectorAll('#runs a')).map(a => a.href)")
            assert len(links) == 2
            for href in links:
                tab.goto(href)
                assert tab.title().startswith("featviz")  # each run's gallery opens
            assert errors == []
        finally:
            browser.close()
