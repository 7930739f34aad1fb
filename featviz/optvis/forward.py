"""Running a model for activation maximization: frozen (eval mode, no weight gradients, every flag
restored), and only as far as the layers an objective reads (``forward_until``). Used by ``actmax`` and
``quality``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from featviz.errors import ConfigError
from featviz.hooks import capture, eval_mode, input_kind, resolve_layers


class _Outputs(dict):
    """Layer outputs by name; reading a layer nobody asked for is an error that says what to do."""

    def __missing__(self, key: object) -> Tensor:
        raise ConfigError(
            f"layer {key!r} was not recorded: list every layer an objective reads in its layers "
            f"(recorded: {', '.join(self)})"
        )


class _StopForward(Exception):
    """Raised by a forward hook once every needed layer has produced its output."""


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` inside the block; each module's and parameter's flag restored."""
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with eval_mode(model):
            for p, _ in grads:
                p.requires_grad_(False)
            yield model
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)


@contextmanager
def forward_until(model: nn.Module, names: Sequence[str]) -> Iterator[Callable[[Tensor], dict[str, Tensor]]]:
    """Yield ``run(x) -> {name: output}`` that stops the forward pass once every named layer has run.

    Unknown names raise ConfigError listing the valid ones; all hooks are removed on exit.
    """
    names = list(dict.fromkeys(names))
    with capture(model, names) as acts:
        handles = []

        def stop(_m: nn.Module, _inp: object, _out: object) -> None:
            if len(acts) >= len(names):  # registered after capture's hooks, so acts is already filled
                raise _StopForward

        try:
            for module in resolve_layers(model, names).values():
                handles.append(module.register_forward_hook(stop))

            def run(x: Tensor) -> dict[str, Tensor]:
                acts.clear()
                try:
                    model(x)
                except _StopForward:
                    pass
                missing = [n for n in names if n not in acts]
                if missing:
                    raise ConfigError(f"layer(s) {', '.join(missing)} did not run in the model's forward pass")
                return _Outputs(acts)

            yield run
        finally:
            for h in handles:
                h.remove()


def model_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    own = input_kind(model)[0]
    if (
        device is not None
        and torch.device(device) != own
        and not (torch.device(device).type == own.type and torch.device(device).index is None)
    ):
        raise ConfigError(f"device {device} differs from the model's {own}; move the model first")
    return own


def model_dtype(model: nn.Module) -> torch.dtype:
    return input_kind(model)[1]
