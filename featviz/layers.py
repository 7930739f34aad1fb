"""A network's conv layers as the forward pass meets them, and which of them to show by default.

``trace(model, in_channels, size)`` runs the model once on zeros and lists every ``Conv2d`` in the
order it first runs (not the order of definition, not by name patterns): depth d is the d-th conv to
run. Each entry is a ``ConvLayer`` (``featviz.run.schema``, stored in run.json ``layers``): name, depth,
channels, kernel, stride, groups, weight counts, the output map's side at the run's image size
(``out_px``), the module whose output activation maximization targets (``response``: the BatchNorm that
runs right after the conv, else the conv), the layer's activation (``activation``: the first activation
module to run after it, when that module runs once per pass; else the response) and the theoretical
receptive field (``rf_px``, see ``receptive_fields``), and its place in a branched network: its position on
the longest path from the input, whether it sits on a parallel branch, its stage (``featviz.depth``).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math
from typing import Sequence

import torch
from torch import nn

from featviz.depth import positions
from featviz.errors import ConfigError
from featviz.hooks import Call, record_calls
from featviz.model import conv_layer
from featviz.receptive import theoretical_receptive_fields
from featviz.run.schema import ConvLayer, RunInfo

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.PReLU)
DEEP = 8  # models with more conv layers than this get the default selection below instead of all
MAX_CHANNELS = 64  # default channels per layer: all up to this many, else this many evenly spaced
DEEP_CHANNELS = 32  # at most this many for a model with more than DEEP conv layers, and at least DEEP_MIN_CHANNELS:
DEEP_MIN_CHANNELS = 6  # as many as DEEP_BUDGET allows (deep_channel_count; benchmarks/README.md: deep models)
DEEP_BUDGET = 1e12  # multiply-adds per layer and moment of a deep model's default render (forward and backward)
RF_PROBE_MAX = 128  # largest input the receptive-field probe uses; larger fields are reported as "> this"


def _leaf_calls(model: nn.Module, in_channels: int, size: int) -> list[Call]:
    """Every call of a leaf module (or a Conv2d) in one eval-mode forward pass of zeros, in call order."""
    leaves = {
        name: m for name, m in model.named_modules() if name and (not list(m.children()) or isinstance(m, nn.Conv2d))
    }
    return record_calls(model, leaves, (in_channels, size, size))


def trace(model: nn.Module, in_channels: int, size: int) -> list[ConvLayer]:
    """Every Conv2d of ``model`` in forward-execution order with its geometry (see the module docstring).
    Convs the forward pass never runs are left out. The model is not changed."""
    calls = _leaf_calls(model, in_channels, size)
    runs: dict[str, int] = {}
    for c in calls:
        runs[c.name] = runs.get(c.name, 0) + 1
    layers: list[ConvLayer] = []
    seen: set[str] = set()
    for i, call in enumerate(calls):
        name, m, shape_out = call.name, call.module, call.shape_out
        if not isinstance(m, nn.Conv2d) or name in seen:
            continue
        seen.add(name)
        after = calls[i + 1 :]
        nxt = after[0] if after else None
        response = name
        if (
            nxt is not None
            and isinstance(nxt.module, nn.modules.batchnorm._BatchNorm)
            and nxt.module.num_features == m.out_channels
        ):
            response = nxt.name
        activation = response
        for c in after:
            if isinstance(c.module, nn.Conv2d):
                break
            if isinstance(c.module, ACTIVATIONS):
                activation = c.name if runs[c.name] == 1 else response
                break
        layers.append(
            conv_layer(
                name,
                len(layers) + 1,
                m,
                out_px=int(shape_out[-1]) if shape_out else None,
                batchnorm=response != name,
                response=response,
                activation=activation,
            )
        )
    if not layers:
        raise ConfigError("no Conv2d runs in this model's forward pass; featviz shows what conv layers learn")
    rfs = receptive_fields(model, [la.name for la in layers], in_channels, size)
    pos = positions(model, layers)
    return [
        dataclasses.replace(
            la,
            rf_px=rfs[la.name][0],
            rf_exceeds=rfs[la.name][1],
            path_depth=pos[la.name].path_depth,
            branch=pos[la.name].branch,
            stage=pos[la.name].stage,
        )
        for la in layers
    ]


def receptive_fields(
    model: nn.Module, names: list[str], in_channels: int, size: int
) -> dict[str, tuple[int | None, bool]]:
    """Theoretical receptive field (px) of the centre unit of each named layer's output: the side of the
    box of input pixels that can change it. Measured as the support of the input gradient in a copy of
    the model made linear and positive (every conv weight 1/fan-in, no biases, BatchNorm the identity,
    activations the identity, max-pools average-pools), so no path is cut by a ReLU or a max; exact for
    any wiring of modules (branches, residual sums, grouped convs, dilation). A max-pool called as a
    function in ``forward`` (``F.max_pool2d``) cannot be swapped and may read a pixel or so small. One
    sample per layer, 8 layers per pass.

    Returns name -> (px, exceeds): the probe image is 4x the data's side, 64..128 px; a field that
    reaches the probe's border is returned as (probe side, True), meaning "at least this".
    """
    if not names:
        return {}
    # each conv averages its inputs, so an edge pixel's gradient is about (1/k^2) per spatial conv on the
    # path: float32 holds that above zero for ~40 of them (1e-38); more need float64
    spatial = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1)
    dtype = torch.float32 if spatial <= 40 else torch.float64
    probe = _linear_copy(model, dtype)
    side = min(max(4 * size, 64), RF_PROBE_MAX)
    out: dict[str, tuple[int | None, bool]] = {}
    with torch.inference_mode(False), torch.enable_grad():  # also when the caller is inside no_grad
        for i in range(0, len(names), 8):  # 8 layers a pass: bounded memory on deep networks
            out.update(_fields(probe, names[i : i + 8], in_channels, side, dtype))
    return out


def _fields(
    probe: nn.Module, names: list[str], in_channels: int, side: int, dtype: torch.dtype
) -> dict[str, tuple[int | None, bool]]:
    """receptive_fields for ``names`` in one forward and backward pass: sample i targets layer i."""
    x = torch.ones(len(names), in_channels, side, side, dtype=dtype, requires_grad=True)
    outs: dict[str, torch.Tensor] = {}
    modules = dict(probe.named_modules())
    handles = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: outs.setdefault(n, o)) for n in names]
    try:
        probe(x)
    finally:
        for h in handles:
            h.remove()
    total = torch.zeros((), dtype=dtype)
    for i, n in enumerate(names):
        o = outs[n]
        total = total + o[i, :, o.shape[-2] // 2, o.shape[-1] // 2].sum()
    (grad,) = torch.autograd.grad(total, x)
    out = {}
    for i, n in enumerate(names):
        support = grad[i].abs().sum(0) > 0
        rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
        if len(rows) == 0:
            out[n] = (None, False)
            continue
        touches = rows[0] == 0 or cols[0] == 0 or rows[-1] == side - 1 or cols[-1] == side - 1
        extent = max(int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1)
        out[n] = (side, True) if touches else (extent, False)
    return out


def _linear_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A ``dtype`` copy of ``model`` in eval mode whose every path passes signal (see receptive_fields)."""
    probe = copy.deepcopy(model).cpu().to(dtype).eval()
    for name, m in list(probe.named_modules()):
        replace: nn.Module | None = None
        if isinstance(m, nn.Conv2d):
            with torch.no_grad():
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            replace = nn.Identity()
        elif isinstance(m, ACTIVATIONS) or isinstance(m, (nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.Dropout)):
            replace = nn.Identity()
        elif isinstance(m, nn.MaxPool2d):
            replace = nn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode)
        if replace is not None and name:
            parent, _, attr = name.rpartition(".")
            setattr(probe.get_submodule(parent) if parent else probe, attr, replace)
    for p in probe.parameters():
        p.requires_grad_(False)
    return probe


