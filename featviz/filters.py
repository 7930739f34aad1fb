"""Conv weights -> image tiles, with one colour scale per layer shared by every epoch.

Contract: functions take weight tensors [O, I, kh, kw] (any float dtype, any device, never modified;
I is in_channels / groups, so 1 for a depthwise conv) and return uint8 images [3, H, W] (or float
tiles [O, 3, h, w]).

* Image-like filters (I = 3, e.g. a 7x7 stride-2 first conv over RGB): each filter is an RGB tile,
  pixel = 0.5 + 0.5 * w / scale, so grey is 0. With I = 1 (a first conv over grey images, or a
  depthwise conv: one kernel per channel) the tile is grey. This shows directly which colour and
  orientation a filter prefers. ``rgb=False`` draws an I = 3 filter as a mosaic instead (a grouped conv
  deep in a network whose groups happen to have 3 channels: those are not colours).
* Other filters (grouped convs' I = in/groups included): a filter is I separate kh x kw kernels, one per
  input channel. Each filter becomes a mosaic of its kernels (rows of ceil(sqrt(I)) kernels, a 1-pixel
  gap between them, none between 1x1 kernels, so a 1x1 conv's filter is a compact block of
  pixels, one per input channel) drawn with a diverging map (blue < 0 < red, white at 0). Nothing is
  averaged: every weight drawn is one pixel.
* Size bounds, so a 512 x 512 layer does not become a 20-megapixel frame: a mosaic is at most
  ``MAX_MOSAIC`` px a side (less when many filters share the picture), so a filter with more input
  channels than fit shows its FIRST ones (e.g. 256 of 512 3x3 kernels; 4096 1x1 kernels); a picture is
  at most ``max_side`` px a side: the enlargement shrinks to fit, and only if single-pixel drawing
  still does not fit are the first filters (grid) or evenly spaced epochs (strip, first and last
  kept) shown.
* Scale: ``layer_scale`` is the 99.5th percentile of |w| over all epochs of that layer, symmetric
  around 0 (the few weights beyond it saturate), so a filter that grows over training visibly gains
  contrast instead of being rescaled to look the same; a percentile rather than the maximum keeps
  one outlier weight from washing every other filter out to grey.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torchvision.utils import make_grid

from featviz.images import to_uint8

_NEG = torch.tensor([0.16, 0.35, 0.75])  # blue for negative weights
_POS = torch.tensor([0.75, 0.16, 0.16])  # red for positive weights
_GAP = 0.85  # light grey between the kernels of a mosaic
MAX_MOSAIC = 64  # px a side of one filter's mosaic before enlargement (16 x 16 3x3 kernels)
MAX_SIDE = 2048  # px a side of a whole grid or strip


def layer_scale(weights: Sequence[torch.Tensor], q: float = 0.995) -> float:
    """One symmetric scale for a layer: the ``q`` quantile of finite |w| over every epoch (1.0 if all zero)."""
    flat = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights])
    flat = flat[torch.isfinite(flat)]  # a diverged snapshot's NaNs must not make the whole layer's scale NaN
    if flat.numel() > 4_000_000:  # torch.quantile's input limit; an even subsample is plenty
        flat = flat[:: flat.numel() // 4_000_000 + 1]
    m = float(torch.quantile(flat, q)) if flat.numel() else 0.0
    return m if m > 0 else 1.0


def _diverging(v: torch.Tensor) -> torch.Tensor:
    """Values in [-1, 1], shape [...], -> RGB in [0, 1], shape [..., 3]: white at 0."""
    a = v.clamp(-1, 1).unsqueeze(-1)
    white = torch.ones(3)
    return torch.where(a < 0, white + (-a) * (_NEG - white), white + a * (_POS - white))


def _shape(weight: torch.Tensor) -> tuple[int, int, int, int]:
    if weight.dim() != 4:
        raise ValueError(f"conv weights must be [out, in/groups, kh, kw]; got shape {list(weight.shape)}")
    return tuple(weight.shape)  # type: ignore[return-value]


def _image_like(i: int, rgb: bool | None) -> bool:
    return i == 1 or (i == 3 and rgb is not False)


def _mosaic_layout(i: int, kh: int, kw: int, max_px: int, pad: int) -> tuple[int, int, int, int]:
    """(kernels shown, rows, cols, gap) of one filter's mosaic of ``i`` kernels, at most ``max_px`` a side
    (but always at least one kernel)."""
    pad = 0 if (kh, kw) == (1, 1) else pad  # 1x1: a gap would make every other pixel background
    fit_c, fit_r = max(1, (max_px + pad) // (kw + pad)), max(1, (max_px + pad) // (kh + pad))
    cols = min(math.ceil(math.sqrt(i)), fit_c)
    rows = min(math.ceil(i / cols), fit_r)
    return min(i, rows * cols), rows, cols, pad


def tile_size(shape: Sequence[int], max_px: int = MAX_MOSAIC, pad: int = 1, rgb: bool | None = None) -> tuple[int, int]:
    """(h, w) in px of one filter's tile for weights of ``shape`` [O, I, kh, kw] (before enlargement)."""
    _, i, kh, kw = shape
    if _image_like(i, rgb):
        return kh, kw
    _, rows, cols, pad = _mosaic_layout(i, kh, kw, max_px, pad)
    return rows * (kh + pad) - pad, cols * (kw + pad) - pad


