"""The data set the featviz.record tests train on: random images, flipped by torch's global generator."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class Flips(Dataset):
    """Random horizontal flips drawn from torch's global generator (a stream the recorder must not move)."""

    def __init__(self, n: int = 96, size: int = 12) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.rand(n, 3, size, size, generator=g)
        self.y = (self.x[:, 0].mean((1, 2)) > 0.5).long() + (self.x[:, 1].mean((1, 2)) > 0.5).long()
        self.classes = ["low", "mid", "high"]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        x = self.x[i]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.y[i]
