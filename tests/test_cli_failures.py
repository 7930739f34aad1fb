"""The command line when the system fails it: folders it may not write, Ctrl-C, snapshots edited behind its back."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from cli_helpers import _files, _train_argv, assert_one_line_error, tiny_shapes  # noqa: F401 - tiny_shapes: the autouse fixture
from conftest import TINY_CLI_MODEL


def _make_read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make ``folder`` and everything below it read-only as the kernel does for a user without write
    permission: creating, renaming or removing an entry there raises PermissionError (EACCES).

    chmod cannot do this for root (CI runs as root), so the os functions that featviz's writes go
    through (Path.mkdir -> os.mkdir, tempfile.mkstemp -> os.open, os.replace, unlink) are wrapped.
    """
    folder = folder.resolve()

    def inside(path) -> bool:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False
        parent = Path(os.fsdecode(path)).resolve().parent
        return parent == folder or folder in parent.parents

    def deny(path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))

    real = {name: getattr(os, name) for name in ("mkdir", "open", "replace", "rename", "unlink", "remove", "rmdir")}

    def mkdir(path, *args, **kw):
        if not kw.get("dir_fd") and inside(path) and not os.path.lexists(path):
            deny(path)
        return real["mkdir"](path, *args, **kw)

    def open_(path, flags, *args, **kw):
        if flags & os.O_CREAT and not kw.get("dir_fd") and inside(path) and not os.path.lexists(path):
            deny(path)
        return real["open"](path, flags, *args, **kw)

    def moving(name):
        def move(src, dst, *args, **kw):
            if inside(src) or inside(dst):
                deny(dst)
            return real[name](src, dst, *args, **kw)

        return move

    def removing(name):
        def remove(path, *args, **kw):
            if not kw.get("dir_fd") and inside(path) and os.path.lexists(path):
                deny(path)
            return real[name](path, *args, **kw)

        return remove

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
    for name in ("replace", "rename"):
        monkeypatch.setattr(os, name, moving(name))
    for name in ("unlink", "remove", "rmdir"):
        monkeypatch.setattr(os, name, removing(name))


def test_out_folder_not_writable(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    assert cli(_train_argv(out, "old"))[0] == 0
    before = _files(out)
    with monkeypatch.context() as m:
        _make_read_only(m, out)
        code, stdout, err = cli(_train_argv(out, "new"))
    assert_one_line_error(code, stdout, err)
    assert str(out) in err and ("Permission denied" in err or "not writable" in err), err
    assert sorted(p.name for p in out.iterdir()) == ["old"]  # no half-made run
    assert _files(out) == before  # the existing run is unchanged


def test_resume_in_read_only_run_folder(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from featviz.cli.common import TrainBar

    out = tmp_path / "out"
    real_epoch = TrainBar.epoch

    def stop_after_first(self, rec):
        real_epoch(self, rec)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(TrainBar, "epoch", stop_after_first)
        assert cli(_train_argv(out, "cut", epochs=2))[0] == 130
    run = out / "cut"
    before = _files(run)
    assert json.loads(before["manifest.json"])["epochs_done"] == 1
    with monkeypatch.context() as m:
        _make_read_only(m, run)
        code, stdout, err = cli(["train", "--resume", str(run)])
    assert_one_line_error(code, stdout, err)
    assert str(run) in err and ("Permission denied" in err or "not writable" in err), err
    assert _files(run) == before  # the interrupted run can still be resumed once the folder is writable
    assert cli(["train", "--resume", str(run)])[0] == 0


def test_ctrl_c_says_what_is_kept(cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """typer answers a Ctrl-C inside a command with exit code 130 instead of raising KeyboardInterrupt, so the
    message once never printed; a real SIGINT to `featviz train` takes this path."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "featviz",
            "train",
            "--epochs",
            "200",
            "--n-train",
            "2000",
            "--out",
            str(tmp_path / "out"),
            "--name",
            "cut",
            *TINY_CLI_MODEL[:8],
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
        # as from a terminal: an ignored SIGINT (inherited from whatever started pytest) would
        # be kept by the child, and Python would then install no KeyboardInterrupt handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    run = tmp_path / "out" / "cut"
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err[-500:]
    assert "featviz: interrupted; everything committed is kept" in err and "Traceback" not in err
    code, out, _ = cli(["check", run])
    assert code == 0 and "epochs committed" in out


def test_check_finds_edited_snapshots_and_a_missing_manifest(cli, tmp_path: Path) -> None:
    """Damage whose hashes were recomputed (an edited file re-registered in the manifest) used to pass check
    and then crash render with a KeyError; a missing manifest was reported as 'ok: -1 epochs committed'."""
    from featviz.run.fileio import load_tensors, save_tensors
    from featviz.run.store import Run

    assert cli(_train_argv(tmp_path / "out", epochs=2))[0] == 0
    run = Run.open(tmp_path / "out" / "r")
    snap = run.snapshot_file(1)
    tensors = load_tensors(snap)
    del tensors["features.conv2.weight"]
    save_tensors(snap, tensors)
    run.write_manifest(run.epochs_done)  # the edit, re-registered: every hash matches
    code, out, err = cli(["check", run.path])
    assert code == 1 and f"{snap}: tensor features.conv2.weight differs from snapshots/epoch_000" in out + err
    first = run.snapshot_file(0)
    tensors = load_tensors(first)
    tensors["features.conv1.weight"] = tensors["features.conv1.weight"][:, :2]
    save_tensors(first, tensors)
    run.write_manifest(run.epochs_done)
    code, out, err = cli(["check", run.path])
    assert code == 1 and "features.conv1.weight is [4, 2, 5, 5], run.json's layer list says [4, 3, 5, 5]" in out + err
    (run.path / "manifest.json").unlink()
    code, out, err = cli(["check", run.path])
    assert code == 1 and "manifest.json: file is missing" in out + err
