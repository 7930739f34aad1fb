"""Recomputing only the part of a network that one module's weights can change.

``Downstream(model, layer, output)`` traces the model's forward once with ``torch.fx`` and splits what the
``output`` module's first call depends on into two parts: the nodes that depend on ``layer`` (downstream,
recomputed on every call) and the rest (upstream). The first call with a given ``tag`` runs both parts and
keeps the tensors where the upstream part feeds the downstream one (the frontier); later calls with that
tag run only the downstream part from a copy of the kept frontier. The result is the full forward's, op for
op, as long as nothing upstream changes between calls: only ``layer``'s own parameters, and the state of
modules downstream (BatchNorm statistics), may change. With an ``example`` input the part ends where the
eager forward's value of ``output`` ends up after in-place rewrites (``left_in``). Used by the settling
controls (``featviz.convergence``), which put one layer's past weights into the final network many times.
"""

from __future__ import annotations

import operator
from typing import Any, Iterable

import torch
from torch import fx, nn

from featviz.hooks import capture, eval_mode

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


class _Recorder(fx.Interpreter):
    """Runs a graph and keeps a copy of each of ``keep``'s values as it is computed (later in-place ops
    cannot change the copy)."""

    def __init__(self, gm: fx.GraphModule, keep: set[fx.Node]) -> None:
        super().__init__(gm)
        self.keep, self.seen = keep, {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n in self.keep and isinstance(out, torch.Tensor):
            self.seen[n] = out.detach().clone()
        return out


def left_in(gm: fx.GraphModule, model: nn.Module, output: str, x: torch.Tensor) -> fx.Node | None:
    """The node of ``gm`` (traced from ``model``) whose value equals, bit for bit on ``x``, what ``model``'s
    eager forward leaves in module ``output``'s (last) output tensor by the end of the pass; None if none
    does. An in-place op after a module rewrites its output: torchvision's ResNets apply ``ReLU(inplace=True)``
    to a BatchNorm's output, and ``out += identity`` to the block's last one, which fx traces as an
    out-of-place add. A hook on the module sees the rewritten tensor after the pass
    (``hooks.capture``); this finds the traced node that computes it: the first, in graph order, of
    ``output``'s calls and the nodes after them."""
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == output]
    recorder = _Recorder(gm, _closure(calls, "users"))
    with eval_mode(model), torch.no_grad():  # no BatchNorm statistics change
        with capture(model, [output], detach=True) as acts:
            model(x)
        want = acts[output]
        recorder.run(x)
    return next(
        (
            n
            for n in gm.graph.nodes
            if n in recorder.seen and recorder.seen[n].shape == want.shape and torch.equal(recorder.seen[n], want)
        ),
        None,
    )


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
    def of(cls, model: nn.Module, layer: str, output: str, example: torch.Tensor | None = None) -> Downstream | None:
        """``example``: an input on which to find the node whose value is what the eager forward leaves in
        ``output``'s output tensor by the end of the pass (``left_in``); without it, ``output``'s first call."""
        try:
            gm = fx.symbolic_trace(model)  # shares the model's modules: loading weights into one loads both
        except Exception:  # fx raises many kinds for data-dependent control flow: then the caller runs it all
            return None
        if sum(n.op == "placeholder" for n in gm.graph.nodes) != 1:
            return None
        start, end = _first_call(gm.graph, layer), _first_call(gm.graph, output)
        if example is not None and end is not None:
            end = left_in(gm, model, output, example)
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
