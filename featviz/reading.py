"""A plain-language reading of analysis.json, generated from its numbers (never a fixed text)."""

from __future__ import annotations

from typing import Any

from featviz.depth import main_path


def first_epoch_above(values: list[float], threshold: float, epochs: list[int]) -> int | None:
    """The first epoch from which every later value stays >= ``threshold`` (None if never)."""
    for i in range(len(values)):
        if all(v >= threshold for v in values[i:]):
            return epochs[i]
    return None


def _updates(a: dict[str, Any]) -> str:
    rot = {n: a["filter_updates"][n]["rotation_from_init"][-1] for n in main_path(a)}
    rel = {n: a["filter_updates"][n]["relative_change"] for n in main_path(a)}
    lo, hi = min(rot, key=rot.get), max(rot, key=rot.get)
    first = [r[1] for r in rel.values() if len(r) > 1 and r[1] is not None]
    last = [r[-1] for r in rel.values() if len(r) > 1 and r[-1] is not None]
    unchanged = sum(len(a["filter_updates"][n]["unchanged_filters"]) for n in a["layers"])
    subject = (
        "Backpropagation changed every layer's filters"
        if rot[lo] > 0
        else "Backpropagation did not change every layer's filters"
    )
    text = (
        f"{subject}: by the last epoch their direction had turned by "
        f"1 - cos = {rot[lo]:.2f} ({lo}) to {rot[hi]:.2f} ({hi}) from the random init"
    )
    if first and last:
        text += (
            f", and the change per epoch fell from {max(first):.2f} at most in epoch {a['epochs'][1]} "
            f"to {max(last):.3f} at most in the last epoch"
        )
    text += "." if not unchanged else f"; {unchanged} filters did not change at all (dead)."
    return text


def _null(a: dict[str, Any]) -> str:
    """Rotation from init against the random-direction null (``featviz.nulls``): an ordering with depth
    counts only where the run departs from the null."""
    null = a.get("rotation_null")
    if not isinstance(null, dict) or not null or "skipped" in null:
        return ""
    layers = [n for n in main_path(a) if n in null]
    real = [null[n]["run_at_last"] for n in layers]
    nul = [null[n]["null_at_last"] for n in layers]
    ratio = [null[n]["ratio"] for n in layers]
    st = _stages(a, layers)
    text = (
        "A null with no learning in it (the same init, optimizer and schedule, fed random directions with the "
        f"real gradients' norms) turns the filters by {_numbers(nul, stages=st)} at epoch {null['last_epoch']}, "
        f"against the run's {_numbers(real, stages=st)}"
    )
    if _rising(real) and _rising(nul):
        text += "; both rise with depth, so that ordering does not need learning"
    elif _rising(real):
        text += "; the run's rise with depth, the null's do not"
    if all(r is not None for r in ratio):
        text += f". Relative to the null, the run turned them {_numbers(ratio, stages=st)} times as far"
        text += ", more with each depth" if _rising(ratio) else ", not rising with depth"
    return text + "."


def shallow_first(order: list[int | None]) -> str:
    """The shallow-first criterion on the snapshot at which each depth settled (depth 1 first; None =
    never settled): "shown" when the values never decrease with depth and depth 1 settled strictly
    before the deepest layer; "tie" when every depth settled at the same snapshot; else "not shown"."""
    if len(order) < 2 or any(x is None for x in order):
        return "not shown"
    if all(x == order[0] for x in order):
        return "tie"
    if all(x <= y for x, y in zip(order, order[1:])) and order[0] < order[-1]:
        return "shown"
    return "not shown"


def _verdict(order: list[int | None]) -> str:
    verdict = shallow_first(order)
    if verdict == "shown" and all(x < y for x, y in zip(order, order[1:])):  # type: ignore[operator]
        return "so shallow layers settled first, each depth after the one above it"
    if verdict == "shown":
        return (
            "so no deeper layer settled before a shallower one and depth 1 before the deepest, with some depths "
            "settling together (not a strict order)"
        )
    if verdict == "tie":
        return "a tie: every layer settled at the same snapshot, so shallow-first settling is not shown"
    return "so this run does not show shallow layers settling first"


def _when(at: dict[str, int | None], unit: str, limit: int = 6) -> str:
    """'conv1 at step 1, conv2 never' for a few layers; for more, runs of consecutive depths that settled
    together: 'depth 1 (conv1) at step 1, depths 2-4 at step 2, ...'."""

    def one(v: int | None) -> str:
        return f"at {unit} {v}" if v is not None else "never"

    if len(at) <= limit:
        return ", ".join(f"{n} {one(v)}" for n, v in at.items())
    names, values = list(at), list(at.values())
    runs: list[str] = []
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            span = f"depth {start + 1} ({names[start]})" if i - start == 1 else f"depths {start + 1}-{i}"
            runs.append(f"{span} {one(values[start])}")
            start = i
    return ", ".join(runs)


