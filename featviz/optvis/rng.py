"""Per-element random streams, so a batched render equals the same renders done one at a time.

Contract: batch element b draws ALL its randomness (initial parameters, every transform) from
generators seeded by ``element_seed(seed, key_b, stream)``, where ``key_b`` names the element
(``maximize_channels`` uses the channel index). Element b's numbers therefore depend only on
(seed, key_b), never on the batch size or on b's position in the batch.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch import Tensor

from featviz.checks import is_int
from featviz.errors import ConfigError

_MASK = (1 << 64) - 1
PARAM_STREAM, TRANSFORM_STREAM = 0, 1


def _mix64(z: int) -> int:
    """A 64-bit integer finalizer (xor-shift-multiply): nearby inputs give unrelated outputs."""
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK
    return z ^ (z >> 31)


def element_seed(seed: int, key: int, stream: int = PARAM_STREAM) -> int:
    """Seed (0 .. 2**63-1) for batch element ``key`` of a render seeded ``seed``, for one ``stream``."""
    z = _mix64((int(seed) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _MASK)
    z = _mix64((z + int(key) * 0xD1B54A32D192ED03 + 1) & _MASK)
    z = _mix64((z + int(stream) * 0x8CB92BA72F3D8DD7 + 1) & _MASK)
    return z & ((1 << 63) - 1)


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded ``seed`` (CPU so the numbers are the same on every device); a seed that is
    not a signed 64-bit integer is a ConfigError."""
    if not is_int(seed) or not -(1 << 63) <= seed < (1 << 63):
        raise ConfigError(f"seed must be an integer in [-2**63, 2**63), got {seed!r}")
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


class RandomSource(Protocol):
    """Anything that hands out uniform [0, 1) numbers for a batch: ``uniform(batch, k) -> [batch, k]``."""

    def uniform(self, batch: int, k: int, device: torch.device) -> Tensor: ...


class SharedRandom:
    """One generator for the whole batch (the simple case: reproducible, but depends on batch size)."""

    def __init__(self, seed: int | torch.Generator = 0) -> None:
        self.gen = seed if isinstance(seed, torch.Generator) else generator(seed)

    def uniform(self, batch: int, k: int, device: torch.device) -> Tensor:
        return torch.rand(batch, k, generator=self.gen).to(device)


class ElementRandom:
    """One generator per batch element, seeded ``seeds[b]``.

    Numbers are drawn ahead in blocks of ``block`` per element (one call per element per block,
    not per step) and served as slices, so transforms add no per-element Python work per step.
    """

    def __init__(self, seeds: Sequence[int], block: int = 4096) -> None:
        self.gens = [generator(s) for s in seeds]
        self.block = block
        self._buf: Tensor | None = None
        self._pos = 0

    def uniform(self, batch: int, k: int, device: torch.device) -> Tensor:
        if batch != len(self.gens):
            raise ValueError(f"random source made for {len(self.gens)} elements, asked for {batch}")
        if self._buf is None or self._pos + k > self._buf.shape[1] or self._buf.device != device:
            n = max(self.block, k)
            # Leftover numbers are dropped at a refill; every element drops the same count, so the
            # streams stay aligned whatever the batch.
            self._buf = torch.stack([torch.rand(n, generator=g) for g in self.gens]).to(device)
            self._pos = 0
        out = self._buf[:, self._pos : self._pos + k]
        self._pos += k
        return out
