"""The package as pip installs it: a wheel holds only featviz (the command line as featviz.cli, never a
top-level ``cli`` that another distribution could clash with), and its entry point runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("wheel", reason="building the wheel offline needs setuptools and wheel (the test extra)")
    out = tmp_path_factory.mktemp("wheel")
    src = out / "src"  # a copy: building in place would leave build/ in the checkout, stale files and all
    for name in ("featviz", "cli"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (found,) = out.glob("featviz-*.whl")
    return found


def test_the_wheel_installs_featviz_and_nothing_else_at_the_top(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "featviz/run/store.py" in names  # every subpackage is listed in pyproject.toml
    tops = {n.split("/")[0] for n in names}
    assert tops == {"featviz", next(t for t in tops if t.endswith(".dist-info"))}, tops
    assert "featviz/cli/main.py" in names and "featviz/gallery/templates/index.html.j2" in names
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "featviz = featviz.cli.main:run" in entry


def test_the_wheel_runs_from_a_clean_folder(wheel: Path, tmp_path: Path) -> None:
    """Unpacked alone (no repository on the path), ``python -m featviz`` answers."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "featviz", "runs", "--out", str(tmp_path / "none")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "no runs under" in res.stdout, res.stderr[-2000:]
    where = subprocess.run(
        [sys.executable, "-c", "import featviz.cli.main as m; print(m.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert where.stdout.strip().startswith(str(site)), where  # the wheel's copy, not the repository's
