"""``pairs``: the embedded default data set, generated here, never downloaded.

Every image holds two objects of different shapes (disc, square, triangle, cross, star), side by side
or one above the other. One object is filled with a texture (stripes or dots); the other is solid. The
class is the textured object's shape and its texture: ten classes, "stripes-disc" .. "dots-star".

A network that only collects which local features occur somewhere in the image (edges, corners,
stripes) cannot tell "striped disc beside a solid square" from "striped square beside a solid disc":
both have the same parts. It has to bind the texture to the outline it lies in, over the whole object,
which takes receptive fields of an object's size: depth. Everything else is random per image: which
shapes, their places, sizes and rotations, the texture's period and angle, the colours (one lighter
foreground on a darker background), a background gradient and pixel noise.

``shapes`` (one object or pattern per image, ten shape classes) is the earlier default, kept by name.
"""

from __future__ import annotations

import math

import torch

from featviz.data.base import ImageData, channel_stats, generate_split
from featviz.data.shapes import _field
from featviz.images import to_uint8

PAIR_SHAPES = ("disc", "square", "triangle", "cross", "star")
_SHAPE_FIELD = (0, 2, 3, 4, 5)  # their index in featviz.data.shapes._field
TEXTURES = ("stripes", "dots")
PAIR_CLASSES = tuple(f"{t}-{s}" for t in TEXTURES for s in PAIR_SHAPES)
INK = 0.45  # how far the texture darkens the object towards the background (0.65 made the default run reach 0.99)


