"""The folder that holds runs (``outputs/`` by default): whether runs can be written there, where a new
run may go, and removing the one ``--force`` replaces. Checks write nothing; ``featviz.store`` creates runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from featviz.errors import RunError
from featviz.fileio import check_name, not_a_file


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


def check_new_run(out_dir: Path, name: str, force: bool) -> Path:
    """Where a new run ``name`` goes; an existing run there is an error unless ``force``, and anything
    that is not a run (a file, a non-empty foreign folder) is never replaced. Checks only, writes nothing."""
    path = not_a_file(out_dir) / check_name(name)
    if path.exists() and not path.is_dir():
        raise RunError(f"{path} exists and is a file, not a run; refusing to replace it")
    if path.exists():
        if not force:
            raise RunError(f"run {path} already exists; use --resume to continue it or --force to replace it")
        if not (path / "run.json").is_file() and any(path.iterdir()):
            raise RunError(f"{path} exists and is not a featviz run; refusing to replace it")
    return path


def remove_tree(path: Path) -> None:
    """Remove a run folder that is being replaced; failure is a RunError naming it."""
    import shutil

    try:
        shutil.rmtree(path)
    except OSError as e:
        raise RunError(f"cannot remove {path}: {e.strerror or e}") from None
