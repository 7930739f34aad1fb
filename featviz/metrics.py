"""Numbers behind the pictures (see SCIENCE.md). Tensors and configs in, numbers out; no files.

Weight statistics and CKA are computed in float64. Complexity metrics take one image [C, H, W].
"""

from __future__ import annotations

import math
import zlib
from typing import Sequence

import torch


def theoretical_receptive_fields(kernels: Sequence[int], strides: Sequence[int], pools: Sequence[bool]) -> list[int]:
    """Receptive field (px) of one unit at each conv depth's output: r = 1 + sum (k_l - 1) * prod_{m<l} s_m.

    Each depth is conv(k, s) followed, when pooled, by a 2x2 stride-2 max-pool; the field of depth d
    is taken at the conv output (before that depth's pool).
    """
    r, jump, out = 1, 1, []
    for k, s, pool in zip(kernels, strides, pools):
        r += (k - 1) * jump
        jump *= s
        out.append(r)
        if pool:
            r += (2 - 1) * jump
            jump *= 2
    return out


# ----------------------------------------------------------------------------- filter updates (float64)
def relative_change(w_prev: torch.Tensor, w_t: torch.Tensor) -> float:
    """||W_t - W_{t-1}||_F / ||W_{t-1}||_F in float64 (0 for identical snapshots; inf if W_{t-1} = 0)."""
    a, b = w_prev.detach().double(), w_t.detach().double()
    den = float(a.norm())
    num = float((b - a).norm())
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def rotation(w_ref: torch.Tensor, w_t: torch.Tensor) -> float:
    """1 - cos(W_t, W_ref) over the flattened weights, float64: 0 = same direction, 1 = orthogonal.

    Unlike the relative change it ignores scale, which BatchNorm after a conv makes meaningless.
    """
    a, b = w_ref.detach().double().flatten(), w_t.detach().double().flatten()
    den = float(a.norm() * b.norm())
    return 1.0 - float(a @ b) / den if den > 0 else 0.0


def per_filter_change(w_prev: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """Relative change of each filter: [O] float64 (a filter whose change stays ~0 is dead)."""
    a, b = w_prev.detach().double().flatten(1), w_t.detach().double().flatten(1)
    return (b - a).norm(dim=1) / a.norm(dim=1).clamp_min(1e-300)


# ----------------------------------------------------------------------------- representations
def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between activations x [N, D1] and y [N, D2] (same N examples), float64.

    CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) with column-centred X, Y (Kornblith et al. 2019):
    1 for identical representations, invariant to orthogonal transforms and isotropic scaling.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples: {x.shape[0]} vs {y.shape[0]} rows")
    a = x.detach().double().flatten(1)
    b = y.detach().double().flatten(1)
    a = a - a.mean(0, keepdim=True)
    b = b - b.mean(0, keepdim=True)
    den = float((a.T @ a).norm() * (b.T @ b).norm())
    return float((b.T @ a).norm() ** 2) / den if den > 0 else 0.0


# ----------------------------------------------------------------------------- image complexity
def zlib_bits_per_pixel(img: torch.Tensor) -> float:
    """zlib-compressed size (level 9) of the raw uint8 bytes of ``img`` [C, H, W], in bits per pixel.

    Counts all channels: ~0 for a constant image, ~8 x C for uniform noise (incompressible).
    Float images in [0, 1] are quantized to uint8 first. Raw bytes, not PNG files (SCIENCE.md).
    """
    if img.dtype != torch.uint8:
        img = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    c, h, w = img.shape
    raw = img.permute(1, 2, 0).contiguous().cpu().numpy().tobytes()  # interleaved, as image files store it
    return len(zlib.compress(raw, 9)) * 8 / (h * w)


def spectrum_slope(img: torch.Tensor) -> float:
    """Slope of log power vs log spatial frequency of the radially averaged power spectrum.

    ``img`` [C, H, W] (channels averaged to luminance). About -2 for natural images, 0 for white
    noise; steeper = smoother. The DC term and frequencies beyond the Nyquist circle are excluded.
    """
    x = img.detach().double()
    x = x / 255.0 if img.dtype == torch.uint8 else x
    g = x.mean(0)
    g = g - g.mean()
    h, w = g.shape
    power = torch.fft.fft2(g).abs() ** 2
    fy = torch.fft.fftfreq(h, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.fftfreq(w, dtype=torch.float64).view(1, -1)
    radius = torch.sqrt(fy ** 2 + fx ** 2) * min(h, w)  # in cycles per image
    bins = radius.round().long()
    nmax = min(h, w) // 2
    ks, ps = [], []
    for k in range(1, nmax + 1):
        sel = bins == k
        if sel.any():
            ks.append(math.log(k))
            ps.append(math.log(float(power[sel].mean()) + 1e-30))
    kt, pt = torch.tensor(ks), torch.tensor(ps)
    kc = kt - kt.mean()
    return float((kc * (pt - pt.mean())).sum() / (kc * kc).sum())
