"""featviz train --live and featviz gallery --serve --watch, without a browser (tests/test_gallery_browser.py
has the Chromium check)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TINY_CLI_MODEL
from featviz.run.schema import RenderRecord

SMALL = ["--size", "16", *TINY_CLI_MODEL[:-2], "--batch-size", "8"]  # a 36-image folder: 4 steps per epoch


def test_train_live_serves_and_leaves_a_complete_live_state(cli, png_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, err = cli(
        [
            "train",
            "--data",
            f"folder:{png_folder}",
            "--epochs",
            "2",
            *SMALL,
            "--out",
            out,
            "--name",
            "r",
            "--live",
            "--port",
            "0",
        ]
    )
    assert code == 0, err
    assert "live gallery: http://127.0.0.1:" in stdout + err
    state = json.loads((out / "r/gallery/live.json").read_text())
    run_points = 3 + 2  # epochs 0..2 and the log schedule's steps 1 and 2 inside epoch 1
    assert state["complete"] and state["epochs_done"] == 2 and len(state["labels"]) == run_points
    for layer in ("features.conv1", "features.conv2"):
        assert all(
            (out / "r/gallery" / src).is_file()
            for src in state["layers"][layer]["srcs"] + state["layers"][layer]["learned"]
        )
    html = (out / "r/gallery/index.html").read_text()
    assert "live.json" in html  # the page polls


def test_watch_needs_serve(cli, tiny_run) -> None:
    code, _, err = cli(["gallery", tiny_run.path, "--watch"])
    assert code != 0 and "--watch needs --serve" in err and len(err.strip().splitlines()) == 1


def test_render_replaces_live_frames_with_one_scale_across_the_run(cli, png_folder: Path, tmp_path: Path) -> None:
    from featviz.run.store import Run

    out = tmp_path / "out"
    assert (
        cli(
            [
                "train",
                "--data",
                f"folder:{png_folder}",
                "--epochs",
                "1",
                *SMALL,
                "--out",
                out,
                "--name",
                "r",
                "--live",
                "--port",
                "0",
            ]
        )[0]
        == 0
    )
    run = Run.open(out / "r")
    assert {r.settings.get("live") for r in run.render_index() if r.kind == "filters"} == {True}
    assert cli(["render", out / "r", "--steps", "2", "--moments", "last"])[0] == 0
    assert {json.dumps(r.settings) for r in run.render_index() if r.kind == "filters"} == {
        json.dumps({"points": [p.id for p in run.snapshot_points()]})
    }


def test_live_render_renders_the_moments_in_the_background(cli, png_folder: Path, tmp_path: Path) -> None:
    from featviz.run.store import Run
    from featviz.schedule import moments

    out = tmp_path / "out"
    code, _, err = cli(
        [
            "train",
            "--data",
            f"folder:{png_folder}",
            "--epochs",
            "2",
            *SMALL,
            "--out",
            out,
            "--name",
            "r",
            "--live",
            "--port",
            "0",
            "--live-render",
        ]
    )
    assert code == 0, err
    run = Run.open(out / "r")
    expected = {p.id for p in moments("auto", run.snapshot_points())}
    am = [r for r in run.render_index() if r.kind == "am"]
    assert {r.point for r in am} == expected  # every auto moment of the finished run, and nothing else
    assert len(am) == len(expected) * (4 + 8)
    html = (out / "r/gallery/index.html").read_text()
    assert "/am/" in html and "live.json" in html
    assert not (out / "r/gallery/.renders.lock").exists()
    code, _, err = cli(["train", "--live-render"])
    assert code != 0 and "--live-render needs --live" in err


def test_a_run_written_before_snapshot_schedules_still_renders_and_analyzes(tiny_cfgs, tmp_path: Path) -> None:
    """Earlier runs: no ``snapshots`` key in run.json, epoch snapshots only, render records with an epoch
    and no step."""
    import dataclasses

    from featviz.config import RenderConfig
    from featviz.gallery.build import build_gallery
    from featviz.optvis import RenderSettings
    from featviz.pipeline import analyze_run, render_run, train_run
    from featviz.run.fileio import atomic_write_json, read_json
    from featviz.run.store import Run

    data, model, train = tiny_cfgs
    run = train_run(data, model, dataclasses.replace(train, snapshots="epoch"), out_dir=tmp_path, name="old")
    meta = read_json(run.path / "run.json")
    del meta["configs"]["train"]["snapshots"]
    atomic_write_json(run.path / "run.json", meta)
    (run.path / "manifest.json").unlink()
    run = Run.open(run.path)
    run.write_manifest(2)
    old = {
        "kind": "filters",
        "layer": "features.conv1",
        "depth": 1,
        "epoch": 1,
        "scale": 1.0,
        "settings": {"epochs": [0, 1]},
        "file": "renders/filters/features.conv1/epoch_001.png",
    }
    (run.path / "renders/filters/features.conv1").mkdir(parents=True)
    (run.path / old["file"]).write_bytes((run.path / "snapshots/epoch_000.safetensors").read_bytes()[:0] or b"x")
    run.add_renders([RenderRecord.from_json(old)])
    html = Path(build_gallery(run)).read_text()
    assert "step 7 · epoch 1" in html  # an old record's epoch is shown as its step and epoch
    out = render_run(run, RenderConfig(settings=RenderSettings(steps=2)))
    assert out["moments"] == ["step 0 · init", "step 7 · epoch 1", "step 14 · epoch 2"]
    a = analyze_run(run, probe_size=20)
    assert a["epochs"] == [0, 1, 2] and "by_step" not in a["convergence"]["features.conv1"]


def test_live_on_a_busy_port_is_one_line(cli, png_folder: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = cli(
            [
                "train",
                "--data",
                f"folder:{png_folder}",
                "--epochs",
                "1",
                *SMALL,
                "--out",
                tmp_path / "out",
                "--name",
                "r",
                "--live",
                "--port",
                port,
            ]
        )
    assert code != 0 and f"127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "r").exists()  # refused before any run was created
