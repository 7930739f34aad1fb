"""benchmarks/claims.py on synthetic analysis.json files with planted verdicts: every k-of-N it prints is
the count planted, so a wrong count in docs/findings.md cannot come from the table code."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["c1", "c2", "c3"]


@pytest.fixture(scope="module")
def table_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("claims_table", ROOT / "benchmarks" / "claims.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _layers(acc: list[list[float]]) -> dict:
    return {
        n: {
            "global": {"accuracy": a, "gap_from_init": [x - a[0] for x in a]},
            "grid2": {"accuracy": [a[0], a[-1]]},
            "selectivity": {"by_epoch": [{"mean": 0.1}, {"mean": 0.2}]},
        }
        for n, a in zip(LAYERS, acc)
    }


def _analysis(last: list[float], control_last: float) -> dict:
    """Probes rising from 0.1 to ``last`` per depth; a control whose deepest layer reaches ``control_last``."""
    probes = {
        "epochs": [0, 1],
        "chance_accuracy": 0.1,
        "layers": _layers([[0.1, v] for v in last]),
        "control": {"run": "ctl", "epochs": [0, 1], "layers": _layers([[0.1, 0.1], [0.1, 0.1], [0.1, control_last]])},
    }
    return {"layers": LAYERS, "epochs": [0, 1], "probes": probes, "gabor": {}}


def _write(out: Path, seed: int, a: dict, val: list[float]) -> None:
    d = out / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "analysis.json").write_text(json.dumps(a))
    (d / "metrics.jsonl").write_text("\n".join(json.dumps({"epoch": i, "val_acc": v}) for i, v in enumerate(val)))


def test_counts_are_the_planted_verdicts(table_module, tmp_path: Path) -> None:
    _write(tmp_path, 1, _analysis([0.3, 0.6, 0.9], 0.2), [0.1, 0.9])  # a, b shown; c shown (.8 vs .1)
    _write(tmp_path, 2, _analysis([0.3, 0.6, 0.605], 0.2), [0.1, 0.95])  # a, b tie; c shown
    _write(tmp_path, 3, _analysis([0.3, 0.2, 0.9], 0.9), [0.1, 0.97])  # a, b not shown; c: .8 vs .8 tie
    texts = table_module.table([1, 2, 3], tmp_path)
    rows = {line.split("|")[1].strip()[:2]: line for line in texts["summary"].splitlines() if line.startswith("| ")}
    assert "**1 of 3** | 1 | 1 |" in rows["a)"]
    assert "**1 of 3** | 1 | 1 |" in rows["b)"]
    assert "**2 of 3** | 1 | 0 |" in rows["c)"]
    assert "3 not measured" in rows["d)"] and "**0 of 3**" in rows["e)"]  # no convergence, null or renders
    assert "final range 0.900-0.970 (median 0.950)" in texts["full"]
    assert "| 1 | 0.300 | 0.600 | 0.900 | shown |" in texts["full"]


def test_write_replaces_only_the_marked_blocks(table_module, tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- claims:start -->\nold\n<!-- claims:end -->\nafter\n")
    table_module.write_blocks(doc, {"summary": "S", "full": "F"})
    assert doc.read_text() == "before\n<!-- claims:start -->\nF\n<!-- claims:end -->\nafter\n"
    unmarked = tmp_path / "none.md"
    unmarked.write_text("no blocks here\n")
    with pytest.raises(SystemExit, match="no claims block"):
        table_module.write_blocks(unmarked, {})
