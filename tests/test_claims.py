"""The claim verdicts (featviz.claims) on analyses built by hand, where the right verdict is known."""

from __future__ import annotations

import pytest

from featviz.claims import TIE, claims, rises, settling

LAYERS = ["c1", "c2", "c3"]


def _probes(acc: list[list[float]], control: list[float] | None = None) -> dict:
    """analysis["probes"] with the global probe's per-epoch accuracy per layer (epochs 0..len-1)."""

    def layers(rows):
        return {
            n: {"global": {"accuracy": a, "gap_from_init": [x - a[0] for x in a]}, "grid2": {"accuracy": a}}
            for n, a in zip(LAYERS, rows)
        }

    out = {"epochs": list(range(len(acc[0]))), "layers": layers(acc)}
    if control is not None:
        out["control"] = {"run": "ctl", "epochs": [0, 1], "layers": layers([[0.2, 0.2]] * 2 + [control])}
    return out


def _analysis(**sections) -> dict:
    return {"layers": LAYERS, "epochs": [0, 1], **sections}


def _verdicts(a: dict) -> dict[str, str]:
    return {c["key"]: c["verdict"] for c in claims(a)}


@pytest.mark.parametrize(
    "values, expected",
    [
        ([0.2, 0.5, 0.9], "shown"),
        ([0.2, 0.5, 0.505], "tie"),  # the last step is within TIE
        ([0.2, 0.5, 0.48], "not shown"),  # falls by more than TIE
        ([0.5, 0.5, 0.5], "tie"),
        ([0.7], "not shown"),
    ],
)
def test_rises_with_a_tolerance(values, expected) -> None:
    assert rises(values, TIE) == expected


def test_rises_without_tolerance_is_strict() -> None:
    assert rises([1.0, 2.0, 3.0]) == "shown" and rises([1.0, 2.0, 2.0]) == "tie" and rises([2.0, 1.0]) == "not shown"


def test_probe_claims_read_the_last_epoch_and_the_gap_from_init() -> None:
    acc = [[0.30, 0.40], [0.25, 0.60], [0.20, 0.95]]  # init falls with depth, trained rises; gaps .1 .35 .75
    v = _verdicts(_analysis(probes=_probes(acc, control=[0.20, 0.30])))
    assert v["a"] == "shown" and v["b"] == "shown" and v["c"] == "shown"  # .75 against the control's .10


def test_gap_that_does_not_rise_and_a_control_that_matches_are_not_shown() -> None:
    acc = [[0.10, 0.50], [0.40, 0.70], [0.60, 0.90]]  # accuracy rises, but the gains are .4 .3 .3
    v = _verdicts(_analysis(probes=_probes(acc, control=[0.60, 0.905])))
    assert v["a"] == "shown" and v["b"] == "not shown" and v["c"] == "tie"  # .30 against .305: within TIE
    v = _verdicts(_analysis(probes=_probes(acc, control=[0.20, 0.90])))
    assert v["c"] == "not shown"  # the control gained .70


def test_without_a_control_claim_c_says_how_to_give_one() -> None:
    v = _verdicts(_analysis(probes=_probes([[0.1, 0.2]] * 3)))
    assert v["c"].startswith("not measured") and "--control" in v["c"]
    assert _verdicts(_analysis(probes={"skipped": "no images"}))["a"] == "not measured: no images"


def _convergence(pooled: list, own: list, intervals: list) -> dict:
    return {
        n: {"settling": {"formed_at": {"pooled": {"0.9": p}, "own_weights": {"0.9": o}}, "formed_at_interval": i}}
        for n, p, o, i in zip(LAYERS, pooled, own, intervals)
    }


def test_settling_needs_both_orders_and_separate_intervals() -> None:
    apart = [[10, 20], [30, 40], [50, 60]]
    assert settling(_analysis(convergence=_convergence([15, 35, 55], [10, 30, 50], apart)))["verdict"] == "shown"
    overlap = [[10, 40], [30, 40], [50, 60]]
    assert settling(_analysis(convergence=_convergence([15, 35, 55], [10, 30, 50], overlap)))["verdict"] == "not shown"
    assert settling(_analysis(convergence=_convergence([15, 35, 55], [50, 30, 10], apart)))["verdict"] == "not shown"
    assert settling(_analysis(convergence=_convergence([40, 40, 40], [10, 30, 50], apart)))["verdict"] == "tie"
    assert _verdicts(_analysis(convergence={"skipped": "x"}))["d"].startswith("not measured")


def test_rotation_claim_reads_the_ratio_to_the_null() -> None:
    null = {n: {"ratio": r, "run_at_last": 0.1 * r, "null_at_last": 0.1} for n, r in zip(LAYERS, [1.0, 1.5, 2.0])}
    assert _verdicts(_analysis(rotation_null=null))["e"] == "shown"
    null["c3"]["ratio"] = 1.2
    assert _verdicts(_analysis(rotation_null=null))["e"] == "not shown"


def test_structure_claim_needs_the_init_not_to_rise() -> None:
    def comp(init, last):
        return {
            n: {"0": {"structure": {"mean": a}}, "5": {"structure": {"mean": b}}} for n, a, b in zip(LAYERS, init, last)
        }

    assert _verdicts(_analysis(complexity=comp([1, 1, 1], [1, 2, 3])))["f"] == "shown"
    assert _verdicts(_analysis(complexity=comp([1, 2, 3], [1, 2, 3])))["f"] == "not shown"  # the init rises too
    assert _verdicts(_analysis(complexity=comp([1, 1, 1], [3, 2, 1])))["f"] == "not shown"
