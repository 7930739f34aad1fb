"""The small CNN built from ModelConfig, and the list of its conv layers by depth.

Layout (depth d = 1..D): ``features.conv{d}`` -> ``features.bn{d}`` (optional) -> ``features.relu{d}``
-> ``features.pool{d}`` (optional), then ``head.gap`` (global average pool, so the model accepts any
input size), ``head.flatten``, ``head.dropout`` (optional), ``head.fc``. Dotted names are PyTorch's
own ``named_modules()`` names and match the state-dict keys in every snapshot.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from featviz.config import ModelConfig, from_dict
from featviz.run.schema import ConvLayer


class SmallCNN(nn.Sequential):
    """``features`` (conv blocks) then ``head`` (classifier); input [B, C, H, W] normalized images."""

    def __init__(self, cfg: ModelConfig) -> None:
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        in_ch = cfg.in_channels
        for d, (w, k, s, pool) in enumerate(zip(cfg.widths, cfg.kernels, cfg.strides, cfg.pools), start=1):
            blocks[f"conv{d}"] = nn.Conv2d(in_ch, w, k, stride=s, padding=k // 2, bias=not cfg.batchnorm)
            if cfg.batchnorm:
                blocks[f"bn{d}"] = nn.BatchNorm2d(w)
            blocks[f"relu{d}"] = nn.ReLU(inplace=False)
            if pool:
                blocks[f"pool{d}"] = nn.MaxPool2d(2)
            in_ch = w
        head: OrderedDict[str, nn.Module] = OrderedDict(gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten())
        if cfg.dropout > 0:
            head["dropout"] = nn.Dropout(cfg.dropout)
        head["fc"] = nn.Linear(in_ch, cfg.num_classes)
        super().__init__(OrderedDict(features=nn.Sequential(blocks), head=nn.Sequential(head)))


def build_model(cfg: ModelConfig, seed: int | None = None) -> SmallCNN:
    """Build the CNN; with ``seed`` the initial weights are a pure function of (cfg, seed)."""
    if seed is None:
        return SmallCNN(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SmallCNN(cfg)


def small_cnn(num_classes: int = 10, in_channels: int = 3, **fields: object) -> SmallCNN:
    """SmallCNN from plain keyword arguments (ModelConfig's fields): the model-spec factory
    ``featviz.model:small_cnn``, e.g. for ``featviz.record`` around a loop that trains a SmallCNN."""
    return SmallCNN(from_dict(ModelConfig, {**fields, "num_classes": num_classes, "in_channels": in_channels}))


def conv_layers(model: nn.Module) -> list[ConvLayer]:
    """Every Conv2d of ``model`` in definition order, numbered by depth from 1, with its shape and weight
    counts (no forward pass: ``featviz.layers.trace`` adds what a pass tells, in the order it runs)."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return [conv_layer(name, depth, m) for depth, (name, m) in enumerate(convs, start=1)]


def conv_layer(name: str, depth: int, conv: nn.Conv2d, **traced: object) -> ConvLayer:
    """``conv``'s ``ConvLayer``: its shape and weight counts, plus what a forward pass found (``traced``)."""
    biases = 0 if conv.bias is None else conv.bias.numel()
    return ConvLayer(
        name=name,
        depth=depth,
        in_ch=conv.in_channels,
        out_ch=conv.out_channels,
        kernel=(conv.kernel_size[0], conv.kernel_size[1]),
        stride=int(conv.stride[0]),
        groups=conv.groups,
        weights=conv.weight.numel(),
        biases=biases,
        params=conv.weight.numel() + biases,
        **traced,  # type: ignore[arg-type]
    )


def response_layer(model: nn.Module, conv_name: str) -> str:
    """The module whose output activation maximization targets for a conv: the BatchNorm right after it
    if there is one (the conv's normalized response, which ReLU then thresholds), else the conv itself.

    The raw conv output of a conv followed by BatchNorm has an arbitrary offset and scale per channel,
    so its values cannot be compared with the data set's (faithfulness); the BatchNorm output can,
    and unlike a ReLU output it has a gradient everywhere (no grey images from dead units).
    """
    names = [n for n, _ in model.named_modules()]
    mods = dict(model.named_modules())
    i = names.index(conv_name)
    if i + 1 < len(names) and isinstance(mods[names[i + 1]], nn.BatchNorm2d):
        return names[i + 1]
    return conv_name


def activation_layer(model: nn.Module, conv_name: str) -> str:
    """The first ReLU after ``conv_name`` in definition order (the layer's activation); the conv itself if none."""
    names = [n for n, _ in model.named_modules()]
    mods = dict(model.named_modules())
    for n in names[names.index(conv_name) + 1 :]:
        if isinstance(mods[n], nn.ReLU):
            return n
        if isinstance(mods[n], nn.Conv2d):
            break
    return conv_name


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, images: torch.Tensor, chunk: int = 1000, forward: Callable[[torch.Tensor], object] | None = None
) -> int:
    """Replace every BatchNorm's running statistics by the statistics of ``images`` (normalized input
    [N, C, H, W]), then put the model in eval mode. Returns how many BatchNorm layers were reset.

    Used before measuring representations: a snapshot's own running statistics are 0/1 at the init and
    lag behind the weights within an epoch, so they would move CKA by themselves. Each BatchNorm gets
    the exact mean and (unbiased) variance over all of ``images`` when they fit in one ``chunk``; in
    chunks, PyTorch's cumulative average of the per-chunk statistics. ``forward``: what runs the images
    (default: the model); a forward pass that stops at a layer (``optvis.forward.forward_until``) resets
    only the BatchNorms before it, and the others keep cleared statistics.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [(m, m.momentum) for m in bns]
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the chunks
        model.eval()  # only the BatchNorms use batch statistics (dropout and the like stay off)
        for m in bns:
            m.train()
        for part in images.split(chunk):
            (forward or model)(part)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()
    return len(bns)
