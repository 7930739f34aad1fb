"""The folder that holds runs (``outputs/`` by default): whether runs can be written there, where a new
run may go, and emptying the one ``--force`` replaces. Checks write nothing; ``featviz.run.store`` creates
runs (under ``featviz.run.lock``'s locks, so the replacement itself never races another writer).

``--force`` replaces only a folder featviz made: a run whose run.json and manifest.json are featviz's,
holding nothing but the files and folders featviz names (no symlink anywhere in it), and never a folder
that the same command reads from (a checkpoint or image folder inside the run).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path
from typing import Iterable

from featviz.errors import RunError
from featviz.run.fileio import check_name, not_a_file
from featviz.run.lock import FILES as LOCK_FILES
from featviz.run.records import read_run_info

# what a run folder holds: top-level files and folders featviz writes, and the names inside its folders
_TOP_FILES = {
    "run.json",
    "manifest.json",
    "metrics.jsonl",
    "probe.safetensors",
    "renders.jsonl",
    "analysis.json",
    ".renders.lock",
    *LOCK_FILES,
}
_TOP_DIRS = {"snapshots", "state", "renders", "analysis", "gallery"}
_TEMP = re.compile(r"^\..+\.tmp$|^\.renders\.part\d+\.jsonl$")
_INSIDE = {
    "snapshots": re.compile(r"^(epoch|step)_\d+\.safetensors$"),
    "state": re.compile(r"^epoch_\d+\.(safetensors|json)$"),
}


def check_out_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` if needed and make sure runs can be written there (fails before any work)."""
    out_dir = not_a_file(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create output folder {out_dir}: {e.strerror or e}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise RunError(f"output folder {out_dir} is not writable")
    return out_dir


def check_new_run(out_dir: Path, name: str, force: bool, reading: Iterable[Path] = ()) -> Path:
    """Where a new run ``name`` goes. An existing run there is an error unless ``force``; with ``force``
    only a folder featviz made is replaced (``check_replaceable``), and never one holding a path in
    ``reading`` (what the command reads from). A folder with nothing but featviz's lock files counts as
    empty (a run whose creation was interrupted). Checks only, writes nothing."""
    path = not_a_file(out_dir) / check_name(name)
    if os.path.islink(path):
        raise RunError(f"{path} is a symlink; refusing to write a run through it")
    if path.exists() and not path.is_dir():
        raise RunError(f"{path} exists and is a file, not a run; refusing to replace it")
    if path.exists() and not is_empty(path):
        if not force:
            raise RunError(f"run {path} already exists; use --resume to continue it or --force to replace it")
        check_replaceable(path)
    for src in reading:
        src_real, real = os.path.realpath(src), os.path.realpath(path)
        if src_real == real or src_real.startswith(real.rstrip(os.sep) + os.sep):
            raise RunError(
                f"{src} lies inside {path}, which this command would replace; write the run under "
                "another --name or --out"
            )
    return path


def is_empty(path: Path) -> bool:
    """The folder holds nothing but featviz's lock files."""
    return all(entry.name in LOCK_FILES for entry in os.scandir(path))


def check_replaceable(path: Path) -> None:
    """A RunError unless ``path`` is a run folder featviz made and holds nothing else (see the module
    docstring): anything a user put there is never deleted by ``--force``."""
    read_run_info(path)
    if not os.path.isfile(path / "manifest.json"):
        raise RunError(
            f"{path} has no manifest.json, so it is not a run featviz finished writing; "
            "refusing to replace it (remove it yourself if it should go)"
        )
    stranger = _foreign(path)
    if stranger is not None:
        raise RunError(
            f"{path} holds {stranger}, which featviz did not write; refusing to replace it "
            "(move it out, or remove the folder yourself)"
        )


def _foreign(path: Path) -> str | None:
    """The first entry under the run folder that featviz would not have written, else None."""
    for entry in os.scandir(path):
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            return f"the symlink {entry.name}"
        if stat.S_ISDIR(mode) and entry.name in _TOP_DIRS:
            inner = _foreign_below(Path(entry.path), _INSIDE.get(entry.name))
            if inner is not None:
                return inner
        elif not (stat.S_ISREG(mode) and (entry.name in _TOP_FILES or _TEMP.match(entry.name))):
            return entry.name
    return None


def _foreign_below(folder: Path, names: re.Pattern | None) -> str | None:
    """Inside a run's folder: anything but regular files and folders (and, where ``names`` is given,
    anything but its files with those names) is foreign."""
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root, name)
            mode = p.lstat().st_mode
            if stat.S_ISDIR(mode) and names is None:
                continue
            if not stat.S_ISREG(mode) or (names is not None and not (names.match(name) or _TEMP.match(name))):
                return str(p.relative_to(folder.parent))
    return None


def empty_run_folder(path: Path) -> None:
    """Remove everything in a run folder being replaced, except the lock files (the caller holds them);
    failure is a RunError naming the folder."""
    try:
        for entry in os.scandir(path):
            if entry.name in LOCK_FILES:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
    except OSError as e:
        raise RunError(f"cannot empty {path} to replace it: {e.strerror or e}") from None
