"""The command line, in-process through featviz.cli.main.main: the happy paths (mistakes: test_cli_mistakes.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from cli_helpers import _files, _train_argv, tiny_shapes  # noqa: F401 - tiny_shapes: the autouse fixture


# ----------------------------------------------------------------------------- happy paths
def test_train_runs_summary(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, err = cli(_train_argv(out))
    assert code == 0, err
    run = out / "r"
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == [  # log schedule
        "epoch_000.safetensors",
        "epoch_001.safetensors",
        *(f"step_{s:07d}.safetensors" for s in (1, 2, 4)),
    ]
    assert "done:" in err and "Traceback" not in stdout + err
    meta = json.loads((run / "run.json").read_text())
    assert meta["configs"]["model"]["widths"] == [4, 8] and meta["configs"]["model"]["pools"] == [True, False]
    assert meta["configs"]["train"]["epochs"] == 1 and meta["configs"]["train"]["batch_size"] == 32

    code, stdout, err = cli(["runs", "--out", str(out)])
    assert code == 0 and err == ""
    line = next(line for line in stdout.splitlines() if line.startswith("r "))
    assert line.split()[1:3] == ["pairs", "1/1"] and line.endswith("complete")

    code, stdout, err = cli(["summary", str(run)])
    assert code == 0, err
    assert "features.conv1" in stdout and "features.conv2" in stdout
    assert "8 x 4 x 3 x 3 = 288" in stdout and "4 x 3 x 5 x 5 = 300" in stdout
    assert "4x16x16" in stdout  # output shape of conv1 at the run's 16 px
    # 4x3x5x5 + 2x4 (bn1) + 8x4x3x3 + 2x8 (bn2) + 8x10 + 10 (fc) = 300 + 8 + 288 + 16 + 90
    assert meta["params_total"] == 702 and "total trainable parameters: 702\n" in stdout

    code, stdout, err = cli(["summary", str(run), "--json"])
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["input"] == [3, 16, 16] and doc["trainable_total"] == 702


def test_summary_json_default_model(cli) -> None:
    code, stdout, err = cli(["summary", "--json"])
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["trainable_total"] == 99_738  # the README's table for the default model
    assert doc["input"] == [3, 32, 32]
    rows = {r["name"]: r for r in doc["layers"]}
    assert rows["features.conv2"]["formula"] == "32 x 16 x 3 x 3 = 4,608"
    assert rows["features.pool1"]["weights"] == 0


def test_summary_options(cli) -> None:
    code, stdout, err = cli(["summary", "--widths", "4,8", "--kernels", "5,3", "--strides", "2,1", "--size", "16"])
    assert code == 0, err
    assert "8 x 4 x 3 x 3 = 288" in stdout and "4x8x8" in stdout


def test_interrupted_cli_run_resumes_to_identical_snapshots(cli, tmp_path: Path, monkeypatch) -> None:
    from featviz.cli.common import TrainBar

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
    (out / "r" / ".metrics.jsonl.x1.tmp").write_text("x")  # featviz's own leftovers go with the run
    (out / "r" / "snapshots" / "epoch_009.safetensors").write_text("x")
    code, _, err = cli([*_train_argv(out, epochs=2), "--force"])
    assert code == 0, err
    assert not (out / "r" / ".metrics.jsonl.x1.tmp").exists()
    assert not (out / "r" / "snapshots" / "epoch_009.safetensors").exists()
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


def test_one_damaged_run_does_not_stop_the_list(cli, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        assert cli(_train_argv(tmp_path, name))[0] == 0
    (tmp_path / "a" / "manifest.json").write_text("{")  # sorted first: the listing once stopped here
    code, stdout, _ = cli(["runs", "--out", str(tmp_path)])
    lines = {line.split()[0]: line for line in stdout.splitlines()[1:]}
    assert code == 0 and set(lines) == {"a", "b", "c"}
    assert lines["a"].endswith("damaged (featviz check RUN)") and lines["c"].endswith("complete")
