"""Which conv layer feeds which, traced from the network's own forward with ``torch.fx``.

``links(model, layers)`` gives every conv layer its ``Link``: the conv whose response (the BatchNorm after
it, else the conv: ``ConvLayer.response``) reaches it through a linear chain of modules (BatchNorm, ReLU,
pooling, dropout), with that chain; or, where there is none, why (a residual sum, a concatenation, a
function the chain cannot pass through). ``featviz.circuits`` reads weights along these chains only, so a
unit whose input is a sum of branches says so instead of showing a wrong number.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from featviz.circuits import CHAIN_MODULES
from featviz.run.schema import ConvLayer

INPUT = ""  # a Link's source when the chain starts at the network's input image
_IDENTITY_CALLS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.dropout}
_NAMED_CALLS = {
    operator.add: "a sum (a residual or shortcut branch)",
    torch.add: "a sum (a residual branch)",
    torch.cat: "a concatenation of branches",
    operator.mul: "a product (e.g. a gate)",
}


@dataclasses.dataclass(frozen=True)
class Link:
    """How conv ``layer``'s response is computed from the layer below."""

    layer: str
    source: str | None  # the conv feeding it through ``chain``; INPUT: the image; None: no linear chain
    chain: tuple[str, ...] = ()  # module names from after the source's response to this layer's response
    reason: str | None = None  # why ``source`` is None, in words
    calls: int = 1  # how many times the forward runs this conv (a reused conv: its first call is traced)

    @property
    def linear(self) -> bool:
        return self.source is not None


def fx_graph(model: nn.Module) -> tuple[fx.Graph | None, str | None]:
    """The model's forward as a ``torch.fx`` graph, or (None, the error's type) when fx cannot trace it."""
    try:
        return fx.symbolic_trace(model).graph, None
    except Exception as e:  # fx raises many kinds for data-dependent control flow: each becomes a reason
        return None, type(e).__name__


def links(model: nn.Module, layers: Sequence[ConvLayer]) -> dict[str, Link]:
    """Every layer's Link, from one ``torch.fx`` trace of ``model`` (see the module docstring). A model fx
    cannot trace gets a Link with the reason for each layer."""
    graph, failure = fx_graph(model)
    if graph is None:
        why = f"torch.fx could not trace the model's forward ({failure}), so its wiring is unknown"
        return {la.name: Link(la.name, None, reason=why) for la in layers}
    modules = dict(model.named_modules())
    response = {la.name: la.response or la.name for la in layers}
    owner = {r: conv for conv, r in response.items()}  # a response module -> its conv
    first: dict[str, fx.Node] = {}
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in response:
            first.setdefault(str(node.target), node)
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    out = {}
    for la in layers:
        node = first.get(la.name)
        if node is None:
            out[la.name] = Link(la.name, None, reason="the traced forward never calls it")
            continue
        own = [la.name] + ([response[la.name]] if response[la.name] != la.name else [])
        out[la.name] = _walk(node, modules, owner, response, own, calls.get(la.name, 1))
    return out


def _walk(
    conv: fx.Node,
    modules: dict[str, nn.Module],
    owner: dict[str, str],
    response: dict[str, str],
    own: list[str],
    calls: int,
) -> Link:
    """Follow ``conv``'s input back through chain modules to the response of the conv below (or the input)."""
    name = str(conv.target)
    path: list[str] = []
    cur = _only_input(conv)
    while True:
        if cur is None:
            return Link(name, None, reason="its input is not a single tensor", calls=calls)
        if cur.op == "placeholder":
            return Link(name, INPUT, tuple(reversed(path)) + tuple(own), calls=calls)
        if cur.op == "call_module":
            target = str(cur.target)
            if target in owner and response[owner[target]] == target:  # the response of the conv below
                return Link(name, owner[target], tuple(reversed(path)) + tuple(own), calls=calls)
            m = modules[target]
            if not isinstance(m, CHAIN_MODULES) or isinstance(m, nn.Conv2d):
                return Link(
                    name, None, reason=f"{target} ({type(m).__name__}) lies between it and the layer below", calls=calls
                )
            path.append(target)
        elif cur.op == "call_function" and cur.target in _IDENTITY_CALLS:
            pass  # a functional ReLU or dropout: the identity, no module to keep
        elif cur.op == "call_method" and cur.target in ("relu", "relu_"):
            pass
        else:
            what = _NAMED_CALLS.get(cur.target) if cur.op == "call_function" else None
            label = what or f"{getattr(cur.target, '__name__', cur.target)} ({cur.op})"
            return Link(name, None, reason=f"its input comes from {label}, not one conv layer", calls=calls)
        cur = _only_input(cur)


def _only_input(node: fx.Node) -> fx.Node | None:
    """The one tensor node a node reads, or None when it reads several (a sum, a concatenation)."""
    inputs = [a for a in node.all_input_nodes if a.op != "get_attr"]
    return inputs[0] if len(inputs) == 1 else None


def chain_between(table: dict[str, Link], lower: str, upper: str) -> tuple[str, ...] | None:
    """The module names from ``lower``'s response to ``upper``'s response when ``upper`` is reached from
    ``lower`` through linear links only (one or more layers apart), else None."""
    parts: list[tuple[str, ...]] = []
    cur = table.get(upper)
    while cur is not None and cur.linear:
        parts.append(cur.chain)
        if cur.source == lower:
            return tuple(m for part in reversed(parts) for m in part)
        cur = table.get(cur.source or "")
    return None


def consumers(table: dict[str, Link], layer: str) -> list[str]:
    """The layers that read ``layer``'s response through a linear chain."""
    return [link.layer for link in table.values() if link.source == layer]
