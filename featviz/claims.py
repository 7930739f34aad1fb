"""The claims featviz tests, each read off one analysis.json with a criterion fixed in advance and a
baseline with no learning in it, and given a verdict: shown, tie or not shown.

    a) linear-probe accuracy rises with depth (trained network, last epoch);
    b) the gain over the random init (trained minus init probe accuracy) rises with depth;
    c) at the deepest layer that gain exceeds the shuffled-label control's (``--control``);
    d) shallow layers settle first, in the whole network and with only each layer's own weights varied,
       and the probe images decide the order;
    e) rotation from init rises with depth relative to the random-direction null;
    f) spatial structure of the activation-maximization images rises with depth, and the init's does not.

``benchmarks/findings.py`` counts these verdicts over seeds; the gallery shows them for one run.
Criteria and their reasons: docs/findings.md ("Protocol").
"""

from __future__ import annotations

from typing import Any

from featviz.depth import main_path
from featviz.layers import is_deep
from featviz.reading import intervals_overlap, shallow_first

TIE = 0.01  # probe accuracies closer than this are tied (about 1 binomial sd at 1,000 test images, p = 0.9)
POOLING = "global"  # the probe the claims read: the average over positions, as the network's own head


def rises(values: list[float], tie: float = 0.0) -> str:
    """ "shown" when each value exceeds the one before by more than ``tie``; "tie" when none falls by more
    than ``tie`` but some step is within it; else "not shown"."""
    steps = [b - a for a, b in zip(values, values[1:])]
    if len(values) < 2:
        return "not shown"
    if all(s > tie for s in steps):
        return "shown"
    if all(s >= -tie for s in steps):
        return "tie"
    return "not shown"


def _fmt(values: list[float | None], fmt: str = ".3f") -> str:
    return ", ".join("-" if v is None else format(v, fmt) for v in values)


def _probe_claims(a: dict[str, Any]) -> list[dict[str, Any]]:
    probes = a.get("probes") or {}
    if "layers" not in probes:
        why = probes.get("skipped", "no probes in this analysis: run featviz analyze again")
        return [_missing(k, why) for k in "abc"]
    layers = [n for n in main_path(a) if n in probes["layers"]]
    acc = [probes["layers"][n][POOLING]["accuracy"] for n in layers]
    last, init = [v[-1] for v in acc], [v[0] for v in acc]
    gap = [v[-1] - v[0] for v in acc]
    e0, e1 = probes["epochs"][0], probes["epochs"][-1]
    out = [
        {
            "key": "a",
            "claim": "linear-probe accuracy rises with depth",
            "criterion": f"each depth's accuracy at epoch {e1} above the one before by more than {TIE}",
            "numbers": _fmt(last),
            "baseline": f"random init: {_fmt(init)}",
            "verdict": rises(last, TIE),
        },
        {
            "key": "b",
            "claim": "the gain over the random init rises with depth",
            "criterion": f"accuracy at epoch {e1} minus epoch {e0}, each depth above the one before by more than {TIE}",
            "numbers": _fmt(gap),
            "baseline": f"random init: 0 by definition (its accuracy: {_fmt(init)})",
            "verdict": rises(gap, TIE),
        },
    ]
    control = probes.get("control")
    if not control:
        out.append(
            _missing("c", "no control run: featviz analyze RUN --control RUN2 (RUN2 trained with --labels shuffled)")
        )
        return out
    cacc = control["layers"][layers[-1]][POOLING]["accuracy"]
    cgap = cacc[-1] - cacc[0]
    out.append(
        {
            "key": "c",
            "claim": "the deepest layer's gain exceeds the shuffled-label control's",
            "criterion": f"{layers[-1]}: gain over init larger than the control's by more than {TIE}",
            "numbers": f"{gap[-1]:.3f}",
            "baseline": f"control {control['run']}: {cgap:.3f}",
            "verdict": "shown" if gap[-1] - cgap > TIE else "tie" if abs(gap[-1] - cgap) <= TIE else "not shown",
        }
    )
    return out


