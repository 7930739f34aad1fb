"""The claim verdicts (featviz.claims) on analyses built by hand, where the right verdict is known."""

from __future__ import annotations

import pytest

from featviz.claims import CLAIMS, TIE, claims, rises, settling, summary

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
            n: {"0": {"structure": {"mean": a}}, "1": {"structure": {"mean": b}}} for n, a, b in zip(LAYERS, init, last)
        }

    assert _verdicts(_analysis(complexity=comp([1, 1, 1], [1, 2, 3])))["f"] == "shown"
    assert _verdicts(_analysis(complexity=comp([1, 2, 3], [1, 2, 3])))["f"] == "not shown"  # the init rises too
    assert _verdicts(_analysis(complexity=comp([1, 1, 1], [3, 2, 1])))["f"] == "not shown"
    only_init = {n: {"0": v["0"]} for n, v in comp([1, 1, 1], [1, 2, 3]).items()}  # an interrupted render's set
    assert _verdicts(_analysis(complexity=only_init))["f"].startswith("not measured")
    assert _verdicts({**_analysis(complexity=comp([1, 1, 1], [1, 2, 3])), "epochs": [0, 1, 2]})["f"].startswith(
        "not measured"
    )  # the set stops before the run's last epoch


def test_rows_show_the_numbers_and_baselines_they_judge() -> None:
    conv = _convergence([10, 20, 30], [5, 6, 7], [[10, 10], [20, 20], [30, None]])
    null = {n: {"ratio": r, "run_at_last": 0.1 * r, "null_at_last": 0.1} for n, r in zip(LAYERS, [1.0, 1.5, 2.0])}
    comp = {n: {"0": {"structure": {"mean": 1.0}}, "1": {"structure": {"mean": d}}} for n, d in zip(LAYERS, [1, 2, 3])}
    a = _analysis(probes=_probes([[0.1, 0.2], [0.1, 0.5], [0.1, 0.9]], control=[0.1, 0.15]), convergence=conv)
    rows = {c["key"]: c for c in claims({**a, "rotation_null": null, "complexity": comp})}
    assert rows["a"]["numbers"] == "0.200, 0.500, 0.900" and rows["a"]["baseline"] == "random init: 0.100, 0.100, 0.100"
    assert rows["b"]["numbers"] == "0.100, 0.400, 0.800"
    assert rows["c"]["numbers"] == "0.800" and rows["c"]["baseline"] == "control ctl: 0.050"
    assert rows["d"]["numbers"] == "whole network 10, 20, 30; own weights 5, 6, 7"
    assert rows["d"]["baseline"] == "intervals 10-10, 20-20, 30-None" and rows["d"]["verdict"] == "shown"
    assert rows["e"]["numbers"] == "run 0.100, 0.150, 0.200; ratio 1.00, 1.50, 2.00"
    assert rows["e"]["baseline"] == "null 0.100, 0.100, 0.100"
    assert rows["f"]["numbers"] == "1.00, 2.00, 3.00" and rows["f"]["baseline"] == "random init: 1.00, 1.00, 1.00"
    assert "at epoch 1 rise" in rows["f"]["criterion"] and "epoch 1" in rows["a"]["criterion"]
    assert [c["claim"] for c in claims(a)] == [CLAIMS[k] for k in "abcdef"]


def test_summary_is_at_most_five_sentences_of_this_run_s_numbers() -> None:
    upd = {n: {"rotation_from_init": [0.0, r]} for n, r in zip(LAYERS, [0.2, 0.4, 0.6])}
    gabor = {"threshold": 0.7, "init": {"share": 0.0}, "learned_part": {"share": 0.25}}
    probes = {**_probes([[0.1, 0.2], [0.1, 0.5], [0.1, 0.9]], control=[0.1, 0.15]), "chance_accuracy": 0.1}
    text = summary(_analysis(filter_updates=upd, probes=probes, gabor=gabor))
    assert text.count(". ") + 1 <= 5
    assert (
        "By epoch 1 training had turned every layer's filters away from the random init (1 - cos = 0.20 to 0.60)."
        in text
    )
    assert "accuracy 0.200, 0.500, 0.900 from depth 1 to 3 (random init: 0.100, 0.100, 0.100" in text
    assert "shuffled-label control: 0.200, 0.200, 0.150; chance 0.10)." in text
    assert (
        "25% of the depth-1 filters' learned parts fit a Gabor (R^2 >= 0.7), against 0% of the random filters." in text
    )
    assert "Of the 6 claims below, 3 are shown, 0 tied and 0 not shown (3 not measured)" in text