def _convergence(a: dict[str, Any]) -> str:
    conv = a.get("convergence", {})
    if "skipped" in conv:
        return ""
    at = {n: first_epoch_above(conv[n]["cka_to_final"], 0.9, a["epochs"]) for n in main_path(a)}
    text = "Each layer's activations reached debiased CKA >= 0.9 with their final form for good " + _when(at, "epoch")
    order = [at[n] for n in main_path(a)]
    if all("settling" in conv[n] for n in main_path(a)):  # the snapshots settling is measured on (a uniform grid)
        steps = {n: conv[n]["settling"]["formed_at"]["pooled"]["0.9"] for n in main_path(a)}
        text += "; in optimizer steps: " + _when(steps, "step")
        order = [steps[n] for n in main_path(a)]
    elif all("by_step" in conv[n] for n in main_path(a)):  # finer: within-epoch snapshots
        steps = {
            n: first_epoch_above(conv[n]["by_step"]["cka_to_final"], 0.9, conv[n]["by_step"]["steps"])
            for n in main_path(a)
        }
        text += "; in optimizer steps: " + _when(steps, "step")
        order = [steps[n] for n in main_path(a)]
    dead = sum(len(conv[n]["dead_channels"]) for n in a["layers"])
    tail = f" {dead} channels never responded on the probe images (marked dead below)." if dead else ""
    return f"{text}, {_verdict(order)}.{_controls(a)}{tail}"


def _controls(a: dict[str, Any]) -> str:
    """The settling order again with only each layer's own weights varied (every other layer at its final
    values), and how far the 0.9 step moves over halves of the probe images (``featviz.convergence``)."""
    from featviz.claims import settled_layers  # claims reads this module: imported at use

    conv = a["convergence"]
    layers = settled_layers(a)
    if len(layers) < 2:
        return ""
    own = {n: conv[n]["settling"]["formed_at"]["own_weights"]["0.9"] for n in layers}
    verdict = shallow_first(list(own.values()))
    text = (
        " With only each layer's own weights taken from earlier snapshots (every other layer at its final values), "
        f"they reached 0.9 {_when(own, 'step')}: "
        + ("shallow-first again" if verdict == "shown" else "a tie" if verdict == "tie" else "not shallow-first")
    )
    spans = [conv[n]["settling"]["formed_at_interval"] for n in layers]
    if all(lo is not None and hi is not None for lo, hi in spans):
        text += "; over random halves of the probe images the whole-network steps range " + ", ".join(
            f"{lo}-{hi}" for lo, hi in spans
        )
        text += (
            ", and neighbouring depths overlap, so the probe images do not decide the order"
            if intervals_overlap(spans)
            else ", apart at every depth"
        )
    return text + "."


def intervals_overlap(intervals: list[list[int | None]]) -> bool:
    """Whether two consecutive depths' [lo, hi] intervals of a settling step overlap (None, never formed,
    counts as after every step): the order of those depths is then not decided by the data."""
    big = float("inf")
    ends = [(big if lo is None else lo, big if hi is None else hi) for lo, hi in intervals]
    return any(b[0] <= a[1] for a, b in zip(ends, ends[1:]))


def _rising(values: list[float]) -> bool:
    return all(x < y for x, y in zip(values, values[1:]))


LONG = 12  # per-layer lists longer than this are read by stage


def _numbers(values: list[float], fmt: str = ".2f", stages: list[str] | None = None) -> str:
    """The values in order, or, for more than ``LONG`` of them with each one's stage (``stages``), one entry
    per run of layers in the same stage: '0.617 (conv1), 0.867 to 0.944 (layer1), ...'."""
    if stages is None or len(values) <= LONG or len(stages) != len(values):
        return ", ".join(format(x, fmt) for x in values)
    runs: list[str] = []
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or stages[i] != stages[start]:
            lo, hi = format(min(values[start:i]), fmt), format(max(values[start:i]), fmt)
            runs.append(f"{lo if lo == hi else f'{lo} to {hi}'} ({stages[start]})")
            start = i
    return ", ".join(runs)


def _stages(a: dict[str, Any], layers: list[str]) -> list[str] | None:
    """Each layer's stage from analysis ``a``'s ``depth`` (``featviz.depth``), or None where one is unknown."""
    info = a.get("depth") if isinstance(a.get("depth"), dict) else {}
    stages = [(info.get(n) or {}).get("stage") for n in layers]
    return stages if all(stages) else None  # type: ignore[return-value]


