"""Known answers that pin the edges of featviz.metrics and featviz.receptive which the definition tests leave
open: zero and tiny inputs, error messages, band limits, exact thresholds, byte order, non-square geometry,
padding modes, the non-chain fallback, and the layer-statistics and crop helpers (found by mutation testing,
docs/metrics.md)."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from torch import nn

from featviz.metrics import (
    crop_around,
    filter_bits,
    incompressibility,
    layer_stats,
    linear_cka,
    per_filter_change,
    percentile_of,
    relative_change,
    rotation,
    spectrum_slope,
)
from featviz.receptive import channels_within, effective_receptive_field, mirror_pad, spread_channels, unit_centres


# ----------------------------------------------------------------------------- filter updates
def test_filter_updates_of_zero_and_small_weights() -> None:
    """0 for two zero snapshots, inf from zero to non-zero, 0 rotation against zero, and tiny weights scored
    like big ones (no threshold at norm 1)."""
    z, w = torch.zeros(2), torch.tensor([3.0, 4.0])
    assert relative_change(z, z) == 0.0
    assert relative_change(z, w) == math.inf
    assert relative_change(0.1 * w, torch.tensor([0.3, 0.5])) == pytest.approx(0.2)  # ||(0, .1)|| / ||(.3, .4)||
    assert rotation(z, w) == 0.0
    assert rotation(torch.tensor([0.1, 0.0]), torch.tensor([0.0, 0.1])) == pytest.approx(1.0)
    w0 = torch.full((3, 2, 3, 3), 0.01)
    w1 = w0.clone()
    w1[1] *= 1.5
    assert per_filter_change(w0, w1).tolist() == pytest.approx([0.0, 0.5, 0.0])


# ----------------------------------------------------------------------------- CKA
def _cka_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """x centred is (-3, -1, 1, 3); y's centred columns are x and (1, -1, -1, 1), which is orthogonal to x."""
    x = torch.tensor([[-3.0], [-1.0], [1.0], [3.0]]) + 10.0
    y = torch.tensor([[-3.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [3.0, 1.0]]) + torch.tensor([5.0, -2.0])
    return x, y


def test_plain_cka_by_hand_with_column_offsets_and_tiny_scale() -> None:
    """||Y^T X||^2 / (||X^T X|| ||Y^T Y||) = 400 / (20 sqrt(20^2 + 4^2)), whatever each column's offset or the scale."""
    x, y = _cka_pair()
    expected = 400 / (20 * math.sqrt(416))
    assert linear_cka(x, y, debiased=False) == pytest.approx(expected)
    assert linear_cka(1e-3 * x, 1e-3 * y, debiased=False) == pytest.approx(expected)
    assert linear_cka(1e-3 * y, 1e-3 * y, debiased=False) == pytest.approx(1.0)


def test_cka_of_constant_and_tiny_representations() -> None:
    """Two estimators, one answer each: a constant representation scores 0; tiny but identical ones score 1."""
    g = torch.Generator().manual_seed(0)
    x, const = torch.randn(6, 3, generator=g), torch.full((6, 3), 2.0)
    for debiased in (True, False):
        assert linear_cka(const, x, debiased=debiased) == 0.0
        assert linear_cka(x, const, debiased=debiased) == 0.0
    assert linear_cka(1e-3 * x, 1e-3 * x) == pytest.approx(1.0)


def test_debiased_cka_at_exactly_four_examples_and_its_errors() -> None:
    """4 examples are enough (identical up to an affine map: 1); 3 are not, and the messages give the counts."""
    x = torch.tensor([[0.0, 1.0], [2.0, -1.0], [5.0, 0.0], [1.0, 3.0]])
    assert linear_cka(x, 2 * x + 1) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 4 examples, got 3"):
        linear_cka(torch.randn(3, 10), torch.randn(3, 10))
    with pytest.raises(ValueError, match="same examples: 5 vs 6 rows"):
        linear_cka(torch.randn(5, 2), torch.randn(6, 3))
    with pytest.raises(ValueError, match="^percentile_of needs a non-empty sample$"):
        percentile_of(0.0, torch.tensor([]))


# ----------------------------------------------------------------------------- spectrum slope
def _checkerboard(side: int) -> torch.Tensor:
    """uint8 [1, side, side] of grey levels 0 and 1: a residual of exactly half a grey level after the plane."""
    return ((torch.arange(side)[:, None] + torch.arange(side)[None]) % 2).to(torch.uint8)[None]


def test_half_a_grey_level_is_not_flat() -> None:
    """The flat threshold is 'below half a grey level' of 255: a 0/1 checkerboard sits exactly on it (not flat),
    one grey level more on one pixel lifts it just above, and the same image as floats / 255 agrees."""
    assert spectrum_slope(_checkerboard(32)) is not None
    img = _checkerboard(64)
    img[0, 32, 33] = 2  # a 1 becomes 2: residual RMS 0.5005 grey levels
    assert spectrum_slope(img) is not None
    assert spectrum_slope(img.double() / 255) == pytest.approx(spectrum_slope(img))


def test_spectrum_slope_of_a_mirrored_image_is_unchanged() -> None:
    """The Hann window is symmetric and |FFT| of a real image is unchanged by mirroring: the same slope."""
    g = torch.Generator().manual_seed(3)
    img = torch.rand(1, 32, 32, generator=g)
    img[:, :, :5] += 1.0  # bright band at the left, darker at the top: nothing symmetric
    img[:, :8] += 0.5
    img = img / img.max()
    s = spectrum_slope(img)
    assert spectrum_slope(img.flip(-1)) == pytest.approx(s, abs=1e-9)
    assert spectrum_slope(img.flip(-2)) == pytest.approx(s, abs=1e-9)


def test_spectrum_slope_band_limits() -> None:
    """Default band = (2, min(H, W) // 2 - 2); both ends inclusive; ring 0 never counts; two rings make a line,
    one ring is an error that names the band."""
    g = torch.Generator().manual_seed(6)
    img = torch.rand(1, 40, 64, generator=g)
    assert spectrum_slope(img) == spectrum_slope(img, band=(2, 18))
    assert isinstance(spectrum_slope(img, band=(2, 3)), float)
    assert spectrum_slope(img, band=(0, 2)) == spectrum_slope(img, band=(1, 2))
    with pytest.raises(ValueError, match="too small for the band 2..2"):
        spectrum_slope(img, band=(2, 2))


# ----------------------------------------------------------------------------- image and filter complexity
def test_incompressibility_is_of_interleaved_bytes() -> None:
    """The bytes compressed are R G B of pixel 0, then of pixel 1, ... (as image files store them): the same noise
    in three channels is ~16 bits per pixel interleaved (no 3-byte repeats), ~8.7 planar (channels repeat)."""
    grey = torch.randint(0, 256, (32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    img = grey.expand(3, -1, -1).contiguous()
    raw = bytes(int(img[c, y, x]) for y in range(32) for x in range(32) for c in range(3))
    assert incompressibility(img) == len(zlib.compress(raw, 9)) * 8 / (32 * 32)
    assert incompressibility(img) > 12.0


def test_filter_bits_known_answers() -> None:
    """Zero weights quantize to grey 128 everywhere (bits of a run of 128s); weights uniform over +-scale use all
    256 levels: ~8 bits per weight."""
    zero = torch.zeros(64, 3, 3, 3)
    n = zero.numel()
    run = len(zlib.compress(bytes([128]) * n, 9)) * 8 / n
    noise = torch.rand(64, 3, 3, 3, generator=torch.Generator().manual_seed(1)) * 4 - 2
    bits = filter_bits([zero, noise], 2.0)
    assert bits[0] == run
    assert bits[1] == pytest.approx(8.0, abs=0.5)


# ----------------------------------------------------------------------------- layer statistics and crops
def test_layer_stats_by_hand_over_two_chunks() -> None:
    """300 images (two chunks of at most 250) through an identity 1x1 conv; image n, channel c holds 1 + c + n / 1000
    at flat position (n + c) % 12 of its 3x4 map and 0 elsewhere: mean = value / 12, argmax = that position,
    peak over all images = 1.299 + c, width 4; plain numbers (no graph)."""
    n_img, pos = 300, torch.zeros(300, 2, dtype=torch.long)
    x = torch.zeros(n_img, 2, 3, 4)
    for n in range(n_img):
        for c in range(2):
            pos[n, c] = (n + c) % 12
            x[n, c].view(-1)[(n + c) % 12] = 1 + c + n / 1000
    conv = nn.Conv2d(2, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        conv.bias.zero_()
    out = layer_stats(nn.Sequential(conv), ["0"], x)["0"]
    value = 1 + torch.arange(2.0)[None] + torch.arange(n_img)[:, None] / 1000
    assert torch.allclose(out["mean"], value / 12)
    assert torch.equal(out["argmax"], pos)
    assert out["peak"].tolist() == pytest.approx([1.299, 2.299])
    assert out["width"] == 4
    assert not out["mean"].requires_grad and not out["peak"].requires_grad


def test_crop_around_by_hand() -> None:
    """16 px image of value 16 y + x, 4x4 feature map, 6 px crops: unit (1, 2) is centred at pixel (6, 10), so the
    crop starts at (3, 7); crops near the borders are pushed inside; one channel becomes three."""
    img = torch.arange(256).view(1, 16, 16).to(torch.uint8)
    crop = crop_around(img, 6, 4, 6)
    assert crop.shape == (3, 6, 6)
    assert torch.equal(crop[1], img[0, 3:9, 7:13])
    assert torch.equal(crop_around(img, 0, 4, 6)[0], img[0, :6, :6])  # centre (2, 2): top-left corner
    assert torch.equal(crop_around(img, 15, 4, 6)[2], img[0, 10:, 10:])  # centre (14, 14): bottom-right corner
    rgb = torch.stack([img[0], img[0] // 2, img[0] // 3])
    assert torch.equal(crop_around(rgb, 6, 4, 6), rgb[:, 3:9, 7:13])


# ----------------------------------------------------------------------------- unit centres
def test_unit_centres_of_non_square_strided_dilated_geometry() -> None:
    """conv (3, 5), stride (2, 1), padding (1, 0), dilation (1, 2) on 20 x 24: rows at 0 + 2i, columns at
    (5 - 1) x 2 / 2 = 4 + j; a (2, 3) average pool after it: rows at 1/2 x 2 + 4i = 1 + 4i, columns at 4 + 1 + 3j."""
    conv = nn.Conv2d(1, 1, (3, 5), stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    model = nn.Sequential(conv, nn.AvgPool2d((2, 3)))
    x = torch.rand(1, 1, 20, 24)
    cy, cx, traced = unit_centres(model, "0", x)
    assert traced and cy.tolist() == [2.0 * i for i in range(10)] and cx.tolist() == [4.0 + j for j in range(16)]
    cy, cx, traced = unit_centres(model, "1", x)
    assert traced and cy.tolist() == [1.0, 5.0, 9.0, 13.0, 17.0] and cx.tolist() == [5.0, 8.0, 11.0, 14.0, 17.0]
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        unit_centres(model, "nope", x)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_unit_centres_with_string_padding() -> None:
    """'same' pads (k - 1) // 2 before (k = 4: 1, so the centre is 1.5 - 1 = 0.5 px on), 'valid' pads nothing
    (k = 3: 1 px on), 'same' with k = 5 pads 2 (no shift): units at 1.5 + i in both directions."""
    model = nn.Sequential(
        nn.Conv2d(1, 1, 4, padding="same"), nn.Conv2d(1, 1, 3, padding="valid"), nn.Conv2d(1, 1, 5, padding="same")
    )
    cy, cx, traced = unit_centres(model, "2", torch.rand(1, 1, 12, 12))
    assert traced and cy.tolist() == cx.tolist() == [1.5 + i for i in range(10)]


class _Branches(nn.Module):
    """Two convs side by side on the input: ``b`` does not take ``a``'s output, so the ops are no chain."""

    def __init__(self, kb: int, sb: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 1, 5, bias=False)
        self.b = nn.Conv2d(1, 1, kb, stride=sb, bias=False)
        nn.init.ones_(self.a.weight)
        nn.init.ones_(self.b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.a(x)
        return self.b(x)


def test_unit_centres_fall_back_to_even_spreading_off_a_chain() -> None:
    """Not a chain: a 4 x 2 map on a 20 x 12 image is spread evenly, (i + 0.5) x 20 / 4 - 0.5 and (j + 0.5) x 12 / 2
    - 0.5 (traced through b alone it would be 2 + 4i), and says so."""
    cy, cx, traced = unit_centres(_Branches(5, 4), "b", torch.rand(1, 1, 20, 12))
    assert not traced
    assert cy.tolist() == [2.0, 7.0, 12.0, 17.0] and cx.tolist() == [2.5, 8.5]


def test_effective_field_off_a_chain_uses_odd_squares_near_a_whole_pixel() -> None:
    """A 5x5 stride-3 branch on 20 px: 6 units spread at 1.17, 4.5, 7.83, ...; the measured one sits at 7.83, nearer
    pixel 8 than a pixel boundary, so squares have odd sides: 5 px (pixels 6..10) hold all of its 5x5 gradient."""
    out = effective_receptive_field(_Branches(5, 3), "b", torch.rand(1, 1, 20, 20))
    assert not out["traced"] and out["centre_px"] == pytest.approx([7.0 + 5 / 6] * 2)
    assert out["effective_px"] == 5


# ----------------------------------------------------------------------------- effective receptive field
def _conv(kernels: list[torch.Tensor], padding: int | str = "same") -> nn.Sequential:
    conv = nn.Conv2d(1, len(kernels), kernels[0].shape[-1], padding=padding, bias=False)
    with torch.no_grad():
        for i, k in enumerate(kernels):
            conv.weight[i, 0] = k
    return nn.Sequential(conv).eval()


def test_one_off_centre_pixel_of_weight_one_half_on_a_non_square_image() -> None:
    """A 5x5 kernel whose only weight, 0.5, is 2 rows below its centre, on one 15 x 21 image: the unit at (7, 10)
    draws its gradient from pixel (9, 10) alone: offset (2, 0), RMS radius 2 (total mass 0.5), spread 0 with a
    single image, and the first centred square holding it is 5 px."""
    k = torch.zeros(5, 5)
    k[4, 2] = 0.5
    out = effective_receptive_field(_conv([k]), "0", torch.rand(1, 1, 15, 21))
    assert out["centre_px"] == [7.0, 10.0] and out["mass"] == 0.9
    assert out["mass_offset_px"] == pytest.approx([2.0, 0.0])
    assert out["rms_radius_px"] == pytest.approx(2.0) and out["rms_radius_sd_px"] == 0.0
    assert out["effective_px"] == 5 and out["outside_fraction"] == 0.0
    assert out["mass_by_side"] == [[1, 0.0], [3, 0.0], [5, 1.0]]


def test_a_zero_gradient_reports_zeros() -> None:
    """A conv with all-zero weights has no gradient: field 0, nothing outside, no offset, radius 0, empty curve."""
    out = effective_receptive_field(_conv([torch.zeros(3, 3)]), "0", torch.rand(2, 1, 9, 9))
    expected = {"effective_px": 0, "outside_fraction": 0.0, "mass_offset_px": [0.0, 0.0], "mass_by_side": []}
    assert {key: out[key] for key in expected} == expected
    assert out["rms_radius_px"] == 0.0 and out["rms_radius_sd_px"] == 0.0


def test_an_even_kernel_is_measured_with_even_squares() -> None:
    """A 4x4 all-ones unpadded conv on 20 px: unit 8 is centred at pixel 9.5 (a pixel boundary), so squares
    have even sides: 2 px holds 4/16, 4 px all of it."""
    out = effective_receptive_field(_conv([torch.ones(4, 4)], padding=0), "0", torch.rand(2, 1, 20, 20))
    assert out["centre_px"] == [9.5, 9.5] and out["units"] == [(8, 8)]
    assert out["effective_px"] == 4
    assert out["mass_by_side"] == [[2, pytest.approx(0.25)], [4, pytest.approx(1.0)]]


def _ring(side: int, dist: int) -> torch.Tensor:
    """side x side kernel: mass 1 spread evenly over the cells at Chebyshev distance ``dist`` from the centre."""
    c = side // 2
    cells = [(y, x) for y in range(side) for x in range(side) if max(abs(y - c), abs(x - c)) == dist]
    k = torch.zeros(side, side)
    for y, x in cells:
        k[y, x] = 1 / len(cells)
    return k


def test_every_output_channel_counts() -> None:
    """Channel 0 reads the centre pixel, channel 1 the ring at distance 2 (16 cells, summed squared distance 88):
    half the mass is at the centre, so 1 and 3 px hold 50% and 5 px all; RMS radius sqrt((88 / 16) / 2)."""
    out = effective_receptive_field(_conv([_ring(5, 0), _ring(5, 2)]), "0", torch.rand(2, 1, 15, 15))
    assert out["channels"] == [0, 1]
    assert out["effective_px"] == 5
    assert out["rms_radius_px"] == pytest.approx(math.sqrt(2.75), abs=1e-6)


def test_the_default_mass_is_90_percent() -> None:
    """Rings at distance 0..3 holding 50, 30, 15, 5%: 90% first fits in 5 px (95%); 99% would need 7 px."""
    k = 0.5 * _ring(7, 0) + 0.3 * _ring(7, 1) + 0.15 * _ring(7, 2) + 0.05 * _ring(7, 3)
    out = effective_receptive_field(_conv([k]), "0", torch.rand(2, 1, 15, 15))
    assert out["mass"] == 0.9 and out["effective_px"] == 5


# ----------------------------------------------------------------------------- budget and mirror padding
def test_a_layer_that_costs_nothing_gets_the_channel_cap() -> None:
    """0 multiply-adds: the whole budget (20) is affordable, capped at 16 channels."""
    assert channels_within(128, 0, images=8, budget=20) == spread_channels(128, 16)


def test_mirror_pad_values_by_hand() -> None:
    """4 values mirrored without repeating the edge repeat with period 6 (0 1 2 3 2 1); 4 x 4 to 20 puts the
    original at 8..11, so position i holds m(i - 8) in each direction; a 4 x 8 (or 8 x 4) image grows only
    its short side, 2 px each way."""
    m = [0, 1, 2, 3, 2, 1]
    x = torch.arange(16.0).view(1, 1, 4, 4)  # value 4 r + c
    line = torch.tensor([float(m[(i - 8) % 6]) for i in range(20)])
    assert torch.equal(mirror_pad(x, 20)[0, 0], 4 * line[:, None] + line[None])
    wide = torch.arange(32.0).view(1, 1, 4, 8)  # value 8 r + c
    rows = torch.tensor([float(m[(i - 2) % 6]) for i in range(8)])
    assert torch.equal(mirror_pad(wide, 8)[0, 0], 8 * rows[:, None] + torch.arange(8.0)[None])
    tall = wide.transpose(-1, -2).contiguous()
    assert torch.equal(mirror_pad(tall, 8)[0, 0], rows[None] * 8 + torch.arange(8.0)[:, None])
