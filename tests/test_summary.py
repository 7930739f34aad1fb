"""The parameter table: formulas, zero-weight rows, totals, no hooks left behind."""

from __future__ import annotations

import pytest
import torch

from featviz.config import ModelConfig
from featviz.hooks import capture, hook_count
from featviz.model import build_model
from featviz.summary import CONV_NOTE, format_table, layer_table


@pytest.fixture(scope="module")
def default_model():
    return build_model(ModelConfig(), seed=0)


@pytest.fixture(scope="module")
def rows(default_model):
    return {r.name: r for r in layer_table(default_model, (3, 32, 32))}


def test_conv_rows(rows) -> None:
    conv2 = rows["features.conv2"]
    assert conv2.type == "Conv2d"
    assert conv2.formula == "32 x 16 x 3 x 3 = 4,608"
    assert conv2.weights == 4608 and conv2.biases == 0 and conv2.trainable == 4608
    assert rows["features.conv1"].formula == "16 x 3 x 5 x 5 = 1,200"
    assert rows["features.conv4"].weights == 73_728 and rows["features.conv3"].weights == 18_432


def test_output_shapes(rows) -> None:
    assert rows["features.conv1"].output_shape == [16, 32, 32]
    assert rows["features.pool1"].output_shape == [16, 16, 16]
    assert rows["features.pool3"].output_shape == [64, 4, 4]
    assert rows["features.relu4"].output_shape == [128, 4, 4]
    assert rows["head.gap"].output_shape == [128, 1, 1]
    assert rows["head.flatten"].output_shape == [128]
    assert rows["head.fc"].output_shape == [10]


def test_rows_in_forward_order(rows) -> None:
    names = list(rows)
    assert names[:5] == ["features.conv1", "features.bn1", "features.relu1", "features.pool1", "features.conv2"]
    assert names[-1] == "head.fc"


def test_pool_relu_flatten_have_no_weights(rows) -> None:
    for name, row in rows.items():
        if row.type in ("MaxPool2d", "ReLU", "AdaptiveAvgPool2d", "Flatten"):
            assert (row.weights, row.biases, row.trainable) == (0, 0, 0), name
    assert sum(r.type == "MaxPool2d" for r in rows.values()) == 3
    assert sum(r.type == "ReLU" for r in rows.values()) == 4
    assert "no weights" in rows["features.pool1"].note and "no weights" in rows["features.relu1"].note


def test_batchnorm_two_per_channel(rows) -> None:
    for d, c in enumerate((16, 32, 64, 128), start=1):
        bn = rows[f"features.bn{d}"]
        assert bn.weights == c and bn.biases == c and bn.trainable == 2 * c
        assert bn.formula == f"{c} scales + {c} shifts"


def test_linear_row(rows) -> None:
    fc = rows["head.fc"]
    assert fc.weights == 1_280 and fc.biases == 10 and fc.trainable == 1_290
    assert fc.formula == "128 x 10 = 1,280"


# Hand-computed for the default ModelConfig (the README's table): conv weights out x in x k x k, no conv
# biases (BatchNorm follows), BatchNorm a scale and a shift per channel, fc 128 x 10 weights + 10 biases.
DEFAULT_TRAINABLE = {
    "features.conv1": 1_200,  # 16 x 3 x 5 x 5
    "features.bn1": 32,  # 2 x 16
    "features.conv2": 4_608,  # 32 x 16 x 3 x 3
    "features.bn2": 64,
    "features.conv3": 18_432,  # 64 x 32 x 3 x 3
    "features.bn3": 128,
    "features.conv4": 73_728,  # 128 x 64 x 3 x 3
    "features.bn4": 256,
    "head.fc": 1_290,  # 128 x 10 + 10
}
DEFAULT_TOTAL = 99_738  # 97,968 conv + 480 BatchNorm + 1,290 fc


def test_total_equals_parameter_count(rows, default_model) -> None:
    assert {n: r.trainable for n, r in rows.items() if r.trainable} == DEFAULT_TRAINABLE
    assert sum(r.trainable for r in rows.values()) == DEFAULT_TOTAL
    assert sum(r.weights + r.biases for r in rows.values()) == DEFAULT_TOTAL
    assert sum(p.numel() for p in default_model.parameters()) == DEFAULT_TOTAL  # the table counts what is there


def test_two_3x3_filters_over_rgb() -> None:
    """A conv of two 3x3 filters over RGB: 2 x 3 x 3 x 3 = 54 weights + 2 biases; a 72 -> 5 linear: 360 + 5."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 6, 5))
    conv, flat, fc = layer_table(model, (3, 8, 8))
    assert (conv.weights, conv.biases, conv.trainable) == (54, 2, 56)
    assert conv.formula == "2 x 3 x 3 x 3 = 54" and conv.output_shape == [2, 6, 6]
    assert (flat.weights, flat.trainable, flat.output_shape) == (0, 0, [72])
    assert (fc.weights, fc.biases, fc.trainable) == (360, 5, 365) and fc.formula == "72 x 5 = 360"
    assert "total trainable parameters: 421" in format_table([conv, flat, fc])


def test_format_table(default_model) -> None:
    text = format_table(layer_table(default_model, (3, 32, 32)))
    assert CONV_NOTE in text
    assert "total trainable parameters: 99,738\n" in text
    assert "32 x 16 x 3 x 3 = 4,608" in text
    assert text.splitlines()[0].split()[:2] == ["layer", "type"]


def test_no_hooks_left_behind(default_model) -> None:
    assert hook_count(default_model) == 0
    layer_table(default_model, (3, 32, 32))
    assert hook_count(default_model) == 0
    with pytest.raises(ZeroDivisionError):
        with capture(default_model, ["features.conv1"]):
            assert hook_count(default_model) == 1
            1 / 0
    assert hook_count(default_model) == 0


def test_table_keeps_training_mode(default_model) -> None:
    default_model.train()
    layer_table(default_model, (3, 16, 16))
    assert default_model.training


def test_stride_and_input_size_do_not_change_weight_counts() -> None:
    s1 = build_model(ModelConfig(strides=(1, 1, 1, 1)))
    s2 = build_model(ModelConfig(strides=(2, 2, 1, 1)))
    t1 = layer_table(s1, (3, 32, 32))
    t2 = layer_table(s2, (3, 32, 32))
    t3 = layer_table(s1, (3, 64, 64))
    for a, b, c in zip(t1, t2, t3):
        assert a.name == b.name == c.name
        assert a.weights == b.weights == c.weights and a.formula == b.formula == c.formula
    # ... but the output shapes do change
    assert t1[0].output_shape == [16, 32, 32] and t2[0].output_shape == [16, 16, 16]
    assert t3[0].output_shape == [16, 64, 64]
    assert sum(p.numel() for p in s1.parameters()) == sum(p.numel() for p in s2.parameters())


def test_table_without_batchnorm_counts_biases() -> None:
    model = build_model(ModelConfig(batchnorm=False))
    rows = {r.name: r for r in layer_table(model, (3, 32, 32))}
    assert rows["features.conv1"].biases == 16 and rows["features.conv1"].trainable == 1216
    assert "features.bn1" not in rows
    # 97,968 conv weights + 16 + 32 + 64 + 128 conv biases + 1,290 fc
    assert sum(r.trainable for r in rows.values()) == 99_498
    assert sum(p.numel() for p in model.parameters()) == 99_498
    assert torch.is_tensor(model.features.conv1.bias)
