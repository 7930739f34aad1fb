"""Numbers behind the pictures: pure computations, tensors (and, for layer statistics, a model) in,
numbers out; no files, no state kept. Receptive fields: ``featviz.receptive``.

Weight statistics and CKA are computed in float64. Complexity metrics take one image [C, H, W].
Definitions, known biases and the tests that pin each one to a known answer: docs/metrics.md.
"""

from __future__ import annotations

import math
import zlib

import torch
from torch import nn

from featviz.images import to_uint8
from featviz.model import measuring_passes


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
def _centred(x: torch.Tensor) -> torch.Tensor:
    a = x.detach().double().flatten(1)
    return a - a.mean(0, keepdim=True)


def hsic_unbiased(k: torch.Tensor, ell: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC (Song et al. 2012) of Gram matrices ``k``, ``ell`` [..., n, n] (batched over the
    leading dimensions), up to a constant factor that CKA cancels. Their diagonals are ignored."""
    n = k.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    k, ell = k.masked_fill(eye, 0), ell.masked_fill(eye, 0)
    t = (
        (k * ell).sum((-2, -1))
        + k.sum((-2, -1)) * ell.sum((-2, -1)) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (k.sum(-2) * ell.sum(-1)).sum(-1)
    )
    return t / (n * (n - 3))


def cka_of_grams(k: torch.Tensor, ell: torch.Tensor) -> torch.Tensor:
    """Debiased linear CKA from Gram matrices [..., n, n] of the same n examples (batched): HSIC(K, L) /
    sqrt(HSIC(K, K) HSIC(L, L)); 0 where either representation is constant. Needs n >= 4."""
    return _cka(hsic_unbiased(k, ell), hsic_unbiased(k, k), hsic_unbiased(ell, ell))


def _cka(kl: torch.Tensor, kk: torch.Tensor, ll: torch.Tensor) -> torch.Tensor:
    """HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), 0 where either self-HSIC is not positive (a constant)."""
    ok = (kk > 0) & (ll > 0)
    return torch.where(ok, kl / torch.where(ok, kk * ll, 1.0).sqrt(), 0.0)


def _hsic_of_features(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``hsic_unbiased(x x^T, y y^T)`` computed from the features x [..., n, c1], y [..., n, c2] without
    forming the n x n Gram matrices: O(n c1 c2) instead of O(n^2), for narrow features and many draws."""
    n = x.shape[-2]
    kd, ld = (x * x).sum(-1), (y * y).sum(-1)  # the Gram matrices' diagonals [..., n]
    trace = (x.transpose(-2, -1) @ y).square().sum((-2, -1)) - (kd * ld).sum(-1)  # sum over i != j of K_ij L_ij
    sx, sy = x.sum(-2, keepdim=True), y.sum(-2, keepdim=True)
    k1, l1 = (x * sx).sum(-1) - kd, (y * sy).sum(-1) - ld  # row sums without the diagonal [..., n]
    t = trace + k1.sum(-1) * l1.sum(-1) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (k1 * l1).sum(-1)
    return t / (n * (n - 3))


