"""``shapes``: the embedded default data set, generated here, never downloaded.

Ten classes whose label depends only on *shape or texture*: six objects (disc, ring, square,
triangle, cross, star) and four patterns (stripes, checker, dots, bars). Everything else is random
per image: the colours (a lighter foreground on a darker background, brightness-matched so that
colour alone carries no class information), position, scale, rotation, a background brightness
gradient and pixel noise.
Telling a ring from a disc, or stripes from bars, needs edges combined into curves, corners and
repeats: a hierarchy of features, which is what featviz sets out to show.

Generation is vectorized: every image is a signed "inside" field evaluated on a coordinate grid,
turned into a soft (anti-aliased) mask with a sigmoid whose width is one pixel.
"""

from __future__ import annotations

import math

import torch

from featviz.data.base import ImageData, channel_stats, generate_split
from featviz.images import to_uint8

SHAPE_CLASSES = ("disc", "ring", "square", "triangle", "cross", "star", "stripes", "checker", "dots", "bars")
_OBJECTS = 6  # the first six classes are objects placed on a background; the rest are patterns
_MEAN_COVER = 0.3  # the foreground fraction every image is brightness-matched to


def _field(c: int, u: torch.Tensor, v: torch.Tensor, freq: torch.Tensor) -> torch.Tensor:
    """Signed 'insideness' (> 0 inside, in object units) of class ``c``; u, v [N, H, W], freq [N]."""
    au, av = u.abs(), v.abs()
    f = freq[:, None, None] * math.pi
    if c == 0:  # disc
        return 0.9 - torch.sqrt(u * u + v * v)
    if c == 1:  # ring
        return 0.22 - (torch.sqrt(u * u + v * v) - 0.68).abs()
    if c == 2:  # square
        return 0.72 - torch.maximum(au, av)
    if c == 3:  # equilateral triangle: distance to the farthest of three edges
        edges = [u * math.cos(a) + v * math.sin(a) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
        return 0.48 - torch.stack(edges).amax(0)
    if c == 4:  # cross (plus sign)
        return torch.maximum(torch.minimum(0.95 - au, 0.28 - av), torch.minimum(0.28 - au, 0.95 - av))
    if c == 5:  # five-pointed star
        return 0.58 + 0.36 * torch.cos(5 * torch.atan2(v, u)) - torch.sqrt(u * u + v * v)
    if c == 6:  # stripes: thin, many, across the image
        return torch.sin(f * u) * 0.25
    if c == 7:  # checker
        return torch.sin(f * u) * torch.sin(f * v) * 0.25
    if c == 8:  # dots on a grid
        return (torch.cos(f * u) + torch.cos(f * v) - 1.1) * 0.15
    return torch.minimum(0.95 - au, 0.17 - (av - 0.45).abs())  # bars: two thick parallel bars ("=")


def _inside(label: torch.Tensor, u: torch.Tensor, v: torch.Tensor, freq: torch.Tensor) -> torch.Tensor:
    """The field of each image's own class, computed only where that class occurs."""
    out = torch.empty_like(u)
    for c in range(len(SHAPE_CLASSES)):
        sel = (label == c).nonzero()[:, 0]
        if len(sel):
            out[sel] = _field(c, u[sel], v[sel], freq[sel])
    return out


def _paint(mask: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, shade: torch.Tensor) -> torch.Tensor:
    """Float images [N, 3, H, W] from masks [N, 1, H, W], colours fg, bg [N, 3] (fg > bg in every
    channel) and a background shade [N, 1, H, W].

    One polarity, light shapes on a darker ground (as in MNIST): with random polarity, the first layer
    has to cover both signs of every colour edge with its few filters and kept re-tuning them for the
    whole run (README, "What the default run shows"). The image is then shifted by
    ``(fg - bg) * (cover - _MEAN_COVER)`` so that its mean colour does not depend on how much of it the
    foreground covers (up to clipping at 0 and 1): otherwise brightness alone would tell a disc from
    a cross.
    """
    img = mask * fg[:, :, None, None] + (1 - mask) * (bg[:, :, None, None] + shade)
    return img - (fg - bg)[:, :, None, None] * (mask.mean((2, 3), keepdim=True) - _MEAN_COVER)


def _render(label: torch.Tensor, size: int, g: torch.Generator, keep: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 images [N, 3, size, size] for the given labels, all randomness drawn from ``g``, every number
    before anything is computed; with ``keep`` (row indices), only those rows' images, the same bytes."""
    n = label.shape[0]
    rnd = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    scale_u, cx_u, cy_u, ang_u, freq_u = [rnd(n) for _ in range(5)]
    fg_u, bg_u = rnd(n, 3), rnd(n, 3)
    gx_u, gy_u = rnd(n), rnd(n)
    noise = torch.randn((n, 3, size, size), generator=g)
    amplitude = rnd(n)
    if keep is not None:
        label, scale_u, cx_u, cy_u, ang_u, freq_u, fg_u, bg_u, gx_u, gy_u, noise, amplitude = (
            t[keep] for t in (label, scale_u, cx_u, cy_u, ang_u, freq_u, fg_u, bg_u, gx_u, gy_u, noise, amplitude)
        )
        n = label.shape[0]
    lin = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    obj = label < _OBJECTS
    # objects: scale 0.45-0.8 of the half-image, centred anywhere they fit; patterns fill the image
    scale = torch.where(obj, 0.45 + 0.35 * scale_u, torch.ones(n))
    cx = (cx_u * 2 - 1) * (1 - scale) * obj
    cy = (cy_u * 2 - 1) * (1 - scale) * obj
    ang = ang_u * 2 * math.pi
    cos, sin = torch.cos(ang)[:, None, None], torch.sin(ang)[:, None, None]
    dx, dy = xx[None] - cx[:, None, None], yy[None] - cy[:, None, None]
    u = (cos * dx + sin * dy) / scale[:, None, None]
    v = (-sin * dx + cos * dy) / scale[:, None, None]
    freq = 3.0 + 3.0 * freq_u  # pattern periods of ~2.5-5 px at 32 px
    field = _inside(label, u, v, freq)
    px = 2.0 / size / scale  # one pixel in object units: the anti-aliasing width
    mask = torch.sigmoid(field / (0.5 * px[:, None, None]))[:, None]  # [N, 1, H, W]
    # colours: one polarity (the foreground lighter in every channel), hue random, and a luminance
    # contrast of at least 0.3 so that the shape is always visible
    fg, bg = 0.55 + 0.45 * fg_u, 0.45 * bg_u
    lum = torch.tensor([0.299, 0.587, 0.114])
    push = (0.3 - ((fg - bg) @ lum)).clamp_min(0) / 2
    fg = (fg + push[:, None]).clamp(0, 1)
    bg = (bg - push[:, None]).clamp(0, 1)
    gx, gy = (gx_u - 0.5) * 0.3, (gy_u - 0.5) * 0.3  # background brightness gradient
    shade = (gx[:, None, None] * xx[None] + gy[:, None, None] * yy[None])[:, None]
    img = _paint(mask, fg, bg, shade)
    img = img + noise * (0.02 + 0.06 * amplitude)[:, None, None, None]
    return to_uint8(img)


def shapes_split(
    n: int, size: int, seed: int, split: int, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``split`` (0 train, 1 validation) of ``make_shapes(seed=seed)``: ``n`` images and labels, or only
    the ``keep``-th ones (``base.generate_split``)."""
    return generate_split(_render, n, len(SHAPE_CLASSES), size, seed * 1000 + split, keep)


def make_shapes(n_train: int = 20_000, n_val: int = 2_000, size: int = 32, seed: int = 0) -> ImageData:
    """Generate the balanced ``shapes`` set; a pure function of its arguments (same seed, same bytes).

    Returns uint8 images [N, 3, size, size]; train and validation come from disjoint generator
    streams, so the validation set does not change when n_train does.
    """
    (train_x, train_y), (val_x, val_y) = (
        shapes_split(n, size, seed, split) for split, n in enumerate((n_train, n_val))
    )
    mean, std = channel_stats(train_x)
    return ImageData("shapes", train_x, train_y, val_x, val_y, SHAPE_CLASSES, mean, std)
