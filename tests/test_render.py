"""featviz render: files, index, reuse, bad inputs, and the gallery built from the files alone."""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from featviz.config import RenderConfig
from featviz.errors import ConfigError, RunError
from featviz.gallery.build import build_gallery
from featviz.gallery.serve import make_server
from featviz.optvis import RenderSettings
from featviz.pipeline import render_run
from featviz.run.schema import SnapshotPoint
from featviz.run.store import Run
from featviz.schedule import parse_epochs

FAST = dict(settings=RenderSettings(steps=6, chunk=64))


@pytest.fixture(scope="module")
def rendered(tiny_run, tmp_path_factory) -> Run:
    """A copy of the tiny run, rendered once with few steps (every epoch, every channel)."""
    dst = tmp_path_factory.mktemp("rendered") / "tiny"
    shutil.copytree(tiny_run.path, dst)
    run = Run.open(dst)
    render_run(run, RenderConfig(moments="all", **FAST))
    return run


def test_render_writes_filters_and_actmax_for_every_depth_and_epoch(rendered: Run) -> None:
    index = rendered.render_index()
    layers = rendered.info.layers
    epochs = rendered.snapshot_epochs()
    assert epochs == [0, 1, 2]
    for layer in layers:
        name, n = layer.name, layer.out_ch
        for e in epochs:
            grid = rendered.path / f"renders/filters/{name}/epoch_{e:03d}.png"
            assert Image.open(grid).size[0] > 0
            am = [r for r in index if r.kind == "am" and r.layer == name and r.epoch == e]
            assert sorted(r.channel for r in am) == list(range(n))
            for r in am:
                img = Image.open(rendered.path / r.file)
                assert img.size == (16, 16)  # the run's image size
                assert r.settings["steps"] == 6 and r.settings["param"] == "fourier"
                assert isinstance(r.activation, float)
        points = rendered.snapshot_points()  # filters at every snapshot: 3 epochs and the log schedule's 3 steps
        assert len(points) == 6
        for sub in ("", "learned/"):
            assert Image.open(rendered.path / f"renders/filters/{name}/{sub}evolution.gif").n_frames == len(points)
            assert (rendered.path / f"renders/filters/{name}/{sub}strip.png").is_file()
            for p in points:
                assert (rendered.path / f"renders/filters/{name}/{sub}{p.id}.png").is_file()


def test_rerender_reuses_matching_settings_and_force_redoes(rendered: Run) -> None:
    again = render_run(rendered, RenderConfig(moments="all", **FAST))
    assert again["am_images"] == 0 and again["filter_files"] == 0
    changed = render_run(
        rendered, RenderConfig(moments="last", layers=("features.conv1",), settings=RenderSettings(steps=7, chunk=64))
    )
    assert changed["am_images"] == rendered.info.layers[0].out_ch
    forced = render_run(rendered, RenderConfig(moments="0", layers=("features.conv2",), force=True, **FAST))
    assert forced["am_images"] == 8 and forced["filter_files"] > 0
    # the CUDA-graph switch reaches the renderer; on a CPU it records why the loop ran eagerly
    render_run(
        rendered,
        RenderConfig(
            moments="0", layers=("features.conv2",), force=True, settings=RenderSettings(steps=6, cuda_graph=False)
        ),
    )
    grids = [r for r in rendered.render_index() if r.kind == "am_grid" and r.layer == "features.conv2"]
    assert grids and grids[-1].render_settings["cuda_graph"] is False
    assert grids[-1].render_settings["resolved"]["cuda_graph"] == "off"