def _full(epochs: int = 8) -> dict:
    """Every section, over ``epochs`` epochs (so that the last epoch is not also the second)."""
    acc = [[0.1] + [0.1 + d * 0.01 * e for e in range(1, epochs)] + [0.2 + 0.35 * d] for d in range(3)]
    conv = _convergence([10, 20, 30], [5, 6, 7], [[10, 10], [20, 20], [30, 30]])
    null = {n: {"ratio": r, "run_at_last": 0.1 * r, "null_at_last": 0.1} for n, r in zip(LAYERS, [1.0, 1.5, 2.0])}
    comp = {
        n: {"0": {"structure": {"mean": 1.0}}, "3": {"structure": {"mean": 9.0 - d}}, "8": {"structure": {"mean": d}}}
        for n, d in zip(LAYERS, [1, 2, 3])
    }
    upd = {n: {"rotation_from_init": [0.0, 0.9, r]} for n, r in zip(LAYERS, [0.2, 0.4, 0.6])}
    probes = {**_probes(acc, control=[0.1, 0.15]), "chance_accuracy": 0.1}
    return {
        "layers": LAYERS,
        "epochs": list(range(epochs + 1)),
        "probes": probes,
        "convergence": conv,
        "rotation_null": null,
        "complexity": comp,
        "filter_updates": upd,
    }


def test_claims_read_the_last_epoch_not_the_second_and_the_deepest_layer() -> None:
    rows = {c["key"]: c for c in claims(_full())}
    assert [c["verdict"] for c in rows.values()] == ["shown"] * 6
    assert rows["a"]["numbers"] == "0.200, 0.550, 0.900" and rows["f"]["numbers"] == "1.00, 2.00, 3.00"
    assert rows["c"]["numbers"] == "0.800" and rows["c"]["criterion"].startswith("c3:")
    text = summary(_full())
    assert "1 - cos = 0.20 to 0.60" in text and "accuracy 0.200, 0.550, 0.900" in text
    assert "6 are shown, 0 tied and 0 not shown; each is judged" in text  # nothing missing: no "not measured"


def test_claim_level_ties_and_missing_pieces() -> None:
    a = _full()
    a["probes"]["layers"]["c3"]["global"]["accuracy"][-1] = 0.555  # depth 3 within TIE of depth 2 (0.550)
    rows = {c["key"]: c["verdict"] for c in claims(a)}
    assert rows["a"] == "tie" and rows["b"] == "tie"
    a = _full()
    a["rotation_null"]["c2"]["ratio"] = None
    assert {c["key"]: c["verdict"] for c in claims(a)}["e"] == "not shown"
    for skipped in ("rotation_null", "complexity"):
        b = {**_full(), skipped: {"skipped": "the reason"}}
        assert "not measured: the reason" in [c["verdict"] for c in claims(b)]
    late = _full()
    late["complexity"] = {n: {k: v for k, v in late["complexity"][n].items() if k != "0"} for n in LAYERS}
    assert {c["key"]: c["verdict"] for c in claims(late)}["f"].startswith("not measured: the random init")
    partial = _full()
    del partial["complexity"]["c2"]["8"]
    assert {c["key"]: c["verdict"] for c in claims(partial)}["f"].startswith("not measured: the random init")
    old = _full()
    old["complexity"]["c1"]["8"] = {"incompressibility": {"mean": 1.0}}
    assert {c["key"]: c["verdict"] for c in claims(old)}["f"].startswith("not measured: an analysis without")


def test_two_values_can_rise_and_missing_numbers_print_as_a_dash() -> None:
    from featviz.claims import _fmt

    assert rises([0.1, 0.5], TIE) == "shown" and _fmt([None, 0.5]) == "-, 0.500"