def _missing(key: str, why: str) -> dict[str, Any]:
    return {
        "key": key,
        "claim": CLAIMS[key],
        "criterion": "",
        "numbers": "",
        "baseline": "",
        "verdict": f"not measured: {why}",
    }


def settled_layers(a: dict[str, Any]) -> list[str]:
    """The main-path layers with settling controls, by depth: every layer of a small model, the layers a deep
    model's gallery shows (``layers.measured_layers``); empty when a main-path layer of a small model lacks them."""
    conv = a.get("convergence") or {}
    if "skipped" in conv:
        return []
    layers = [n for n in main_path(a) if "settling" in conv.get(n, {})]
    return layers if is_deep(a["layers"]) or len(layers) == len(main_path(a)) else []


def settling(a: dict[str, Any]) -> dict[str, Any] | None:
    """Claim d's parts: the whole-network and own-weights steps at CKA 0.9, the half-sample intervals, and
    the verdict (shown only when both orders are shallow-first and no neighbouring intervals overlap)."""
    conv = a.get("convergence") or {}
    layers = settled_layers(a)
    if "skipped" in conv or len(layers) < 2:
        return None
    pooled = [conv[n]["settling"]["formed_at"]["pooled"]["0.9"] for n in layers]
    own = [conv[n]["settling"]["formed_at"]["own_weights"]["0.9"] for n in layers]
    spans = [conv[n]["settling"]["formed_at_interval"] for n in layers]
    whole, alone = shallow_first(pooled), shallow_first(own)
    if whole == "shown" and alone == "shown" and not intervals_overlap(spans):
        verdict = "shown"
    elif whole == "tie":
        verdict = "tie"
    else:
        verdict = "not shown"
    return {"pooled": pooled, "own": own, "intervals": spans, "whole": whole, "alone": alone, "verdict": verdict}


def _settling_claim(a: dict[str, Any]) -> dict[str, Any]:
    s = settling(a)
    if s is None:
        if (a.get("scope") or {}).get("settling_controls") is False:
            return _missing("d", "left out of a deep model's default scope: featviz analyze RUN --full")
        return _missing("d", "no settling controls (a uniform snapshot grid and probe images are needed)")

    def steps(v: list[int | None]) -> str:
        return ", ".join("never" if x is None else str(x) for x in v)

    return {
        "key": "d",
        "claim": CLAIMS["d"],
        "criterion": "CKA >= 0.9 to the final snapshot, in optimizer steps: no depth before a shallower one, depth 1 "
        "before the deepest, with only own weights varied too, and half-sample intervals apart",
        "numbers": f"whole network {steps(s['pooled'])}; own weights {steps(s['own'])}",
        "baseline": "intervals " + ", ".join(f"{lo}-{hi}" for lo, hi in s["intervals"]),
        "verdict": s["verdict"],
    }


def _rotation_claim(a: dict[str, Any]) -> dict[str, Any]:
    null = a.get("rotation_null") or {}
    layers = [n for n in main_path(a) if n in null]
    if "skipped" in null or not layers:
        return _missing("e", null.get("skipped", "no random-direction null in this analysis"))
    ratio = [null[n]["ratio"] for n in layers]
    return {
        "key": "e",
        "claim": CLAIMS["e"],
        "criterion": "run / null rotation at the last epoch rises strictly with depth",
        "numbers": "run " + _fmt([null[n]["run_at_last"] for n in layers]) + "; ratio " + _fmt(ratio, ".2f"),
        "baseline": "null " + _fmt([null[n]["null_at_last"] for n in layers]),
        "verdict": rises([r for r in ratio if r is not None]) if None not in ratio else "not shown",
    }


