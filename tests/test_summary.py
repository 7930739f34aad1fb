"""The parameter table: formulas, zero-weight rows, totals, no hooks left behind."""

from __future__ import annotations

import pytest
import torch

from featviz.config import ModelConfig
from featviz.errors import ConfigError
from featviz.hooks import capture, hook_count, record_calls
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


# --- any CNN: grouped, depthwise and pointwise convs, residual networks, torchvision blocks ----------------


def _one(module: torch.nn.Module, input_shape: tuple[int, int, int]):
    """The single row of a model that is one layer (the model itself, named "")."""
    (row,) = layer_table(module, input_shape)
    return row


def test_grouped_conv_counts_in_over_groups() -> None:
    row = _one(torch.nn.Conv2d(32, 64, 3, groups=8), (32, 8, 8))
    assert (row.weights, row.biases, row.trainable) == (2304, 64, 2368)  # 64 x 32/8 x 3 x 3, + 64 biases
    assert row.formula == "64 x 4 x 3 x 3 = 2,304" and row.output_shape == [64, 6, 6]
    assert row.note == "64 filters of 4 x 3 x 3: groups=8, each filter sees 4 of the 32 input channels"
    row = _one(torch.nn.Conv2d(32, 32, 3, groups=8, bias=False), (32, 8, 8))
    assert row.weights == 1152 and row.note.startswith("32 filters of 4 x 3 x 3: groups=8")  # 32 x 4 x 3 x 3


def test_depthwise_conv_one_kernel_per_channel() -> None:
    row = _one(torch.nn.Conv2d(16, 16, 3, groups=16, bias=False), (16, 8, 8))
    assert (row.weights, row.formula) == (144, "16 x 1 x 3 x 3 = 144")  # 16 x 3 x 3
    assert row.note == "depthwise: one 3 x 3 kernel per channel"
    row = _one(torch.nn.Conv2d(16, 32, 5, groups=16, bias=False), (16, 8, 8))  # channel multiplier 2
    assert row.weights == 800 and row.note == "depthwise: 2 kernels of 5 x 5 per channel (out = 2 x in)"  # 32 x 25


def test_pointwise_and_strided_convs() -> None:
    row = _one(torch.nn.Conv2d(16, 32, 1, bias=False), (16, 8, 8))
    assert (row.weights, row.output_shape) == (512, [32, 8, 8])  # 32 x 16, no spatial extent
    assert row.note == "32 filters of 16 x 1 x 1; 1 x 1: mixes channels, no spatial extent"
    row = _one(torch.nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), (3, 32, 32))
    assert (row.weights, row.output_shape) == (9408, [64, 16, 16])  # 64 x 3 x 7 x 7; stride halves the side
    assert _one(torch.nn.Conv2d(1, 8, 3), (1, 8, 8)).note == "8 filters of 1 x 3 x 3"  # 1 input: not depthwise


def test_norm_without_affine_and_linear_without_bias() -> None:
    bn = _one(torch.nn.BatchNorm2d(8, affine=False), (8, 4, 4))
    assert (bn.weights, bn.biases, bn.trainable, bn.formula) == (0, 0, 0, "0") and "affine=False" in bn.note
    fc = _one(torch.nn.Linear(8, 4, bias=False), (8,))  # input [8]: one feature vector
    assert (fc.weights, fc.biases, fc.trainable, fc.formula) == (32, 0, 32, "8 x 4 = 32") and fc.note == "no bias"
    gn = _one(torch.nn.GroupNorm(2, 8), (8, 4, 4))
    assert (gn.weights, gn.biases, gn.formula) == (8, 8, "8 scales + 8 shifts")


