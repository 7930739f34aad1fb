"""The command line, in-process through cli.main.main: happy paths and a table of user mistakes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

import featviz.pipeline
from conftest import TINY_CLI_MODEL, make_png_folder
from featviz.config import ModelConfig
from featviz.data import make_shapes
from featviz.model import build_model

_real_load_data = featviz.pipeline.load_data


@pytest.fixture(autouse=True)
def tiny_shapes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--data shapes`` gives 200 + 50 images of 16 px (the CLI has no n_train option); other sources are real.

    Also runs every test in its own folder, so a default ``outputs/`` never lands in the checkout.
    """
    def load(cfg):
        if cfg.name == "shapes":
            return make_shapes(n_train=200, n_val=50, size=16, seed=cfg.seed)
        return _real_load_data(cfg)

    monkeypatch.setattr(featviz.pipeline, "load_data", load)
    monkeypatch.chdir(tmp_path)


def _train_argv(out: Path, name: str = "r", epochs: int = 1) -> list[str]:
    return ["train", "--out", str(out), "--name", name, "--epochs", str(epochs), *TINY_CLI_MODEL]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_error(code: int, out: str, err: str) -> None:
    assert code != 0
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("featviz: error:") and len(lines[0]) > len("featviz: error: ")
    assert "Traceback" not in out + err


# ----------------------------------------------------------------------------- happy paths
def test_train_runs_summary(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, err = cli(_train_argv(out))
    assert code == 0, err
    run = out / "r"
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["epoch_000.safetensors", "epoch_001.safetensors"]
    assert "done:" in err and "Traceback" not in stdout + err
    meta = json.loads((run / "run.json").read_text())
    assert meta["configs"]["model"]["widths"] == [4, 8] and meta["configs"]["model"]["pools"] == [True, False]
    assert meta["configs"]["train"]["epochs"] == 1 and meta["configs"]["train"]["batch_size"] == 32

    code, stdout, err = cli(["runs", "--out", str(out)])
    assert code == 0 and err == ""
    line = next(line for line in stdout.splitlines() if line.startswith("r "))
    assert line.split()[1:3] == ["shapes", "1/1"] and line.endswith("complete")

    code, stdout, err = cli(["summary", str(run)])
    assert code == 0, err
    assert "features.conv1" in stdout and "features.conv2" in stdout
    assert "8 x 4 x 3 x 3 = 288" in stdout and "4 x 3 x 5 x 5 = 300" in stdout
    assert "4x16x16" in stdout  # output shape of conv1 at the run's 16 px
    assert f"total trainable parameters: {meta['params_total']:,}" in stdout

    code, stdout, err = cli(["summary", str(run), "--json"])
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["input"] == [3, 16, 16] and doc["trainable_total"] == meta["params_total"]


def test_summary_json_default_model(cli) -> None:
    code, stdout, err = cli(["summary", "--json"])
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["trainable_total"] == sum(p.numel() for p in build_model(ModelConfig()).parameters())
    assert doc["input"] == [3, 32, 32]
    rows = {r["name"]: r for r in doc["layers"]}
    assert rows["features.conv2"]["formula"] == "32 x 16 x 3 x 3 = 4,608"
    assert rows["features.pool1"]["weights"] == 0


def test_summary_options(cli) -> None:
    code, stdout, err = cli(["summary", "--widths", "4,8", "--kernels", "5,3", "--strides", "2,1", "--size", "16"])
    assert code == 0, err
    assert "8 x 4 x 3 x 3 = 288" in stdout and "4x8x8" in stdout


def test_interrupted_cli_run_resumes_to_identical_snapshots(cli, tmp_path: Path, monkeypatch) -> None:
    from cli.common import TrainBar

    out = tmp_path / "out"
    assert cli(_train_argv(out, "whole", epochs=2))[0] == 0

    real_epoch = TrainBar.epoch

    def stop_after_first(self, rec):
        real_epoch(self, rec)
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainBar, "epoch", stop_after_first)
    code, _, err = cli(_train_argv(out, "cut", epochs=2))
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    monkeypatch.setattr(TrainBar, "epoch", real_epoch)

    code, stdout, _ = cli(["runs", "--out", str(out)])
    line = next(line for line in stdout.splitlines() if line.startswith("cut "))
    assert "1/2" in line and line.endswith("interrupted")

    code, _, err = cli(["train", "--resume", str(out / "cut")])
    assert code == 0, err
    code, stdout, _ = cli(["runs", "--out", str(out)])
    line = next(line for line in stdout.splitlines() if line.startswith("cut "))
    assert "2/2" in line and line.endswith("complete")
    assert _files(out / "cut" / "snapshots") == _files(out / "whole" / "snapshots")


