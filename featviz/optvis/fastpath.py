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
from torch.nn.modules.utils import _pair

from featviz.optvis.objectives import Objective, channel

__all__ = ["fast_copy", "select_channels", "prepare_fast", "SelectedConv", "PooledConv", "hooked"]


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
    return (
        isinstance(conv, nn.Conv2d)
        and type(bn) is nn.BatchNorm2d
        and bn.running_mean is not None
        and bn.running_var is not None
        and bn.num_features == conv.out_channels
    )


def hooked(m: nn.Module) -> bool:
    """Modules with hooks of their own are left alone: replacing them would silently drop the hooks."""
    return bool(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None)
    )


def _rewrite(seq: nn.Sequential, prefix: str, keep: set[str]) -> int:
    """Apply both rewrites to the direct children of ``seq``; returns how many were applied."""
    names = list(seq._modules)
    done = 0
    for a, b in zip(names, names[1:]):
        first, second = seq._modules[a], seq._modules[b]
        full_a = f"{prefix}{a}"
        if full_a in keep or hooked(first) or hooked(second):
            continue
        if _foldable(first, second):
            _fold(first, second)
            seq._modules[b] = nn.Identity()
            done += 1
        elif type(first) is nn.ReLU and type(second) is nn.MaxPool2d:
            seq._modules[a] = nn.Identity()
            seq._modules[b] = nn.Sequential(second, nn.ReLU())
            done += 1
    return done + _pool_into_thin_convs(seq, prefix, keep)


def _pool_of(m: nn.Module) -> nn.MaxPool2d | None:
    """The 2x2, stride-2 max-pool at the start of ``m`` (a pool, or the pool-then-ReLU made above)."""
    pool = m[0] if type(m) is nn.Sequential and len(m) == 2 and type(m[1]) is nn.ReLU else m
    return pool if type(pool) is nn.MaxPool2d and PooledConv.pool_fits(pool) and not hooked(pool) else None


def _pool_into_thin_convs(seq: nn.Sequential, prefix: str, keep: set[str]) -> int:
    """``Conv2d -> Identity* -> MaxPool2d(2)`` with a thin, 5x5-like conv (``PooledConv.fits``) becomes
    ``PooledConv -> Identity* -> (pool's place: Identity)``: the same output from the pool's name on
    (skipped when the conv's or an identity's output is kept: those now give the pooled tensor)."""
    names = list(seq._modules)
    done = 0
    for i, name in enumerate(names):
        conv = seq._modules[name]
        if not (type(conv) is nn.Conv2d and PooledConv.fits(conv)) or hooked(conv):
            continue
        j = i + 1
        while j < len(names) and type(seq._modules[names[j]]) is nn.Identity and not hooked(seq._modules[names[j]]):
            j += 1
        if j == len(names) or any(f"{prefix}{n}" in keep for n in names[i:j]):  # the pool's own output stays
            continue
        holder = seq._modules[names[j]]
        pool = _pool_of(holder)
        if pool is None:
            continue
        seq._modules[name] = PooledConv(conv)
        if holder is pool:
            seq._modules[names[j]] = nn.Identity()
        else:
            holder[0] = nn.Identity()  # the ReLU after it stays
        done += 1
    return done


