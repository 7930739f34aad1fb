"""How well each first-layer filter is described by a 2-D Gabor function: the oriented edges, bars and
colour-opponent blobs that CNNs trained on natural images learn in their first layer.

The model of a filter w [C, k, k] is a colour vector times one spatial Gabor,

    w[c, y, x] ~ a[c] * exp(-(u^2 + (g v)^2) / (2 s^2)) * cos(2 pi u / l + p),
    u = (x - x0) cos t + (y - y0) sin t,   v = -(x - x0) sin t + (y - y0) cos t,

with centre (x0, y0), orientation t, width s, aspect g, wavelength l and phase p fitted by least squares
(Adam from a grid of starts, the best kept), and the colour vector ``a`` solved exactly for each spatial
shape (an edge in one colour pair, a blob of opposite signs in two channels: both fit). A long wavelength
makes it a blob. The score is R^2 = 1 - residual / total sum of squares about the filter's mean; a filter
"is Gabor-like" at R^2 >= ``GOOD``. With 10 free numbers for a 5 x 5 x 3 filter (75 weights), white noise
scores about 0.25 (docs/metrics.md has the fit, its tests and its limits).
"""

from __future__ import annotations

import math

import torch

GOOD = 0.7  # R^2 from which a filter counts as Gabor-like
STEPS = 300  # Adam steps of each start


def _shapes(p: torch.Tensor, k: int) -> torch.Tensor:
    """Spatial Gabors [N, k, k] from parameters [N, 7] = x0, y0, angle, log width, log aspect, log wavelength,
    phase (pixels from the filter's centre)."""
    r = torch.arange(k, dtype=p.dtype) - (k - 1) / 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    x0, y0, t, ls, lg, ll, ph = (p[:, i, None, None] for i in range(7))
    dx, dy = x - x0, y - y0
    u = dx * torch.cos(t) + dy * torch.sin(t)
    v = -dx * torch.sin(t) + dy * torch.cos(t)
    s, g, lam = ls.exp(), lg.exp(), ll.exp()
    return torch.exp(-(u * u + (g * v) ** 2) / (2 * s * s)) * torch.cos(2 * math.pi * u / lam + ph)


def _residual(w: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Residual sum of squares of w [N, C, k, k] after the best colour vector for each shape [N, k, k]."""
    g = shape.flatten(1)  # [N, k*k]
    flat = w.flatten(2)  # [N, C, k*k]
    a = (flat @ g[:, :, None])[..., 0] / (g * g).sum(1, keepdim=True).clamp_min(1e-12)  # [N, C]
    fit = a[:, :, None] * g[:, None, :]
    return ((flat - fit) ** 2).sum((1, 2))


def _starts(k: int) -> torch.Tensor:
    """A grid of starting parameters: 4 orientations x 2 phases x 3 wavelengths, centred, width k/4."""
    rows = [
        [0.0, 0.0, t, math.log(k / 4), 0.0, math.log(lam), ph]
        for t in (0, math.pi / 4, math.pi / 2, 3 * math.pi / 4)
        for ph in (0.0, math.pi / 2)
        for lam in (k / 2, k, 4 * k)
    ]
    return torch.tensor(rows, dtype=torch.float64)


def gabor_r2(weights: torch.Tensor, steps: int = STEPS) -> torch.Tensor:
    """R^2 of the best colour-times-Gabor fit of each filter in ``weights`` [N, C, k, k] (square k >= 3);
    0 for an all-constant filter. Deterministic: fixed starts, no random draws."""
    if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2] or weights.shape[-1] < 3:
        raise ValueError(f"gabor_r2 needs square filters [N, C, k, k] with k >= 3, got {list(weights.shape)}")
    w = weights.detach().double()
    w = w - w.mean((1, 2, 3), keepdim=True)  # R^2 about the filter's mean, as for any regression with an offset
    total = (w * w).sum((1, 2, 3))
    n, k = w.shape[0], w.shape[-1]
    starts = _starts(k)
    ws = w.repeat_interleave(len(starts), 0)
    params = starts.repeat(n, 1).clone().requires_grad_(True)
    opt = torch.optim.Adam([params], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = _residual(ws, _shapes(params, k)).sum()
        loss.backward()
        opt.step()
        with torch.no_grad():  # keep the centre on the filter and the width and wavelength sensible
            params[:, :2].clamp_(-k / 2, k / 2)
            params[:, 3].clamp_(math.log(0.5), math.log(2.0 * k))
            params[:, 4].clamp_(math.log(0.25), math.log(4.0))
            params[:, 5].clamp_(math.log(2.0), math.log(8.0 * k))
    with torch.no_grad():
        best = _residual(ws, _shapes(params, k)).view(n, len(starts)).amin(1)
    return torch.where(total > 0, 1 - best / torch.where(total > 0, total, 1.0), torch.zeros_like(total)).clamp_min(0)


def gabor_share(weights: torch.Tensor, good: float = GOOD) -> float:
    """The fraction of filters in ``weights`` [N, C, k, k] whose ``gabor_r2`` is at least ``good``."""
    return float((gabor_r2(weights) >= good).double().mean())
