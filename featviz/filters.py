"""Conv weights -> image tiles, with one colour scale per layer shared by every epoch.

Contract: functions take weight tensors [O, I, kh, kw] (any float dtype, never modified) and
return uint8 images [3, H, W] (or tiles [O, 3, h, w]).

* First layer (I = 3): each filter is an RGB tile, pixel = 0.5 + 0.5 * w / scale, so grey is 0.
  With I = 1 the tile is grey. This shows directly which colour and orientation a filter prefers.
* Deeper layers (I > 3): a filter is I separate kh x kw kernels, one per input channel. Each filter
  becomes a mosaic of its I kernels (rows of ceil(sqrt(I)) kernels) drawn with a diverging map
  (blue < 0 < red, white at 0). Nothing is averaged away: every weight is one pixel.
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


def layer_scale(weights: Sequence[torch.Tensor], q: float = 0.995) -> float:
    """One symmetric scale for a layer: the ``q`` quantile of |w| over every epoch (1.0 if all zero)."""
    flat = torch.cat([w.detach().abs().flatten().float() for w in weights])
    if flat.numel() > 4_000_000:  # torch.quantile's input limit; an even subsample is plenty
        flat = flat[:: flat.numel() // 4_000_000 + 1]
    m = float(torch.quantile(flat, q))
    return m if m > 0 else 1.0


def _diverging(v: torch.Tensor) -> torch.Tensor:
    """Values in [-1, 1], shape [...], -> RGB in [0, 1], shape [..., 3]: white at 0."""
    a = v.clamp(-1, 1).unsqueeze(-1)
    white = torch.ones(3)
    return torch.where(a < 0, white + (-a) * (_NEG - white), white + a * (_POS - white))


def filter_tiles(weight: torch.Tensor, scale: float, pad: int = 1) -> torch.Tensor:
    """Float tiles [O, 3, h, w] in [0, 1], one per filter (see the module docstring)."""
    w = weight.detach().to("cpu", torch.float32) / scale
    o, i, kh, kw = w.shape
    if i in (1, 3):
        tiles = (0.5 + 0.5 * w).clamp(0, 1)
        return tiles.expand(o, 3, kh, kw).clone() if i == 1 else tiles
    cols = math.ceil(math.sqrt(i))
    rows = math.ceil(i / cols)
    rgb = _diverging(w)  # [O, I, kh, kw, 3]
    out = torch.full((o, 3, rows * (kh + pad) - pad, cols * (kw + pad) - pad), 0.85)
    for c in range(i):
        r, q = divmod(c, cols)
        y, x = r * (kh + pad), q * (kw + pad)
        out[:, :, y:y + kh, x:x + kw] = rgb[:, c].permute(0, 3, 1, 2)
    return out


def upscale(img: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour enlargement of [..., H, W] so 3x3 kernels stay crisp in a browser."""
    return img.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def filter_grid(weight: torch.Tensor, scale: float, nrow: int | None = None, zoom: int | None = None) -> torch.Tensor:
    """uint8 [3, H, W]: every filter of a layer as a grid of tiles (``nrow`` tiles per row)."""
    tiles = filter_tiles(weight, scale)
    zoom = zoom or max(1, 48 // max(tiles.shape[-2:]))
    nrow = nrow or math.ceil(math.sqrt(len(tiles)))
    grid = make_grid(upscale(tiles, zoom), nrow=nrow, padding=2, pad_value=1.0)
    return to_uint8(grid)


def evolution_strip(weights: Sequence[torch.Tensor], scale: float, max_filters: int = 16) -> torch.Tensor:
    """uint8 [3, H, W]: rows = the first ``max_filters`` filters, columns = epochs in order."""
    per_epoch = [filter_tiles(w[:max_filters], scale) for w in weights]  # E x [F, 3, h, w]
    stacked = torch.stack(per_epoch, dim=1).flatten(0, 1)  # filter-major: [F*E, 3, h, w]
    zoom = max(1, 32 // max(stacked.shape[-2:]))
    grid = make_grid(upscale(stacked, zoom), nrow=len(weights), padding=2, pad_value=1.0)
    return to_uint8(grid)