def fast_copy(model: nn.Module, keep: Iterable[str]) -> nn.Module:
    """An eval-mode, frozen copy of ``model`` whose ``keep`` layers give the same outputs, cheaper.

    Inside each ``nn.Sequential``: ``Conv2d -> BatchNorm2d`` (eval mode) has the BN's scale and shift
    folded into the conv, the BN becoming ``nn.Identity`` (skipped when the conv's own output is
    kept); ``ReLU -> MaxPool2d`` becomes ``Identity -> Sequential(MaxPool2d, ReLU)`` (max and ReLU
    commute; skipped when the ReLU's output is kept). A rewritten pool gets children ``.0``/``.1``,
    but its own name still gives the pool's output. Then, on CPU, a thin conv followed (through
    identities only) by a 2x2 max-pool computes both at once (``PooledConv``; skipped when any
    output on the way is kept): the pool's name gives the same output, the names before it do not.
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


class PooledConv(nn.Module):
    """``max_pool2d(conv(x), 2)`` for a thin conv (few input channels), computed on 2x2 pixel blocks.

    oneDNN's input-gradient kernel for a conv with 3 input channels runs at a fifth of its forward
    speed. Regrouping every 2x2 block of pixels into channels turns a 3 -> 16 channel 5x5 conv at
    64 px into a 12 -> 64 channel 3x3 conv at 32 px (1.44x the multiply-adds, but with wide channels
    both ways), whose 64 output channels are (position in the block, channel): the 2x2 max-pool is
    then a max over 4 groups of channels, a (1, 4) max-pool of a free view. Same output and gradient
    as the conv then the pool, up to float rounding; ties go to the first position in the block, as
    in PyTorch's max-pool. Odd-sized inputs take the plain path.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not self.fits(conv):
            raise ValueError("PooledConv needs a stride-1, 'same'-padded, ungrouped 2-D conv with zero padding")
        self.conv = conv
        k, p = conv.kernel_size[0], conv.padding[0]
        d = self.radius(k)
        w = conv.weight.detach()
        o, c = w.shape[:2]
        big = w.new_zeros(2, 2, o, 2, 2, c, 2 * d + 1, 2 * d + 1)  # (a_y, a_x, out, b_y, b_x, in, dy, dx)
        for ay, ax, by, bx in ((ay, ax, by, bx) for ay in (0, 1) for ax in (0, 1) for by in (0, 1) for bx in (0, 1)):
            for dy in range(-d, d + 1):
                for dx in range(-d, d + 1):
                    ky, kx = 2 * dy + by - ay + p, 2 * dx + bx - ax + p
                    if 0 <= ky < k and 0 <= kx < k:
                        big[ay, ax, :, by, bx, :, dy + d, dx + d] = w[:, :, ky, kx]
        self.weight = nn.Parameter(
            big.reshape(4 * o, 4 * c, 2 * d + 1, 2 * d + 1).contiguous(memory_format=torch.channels_last),
            requires_grad=False,
        )
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().repeat(4), requires_grad=False)
        self.block_pad = d

    @staticmethod
    def fits(conv: nn.Conv2d) -> bool:
        """Square odd kernel, stride 1, 'same' zero padding, groups 1, at most 4 input channels, on CPU,
        and at most 1.5x the multiply-adds on blocks: 16 (2d+1)^2 / (4 k^2) with d = (k//2 + 1) // 2,
        1.44 for 5x5 (3x3: 4, 7x7: 2.04, 9x9: 1.23)."""
        k = conv.kernel_size
        d = PooledConv.radius(k[0])
        return (
            k[0] == k[1]
            and k[0] % 2 == 1
            and 16 * (2 * d + 1) ** 2 <= 1.5 * 4 * k[0] ** 2
            and conv.stride == (1, 1)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and conv.padding_mode == "zeros"
            and conv.padding == (k[0] // 2, k[0] // 2)
            and conv.in_channels <= 4
            and conv.weight.device.type == "cpu"
        )

    @staticmethod
    def radius(k: int) -> int:
        """Block offsets -d..d reach every tap of a k x k 'same' kernel (tap 2 * offset + b - a + k // 2)."""
        return (k // 2 + 1) // 2

    @staticmethod
    def pool_fits(pool: nn.MaxPool2d) -> bool:
        """A plain 2x2 pool with stride 2 (no padding, dilation, ceil mode or indices)."""
        return (
            _pair(pool.kernel_size) == (2, 2)
            and _pair(pool.stride) == (2, 2)
            and _pair(pool.padding) == (0, 0)
            and _pair(pool.dilation) == (1, 1)
            and not pool.ceil_mode
            and not pool.return_indices
        )

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        n, c, h, w = x.shape
        if h % 2 or w % 2:
            return F.max_pool2d(self.conv(x), 2)
        h2, w2 = h // 2, w // 2
        # [N, C, H, W] -> [N, 4C, H/2, W/2], channel (b_y, b_x, c); channels-last memory throughout
        blocks = (
            x.permute(0, 2, 3, 1)
            .reshape(n, h2, 2, w2, 2, c)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(n, h2, w2, 4 * c)
            .permute(0, 3, 1, 2)
        )
        y = F.conv2d(blocks, self.weight, self.bias, padding=self.block_pad)  # [N, 4*O, H/2, W/2]
        o = y.shape[1] // 4
        # channels-last [N, 4*O, H/2, W/2] is, as memory, [N, H/2*W/2, 4, O]: a (1, 4) pool over the 4
        y = y.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(n, h2 * w2, 4, o)
        return F.max_pool2d(y.permute(0, 3, 1, 2), (1, 4)).view(n, o, h2, w2)


def _selectable(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.groups == 1
        and m.padding_mode == "zeros"
        and not hooked(m)
        and isinstance(m.padding, tuple)
    )


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
    if target is None or parent is None or hooked(target):
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


def prepare_fast(
    model: nn.Module, objective: Objective, batch: int, channels_last: bool = False
) -> tuple[nn.Module, Objective]:
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
