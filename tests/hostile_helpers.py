"""What test_hostile.py and test_hostile_output.py share: a copy of the tiny run, to damage."""

from __future__ import annotations

import shutil
from pathlib import Path

from featviz.run.store import Run


def _copy(run: Run, dest: Path) -> Run:
    shutil.copytree(run.path, dest)
    return Run.open(dest)


def _damaged(tiny_run: Run, tmp_path: Path, name: str = "run") -> Run:
    return _copy(tiny_run, tmp_path / "out" / name)
