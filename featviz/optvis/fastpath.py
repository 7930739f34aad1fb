"""A render-only copy of a model that computes the same layer outputs with less work.

Contract: ``fast_copy(model, keep)`` returns an eval-mode, weight-frozen deep copy in which every
layer named in ``keep`` gives the output it gives in ``model`` (up to float rounding); other layers
may change and ``model`` is never modified. ``select_channels(copy, layer, idx)`` makes ``layer`` of
such a copy output only channel ``idx[b]`` for element b. ``prepare_fast(model, objective, batch)``
applies both for the renderer and returns the copy with the objective to evaluate on it. Rewrites
happen only inside ``nn.Sequential`` (explicit data flow), never to modules that carry hooks, and
layers keep their dotted names. A model that cannot be deep-copied is returned as it is.
Speed-ups: ``benchmarks/README.md``.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featviz.optvis.objectives import Objective, channel

__all__ = ["fast_copy", "select_channels", "prepare_fast", "SelectedConv"]


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place (conv belongs to the copy)."""
    var = bn.running_var
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    with torch.no_grad():
        w = conv.weight * scale.view(-1, 1, 1, 1).to(conv.weight.dtype)
        b = shift if conv.bias is None else conv.bias * scale + shift
        conv.weight = nn.Parameter(w, requires_grad=False)
        conv.bias = nn.Parameter(b.to(w.dtype), requires_grad=False)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.running_mean is not None
            and bn.running_var is not None and bn.num_features == conv.out_channels)


def _hooked(m: nn.Module) -> bool:
    """Modules with hooks of their own are left alone: replacing them would silently drop the hooks."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _rewrite(seq: nn.Sequential, prefix: str, keep: set[str]) -> int:
    """Apply both rewrites to the direct children of ``seq``; returns how many were applied."""
    names = list(seq._modules)
    done = 0
    for a, b in zip(names, names[1:]):
        first, second = seq._modules[a], seq._modules[b]
        full_a = f"{prefix}{a}"
        if full_a in keep or _hooked(first) or _hooked(second):
            continue
        if _foldable(first, second):
            _fold(first, second)
            seq._modules[b] = nn.Identity()
            done += 1
        elif type(first) is nn.ReLU and type(second) is nn.MaxPool2d:
            seq._modules[a] = nn.Identity()
            seq._modules[b] = nn.Sequential(second, nn.ReLU())
            done += 1
    return done


def fast_copy(model: nn.Module, keep: Iterable[str]) -> nn.Module:
    """An eval-mode, frozen copy of ``model`` whose ``keep`` layers give the same outputs, cheaper.

    Inside each ``nn.Sequential``: ``Conv2d -> BatchNorm2d`` (eval mode) has the BN's scale and shift
    folded into the conv, the BN becoming ``nn.Identity`` (skipped when the conv's own output is
    kept); ``ReLU -> MaxPool2d`` becomes ``Identity -> Sequential(MaxPool2d, ReLU)`` (max and ReLU
    commute; skipped when the ReLU's output is kept). A rewritten pool gets children ``.0``/``.1``,
    but its own name still gives the pool's output.
    """
    try:
        clone = copy.deepcopy(model)
    except Exception:  # noqa: BLE001 - any model that cannot be copied is simply used as it is
        return model
    clone.eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    keep = set(keep)
    seqs = [(name, m) for name, m in clone.named_modules() if type(m) is nn.Sequential]
    for name, seq in seqs:
        _rewrite(seq, f"{name}." if name else "", keep)
    return clone


class SelectedConv(nn.Module):
    """Output channel ``idx[b]`` of a stride/padding/dilation Conv2d (groups 1, zero padding) for element b.

    [B, Cin, H, W] -> [B, 1, H', W'], equal to ``conv(x)[arange(B), idx].unsqueeze(1)`` up to float
    rounding. How: one batched matmul gives, per element and pixel, each kernel tap's dot product
    over input channels (``z`` [B, kh*kw, H, W], using element b's own filter), and a fixed one-hot
    conv adds each tap at its offset. Both steps are a few percent of the full conv's work.
    """

    def __init__(self, conv: nn.Conv2d, idx: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach()[idx].flatten(2), requires_grad=False)  # [B, Cin, T]
        bias = None if conv.bias is None else conv.bias.detach()[idx]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        kh, kw = conv.kernel_size
        taps = torch.eye(kh * kw, dtype=conv.weight.dtype, device=conv.weight.device)
        self.register_buffer("taps", taps.view(1, kh * kw, kh, kw))  # one-hot: tap t at its (ky, kx)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        b, cin, h, w = x.shape
        if b != self.weight.shape[0]:
            raise ValueError(f"SelectedConv built for a batch of {self.weight.shape[0]}, got {b}")
        xs = x.permute(0, 2, 3, 1).reshape(b, h * w, cin)  # a free view for channels-last input
        z = torch.bmm(xs, self.weight).view(b, h, w, -1).permute(0, 3, 1, 2)  # [B, T, H, W]
        y = F.conv2d(z, self.taps, stride=self.stride, padding=self.padding, dilation=self.dilation)
        return y if self.bias is None else y + self.bias.view(b, 1, 1, 1)


def _selectable(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros" and not _hooked(m)
            and isinstance(m.padding, tuple))


def select_channels(copy_: nn.Module, layer: str, idx: Tensor) -> bool:
    """In a ``fast_copy``, make ``layer`` output only channel ``idx[b]`` for element b ([B, 1, H', W']).

    Applies when ``layer`` is a plain Conv2d, or an ``nn.Identity`` (e.g. a folded BatchNorm) right
    after one in an ``nn.Sequential``, and every index is in range; returns whether it applied.
    Only for copies: the layer's channel count changes.
    """
    mods = dict(copy_.named_modules())
    target = mods.get(layer)
    parent_name, _, child = layer.rpartition(".")
    parent = mods.get(parent_name)
    if target is None or parent is None or _hooked(target):
        return False
    if type(target) is nn.Identity:
        if type(parent) is not nn.Sequential:
            return False
        names = list(parent._modules)
        i = names.index(child)
        if i == 0:
            return False
        child = names[i - 1]
        target = parent._modules[child]
    if not _selectable(target) or idx.dim() != 1 or idx.numel() == 0:
        return False
    if int(idx.min()) < 0 or int(idx.max()) >= target.out_channels:
        return False
    parent._modules[child] = SelectedConv(target, idx.to(target.weight.device))
    return True


def prepare_fast(model: nn.Module, objective: Objective, batch: int,
                 channels_last: bool = False) -> tuple[nn.Module, Objective]:
    """``(copy, objective to evaluate on it)``: ``fast_copy`` of ``model`` keeping ``objective.layers``.

    For a channel objective (``objective.selects``) whose layer ``select_channels`` can rewrite, the
    copy computes only element b's channel and the returned objective reads channel 0 of each element,
    giving the same values as ``objective`` on ``model``; otherwise the objective comes back unchanged.
    ``channels_last`` puts the copy's weights in that memory format. If no copy can be made,
    ``(model, objective)``.
    """
    net = fast_copy(model, objective.layers)
    if net is model:
        return model, objective
    work = objective
    if objective.selects is not None:
        layer, c = objective.selects
        idx = c if isinstance(c, Tensor) else torch.full((batch,), c, dtype=torch.long)
        if idx.numel() == batch and select_channels(net, layer, idx):
            work = channel(layer, torch.zeros(batch, dtype=torch.long))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net, work
