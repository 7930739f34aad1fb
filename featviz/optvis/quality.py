"""How good is a set of activation-maximization images? Numbers to pick defaults by and to report.

Contract: functions take a model, a layer (dotted name), images [N, C, H, W] in [0, 1] and the
training normalization; they run in eval mode without gradients (``actmax.frozen``), stop the forward
pass at the layer, and return CPU tensors / floats; the model is left as found. The standardized
activation of image i is its channel's (``channels[i]``, default i) mean activation minus that
channel's mean over reference ``noise_images``, over their std: a z-score, comparable across
channels, layers and models. ``specificity`` is the fraction of channels whose own image is their
top image (``by="image"``: of images whose own channel is their top channel). ``transform`` and
``repeats`` score randomly transformed copies instead (robustness against adversarial patterns).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from featviz.checks import is_int
from featviz.errors import ConfigError
from featviz.optvis.forward import forward_until, frozen, model_device, model_dtype
from featviz.optvis.param import _hw, spectrum_scale
from featviz.optvis.rng import generator
from featviz.optvis.settings import normalizer
from featviz.optvis.transforms import Transform, identity

__all__ = ["channel_activations", "standardized_matrix", "standardized_activation", "specificity", "noise_images"]


def channel_activations(
    model: nn.Module,
    layer: str,
    images: Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 128,
    transform: Transform | None = None,
    repeats: int = 1,
) -> Tensor:
    """Channel-mean activation of ``layer`` on each image: images [N, C, H, W] in [0, 1] (or uint8 0..255,
    divided by 255 here) -> [N, K] float32.

    With ``transform`` (e.g. ``transforms.standard(size, rng=seed)``) each image is randomly
    transformed first and the activation averaged over ``repeats`` draws: a robustness measure.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] == 0:
        raise ConfigError("images must be a non-empty tensor [N, C, H, W]")
    if images.dtype == torch.uint8:
        images = images.float() / 255
    elif not images.is_floating_point():
        raise ConfigError(f"images must be floats in [0, 1] or uint8, got {str(images.dtype).replace('torch.', '')}")
    dev = model_device(model, None)
    norm = normalizer(mean, std, images.shape[1], dev)
    tf = transform or identity
    out = []
    with frozen(model), forward_until(model, [layer]) as run, torch.no_grad():
        for chunk in images.split(batch_size):
            acc = 0.0
            for _ in range(repeats if transform is not None else 1):
                act = run(norm(tf(chunk.to(dev, torch.float32))).to(model_dtype(model)))[layer]
                acc = acc + (act.flatten(2).mean(2) if act.dim() > 2 else act).float()
            out.append((acc / (repeats if transform is not None else 1)).cpu())
    return torch.cat(out)


def standardized_matrix(
    model: nn.Module,
    layer: str,
    images: Tensor,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    noise_images: Tensor,
    transform: Transform | None = None,
    repeats: int = 1,
) -> Tensor:
    """z-scores [N, K]: channel k's activation on image n, standardized by its noise-image statistics.

    ``transform``/``repeats`` apply to the rendered images only (see ``channel_activations``).
    """
    ref = channel_activations(model, layer, noise_images, mean, std)
    if ref.shape[0] < 2:
        raise ConfigError("need at least 2 noise images to estimate a spread")
    acts = channel_activations(model, layer, images, mean, std, transform=transform, repeats=repeats)
    return (acts - ref.mean(0)) / ref.std(0).clamp_min(1e-8)


def _own(z: Tensor, channels: Sequence[int] | None) -> Tensor:
    idx = torch.arange(z.shape[0]) if channels is None else torch.as_tensor(list(channels), dtype=torch.long)
    if idx.numel() != z.shape[0]:
        raise ConfigError(f"{idx.numel()} channels for {z.shape[0]} images")
    if idx.numel() and (idx.min() < 0 or idx.max() >= z.shape[1]):
        raise ConfigError(f"channel index out of range for a layer with {z.shape[1]} channels")
    return idx


def standardized_activation(
    model: nn.Module,
    layer: str,
    images: Tensor,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    noise_images: Tensor,
    channels: Sequence[int] | None = None,
    transform: Transform | None = None,
    repeats: int = 1,
) -> Tensor:
    """[N]: z-score of channel ``channels[i]`` (default i) on its own image i, against ``noise_images``."""
    z = standardized_matrix(model, layer, images, mean, std, noise_images, transform, repeats)
    idx = _own(z, channels)
    return z[torch.arange(z.shape[0]), idx]


def specificity(
    model: nn.Module,
    layer: str,
    images: Tensor,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    noise_images: Tensor,
    channels: Sequence[int] | None = None,
    by: str = "channel",
    transform: Transform | None = None,
    repeats: int = 1,
) -> float:
    """Fraction in [0, 1] of channels whose own image is their top image among ``images`` (``by="channel"``),
    or of images whose own channel is their top standardized channel in the layer (``by="image"``)."""
    z = standardized_matrix(model, layer, images, mean, std, noise_images, transform, repeats)
    idx = _own(z, channels)
    if by == "channel":
        hits = z[:, idx].argmax(0) == torch.arange(z.shape[0])  # column i: channel idx[i] over all images
    elif by == "image":
        hits = z.argmax(1) == idx
    else:
        raise ConfigError(f"unknown specificity mode {by!r}; use 'channel' or 'image'")
    return float(hits.float().mean())


def noise_images(n: int, image_channels: int, size: int | Sequence[int], seed: int = 0, kind: str = "pink") -> Tensor:
    """Reference images [n, image_channels, H, W] in (0, 1): ``pink`` (1/f spectrum, like natural images) or
    ``uniform``."""
    h, w = _hw(size)
    if not is_int(n) or not is_int(image_channels) or n < 1 or image_channels < 1:
        raise ConfigError(f"noise_images needs n >= 1 images of image_channels >= 1, got {n!r} and {image_channels!r}")
    g = generator(seed)
    if kind == "uniform":
        return torch.rand(n, image_channels, h, w, generator=g)
    if kind != "pink":
        raise ConfigError(f"unknown noise kind {kind!r}; use 'pink' or 'uniform'")
    spec = torch.randn(n, image_channels, h, w // 2 + 1, 2, generator=g)
    x = torch.fft.irfft2(torch.view_as_complex(spec) * spectrum_scale(h, w), s=(h, w), norm="ortho")
    return torch.sigmoid(x)