def test_learned_part_is_the_change_from_the_init(rendered: Run) -> None:
    """The learned view draws W_t - W_0 with one scale per layer across time: zero (grey) at the init,
    not zero later, and its records carry the snapshot's step and label."""
    import numpy as np

    recs = {r.point: r for r in rendered.render_index() if r.kind == "filters_learned" and r.layer == "features.conv1"}
    init = np.array(Image.open(rendered.path / recs["epoch_000"].file))
    last = np.array(Image.open(rendered.path / recs["epoch_002"].file))
    plain = np.array(Image.open(rendered.path / "renders/filters/features.conv1/epoch_000.png"))
    assert len(np.unique(init.reshape(-1, init.shape[-1]), axis=0)) <= 2  # grey tiles on the white grid only
    assert len(np.unique(last.reshape(-1, last.shape[-1]), axis=0)) > 10 and not np.array_equal(init, plain)
    assert len({r.scale for r in recs.values()}) == 1  # one colour scale for all snapshots
    assert recs["step_0000002"].step == 2 and recs["step_0000002"].label == "step 2 · epoch 0.29"


def test_auto_moments_follow_learning() -> None:
    from featviz.schedule import moments

    spe = 157
    points = [SnapshotPoint(f"epoch_{e:03d}", "epoch", e * spe, e) for e in range(9)]
    points += [SnapshotPoint(f"step_{s:07d}", "step", s) for s in (1, 2, 4, 8, 16, 32, 64, 128)]
    points.sort(key=lambda p: p.step)
    chosen = [p.id for p in moments("auto", points)]
    # the init, steps near 157^(1/4), 157^(1/2), 157^(3/4) on a log scale, epoch 1, the middle, the end
    assert chosen == [
        "epoch_000",
        "step_0000004",
        "step_0000016",
        "step_0000032",
        "epoch_001",
        "epoch_004",
        "epoch_008",
    ]
    assert [p.id for p in moments("0,8", points)] == ["epoch_000", "epoch_008"]
    assert len(moments("snapshots", points)) == len(points)


def test_parse_epochs_forms() -> None:
    avail = list(range(11))
    assert parse_epochs("auto", avail) == [0, 5, 10]
    assert parse_epochs("all", avail) == avail
    assert parse_epochs("last", avail) == [10]
    assert parse_epochs("0,5,10", avail) == [0, 5, 10]
    assert parse_epochs("every:4", avail) == [0, 4, 8, 10]
    for bad in ("11", "every:x", "every:0", "a,b"):
        with pytest.raises(ConfigError):
            parse_epochs(bad, avail)


