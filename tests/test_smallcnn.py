"""featviz's own CNN (model.py): build_model and conv_layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featviz.config import ModelConfig
from featviz.errors import ConfigError
from featviz.model import build_model, conv_layers


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_seeded_build_is_deterministic(tiny_cfgs) -> None:
    _, cfg, _ = tiny_cfgs
    assert _same_weights(build_model(cfg, seed=3), build_model(cfg, seed=3))
    assert not _same_weights(build_model(cfg, seed=3), build_model(cfg, seed=4))


def test_seeded_build_leaves_global_rng_alone(tiny_cfgs) -> None:
    _, cfg, _ = tiny_cfgs
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(cfg, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_conv_layers_default_model() -> None:
    layers = conv_layers(build_model(ModelConfig()))
    assert [layer.name for layer in layers] == ["features.conv1", "features.conv2", "features.conv3", "features.conv4"]
    assert [layer.depth for layer in layers] == [1, 2, 3, 4]
    assert [(layer.in_ch, layer.out_ch) for layer in layers] == [(3, 16), (16, 32), (32, 64), (64, 128)]
    assert [layer.kernel for layer in layers] == [(5, 5), (3, 3), (3, 3), (3, 3)]
    for layer in layers:
        k = layer.kernel[0]
        assert layer.weights == layer.out_ch * layer.in_ch * k * k
        assert layer.biases == 0  # batchnorm: convs have no bias
        assert layer.params == layer.weights
    assert layers[1].weights == 4608
    d = layers[0].to_json()
    assert d["name"] == "features.conv1" and d["kernel"] == [5, 5] and d["params"] == 16 * 3 * 25


def test_conv_layers_match_state_dict_and_bias_without_batchnorm(tiny_cfgs) -> None:
    _, cfg, _ = tiny_cfgs
    model = build_model(
        ModelConfig(widths=(4, 8), kernels=(5, 3), strides=(1, 2), pools=(True, False), batchnorm=False)
    )
    layers = conv_layers(model)
    sd = model.state_dict()
    for layer in layers:
        assert sd[f"{layer.name}.weight"].numel() == layer.weights
        assert sd[f"{layer.name}.bias"].numel() == layer.biases == layer.out_ch
    assert [layer.stride for layer in layers] == [1, 2]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("side", [16, 32])
def test_forward_shape(tiny_cfgs, side: int) -> None:
    _, cfg, _ = tiny_cfgs
    model = build_model(cfg, seed=0).eval()
    with torch.no_grad():
        out = model(torch.randn(5, 3, side, side))
    assert out.shape == (5, cfg.num_classes)
    assert torch.isfinite(out).all()


def test_default_model_forward_shape() -> None:
    model = build_model(ModelConfig(num_classes=7), seed=0).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_one_channel_model() -> None:
    cfg = ModelConfig(in_channels=1, num_classes=4, widths=(4, 8), kernels=(5, 3), strides=(1, 1), pools=(True, False))
    model = build_model(cfg, seed=0).eval()
    assert conv_layers(model)[0].in_ch == 1
    assert conv_layers(model)[0].weights == 4 * 1 * 5 * 5
    with torch.no_grad():
        assert model(torch.randn(3, 1, 16, 16)).shape == (3, 4)
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 3, 16, 16))


def test_dropout_in_head() -> None:
    model = build_model(ModelConfig(dropout=0.5))
    names = [n for n, _ in model.named_modules()]
    assert "head.dropout" in names and "head.fc" in names


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(widths=(4, 8), kernels=(5,)),
        dict(kernels=(4, 3, 3, 3)),
        dict(widths=()),
        dict(num_classes=1),
        dict(dropout=1.0),
    ],
)
def test_bad_model_config(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        ModelConfig(**kwargs)
