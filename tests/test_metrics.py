"""Each metric against a known answer on constructed inputs (definitions: docs/metrics.md)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from featviz.metrics import (
    incompressibility,
    linear_cka,
    per_filter_change,
    percentile_of,
    relative_change,
    rotation,
    spectrum_slope,
    structure_bits,
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
    assert linear_cka(x, y @ q) == pytest.approx(linear_cka(x, y), abs=1e-7)  # rotating one side changes nothing
    assert linear_cka(2.0 * x, 0.1 * y) == pytest.approx(linear_cka(x, y), abs=1e-7)
    with pytest.raises(ValueError):
        linear_cka(x, y[:100])


@pytest.mark.parametrize("width", [16, 128, 512])
def test_debiased_cka_of_independent_features_is_zero_at_any_width(width: int) -> None:
    g = torch.Generator().manual_seed(width)
    x, y = torch.randn(1000, width, generator=g), torch.randn(1000, width, generator=g)
    assert linear_cka(x, y) == pytest.approx(0.0, abs=0.03)
    # the plain estimator is what this replaces: it grows with width (about d / (n + d) for noise)
    assert linear_cka(x, y, debiased=False) == pytest.approx(width / (1000 + width), rel=0.25)


def test_biased_and_debiased_cka_agree_on_a_similar_pair() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1000, 32, generator=g) @ torch.randn(32, 32, generator=g)
    y = x + 0.05 * x.std() * torch.randn(1000, 32, generator=g)
    hi, lo = linear_cka(x, y, debiased=False), linear_cka(x, y)
    assert hi > 0.98 and lo == pytest.approx(hi, abs=0.01)


def test_incompressibility_constant_and_noise() -> None:
    const = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    assert incompressibility(const) < 0.1
    noise = torch.randint(0, 256, (3, 64, 64), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    assert incompressibility(noise) == pytest.approx(24.0, rel=0.02)  # 8 bits per channel
    grey = torch.randint(0, 256, (1, 64, 64), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    assert incompressibility(grey) == pytest.approx(8.0, rel=0.03)


def _grating(side: int = 32, period: int = 8) -> torch.Tensor:
    """An RGB sine grating, uint8 [3, side, side], constant down each column."""
    x = torch.arange(side, dtype=torch.float64)
    row = ((torch.sin(2 * math.pi * x / period) + 1) * 127.5).round().to(torch.uint8)
    return row.expand(side, side).unsqueeze(0).repeat(3, 1, 1).contiguous()


def _shuffled(img: torch.Tensor, seed: int) -> torch.Tensor:
    """``img`` with its pixel positions shuffled, each pixel keeping its colour: the same histogram, no pattern."""
    c, h, w = img.shape
    order = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))
    return img.reshape(c, h * w)[:, order].reshape(c, h, w)


def test_structure_bits_known_answers() -> None:
    """Zero where the arrangement carries nothing (a constant image: every shuffle is the same bytes, so
    exactly 0; noise: about 0); bits per pixel saved for a grating, an edge and a blob; about 0 for the
    grating's own pixels shuffled, which the incompressibility still scores higher than noise-free."""
    assert structure_bits(torch.full((3, 32, 32), 77, dtype=torch.uint8)) == 0.0
    noise = torch.randint(0, 256, (3, 32, 32), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    assert abs(structure_bits(noise)) < 0.2
    grating = _grating()
    assert structure_bits(grating) > 3.0  # the incompressibility of the shuffled copies is ~4.5, the grating's ~0.5
    assert abs(structure_bits(_shuffled(grating, 5))) < 0.3  # same histogram, no pattern: nothing saved
    blob = torch.zeros(3, 32, 32, dtype=torch.uint8)
    blob[:, 8:24, 8:24] = 200
    assert structure_bits(blob) > 1.0
    assert structure_bits(grating.float() / 255) == structure_bits(grating)  # floats in 0..1 are quantized first


def test_structure_bits_is_the_shuffled_copies_minus_the_image() -> None:
    """The definition, on the grating: the mean incompressibility of the seeded shuffles, minus the image's."""
    grating = _grating(period=6)
    g = torch.Generator().manual_seed(0)
    copies = [grating.reshape(3, -1)[:, torch.randperm(32 * 32, generator=g)].reshape(3, 32, 32) for _ in range(4)]
    expected = sum(incompressibility(c) for c in copies) / 4 - incompressibility(grating)
    assert structure_bits(grating) == pytest.approx(expected, abs=1e-12)
    assert structure_bits(grating, permutations=1, seed=9) != structure_bits(grating)  # the seed is used


def _power_law(n: int, a: float, g: torch.Generator, crop: int | None = None) -> torch.Tensor:
    """A 1-channel image whose power spectrum is exactly 1/f^a (random phases); with ``crop``, the
    top-left crop x crop of an n x n such image, which is not periodic."""
    fy = torch.fft.fftfreq(n, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.fftfreq(n, dtype=torch.float64).view(1, -1)
    f = torch.sqrt(fy**2 + fx**2)
    f[0, 0] = 1.0
    amp = f ** (-a / 2)
    amp[0, 0] = 0.0
    phase = torch.rand(n, n, generator=g, dtype=torch.float64) * 2 * math.pi
    img = torch.fft.ifft2(torch.polar(amp, phase)).real
    img = img[:crop, :crop] if crop else img
    return ((img - img.min()) / (img.max() - img.min()))[None]  # 0..1, as images are stored


@pytest.mark.parametrize("a", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("periodic", [True, False])
def test_spectrum_slope_recovers_known_power_laws(a: float, periodic: bool) -> None:
    g = torch.Generator().manual_seed(int(10 * a) + periodic)
    img = _power_law(128, a, g) if periodic else _power_law(512, a, g, crop=128)
    assert spectrum_slope(img) == pytest.approx(-a, abs=0.15)
    # at the 32 px of the default run, single images scatter more; the mean of 16 is still right
    small = [spectrum_slope(_power_law(32, a, g) if periodic else _power_law(128, a, g, crop=32)) for _ in range(16)]
    assert sum(small) / len(small) == pytest.approx(-a, abs=0.15)


def test_spectrum_slope_is_of_the_luminance_of_coloured_images() -> None:
    """The slope is measured on the mean of the colour channels: a steep 1/f^3 pattern in green and blue
    with a faint 1/f pattern in red scores about -3 (red alone would score -1), and opposite patterns in
    two channels cancel to the third's."""
    g = torch.Generator().manual_seed(11)
    steep, shallow = _power_law(128, 3.0, g)[0], _power_law(128, 1.0, g)[0]
    img = torch.stack([0.5 + 0.02 * (shallow - 0.5), steep, steep])
    assert spectrum_slope(img) == pytest.approx(-3.0, abs=0.2)
    assert spectrum_slope(img[:1]) == pytest.approx(-1.0, abs=0.2)
    cancel = torch.stack([steep, 1 - steep, shallow])  # luminance = (1 + shallow) / 3
    assert spectrum_slope(cancel) == pytest.approx(-1.0, abs=0.2)


def test_spectrum_slope_of_white_noise_ramp_and_flat_images() -> None:
    g = torch.Generator().manual_seed(4)
    assert spectrum_slope(torch.rand(1, 128, 128, generator=g)) == pytest.approx(0.0, abs=0.15)
    ramp = torch.linspace(0, 1, 32).view(1, 1, 32).expand(3, 32, 32)
    assert spectrum_slope(ramp) is None  # a gradient is flat after the plane: no steep spectrum (it was -2.7)
    assert spectrum_slope((ramp * 255).round().to(torch.uint8)) is None  # also once quantized
    assert spectrum_slope(torch.full((3, 32, 32), 0.5)) is None
    noisy_ramp = ramp + 0.05 * torch.rand(3, 32, 32, generator=g)
    assert spectrum_slope(noisy_ramp) == pytest.approx(0.0, abs=0.5)  # the ramp adds nothing; the noise is white


def test_percentile_of_known_answers() -> None:
    sample = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert percentile_of(10.0, sample) == 100.0 and percentile_of(0.0, sample) == 0.0
    assert percentile_of(2.5, sample) == 50.0  # 2 of 4 below
    assert percentile_of(3.0, sample) == 62.5  # 2 below, 1 equal: (2 + 0.5) / 4
    assert percentile_of(5.0, torch.full((7,), 5.0)) == 50.0  # all tied
    squashed = torch.tanh(sample * 0.3) * 9 - 4  # an increasing map of both sides: no scale, no zero point
    assert percentile_of(float(torch.tanh(torch.tensor(2.5 * 0.3)) * 9 - 4), squashed) == 50.0
    with pytest.raises(ValueError):
        percentile_of(1.0, torch.tensor([]))


def test_recalibrated_batchnorm_buffers_are_the_probe_statistics() -> None:
    """After recalibration every BatchNorm holds the exact mean and unbiased variance of the input it
    normalizes in eval mode (the BatchNorms before it already recomputed), whatever its buffers held
    before; a momentum-0.1 update would not, nor would statistics taken while the BatchNorms before it
    normalized by their batch's biased variance (a training-mode pass)."""
    from featviz.model import recalibrate_batchnorm

    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5))
    for bn in (net[1], net[4]):
        bn.running_mean.fill_(7.0)
        bn.running_var.fill_(9.0)
    x = torch.randn(64, 3, 12, 12, generator=g) * 2 + 1
    assert recalibrate_batchnorm(net, x) == 2
    with torch.no_grad():
        a1 = net[0](x)
        a2 = net[3](net[2](net[1](a1)))  # the first BatchNorm in eval mode, with its recomputed statistics
        trained = net[3](net[2](torch.nn.functional.batch_norm(a1, None, None, net[1].weight, net[1].bias, True)))
    for bn, a in ((net[1], a1), (net[4], a2)):
        flat = a.transpose(0, 1).reshape(a.shape[1], -1)
        assert torch.allclose(bn.running_mean, flat.mean(1), atol=1e-6)
        assert torch.allclose(bn.running_var, flat.var(1, unbiased=True), rtol=1e-5)
    other = trained.transpose(0, 1).reshape(5, -1).var(1, unbiased=True)
    assert not torch.allclose(net[4].running_var, other, rtol=1e-5)  # the two definitions do differ here
    assert not net.training and not net[1].training


def test_calibrating_pass_gives_the_recalibrated_models_output() -> None:
    """One pass inside ``calibrating_batchnorm`` returns what a recalibration followed by an eval-mode pass
    returns, bit for bit, and sets the same statistics; a BatchNorm the pass never reaches keeps cleared
    statistics; a model without BatchNorm is left as it was."""
    from featviz.model import batches, calibrating_batchnorm, recalibrate_batchnorm

    g = torch.Generator().manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5))
    x = torch.randn(40, 3, 10, 10, generator=g)
    recalibrate_batchnorm(net, x)
    want, stats = net(x), [b.clone() for b in (net[1].running_var, net[4].running_mean)]
    with calibrating_batchnorm(net) as count:
        got = net(x)
    assert count == 2 and torch.equal(got, want)
    assert torch.equal(net[1].running_var, stats[0]) and torch.equal(net[4].running_mean, stats[1])
    assert int(net[4].num_batches_tracked) == 1
    with calibrating_batchnorm(net):
        net[:2](x)  # stops before the second BatchNorm
    assert torch.equal(net[4].running_mean, torch.zeros(5)) and torch.equal(net[4].running_var, torch.ones(5))
    plain = nn.Sequential(nn.Conv2d(3, 2, 3))
    with calibrating_batchnorm(plain) as count:
        assert count == 0 and not plain.training
    assert [len(b) for b in batches(torch.zeros(9, 1), 4, 2)] == [4, 2, 2, 1]
    many = torch.cat([torch.randn(1000, 3, 5, 5, generator=g), torch.full((1, 3, 5, 5), 50.0)])
    recalibrate_batchnorm(net, many)  # the first 1,000 images' statistics: the outlier after them is left out
    first = net[0](many[:1000]).transpose(0, 1).flatten(1)
    assert torch.allclose(net[1].running_mean, first.mean(1), atol=1e-6)
    assert [len(b) for b in batches(torch.zeros(3, 1), 4, 2)] == [3]


