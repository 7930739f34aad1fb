"""Small networks whose wiring is known, shared by test_depth.py and test_wiring.py."""

from __future__ import annotations

import torch
from torch import nn


class Reuse(nn.Module):
    """a, then b twice (with ReLUs between), then c: b runs at depths 2 and 3."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.b(torch.relu(self.a(x)))))))


class Untraceable(nn.Module):
    """A forward with data-dependent control flow, which torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        h = self.a(x)
        return self.b(h) if bool(h.sum() > 0) else self.b(-h)
