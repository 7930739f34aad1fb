"""featviz train --live and featviz gallery --serve --watch, without a browser (tests/test_gallery_browser.py
has the Chromium check)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TINY_CLI_MODEL

SMALL = ["--size", "16", *TINY_CLI_MODEL[:-2], "--batch-size", "8"]  # a 36-image folder: 4 steps per epoch


def test_train_live_serves_and_leaves_a_complete_live_state(cli, png_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, err = cli(["train", "--data", f"folder:{png_folder}", "--epochs", "2", *SMALL, "--out", out,
                             "--name", "r", "--live", "--port", "0"])
    assert code == 0, err
    assert "live gallery: http://127.0.0.1:" in stdout + err
    state = json.loads((out / "r/gallery/live.json").read_text())
    run_points = 3 + 2  # epochs 0..2 and the log schedule's steps 1 and 2 inside epoch 1
    assert state["complete"] and state["epochs_done"] == 2 and len(state["labels"]) == run_points
    for layer in ("features.conv1", "features.conv2"):
        assert all((out / "r/gallery" / src).is_file() for src in state["layers"][layer]["srcs"] + state["layers"][layer]["learned"])
    html = (out / "r/gallery/index.html").read_text()
    assert "live.json" in html  # the page polls


def test_watch_needs_serve(cli, tiny_run) -> None:
    code, _, err = cli(["gallery", tiny_run.path, "--watch"])
    assert code != 0 and "--watch needs --serve" in err and len(err.strip().splitlines()) == 1


def test_render_replaces_live_frames_with_one_scale_across_the_run(cli, png_folder: Path, tmp_path: Path) -> None:
    from featviz.store import Run

    out = tmp_path / "out"
    assert cli(["train", "--data", f"folder:{png_folder}", "--epochs", "1", *SMALL, "--out", out, "--name", "r",
                "--live", "--port", "0"])[0] == 0
    run = Run.open(out / "r")
    assert {r["settings"].get("live") for r in run.render_index() if r["kind"] == "filters"} == {True}
    assert cli(["render", out / "r", "--steps", "2", "--epochs", "last"])[0] == 0
    assert {json.dumps(r["settings"]) for r in run.render_index() if r["kind"] == "filters"} == {
        json.dumps({"points": [p["id"] for p in run.snapshot_points()]})}


def test_live_render_renders_the_moments_in_the_background(cli, png_folder: Path, tmp_path: Path) -> None:
    from featviz.schedule import moments
    from featviz.store import Run

    out = tmp_path / "out"
    code, _, err = cli(["train", "--data", f"folder:{png_folder}", "--epochs", "2", *SMALL, "--out", out, "--name", "r",
                        "--live", "--port", "0", "--live-render"])
    assert code == 0, err
    run = Run.open(out / "r")
    expected = {p["id"] for p in moments("auto", run.snapshot_points())}
    am = [r for r in run.render_index() if r["kind"] == "am"]
    assert {r["point"] for r in am} == expected  # every auto moment of the finished run, and nothing else
    assert len(am) == len(expected) * (4 + 8)
    html = (out / "r/gallery/index.html").read_text()
    assert "/am/" in html and "live.json" in html
    assert not (out / "r/gallery/.renders.lock").exists()
    code, _, err = cli(["train", "--live-render"])
    assert code != 0 and "--live-render needs --live" in err
