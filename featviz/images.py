"""Image tensors in and out: uint8 conversion, normalization, PNG/GIF bytes.

In: images as uint8 [C, H, W] / [N, C, H, W], or float in 0..1. Out: the same images as uint8, as the
model's normalized input, or as file bytes. The one place these conversions are written.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """Float in 0..1 (clamped) -> uint8 by rounding; uint8 passes through."""
    if img.dtype == torch.uint8:
        return img
    return (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


class Normalizer:
    """Images -> the model's normalized input ``(x - mean) / std`` on ``device``, in the given memory format.

    uint8 input is scaled by 1/255 first (folded into the constants); float input is taken as 0..1.
    Differentiable for float input, so activation maximization can optimize through it.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        channels_last: bool = False,
    ) -> None:
        m = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.mean, self.inv_std = m, 1.0 / s
        self._mean255, self._inv255 = m * 255.0, 1.0 / (s * 255.0)
        self.device = torch.device(device)
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            out = (x.float() - self._mean255) * self._inv255
        else:
            out = (x - self.mean) * self.inv_std
        return out.contiguous(memory_format=self.fmt)


def png_bytes(img: torch.Tensor) -> bytes:
    """uint8 [C, H, W] -> PNG bytes (lossless)."""
    arr = img.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def gif_bytes(frames: Sequence[torch.Tensor], ms_per_frame: int = 400) -> bytes:
    """uint8 [3, H, W] frames -> a looping animated GIF (the evolution of a layer over epochs)."""
    imgs = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=ms_per_frame, loop=0)
    return buf.getvalue()


def decode_png(data: bytes) -> torch.Tensor:
    """PNG (or any Pillow-readable) bytes -> uint8 [C, H, W]."""
    img = torch.from_numpy(np.array(Image.open(io.BytesIO(data))))
    return img.permute(2, 0, 1) if img.dim() == 3 else img[None]
