"""Each unit's wiring over training: its strongest inputs at every snapshot, when that set stopped
changing ("wired at"), how concentrated its input weight is, its strongest outputs, the expanded weights to
two layers down and the one-sided NMF glyph of its kernel (``featviz.circuits`` along ``featviz.graph``'s
links). Read from the snapshots' weights alone: no image is run.

``measure`` returns (summary, detail): the summary (per layer, per unit: wired-at step, top-k share at the
init and at the end, and the same on the random-direction null) goes into analysis.json; the detail (the
kernels the unit pages draw) into analysis/wiring.json. Definitions: docs/metrics.md ("Circuits").
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from featviz.circuits import (
    batchnorm_scale,
    expanded_weights,
    folded_weight,
    glyphs,
    input_share,
    kernel_strengths,
    one_sided_nmf,
    ungrouped,
    wired_at,
)
from featviz.graph import INPUT, Link, chain_between, consumers, links
from featviz.layers import DEEP, default_layers, default_render_channels
from featviz.run.schema import ConvLayer, SnapshotPoint

K = 9  # strongest inputs and outputs shown per unit, and the k of "wired at" and of the input share

State = dict[str, torch.Tensor]


def page_units(layers: list[ConvLayer] | tuple[ConvLayer, ...]) -> dict[str, list[int]]:
    """The units that get a page: every channel of a model with at most ``layers.DEEP`` conv layers; for a
    deeper model, the channels ``featviz render`` selects by default (``default_layers``, ``default_channels``)."""
    if len(layers) <= DEEP:
        return {la.name: list(range(la.out_ch)) for la in layers}
    return {la.name: default_render_channels(layers, la) for la in default_layers(layers)}


def _num(v: float, digits: int = 4) -> float | None:
    return None if not math.isfinite(v) else float(f"{v:.{digits}g}")


def _rounded(t: torch.Tensor) -> list[Any]:
    """A tensor as nested lists, to 4 decimals."""
    return (torch.round(t.double() * 1e4) / 1e4).tolist()


class Weights:
    """One snapshot's conv weights, BatchNorm folded (each conv times the scale of its response BatchNorm)."""

    def __init__(self, state: State, layers: dict[str, ConvLayer], modules: dict[str, nn.Module]) -> None:
        self.state, self.layers, self.modules = state, layers, modules

    def folded(self, name: str) -> torch.Tensor:
        la = self.layers[name]
        w = self.state[f"{name}.weight"]
        resp = la.response or name
        if resp == name or not isinstance(self.modules.get(resp), nn.modules.batchnorm._BatchNorm):
            return folded_weight(w)
        var = self.state.get(f"{resp}.running_var")
        if var is None:  # batch statistics only: nothing fixed to fold
            return folded_weight(w)
        return folded_weight(w, batchnorm_scale(var, self.modules[resp].eps, self.state.get(f"{resp}.weight")))


