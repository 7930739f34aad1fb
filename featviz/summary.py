"""The parameter table: every layer, its output shape, and where its weights come from.

Facts it states: a conv layer has ``out x in/groups x kh x kw`` weights plus
``out`` biases whatever the input size or stride; a linear layer ``in x out`` plus ``out``;
BatchNorm 2 per channel (its running statistics are buffers, not trained); pooling, ReLU,
flatten and dropout have none.

Works on any model, not only featviz's SmallCNN: rows follow the forward pass (a residual block
calls its ``downsample`` after ``bn3`` although it is defined last, and torchvision's ResNet calls
one ``relu`` module several times), and a container that holds parameters of its own (ConvNeXt's
``layer_scale``) gets a row for them, so the rows' weights + biases always add up to
``sum(p.numel() for p in model.parameters())`` (weights shared between modules excepted).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from featviz.hooks import record_calls

CONV_NOTE = (
    "A conv layer's weight count depends only on its filter count, input channels and kernel size, "
    "not on the input image size or the stride; pooling and activation layers have no weights."
)
NOT_CALLED = "not called in forward"

_POOLS = (
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class LayerRow:
    name: str  # dotted module name ("" for the model itself when it holds parameters directly)
    type: str  # class name, e.g. Conv2d
    output_shape: list[int]  # [C, H, W] or [N] for one image; [] when the module is never called
    weights: int
    formula: str  # how ``weights`` is computed, e.g. "64 x 32 x 3 x 3 = 18,432"
    biases: int
    trainable: int  # parameters with requires_grad (weights + biases)
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _conv_note(m: nn.Conv2d) -> str:
    """What one filter of a Conv2d sees: all input channels, a group of them, or one (depthwise)."""
    kh, kw = m.kernel_size
    cin, g = m.in_channels // m.groups, m.groups
    if g > 1 and g == m.in_channels:  # depthwise; out = k x in gives k kernels per channel
        k = m.out_channels // m.in_channels
        return (
            f"depthwise: one {kh} x {kw} kernel per channel"
            if k == 1
            else f"depthwise: {k} kernels of {kh} x {kw} per channel (out = {k} x in)"
        )
    note = f"{m.out_channels} filters of {cin} x {kh} x {kw}"
    if g > 1:
        note += f": groups={g}, each filter sees {cin} of the {m.in_channels} input channels"
    if (kh, kw) == (1, 1):
        note += "; 1 x 1: mixes channels, no spatial extent"
    return note


def _product(t: torch.Tensor) -> str:
    """'64 x 32 x 3 x 3' for a tensor of that shape."""
    return " x ".join(map(str, t.shape)) or "1"


def _weights(m: nn.Module) -> tuple[int, str, str]:
    """(weight count, formula, note) for the parameters ``m`` holds itself; biases are counted by the caller."""
    if isinstance(m, nn.modules.conv._ConvNd):  # the weight's shape is the formula: out x in/groups x k...
        n = m.weight.numel()
        return n, f"{_product(m.weight)} = {n:,}", _conv_note(m) if isinstance(m, nn.Conv2d) else ""
    if isinstance(m, nn.Linear):
        n = m.in_features * m.out_features
        return n, f"{m.in_features} x {m.out_features} = {n:,}", "" if m.bias is not None else "no bias"
    if isinstance(m, _NORMS):
        return _norm(m)
    own = [p for name, p in m.named_parameters(recurse=False) if name != "bias"]
    n = sum(p.numel() for p in own)
    formula = " + ".join(_product(p) for p in own) + f" = {n:,}" if own else "0"
    if any(True for _ in m.children()):  # a container's row holds only its own parameters
        names = ", ".join(name for name, _ in m.named_parameters(recurse=False))
        return n, formula, f"own parameters only ({names}); its sub-layers have their own rows"
    if n or any(True for _ in m.parameters(recurse=False)):
        return n, formula, ""
    if isinstance(m, _POOLS):
        return 0, "0", "pooling has no weights"
    if type(m).__module__ == nn.ReLU.__module__:  # torch.nn.modules.activation: ReLU, Hardswish, SiLU, ...
        return 0, "0", "activation has no weights"
    return 0, "0", ""


def _norm(m: nn.Module) -> tuple[int, str, str]:
    """BatchNorm, InstanceNorm, GroupNorm, LayerNorm: a scale (and shift) per channel, or nothing when not affine."""
    w, b = getattr(m, "weight", None), getattr(m, "bias", None)
    n = w.numel() if isinstance(w, torch.Tensor) else 0
    nb = b.numel() if isinstance(b, torch.Tensor) else 0
    formula = " + ".join(s for s in (n and f"{n} scales", nb and f"{nb} shifts") if s) or "0"
    stats = "; running stats are not trained" if isinstance(m, nn.modules.batchnorm._BatchNorm) else ""
    per = "normalized feature" if isinstance(m, nn.LayerNorm) else "channel"
    what = f"scale and shift per {per}" if n or nb else "no scale or shift (affine=False)"
    return n, formula, what + stats


def _row_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Leaf modules, plus any module holding parameters of its own, in definition order."""
    return {
        n: m
        for n, m in model.named_modules()
        if not any(True for _ in m.children()) or any(True for _ in m.parameters(recurse=False))
    }


