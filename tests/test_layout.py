"""The repository's shape: documentation links resolve, modules and test files stay small, the library never
imports the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted([*(ROOT / "featviz").rglob("*.py"), *(ROOT / "cli").rglob("*.py")])
TEST_FILES = sorted((ROOT / "tests").glob("*.py"))


@pytest.mark.parametrize(
    "doc",
    [
        "README.md",
        "docs/metrics.md",
        "docs/findings.md",
        "docs/your_model.md",
        "docs/scale.md",
        "docs/layout.md",
        "docs/training.md",
        "docs/gallery.md",
        "docs/guarantees.md",
        "benchmarks/README.md",
    ],
)
def test_every_relative_link_resolves(doc: str) -> None:
    path = ROOT / doc
    if not path.exists():
        pytest.skip(f"{doc} does not exist")
    for target in re.findall(r"\]\(([^)#\s]+)", path.read_text()):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{doc} links to {target}, which is not in the repository"


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small_and_the_library_never_imports_the_cli(module: Path) -> None:
    text = module.read_text()
    assert len(text.splitlines()) <= 400
    if module.is_relative_to(ROOT / "featviz") and module.name != "__main__.py":  # the entry shim for -m featviz
        assert not re.search(r"^\s*(from|import) (featviz\.)?cli\b", text, re.M)


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_test_files_stay_small(test_file: Path) -> None:
    assert len(test_file.read_text().splitlines()) <= 400
