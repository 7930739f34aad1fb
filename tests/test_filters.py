"""Filter pictures for any conv: grouped, depthwise, 1x1, 7x7 stride-2 RGB, grey input, very wide layers."""

from __future__ import annotations

import pytest
import torch

from featviz.filters import MAX_SIDE, evolution_strip, filter_grid, filter_tiles, layer_scale, tile_size

BOUND = 4096  # px a side no picture may exceed, whatever the layer


def _weights(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def _check_picture(img: torch.Tensor) -> None:
    assert img.dtype == torch.uint8 and img.dim() == 3 and img.shape[0] == 3
    assert 0 < img.shape[1] <= BOUND and 0 < img.shape[2] <= BOUND


def _draw_all(w: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tiles, grid, strip of ``w`` (the strip over three epochs), checking that ``w`` is left unchanged."""
    before = w.clone()
    s = layer_scale([w, 2 * w])
    tiles = filter_tiles(w, s, **kw)
    grid, strip = filter_grid(w, s, **kw), evolution_strip([w, 2 * w, 3 * w], s, **kw)
    assert torch.equal(w, before) and w.dtype == before.dtype
    assert tiles.dtype == torch.float32 and tiles.min() >= 0 and tiles.max() <= 1 and len(tiles) == len(w)
    _check_picture(grid)
    _check_picture(strip)
    return tiles, grid, strip


def test_first_conv_7x7_stride2_rgb() -> None:
    w = _weights(64, 3, 7, 7)
    tiles, grid, strip = _draw_all(w)
    s = layer_scale([w, 2 * w])
    assert tiles.shape == (64, 3, 7, 7)
    assert torch.allclose(tiles, (0.5 + 0.5 * w / s).clamp(0, 1))  # one RGB pixel per weight, grey at 0
    assert grid.shape == (3, 354, 354)  # 8 x 8 tiles of 7 px enlarged 6x (42 px) with 2 px padding: 8*44+2
    assert strip.shape[1:] == (16 * 30 + 2, 3 * 30 + 2)  # 16 filters x 3 epochs, 7 px tiles enlarged 4x (28 px)


def test_first_conv_one_input_channel_is_grey() -> None:
    tiles, grid, _ = _draw_all(_weights(8, 1, 5, 5))
    assert tiles.shape == (8, 3, 5, 5)
    assert torch.equal(tiles[:, 0], tiles[:, 1]) and torch.equal(tiles[:, 1], tiles[:, 2])
    assert torch.equal(grid[0], grid[1]) and torch.equal(grid[1], grid[2])  # grey tiles on a white grid


def test_depthwise_one_grey_tile_per_filter() -> None:
    w = _weights(96, 1, 3, 3)  # Conv2d(96, 96, 3, groups=96)
    tiles, grid, _ = _draw_all(w)
    assert tiles.shape == (96, 3, 3, 3) and torch.equal(tiles[:, 0], tiles[:, 2])
    zero = filter_tiles(torch.zeros(4, 1, 3, 3), 1.0)
    assert torch.all(zero == 0.5)  # a zero weight is mid-grey


def test_grouped_conv_mosaic_of_in_over_groups() -> None:
    w = _weights(32, 4, 3, 3)  # Conv2d(32, 32, 3, groups=8): 4 inputs per filter
    tiles, _, _ = _draw_all(w)
    assert tiles.shape == (32, 3, 7, 7)  # 2 x 2 kernels of 3 px with a 1 px gap
    assert torch.all(tiles[:, :, 3, :] == 0.85) and torch.all(tiles[:, :, :, 3] == 0.85)  # the gap
    # a grouped conv deep in a network with 3 channels per group: not colours when the caller says so
    assert filter_tiles(_weights(24, 3, 3, 3), 1.0, rgb=False).shape == (24, 3, 7, 7)
    assert filter_tiles(_weights(24, 3, 3, 3), 1.0).shape == (24, 3, 3, 3)


def test_kernel_placement_in_mosaic() -> None:
    w = torch.zeros(1, 5, 3, 3)
    w[0, 4] = 1.0  # only the fifth input channel's kernel is positive: row 1, column 1 of a 3-wide mosaic
    t = filter_tiles(w, 1.0)
    assert t.shape == (1, 3, 7, 11)  # 2 rows x 3 columns of 3 px kernels
    red = t[0, 0] > t[0, 2] + 0.3
    assert red[4:7, 4:7].all() and red.sum() == 9


def test_pointwise_1x1_convs_are_visible_blocks() -> None:
    w = _weights(16, 8, 1, 1)
    tiles, grid, strip = _draw_all(w)
    assert tiles.shape == (16, 3, 3, 3)  # 8 inputs -> a 3 x 3 block of pixels, no gaps between 1x1 kernels
    assert grid.shape[1] >= 4 * 48 and strip.shape[2] >= 3 * 30  # enlarged, not dots
    rgb_1x1 = _draw_all(_weights(8, 3, 1, 1))
    assert rgb_1x1[0].shape == (8, 3, 1, 1) and rgb_1x1[1].shape[1] >= 3 * 48  # one colour per filter, enlarged
    wide_1x1 = filter_tiles(_weights(4, 2048, 1, 1), 1.0)
    assert wide_1x1.shape == (4, 3, 45, 46)  # all 2048 inputs fit as single pixels (46 columns x 45 rows)


def test_very_wide_layer_stays_bounded() -> None:
    w = _weights(512, 512, 3, 3)
    tiles, grid, strip = _draw_all(w)
    assert max(grid.shape[1:]) <= MAX_SIDE <= BOUND
    assert tile_size(w.shape) == (63, 63)  # the first 256 input channels: 16 x 16 kernels of 3 px + gaps
    first4 = filter_tiles(w[:, :4], layer_scale([w, 2 * w]))  # the same colour map: kernel 0 at the top left
    assert torch.equal(tiles[:, :, :3, :3], first4[:, :, :3, :3])
    huge = _weights(2048, 2048, 3, 3)
    _check_picture(filter_grid(huge, 1.0))
    _check_picture(filter_grid(w, 1.0, nrow=512, zoom=50))  # even a caller's one-row layout is bounded


def test_strip_with_many_epochs_is_bounded() -> None:
    ws = [torch.zeros(16, 3, 5, 5)] * 699 + [-torch.ones(16, 3, 5, 5)]  # only the last epoch is black
    strip = evolution_strip(ws, 1.0)
    _check_picture(strip)
    assert strip.shape[1:] == (16 * 7 + 2, 292 * 7 + 2)  # 292 evenly spaced epochs of 5 px tiles fit in 2048
    assert torch.all(strip[:, 2:7, 2:7] == 128)  # first column: the init (zero weights, grey)
    assert torch.all(strip[:, 2:7, -7:-2] == 0)  # last column: the last epoch
    _check_picture(evolution_strip(ws[:1], 1.0))


def test_inputs_of_any_dtype_layout_or_grad_are_not_modified() -> None:
    w = _weights(8, 16, 3, 3).to(torch.float16)
    _draw_all(w)
    w = _weights(8, 16, 3, 3).requires_grad_()
    _draw_all(w)
    w = _weights(8, 16, 3, 3).contiguous(memory_format=torch.channels_last)
    _draw_all(w)


def test_nan_weights_and_bad_shapes() -> None:
    w = _weights(4, 3, 3, 3)
    w[0, 0, 0, 0] = float("nan")
    finite = w.abs().flatten()[1:]  # the NaN is the first element
    assert layer_scale([w]) == pytest.approx(float(torch.quantile(finite, 0.995)))  # NaN ignored, not propagated
    _check_picture(filter_grid(w, layer_scale([w])))
    with pytest.raises(ValueError, match=r"\[out, in/groups, kh, kw\]"):
        filter_grid(torch.zeros(4, 3, 3), 1.0)


def test_layer_scale_all_zero_is_one() -> None:
    assert layer_scale([torch.zeros(2, 3, 3, 3)]) == 1.0


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "resnext50_32x4d"])
def test_every_conv_of_torchvision_models(name: str) -> None:
    """Depthwise, grouped, 1x1, 7x7 stride-2 and 2048-wide convs of real networks (random init, no download)."""
    import torchvision

    model = getattr(torchvision.models, name)(weights=None, num_classes=10)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            w = m.weight.detach()
            before = w.clone()
            _check_picture(filter_grid(w, layer_scale([w])))
            assert torch.equal(w, before)
