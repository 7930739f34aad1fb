"""Image parametrizations: what the optimizer actually changes.

Contract: a parametrization returns ``(params, image_fn)``: ``params`` is a list of leaf tensors
(``requires_grad=True``) to hand to the optimizer, ``image_fn()`` builds the current images
``Tensor[B, image_channels, H, W]`` with values in (0, 1) (a sigmoid keeps them there),
differentiably. Everything lives on ``device``. Initial values come from CPU ``torch.Generator``s,
one per batch element: ``seed`` is an int (element b is seeded ``element_seed(seed, b)``) or one
seed per element (the renderer passes these so that batched and single renders agree).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from featviz.checks import is_int
from featviz.errors import ConfigError
from featviz.optvis.rng import PARAM_STREAM, element_seed, generator

Param = tuple[list[Tensor], Callable[[], Tensor]]

__all__ = [
    "Param",
    "pixel",
    "fourier",
    "color_matrix",
    "color_matrix_or_none",
    "check_color",
    "spectrum_scale",
    "element_seeds",
]


def element_seeds(batch: int, seed: int | Sequence[int]) -> list[int]:
    """One parameter-init seed per element: ``element_seed(seed, b)`` for an int, else ``seed`` as given."""
    if isinstance(seed, int):
        return [element_seed(seed, b, PARAM_STREAM) for b in range(batch)]
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
        raise ConfigError(f"{len(seeds)} seeds given for a batch of {batch}")
    return seeds


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if is_int(size):
        size = (size, size)
    if not (isinstance(size, Sequence) and len(size) == 2 and all(is_int(v) for v in size)):
        raise ConfigError(f"image size must be an integer or (height, width) integers, got {size!r}")
    h, w = size
    if h < 2 or w < 2:
        raise ConfigError(f"image size must be at least 2x2 px, got {h}x{w}")
    return int(h), int(w)


def _check(batch: int, image_channels: int) -> None:
    if not is_int(image_channels):
        raise ConfigError(f"image_channels must be an integer (the colour channel count), got {image_channels!r}")
    if batch < 1 or image_channels < 1:
        raise ConfigError(f"batch and image_channels must be >= 1, got {batch} and {image_channels}")


def _randn(shape: tuple[int, ...], seeds: list[int], sd: float, device: torch.device | None) -> Tensor:
    """[len(seeds), *shape] normal values * sd, element b from its own generator; a leaf on ``device``."""
    x = torch.stack([torch.randn(shape, generator=generator(s)) for s in seeds]) * sd
    return x.to(device).requires_grad_(True)


def pixel(
    batch: int,
    image_channels: int,
    size: int | Sequence[int],
    seed: int | Sequence[int] = 0,
    color: Tensor | None = None,
    device: torch.device | str | None = None,
    sd: float = 0.01,
) -> Param:
    """Images = sigmoid(color @ logits), logits [B, C, H, W] ~ N(0, sd): starts as flat grey (0.5)."""
    _check(batch, image_channels)
    h, w = _hw(size)
    dev = torch.device(device or "cpu")
    logits = _randn((image_channels, h, w), element_seeds(batch, seed), sd, dev)
    mix = check_color(color, image_channels, dev)

    def image_fn() -> Tensor:
        return torch.sigmoid(logits if mix is None else torch.einsum("ij,bjhw->bihw", mix, logits))

    return [logits], image_fn


def spectrum_scale(h: int, w: int, decay_power: float = 1.0) -> Tensor:
    """Per-frequency scale [H, W//2 + 1]: ``1 / max(f, 1/max(H, W)) ** decay_power``, RMS 1.

    ``f`` is the frequency in cycles per pixel. With the orthonormal FFT and an RMS of 1, unit
    random coefficients give pixels of about unit variance at every size and decay power.
    """
    fy = torch.fft.fftfreq(h).abs().view(-1, 1)
    fx = torch.fft.rfftfreq(w).view(1, -1)
    f = torch.sqrt(fx * fx + fy * fy).clamp_min(1.0 / max(h, w))
    scale = f.pow(-float(decay_power))
    return scale / scale.pow(2).mean().sqrt()


def check_color(
    color: Tensor | Sequence[Sequence[float]] | None, image_channels: int, device: torch.device
) -> Tensor | None:
    """``color`` as a float32 [C, C] tensor on ``device`` (None stays None); ConfigError if it is not one."""
    if color is None:
        return None
    try:
        color = torch.as_tensor(color, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"colour matrix must be a [{image_channels}, {image_channels}] array of numbers") from None
    if color.shape != (image_channels, image_channels):
        raise ConfigError(f"colour matrix must be [{image_channels}, {image_channels}], got {list(color.shape)}")
    if not torch.isfinite(color).all():
        raise ConfigError("colour matrix has non-finite entries")
    return color.to(device)


def fourier(
    batch: int,
    image_channels: int,
    size: int | Sequence[int],
    seed: int | Sequence[int] = 0,
    decay_power: float = 1.0,
    color: Tensor | None = None,
    device: torch.device | str | None = None,
    sd: float = 0.01,
) -> Param:
    """Images = sigmoid(color @ irfft2(spectrum * scale)); spectrum [B, C, H, W//2+1, 2] ~ N(0, sd).

    ``color`` [C, C] mixes decorrelated channels into image channels (``color_matrix`` of the
    training data; None = identity). Output [B, C, H, W] in (0, 1).
    """
    _check(batch, image_channels)
    h, w = _hw(size)
    dev = torch.device(device or "cpu")
    spec = _randn((image_channels, h, w // 2 + 1, 2), element_seeds(batch, seed), sd, dev)
    scale = spectrum_scale(h, w, decay_power).to(dev)
    mix = check_color(color, image_channels, dev)

    def image_fn() -> Tensor:
        x = torch.fft.irfft2(torch.view_as_complex(spec) * scale, s=(h, w), norm="ortho")
        if mix is not None:
            x = torch.einsum("ij,bjhw->bihw", mix, x)
        return torch.sigmoid(x)

    return [spec], image_fn


def color_matrix(images: Tensor, max_pixels: int = 2_000_000) -> Tensor:
    """Square root of the channel covariance of ``images`` [N, C, H, W] (uint8 0..255 or float 0..1).

    Returns the symmetric root ``S`` [C, C] (``S @ S = cov``, from an eigendecomposition in float64)
    divided by its largest column norm, so the largest entry-wise colour scale is 1. One channel
    gives ``[[1.]]``. At most ``max_pixels`` pixels (an even subsample of images) are used.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.numel() == 0:
        raise ConfigError("color_matrix needs a non-empty image tensor [N, C, H, W]")
    c = images.shape[1]
    if c == 1:
        return torch.ones(1, 1)
    step = max(1, images.shape[0] * images.shape[2] * images.shape[3] // max_pixels)
    x = images[::step].to(torch.float64)
    if images.dtype == torch.uint8:
        x = x / 255.0
    px = x.transpose(0, 1).reshape(c, -1)  # [C, pixels]
    px = px - px.mean(1, keepdim=True)
    cov = px @ px.T / max(px.shape[1] - 1, 1)
    evals, evecs = torch.linalg.eigh(cov)
    root = evecs @ torch.diag(evals.clamp_min(0).sqrt()) @ evecs.T
    norm = root.norm(dim=0).max()
    if not torch.isfinite(norm) or norm <= 0:
        raise ConfigError("images have no colour variance; cannot build a colour matrix")
    return (root / norm).float()


def color_matrix_or_none(images: Tensor, max_images: int = 5000) -> list[list[float]] | None:
    """``color_matrix`` of an even subsample of at most about ``max_images`` of ``images`` (folders come
    class by class) as lists, for run.json; None when the images have no colour variance."""
    try:
        return color_matrix(images[:: max(1, len(images) // max_images)]).tolist()
    except ConfigError:
        return None
