"""Receptive fields against known answers: theoretical by hand, effective on convs with known kernels
(definitions: docs/metrics.md)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from featviz.receptive import (
    channels_within,
    effective_receptive_field,
    measuring_side,
    mirror_pad,
    spread_channels,
    theoretical_receptive_fields,
)


# ----------------------------------------------------------------------------- effective receptive field
def _ones_conv(cin: int, cout: int, k: int, **kw) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, bias=False, **kw)
    nn.init.ones_(conv.weight)
    return conv


@pytest.mark.parametrize("size", [31, 32])
def test_effective_field_of_one_5x5_conv_is_5(size: int) -> None:
    model = nn.Sequential(_ones_conv(3, 2, 5, padding=2)).eval()
    out = effective_receptive_field(model, "0", torch.rand(4, 3, size, size))
    assert out["effective_px"] == 5 and out["outside_fraction"] == 0.0
    centre = (size - 1) / 2
    assert all(abs(c - centre) <= 0.5 for c in out["centre_px"])
    assert out["mass_offset_px"] == pytest.approx([0.0, 0.0], abs=1e-9)


def test_two_3x3_convs_with_positive_weights_give_a_centred_field_of_at_most_5() -> None:
    model = nn.Sequential(_ones_conv(3, 4, 3, padding=1), _ones_conv(4, 4, 3, padding=1)).eval()
    out = effective_receptive_field(model, "1", torch.rand(4, 3, 33, 33))
    assert 3 <= out["effective_px"] <= 5
    assert out["mass_offset_px"] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert out["centre_px"] == [16.0, 16.0]


@pytest.mark.parametrize("pools,side", [(3, 4), (2, 8)])
def test_even_sized_maps_are_measured_at_a_unit_nearest_the_image_centre(pools: int, side: int) -> None:
    """The default SmallCNN's geometry (5x5 then 3x3 convs with 'same' padding, 2x2 pools) on 32 px:
    its 4x4 map's units sit at pixels 3.5, 11.5, 19.5, 27.5; one of the two nearest the centre is measured."""
    layers: list[nn.Module] = [_ones_conv(3, 4, 5, padding=2)]
    for _ in range(pools):
        layers += [nn.MaxPool2d(2), _ones_conv(4, 4, 3, padding=1)]
    model = nn.Sequential(*layers).eval()
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape[-1] == side
    out = effective_receptive_field(model, str(len(layers) - 1), x)
    half_stride = 2**pools / 2  # one unit of the tied central ones: at most half a unit's stride off the centre
    assert out["centre_px"] in ([15.5 - half_stride] * 2, [15.5 + half_stride] * 2)
    assert len(out["units"]) == 1 and out["traced"]
    assert (
        out["effective_px"]
        <= theoretical_receptive_fields((5,) + (3,) * pools, (1,) * (pools + 1), (True,) * pools + (False,))[-1]
    )


def test_effective_field_is_reported_raw_with_its_share_outside_the_image() -> None:
    """A 9x9 conv on a 4 px image: its gradient fills the image, so the smallest centred square that
    holds 90% is 5 px, larger than the image, with 1 - 16/25 of it outside."""
    model = nn.Sequential(_ones_conv(1, 1, 9, padding=4)).eval()
    out = effective_receptive_field(model, "0", torch.rand(2, 1, 4, 4))
    assert out["effective_px"] == 5 and out["outside_fraction"] == pytest.approx(1 - 16 / 25)