def _structure_claim(a: dict[str, Any]) -> dict[str, Any]:
    comp = a.get("complexity") or {}
    layers = [n for n in main_path(a) if n in comp]
    if "skipped" in comp or not layers:
        return _missing("f", comp.get("skipped", "no activation-maximization renders"))
    epochs = sorted({int(e) for n in layers for e in comp[n]})
    first, last = str(epochs[0]), str(a["epochs"][-1])
    if epochs[0] != 0 or int(last) == 0 or not all(first in comp[n] and last in comp[n] for n in layers):
        return _missing(
            "f",
            f"the random init and the last epoch ({last}) must both be rendered for every layer; the set holds "
            f"epochs {', '.join(map(str, epochs))}",
        )
    if not all("structure" in comp[n][e] for n in layers for e in (first, last)):
        return _missing("f", "an analysis without structure bits (an older featviz): run featviz analyze again")
    now = [comp[n][last]["structure"]["mean"] for n in layers]
    init = [comp[n][first]["structure"]["mean"] for n in layers]
    run, base = rises(now), rises(init)
    return {
        "key": "f",
        "claim": CLAIMS["f"],
        "criterion": f"structure bits per pixel at epoch {last} rise strictly with depth, and the init's do not",
        "numbers": _fmt(now, ".2f"),
        "baseline": f"random init: {_fmt(init, '.2f')}",
        "verdict": "shown" if run == "shown" and base != "shown" else "not shown",
    }


CLAIMS = {
    "a": "linear-probe accuracy rises with depth",
    "b": "the gain over the random init rises with depth",
    "c": "the deepest layer's gain exceeds the shuffled-label control's",
    "d": "shallow layers settle first",
    "e": "rotation from init rises with depth beyond the null",
    "f": "activation-maximization images gain spatial structure with depth beyond the init",
}


def claims(a: dict[str, Any]) -> list[dict[str, Any]]:
    """The six claims of one analysis, in order a-f: key, claim, criterion, numbers, baseline, verdict."""
    return [*_probe_claims(a), _settling_claim(a), _rotation_claim(a), _structure_claim(a)]


def summary(a: dict[str, Any]) -> str:
    """At most five sentences over the claim table: what training did to the filters, what the probes read,
    the depth-1 Gabor share, and the verdict count (numbers only from ``a``)."""
    out = []
    rot = [a["filter_updates"][n]["rotation_from_init"][-1] for n in main_path(a) if n in a.get("filter_updates", {})]
    if rot:
        out.append(
            f"By epoch {a['epochs'][-1]} training had turned every layer's filters away from the random init "
            f"(1 - cos = {min(rot):.2f} to {max(rot):.2f})."
        )
    p = a.get("probes") or {}
    if "layers" in p:
        layers = [n for n in main_path(a) if n in p["layers"]]
        acc = [p["layers"][n][POOLING]["accuracy"] for n in layers]
        text = (
            f"A linear probe on each layer's averaged activations reads the classes with accuracy "
            f"{_fmt([v[-1] for v in acc])} from depth 1 to {len(layers)} (random init: {_fmt([v[0] for v in acc])}"
        )
        if p.get("control"):
            ctl = [p["control"]["layers"][n][POOLING]["accuracy"][-1] for n in layers]
            text += f"; shuffled-label control: {_fmt(ctl)}"
        out.append(text + f"; chance {p['chance_accuracy']:.2f}).")
    g = a.get("gabor") or {}
    if "learned_part" in g:
        out.append(
            f"{g['learned_part']['share']:.0%} of the depth-1 filters' learned parts fit a Gabor "
            f"(R^2 >= {g['threshold']}), against {g['init']['share']:.0%} of the random filters."
        )
    verdicts = [c["verdict"] for c in claims(a)]
    counts = {v: sum(x == v for x in verdicts) for v in ("shown", "tie", "not shown")}
    missing = sum(x.startswith("not measured") for x in verdicts)
    text = (
        f"Of the {len(verdicts)} claims below, {counts['shown']} are shown, {counts['tie']} tied and "
        f"{counts['not shown']} not shown" + (f" ({missing} not measured)" if missing else "")
    )
    out.append(text + "; each is judged against a baseline with no learning in it.")
    return " ".join(out)