def test_force_replaces_a_run(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli(_train_argv(out))[0] == 0
    (out / "r" / "stale.txt").write_text("x")
    code, _, err = cli([*_train_argv(out, epochs=2), "--force"])
    assert code == 0, err
    assert not (out / "r" / "stale.txt").exists()
    assert json.loads((out / "r" / "manifest.json").read_text())["epochs_done"] == 2


def test_train_on_folder(cli, tmp_path: Path, png_folder: Path) -> None:
    out = tmp_path / "out"
    code, _, err = cli([*_train_argv(out), "--data", f"folder:{png_folder}", "--size", "16"])
    assert code == 0, err
    meta = json.loads((out / "r" / "run.json").read_text())
    assert meta["data"]["classes"] == ["class_0", "class_1", "class_2"]
    assert meta["configs"]["model"]["num_classes"] == 3


def test_data_preview(cli, tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    code, _, err = cli(["data", "preview", "--out", str(png), "--per-class", "4"])
    assert code == 0, err
    with Image.open(png) as img:
        assert img.format == "PNG"
        w, h = img.size
        assert w > 4 * 32 and h > 10 * 32  # 10 rows of 4 images of 32 px
        assert len(np.unique(np.asarray(img.convert("L")))) > 10  # not blank
    assert not list(tmp_path.glob(".*.tmp"))


def test_data_preview_folder_default_path(cli, tmp_path: Path, png_folder: Path) -> None:
    code, _, err = cli(["data", "preview", "--data", f"folder:{png_folder}"])
    assert code == 0, err
    written = list((tmp_path / "outputs").glob("preview-*.png"))
    assert len(written) == 1
    with Image.open(written[0]) as img:
        assert img.format == "PNG"


def test_no_arguments_prints_help(cli) -> None:
    code, stdout, err = cli([])
    assert code == 0 and "train" in stdout and "summary" in stdout and "Traceback" not in stdout + err


def test_runs_on_empty_folder(cli, tmp_path: Path) -> None:
    code, stdout, _ = cli(["runs", "--out", str(tmp_path)])
    assert code == 0 and "no runs under" in stdout


# ----------------------------------------------------------------------------- user mistakes
Setup = Callable[[Path, Callable], tuple[list[str], Callable[[], None] | None]]


def _train_with(*extra: str) -> Setup:
    return lambda tmp, cli: ([*_train_argv(tmp / "out"), *extra], None)


def _folder_with(make: Callable[[Path], Path]) -> Setup:
    return lambda tmp, cli: ([*_train_argv(tmp / "out"), "--data", f"folder:{make(tmp)}"], None)


def _empty_folder(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _a_file(tmp: Path) -> Path:
    (tmp / "file.txt").write_text("hello")
    return tmp / "file.txt"


def _corrupt_folder(tmp: Path) -> Path:
    root = make_png_folder(tmp / "imgs", classes=2, per_class=4, size=12)
    (root / "class_1" / "img_02.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


def _one_class_folder(tmp: Path) -> Path:
    return make_png_folder(tmp / "imgs", classes=1, per_class=4, size=12)


def _existing_run(tmp: Path, cli) -> tuple[list[str], Callable[[], None]]:
    out = tmp / "out"
    code, _, err = cli(_train_argv(out))
    assert code == 0, err
    before = _files(out / "r")
    assert "manifest.json" in before

    def untouched() -> None:
        assert _files(out / "r") == before

    return _train_argv(out, epochs=2), untouched


def _complete_run(tmp: Path, cli) -> tuple[list[str], None]:
    assert cli(_train_argv(tmp / "out"))[0] == 0
    return ["train", "--resume", str(tmp / "out" / "r")], None


def _resume_plain_folder(tmp: Path, cli) -> tuple[list[str], None]:
    (tmp / "plain").mkdir()
    return ["train", "--resume", str(tmp / "plain")], None


def _out_is_file(tmp: Path, cli) -> tuple[list[str], None]:
    argv = _train_argv(_a_file(tmp))
    return argv, None


def _force_over_a_file(tmp: Path, cli) -> tuple[list[str], Callable[[], None]]:
    (tmp / "out").mkdir()
    (tmp / "out" / "r").write_text("not a run")
    return [*_train_argv(tmp / "out"), "--force"], lambda: None


def _summary_of(make: Callable[[Path], Path]) -> Setup:
    return lambda tmp, cli: (["summary", str(make(tmp))], None)


def _on_trained_run(*argv: str) -> Setup:
    """``argv`` with ``{run}`` = a freshly trained 1-epoch run, which must come out unchanged."""
    def setup(tmp: Path, cli) -> tuple[list[str], Callable[[], None]]:
        out = tmp / "out"
        assert cli(_train_argv(out))[0] == 0
        before = _files(out / "r")
        return [a.format(run=out / "r") for a in argv], lambda: _same_run_files(out / "r", before)
    return setup


def _same_run_files(run: Path, before: dict[str, bytes]) -> None:
    assert _files(run) == before


_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available, so --device cuda is valid")

BAD_INPUTS = [
    pytest.param(_train_with("--epochs", "0"), id="epochs-0"),
    pytest.param(_train_with("--epochs", "abc"), id="epochs-abc"),
    pytest.param(_train_with("--lr", "0"), id="lr-0"),
    pytest.param(_train_with("--lr", "-1"), id="lr-negative"),
    pytest.param(_train_with("--lr", "fast"), id="lr-not-a-number"),
    pytest.param(_train_with("--batch-size", "0"), id="batch-size-0"),
    pytest.param(_train_with("--weight-decay", "-0.1"), id="weight-decay-negative"),
    pytest.param(_train_with("--size", "4"), id="size-too-small"),
    pytest.param(_train_with("--data", "imagenet"), id="unknown-data-set"),
    pytest.param(_train_with("--data", "folder:"), id="folder-without-path"),
    pytest.param(lambda tmp, cli: ([*_train_argv(tmp / "out"), "--data", f"folder:{tmp / 'missing'}"], None),
                 id="folder-missing"),
    pytest.param(_folder_with(_a_file), id="folder-is-a-file"),
    pytest.param(_folder_with(_empty_folder), id="folder-empty"),
    pytest.param(_folder_with(_one_class_folder), id="folder-one-class"),
    pytest.param(_folder_with(_corrupt_folder), id="folder-corrupt-image"),
    pytest.param(_train_with("--optimizer", "rmsprop"), id="unknown-optimizer"),
    pytest.param(_train_with("--device", "tpu"), id="unknown-device"),
    pytest.param(_train_with("--device", "cuda"), id="device-cuda-unavailable", marks=_CUDA),
    pytest.param(_existing_run, id="run-name-exists"),
    pytest.param(lambda tmp, cli: (["train", "--resume", str(tmp / "missing")], None), id="resume-missing"),
    pytest.param(_resume_plain_folder, id="resume-not-a-run"),
    pytest.param(lambda tmp, cli: (["train", "--resume", str(_a_file(tmp))], None), id="resume-a-file"),
    pytest.param(_complete_run, id="resume-complete-run"),
    pytest.param(_out_is_file, id="out-is-a-file"),
    pytest.param(_train_with("--name", "../evil"), id="name-escapes"),
    pytest.param(_train_with("--name", "a/b"), id="name-with-slash"),
    pytest.param(_train_with("--widths", "a,b"), id="widths-not-integers"),
    pytest.param(_train_with("--kernels", "5"), id="kernels-length-mismatch"),
    pytest.param(_train_with("--kernels", "4,3"), id="kernels-even"),
    pytest.param(_train_with("--pools", "maybe,no"), id="pools-not-booleans"),
    pytest.param(_force_over_a_file, id="force-over-a-file"),
    pytest.param(_summary_of(_empty_folder), id="summary-not-a-run"),
    pytest.param(lambda tmp, cli: (["summary", str(tmp / "missing")], None), id="summary-missing"),
    pytest.param(lambda tmp, cli: (["summary", "--widths", "x"], None), id="summary-bad-widths"),
    pytest.param(_train_with("--no-such-option"), id="unknown-option"),
    pytest.param(lambda tmp, cli: (["fly"], None), id="unknown-command"),
    pytest.param(lambda tmp, cli: (["data", "preview", "--data", "nope"], None), id="preview-unknown-data"),
    pytest.param(_on_trained_run("render", "{run}", "--layers", "features.conv9"), id="render-unknown-layer"),
    pytest.param(_on_trained_run("render", "{run}", "--channels", "99"), id="render-channel-out-of-range"),
    pytest.param(_on_trained_run("render", "{run}", "--epochs", "5"), id="render-epoch-not-in-run"),
    pytest.param(_on_trained_run("render", "{run}", "--epochs", "every:0"), id="render-bad-epochs-form"),
    pytest.param(_on_trained_run("render", "{run}", "--size", "1"), id="render-size-too-small"),
    pytest.param(_on_trained_run("render", "{run}", "--param", "cppn"), id="render-unknown-param"),
    pytest.param(_on_trained_run("render", "{run}", "--device", "tpu"), id="render-unknown-device"),
    pytest.param(lambda tmp, cli: (["render", str(_a_file(tmp))], None), id="render-run-is-a-file"),
    pytest.param(_on_trained_run("analyze", "{run}", "--probe", "3"), id="analyze-probe-too-small"),
    pytest.param(lambda tmp, cli: (["analyze", str(tmp / "missing")], None), id="analyze-missing"),
    pytest.param(lambda tmp, cli: (["analyze", str(_empty_folder(tmp))], None), id="analyze-not-a-run"),
    pytest.param(lambda tmp, cli: (["gallery", str(_a_file(tmp))], None), id="gallery-run-is-a-file"),
    pytest.param(lambda tmp, cli: (["check", str(tmp / "missing")], None), id="check-missing"),
    pytest.param(lambda tmp, cli: (["check", str(_empty_folder(tmp))], None), id="check-not-a-run"),
    pytest.param(lambda tmp, cli: (["runs", "--out", str(_a_file(tmp))], None), id="runs-out-is-a-file"),
    pytest.param(lambda tmp, cli: (["data", "preview", "--size", "2"], None), id="preview-size-too-small"),
]


@pytest.mark.parametrize("setup", BAD_INPUTS)
def test_bad_input_is_one_line_error(setup: Setup, cli, tmp_path: Path) -> None:
    argv, check = setup(tmp_path, cli)
    code, out, err = cli(argv)
    assert_one_line_error(code, out, err)
    if check is not None:
        check()
    # nothing half-made: no run folder unless the setup made one, and no temp files anywhere
    if setup not in (_existing_run, _complete_run, _force_over_a_file) and not argv[0] in ("render", "analyze"):
        assert not (tmp_path / "out" / "r").exists()
    assert not [p for p in tmp_path.rglob("*.tmp")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_out_folder_not_writable(cli, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, out, err = cli(_train_argv(ro))
        assert_one_line_error(code, out, err)
        assert "not writable" in err
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)
