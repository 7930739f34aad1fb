"""benchmarks/findings.py on synthetic analysis.json files with planted verdicts: every k-of-N it prints
is the count planted, so a wrong count in docs/findings.md cannot come from the table code."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def findings():
    spec = importlib.util.spec_from_file_location("findings", ROOT / "benchmarks" / "findings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LAYERS = ["c1", "c2", "c3"]


def _analysis(
    settle: list[float], structure: list[float], structure0: list[float], rot: list[float], null: list[float]
) -> dict:
    """An analysis.json of 3 layers whose CKA crosses 0.9 (and 0.8, 0.95) at step ``settle[d]``."""
    steps = [0, 10, 20, 30]

    def cka(at: float) -> list[float]:
        return [0.5 if s < at else 0.99 for s in steps]

    def cell(x: float) -> dict:
        return {"incompressibility": {"mean": 20 + x}, "structure": {"mean": x}, "slope": {"mean": -2.0}}

    return {
        "layers": LAYERS,
        "epochs": [0, 2],
        "settings_set": "planted",
        "convergence": {
            n: {"by_step": {"steps": steps, "cka_to_final": cka(t)}, "cka_at_init": 0.5, "dead_channels": []}
            for n, t in zip(LAYERS, settle)
        },
        "complexity": {n: {"0": cell(b), "2": cell(x)} for n, x, b in zip(LAYERS, structure, structure0)},
        "filter_updates": {n: {"rotation_from_init": [0.0, r]} for n, r in zip(LAYERS, rot)},
        "rotation_null": {
            "last_epoch": 2,
            **{n: {"null_at_last": z, "ratio": r / z, "run_at_last": r} for n, r, z in zip(LAYERS, rot, null)},
        },
        "receptive_field": {
            n: {
                "effective_px_epoch_2": 5,
                "effective_px_epoch_0": 5,
                "outside_fraction_epoch_2": 0.0,
                "theoretical_px": 5,
            }
            for n in LAYERS
        },
        "faithfulness": {n: {"channels": [{"am_percentile": 90.0}]} for n in LAYERS},
    }


PLANTED = {
    # settle: shown with a tie; structure rising, not at the init; rotation rising, null rising, ratio falling
    1: _analysis([10, 20, 20], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0.2, 0.3, 0.4], [0.1, 0.2, 0.4]),
    # settle: not shown; nothing rises
    2: _analysis([20, 10, 20], [0.3, 0.2, 0.1], [0.3, 0.2, 0.1], [0.4, 0.3, 0.2], [0.4, 0.3, 0.2]),
    # settle: strict; structure rising at the end and the init; rotation and ratio rising, null flat
    3: _analysis([0, 10, 20], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.2, 0.3, 0.4], [0.5, 0.5, 0.5]),
}


def test_the_table_counts_what_was_planted(findings, tmp_path: Path) -> None:
    for seed, a in PLANTED.items():
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "analysis.json").write_text(json.dumps(a))
    summary = findings.table([1, 2, 3], tmp_path)["summary"]
    rows = {line.split(" | ")[0].strip("| "): line for line in summary.splitlines() if line.startswith("|")}

    def count(prefix: str) -> str:
        return next(v for k, v in rows.items() if k.startswith(prefix)).split(" | ")[1]

    assert count("shallow layers settle first").startswith("**2 of 3** (0 all tied") and "1 strictly" in count(
        "shallow layers settle first"
    )
    assert count("activation-maximization structure bits") == "**2 of 3** |"
    assert count("activation-maximization incompressibility") == "**2 of 3** |"
    assert count("rotation from init rises") == "**2 of 3** |"
    assert count("the same in the random-direction null") == "1 of 3 |"
    assert count("rotation relative to that null") == "**1 of 3** |"
    inits = [line.split(" | ")[1] for line in summary.splitlines() if line.startswith("| the same at the random init")]
    assert inits == ["1 of 3 |", "1 of 3 |"]  # incompressibility and structure at the init: seed 3 only
    assert "| CKA >= 0.9 (the fixed criterion) | 2 of 3 | 1 of 3 | 0 of 3 |" in summary
    # seed 3's depth 1 is at its final form from the init (CKA_0 = 0.99): relative to that baseline it
    # gains nothing until the last snapshot, so under that criterion seed 3 no longer settles shallow-first
    assert "| baseline-relative CKA >= 0.9 | 1 of 3 | 0 of 3 | 0 of 3 |" in summary


def _with_settling(a: dict, formed: dict[str, list[int]], intervals: list[list[int | None]]) -> dict:
    """``a`` with analyze's settling block: per variant, every criterion crossing at the planted steps."""
    a = json.loads(json.dumps(a))
    for d, n in enumerate(LAYERS):
        a["convergence"][n]["settling"] = {
            "steps": [0, 10, 20, 30],
            "pooled": [0.5, 0.9, 0.99, 1.0],
            "flattened": [0.6, 0.9, 0.99, 1.0],
            "own_weights": [0.7, 0.9, 0.99, 1.0],
            "formed_at": {v: {c: formed[v][d] for c in ("0.8", "0.9", "0.95", "relative 0.9")} for v in formed},
            "formed_at_interval": intervals[d],
        }
    return a


def test_the_settling_controls_are_counted_per_variant(findings, tmp_path: Path) -> None:
    """Seed 1: pooled strict, own weights all tied, flattened not shown; seed 2: pooled shown with a tie,
    own weights strict, flattened strict. Seed 1's intervals overlap (undecided), seed 2's do not."""
    planted = {
        1: _with_settling(
            PLANTED[1],
            {"pooled": [0, 10, 20], "flattened": [20, 10, 20], "own_weights": [10, 10, 10]},
            [[0, 10], [10, 20], [20, 20]],
        ),
        2: _with_settling(
            PLANTED[2],
            {"pooled": [0, 20, 20], "flattened": [0, 10, 20], "own_weights": [0, 10, 20]},
            [[0, 0], [10, 10], [20, 30]],
        ),
    }
    for seed, a in planted.items():
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "analysis.json").write_text(json.dumps(a))
    texts = findings.table([1, 2], tmp_path)
    summary = texts["summary"]
    whole, flat, own = findings.VARIANTS.values()
    assert f"| {whole} | CKA >= 0.9 (the fixed criterion) | 2 of 2 | 1 of 2 | 0 of 2 |" in summary
    assert f"| {flat} | CKA >= 0.8 | 1 of 2 | 1 of 2 | 0 of 2 |" in summary
    assert f"| {own} | CKA >= 0.95 | 1 of 2 | 1 of 2 | 1 of 2 |" in summary
    assert "**2 of 2** (0 all tied" in summary and "1 strictly" in summary  # the headline: pooled at 0.9
    full = texts["full"]
    assert "| 1 | 0-10 | 10-20 | 20-20 | order undecided |" in full
    assert "| 2 | 0-0 | 10-10 | 20-30 | order holds at both ends |" in full