def filter_tiles(
    weight: torch.Tensor, scale: float, pad: int = 1, max_px: int = MAX_MOSAIC, rgb: bool | None = None
) -> torch.Tensor:
    """Float tiles [O, 3, h, w] in [0, 1], one per filter (see the module docstring)."""
    o, i, kh, kw = _shape(weight)
    w = torch.nan_to_num(weight.detach().to("cpu", torch.float32) / scale)  # a new tensor: the input stays as it was
    if _image_like(i, rgb):
        tiles = (0.5 + 0.5 * w).clamp(0, 1)
        return tiles.expand(o, 3, kh, kw).clone() if i == 1 else tiles
    n, rows, cols, pad = _mosaic_layout(i, kh, kw, max_px, pad)
    cells = torch.full((o, rows * cols, kh + pad, kw + pad, 3), _GAP)
    cells[:, :n, :kh, :kw] = _diverging(w[:, :n])
    # [O, rows, cols, y, x, 3] -> [O, 3, rows, y, cols, x]: kernel (r, c) lands at (r*(kh+pad), c*(kw+pad))
    img = cells.view(o, rows, cols, kh + pad, kw + pad, 3).permute(0, 5, 1, 3, 2, 4)
    img = img.reshape(o, 3, rows * (kh + pad), cols * (kw + pad))
    return img[..., : img.shape[-2] - pad, : img.shape[-1] - pad].contiguous()


def upscale(img: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour enlargement of [..., H, W] so 3x3 kernels stay crisp in a browser."""
    return img.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def _fit_zoom(zoom: int, rows: int, cols: int, th: int, tw: int, max_side: int) -> int:
    """The largest enlargement <= ``zoom`` that keeps a make_grid of rows x cols tiles (2 px padding) in max_side."""
    fit = min(((max_side - 2) // rows - 2) // th, ((max_side - 2) // cols - 2) // tw)
    return max(1, min(zoom, fit))


def filter_grid(
    weight: torch.Tensor,
    scale: float,
    nrow: int | None = None,
    zoom: int | None = None,
    max_side: int = MAX_SIDE,
    rgb: bool | None = None,
) -> torch.Tensor:
    """uint8 [3, H, W], H and W <= ``max_side``: every filter of a layer as a grid of tiles (``nrow`` per row).

    A wide layer's mosaics shrink so that every filter fits (showing each filter's first input channels);
    only when even one kernel per filter does not fit are the first filters shown (module docstring)."""
    o, i, kh, kw = _shape(weight)
    nrow = min(nrow or math.ceil(math.sqrt(o)), o)
    budget = min(MAX_MOSAIC, (max_side - 2) // max(nrow, math.ceil(o / nrow)) - 2)
    th, tw = tile_size((o, i, kh, kw), budget, rgb=rgb)
    nrow = max(1, min(nrow, (max_side - 2) // (tw + 2)))
    shown = min(o, nrow * max(1, (max_side - 2) // (th + 2)))
    tiles = filter_tiles(weight[:shown], scale, max_px=budget, rgb=rgb)
    zoom = _fit_zoom(zoom or max(1, 48 // max(th, tw)), math.ceil(shown / nrow), nrow, th, tw, max_side)
    return to_uint8(make_grid(upscale(tiles, zoom), nrow=nrow, padding=2, pad_value=1.0))


def _spread(n: int, k: int) -> list[int]:
    """``k`` evenly spaced indices of range(n), first and last included (all of them when n <= k)."""
    if n <= k:
        return list(range(n))
    if k == 1:
        return [n - 1]
    return [round(j * (n - 1) / (k - 1)) for j in range(k)]


def evolution_strip(
    weights: Sequence[torch.Tensor],
    scale: float,
    max_filters: int = 16,
    max_side: int = MAX_SIDE,
    rgb: bool | None = None,
) -> torch.Tensor:
    """uint8 [3, H, W], H and W <= ``max_side``: rows = the first ``max_filters`` filters, columns = epochs
    in order (evenly spaced epochs, first and last kept, when there are more than fit)."""
    o, i, kh, kw = _shape(weights[0])
    e, f = len(weights), min(max_filters, o)
    budget = min(MAX_MOSAIC, (max_side - 2) // max(e, f) - 2)
    th, tw = tile_size((o, i, kh, kw), budget, rgb=rgb)
    f = max(1, min(f, (max_side - 2) // (th + 2)))
    picks = _spread(e, max(1, (max_side - 2) // (tw + 2)))
    per_epoch = [filter_tiles(weights[k][:f], scale, max_px=budget, rgb=rgb) for k in picks]  # E x [F, 3, h, w]
    stacked = torch.stack(per_epoch, dim=1).flatten(0, 1)  # filter-major: [F*E, 3, h, w]
    zoom = _fit_zoom(max(1, 32 // max(th, tw)), f, len(picks), th, tw, max_side)
    return to_uint8(make_grid(upscale(stacked, zoom), nrow=len(picks), padding=2, pad_value=1.0))
