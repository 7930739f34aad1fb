"""Receptive fields: theoretical (from the layers' geometry) and effective (Luo et al. 2016: where the
input gradient of a central unit falls). Models and tensors in, numbers out; no files.

Definitions, biases and the tests that pin each one to a known answer: docs/metrics.md.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from featviz.optvis.forward import forward_until

MAX_CHANNELS = 16  # per-channel gradients of at most this many output channels (evenly spaced) per layer
TOLERANCE = 1e-6  # of a mass share: gradients are float32
BUDGET_MACS = 1e10  # multiply-adds per layer and snapshot: the default network gets 16 channels, a ResNet-18 a few
IMAGES = 8  # probe images the effective field is averaged over (and its spread taken across)


def theoretical_receptive_fields(kernels: Sequence[int], strides: Sequence[int], pools: Sequence[bool]) -> list[int]:
    """Receptive field (px) of one unit at each conv depth's output: r = 1 + sum (k_l - 1) * prod_{m<l} s_m.

    Each depth is conv(k, s) followed, when pooled, by a 2x2 stride-2 max-pool; the field of depth d
    is taken at the conv output (before that depth's pool).
    """
    r, jump, out = 1, 1, []
    for k, s, pool in zip(kernels, strides, pools):
        r += (k - 1) * jump
        jump *= s
        out.append(r)
        if pool:
            r += (2 - 1) * jump
            jump *= 2
    return out


_GEOMETRY_OPS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def unit_centres(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Input-pixel coordinates of the receptive-field centre of every row and column of ``layer``'s
    output map for inputs shaped like ``x`` (pixel i has its centre at i).

    Traced through the convs and pools the forward pass runs up to ``layer``: each op with kernel k,
    stride s, padding p and dilation d maps centres as c_out = c_in + ((k - 1) d / 2 - p) * jump,
    jump_out = jump * s. This is exact for a chain of ops; where the ops do not form a chain (a
    branch changes the map size) it falls back to spreading the units evenly over the image
    (exact for 'same' padding) and says so (third value False).
    """
    ops: list[tuple[nn.Module, tuple[int, int], tuple[int, int]]] = []
    out_hw: list[tuple[int, int]] = []
    handles = []
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"unknown layer {layer!r}")

    def record(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        ops.append((m, tuple(inp[0].shape[-2:]), tuple(out.shape[-2:])))

    def target(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        out_hw.append(tuple(out.shape[-2:]))
        raise _Stop

    try:
        for m in model.modules():
            if isinstance(m, _GEOMETRY_OPS) and m is not modules[layer]:
                handles.append(m.register_forward_hook(record))
        if isinstance(modules[layer], _GEOMETRY_OPS):
            handles.append(modules[layer].register_forward_hook(record))
        handles.append(modules[layer].register_forward_hook(target))
        with torch.no_grad():
            try:
                model(x[:1])
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    (h, w), size = out_hw[0], tuple(x.shape[-2:])
    start, jump, chain, prev = [0.0, 0.0], [1.0, 1.0], True, size
    for m, hw_in, hw_out in ops:
        chain = chain and hw_in == prev
        prev = hw_out
        k, s = _pair(m.kernel_size), _pair(m.stride or m.kernel_size)
        p = _pair(m.padding) if not isinstance(m.padding, str) else (0, 0)
        if isinstance(m.padding, str) and m.padding == "same":
            p = tuple((kk - 1) // 2 for kk in k)
        d = _pair(getattr(m, "dilation", 1))
        for a in (0, 1):
            start[a] += ((k[a] - 1) * d[a] / 2 - p[a]) * jump[a]
            jump[a] *= s[a]
    chain = chain and prev == (h, w)
    if chain:
        cy = start[0] + jump[0] * torch.arange(h, dtype=torch.float64)
        cx = start[1] + jump[1] * torch.arange(w, dtype=torch.float64)
    else:
        cy = (torch.arange(h, dtype=torch.float64) + 0.5) * size[0] / h - 0.5
        cx = (torch.arange(w, dtype=torch.float64) + 0.5) * size[1] / w - 0.5
    return cy, cx, chain


class _Stop(Exception):
    """Ends a forward pass once the layer of interest has run."""


def _central(centres: torch.Tensor, middle: float) -> list[int]:
    """Indices of the units whose centre is nearest ``middle`` (two on a tie)."""
    d = (centres - middle).abs()
    return [int(i) for i in (d <= float(d.min()) + 1e-9).nonzero().flatten()]


def _square_mass(g: torch.Tensor, cy: float, cx: float, side: int) -> tuple[float, float]:
    """(mass of ``g`` [..., H, W] inside the side x side square centred at (cy, cx), summed over the leading
    dimensions, share of the square outside the image)."""
    h, w = g.shape[-2:]
    half = (side - 1) / 2
    y0, x0 = round(cy - half), round(cx - half)
    y1, x1 = y0 + side, x0 + side
    inside = max(0, min(y1, h) - max(y0, 0)) * max(0, min(x1, w) - max(x0, 0))
    return float(g[..., max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)].sum()), 1.0 - inside / (side * side)


def spread_channels(count: int, limit: int = MAX_CHANNELS) -> list[int]:
    """All of ``count`` channels, or ``limit`` of them evenly spaced (first and last included)."""
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def unit_gradients(
    model: nn.Module, layer: str, images: torch.Tensor, iy: int, ix: int, channels: Sequence[int]
) -> torch.Tensor:
    """[N, H, W] float64: per image, the sum over ``channels`` of ``layer``'s output of
    |d a_c(iy, ix) / d input| summed over the input's colour channels. Magnitudes are taken per output
    channel before summing, so channels with opposite gradients (w and -w) add instead of cancelling."""
    k = len(channels)
    chans = torch.tensor(list(channels), device=images.device)
    out = []
    with forward_until(model, [layer]) as run:
        for part in images.split(max(1, 512 // k)):  # part x k copies of the images per pass
            x = part.detach().repeat_interleave(k, 0).requires_grad_(True)
            a = run(x)[layer]
            picked = a[torch.arange(len(x), device=a.device), chans.repeat(len(part)), iy, ix]
            (g,) = torch.autograd.grad(picked.sum(), x)
            out.append(g.abs().sum(1).view(len(part), k, *g.shape[-2:]).sum(1).double().cpu())
    return torch.cat(out)


def _rms_radius(g: torch.Tensor, cy: float, cx: float) -> torch.Tensor:
    """Root-mean-square distance (px) of the mass of each map ``g`` [..., H, W] from (cy, cx)."""
    h, w = g.shape[-2:]
    d2 = (torch.arange(h, dtype=torch.float64).view(-1, 1) - cy) ** 2 + (
        torch.arange(w, dtype=torch.float64).view(1, -1) - cx
    ) ** 2
    total = g.sum((-2, -1))
    return ((g * d2).sum((-2, -1)) / total.clamp_min(1e-300)).sqrt()


def effective_receptive_field(
    model: nn.Module, layer: str, images: torch.Tensor, mass: float = 0.9, channels: Sequence[int] | None = None
) -> dict:
    """Effective receptive field of ``layer`` on ``images`` [N, C, H, W].

    The unit measured is the one whose receptive-field centre (``unit_centres``) is nearest the image
    centre (on a tie, an even-sized map, the first of the 2 or 4: up to half a unit's stride off the
    centre, which an image big enough for the field, ``measuring_side``, leaves harmless; every size is
    taken around the unit's own centre). Per image, g = ``unit_gradients`` over ``channels`` (default:
    all of the layer's, or ``MAX_CHANNELS`` evenly spaced).

    Returns ``effective_px``: the side of the smallest square centred on the unit's centre that holds
    ``mass`` of the mean g over images (raw, never clamped; 0 when the gradient is zero; squares grow in
    2 px steps, so it is coarse); ``outside_fraction``: the share of that square outside the image;
    ``rms_radius_px``: the root-mean-square distance of the mean g's mass from the centre (continuous),
    with ``rms_radius_sd_px``, its standard deviation over the images (each image's own g);
    ``mass_by_side``: [side, share of g's mass inside] for every square side up to the one that covers
    the image; ``centre_px`` (mean centre of the measured units, y, x); ``mass_offset_px`` (centroid of g
    minus the unit's centre: ~0 when centred); ``units``, ``channels`` and ``traced`` (whether the
    geometry was traced through a chain of ops).
    """
    h_img, w_img = images.shape[-2:]
    cy, cx, traced = unit_centres(model, layer, images)
    units = [(_central(cy, (h_img - 1) / 2)[0], _central(cx, (w_img - 1) / 2)[0])]  # on a tie, the first
    if channels is None:
        with forward_until(model, [layer]) as run, torch.no_grad():
            channels = spread_channels(int(run(images[:1])[layer].shape[1]))
    per_image = [unit_gradients(model, layer, images, iy, ix, channels) for iy, ix in units]
    grads = [g.mean(0) for g in per_image]
    centres = [(float(cy[iy]), float(cx[ix])) for iy, ix in units]
    result = {
        "mass": mass,
        "units": units,
        "channels": list(channels),
        "traced": traced,
        "centre_px": [sum(c[0] for c in centres) / len(units), sum(c[1] for c in centres) / len(units)],
    }
    totals = [float(g.sum()) for g in grads]
    if min(totals) <= 0:
        zero = {"effective_px": 0, "outside_fraction": 0.0, "mass_offset_px": [0.0, 0.0], "mass_by_side": []}
        return {**result, **zero, "rms_radius_px": 0.0, "rms_radius_sd_px": 0.0}
    yy = torch.arange(h_img, dtype=torch.float64).view(-1, 1)
    xx = torch.arange(w_img, dtype=torch.float64).view(1, -1)
    offs = [
        (float((g * yy).sum()) / t - c[0], float((g * xx).sum()) / t - c[1]) for g, t, c in zip(grads, totals, centres)
    ]
    result["mass_offset_px"] = [sum(o[0] for o in offs) / len(offs), sum(o[1] for o in offs) / len(offs)]
    radii = torch.stack([_rms_radius(g, *c) for g, c in zip(per_image, centres)]).mean(0)  # [N]: per image
    result["rms_radius_px"] = sum(float(_rms_radius(g, *c)) for g, c in zip(grads, centres)) / len(units)
    result["rms_radius_sd_px"] = float(radii.std()) if len(radii) > 1 else 0.0
    # a square centred on a whole pixel has an odd side, on a pixel boundary an even one
    odd = abs(centres[0][0] % 1) < 0.25 or abs(centres[0][0] % 1) > 0.75
    curve: list[list[float]] = []
    for side in range(1 if odd else 2, 2 * max(h_img, w_img) + 3, 2):
        held = [_square_mass(g, *c, side) for g, c in zip(grads, centres)]
        frac = sum(m / t for (m, _), t in zip(held, totals)) / len(held)
        curve.append([side, min(frac, 1.0)])
        if "effective_px" not in result and frac >= mass - TOLERANCE:
            result["effective_px"] = side
            result["outside_fraction"] = sum(o for _, o in held) / len(held)
        if frac >= 1 - TOLERANCE and "effective_px" in result:
            break
    result["mass_by_side"] = curve
    return result


def channels_within(count: int, macs_per_image: int, images: int = IMAGES, budget: float = BUDGET_MACS) -> list[int]:
    """The output channels to measure for a layer of ``count`` channels whose forward pass up to it costs
    ``macs_per_image``: as many as ``budget`` multiply-adds allow (a forward and a backward pass, about 3x
    the forward's, per channel and image), between 2 and ``MAX_CHANNELS``, evenly spaced."""
    affordable = int(budget // max(1, 3 * macs_per_image * images))
    return spread_channels(count, max(2, min(MAX_CHANNELS, affordable)))


def measuring_side(image: int, deepest_field: int, limit: int = 2) -> int:
    """The image side (px) at which to measure effective fields: the smallest multiple of ``image`` that
    holds ``deepest_field`` with half an image to spare, at most ``limit`` x ``image`` (deep networks' fields
    outgrow any image; ``outside_fraction`` then says how much of a field lies beyond it). At the data's own
    size a deep layer's field is cut off by the border, and the border would decide the measurement."""
    return image * min(limit, max(1, math.ceil((deepest_field + image / 2) / image)))


def mirror_pad(images: torch.Tensor, side: int) -> torch.Tensor:
    """``images`` [N, C, H, W] extended to ``side`` x ``side`` by mirroring at the borders (repeatedly where
    needed), the original in the middle: content at its own scale everywhere, as the network was trained on."""
    x = images
    while x.shape[-1] < side or x.shape[-2] < side:
        h, w = x.shape[-2:]
        py, px = max(0, side - h), max(0, side - w)
        py, px = min(py, 2 * (h - 1)), min(px, 2 * (w - 1))
        x = F.pad(x, (px // 2, px - px // 2, py // 2, py - py // 2), mode="reflect")
    return x