class _Shared(torch.nn.Module):
    """Defined b-before-a, called a-before-b; one ReLU used twice; one layer never called; a parameter of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.b = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.a = torch.nn.Conv2d(3, 4, 3, padding=1, stride=2)
        self.relu = torch.nn.ReLU()
        self.unused = torch.nn.Linear(4, 2)
        self.gain = torch.nn.Parameter(torch.ones(4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.a(x))
        return self.relu(self.b(torch.nn.functional.avg_pool2d(x, 2)) * self.gain)


def test_forward_order_shared_and_uncalled_modules() -> None:
    model = _Shared()
    rows = layer_table(model, (3, 16, 16))
    assert [r.name for r in rows] == ["", "a", "relu", "b", "unused"]  # the model's own ``gain`` comes first
    by = {r.name: r for r in rows}
    assert by["relu"].output_shape == [4, 8, 8]  # the first call, not the second ([4, 4, 4])
    assert "called 2 times" in by["relu"].note
    assert by["unused"].output_shape == [] and by["unused"].note.startswith("not called in forward")
    assert (by["unused"].weights, by["unused"].biases) == (8, 2)  # still counted: it is in model.parameters()
    assert (by[""].weights, by[""].formula) == (4, "4 x 1 x 1 = 4") and "gain" in by[""].note
    # gain, a (4 x 3 x 3 x 3 + 4), b (4 x 4 x 3 x 3 + 4), unused
    assert sum(r.weights + r.biases for r in rows) == sum(p.numel() for p in model.parameters()) == 4 + 112 + 148 + 10
    assert "(model)" in format_table(rows) and hook_count(model) == 0


def test_torchvision_blocks() -> None:
    from torchvision.ops.misc import Conv2dNormActivation, SqueezeExcitation

    model = torch.nn.Sequential(Conv2dNormActivation(3, 8, 3, stride=2), SqueezeExcitation(8, 4))
    rows = layer_table(model, (3, 16, 16))
    assert [r.name for r in rows] == [
        "0.0",
        "0.1",
        "0.2",
        "1.avgpool",
        "1.fc1",
        "1.activation",
        "1.fc2",
        "1.scale_activation",
    ]
    assert rows[0].weights == 216 and rows[3].output_shape == [8, 1, 1]  # 8 x 3 x 3 x 3; the squeeze pools to 1x1
    # 216 conv + 16 BatchNorm + (32 + 4) fc1 + (32 + 8) fc2
    assert sum(r.weights + r.biases for r in rows) == sum(p.numel() for p in model.parameters()) == 308


def test_errors_in_forward_leave_no_hooks_and_modes_are_restored() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 2))
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model stays frozen
    with pytest.raises(ConfigError, match="cannot take a 3x8x8 input: mat1 and mat2"):
        layer_table(model, (3, 8, 8))  # 4x6x6 into Linear(5, 2) fails: one line, no traceback
    assert hook_count(model) == 0
    layer_table(model[:2], (3, 8, 8))
    assert model.training and model[0].training and not model[1].training
    from featviz.layers import trace

    with pytest.raises(ConfigError, match="cannot take a 3x8x8 input"):  # the conv list: the same one line
        trace(model, 3, 8)
    assert hook_count(model) == 0 and model.training


class _Reused(torch.nn.Module):
    """A container, then one ReLU module called twice (as torchvision's ResNet blocks do)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.MaxPool2d(2))
        self.act = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.act(self.body(x)).flatten(1))


def test_record_calls_order_counts_and_shapes() -> None:
    model = _Reused()
    modules = {n: m for n, m in model.named_modules() if n}
    calls = record_calls(model, modules, (3, 8, 8))
    assert [c.name for c in calls] == ["body.0", "body.1", "body", "act", "act"]  # as the calls returned
    assert [c.name for c in sorted(calls, key=lambda c: c.began)] == ["body", "body.0", "body.1", "act", "act"]
    shapes = {(c.name, c.shape_in, c.shape_out) for c in calls}
    assert shapes == {
        ("body.0", (1, 3, 8, 8), (1, 4, 6, 6)),
        ("body.1", (1, 4, 6, 6), (1, 4, 3, 3)),
        ("body", (1, 3, 8, 8), (1, 4, 3, 3)),
        ("act", (1, 4, 3, 3), (1, 4, 3, 3)),
        ("act", (1, 36), (1, 36)),
    }
    assert hook_count(model) == 0 and model.training
    rows = {r.name: r for r in layer_table(model, (3, 8, 8))}
    assert rows["act"].output_shape == [4, 3, 3] and "called 2 times" in rows["act"].note


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "resnext50_32x4d"])
def test_torchvision_models_add_up(name: str) -> None:
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10)  # random init: nothing downloaded
    rows = layer_table(model, (3, 32, 32))
    leaves = [n for n, m in model.named_modules() if not list(m.children())]
    assert sorted(r.name for r in rows) == sorted(leaves)  # one row per leaf, none twice
    assert sum(r.weights + r.biases for r in rows) == sum(p.numel() for p in model.parameters())
    assert sum(r.trainable for r in rows) == sum(p.numel() for p in model.parameters())
    assert all(r.output_shape for r in rows) and hook_count(model) == 0


def test_resnet18_table() -> None:
    import torchvision

    rows = layer_table(torchvision.models.resnet18(weights=None, num_classes=10), (3, 32, 32))
    by = {r.name: r for r in rows}
    names = [r.name for r in rows]
    # 11,689,512 for the 1000-class ImageNet head, minus its fc (512 x 1000 + 1000) plus 512 x 10 + 10
    assert sum(r.weights + r.biases for r in rows) == 11_689_512 - 513_000 + 5_130 == 11_181_642
    assert by["conv1"].output_shape == [64, 16, 16] and by["conv1"].weights == 9_408  # 7x7 stride 2: 64 x 3 x 7 x 7
    assert by["layer1.0.relu"].output_shape == [64, 8, 8] and "called 2 times" in by["layer1.0.relu"].note
    # forward order: the shortcut's 1x1 conv runs after bn2 although BasicBlock defines it last
    assert names.index("layer2.0.bn2") < names.index("layer2.0.downsample.0") < names.index("layer2.1.conv1")
    assert by["layer2.0.downsample.0"].note.endswith("1 x 1: mixes channels, no spatial extent")
    assert by["layer4.1.conv2"].formula == "512 x 512 x 3 x 3 = 2,359,296"


def test_text_table_explains_grouped_and_depthwise_counts() -> None:
    from torch import nn

    model = nn.Sequential(nn.Conv2d(32, 64, 3, groups=8), nn.Conv2d(64, 64, 3, groups=64), nn.Conv2d(64, 8, 1))
    lines = format_table(layer_table(model, (32, 16, 16))).splitlines()
    assert "2,304" in lines[2] and "each filter sees 4 of the 32 input channels" in lines[2]
    assert "576" in lines[3] and "depthwise" in lines[3]
    assert "(" not in lines[4].split("=")[-1]  # a plain conv gets no note