# ----------------------------------------------------------------------------- what to show
def default_layers(layers: list[ConvLayer] | tuple[ConvLayer, ...]) -> list[ConvLayer]:
    """All conv layers of a model with at most ``DEEP`` of them; for deeper models the first conv and the
    last conv before each downsampling (the next conv's map is smaller), plus the last conv."""
    if len(layers) <= DEEP or any(la.out_px is None for la in layers):
        return list(layers)
    keep = [layers[0]]
    for a, b in zip(layers, layers[1:]):
        if b.out_px < a.out_px and a is not keep[-1]:  # type: ignore[operator]
            keep.append(a)
    if layers[-1] is not keep[-1]:
        keep.append(layers[-1])
    return keep


def measured_layers(layers: list[ConvLayer] | tuple[ConvLayer, ...]) -> list[ConvLayer]:
    """The layers analyze's costly per-layer measures (the settling controls, the effective receptive field)
    cover: every layer of a small model; for a deep one (``is_deep``) the layers the default render shows
    (``default_layers``), so analyze measures what the gallery shows, in about a minute."""
    return default_layers(layers) if is_deep(layers) else list(layers)


def select_layers(
    layers: list[ConvLayer] | tuple[ConvLayer, ...], spec: str | tuple[str, ...] | None
) -> list[ConvLayer]:
    """``--layers``: empty/None = ``default_layers``; 'all'; or comma-separated names and globs
    (``layer*.0.conv1``), kept in forward order. A name or glob that matches nothing is a ConfigError."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else (spec or ())) if s.strip()]
    if not items:
        return default_layers(layers)
    if items == ["all"]:
        return list(layers)
    names = [la.name for la in layers]
    chosen: set[str] = set()
    for item in items:
        hits = fnmatch.filter(names, item) if any(ch in item for ch in "*?[") else [n for n in names if n == item]
        if not hits:
            raise ConfigError(f"--layers {item!r} matches no conv layer; valid conv layers: {', '.join(names)}")
        chosen.update(hits)
    return [la for la in layers if la.name in chosen]


def is_deep(layers: Sequence[object]) -> bool:
    """More than ``DEEP`` conv layers (the layers, or their names): the default render picks fewer layers,
    channels and moments."""
    return len(layers) > DEEP


def prefix_macs_of(layers: list[ConvLayer] | tuple[ConvLayer, ...], layer: ConvLayer) -> int:
    """Multiply-adds of one image's forward pass up to and including ``layer``, from the traced geometry
    alone (no model): every conv that runs before it, out_px^2 x out_ch x in_ch / groups x kh x kw. Zero
    for a run made before ``out_px`` was traced."""
    total = 0
    for la in layers:
        if la.depth <= layer.depth and la.out_px:
            total += la.out_px**2 * la.out_ch * (la.in_ch // la.groups) * la.kernel[0] * la.kernel[1]
    return total


def deep_channel_count(
    layers: list[ConvLayer] | tuple[ConvLayer, ...], layer: ConvLayer, steps: int, scale: float = 1.0
) -> int:
    """How many channels a deep model's default render takes of ``layer``: as many as ``DEEP_BUDGET``
    multiply-adds buy (forward and backward, 3 x the prefix's, for ``steps`` steps; ``scale``: the render's
    pixels over the run's), between ``DEEP_MIN_CHANNELS`` and ``DEEP_CHANNELS``. Cheap shallow layers get
    more channels, the costly deep ones fewer: a ResNet-18 at 64 px gets 32 at its first conv and about 8
    at its last."""
    cost = 3 * prefix_macs_of(layers, layer) * steps * scale
    if cost <= 0:
        return min(DEEP_CHANNELS, layer.out_ch)
    return min(layer.out_ch, max(DEEP_MIN_CHANNELS, min(DEEP_CHANNELS, int(DEEP_BUDGET // cost))))


def default_render_channels(
    layers: list[ConvLayer] | tuple[ConvLayer, ...], layer: ConvLayer, steps: int = 256, scale: float = 1.0
) -> list[int]:
    """The channels of ``layer`` a default ``featviz render`` draws (``steps`` per image; ``scale``: the render's
    pixels over the run's): up to 64 for a small model, the compute budget's count for a deep one."""
    if not is_deep(layers):
        return default_channels(layer.out_ch)
    return default_channels(layer.out_ch, deep_channel_count(layers, layer, steps, scale))


def default_channels(n: int, cap: int = MAX_CHANNELS) -> list[int]:
    """All ``n`` channels up to ``cap``, else ``cap`` of them evenly spaced from the first to the last."""
    if n <= cap:
        return list(range(n))
    return sorted({round(i * (n - 1) / (cap - 1)) for i in range(cap)})


def prefix_macs(model: nn.Module, in_channels: int, size: int) -> tuple[dict[str, int], int]:
    """Multiply-adds of one image's forward pass: per conv name, those of every conv that runs up to and
    including its first call (what rendering that layer costs per step); and the whole pass's."""
    prefix: dict[str, int] = {}
    total = 0
    for c in _leaf_calls(model, in_channels, size):
        m, out = c.module, math.prod(c.shape_out)
        if isinstance(m, nn.Conv2d) and c.shape_out:
            kh, kw = m.kernel_size
            total += out * (m.in_channels // m.groups) * kh * kw
            prefix.setdefault(c.name, total)
        elif isinstance(m, nn.Linear) and c.shape_out:
            total += out * m.in_features
    return prefix, total


def run_fields(info: RunInfo) -> list[int | None]:
    """Each of a run's conv layers' theoretical receptive field in px: the traced ``rf_px`` (a lower
    bound where ``rf_exceeds``), else, for runs made before layers were traced, the chain formula of
    featviz's conv/pool stack config; None where neither is known."""
    model = info.model_config
    chain = (
        theoretical_receptive_fields(model["kernels"], model["strides"], model["pools"]) if "kernels" in model else []
    )
    return [
        layer.rf_px if layer.rf_px is not None else chain[layer.depth - 1] if layer.depth - 1 < len(chain) else None
        for layer in info.layers
    ]


def fields_px(info: RunInfo) -> list[int]:
    """``run_fields`` with the image size where a layer's field is unknown."""
    return [rf or info.data.size for rf in run_fields(info)]