def _complexity(a: dict[str, Any]) -> str:
    """Spatial structure of the activation-maximization images by depth, against the random init's (the
    baseline): "more complex" only where structure bits rise with depth and the init's do not."""
    comp = a.get("complexity", {})
    if not comp or "skipped" in comp:
        return ""
    layers = [n for n in main_path(a) if n in comp]  # the rendered ones, in depth order
    epochs = sorted({int(e) for n in layers for e in comp[n]})
    status = a.get("settings_set_status") or {}
    note = "" if status.get("complete", True) else " (an interrupted render left this settings set incomplete)"
    run_last = (a.get("epochs") or [None])[-1]
    if epochs and run_last is not None and epochs[-1] != run_last:  # never read a depth ordering off the init alone
        held = ", ".join(map(str, epochs))
        return (
            f"The activation-maximization images of this settings set cover epoch{'s' if len(epochs) > 1 else ''} "
            f"{held} only, not the last epoch ({run_last}){note}; render the rest "
            "(featviz render RUN) for their structure by depth."
        )
    if not epochs or not all(str(epochs[-1]) in comp[n] for n in layers):
        return ""
    last = [comp[n][str(epochs[-1])]["structure"]["mean"] for n in layers]
    inc = [comp[n][str(epochs[-1])]["incompressibility"]["mean"] for n in layers]
    init = [comp[n][str(epochs[0])]["structure"]["mean"] for n in layers if str(epochs[0]) in comp[n]]
    where = f"{layers[0]} to {layers[-1]} at epoch {epochs[-1]}"
    has_init = epochs[0] == 0 and len(init) == len(last) and epochs[0] != epochs[-1]
    if not _rising(last):
        text = (
            f"Activation-maximization images do not gain spatial structure with depth ({_numbers(last)} structure bits"
        )
        text += f" per pixel, {where}" + (f"; the random init's: {_numbers(init)})" if has_init else ")")
    elif not has_init:
        text = f"Activation-maximization images gain spatial structure with depth ({_numbers(last)} structure bits per "
        text += (
            f"pixel, {where}); without the random init's images there is no baseline to tell it from the architecture"
        )
    elif _rising(init):
        text = f"Activation-maximization images gain spatial structure with depth ({_numbers(last)} structure bits per "
        text += f"pixel, {where}), but so do the random init's ({_numbers(init)}): the ordering does not need training"
    else:
        text = f"Activation-maximization images grow more complex with depth: {_numbers(last)} structure bits per "
        text += f"pixel, {where}, while the random init's do not ({_numbers(init)})"
    text += (
        f". Incompressibility, which follows the spread of pixel values more than any pattern: {_numbers(inc, '.1f')}"
    )
    text += " zlib bits per pixel"
    if a.get("settings_set"):
        text += f" (settings set: {a['settings_set']}; epochs {', '.join(map(str, epochs))}{note})"
    return text + "."


def _receptive(a: dict[str, Any], image: int) -> str:
    rf = a.get("receptive_field")
    if not rf or "skipped" in rf:
        return ""
    layers = [n for n in main_path(a) if n in rf]  # a deep model: the layers the gallery shows
    if not layers:
        return ""
    theo = [rf[n]["theoretical_px"] for n in layers]
    over = [n for n in layers if rf[n]["theoretical_px"] > image]
    at_least = ">= " if rf[layers[-1]].get("theoretical_at_least") else ""
    text = f"Receptive fields grow from {theo[0]} to {at_least}{theo[-1]} px with depth"
    verb = "sees" if len(over) == 1 else "see"
    who = ", ".join(over) if len(over) <= 4 else f"{len(over)} of the {len(theo)} conv layers (the first: {over[0]})"
    return text + (f"; {who} {verb} more than the whole {image} px image." if over else ".")


def _probes(a: dict[str, Any]) -> str:
    """Linear-probe accuracy by depth at the last epoch against the random init's, the control's where one was
    given, and the mean class selectivity (``featviz.probing``)."""
    p = a.get("probes")
    if not isinstance(p, dict) or "layers" not in p:
        return ""
    layers = [n for n in main_path(a) if n in p["layers"]]
    acc = [p["layers"][n]["global"]["accuracy"] for n in layers]
    st = _stages(a, layers)
    text = (
        f"Linear probes on each layer's averaged activations ({p['images']['source']}) read the classes with "
        f"accuracy {_numbers([v[-1] for v in acc], '.3f', st)} at epoch {p['epochs'][-1]}, against "
        f"{_numbers([v[0] for v in acc], '.3f', st)} at epoch {p['epochs'][0]} (chance {p['chance_accuracy']:.3f})"
    )
    ctl = p.get("control")
    if ctl:
        reached = [ctl["layers"][n]["global"]["accuracy"][-1] for n in layers]
        text += f"; the shuffled-label control {ctl['run']} reaches {_numbers(reached, '.3f', st)}"
    sel = [(p["layers"][n].get("selectivity") or {}).get("by_epoch") for n in layers]
    if all(sel):
        text += (
            f". Mean class selectivity of the channels: {_numbers([s[-1]['mean'] for s in sel], stages=st)}, "
            f"at the init {_numbers([s[0]['mean'] for s in sel], stages=st)}"
        )
    return text + "."


def reading(a: dict[str, Any], image_size: int) -> str:
    """One paragraph from the numbers of an analysis (sections that were skipped are left out)."""
    parts = [_updates(a), _null(a), _probes(a), _convergence(a), _complexity(a), _receptive(a, image_size)]
    left_out = (a.get("scope") or {}).get("left_out")
    return " ".join(p for p in [*parts, f"({left_out[0].upper()}{left_out[1:]}.)" if left_out else ""] if p)