def _row(name: str, m: nn.Module, shape: list[int], calls: int) -> LayerRow:
    weights, formula, note = _weights(m)
    bias = getattr(m, "bias", None)
    biases = bias.numel() if isinstance(bias, nn.Parameter) else 0
    trainable = sum(p.numel() for p in m.parameters(recurse=False) if p.requires_grad)
    if calls == 0:
        note = "; ".join(filter(None, [NOT_CALLED, note]))
    elif calls > 1:  # e.g. torchvision ResNet's one ReLU module used after bn1, bn2 and the addition
        note = "; ".join(filter(None, [note, f"called {calls} times per forward, output shape of the first call"]))
    return LayerRow(name, type(m).__name__, shape, weights, formula, biases, trainable, note)


def layer_table(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerRow]:
    """One row per leaf module (and per module with parameters of its own) for one input [C, H, W] (or [N]),
    in the order the forward pass first calls them, with the output shape of that first call.
    Modules the forward pass never calls come last, in definition order, with output shape []."""
    modules = _row_modules(model)
    calls: dict[str, int] = {}
    shapes: dict[str, list[int]] = {}
    for c in sorted(record_calls(model, modules, input_shape), key=lambda c: c.began):
        calls[c.name] = calls.get(c.name, 0) + 1
        shapes.setdefault(c.name, list(c.shape_out[1:]))
    names = list(calls) + [n for n in modules if n not in calls]
    return [_row(n, modules[n], shapes.get(n, []), calls.get(n, 0)) for n in names]


def format_table(rows: list[LayerRow]) -> str:
    """A plain-text table with a total line and the note on conv weights."""
    head = ("layer", "type", "output", "weights", "formula", "biases", "trainable")
    body = [
        (
            r.name or "(model)",
            r.type,
            "x".join(map(str, r.output_shape)) or "-",
            f"{r.weights:,}",
            r.formula,
            f"{r.biases:,}",
            f"{r.trainable:,}",
        )
        for r in rows
    ]
    total = sum(r.trainable for r in rows)
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]

    def line(cols: list) -> str:
        return "  ".join(
            str(c).ljust(w) if i < 2 or i == 4 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cols, widths))
        ).rstrip()

    out = [line(head), line(["-" * w for w in widths]), *map(line, body)]
    for i, r in enumerate(rows, start=2):  # grouped and depthwise convs: why the count is what it is, beside it
        if r.type == "Conv2d" and ("groups=" in r.note or "depthwise" in r.note):
            out[i] = f"{out[i]}  ({r.note})"
    out += [f"total trainable parameters: {total:,}", f"note: {CONV_NOTE}"]
    return "\n".join(out)