def test_bad_render_inputs_name_the_problem(rendered: Run, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid conv layers: features.conv1, features.conv2"):
        render_run(rendered, RenderConfig(layers=("features.conv9",), **FAST))
    with pytest.raises(ConfigError, match="not in the run"):
        render_run(rendered, RenderConfig(moments="7", **FAST))
    with pytest.raises(ConfigError, match="out of range"):
        render_run(rendered, RenderConfig(channels=(99,), filters=False, **FAST))


def test_corrupt_snapshot_is_named_and_other_renders_survive(rendered: Run, tmp_path: Path) -> None:
    dst = tmp_path / "damaged"
    shutil.copytree(rendered.path, dst)
    run = Run.open(dst)
    before = (dst / "renders.jsonl").read_bytes()
    snap = dst / "snapshots/epoch_001.safetensors"
    snap.write_bytes(snap.read_bytes()[:100])
    with pytest.raises(RunError, match="epoch_001.safetensors"):
        render_run(run, RenderConfig(moments="1", force=True, **FAST))
    assert (dst / "renders.jsonl").read_bytes() == before
    assert render_run(run, RenderConfig(moments="0", filters=False, force=True, **FAST))["am_images"] == 12


def test_gallery_is_static_relative_and_escaped(rendered: Run, tmp_path: Path) -> None:
    dst = tmp_path / "esc"
    shutil.copytree(rendered.path, dst)
    meta = json.loads((dst / "run.json").read_text())
    meta["data"]["name"] = "<script>alert(1)</script>"
    (dst / "run.json").write_text(json.dumps(meta))
    html = Path(build_gallery(Run.open(dst))).read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert str(dst) not in html and "file://" not in html  # relative links only
    assert 'src="../renders/filters/features.conv1/epoch_002.png"' in html
    for d in ("Depth 1 · features.conv1", "Depth 2 · features.conv2"):
        assert d in html
    assert "4 filters x 3 input channels x 5 x 5 = 300 weights" in html
    assert f"featviz analyze …/{dst.name}</code> (this run's folder)" in html  # not analyzed yet: the hint


def test_gallery_header_reads_as_one_line_of_facts(rendered: Run, tmp_path: Path) -> None:
    """The run's line under the title: a thousands separator in the parameter count, and no empty field
    between two separators when the run is not training live."""
    dst = tmp_path / "meta"
    shutil.copytree(rendered.path, dst)
    meta = json.loads((dst / "run.json").read_text())
    meta["params_total"] = 11181642
    (dst / "run.json").write_text(json.dumps(meta))
    html = Path(build_gallery(Run.open(dst))).read_text()
    line = " ".join(html.split('<p class="meta">', 1)[1].split("</p>", 1)[0].split())
    assert "11,181,642 parameters" in line and "· ·" not in line and "·  ·" not in line
    assert re.search(r"epochs \d+/\d+ · final validation accuracy", line), line


def test_serve_answers_on_loopback(rendered: Run) -> None:
    import threading

    server = make_server(rendered, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/gallery/index.html", timeout=10).read()
        assert b"featviz" in body
    finally:
        server.shutdown()
        server.server_close()


def test_cli_render_and_gallery(rendered: Run, cli, tmp_path: Path) -> None:
    dst = tmp_path / "clirun"
    shutil.copytree(rendered.path, dst)
    code, out, err = cli(["render", dst, "--moments", "last", "--steps", "5", "--layers", "features.conv2"])
    assert code == 0, err
    assert "gallery:" in err
    code, out, err = cli(["gallery", dst])
    assert code == 0 and (dst / "gallery/index.html").is_file()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["render", "{run}", "--layers", "nope"], "valid conv layers"),
        (["render", "{run}", "--moments", "99"], "not in the run"),
        (["render", "{run}", "--channels", "50"], "out of range"),
        (["render", "{run}", "--param", "cppn"], "unknown parametrization"),
        (["render", "{run}", "--steps", "0"], "--steps"),
        (["render", "{tmp}"], "not a featviz run"),
        (["render", "{tmp}/missing"], "does not exist"),
        (["gallery", "{tmp}/missing"], "does not exist"),
    ],
)
def test_cli_render_bad_inputs(rendered: Run, cli, tmp_path: Path, argv: list[str], needle: str) -> None:
    args = [a.format(run=rendered.path, tmp=tmp_path) for a in argv]
    code, out, err = cli(args)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featviz: error:") and needle in lines[0]
    assert "Traceback" not in out + err


def test_the_estimate_times_short_real_renders_of_the_end_layers(tiny_run, monkeypatch) -> None:
    """Known answer: a fake clock makes a step cost 0.01 s per image at depth 1 and 0.03 s at depth 2, plus 5 s of
    set-up per call (which the two timed renders cancel); 256 steps x (4 + 8 channels) x 3 moments follows."""
    import torch

    import featviz.render as render_stage
    from featviz.render import TIMED_STEPS, estimate_seconds

    clock = [0.0]
    calls = []

    def fake(model, target, chans, knobs):
        calls.append((target, knobs.steps))
        clock[0] += 5.0 + knobs.steps * len(chans) * (0.01 if target.endswith("1") else 0.03)

    monkeypatch.setattr(render_stage, "maximize_channels", fake)
    monkeypatch.setattr(render_stage.time, "perf_counter", lambda: clock[0])
    cfg = RenderConfig()
    points = tiny_run.snapshot_points()[:3]
    got = estimate_seconds(tiny_run, list(tiny_run.info.layers), points, cfg, torch.device("cpu"))
    assert got == pytest.approx(3 * 256 * (4 * 0.01 + 8 * 0.03))
    # per end layer: an untimed warm-up step, then the timed renders
    assert sorted(calls) == sorted((t, s) for t in ("features.bn1", "features.bn2") for s in (1, *TIMED_STEPS))
