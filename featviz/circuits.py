"""How a unit is built from the layer below, read from the weights alone (after Olah et al. 2020,
"Visualizing Weights"). Pure functions on tensors and modules; definitions: docs/metrics.md ("Circuits").

- ``fold_batchnorm``: a conv with the BatchNorm after it folded in (eval mode: the BatchNorm's scale
  multiplies each output channel's kernel, its shift becomes the bias). Every weight below is read folded,
  so a unit's weights are those of the response activation maximization targets.
- ``kernel_strengths``: the L2 norm of the k x k kernel between each unit and each input channel;
  ``top_inputs`` / ``top_outputs`` rank by it; ``input_share`` is the share of a unit's squared weights in
  its k strongest kernels (how concentrated its input is).
- ``expanded_weights``: the kernel between two layers that are not adjacent, through a linear chain of
  modules, with every ReLU taken as the identity and every max-pool as an average pool: the gradient of the
  chain's centre output with respect to its input, which for that linear chain does not depend on the input.
- ``one_sided_nmf``: a layer's weights split into positive and negative parts and factored over the input
  channels into 3 non-negative factors, one colour each: one small colour glyph per kernel.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Sequence

import torch
from torch import nn

IDENTITY_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)  # taken as the identity: they are linear above 0
PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d)  # the identity in eval mode
POOLS = (nn.MaxPool2d, nn.AvgPool2d)
BATCHNORMS = (nn.BatchNorm2d,)
CHAIN_MODULES = (nn.Conv2d, *BATCHNORMS, *IDENTITY_ACTIVATIONS, *PASS_THROUGH, *POOLS)


def batchnorm_scale(running_var: torch.Tensor, eps: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """A BatchNorm's per-channel scale in eval mode, ``weight / sqrt(running_var + eps)`` (float64)."""
    scale = torch.rsqrt(running_var.detach().double() + eps)
    return scale if weight is None else scale * weight.detach().double()


