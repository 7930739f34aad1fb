"""Scoped forward hooks: ``with capture(model, names) as acts`` records outputs and always cleans up.

Names are PyTorch's own dotted ``named_modules()`` names. Hooks are removed in ``finally``, so an
exception in the forward pass (or in the caller's body) never leaves a hook behind.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from featviz.errors import ConfigError


def resolve_layers(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Map dotted names to modules; an unknown name is a ConfigError listing the valid ones."""
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        if name not in modules or name == "":
            valid = ", ".join(n for n in modules if n)
            raise ConfigError(f"unknown layer {name!r}; valid layers: {valid}")
        out[name] = modules[name]
    return out


@contextmanager
def capture(model: nn.Module, names: Sequence[str], detach: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict that fills with each named layer's output during forward passes in the block.

    With ``detach`` the stored outputs are detached (for recording); otherwise they keep their
    graph so objectives can backpropagate through them.
    """
    acts: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name, module in resolve_layers(model, names).items():
            def hook(_m: nn.Module, _inp: object, out: torch.Tensor, name: str = name) -> None:
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
