"""The optvis fast path: a copy of the model with BatchNorm folded, pools fused and channels selected, exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featviz.config import ModelConfig
from featviz.model import build_model
from featviz.optvis import channel, maximize_channels, neuron
from featviz.optvis.fastpath import PooledConv, SelectedConv, fast_copy, select_channels
from optvis_models import tiny_cnn


def test_fast_copy_keeps_named_outputs() -> None:
    model = tiny_cnn()
    x = torch.rand(2, 3, 16, 16)
    keep = ["features.bn1", "features.pool1", "features.conv2", "features.relu2"]
    fast = fast_copy(model, keep)
    assert isinstance(fast.features.bn1, nn.Identity) and isinstance(model.features.bn1, nn.BatchNorm2d)
    from featviz.hooks import capture

    with capture(model, keep) as a, capture(fast, keep) as b, torch.no_grad():
        model(x), fast(x)
    for name in keep:
        assert torch.allclose(a[name], b[name], atol=1e-5), name


@pytest.mark.parametrize("stride,pad,dil", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (1, 0, 1)])
def test_selected_conv_equals_the_full_conv_channel(stride: int, pad: int, dil: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, stride=stride, padding=pad, dilation=dil)
    idx = torch.tensor([6, 0, 3, 3])
    x = torch.randn(4, 5, 11, 9).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    ref = conv(x)[torch.arange(4), idx].unsqueeze(1)
    out = SelectedConv(conv, idx)(x)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    (g_out,) = torch.autograd.grad(SelectedConv(conv, idx)(x).square().sum(), x)
    assert torch.allclose(g_out, g_ref, atol=1e-4)


@pytest.mark.parametrize("k, cin, hw", [(5, 3, (16, 16)), (5, 1, (12, 20)), (9, 2, (18, 14)), (5, 3, (15, 16))])
@pytest.mark.parametrize("channels_last", [True, False])
def test_pooled_conv_equals_the_conv_then_the_pool(k: int, cin: int, hw: tuple[int, int], channels_last: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, 6, k, padding=k // 2)
    x = torch.randn(3, cin, *hw)
    x = (x.contiguous(memory_format=torch.channels_last) if channels_last else x).requires_grad_(True)
    ref = F.max_pool2d(conv(x), 2)
    out = PooledConv(conv)(x)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)
    g = torch.randn_like(ref)
    (g_ref,) = torch.autograd.grad(ref, x, g)
    (g_out,) = torch.autograd.grad(PooledConv(conv)(x), x, g)
    assert torch.allclose(g_out, g_ref, atol=1e-5)


def test_pooled_conv_gives_ties_to_the_first_position_as_max_pool_does() -> None:
    conv = nn.Conv2d(3, 4, 5, padding=2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 2, 2] = 1.0  # output = sum of the pixel's channels + bias
    x = torch.ones(2, 3, 8, 8, requires_grad=True)  # every position of every block ties
    g = torch.rand(2, 4, 4, 4)
    (g_ref,) = torch.autograd.grad(F.max_pool2d(conv(x), 2), x, g)
    (g_out,) = torch.autograd.grad(PooledConv(conv)(x), x, g)
    assert torch.equal(g_out, g_ref) and g_ref[:, :, 0::2, 0::2].abs().sum() > 0 and g_ref[:, :, 1::2].abs().sum() == 0


def test_fast_copy_pools_into_a_thin_conv_only_where_exact() -> None:
    model = tiny_cnn()  # conv1 3->4, 5x5, then bn1, relu1, pool1
    x = torch.rand(2, 3, 16, 16)
    fast = fast_copy(model, ["features.pool1", "features.conv2"])
    assert isinstance(fast.features.conv1, PooledConv)
    from featviz.hooks import capture

    with (
        capture(model, ["features.pool1", "features.conv2"]) as a,
        capture(fast, ["features.pool1", "features.conv2"]) as b,
        torch.no_grad(),
    ):
        model(x), fast(x)
    assert torch.allclose(a["features.pool1"], b["features.pool1"], atol=1e-5)
    assert torch.allclose(a["features.conv2"], b["features.conv2"], atol=1e-5)
    for kept in ("features.conv1", "features.bn1", "features.relu1"):  # outputs before the pool stay exact
        assert type(fast_copy(model, [kept]).features.conv1) is nn.Conv2d, kept
    wide = build_model(ModelConfig(widths=(4, 8), kernels=(3, 3), strides=(1, 1), pools=(True, False)), seed=0)
    assert type(fast_copy(wide, ["features.conv2"]).features.conv1) is nn.Conv2d  # 3x3: 4x the work on blocks


def test_select_channels_applies_only_where_it_is_exact() -> None:
    model = tiny_cnn()
    copy_ = fast_copy(model, ["features.bn2"])  # bn2 folded into conv2, left as Identity
    assert select_channels(copy_, "features.bn2", torch.tensor([0, 5]))
    assert isinstance(copy_.features.conv2, SelectedConv)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        want = model.features[:5](x)  # conv1 bn1 relu1 pool1 conv2 -> bn2 below
        want = model.features.bn2(want)[torch.arange(2), torch.tensor([0, 5])]
        got = copy_.features[:6](x)[:, 0]
    assert torch.allclose(got, want, atol=1e-5)
    fresh = fast_copy(model, ["features.bn2"])
    assert not select_channels(fresh, "features.bn2", torch.tensor([0, 99]))  # out of range: untouched
    assert not select_channels(fresh, "features.relu2", torch.tensor([0, 1]))  # not a conv output
    assert type(fresh.features.conv2) is nn.Conv2d


def test_render_with_and_without_channel_selection_agree() -> None:
    model = tiny_cnn()
    a = maximize_channels(model, "features.bn2", size=16, steps=12)
    b = maximize_channels(model, "features.bn2", size=16, steps=12, optimize=False)
    assert torch.allclose(a.values, b.values, rtol=1e-3, atol=1e-3)
    assert (a.images - b.images).abs().max() < 1e-3


def test_prepare_fast_returns_the_copy_and_the_objective_to_use_on_it() -> None:
    from featviz.optvis import prepare_fast

    model = tiny_cnn()
    obj = channel("features.bn2", 5)
    net, work = prepare_fast(model, obj, batch=2)
    assert net is not model and isinstance(net.features.conv2, SelectedConv) and work is not obj
    assert type(model.features.conv2) is nn.Conv2d  # the model itself is untouched
    from featviz.optvis.forward import forward_until

    x = torch.rand(2, 3, 16, 16)
    with (
        forward_until(model, ["features.bn2"]) as run_a,
        forward_until(net, ["features.bn2"]) as run_b,
        torch.no_grad(),
    ):
        assert torch.allclose(obj(run_a(x)), work(run_b(x)), atol=1e-5)
    same_net, same = prepare_fast(model, neuron("features.bn2", 1), batch=2)
    assert same_net is not model and same.name == "features.bn2:1@None,None"  # not a channel mean: unchanged
