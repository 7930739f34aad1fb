"""A render-only copy of a model that computes the same layer outputs with less work.

Contract: ``render_copy(model, keep)`` returns a deep copy in eval mode with frozen weights in which
every layer named in ``keep`` produces exactly the output it produces in ``model`` (up to float
rounding); other layers' outputs may change. ``model`` itself is never modified. Rewrites, applied
only inside ``nn.Sequential`` containers (where data flow is explicit, so they are safe for any model):

* ``Conv2d -> BatchNorm2d`` (BN in eval mode): the BN's scale and shift are folded into the conv's
  weights and bias and the BN becomes ``nn.Identity``; skipped when the conv's own output is kept.
  In eval mode BN is a per-channel affine map, yet its autograd kernels cost as much as a conv here.
* ``ReLU -> MaxPool2d``: becomes ``Identity -> Sequential(MaxPool2d, ReLU)``, since max and ReLU
  commute; ReLU then runs on a 4x smaller tensor; skipped when the ReLU's output is kept.

``select_channels(copy, layer, idx)`` goes further for a channel objective: the conv that computes
``layer`` (the layer itself, or the conv right before it when the layer is an ``Identity`` left by a
folded BatchNorm) is replaced by :class:`SelectedConv`, which computes for element b only its own
channel ``idx[b]``: the layer's output becomes [B, 1, H', W'] (channel 0 = the selected one). For
the 64 channels of a layer that is 64x less work in that conv, forward and backward.

Modules that carry hooks of their own are never rewritten. Layers keep their dotted names (a
rewritten pool gets children ``.0``/``.1`` but the pool's own name still gives the pool's output),
so hooks placed by name see the original values. If the model
cannot be deep-copied the original is returned unchanged (the caller still freezes it).
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["render_copy", "select_channels", "SelectedConv"]


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


def render_copy(model: nn.Module, keep: Iterable[str]) -> nn.Module:
    """An eval-mode, frozen copy of ``model`` whose ``keep`` layers give the same outputs, cheaper."""
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
    """In a ``render_copy``, make ``layer`` output only channel ``idx[b]`` for element b ([B, 1, H', W']).

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
