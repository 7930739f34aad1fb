"""The parameter table: every layer, its output shape, and where its weights come from.

Facts it states: a conv layer has ``out x in/groups x kh x kw`` weights plus
``out`` biases whatever the input size or stride; a linear layer ``in x out`` plus ``out``;
BatchNorm 2 per channel (its running statistics are buffers, not trained); pooling, ReLU,
flatten and dropout have none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from featviz.hooks import capture

CONV_NOTE = ("A conv layer's weight count depends only on its filter count, input channels and kernel size, "
             "not on the input image size or the stride; pooling and activation layers have no weights.")


@dataclass(frozen=True)
class LayerRow:
    name: str  # dotted module name
    type: str  # class name, e.g. Conv2d
    output_shape: list[int]  # [C, H, W] or [N] for one image
    weights: int
    formula: str  # how ``weights`` is computed, e.g. "64 x 32 x 3 x 3 = 18,432"
    biases: int
    trainable: int  # parameters with requires_grad (weights + biases)
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _weights(m: nn.Module) -> tuple[int, str, str]:
    """(weight count, formula, note) for one leaf module."""
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        cin = m.in_channels // m.groups
        n = m.out_channels * cin * kh * kw
        return n, f"{m.out_channels} x {cin} x {kh} x {kw} = {n:,}", f"{m.out_channels} filters of {cin} x {kh} x {kw}"
    if isinstance(m, nn.Linear):
        n = m.in_features * m.out_features
        return n, f"{m.in_features} x {m.out_features} = {n:,}", ""
    if isinstance(m, nn.BatchNorm2d):  # its shifts are counted as biases by the caller
        n = m.num_features if m.affine else 0
        formula = f"{n} scales + {n} shifts" if m.affine else "0"
        return n, formula, "scale and shift per channel; running stats are not trained"
    note = {"MaxPool2d": "pooling has no weights", "AvgPool2d": "pooling has no weights",
            "AdaptiveAvgPool2d": "pooling has no weights", "ReLU": "activation has no weights"}.get(type(m).__name__, "")
    return sum(p.numel() for n, p in m.named_parameters() if n != "bias"), "0", note


def layer_table(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerRow]:
    """One row per leaf module, in forward order, with output shapes for an input [C, H, W]."""
    leaves = [n for n, m in model.named_modules() if n and not list(m.children())]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture(model, leaves) as acts:
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    modules = dict(model.named_modules())
    rows = []
    for name in leaves:
        m = modules[name]
        weights, formula, note = _weights(m)
        bias = getattr(m, "bias", None)
        biases = bias.numel() if isinstance(bias, torch.Tensor) else 0
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        shape = list(acts[name].shape[1:]) if name in acts else []
        rows.append(LayerRow(name, type(m).__name__, shape, weights, formula, biases, trainable, note))
    return rows


def format_table(rows: list[LayerRow]) -> str:
    """A plain-text table with a total line and the note on conv weights."""
    head = ("layer", "type", "output", "weights", "formula", "biases", "trainable")
    body = [(r.name, r.type, "x".join(map(str, r.output_shape)), f"{r.weights:,}", r.formula, f"{r.biases:,}",
             f"{r.trainable:,}") for r in rows]
    total = sum(r.trainable for r in rows)
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    line = lambda cols: "  ".join(str(c).ljust(w) if i < 2 or i == 4 else str(c).rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cols, widths))).rstrip()
    out = [line(head), line(["-" * w for w in widths]), *map(line, body)]
    out += [f"total trainable parameters: {total:,}", f"note: {CONV_NOTE}"]
    return "\n".join(out)
