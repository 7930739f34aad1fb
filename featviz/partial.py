"""Recomputing only the part of a network that one module's weights can change.

``Downstream(model, layer, output)`` traces the model's forward once with ``torch.fx`` and splits what the
``output`` module's first call depends on into two parts: the nodes that depend on ``layer`` (downstream,
recomputed on every call) and the rest (upstream). The first call with a given ``tag`` runs both parts and
keeps the tensors where the upstream part feeds the downstream one (the frontier); later calls with that
tag run only the downstream part from a copy of the kept frontier. The result is the full forward's, op for
op, as long as nothing upstream changes between calls: only ``layer``'s own parameters, and the state of
modules downstream (BatchNorm statistics), may change. Used by the settling controls
(``featviz.convergence``), which put one layer's past weights into the final network many times.
"""

from __future__ import annotations

import operator
from typing import Any, Iterable

import torch
from torch import fx, nn

_IN_PLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.imatmul}


def _first_call(graph: fx.Graph, target: str) -> fx.Node | None:
    return next((n for n in graph.nodes if n.op == "call_module" and n.target == target), None)


def _closure(start: Iterable[fx.Node], step: str) -> set[fx.Node]:
    """``start`` and every node reached from it through ``users`` (step="users") or inputs (step="inputs")."""
    seen, todo = set(), list(start)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(node.users if step == "users" else node.all_input_nodes)
    return seen


def _in_place(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` may write into one of its inputs (``x += y``, ``x.relu_()``, ``ReLU(inplace=True)``)."""
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(str(node.target)), "inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).startswith("_")
    return node.op == "call_function" and node.target in _IN_PLACE_OPERATORS


class Downstream:
    """See the module docstring. ``Downstream.of`` returns None where this cannot work: fx cannot trace the
    model, its forward takes more than one input, ``output`` does not depend on ``layer``, or an op writes
    into a tensor that another op also reads (running the upstream part first could change what it reads)."""

    def __init__(self, gm: fx.GraphModule, layer: fx.Node, output: fx.Node) -> None:
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        needed = _closure([output], "inputs")
        changed = _closure([layer], "users") & needed
        self._downstream = sorted(changed, key=order.__getitem__)
        self._frontier = sorted(
            {a for n in self._downstream for a in n.all_input_nodes if a not in changed}, key=order.__getitem__
        )
        self._upstream = sorted(_closure(self._frontier, "inputs"), key=order.__getitem__)
        self._output = output
        self._interpreter = fx.Interpreter(gm)
        self._kept: dict[Any, dict[fx.Node, Any]] = {}

    @classmethod
    def of(cls, model: nn.Module, layer: str, output: str) -> Downstream | None:
        try:
            gm = fx.symbolic_trace(model)  # shares the model's modules: loading weights into one loads both
        except Exception:  # fx raises many kinds for data-dependent control flow: then the caller runs it all
            return None
        if sum(n.op == "placeholder" for n in gm.graph.nodes) != 1:
            return None
        start, end = _first_call(gm.graph, layer), _first_call(gm.graph, output)
        if start is None or end is None or end not in _closure([start], "users"):
            return None
        for node in gm.graph.nodes:  # a write into a value another node also reads: order matters, refuse
            if _in_place(gm, node) and node.all_input_nodes and len(node.all_input_nodes[0].users) > 1:
                return None
        return cls(gm, start, end)

    @property
    def frontier(self) -> list[str]:
        """The names of the upstream nodes whose values are kept (for tests and messages)."""
        return [n.name for n in self._frontier]

    def __call__(self, x: torch.Tensor, tag: Any) -> torch.Tensor:
        """The ``output`` module's output for input ``x``; ``tag`` names the upstream values to keep or reuse
        (one per distinct input and mode, e.g. ("batchnorm", chunk) and ("eval", chunk))."""
        if tag not in self._kept:
            env = self._run(self._upstream, {}, x, keep=set(self._frontier))
            self._kept[tag] = {n: env[n] for n in self._frontier}
        env = {n: v.clone() if isinstance(v, torch.Tensor) else v for n, v in self._kept[tag].items()}
        return self._run(self._downstream, env, x, keep={self._output})[self._output]

    def _run(self, nodes: list[fx.Node], env: dict[fx.Node, Any], x: torch.Tensor, keep: set[fx.Node]) -> dict:
        """Run ``nodes`` in order with ``env`` holding their inputs; values no later node (nor ``keep``) reads
        are dropped as soon as they are used, so memory stays at one forward pass's."""
        last = {a: i for i, n in enumerate(nodes) for a in n.all_input_nodes}
        self._interpreter.env = env
        for i, node in enumerate(nodes):
            env[node] = x if node.op == "placeholder" else self._interpreter.run_node(node)
            for a in node.all_input_nodes:
                if last.get(a) == i and a not in keep:
                    del env[a]
        return env
