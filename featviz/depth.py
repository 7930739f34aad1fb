"""Depth that means depth in a branched network: each conv's position on the longest path from the input.

``positions(model, layers)`` traces the network's forward with ``torch.fx`` and gives each conv layer:
- ``path_depth``: the number of convs on the longest path from the input up to and including it;
- ``branch``: True when no longest input-to-output path passes through it: a conv on a parallel branch,
  such as a ResNet shortcut, which sits beside the convs of the same ``path_depth`` instead of after them;
- ``stage``: the block or stage it belongs to (``layer1``, ``layer2``, ... in a ResNet; ``features.3`` in a
  MobileNet), where the model's module names group its convs; None where they do not (one group, or one
  conv per group).

A model ``torch.fx`` cannot trace (data-dependent control flow) keeps the forward order: the d-th conv to run
is at depth d, and nothing is a branch. Names only group layers into stages; they never decide depth.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from torch import fx, nn

from featviz.graph import fx_graph
from featviz.run.schema import ConvLayer


@dataclasses.dataclass(frozen=True)
class Position:
    path_depth: int
    branch: bool
    stage: str | None


def positions(model: nn.Module, layers: Sequence[ConvLayer]) -> dict[str, Position]:
    """Each layer's Position (see the module docstring)."""
    names = [la.name for la in layers]
    stages = stages_of(names)
    graph, _ = fx_graph(model)
    if graph is None:  # data-dependent control flow: the forward order
        return {la.name: Position(la.depth, False, stages.get(la.name)) for la in layers}
    convs = set(names)
    nodes = list(graph.nodes)  # fx keeps them in a topological order
    up: dict[fx.Node, int] = {}
    for n in nodes:  # convs on the longest path from the input to n, n included
        own = 1 if n.op == "call_module" and n.target in convs else 0
        up[n] = max((up[a] for a in n.all_input_nodes), default=0) + own
    down: dict[fx.Node, int] = {}
    for n in reversed(nodes):  # convs on the longest path from n (excluded) to the output
        down[n] = max((down[u] + _is_conv(u, convs) for u in n.users), default=0)
    longest = max((up[n] + down[n] for n in nodes), default=0)
    out: dict[str, Position] = {}
    for n in nodes:
        if n.op == "call_module" and n.target in convs and n.target not in out:  # a reused conv: its first call
            out[str(n.target)] = Position(up[n], up[n] + down[n] < longest, stages.get(str(n.target)))
    for la in layers:  # a conv the traced graph never calls (the forward pass did): the forward order
        out.setdefault(la.name, Position(la.depth, False, stages.get(la.name)))
    return out


def depth_table(model: nn.Module, layers: Sequence[ConvLayer]) -> dict[str, dict[str, Any]]:
    """``positions`` as plain data (analysis.json's ``depth``): name -> {path_depth, branch, stage}."""
    return {name: dataclasses.asdict(p) for name, p in positions(model, layers).items()}


def shown_depth(layer: ConvLayer, traced: dict[str, Any] | None = None) -> int:
    """The depth a layer is shown and ordered at: its ``path_depth`` from the run's layer table, else from
    ``traced`` (its row of an analysis's ``depth``, for a run recorded before depth was traced), else its
    forward order among the convs."""
    return layer.path_depth or (traced or {}).get("path_depth") or layer.depth


def analysed_depth(a: dict[str, Any], name: str) -> int:
    """``shown_depth`` from analysis ``a`` alone: its ``depth`` table's ``path_depth`` of layer ``name``, else
    the layer's forward order (an analysis made before depth was traced)."""
    info = a.get("depth") if isinstance(a.get("depth"), dict) else {}
    return (info.get(name) or {}).get("path_depth") or list(a["layers"]).index(name) + 1


def main_path(a: dict[str, Any]) -> list[str]:
    """The layers of analysis ``a`` that orderings by depth compare: those on the main path (no branch), by
    ``path_depth`` (ties keep the forward order); every layer, in forward order, for an analysis without
    ``depth`` (made before depth was traced)."""
    info = a.get("depth") if isinstance(a.get("depth"), dict) else {}
    keep = [n for n in a["layers"] if not (info.get(n) or {}).get("branch")]
    return sorted(keep, key=lambda n: analysed_depth(a, n))


def _is_conv(node: fx.Node, convs: set[str]) -> int:
    return 1 if node.op == "call_module" and node.target in convs else 0


def stages_of(names: Sequence[str]) -> dict[str, str]:
    """Layer name -> its stage: the shortest dotted prefix level at which the names fall into at least two
    groups, one of them holding two or more convs (``layer1.0.conv1`` -> ``layer1``; ``features.3.block.1.0``
    -> ``features.3``); a name directly at that level (a stem conv) is its own stage. Empty when no level
    groups them (featviz's small CNN: every conv alone)."""
    parts = [n.split(".") for n in names]
    for level in range(1, max((len(p) for p in parts), default=1)):
        keys = [".".join(p[:level]) if len(p) > level else ".".join(p) for p in parts]
        counts: dict[str, int] = {}
        for k in keys:
            counts[k] = counts.get(k, 0) + 1
        if len(counts) >= 2 and max(counts.values()) >= 2:
            return dict(zip(names, keys))
        if len(counts) == len(names):  # every conv alone: deeper levels cannot group them either
            return {}
    return {}
