"""Random image transforms that make activation-maximization images robust (fewer adversarial patterns).

Contract: a transform factory takes its configuration and returns a transform,
``images[B, C, H, W] -> images[B, C, H', W']``: inputs in [0, 1], outputs in [0, 1], inputs never
modified in place, every step differentiable, and each batch element gets its OWN random draw.
Randomness comes from ``rng``: an int seed or a ``torch.Generator`` (one stream shared by the batch)
or a :class:`featviz.optvis.rng.ElementRandom` (one stream per element, as the renderer uses). Every
random transform draws the same count of numbers per call, whatever its settings, so streams stay
aligned. Scale, rotation, translation and padding are one per-element affine map applied in a single
``F.grid_sample`` pass (:class:`RandomAffine`); ``standard(size)`` is the default recipe.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from featviz.checks import is_int
from featviz.errors import ConfigError
from featviz.optvis.rng import RandomSource, SharedRandom

Transform = Callable[[Tensor], Tensor]
_MODES = {"reflect": "reflection", "edge": "border", "replicate": "border", "constant": "zeros"}

__all__ = [
    "Transform",
    "RandomAffine",
    "pad",
    "jitter",
    "random_scale",
    "random_rotate",
    "compose",
    "identity",
    "standard",
    "standard_settings",
]


def _source(rng: RandomSource | torch.Generator | int | None) -> RandomSource:
    if rng is None or isinstance(rng, (int, torch.Generator)):
        return SharedRandom(0 if rng is None else rng)
    return rng


def _finite(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {v!r}")
    return float(v)


def _pixels(px: object) -> int:
    if not is_int(px) or px < 0:
        raise ConfigError(f"pad must be a whole number of pixels >= 0, got {px!r}")
    return int(px)


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ConfigError(f"unknown pad mode {mode!r}; choose one of {', '.join(_MODES)}")


def identity(images: Tensor) -> Tensor:
    """The no-op transform."""
    return images


class RandomAffine:
    """Per-element random scale, rotation and translation plus padding, in ONE grid_sample.

    images [B, C, H, W] -> [B, C, H + 2*pad, W + 2*pad]; element b is scaled by s ~ U(lo, hi),
    rotated by U(-degrees, degrees) about the centre and shifted by U(-translate, translate) px
    on each axis. Pixels that come from outside the image follow ``mode`` (reflect | edge |
    constant with ``value``). With all settings at their neutral values the output equals the input.
    """

    def __init__(
        self,
        scale: tuple[float, float] = (1.0, 1.0),
        degrees: float = 0.0,
        translate: float = 0.0,
        pad: int = 0,
        mode: str = "reflect",
        value: float = 0.5,
        rng: RandomSource | torch.Generator | int | None = None,
    ) -> None:
        _check_mode(mode)
        if not (isinstance(scale, (tuple, list)) and len(scale) == 2):
            raise ConfigError(f"scale is a (lo, hi) range, got {scale!r}")
        lo, hi = _finite("scale", scale[0]), _finite("scale", scale[1])
        if not 0 < lo <= hi:
            raise ConfigError(f"scale range must satisfy 0 < lo <= hi, got ({lo}, {hi})")
        degrees, translate, value = (
            _finite("degrees", degrees),
            _finite("translate", translate),
            _finite("value", value),
        )
        _pixels(pad)
        if degrees < 0 or translate < 0:
            raise ConfigError("degrees and translate must be >= 0")
        self.lo, self.hi, self.degrees = float(lo), float(hi), float(degrees)
        self.translate, self.pad = float(translate), int(pad)
        self.mode, self.value, self.rng = mode, float(value), _source(rng)

    def theta(self, batch: int, h: int, w: int, device: torch.device) -> Tensor:
        """Affine matrices [B, 2, 3] mapping output to input normalized coordinates (align_corners=False)."""
        u = self.rng.uniform(batch, 4, device)
        s = self.lo + (self.hi - self.lo) * u[:, 0]
        ang = math.radians(self.degrees) * (2 * u[:, 1] - 1)
        cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
        ho, wo = h + 2 * self.pad, w + 2 * self.pad
        # normalized -> pixel (x D_out), rotate/scale in pixels, pixel -> normalized (/ D_in)
        row0 = torch.stack([cos * wo / w, -sin * ho / w, self.translate * (2 * u[:, 2] - 1) * 2 / w], 1)
        row1 = torch.stack([sin * wo / h, cos * ho / h, self.translate * (2 * u[:, 3] - 1) * 2 / h], 1)
        return torch.stack([row0, row1], 1)

    def grid(self, theta: Tensor, h: int, w: int) -> Tensor:
        """Sampling grid [B, H', W', 2], like ``F.affine_grid(theta, ..., align_corners=False)``.

        Built by broadcasting (3 multiply-adds per coordinate) instead of affine_grid's batched
        matmul, which is several times slower on CPU for these shapes.
        """
        ho, wo = h + 2 * self.pad, w + 2 * self.pad
        xs = (torch.arange(wo, device=theta.device, dtype=theta.dtype) * 2 + 1) / wo - 1  # pixel centres
        ys = (torch.arange(ho, device=theta.device, dtype=theta.dtype) * 2 + 1) / ho - 1
        t = theta[:, :, :, None, None]  # [B, 2, 3, 1, 1]
        g = t[:, :, 0] * xs.view(1, 1, 1, wo) + t[:, :, 1] * ys.view(1, 1, ho, 1) + t[:, :, 2]  # [B, 2, H', W']
        return g.permute(0, 2, 3, 1)

    def __call__(self, images: Tensor) -> Tensor:
        b, c, h, w = images.shape
        theta = self.theta(b, h, w, images.device).to(images.dtype)
        grid = self.grid(theta, h, w)
        shift = self.value if self.mode == "constant" else 0.0  # grid_sample pads with 0: pad (x - v) + v
        out = F.grid_sample(
            images - shift if shift else images,
            grid,
            mode="bilinear",
            padding_mode=_MODES[self.mode],
            align_corners=False,
        )
        return out + shift if shift else out


def pad(px: int, mode: str = "reflect", value: float = 0.5) -> Transform:
    """Pad every side by ``px``: [B, C, H, W] -> [B, C, H + 2px, W + 2px] (reflect | edge | constant)."""
    _check_mode(mode)
    px = _pixels(px)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "replicate": "replicate", "constant": "constant"}[mode]

    def t(images: Tensor) -> Tensor:
        if px == 0:
            return images
        if mode == "reflect" and px >= min(images.shape[-2:]):
            raise ConfigError(f"reflect pad {px} needs images larger than {px} px")
        kw = {"value": value} if mode == "constant" else {}
        return F.pad(images, (px, px, px, px), mode=torch_mode, **kw)

    return t


def jitter(px: float, rng: RandomSource | torch.Generator | int | None = None) -> Transform:
    """Shift each element by U(-px, px) pixels on each axis (sub-pixel, reflected borders); same size."""
    return RandomAffine(translate=px, rng=rng)


def random_scale(lo: float, hi: float, rng: RandomSource | torch.Generator | int | None = None) -> Transform:
    """Scale each element about its centre by U(lo, hi); same size, reflected borders."""
    return RandomAffine(scale=(lo, hi), rng=rng)


def random_rotate(degrees: float, rng: RandomSource | torch.Generator | int | None = None) -> Transform:
    """Rotate each element about its centre by U(-degrees, degrees); same size, reflected borders."""
    return RandomAffine(degrees=degrees, rng=rng)


def compose(*transforms: Transform) -> Transform:
    """Apply ``transforms`` left to right."""
    ts = tuple(transforms)

    def t(images: Tensor) -> Tensor:
        for f in ts:
            images = f(images)
        return images

    return t


def standard_settings(size: int | Sequence[int]) -> dict[str, float | int | list[float] | str]:
    """The default recipe's numbers for images of side ``size`` (pixel amounts scale with size/32).

    Jitter 2 px, scale 0.95-1.05, rotation +-5 degrees at 32 px (Lucid's recipe scaled down from
    224 px), reflected borders. Lucid's "pad" is realised by the reflection: pixels that jitter,
    rotation or scale pull in from outside the image are the mirrored image, as a reflect pad then a
    crop would give, and the output keeps the input size (``pad`` = 0 extra pixels). Why not an
    enlarging pad: ``benchmarks/README.md``.
    """
    side = max(size) if isinstance(size, Sequence) else int(size)
    k = side / 32
    return {"pad": 0, "jitter": round(2 * k, 3), "scale": [0.95, 1.05], "degrees": 5.0, "mode": "reflect"}


def standard(size: int | Sequence[int], rng: RandomSource | torch.Generator | int | None = None) -> Transform:
    """The default transform for ``size`` px images: one fused RandomAffine (see ``standard_settings``)."""
    s = standard_settings(size)
    return RandomAffine(
        scale=tuple(s["scale"]), degrees=s["degrees"], translate=s["jitter"], pad=s["pad"], mode=s["mode"], rng=rng
    )
