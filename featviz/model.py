"""The small CNN built from ModelConfig, and the list of its conv layers by depth.

Layout (depth d = 1..D): ``features.conv{d}`` -> ``features.bn{d}`` (optional) -> ``features.relu{d}``
-> ``features.pool{d}`` (optional), then ``head.gap`` (global average pool, so the model accepts any
input size), ``head.flatten``, ``head.dropout`` (optional), ``head.fc``. Dotted names are PyTorch's
own ``named_modules()`` names and match the state-dict keys in every snapshot.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from featviz.config import ModelConfig, from_dict
from featviz.hooks import capture, eval_mode
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


HELD_BYTES = 2**30  # the most a calibrating measuring pass may hold of its layers' outputs at once


def batches(x: torch.Tensor, first: int, size: int) -> list[torch.Tensor]:
    """``x`` split into its first ``first`` rows (one batch: the one ``calibrating_batchnorm`` takes its
    statistics from) and then chunks of ``size``; no empty batch."""
    return [b for b in (x[:first], *x[first:].split(size)) if len(b)]


@contextmanager
def calibrating_batchnorm(model: nn.Module) -> Iterator[int]:
    """Inside the block the model runs in eval mode and each BatchNorm first clears its running statistics,
    then sets them from the first input it is called on: that input's exact mean and unbiased variance
    (PyTorch's own update with weight 1: the numbers a training-mode pass would set), which it then
    normalizes by. So one pass over a batch both recomputes every BatchNorm's statistics and gives the
    model's eval-mode output with them: each BatchNorm's statistics are those of the input it normalizes
    when the model measures. Later calls normalize by those statistics. A BatchNorm the first pass does
    not reach (a pass that stops at a layer) keeps cleared statistics until a pass reaches it. Yields how
    many BatchNorms there are; the statistics stay after the block, and the model is left in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    pending = set(bns)

    def calibrate(m: nn.modules.batchnorm._BatchNorm, args: tuple) -> None:
        if m in pending:
            pending.discard(m)
            torch.batch_norm_update_stats(args[0], m.running_mean, m.running_var, 1.0)  # the statistics only
            m.num_batches_tracked.fill_(1)

    handles = []
    try:
        for m in bns:
            m.reset_running_stats()
            handles.append(m.register_forward_pre_hook(calibrate))
        model.eval()
        with torch.no_grad():
            yield len(bns)
    finally:
        for h in handles:
            h.remove()
        model.eval()


def measuring_passes(
    model: nn.Module,
    names: list[str],
    x: torch.Tensor,
    calibrate: int = 0,
    chunk: int = 250,
    reduce: Callable[[torch.Tensor], Any] | None = None,
) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
    """No-grad passes over ``x`` in batches of ``chunk``, yielding each batch with the named layers' outputs as
    the pass left them (``hooks.capture``: an in-place op after a layer counts); a batch's outputs go before
    the next batch runs. With ``calibrate``, every BatchNorm's statistics are first recomputed on
    ``x[:calibrate]`` and the passes run in eval mode: by the first batch itself (those images at once,
    ``calibrating_batchnorm``) where the named layers' outputs of that many images fit in ``HELD_BYTES``,
    else by a pass of its own before (a large network at a large size). Either way every BatchNorm ends with
    the same statistics. ``reduce``: as for ``hooks.capture``, each output reduced as the layer returns it."""
    first, calibrating = 0, contextlib.nullcontext()
    if calibrate:
        with eval_mode(model), capture(model, names, detach=True) as acts, torch.no_grad():
            model(x[:1])  # one image: the size of what a pass holds per image
            held = sum(a.numel() * a.element_size() for a in acts.values())
        if held * min(calibrate, len(x)) > HELD_BYTES:
            recalibrate_batchnorm(model, x, calibrate)
        else:
            first, calibrating = calibrate, calibrating_batchnorm(model)
    with calibrating, capture(model, names, detach=True, reduce=reduce) as acts, torch.no_grad():
        for batch in batches(x, first, chunk):
            model(batch)
            yield batch, acts
            acts.clear()


def recalibrate_batchnorm(
    model: nn.Module, images: torch.Tensor, chunk: int = 1000, forward: Callable[[torch.Tensor], object] | None = None
) -> int:
    """Replace every BatchNorm's running statistics by the statistics of its input over the first ``chunk``
    of ``images`` (normalized input [N, C, H, W]) in one eval-mode pass (``calibrating_batchnorm``), then
    leave the model in eval mode. Returns how many BatchNorm layers were reset.

    Used before measuring representations: a snapshot's own running statistics are 0/1 at the init and
    lag behind the weights within an epoch, so they would move CKA by themselves. ``forward``: what runs
    the images (default: the model); a forward pass that stops at a layer (``optvis.forward.forward_until``)
    resets only the BatchNorms before it, and the others keep cleared statistics. A caller that measures
    right after can save the pass: run its measuring pass inside ``calibrating_batchnorm`` instead.
    """
    with calibrating_batchnorm(model) as count:
        if count:
            (forward or model)(images[:chunk])
    return count


def batchnorm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every tracking BatchNorm's statistics (running mean, variance and count), by state-dict name:
    what a recalibration set, to give to another copy of the same network at the same weights
    (``load_batchnorm``) instead of recomputing them with a pass of its own."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                out[f"{name}.{buf}" if name else buf] = getattr(m, buf).detach().clone()
    return out


def recalibrate_or_set(model: nn.Module, images: torch.Tensor, buffers: dict[str, torch.Tensor] | None) -> None:
    """``recalibrate_batchnorm`` on all of ``images`` in one batch, or, given ``buffers`` (what such a pass on
    the same images at the same weights left, ``batchnorm_buffers``), set those: the same statistics
    without the pass."""
    if buffers is None:
        recalibrate_batchnorm(model, images, chunk=len(images))
    else:
        load_batchnorm(model, buffers)


def load_batchnorm(model: nn.Module, buffers: dict[str, torch.Tensor]) -> None:
    """Set the BatchNorm statistics of ``batchnorm_buffers`` (every other tensor kept) and leave the model in
    eval mode, as ``recalibrate_batchnorm`` does."""
    missing = set(buffers) - set(model.state_dict())
    if missing:
        raise ValueError(f"load_batchnorm: the model has no {sorted(missing)[0]}")
    model.load_state_dict(buffers, strict=False)
    model.eval()
