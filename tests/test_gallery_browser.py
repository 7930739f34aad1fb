"""The gallery as a person sees it: real headless Chromium (Debian's), driven by Playwright.

Skipped when /usr/bin/chromium or the playwright package is missing (.ci/run installs chromium).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from browser_helpers import MARKS
from featviz.config import RenderConfig
from featviz.gallery.build import build_gallery
from featviz.optvis import RenderSettings
from featviz.pipeline import render_run
from featviz.run.store import Run

pytestmark = MARKS


@pytest.fixture(scope="module")
def gallery_run(tiny_run, tmp_path_factory) -> Run:
    dst = tmp_path_factory.mktemp("browser") / "tiny"
    shutil.copytree(tiny_run.path, dst)
    run = Run.open(dst)
    render_run(run, RenderConfig(moments="all", settings=RenderSettings(steps=5)))
    return run


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_load_state("load")
    return page, errors


def test_gallery_in_chromium(browser, gallery_run: Run, tmp_path: Path) -> None:
    page, errors = _open(browser, (gallery_run.path / "gallery/index.html").as_uri())
    # every image loads (lazy ones once near the viewport: scroll through, then wait, however busy the machine)
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_function(
        "Array.from(document.images).every(i => !i.getAttribute('src') || i.complete)", timeout=30_000
    )
    images = page.eval_on_selector_all(
        "img", "els => els.map(e => [e.getAttribute('src'), e.complete && e.naturalWidth])"
    )
    assert len(images) > 10
    assert all(w and w > 0 for _, w in images), [s for s, w in images if not w]
    # one section per depth
    assert page.locator("section.depth").count() == len(gallery_run.info.layers)
    # the filter slider has one notch per snapshot (the log schedule's steps 1, 2, 4 inside epoch 1)
    section = page.locator("#depth-1")
    img = section.locator(".filter-img")
    slider = section.locator(".filter-slider")
    assert slider.get_attribute("max") == str(len(gallery_run.snapshot_points()) - 1) == "5"
    last_src = img.get_attribute("src")
    slider.fill("0")
    assert img.get_attribute("src").endswith("epoch_000.png") and img.get_attribute("src") != last_src
    assert section.locator(".filters .epoch-label").inner_text() == "step 0 · init"
    slider.fill("1")
    assert img.get_attribute("src").endswith("step_0000001.png")
    assert section.locator(".filters .epoch-label").inner_text() == "step 1 · epoch 0.14"  # 7 steps per epoch
    # the toggle shows what training added, W_t - W_0, at the same snapshot
    section.locator(".learned-toggle").check()
    assert img.get_attribute("src").endswith("learned/step_0000001.png")
    slider.fill("5")
    assert img.get_attribute("src").endswith("learned/epoch_002.png")
    section.locator(".learned-toggle").uncheck()
    assert img.get_attribute("src").endswith("/epoch_002.png") and "learned" not in img.get_attribute("src")
    # the activation-maximization slider changes every tile
    section.locator(".am-slider").fill("0")
    assert section.locator(".am .epoch-label").inner_text() == "step 0 · init"
    assert "/epoch_000/" in section.locator(".tile img").first.get_attribute("src")
    page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    # every tile links to its unit page, relative to the gallery
    assert section.locator(".tile").nth(1).get_attribute("href") == "units/features.conv1/1.html"
    # a layer index; a few layers are all open; a title collapses its section, the index opens it again
    assert page.locator("#layer-index a").all_inner_texts() == [
        "depth 1 · features.conv1 · 4 channels",
        "depth 2 · features.conv2 · 8 channels",
    ]
    assert page.locator("details.depth-body[open]").count() == 2
    details = page.locator("#depth-2 details")
    page.locator("#depth-2 summary").click()
    assert details.get_attribute("open") is None and not page.locator("#depth-2 .tiles").is_visible()
    page.locator("#layer-index a").nth(1).click()
    assert details.get_attribute("open") == "" and page.url.endswith("#depth-2")
    page.locator("#close-all").click()
    assert page.locator("details.depth-body[open]").count() == 0
    page.locator("#open-all").click()
    assert page.locator("details.depth-body[open]").count() == 2
    page.screenshot(path=str(tmp_path / "gallery.png"), full_page=True)
    assert (tmp_path / "gallery.png").stat().st_size > 10_000
    assert errors == []


def test_hostile_name_is_text_not_script(browser, gallery_run: Run, tmp_path: Path) -> None:
    # featviz refuses such run names, but a folder can be renamed by hand ('/' cannot be in a name)
    dst = tmp_path / "<img src=x onerror=alert(3)>"
    shutil.copytree(gallery_run.path, dst)
    meta = json.loads((dst / "run.json").read_text())
    meta["data"]["name"] = "<script>alert(1)</script>"
    meta["layers"][0]["name"] = "<img src=x onerror=alert(2)>"
    (dst / "run.json").write_text(json.dumps(meta))
    build_gallery(Run.open(dst))
    page, errors = _open(browser, (dst / "gallery/index.html").as_uri())
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.reload()
    assert dialogs == []
    assert "<script>alert(1)</script>" in page.locator(".meta").inner_text()
    assert "<img src=x onerror=alert(2)>" in page.locator("#depth-1 h2").inner_text()
    assert page.locator("#run-name").inner_text() == "<img src=x onerror=alert(3)>"
    assert page.locator("img[src=x]").count() == 0


def test_live_gallery_shows_new_snapshots_while_training(browser, tmp_path: Path) -> None:
    """A page opened while a training subprocess is paused mid-run shows the new committed snapshots
    once training resumes, without a reload and without console errors; stopping the server leaves the
    run intact."""
    import os
    import subprocess
    import sys
    import threading
    import time

    from conftest import make_png_folder
    from featviz.faults import ENV_AT, ENV_FILE
    from featviz.gallery.live import serve_live
    from featviz.run.check import check_run

    data = make_png_folder(tmp_path / "pngs", classes=3, per_class=10, size=16)
    marker = tmp_path / "paused"
    cmd = [
        sys.executable,
        "-m",
        "featviz",
        "train",
        "--data",
        f"folder:{data}",
        "--size",
        "16",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--widths",
        "4,8",
        "--kernels",
        "5,3",
        "--strides",
        "1,1",
        "--pools",
        "1,0",
        "--out",
        str(tmp_path / "out"),
        "--name",
        "live",
    ]
    env = {**os.environ, ENV_AT: "write:epoch_002.safetensors", ENV_FILE: str(marker), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():  # paused half-way through writing epoch 2: epoch 1 is committed
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stderr.read() if proc.poll() else "no pause"
            )
            time.sleep(0.05)
        run = Run.open(tmp_path / "out" / "live")
        urls: list[str] = []
        server = threading.Thread(target=serve_live, args=(run, 0, False, urls.append, stop, 0.2), daemon=True)
        server.start()
        while not urls:
            time.sleep(0.05)
        page, errors = _open(browser, urls[0])
        slider = page.locator("#depth-1 .filter-slider")
        # 27 training images, batch 8: 4 steps per epoch; committed: the init, steps 1 and 2, epoch 1
        assert slider.get_attribute("max") == "3"
        page.wait_for_function(
            "() => document.querySelector('#depth-1 .epoch-label').textContent === 'step 4 · epoch 1'"
        )
        marker.unlink()  # training carries on: epochs 2 and 3 commit
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
        page.wait_for_function("() => document.querySelector('#depth-1 .filter-slider').max === '5'", timeout=20_000)
        assert page.locator("#depth-1 .epoch-label").inner_text() == "step 12 · epoch 3"
        assert page.locator("#depth-1 .filter-img").get_attribute("src").endswith("epoch_003.png")
        page.wait_for_function(
            "() => document.getElementById('epochs-done').textContent.startsWith('trained: epoch 3/3')"
        )
        page.wait_for_function(
            "() => [...document.images].every(i => !i.getAttribute('src') || (i.complete && i.naturalWidth > 0))"
        )
        assert errors == []
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    server.join(timeout=30)
    assert check_run(tmp_path / "out" / "live").ok  # the run is intact after the server stopped
