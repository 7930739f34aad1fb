"""Hostile and careless use loses nothing: each test is one failure a probe of featviz once found
(F-numbers in the closing notes of that work), and fails if the failure comes back.

Writes stay inside featviz's own files, reads are bounded, one writer per run; terminal-safe output is in
test_hostile_output.py. The server's own tests are in test_serve.py, the importer's in test_import.py, the
recorder's in test_record.py, and the property-based search over damaged runs in test_hostile_runs.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_CLI_MODEL
from featviz.errors import RunError
from featviz.faults import ENV_AT, ENV_FILE
from featviz.run.check import check_run
from featviz.run.store import Run, list_runs
from hostile_helpers import _copy, _damaged

ROOT = Path(__file__).resolve().parents[1]


def _tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (not following links) -> its bytes."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            p = Path(folder, name)
            if p.is_file() and not p.is_symlink() and not name.startswith(".lock-"):
                out[str(p.relative_to(root))] = p.read_bytes()
    return out


def _train_argv(out: Path, name: str = "r", epochs: int = 1, data: str | None = None) -> list:
    source = ["--data", data] if data else ["--n-train", 64, "--n-val", 16]
    return ["train", "--out", out, "--name", name, "--epochs", epochs, *source, "--size", 16, *TINY_CLI_MODEL]


# ----------------------------------------------------------------------------- writes stay inside
def test_preview_never_replaces_a_device_fifo_symlink_or_a_run_file(cli, tmp_path: Path, tiny_run: Run) -> None:
    """F1: `data preview --out /dev/null` replaced the device node; any --out, run.json too, was overwritten."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    link = tmp_path / "link.png"
    link.symlink_to(tmp_path / "elsewhere.png")
    run = _copy(tiny_run, tmp_path / "run")
    before = (run.path / "run.json").read_bytes()
    for out, why in (
        (fifo, "FIFO"),
        (link, "symlink"),
        (run.path / "run.json", "ending in .png"),
        ("/dev/null", "ending in .png"),
        (tmp_path, "ending in .png"),
    ):
        code, _, err = cli(["data", "preview", "--out", out, "--per-class", 1])
        assert code == 1 and why in err and len(err.strip().splitlines()) == 1, err
    not_png = tmp_path / "notes.png"
    not_png.write_text("my notes")
    code, _, err = cli(["data", "preview", "--out", not_png, "--per-class", 1])
    assert code == 1 and "not a PNG" in err and not_png.read_text() == "my notes"
    assert fifo.is_fifo() and link.is_symlink() and not (tmp_path / "elsewhere.png").exists()
    assert (run.path / "run.json").read_bytes() == before


def test_force_never_deletes_a_folder_featviz_did_not_make(cli, tmp_path: Path) -> None:
    """F6: --force deleted any folder holding a file named run.json, with the user's src/ beside it."""
    out = tmp_path / "out"
    proj = out / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "main.py").write_text("print('mine')")
    (proj / "run.json").write_text("{}")
    code, _, err = cli([*_train_argv(out, "proj"), "--force"])
    assert code == 1 and "not a featviz run description" in err
    assert (proj / "src" / "main.py").read_text() == "print('mine')"
    # a real run with the user's file inside it: refused too, and named
    assert cli(_train_argv(out, "real"))[0] == 0
    (out / "real" / "notes.txt").write_text("keep")
    code, _, err = cli([*_train_argv(out, "real"), "--force"])
    assert code == 1 and "holds notes.txt, which featviz did not write" in err
    assert (out / "real" / "notes.txt").read_text() == "keep"
    (out / "real" / "notes.txt").unlink()
    (out / "real" / "snapshots" / "link").symlink_to(tmp_path)
    code, _, err = cli([*_train_argv(out, "real"), "--force"])
    assert code == 1 and "which featviz did not write" in err and tmp_path.is_dir()


def test_force_never_replaces_the_folder_the_command_reads(cli, tmp_path: Path, png_folder: Path) -> None:
    """A run is never replaced by a command that reads its images from inside it."""
    out = tmp_path / "out"
    assert cli(_train_argv(out, "r"))[0] == 0
    inside = out / "r" / "renders" / "pngs"
    shutil.copytree(png_folder, inside)
    before = _tree(out / "r")
    code, _, err = cli([*_train_argv(out, "r", data=f"folder:{inside}"), "--force"])
    assert code == 1 and "lies inside" in err
    assert _tree(out / "r") == before