def _top_sets(strengths: torch.Tensor, k: int, groups: int) -> torch.Tensor:
    """[out, k'] indices of each unit's k strongest inputs (only inputs its group sees)."""
    s = strengths.clone()
    if groups > 1:  # inputs outside the unit's group rank below every input inside it (even an all-zero kernel)
        out, cin = s.shape
        group_of_unit = torch.arange(out) // (out // groups)
        group_of_input = torch.arange(cin) // (cin // groups)
        s[group_of_unit[:, None] != group_of_input[None, :]] = -1.0
    return s.topk(min(k, strengths.shape[1] // groups), dim=1).indices


def _ordered(points: list[SnapshotPoint], states: dict[str, State]) -> list[SnapshotPoint]:
    seen: set[int] = set()
    out = []
    for p in sorted(points, key=lambda p: (p.step, p.kind == "step")):
        if p.id in states and p.step not in seen:
            seen.add(p.step)
            out.append(p)
    return out


def measure(
    model: nn.Module,
    layers: list[ConvLayer] | tuple[ConvLayer, ...],
    points: list[SnapshotPoint],
    states: dict[str, State],
    null: dict[int, State] | None = None,
    epoch_points: dict[int, str] | None = None,
    k: int = K,
    progress: Callable[[str, int, int], None] = lambda *_: None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, detail) of every layer's wiring (see the module docstring). ``states``: point id -> tensors;
    ``null``: epoch -> tensors of the random-direction null (``nulls.rotation_null``), compared with the
    run's own epoch snapshots ``epoch_points`` (epoch -> point id)."""
    ordered = _ordered(points, states)
    if len(ordered) < 2:
        raise ValueError("wiring needs at least two readable snapshots")
    by_name = {la.name: la for la in layers}
    modules = dict(model.named_modules())
    table = links(model, layers)
    weights = [Weights(states[p.id], by_name, modules) for p in ordered]
    steps = [p.step for p in ordered]
    pages = page_units(layers)
    summary: dict[str, Any] = {"k": k, "steps": steps}
    detail: dict[str, Any] = {"k": k, "steps": steps, "labels": [p.label for p in ordered], "layers": {}}
    final = {name: weights[-1].folded(name) for name in by_name}
    model.load_state_dict(states[ordered[-1].id])
    model.eval()
    for i, la in enumerate(layers):
        progress("wiring", i, len(layers))
        link = table[la.name]
        series = [w.folded(la.name) for w in weights]
        strengths = [kernel_strengths(w, la.groups) for w in series]
        fan_in = la.in_ch // la.groups
        sets = [_top_sets(s, k, la.groups) for s in strengths]
        wired = (
            [wired_at([frozenset(s[u].tolist()) for s in sets], steps) for u in range(la.out_ch)]
            if fan_in > k
            else None
        )
        shares = (input_share(series[0], k, la.groups), input_share(series[-1], k, la.groups))
        summary[la.name] = {
            "source": link.source,
            "reason": link.reason,
            "fan_in": fan_in,
            "wired_at": wired,
            "share_init": [_num(float(v)) for v in shares[0]],
            "share_final": [_num(float(v)) for v in shares[1]],
        }
        if null and epoch_points:
            summary[la.name]["null"] = _null(la, null, epoch_points, states, by_name, modules, k)
        if la.name in pages:
            detail["layers"][la.name] = _layer_detail(
                la, link, table, series, sets, strengths, wired, shares, final, pages[la.name], modules, by_name, k
            )
    progress("wiring", len(layers), len(layers))
    return summary, detail


def _null(
    la: ConvLayer,
    null: dict[int, State],
    epoch_points: dict[int, str],
    states: dict[str, State],
    by_name: dict[str, ConvLayer],
    modules: dict[str, nn.Module],
    k: int,
) -> dict[str, Any]:
    """The run and the random-direction null on the same epoch grid: wired-at epoch and the last epoch's share."""
    epochs = sorted(e for e in null if e in epoch_points and epoch_points[e] in states)
    fan_in = la.in_ch // la.groups
    out: dict[str, Any] = {"epochs": epochs}
    if not epochs:
        return out
    for key, source in (("null", {e: null[e] for e in epochs}), ("run", {e: states[epoch_points[e]] for e in epochs})):
        series = [Weights(source[e], by_name, modules).folded(la.name) for e in epochs]
        if fan_in > k and len(epochs) > 1:
            sets = [_top_sets(kernel_strengths(w, la.groups), k, la.groups) for w in series]
            out[f"{key}_wired_at_epoch"] = [
                wired_at([frozenset(s[u].tolist()) for s in sets], epochs) for u in range(la.out_ch)
            ]
        out[f"{key}_share_last"] = [_num(float(v)) for v in input_share(series[-1], k, la.groups)]
    return out


def _glyph(positive: torch.Tensor, negative: torch.Tensor) -> dict[str, list[int]]:
    """A unit's NMF glyphs as flat RGB lists, both parts on the unit's own scale (its largest loading)."""
    scale = float(max(positive.max(), negative.max()))
    return {
        key: glyphs(part, scale)[0].flatten().tolist() for key, part in (("positive", positive), ("negative", negative))
    }


def _layer_detail(
    la: ConvLayer,
    link: Link,
    table: dict[str, Link],
    series: list[torch.Tensor],
    sets: list[torch.Tensor],
    strengths: list[torch.Tensor],
    wired: list[int] | None,
    shares: tuple[torch.Tensor, torch.Tensor],
    final: dict[str, torch.Tensor],
    units: list[int],
    modules: dict[str, nn.Module],
    by_name: dict[str, ConvLayer],
    k: int,
) -> dict[str, Any]:
    """What one layer's unit pages draw: per unit, its top-k inputs with their kernels at every snapshot,
    its top-k outputs in each layer that reads it, its expanded top-k inputs two layers down, its glyph."""
    per = la.in_ch // la.groups
    size = la.out_ch // la.groups
    readers = consumers(table, la.name)
    down = table.get(link.source or "") if link.linear and link.source != INPUT else None
    two = down.source if down is not None and down.linear and down.source != INPUT else None
    expanded, failed = None, None
    chain = chain_between(table, two, la.name) if two else None
    if two and chain:
        try:
            expanded = expanded_weights([modules[m] for m in chain], by_name[two].out_ch)
        except ValueError as e:  # a module with no linear stand-in, a field that keeps growing: said, not drawn
            failed = str(e)
    if expanded is None:
        two = None
    nmf = one_sided_nmf(ungrouped(series[-1], la.groups))
    rows = torch.arange(la.out_ch)[:, None]
    offsets = (torch.arange(la.out_ch) // size * per)[:, None]  # each unit's group's first input channel
    at = [  # per snapshot: each unit's top-k as (channels, norms, kernels), each a nested list made at once
        (st.tolist(), _rounded(s[rows, st]), _rounded(w[rows, st - offsets].flatten(2)))
        for w, s, st in zip(series, strengths, sets)
    ]
    out_units: dict[str, Any] = {}
    for u in units:
        inputs = [[[i, n, kern] for i, n, kern in zip(ch[u], norms[u], kernels[u])] for ch, norms, kernels in at]
        outputs = {}
        for r in readers:
            rl = by_name[r]
            w = final[r]
            s = kernel_strengths(w, rl.groups)[:, u]
            rsize, rper = rl.out_ch // rl.groups, rl.in_ch // rl.groups
            order = [o for o in s.argsort(descending=True).tolist() if s[o] > 0 or rl.groups == 1][:k]
            outputs[r] = [[o, _num(float(s[o])), _rounded(w[o, u - (o // rsize) * rper].flatten())] for o in order]
        unit: dict[str, Any] = {
            "inputs": inputs,
            "wired_at": wired[u] if wired else None,
            "share_init": _num(float(shares[0][u])),
            "share_final": _num(float(shares[1][u])),
            "outputs": outputs,
            "glyph": _glyph(nmf.positive[u : u + 1], nmf.negative[u : u + 1]),
        }
        if expanded is not None:
            e = expanded[u]
            norms = e.flatten(1).norm(dim=1)
            order = norms.argsort(descending=True)[:k].tolist()
            unit["expanded"] = [[i, _num(float(norms[i])), _rounded(e[i].flatten())] for i in order]
        out_units[str(u)] = unit
    reason_two = None
    if failed:
        reason_two = failed
    elif two is None:
        if not link.linear:
            reason_two = link.reason
        elif link.source == INPUT:
            reason_two = "the layer below is the input image"
        elif down is not None and down.source == INPUT:
            reason_two = "two layers down is the input image"
        else:
            reason_two = down.reason if down is not None else None
    return {
        "source": link.source,
        "reason": link.reason,
        "readers": readers,
        "reader_kernels": {r: list(by_name[r].kernel) for r in readers},
        "expanded_source": two,
        "expanded_reason": reason_two,
        "expanded_shape": list(expanded.shape[-2:]) if expanded is not None else None,
        "kernel": list(la.kernel),
        "groups": la.groups,
        "in_ch": la.in_ch,
        "glyph_shape": [la.kernel[0], la.kernel[1]],
        "input_factors": [[_num(float(v), 3) for v in row] for row in nmf.input_factors],
        "nmf_error": _num(nmf.relative_error),
        "units": out_units,
    }