def test_colour_channels_of_opposite_sign_do_not_cancel() -> None:
    conv = nn.Conv2d(3, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0
        conv.weight[0, 1] = -1.0  # a signed sum over colour channels would be 0 everywhere
    out = effective_receptive_field(nn.Sequential(conv).eval(), "0", torch.rand(2, 3, 15, 15))
    assert out["effective_px"] == 3


def test_unpadded_convs_are_traced_not_assumed() -> None:
    """No padding: a 5x5 conv on 20 px gives a 16 px map whose unit i is centred at pixel i + 2: units 7
    and 8 (pixels 9 and 10) tie for the image centre 9.5; the first is measured."""
    model = nn.Sequential(_ones_conv(1, 1, 5)).eval()
    out = effective_receptive_field(model, "0", torch.rand(2, 1, 20, 20))
    assert out["traced"] and out["centre_px"] == [9.0, 9.0] and out["units"] == [(7, 7)]
    assert out["effective_px"] == 5


def test_theoretical_receptive_fields_by_hand() -> None:
    # conv5 -> pool -> conv3 -> pool -> conv3: 5, 5+1+2*2=10, 10+2+4*2=20
    assert theoretical_receptive_fields((5, 3, 3), (1, 1, 1), (True, True, False)) == [5, 10, 20]
    assert theoretical_receptive_fields((3, 3), (2, 1), (False, False)) == [3, 7]  # stride 2 doubles the step


# ----------------------------------------------------------------------------- per-channel magnitudes, size, spread
def _ring_kernel() -> torch.Tensor:
    """7x7: mass 0.5 at the centre, 0.3 on the ring at distance 1, 0.15 at 2, 0.05 at 3 (sum 1)."""
    k = torch.zeros(7, 7, dtype=torch.float64)
    for ring, share in ((0, 0.5), (1, 0.3), (2, 0.15), (3, 0.05)):
        cells = [(y, x) for y in range(7) for x in range(7) if max(abs(y - 3), abs(x - 3)) == ring]
        for y, x in cells:
            k[y, x] = share / len(cells)
    return k


def _conv_with(kernels: list[torch.Tensor]) -> nn.Sequential:
    conv = nn.Conv2d(1, len(kernels), kernels[0].shape[-1], padding=kernels[0].shape[-1] // 2, bias=False)
    with torch.no_grad():
        for i, k in enumerate(kernels):
            conv.weight[i, 0] = k.float()
    return nn.Sequential(conv).eval()


@pytest.mark.parametrize("mass,side", [(0.5, 1), (0.8, 3), (0.81, 5), (0.9, 5), (0.95, 5), (0.96, 7), (1.0, 7)])
def test_a_non_uniform_kernel_is_pinned_to_each_threshold(mass: float, side: int) -> None:
    """Squares of side 1, 3, 5, 7 hold 50, 80, 95 and 100% of the kernel's mass; a linear conv's input
    gradient is its kernel whatever the image, so the field at each threshold is known exactly."""
    out = effective_receptive_field(_conv_with([_ring_kernel()]), "0", torch.rand(3, 1, 15, 15), mass=mass)
    assert out["effective_px"] == side and out["units"] == [(7, 7)]


def test_mass_by_side_and_rms_radius_of_a_known_kernel() -> None:
    out = effective_receptive_field(_conv_with([_ring_kernel()]), "0", torch.rand(3, 1, 15, 15))
    sides = [s for s, _ in out["mass_by_side"]]
    assert sides == [1, 3, 5, 7]  # stops once a square holds all of the mass
    assert [f for _, f in out["mass_by_side"]] == pytest.approx([0.5, 0.8, 0.95, 1.0], abs=1e-6)
    # sum of mass x squared distance, ring by ring: 12 / 88 / 292 summed squared distances per ring
    by_hand = math.sqrt(0.3 / 8 * 12 + 0.15 / 16 * 88 + 0.05 / 24 * 292)
    assert out["rms_radius_px"] == pytest.approx(by_hand, abs=1e-6)
    assert out["rms_radius_sd_px"] == pytest.approx(0.0, abs=1e-6)  # a linear conv: the same for every image


def test_output_channels_w_and_minus_w_add_instead_of_cancelling() -> None:
    """Two output channels with kernels k and -k: summing their gradients with sign before the magnitude
    gives 0 everywhere (field 0); per-channel magnitudes give k's own field."""
    k = _ring_kernel()
    out = effective_receptive_field(_conv_with([k, -k]), "0", torch.rand(2, 1, 15, 15))
    assert out["effective_px"] == 5 and out["channels"] == [0, 1]
    assert out["rms_radius_px"] == pytest.approx(
        effective_receptive_field(_conv_with([k]), "0", torch.rand(2, 1, 15, 15))["rms_radius_px"]
    )


def test_rms_radius_spread_over_images_by_hand() -> None:
    """Channel 0 reads the centre pixel, channel 1 the ring at distance 2 (16 cells of 1/16), each through
    a ReLU, summed by a 1x1 conv. Image 1 (all ones) opens both: squared radius (0 + 1 x 88/16) / 2 = 2.75;
    image 2 (centre 1, rest -1) closes the ring: radius 0. Spread over the two: sqrt(2.75) / sqrt(2);
    the mean map holds 1 at the centre and 1/2 on the ring: squared radius 2.75 / 1.5."""
    centre = torch.zeros(5, 5, dtype=torch.float64)
    centre[2, 2] = 1
    ring = torch.zeros(5, 5, dtype=torch.float64)
    ring[[0, 4], :] = 1 / 16
    ring[:, [0, 4]] = 1 / 16
    first = _conv_with([centre, ring])[0]
    mix = nn.Conv2d(2, 1, 1, bias=False)
    nn.init.ones_(mix.weight)
    model = nn.Sequential(first, nn.ReLU(), mix).eval()
    ones = torch.ones(1, 1, 15, 15)
    dot = -torch.ones(1, 1, 15, 15)
    dot[..., 7, 7] = 1
    out = effective_receptive_field(model, "2", torch.cat([ones, dot]))
    assert out["rms_radius_sd_px"] == pytest.approx(math.sqrt(2.75) / math.sqrt(2), abs=1e-6)
    assert out["rms_radius_px"] == pytest.approx(math.sqrt(2.75 / 1.5), abs=1e-6)


def test_measuring_side_fits_the_deepest_field_with_half_an_image_to_spare() -> None:
    assert measuring_side(32, 40) == 64  # the default network's conv4: 40 px does not fit in 32
    assert measuring_side(32, 5) == 32
    assert measuring_side(32, 17) == 64  # 17 + 16 > 32
    assert measuring_side(224, 435) == 448  # at most 2x the image
    assert measuring_side(32, 1000) == 64
    assert measuring_side(32, 1000, limit=4) == 128


def test_channels_within_the_budget() -> None:
    assert channels_within(128, 10**6, images=8, budget=1e10) == spread_channels(128, 16)  # cheap: the cap
    assert len(channels_within(128, 10**8, images=8, budget=1e10)) == 4  # 1e10 // (3 x 1e8 x 8) = 4
    assert channels_within(512, 10**10, images=8, budget=1e10) == [0, 511]  # never fewer than 2
    assert channels_within(3, 10**10) == [0, 2]


def test_mirror_pad_keeps_the_image_in_the_middle_and_mirrors_outward() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = mirror_pad(x, 8)
    assert y.shape == (1, 1, 8, 8)
    assert torch.equal(y[..., 2:6, 2:6], x)
    assert torch.equal(y[0, 0, 2, :2], torch.tensor([2.0, 1.0]))  # reflected without repeating the edge
    assert mirror_pad(x, 20).shape == (1, 1, 20, 20)  # repeated where one reflection is not enough
    assert torch.equal(mirror_pad(x, 20)[..., 8:12, 8:12], x)


def test_spread_channels() -> None:
    assert spread_channels(10) == list(range(10))
    chosen = spread_channels(128)
    assert len(chosen) == 16 and chosen[0] == 0 and chosen[-1] == 127 and chosen == sorted(set(chosen))
    assert spread_channels(5, limit=3) == [0, 2, 4]
