"""benchmarks/compare_replication.py on planted compare.json files: the table prints what was planted."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(
            "compare_replication", ROOT / "benchmarks" / "compare_replication.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _compare(hits: int, same: list[float], ctl: list[float], r: float, rate: float) -> dict:
    pair = {
        "a": 0,
        "b": 1,
        "same_depth": same,
        "init_control": ctl,
        "matching": {f"c{d}": [[0, 0, r], [1, 1, r - 0.2], [2, 2, r - 0.4]] for d in range(len(same))},
    }
    return {
        "runs": ["s1", "s2"],
        "images": {"count": 500, "from": "s1"},
        "pairs": [pair],
        "identification": {"hits": hits, "tests": 4, "accuracy": hits / 4},
        "transfer": {"rate": rate, "chance": 0.1},
    }


def test_the_table_prints_the_planted_numbers(tmp_path: Path) -> None:
    for name, data in (
        ("final", _compare(4, [0.9, 0.8], [0.3, 0.1], 0.9, 0.7)),
        ("init", _compare(2, [0.5, 0.2], [0.5, 0.2], 0.5, 0.1)),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "compare.json").write_text(json.dumps(data))
    text = _module().table(tmp_path)["full"]
    assert "| layer identification, final snapshots | **4 of 4** (100.0%) |" in text
    assert "| the same, random inits | 2 of 4 (50.0%) |" in text
    assert "0.90-0.90 (median 0.90) / 0.30-0.30 (median 0.30) / 0.70-0.70 (median 0.70)" in text  # median of .9 .7 .5
    assert "**70%** (random inits: 10%) | chance 10% |" in text
