"""Scoped forward hooks: ``with capture(model, names) as acts`` records outputs and always cleans up.

Names are PyTorch's own dotted ``named_modules()`` names. Hooks are removed in ``finally``, so an
exception in the forward pass (or in the caller's body) never leaves a hook behind.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from featviz.errors import ConfigError, one_line


def resolve_layers(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Map dotted names to modules; an unknown name is a ConfigError listing the valid ones."""
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        if name not in modules or name == "":
            if f"_orig_mod.{name}" in modules:  # torch.compile's wrapper renames every layer
                raise ConfigError(
                    f"layer {name!r} is inside a torch.compile wrapper: pass model._orig_mod, the module it "
                    "compiled (featviz runs models eagerly; compiling made its CPU steps slower)"
                )
            valid = ", ".join(n for n in modules if n)
            raise ConfigError(f"unknown layer {name!r}; valid layers: {valid}")
        out[name] = modules[name]
    return out


@contextmanager
def capture(
    model: nn.Module, names: Sequence[str], detach: bool = False, reduce: Callable[[torch.Tensor], Any] | None = None
) -> Iterator[dict[str, Any]]:
    """Yield a dict that fills with each named layer's output during forward passes in the block.

    With ``detach`` the stored outputs are detached (for recording); otherwise they keep their
    graph so objectives can backpropagate through them. A stored output is the module's output tensor,
    which an in-place op later in the pass can rewrite (a torchvision ResNet's ReLU(inplace=True) after a
    BatchNorm). With ``reduce`` the stored value is ``reduce(output)`` (detached), taken as the module
    returns: of the values as the module returned them, and holding no map the reduction does not keep.
    """
    acts: dict[str, Any] = {}
    handles = []
    try:
        for name, module in resolve_layers(model, names).items():

            def hook(_m: nn.Module, _inp: object, out: torch.Tensor, name: str = name) -> None:
                if reduce is not None:
                    acts[name] = reduce(out.detach())
                else:
                    acts[name] = out.detach() if detach else out

            handles.append(module.register_forward_hook(hook))
        yield acts
    finally:
        for h in handles:
            h.remove()


def hook_count(model: nn.Module) -> int:
    """Forward hooks currently registered anywhere in ``model`` (0 after every featviz call)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; every module's own train/eval flag restored after (not just the
    root's: a model may keep frozen BatchNorms in eval while it trains)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``eval_mode`` and no gradients inside the block."""
    with eval_mode(model), torch.no_grad():
        yield model


def input_kind(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype an input to ``model`` needs: the device of its first parameter
    (else first buffer; CPU if it has neither) and the dtype of its first floating parameter (else
    floating buffer; float32 if none)."""
    first = next(model.parameters(), None)
    first = next(model.buffers(), None) if first is None else first
    if first is None:
        return torch.device("cpu"), torch.float32
    floating = next((t for t in model.parameters() if t.is_floating_point()), None)
    floating = next((t for t in model.buffers() if t.is_floating_point()), None) if floating is None else floating
    return first.device, floating.dtype if floating is not None else torch.float32


@dataclass(frozen=True)
class Call:
    """One call of a module during ``record_calls``' forward pass."""

    name: str
    module: nn.Module
    began: int  # the order in which calls began: a container's call begins before its children's
    shape_in: tuple[int, ...]  # the first input's shape; () if it is not a tensor
    shape_out: tuple[int, ...]  # the output's shape (of its first tensor for a tuple/list); () if none


def _shape(x: Any) -> tuple[int, ...]:
    if isinstance(x, (tuple, list)):
        x = next((t for t in x if isinstance(t, torch.Tensor)), None)
    return tuple(x.shape) if isinstance(x, torch.Tensor) else ()


def record_calls(model: nn.Module, modules: dict[str, nn.Module], input_shape: Sequence[int]) -> list[Call]:
    """Every call of ``modules`` (dotted name -> module of ``model``) during one eval-mode, no-grad
    forward pass of a zero input [1, *input_shape] (the model's device and dtype), in the order the
    calls returned. Flags are restored and hooks removed whatever happens; a model that cannot take
    the input is a ConfigError saying so."""
    calls: list[Call] = []
    started: dict[str, list[int]] = {}
    count = itertools.count()
    handles = []

    def pre(name: str):
        return lambda _m, _inp: started.setdefault(name, []).append(next(count))

    def post(name: str):
        def hook(m: nn.Module, inp: tuple, out: Any) -> None:
            calls.append(Call(name, m, started[name].pop(), _shape(inp[0]) if inp else (), _shape(out)))

        return hook

    device, dtype = input_kind(model)
    try:
        for name, m in modules.items():
            handles += [m.register_forward_pre_hook(pre(name)), m.register_forward_hook(post(name))]
        with evaluating(model):
            model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    except Exception as e:  # noqa: BLE001 - any model: say what it could not take
        shape = "x".join(map(str, input_shape))
        raise ConfigError(f"the model cannot take a {shape} input: {one_line(e, 200)} (try another --size)") from None
    finally:
        for h in handles:
            h.remove()
    return calls