def _shape_field(shape: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed insideness of each image's ``shape`` (an index into PAIR_SHAPES); u, v [N, H, W]."""
    out = torch.empty_like(u)
    freq = torch.zeros(len(u))
    for i, c in enumerate(_SHAPE_FIELD):
        sel = (shape == i).nonzero()[:, 0]
        if len(sel):
            out[sel] = _field(c, u[sel], v[sel], freq[sel])
    return out


def _texture(
    kind: torch.Tensor, x: torch.Tensor, y: torch.Tensor, size: int, ang_u: torch.Tensor, period_u: torch.Tensor
) -> torch.Tensor:
    """Texture in [0, 1] (1 = the darker ink) per image: stripes (kind 0) or dots (kind 1), with a period of
    3-4.5 px at 32 px (scaled with the image, from the uniform draws ``period_u``) at an angle (``ang_u``); x, y
    are pixel centres in [-1, 1]."""
    ang = ang_u * math.pi
    period = (3.0 + 1.5 * period_u) * size / 32  # px
    freq = (math.pi * size / period)[:, None, None]  # radians per [-1, 1] unit
    c, s = torch.cos(ang)[:, None, None], torch.sin(ang)[:, None, None]
    a, b = (c * x + s * y) * freq, (-s * x + c * y) * freq
    stripes = torch.sigmoid(4 * torch.sin(a))
    dots = torch.sigmoid(4 * (torch.cos(a) + torch.cos(b) - 0.8))
    return torch.where((kind == 0)[:, None, None], stripes, dots)


def _render(label: torch.Tensor, size: int, g: torch.Generator, keep: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 images [N, 3, size, size] for the given labels, all randomness drawn from ``g``, every number
    before anything is computed; with ``keep`` (row indices), only those rows' images, the same bytes."""
    n = label.shape[0]
    rnd = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    other_u, vertical_u, first_u = rnd(n), rnd(n), rnd(n)
    placed = [[rnd(n) for _ in range(4)] for _ in range(2)]  # per object: scale, along, across, angle
    texture_u = [rnd(n), rnd(n)]  # the texture's angle and period
    fg_u, bg_u = rnd(n, 3), rnd(n, 3)
    gx_u, gy_u = rnd(n), rnd(n)
    noise = torch.randn((n, 3, size, size), generator=g)
    amplitude = rnd(n)
    drawn = [label, other_u, vertical_u, first_u, *placed[0], *placed[1], *texture_u, fg_u, bg_u, gx_u, gy_u]
    if keep is not None:
        drawn, noise, amplitude = [t[keep] for t in drawn], noise[keep], amplitude[keep]
        n = len(keep)
    label, other_u, vertical_u, first_u = drawn[:4]
    placed, texture_u = [drawn[4:8], drawn[8:12]], drawn[12:14]
    fg_u, bg_u, gx_u, gy_u = drawn[14:]
    lin = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    xx, yy = xx.expand(n, -1, -1), yy.expand(n, -1, -1)
    k = len(PAIR_SHAPES)
    target = label % k
    kind = label // k
    other = (target + 1 + (other_u * (k - 1)).long().clamp_max(k - 2)) % k  # a different shape
    # the two halves: left/right or top/bottom; which half holds the textured object is random
    vertical = vertical_u < 0.5
    first = first_u < 0.5
    masks = []
    for shape, side, (scale_u, along_u, across_u, ang_u) in ((target, first, placed[0]), (other, ~first, placed[1])):
        scale = 0.36 + 0.1 * scale_u  # half-image units: objects of about 10-14 px at 32 px
        along = torch.where(side, -0.5, 0.5) + (along_u * 2 - 1) * (0.5 - scale * 0.95).clamp_min(0)
        across = (across_u * 2 - 1) * (1 - scale * 0.95)
        cx = torch.where(vertical, across, along)
        cy = torch.where(vertical, along, across)
        ang = ang_u * 2 * math.pi
        cos, sin = torch.cos(ang)[:, None, None], torch.sin(ang)[:, None, None]
        dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
        u = (cos * dx + sin * dy) / scale[:, None, None]
        v = (-sin * dx + cos * dy) / scale[:, None, None]
        px = 2.0 / size / scale
        masks.append(torch.sigmoid(_shape_field(shape, u, v) / (0.5 * px[:, None, None])))
    ink = _texture(kind, xx, yy, size, *texture_u) * masks[0]  # the texture, inside the target only
    fg, bg = 0.55 + 0.45 * fg_u, 0.45 * bg_u
    lum = torch.tensor([0.299, 0.587, 0.114])
    push = (0.3 - ((fg - bg) @ lum)).clamp_min(0) / 2
    fg = (fg + push[:, None]).clamp(0, 1)[:, :, None, None]
    bg = (bg - push[:, None]).clamp(0, 1)[:, :, None, None]
    gx, gy = (gx_u - 0.5) * 0.3, (gy_u - 0.5) * 0.3
    shade = (gx[:, None, None] * xx + gy[:, None, None] * yy)[:, None]
    cover = (masks[0] + masks[1]).clamp_max(1)[:, None]
    img = cover * fg + (1 - cover) * (bg + shade) - INK * ink[:, None] * (fg - bg)
    img = img + noise * (0.02 + 0.06 * amplitude)[:, None, None, None]
    return to_uint8(img)


def pairs_split(
    n: int, size: int, seed: int, split: int, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``split`` (0 train, 1 validation) of ``make_pairs(seed=seed)``: ``n`` images and labels, or only
    the ``keep``-th ones (``base.generate_split``)."""
    return generate_split(_render, n, len(PAIR_CLASSES), size, seed * 1000 + split + 500_000, keep)


def make_pairs(n_train: int = 20_000, n_val: int = 2_000, size: int = 32, seed: int = 0) -> ImageData:
    """Generate the balanced ``pairs`` set; a pure function of its arguments (same seed, same bytes).

    Returns uint8 images [N, 3, size, size]; train and validation come from disjoint generator streams,
    so the validation set does not change when n_train does.
    """
    (train_x, train_y), (val_x, val_y) = (pairs_split(n, size, seed, split) for split, n in enumerate((n_train, n_val)))
    mean, std = channel_stats(train_x)
    return ImageData("pairs", train_x, train_y, val_x, val_y, PAIR_CLASSES, mean, std)
