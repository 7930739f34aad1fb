"""The in-memory image data set every source returns.

Images are kept as uint8 tensors [N, C, H, W] (0..255) and normalized per batch on the training
device; that keeps 20k-60k small images in a few hundred MB and makes batch order a pure function
of a seeded permutation (exact resume, byte-identical reruns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from featviz.run.schema import DataInfo


@dataclass(frozen=True)
class ImageData:
    name: str  # data set name as given by the user (e.g. "shapes", "mnist", "folder:/x")
    train_x: torch.Tensor  # uint8 [N, C, H, W]
    train_y: torch.Tensor  # int64 [N], class index
    val_x: torch.Tensor  # uint8 [M, C, H, W]
    val_y: torch.Tensor  # int64 [M]
    classes: tuple[str, ...]  # class names, index = label
    mean: tuple[float, ...]  # per-channel mean of train_x / 255
    std: tuple[float, ...]  # per-channel std of train_x / 255

    @property
    def image_channels(self) -> int:
        """Colour channels of the images (1 grey, 3 RGB)."""
        return int(self.train_x.shape[1])

    @property
    def size(self) -> int:
        return int(self.train_x.shape[-1])

    def describe(self, color_matrix: list[list[float]] | None = None) -> DataInfo:
        """What run.json records of the data; ``color_matrix``: activation maximization's colour basis."""
        return DataInfo(
            name=self.name,
            classes=tuple(self.classes),
            image_channels=self.image_channels,
            size=self.size,
            n_train=int(self.train_x.shape[0]),
            n_val=int(self.val_x.shape[0]),
            mean=tuple(round(m, 6) for m in self.mean),
            std=tuple(round(s, 6) for s in self.std),
            color_matrix=None if color_matrix is None else tuple(tuple(r) for r in color_matrix),
        )


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images [N, C, H, W], on the 0..1 scale (float64 sums)."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    for chunk in x.split(4096):
        f = chunk.to(torch.float64) / 255.0
        total += f.sum(dim=(0, 2, 3))
        total_sq += (f * f).sum(dim=(0, 2, 3))
        count += f.shape[0] * f.shape[2] * f.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(float(m) for m in mean), tuple(max(float(s), 1e-3) for s in std)


CHUNK = 2048  # images a generated set renders at once
Render = Callable[..., torch.Tensor]  # (labels, size, generator, keep=None) -> uint8 images of the kept rows


def generate_split(
    render: Render, n: int, classes: int, size: int, seed: int, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of a generated set: ``n`` balanced labels in a seeded random order and their images (uint8
    [n, 3, size, size]), rendered ``CHUNK`` at a time from one generator seeded ``seed``. With ``keep`` (indices
    into the split), only those images and labels, in ``keep``'s order, with the same bytes as in the whole split:
    every chunk still draws all of its random numbers (``render`` draws them before it computes anything) but
    computes only its kept rows, so a few images cost a fraction of the split."""
    g = torch.Generator().manual_seed(seed)
    label = (torch.arange(n) % classes)[torch.randperm(n, generator=g)]
    if keep is None:
        return torch.cat([render(lab, size, g) for lab in label.split(CHUNK)]), label
    keep = torch.as_tensor(keep, dtype=torch.long)
    if len(keep) and (int(keep.min()) < 0 or int(keep.max()) >= n):
        raise ValueError(f"generate_split: keep holds indices outside 0..{n - 1}")
    want, back = torch.unique(keep, sorted=True, return_inverse=True)
    parts = []
    for start, lab in zip(range(0, max(n, 1), CHUNK), label.split(CHUNK)):
        local = want[(want >= start) & (want < start + len(lab))] - start
        parts.append(render(lab, size, g, local))
    return torch.cat(parts)[back], label[keep]