def test_a_symlinked_gallery_folder_is_never_written_through(cli, tmp_path: Path, tiny_run: Run) -> None:
    """F3: `rm -r RUN/gallery; ln -s OTHER RUN/gallery; featviz gallery RUN` overwrote OTHER/index.html."""
    run = _copy(tiny_run, tmp_path / "run")
    other = tmp_path / "other"
    other.mkdir()
    (other / "index.html").write_text("someone else's page")
    shutil.rmtree(run.path / "gallery", ignore_errors=True)
    (run.path / "gallery").symlink_to(other)
    code, _, err = cli(["gallery", run.path])
    assert code == 1 and "symlink" in err and len(err.strip().splitlines()) == 1
    assert (other / "index.html").read_text() == "someone else's page"
    with pytest.raises(RunError, match="symlink"):
        run.write_artifact("gallery", "index.html", b"x")


def test_atomic_write_refuses_special_files(tmp_path: Path) -> None:
    from featviz.run.fileio import atomic_write_bytes

    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    (tmp_path / "d").mkdir()
    for target in (fifo, tmp_path / "d"):
        with pytest.raises(RunError, match="replaces only regular files"):
            atomic_write_bytes(target, b"x")
    assert fifo.is_fifo() and (tmp_path / "d").is_dir()


def test_import_never_replaces_the_run_it_reads_checkpoints_from(cli, tmp_path: Path, tiny_cfgs) -> None:
    """F9: `featviz import RUN/snapshots --out runs --name RUN --force` destroyed RUN, and check then said ok."""
    import dataclasses

    from featviz.pipeline import train_run

    data, model, train = tiny_cfgs
    run = train_run(data, model, dataclasses.replace(train, snapshots="epoch"), out_dir=tmp_path / "runs", name="r")
    before = _tree(run.path)
    kwargs = json.dumps({"widths": [4, 8], "kernels": [5, 3], "strides": [1, 1], "pools": [True, False]})
    argv = [
        "import",
        run.path / "snapshots",
        "--model",
        "featviz.model:small_cnn",
        "--model-kwargs",
        kwargs,
        "--size",
        16,
        "--out",
        tmp_path / "runs",
    ]
    assert cli([*argv, "--name", "copy"])[0] == 0  # these checkpoints fit the model: the import itself works
    code, _, err = cli([*argv, "--name", "r", "--force"])
    assert code == 1 and "lies inside" in err and len(err.strip().splitlines()) == 1, err
    assert _tree(run.path) == before and check_run(run.path).ok


# ----------------------------------------------------------------------------- reads are bounded
@pytest.mark.parametrize("special", ["devzero", "fifo"])
@pytest.mark.parametrize("file", ["metrics.jsonl", "manifest.json", "renders.jsonl", "run.json"])
def test_special_files_in_a_run_are_named_not_read(cli, tmp_path: Path, tiny_run: Run, special: str, file: str) -> None:
    """F5: a /dev/zero symlink as metrics.jsonl made runs, check and gallery read until memory ran out;
    a FIFO there made them hang."""
    run = _damaged(tiny_run, tmp_path)
    target = run.path / file
    target.unlink(missing_ok=True)
    if special == "devzero":
        target.symlink_to("/dev/zero")
    else:
        os.mkfifo(target)
    signal.alarm(60)  # a hang fails the test instead of stalling the suite
    try:
        for argv in (["runs", "--out", run.path.parent], ["check", run.path], ["gallery", run.path]):
            code, out, err = cli(argv)
            assert "unexpected" not in err and "Traceback" not in err, (argv, err)
            if argv[0] == "check":
                assert code == 1 and file in err
    finally:
        signal.alarm(0)


def test_an_edited_epoch_count_is_refused_at_once(tmp_path: Path, tiny_run: Run) -> None:
    """F5: `"epochs_done": 10000000` made check run for minutes while its memory grew."""
    run = _damaged(tiny_run, tmp_path)
    manifest = json.loads((run.path / "manifest.json").read_text())
    manifest["epochs_done"] = 10_000_000
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    t0 = time.perf_counter()
    rep = check_run(run.path)
    assert time.perf_counter() - t0 < 10
    assert not rep.ok and any("epochs_done 10000000" in p for p in rep.problems)