def cka_of_features(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Debiased linear CKA of features x [..., n, c1] and y [..., n, c2] (batched over the leading
    dimensions; float64): the same number as ``cka_of_grams`` on their Gram matrices."""
    x, y = x.double(), y.double()
    return _cka(_hsic_of_features(x, y), _hsic_of_features(x, x), _hsic_of_features(y, y))


def _hsic_of_subsets(k: torch.Tensor, ell: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``hsic_unbiased`` of the Gram matrices k, ell [n, n] restricted to each subset of the n examples:
    ``z`` [B, n] holds one 0/1 indicator row per subset, all of the same size m >= 4. Returns [B]. The
    sub-matrices are never formed: every sum over a subset's pairs is a product with its indicator row."""
    m = z.sum(1)
    kd, ld = k.diagonal(), ell.diagonal()
    trace = ((z @ (k * ell)) * z).sum(1) - z @ (kd * ld)  # sum over i != j in the subset of K_ij L_ij
    k1, l1 = (z @ k - kd) * z, (z @ ell - ld) * z  # row sums within the subset without the diagonal, 0 outside
    t = trace + k1.sum(1) * l1.sum(1) / ((m - 1) * (m - 2)) - 2.0 / (m - 2) * (k1 * l1).sum(1)
    return t / (m * (m - 3))


def cka_of_subsets(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Debiased linear CKA of features x [n, c1] and y [n, c2] on each subset of the n examples (``z`` [B, n]:
    0/1 indicator rows of equal size m >= 4), float64: row b is ``cka_of_features(x[s_b], y[s_b])``. It costs
    one n x n Gram matrix per representation and a few [B, n] x [n, n] products, whatever the widths; the
    features route costs B products of m x c1 by m x c2."""
    x, y, z = x.double(), y.double(), z.double()
    k, ell = x @ x.T, y @ y.T
    return _cka(_hsic_of_subsets(k, ell, z), _hsic_of_subsets(k, k, z), _hsic_of_subsets(ell, ell, z))


def linear_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool = True) -> float:
    """Linear CKA between activations x [N, D1] and y [N, D2] of the same N examples, float64.

    ``debiased`` (the default, and what featviz reports): HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with
    the unbiased HSIC estimator on the Gram matrices K = X X^T, L = Y Y^T of column-centred features
    (Song et al. 2012; Nguyen, Raghu & Kornblith 2021). Independent features score about 0 whatever
    their width (it can be slightly negative); identical ones 1. Needs N >= 4.
    ``debiased=False``: the plain estimator ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) (Kornblith et
    al. 2019), which is biased upward for wide layers (noise with 1,000 examples: ~0.01 at 16
    features, ~0.11 at 128). Both are invariant to orthogonal transforms, isotropic scaling and offsets.
    Two constant representations score 0.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples: {x.shape[0]} vs {y.shape[0]} rows")
    a, b = _centred(x), _centred(y)
    if not debiased:
        den = float((a.T @ a).norm() * (b.T @ b).norm())
        return float((b.T @ a).norm() ** 2) / den if den > 0 else 0.0
    if a.shape[0] < 4:
        raise ValueError(f"debiased CKA needs at least 4 examples, got {a.shape[0]}")
    return float(cka_of_grams(a @ a.T, b @ b.T))


# ----------------------------------------------------------------------------- layer statistics and crops
def _summary(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """A layer's output [B, C, H, W] -> channel means [B, C], flat argmax [B, C], peak [1, C], map width."""
    a = out.float().flatten(2)
    return a.mean(2).cpu(), a.argmax(2).cpu(), a.amax((0, 2)).cpu()[None], int(out.shape[-1])


def layer_stats(
    model: nn.Module, names: list[str], x: torch.Tensor, as_returned: bool = False, calibrate: int = 0
) -> dict[str, dict[str, torch.Tensor]]:
    """One no-grad pass over ``x`` (in chunks, ``model.measuring_passes``): per named layer, the channel means
    [N, C] (spatial average), the flat position of each channel's strongest response [N, C], each channel's
    peak [C], and the feature map's width (to turn flat positions into coordinates). Of each layer's output as
    the pass left it (an in-place op after the layer counts, as for every representation measure), or
    ``as_returned``: as the layer returned it (what activation maximization, which stops at the layer,
    maximized). ``calibrate``: the BatchNorm statistics recomputed on ``x[:calibrate]`` by the pass itself."""
    parts: dict[str, dict[str, list[torch.Tensor]]] = {n: {"mean": [], "argmax": [], "peak": []} for n in names}
    widths: dict[str, int] = {}
    for _, acts in measuring_passes(model, names, x, calibrate, reduce=_summary if as_returned else None):
        for n in names:
            mean, argmax, peak, widths[n] = acts[n] if as_returned else _summary(acts[n])
            parts[n]["mean"].append(mean)
            parts[n]["argmax"].append(argmax)
            parts[n]["peak"].append(peak)
    return {
        n: {
            "mean": torch.cat(p["mean"]),
            "argmax": torch.cat(p["argmax"]),
            "peak": torch.cat(p["peak"]).amax(0),
            "width": widths[n],
        }
        for n, p in parts.items()
    }


def crop_around(img: torch.Tensor, flat: int, feat: int, side: int) -> torch.Tensor:
    """A ``side`` x ``side`` crop of uint8 ``img`` [C, H, W] centred on feature-map position ``flat``."""
    size = img.shape[-1]
    y, x = divmod(flat, feat)
    cy, cx = int((y + 0.5) * size / feat), int((x + 0.5) * size / feat)
    top = min(max(cy - side // 2, 0), size - side)
    left = min(max(cx - side // 2, 0), size - side)
    crop = img[:, top : top + side, left : left + side]
    if crop.shape[0] == 1:
        crop = crop.expand(3, -1, -1)
    return crop


# ----------------------------------------------------------------------------- filter complexity
def filter_bits(ws: list[torch.Tensor], scale: float) -> list[float]:
    """Per epoch: zlib bits per weight of the whole layer's weights, quantized to 8 bits with the
    layer's one ``scale`` across epochs (``filters.layer_scale``) (all filters together: a single 3x3 kernel is
    too small for zlib). The filter-weight counterpart of the image complexity: 8 = incompressible noise, lower =
    structure."""
    out = []
    for w in ws:
        q = to_uint8(0.5 + 0.5 * w.detach().float() / scale)
        out.append(len(zlib.compress(q.numpy().tobytes(), 9)) * 8 / q.numel())
    return out


# ----------------------------------------------------------------------------- image complexity
def incompressibility(img: torch.Tensor) -> float:
    """zlib-compressed size (level 9) of the raw uint8 bytes of ``img`` [C, H, W], in bits per pixel.

    Counts all channels: ~0 for a constant image, ~8 x C for uniform noise. It measures how spread the
    pixel values are at least as much as any spatial pattern: on small images DEFLATE finds few repeats,
    so the score follows the histogram's entropy (``structure_bits`` separates the two). Float images
    in [0, 1] are quantized to uint8 first. Raw interleaved bytes, not PNG files (docs/metrics.md).
    """
    img = to_uint8(img)
    _, h, w = img.shape
    raw = img.permute(1, 2, 0).contiguous().cpu().numpy().tobytes()  # interleaved, as image files store it
    return len(zlib.compress(raw, 9)) * 8 / (h * w)


def structure_bits(img: torch.Tensor, permutations: int = 4, seed: int = 0) -> float:
    """Bits per pixel that DEFLATE saves because of where the pixels are: the mean ``incompressibility``
    of ``permutations`` copies of ``img`` with its pixel positions shuffled (each pixel keeps its colour;
    the same seeded shuffles for every image of a size) minus the image's own.

    The copies hold exactly the image's pixel values, so the histogram cancels: 0 for a constant image
    and about 0 for noise (nothing to lose), large for gratings, edges and blobs. Negative values near 0
    are noise in the estimate."""
    img = to_uint8(img)
    c, h, w = img.shape
    g = torch.Generator().manual_seed(seed)
    flat = img.reshape(c, h * w)
    shuffled = [flat[:, torch.randperm(h * w, generator=g)].reshape(c, h, w) for _ in range(permutations)]
    return sum(incompressibility(x) for x in shuffled) / permutations - incompressibility(img)


def percentile_of(value: float, sample: torch.Tensor) -> float:
    """Where ``value`` falls in ``sample`` (1-D), in percent: 100 x (the share of the sample below it plus
    half the share equal to it). 100 above every element, 0 below every one, 50 at the middle of an odd
    sample's sorted order. Unchanged by any increasing transform applied to both (no scale or zero point)."""
    s = sample.detach().double().flatten()
    if s.numel() == 0:
        raise ValueError("percentile_of needs a non-empty sample")
    below = (s < value).sum().item()
    equal = (s == value).sum().item()
    return 100.0 * (below + 0.5 * equal) / s.numel()


FLAT_RMS = 0.5 / 255  # an image whose residual after a fitted plane is below half a grey level is flat


def spectrum_slope(img: torch.Tensor, band: tuple[int, int] | None = None) -> float | None:
    """Slope of log power against log spatial frequency of the radially averaged power spectrum.

    ``img`` [C, H, W] (uint8, or float in 0..1; channels averaged to luminance). Steps: subtract the
    least-squares plane (a brightness gradient is not texture), multiply by a 2-D Hann window (so the
    border of a non-periodic image adds no power), FFT, average the power in rings of integer radius
    k cycles per image, and fit a line to log power against log k over ``band``, each ring weighted by
    its number of frequencies (default band: k = 2 to
    min(H, W) / 2 - 2: above the window's leakage around DC, below the Nyquist corners).
    About -a for an image whose power falls as 1/f^a (natural images ~ -2), 0 for white noise.
    None for a flat image: one whose residual after the plane is below half a grey level (a pure
    gradient has no spectrum to measure).
    """
    x = img.detach().double()
    x = x / 255.0 if img.dtype == torch.uint8 else x
    g = x.mean(0)
    h, w = g.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    basis = torch.stack(
        [torch.ones(h * w, dtype=torch.float64), yy.flatten() - (h - 1) / 2, xx.flatten() - (w - 1) / 2], 1
    )
    coef = torch.linalg.lstsq(basis, g.flatten()[:, None]).solution
    g = g - (basis @ coef).view(h, w)
    if float(g.pow(2).mean().sqrt()) < FLAT_RMS:
        return None
    g = (
        g
        * torch.hann_window(h, periodic=False, dtype=torch.float64)[:, None]
        * torch.hann_window(w, periodic=False, dtype=torch.float64)[None]
    )
    power = torch.fft.fft2(g).abs() ** 2
    fy = torch.fft.fftfreq(h, dtype=torch.float64).view(-1, 1) * h  # cycles per image
    fx = torch.fft.fftfreq(w, dtype=torch.float64).view(1, -1) * w
    bins = torch.sqrt(fy**2 + fx**2).round().long()
    lo, hi = band or (2, min(h, w) // 2 - 2)
    ks, ps, ns = [], [], []
    for k in range(max(lo, 1), hi + 1):
        sel = bins == k
        if sel.any():
            ks.append(math.log(k))
            ps.append(math.log(float(power[sel].mean()) + 1e-30))
            ns.append(float(sel.sum()))
    if len(ks) < 2:
        raise ValueError(f"image of {h}x{w} px is too small for the band {lo}..{hi} cycles per image")
    kt, pt, wt = torch.tensor(ks), torch.tensor(ps), torch.tensor(ns)  # each ring weighted by its frequencies
    km, pm = (wt * kt).sum() / wt.sum(), (wt * pt).sum() / wt.sum()
    return float((wt * (kt - km) * (pt - pm)).sum() / (wt * (kt - km) ** 2).sum())