def _u_centred(k: torch.Tensor) -> torch.Tensor:
    """The U-centred Gram matrix (Szekely & Rizzo 2014) of ``k`` with its diagonal removed first: an
    independent route to the unbiased HSIC."""
    n = k.shape[0]
    k = k.clone()
    k.fill_diagonal_(0)
    row = k.sum(1, keepdim=True) / (n - 2)
    col = k.sum(0, keepdim=True) / (n - 2)
    u = k - row - col + k.sum() / ((n - 1) * (n - 2))
    u.fill_diagonal_(0)
    return u


@pytest.mark.parametrize("n,d", [(50, 2048), (64, 512), (100, 2048)])
def test_debiased_cka_matches_the_u_centred_reference(n: int, d: int) -> None:
    """Debiased CKA = <K~, L~> / sqrt(<K~, K~><L~, L~>) with U-centred Gram matrices, at few examples and
    wide layers (where the plain estimator is far off), on pairs from unrelated to nearly identical."""
    g = torch.Generator().manual_seed(n + d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    for mix in (0.0, 0.3, 0.9):
        y = mix * x[:, : d // 2].repeat(1, 2) + (1 - mix) * torch.randn(n, d, generator=g, dtype=torch.float64)
        k, ell = _u_centred(x @ x.T), _u_centred(y @ y.T)
        ref = float((k * ell).sum() / torch.sqrt((k * k).sum() * (ell * ell).sum()))
        assert linear_cka(x, y) == pytest.approx(ref, abs=1e-9), (n, d, mix)


def test_layer_stats_read_the_output_as_the_pass_left_it_or_as_returned() -> None:
    """An in-place ReLU rewrites the BatchNorm's output later in the pass (a torchvision ResNet): by default
    the stats are of the rewritten tensor (the representation measures'), ``as_returned`` of the
    BatchNorm's own output (what activation maximization maximized, read by faithfulness)."""
    from featviz.metrics import layer_stats

    torch.manual_seed(8)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(inplace=True), nn.MaxPool2d(2)).eval()
    x = torch.randn(300, 1, 7, 7)
    left = layer_stats(net, ["1", "3"], x)
    returned = layer_stats(net, ["1", "3"], x, as_returned=True)
    assert left["3"]["width"] == returned["3"]["width"] == 2  # each layer's own map width
    left, returned = left["1"], returned["1"]
    with torch.no_grad():
        bn = net[1](net[0](x)).flatten(2)
    assert torch.allclose(returned["mean"], bn.mean(2), atol=1e-6) and float(returned["mean"].min()) < 0
    assert torch.allclose(left["mean"], bn.relu().mean(2), atol=1e-6) and float(left["mean"].min()) >= 0
    assert torch.equal(returned["argmax"], bn.argmax(2)) and torch.allclose(returned["peak"], bn.amax((0, 2)))
    assert returned["width"] == left["width"] == 5  # the 5 x 5 map of a 3 x 3 conv on 7 x 7 images