def test_deeply_nested_json_is_one_line(cli, tmp_path: Path, tiny_run: Run) -> None:
    """F18: a run.json nested 50,000 deep was an 'unexpected' error and broke `featviz runs` for every run;
    --model-kwargs nested as deep was one too."""
    good = _damaged(tiny_run, tmp_path, "good")
    bad = _damaged(tiny_run, tmp_path, "bad")
    (bad.path / "run.json").write_text("[" * 50_000 + "]" * 50_000)
    code, out, err = cli(["runs", "--out", good.path.parent])
    assert code == 0 and "good" in out and "unexpected" not in err
    assert [r.name for r in list_runs(good.path.parent)] == ["good"]
    code, _, err = cli(["check", bad.path])
    assert code == 1 and "nested deeper than 64 levels" in err and "unexpected" not in err
    code, _, err = cli(["train", "--model", "torchvision:resnet18", "--model-kwargs", "[" * 50_000 + "]" * 50_000])
    assert code == 1 and "--model-kwargs is nested deeper" in err


def test_hostile_render_records_are_damaged_lines_not_links(cli, tmp_path: Path, tiny_run: Run) -> None:
    """F20 and F18: renders.jsonl entries naming /etc/passwd or ../../x.png passed check and the gallery
    linked outside the run; {"file": 5} was an 'unexpected' error."""
    run = _damaged(tiny_run, tmp_path)
    outside = tmp_path / "x.png"
    outside.write_bytes(b"\x89PNG\r\n\x1a\n")
    hostile = [
        {"file": "/etc/passwd", "kind": "am"},
        {"file": "../../x.png", "kind": "am"},
        {"file": 5},
        {"file": "renders/../../x.png", "kind": "am_grid"},
        {"file": str(outside), "kind": "filters"},
    ]
    with open(run.path / "renders.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in hostile)
    rep = check_run(run.path)
    assert sum("is damaged (file is not a path under the run's renders/ folder)" in p for p in rep.problems) == 5
    code, _, err = cli(["gallery", run.path])
    assert code == 0 and "unexpected" not in err
    page = (run.path / "gallery" / "index.html").read_text()
    assert "passwd" not in page and "x.png" not in page


def test_manifest_entries_outside_the_run_are_never_hashed(tmp_path: Path, tiny_run: Run) -> None:
    """F20: check hashed manifest entries outside the run."""
    run = _damaged(tiny_run, tmp_path)
    manifest = json.loads((run.path / "manifest.json").read_text())
    manifest["files"]["../../secret"] = "0" * 64
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    rep = check_run(run.path)
    assert any("malformed manifest (entry '../../secret'" in p for p in rep.problems)
    with pytest.raises(RunError, match="malformed manifest"):
        run.epochs_done


def test_a_200_digit_step_is_a_damaged_line(cli, tmp_path: Path, tiny_run: Run) -> None:
    """F21: a 200-digit step in metrics.jsonl broke export."""
    pytest.importorskip("tensorboard")
    run = _damaged(tiny_run, tmp_path)
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    rec = json.loads(lines[-1])
    rec["step"] = int("9" * 200)
    (run.path / "metrics.jsonl").write_text("\n".join([*lines[:-1], json.dumps(rec)]) + "\n")
    assert len(run.metrics(strict=False)) == len(lines) - 1
    code, out, err = cli(["export", run.path, "--tensorboard", tmp_path / "tb"])
    assert code == 0 and "unexpected" not in err, err


def test_an_uncreatable_tensorboard_folder_is_one_line(cli, tmp_path: Path, tiny_run: Run) -> None:
    """F18: `export --tensorboard /sys/tb` was an 'unexpected' error."""
    pytest.importorskip("tensorboard")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli(["export", tiny_run.path, "--tensorboard", blocker / "tb"])
    assert code == 1 and "cannot create tensorboard folder" in err and "unexpected" not in err


def test_record_checks_on_constructed_records() -> None:
    """The record checks, each on a record whose answer is known (cases the property-based search found)."""
    from featviz.run.records import metric_problem
    from featviz.run.schema import render_problem

    assert metric_problem({"epoch": 1, "step": 7, "val_acc": 0.5, "label": "x", "train_loss": None}) is None
    assert metric_problem({"epoch": 1, "val_acc": [0.5]}) == "val_acc is not a number"
    assert metric_problem({"epoch": 1, "lr": True}) == "lr is not a number"
    assert metric_problem({"epoch": 2**63}) == "epoch is not a whole number from 0"
    assert metric_problem({"epoch": 1, "step": -1}) == "step is not a whole number from 0"
    good = {"file": "renders/am/x/conv1/epoch_001/c0.png", "kind": "am", "layer": "conv1", "channel": 0}
    assert render_problem(good) is None
    assert render_problem({**good, "kind": None}) == "kind or layer is not text"
    assert render_problem({**good, "layer": ["conv1"]}) == "kind or layer is not text"
    assert render_problem({**good, "file": False}) == "file is not a path under the run's renders/ folder"
    assert render_problem({**good, "settings": "x"}) == "settings is not an object"


# ----------------------------------------------------------------------------- one writer per run
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_AT, ENV_FILE)}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def _start_paused(argv: list, at: str, marker: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "featviz", *map(str, argv)],
        cwd=ROOT,
        text=True,
        env=_env(**{ENV_AT: at, ENV_FILE: str(marker)}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 90
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "never paused"
        time.sleep(0.05)
    return proc


def test_two_writers_of_one_run_the_second_is_refused(cli, tmp_path: Path) -> None:
    """F10: two `featviz train --force --name same` 0.3 s apart both printed "done"; one run was lost and
    the survivor failed check. Now the second is refused, naming the first, and the first finishes intact."""
    out = tmp_path / "out"
    assert cli(_train_argv(out, "same"))[0] == 0
    marker = tmp_path / "paused"
    first = _start_paused([*_train_argv(out, "same", epochs=2), "--force"], "step:2", marker)
    try:
        for argv in ([*_train_argv(out, "same"), "--force"], ["train", "--resume", out / "same"]):
            code, _, err = cli(argv)
            assert code == 1 and f"is being written by pid {first.pid}" in err, err
        marker.unlink()  # the first carries on
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        first.kill()
        first.wait()
        first.stdout.close()
        first.stderr.close()
    rep = check_run(out / "same")
    assert rep.ok and rep.epochs_done == 2, rep.problems


def test_render_and_resume_run_side_by_side_without_touching_each_other(tmp_path: Path, tiny_cfgs) -> None:
    """F15: `train --resume` deleted a running render's temp files. Resume removes only its own; a second
    render of the same run is refused while one runs."""
    import dataclasses

    from featviz.pipeline import resume_run, train_run

    data, model, train = tiny_cfgs
    run = train_run(data, model, dataclasses.replace(train, epochs=1), out_dir=tmp_path, name="run")
    configs = {**run.info.configs, "train": {**run.info.configs["train"], "epochs": 2}}
    run.update_info(dataclasses.replace(run.info, configs=configs))  # as if interrupted after epoch 1 of 2
    run.write_manifest(1)
    assert not Run.open(run.path).complete
    theirs = run.path / "renders" / ".grid.png.abc.tmp"
    theirs.parent.mkdir(exist_ok=True)
    theirs.write_bytes(b"half a render")
    mine = run.path / "snapshots" / ".epoch_002.safetensors.x.tmp"
    mine.write_bytes(b"half a snapshot")
    render_lock = Run.open(run.path).hold("outputs")  # a render is running
    try:
        with pytest.raises(RunError, match="is being written by pid"):
            Run.open(run.path).hold("outputs")
        resume_run(run.path)
    finally:
        render_lock.release()
    assert theirs.read_bytes() == b"half a render" and not mine.exists()
    assert check_run(run.path).ok


def test_watch_never_writes_to_a_run_that_is_not_training(tmp_path: Path, tiny_run: Run) -> None:
    """F11: `featviz gallery RUN --serve --watch` on a finished, rendered run rewrote its filter PNGs and
    marked its renders.jsonl records live."""
    from featviz.config import RenderConfig
    from featviz.optvis import RenderSettings
    from featviz.pipeline import render_run

    run = _copy(tiny_run, tmp_path / "run")
    render_run(run, RenderConfig(moments="last", channels=(0,), settings=RenderSettings(steps=2, size=16)))
    before = _tree(run.path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "featviz", "gallery", str(run.path), "--serve", "--watch", "--port", "0"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        lines = []
        while not any("serving" in ln for ln in lines):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            lines.append(proc.stderr.readline())
        time.sleep(2.5)  # a live watcher refreshes every second
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert "not being trained" in " ".join(" ".join(lines).split()), lines
    assert _tree(run.path) == before
