"""Each metric against a hand-computed value on tiny inputs (SCIENCE.md)."""

from __future__ import annotations

import math

import pytest
import torch

from featviz.metrics import (
    linear_cka, per_filter_change, relative_change, rotation, spectrum_slope, theoretical_receptive_fields,
    zlib_bits_per_pixel,
)


def test_relative_change_and_rotation_by_hand() -> None:
    w = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    assert relative_change(w, w.clone()) == 0.0
    assert rotation(w, w.clone()) == pytest.approx(0.0, abs=1e-12)
    assert relative_change(w, 2 * w) == pytest.approx(1.0)  # ||2W - W|| / ||W||
    assert rotation(w, 3 * w) == pytest.approx(0.0, abs=1e-12)  # scale does not rotate
    assert rotation(w, -w) == pytest.approx(2.0)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert rotation(a, b) == pytest.approx(1.0)
    assert relative_change(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 5.0])) == pytest.approx(1 / 5)


def test_per_filter_change_flags_the_unchanged_filter() -> None:
    w0 = torch.ones(3, 2, 3, 3)
    w1 = w0.clone()
    w1[1] *= 1.5
    change = per_filter_change(w0, w1)
    assert change.tolist() == pytest.approx([0.0, 0.5, 0.0])


def test_linear_cka_identity_orthogonal_and_scale_invariance() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 10, generator=g)
    assert linear_cka(x, x) == pytest.approx(1.0)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g))
    assert linear_cka(x, x @ q) == pytest.approx(1.0)
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0)
    assert linear_cka(x, x + 3.0) == pytest.approx(1.0)  # centring removes offsets
    y = torch.randn(200, 10, generator=g)
    assert linear_cka(x, y) < 0.2  # independent noise shares little
    with pytest.raises(ValueError):
        linear_cka(x, y[:100])


def test_zlib_bits_per_pixel_constant_and_noise() -> None:
    const = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    assert zlib_bits_per_pixel(const) < 0.1
    noise = torch.randint(0, 256, (3, 64, 64), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    assert zlib_bits_per_pixel(noise) == pytest.approx(24.0, rel=0.02)  # 8 bits per channel
    grey = torch.randint(0, 256, (1, 64, 64), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    assert zlib_bits_per_pixel(grey) == pytest.approx(8.0, rel=0.03)


def test_spectrum_slope_of_white_noise_and_power_law_images() -> None:
    g = torch.Generator().manual_seed(4)
    white = torch.rand(1, 128, 128, generator=g)
    assert spectrum_slope(white) == pytest.approx(0.0, abs=0.3)
    # an image built with amplitude 1/f has power 1/f^2: slope -2
    fy = torch.fft.fftfreq(128).view(-1, 1)
    fx = torch.fft.fftfreq(128).view(1, -1)
    f = torch.sqrt(fy ** 2 + fx ** 2)
    f[0, 0] = 1.0
    phase = torch.rand(128, 128, generator=g) * 2 * math.pi
    pink = torch.fft.ifft2(torch.polar(1 / f, phase)).real
    assert spectrum_slope(pink[None]) == pytest.approx(-2.0, abs=0.25)


def test_theoretical_receptive_fields_by_hand() -> None:
    # conv5 -> pool -> conv3 -> pool -> conv3: 5, 5+1+2*2=10, 10+2+4*2=20
    assert theoretical_receptive_fields((5, 3, 3), (1, 1, 1), (True, True, False)) == [5, 10, 20]
    assert theoretical_receptive_fields((3, 3), (2, 1), (False, False)) == [3, 7]  # stride 2 doubles the step