def batchnorm_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel of a BatchNorm in eval mode: y = x * scale + shift."""
    var, mean = bn.running_var, bn.running_mean
    if var is None or mean is None:
        raise ValueError("a BatchNorm without running statistics cannot be folded")
    scale = batchnorm_scale(var, bn.eps, bn.weight)
    shift = -mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def fold_batchnorm(conv: nn.Conv2d, bn: nn.Module | None) -> nn.Conv2d:
    """A copy of ``conv`` whose output equals ``bn(conv(x))`` with ``bn`` in eval mode (``conv`` itself
    when ``bn`` is None). The scale multiplies each output channel's kernel; the shift becomes the bias."""
    out = copy.deepcopy(conv)
    if bn is None:
        return out
    scale, shift = batchnorm_affine(bn)
    with torch.no_grad():
        w = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
        b = shift if conv.bias is None else conv.bias.detach().double() * scale + shift
        out.weight.copy_(w.to(conv.weight.dtype))
        out.bias = nn.Parameter(b.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    return out


def folded_weight(weight: torch.Tensor, bn_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``weight`` [out, in/groups, kh, kw] with each output channel's kernel times its BatchNorm scale."""
    w = weight.detach().double()
    return w if bn_scale is None else w * bn_scale.double().view(-1, 1, 1, 1)


def kernel_strengths(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """[out, in] L2 norm of the kernel between each output unit and each input channel of a conv's weight
    [out, in/groups, kh, kw]; 0 for the input channels outside a unit's group (it does not see them)."""
    out, per = weight.shape[0], weight.shape[1]
    if groups < 1 or out % groups:
        raise ValueError(f"groups={groups} does not divide the {out} output channels")
    norms = weight.detach().double().flatten(2).norm(dim=2)  # [out, in/groups]
    if groups == 1:
        return norms
    full = torch.zeros(out, per * groups, dtype=norms.dtype)
    size = out // groups
    for g in range(groups):
        full[g * size : (g + 1) * size, g * per : (g + 1) * per] = norms[g * size : (g + 1) * size]
    return full


def ungrouped(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """A grouped conv's weight [out, in/groups, kh, kw] as a plain conv's [out, in, kh, kw], zeros outside each
    unit's group: every input channel is its own row for factoring over input channels."""
    if groups == 1:
        return weight
    out, per = weight.shape[:2]
    full = weight.new_zeros(out, per * groups, *weight.shape[2:])
    size = out // groups
    for g in range(groups):
        full[g * size : (g + 1) * size, g * per : (g + 1) * per] = weight[g * size : (g + 1) * size]
    return full


def _ranked(row: torch.Tensor, k: int, idx: torch.Tensor) -> list[tuple[int, float]]:
    """The k largest entries of ``row`` among the indices ``idx`` as (index, value), largest first, ties to
    the lower index."""
    vals = row[idx]
    order = sorted(range(len(idx)), key=lambda i: (-float(vals[i]), int(idx[i])))[:k]
    return [(int(idx[i]), float(vals[i])) for i in order]


def _seen(weight: torch.Tensor, groups: int, channel: int) -> torch.Tensor:
    """The input channels unit ``channel`` of a conv sees (its group's)."""
    out, per = weight.shape[0], weight.shape[1]
    g = channel // (out // groups)
    return torch.arange(g * per, (g + 1) * per)


def top_inputs(weight: torch.Tensor, channel: int, k: int = 9, groups: int = 1) -> list[tuple[int, float]]:
    """Unit ``channel``'s k strongest input channels by kernel L2 norm: [(input, norm)], strongest first."""
    return _ranked(kernel_strengths(weight, groups)[channel], k, _seen(weight, groups, channel))


def top_outputs(next_weight: torch.Tensor, channel: int, k: int = 9, groups: int = 1) -> list[tuple[int, float]]:
    """The k units of the next conv (weight [out, in/groups, kh, kw]) that read input ``channel`` most
    strongly, by kernel L2 norm: [(unit, norm)], strongest first. Only units whose group sees the channel."""
    strengths = kernel_strengths(next_weight, groups)[:, channel]
    size, per = next_weight.shape[0] // groups, next_weight.shape[1]
    g = channel // per  # the group of units that sees this input channel
    return _ranked(strengths, k, torch.arange(g * size, (g + 1) * size))


def input_share(weight: torch.Tensor, k: int = 9, groups: int = 1) -> torch.Tensor:
    """[out] share of each unit's squared weights in its ``k`` strongest input kernels: sum of the k largest
    squared kernel norms over the sum of all (1.0 when the unit sees at most k inputs; NaN for an all-zero
    unit). Invariant to a per-unit scale, so BatchNorm folding does not change it."""
    sq = kernel_strengths(weight, groups) ** 2
    top = sq.topk(min(k, sq.shape[1]), dim=1).values.sum(1)
    total = sq.sum(1)
    return torch.where(total > 0, top / total.clamp_min(1e-300), torch.full_like(total, math.nan))


def wired_at(top_sets: Sequence[frozenset[int] | set[int]], steps: Sequence[int]) -> int:
    """The step from which a unit's top-k input set no longer changes: the earliest ``steps[i]`` such that
    the set at every snapshot from i on equals the set at the last snapshot (the last step when it changed
    at the very end; the first step when it never changed)."""
    if len(top_sets) != len(steps) or not steps:
        raise ValueError("wired_at needs one top-k set per step, and at least one step")
    final = set(top_sets[-1])
    i = len(top_sets) - 1
    while i > 0 and set(top_sets[i - 1]) == final:
        i -= 1
    return int(steps[i])


# ----------------------------------------------------------------------------- expanded weights
def _geometry(m: nn.Module) -> tuple[int, int]:
    """(extent, stride) of one module along one axis: what it adds to a receptive field."""
    if isinstance(m, nn.Conv2d):
        k, d = m.kernel_size[0], m.dilation[0]
        return (k - 1) * d + 1, m.stride[0]
    if isinstance(m, POOLS):
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        s = m.stride if isinstance(m.stride, int) else m.stride[0]
        return k, s or k
    return 1, 1


def linearized(m: nn.Module) -> nn.Module:
    """The module as the expanded weights see it: a ReLU (or ReLU6, LeakyReLU) and dropout the identity, a
    max-pool an average pool of the same geometry, a conv and a BatchNorm (eval mode) unchanged. A
    ValueError names any other module: its derivative is not defined by this rule."""
    if isinstance(m, (*IDENTITY_ACTIVATIONS, *PASS_THROUGH)):
        return nn.Identity()
    if isinstance(m, nn.MaxPool2d):
        if m.dilation not in (1, (1, 1)):
            raise ValueError("a dilated max-pool has no average-pool equivalent")
        return nn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, count_include_pad=True)
    if isinstance(m, (nn.Conv2d, nn.AvgPool2d, *BATCHNORMS)):
        return copy.deepcopy(m).eval()
    raise ValueError(f"{type(m).__name__} is not a module the expanded weights can pass through")


def expanded_weights(chain: Sequence[nn.Module], in_channels: int, chunk: int = 64) -> torch.Tensor:
    """[out, in_channels, h, w]: the kernel from the chain's input channels to its output channels, for a
    linear chain of modules (conv, BatchNorm, ReLU, pool, dropout) with every ReLU taken as the identity and
    every max-pool as an average pool (``linearized``): the gradient of each output channel's centre unit
    with respect to the input at zero input, cropped to the box where any of it is non-zero. For two convs
    with nothing between them it is the full convolution of their kernels (summed over the middle channels)."""
    mods = [linearized(m) for m in chain]
    net = nn.Sequential(*mods).double().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    field, jump = 1, 1
    for m in mods:
        extent, stride = _geometry(m)
        field += (extent - 1) * jump
        jump *= stride
    side = 2 * field + 2 * jump + 1
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(4):  # a field that reaches the border (padding arithmetic): a larger input
            grad = _centre_gradient(net, in_channels, side, chunk)
            mass = grad.abs().sum((0, 1))
            rows, cols = mass.any(1).nonzero().flatten(), mass.any(0).nonzero().flatten()
            if len(rows) == 0:
                return torch.zeros(grad.shape[0], in_channels, 1, 1, dtype=torch.float64)
            if rows[0] > 0 and cols[0] > 0 and rows[-1] < side - 1 and cols[-1] < side - 1:
                return grad[:, :, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].contiguous()
            side *= 2
    raise ValueError("the expanded weights' field keeps reaching the input border")


def _centre_gradient(net: nn.Module, in_channels: int, side: int, chunk: int) -> torch.Tensor:
    """[out, in, side, side]: d out[c, centre] / d input, for every output channel c (``chunk`` at a time)."""
    with torch.no_grad():
        out_ch = net(torch.zeros(1, in_channels, side, side, dtype=torch.float64)).shape[1]
    parts = []
    for lo in range(0, out_ch, chunk):
        n = min(chunk, out_ch - lo)
        x = torch.zeros(n, in_channels, side, side, dtype=torch.float64, requires_grad=True)
        y = net(x)
        cy, cx = y.shape[-2] // 2, y.shape[-1] // 2
        picked = y[torch.arange(n), torch.arange(lo, lo + n), cy, cx].sum()
        (g,) = torch.autograd.grad(picked, x)
        parts.append(g)
    return torch.cat(parts)


# ----------------------------------------------------------------------------- one-sided NMF
def nmf(matrix: torch.Tensor, rank: int, iters: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative ``matrix`` [m, n] ~ A [m, rank] @ B [rank, n], A, B >= 0, by hierarchical alternating
    least squares (Cichocki and Phan 2009); seeded, float64."""
    m = matrix.detach().double()
    if (m < 0).any():
        raise ValueError("nmf needs a non-negative matrix")
    rows, cols = m.shape
    g = torch.Generator().manual_seed(seed)
    level = math.sqrt(max(float(m.mean()), 1e-12) / rank)
    a = torch.rand(rows, rank, generator=g, dtype=torch.float64) * level
    b = torch.rand(rank, cols, generator=g, dtype=torch.float64) * level
    eps = 1e-12
    for _ in range(iters):
        ata, atm = a.T @ a, a.T @ m
        for j in range(rank):
            b[j] = (b[j] + (atm[j] - ata[j] @ b) / max(float(ata[j, j]), eps)).clamp_min(0)
        bbt, mbt = b @ b.T, m @ b.T
        for j in range(rank):
            a[:, j] = (a[:, j] + (mbt[:, j] - a @ bbt[:, j]) / max(float(bbt[j, j]), eps)).clamp_min(0)
    return a, b


@dataclasses.dataclass(frozen=True)
class WeightNMF:
    """One-sided NMF of a conv's weights (``one_sided_nmf``)."""

    input_factors: torch.Tensor  # [in/groups, factors] >= 0: how much each input channel belongs to each factor
    positive: torch.Tensor  # [out, factors, kh, kw] >= 0: each kernel's excitatory part in factor space
    negative: torch.Tensor  # [out, factors, kh, kw] >= 0: its inhibitory part
    relative_error: float  # ||[W+, W-] - A B|| / ||[W+, W-]||


def one_sided_nmf(weight: torch.Tensor, factors: int = 3, iters: int = 400, seed: int = 0) -> WeightNMF:
    """Factor a conv's weights [out, in, kh, kw] over its input channels (a grouped conv's through
    ``ungrouped`` first): the matrix with one row per
    input channel and one column per (sign, output unit, position), holding max(W, 0) and max(-W, 0), is
    written as A @ B with ``factors`` non-negative columns of A (at most the number of input channels).
    Each kernel then reads as a k x k glyph with one colour per factor (``glyphs``)."""
    w = weight.detach().double()
    out, cin, kh, kw = w.shape
    flat = w.permute(1, 0, 2, 3).reshape(cin, -1)  # [in, out * kh * kw]
    both = torch.cat([flat.clamp_min(0), (-flat).clamp_min(0)], dim=1)
    rank = max(1, min(factors, cin))
    a, b = nmf(both, rank, iters, seed)
    norm = float(both.norm())
    error = float((both - a @ b).norm()) / norm if norm > 0 else 0.0
    half = out * kh * kw
    pos, neg = (part.reshape(rank, out, kh, kw).permute(1, 0, 2, 3) for part in (b[:, :half], b[:, half:]))
    if rank < factors:  # fewer input channels than factors: the missing factors are empty
        pad = torch.zeros(out, factors - rank, kh, kw, dtype=torch.float64)
        pos, neg = torch.cat([pos, pad], 1), torch.cat([neg, pad], 1)
        a = torch.cat([a, torch.zeros(cin, factors - rank, dtype=torch.float64)], 1)
    return WeightNMF(a, pos.contiguous(), neg.contiguous(), error)


FACTOR_COLOURS = ((0.85, 0.2, 0.1), (0.1, 0.6, 0.2), (0.15, 0.3, 0.9))  # factor 1, 2, 3: red, green, blue


def glyphs(parts: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """uint8 [out, kh, kw, 3] pictures of ``WeightNMF.positive`` (or ``negative``): on white, each factor
    darkens towards its colour in proportion to its loading; ``scale`` (default: the largest loading) maps
    to full colour, so one layer's glyphs share one scale."""
    f = parts.shape[1]
    colours = torch.tensor(FACTOR_COLOURS[:f], dtype=torch.float64)  # [f, 3]
    top = float(parts.max()) if scale is None else scale
    amount = (parts.double() / top).clamp(0, 1) if top > 0 else torch.zeros_like(parts, dtype=torch.float64)
    ink = torch.einsum("ofhw,fc->ohwc", amount, 1 - colours).clamp(0, 1)
    return ((1 - ink) * 255).round().to(torch.uint8)
