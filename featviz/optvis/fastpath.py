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

Modules that carry hooks of their own are never rewritten. Layers keep their dotted names (a
rewritten pool gets children ``.0``/``.1`` but the pool's own name still gives the pool's output),
so hooks placed by name see the original values. If the model
cannot be deep-copied the original is returned unchanged (the caller still freezes it).
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

__all__ = ["render_copy"]


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
