"""Known answers of the Gabor fit of first-layer filters (featviz.gabor)."""

from __future__ import annotations

import math

import pytest
import torch

from featviz.gabor import GOOD, _shapes, gabor_r2, gabor_share


def _gabor(x0=0.3, y0=-0.2, angle=0.7, width=1.2, wavelength=4.0, phase=0.4, k=5) -> torch.Tensor:
    p = torch.tensor([[x0, y0, angle, math.log(width), 0.0, math.log(wavelength), phase]], dtype=torch.float64)
    return _shapes(p, k)[0]


def test_a_colour_times_gabor_filter_fits_almost_exactly() -> None:
    g = _gabor()
    w = torch.stack([0.5 * g, -0.2 * g, 0.1 * g])[None]  # an oriented edge, opposite in red and green
    assert float(gabor_r2(w)[0]) > 0.98


def test_a_colour_opponent_blob_fits() -> None:
    blob = _gabor(x0=0.0, y0=0.0, width=1.0, wavelength=40.0, phase=0.0)  # a long wavelength: a Gaussian
    w = torch.stack([blob, -blob, 0 * blob])[None]
    assert float(gabor_r2(w)[0]) > 0.95


def test_white_noise_does_not_count_as_gabor_like() -> None:
    noise = torch.randn(40, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    r2 = gabor_r2(noise)
    assert float(r2.mean()) < 0.45  # 10 fitted numbers for 75 weights: about 0.25 by chance
    assert gabor_share(noise) == 0.0 and float(r2.max()) < GOOD


def test_r2_ignores_scale_and_offset_and_a_flat_filter_scores_zero() -> None:
    g = _gabor()
    w = torch.stack([g, 0.3 * g, -g])[None] + 0.05 * torch.randn(1, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    a, b = float(gabor_r2(w)[0]), float(gabor_r2(100 * w + 7)[0])
    assert a == pytest.approx(b, abs=0.01) and 0.6 < a < 1.0  # noise lowers it, below the exact fit
    assert float(gabor_r2(torch.ones(1, 3, 5, 5))[0]) == 0.0


def test_share_counts_filters_at_or_above_the_threshold() -> None:
    g = _gabor()
    good = torch.stack([g, g, g])[None]
    noise = torch.randn(3, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    assert gabor_share(torch.cat([good.float(), noise])) == pytest.approx(0.25)


def test_rejects_filters_that_are_not_square() -> None:
    with pytest.raises(ValueError, match="square filters"):
        gabor_r2(torch.zeros(2, 3, 5, 3))


def test_analyze_section_fits_the_first_layer_and_its_learned_part(tiny_run) -> None:
    from featviz.analyze import gabor

    first = tiny_run.load_snapshot(0)
    name = f"{tiny_run.info.layers[0].name}.weight"
    g = _gabor().float()
    last = {**first, name: first[name] + torch.stack([g, -0.5 * g, 0.2 * g])[None]}  # every filter learns a Gabor
    res = gabor(tiny_run, (0, 2), first, last)
    assert res["layer"] == "features.conv1" and res["epochs"] == [0, 2] and len(res["init"]["r2"]) == 4
    assert res["learned_part"]["share"] == 1.0  # the learned part is exactly a colour-times-Gabor
    assert gabor(tiny_run, (0, 0), first, first)["learned_part"]["share"] == 0.0  # nothing learned: all zero
