"""featviz.partial: recomputing only what one layer's weights change gives the full forward's numbers, bit
for bit, on torchvision's ResNet-18 and on a functional residual net; models it cannot split are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from featviz.hooks import capture
from featviz.model import recalibrate_batchnorm
from featviz.optvis.forward import forward_until
from featviz.partial import Downstream, left_in


def _full(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    with forward_until(model, [name]) as run:
        return run(x)[name]


@pytest.mark.parametrize(
    ("layer", "output", "frontier"),
    [
        ("conv1", "bn1", ["x"]),
        ("layer1.1.conv2", "layer1.1.bn2", ["layer1_1_relu"]),
        ("layer3.0.downsample.0", "layer3.0.downsample.1", ["layer2_1_relu_1"]),
        # through sums and later blocks: the block's shortcut (its downsample) is upstream, kept
        ("layer2.0.conv1", "layer4.1.bn2", ["layer1_1_relu_1", "layer2_0_downsample_1"]),
    ],
)
def test_resnet18_downstream_equals_the_full_forward_after_the_layer_changes(layer, output, frontier) -> None:
    torch.manual_seed(0)
    model = resnet18(num_classes=5).eval()
    x = torch.randn(6, 3, 32, 32)
    part = Downstream.of(model, layer, output)
    assert part is not None and part.frontier == frontier  # only what feeds the changed part is kept
    with torch.no_grad():
        assert torch.equal(part(x, "a"), _full(model, output, x))  # the first call runs everything
        conv = model.get_submodule(layer)
        for _ in range(2):  # new weights for the layer: the kept upstream values are reused
            conv.weight.copy_(torch.randn_like(conv.weight))
            assert torch.equal(part(x, "a"), _full(model, output, x))


def test_the_output_is_the_value_the_eager_pass_leaves_after_in_place_rewrites() -> None:
    """torchvision's BasicBlock rewrites bn1's output with ReLU(inplace=True) and bn2's with ``out +=
    identity`` and the ReLU: ``left_in`` finds the traced nodes whose values are those rewritten tensors, and
    the part returns them, bit for bit what a hook on the BatchNorm holds after the pass. Without in-place
    ops it is the module's own call."""
    torch.manual_seed(5)
    model = resnet18(num_classes=5).eval()
    x = torch.randn(4, 3, 32, 32)
    gm = torch.fx.symbolic_trace(model)
    assert left_in(gm, model, "layer1.1.bn1", x).name == "layer1_1_relu"
    assert left_in(gm, model, "layer1.1.bn2", x).name == "layer1_1_relu_1"
    part = Downstream.of(model, "layer1.1.conv2", "layer1.1.bn2", example=x)
    with torch.no_grad(), capture(model, ["layer1.1.bn2"], detach=True) as acts:
        model(x)
        want = acts["layer1.1.bn2"].clone()
        assert torch.equal(part(x, "t"), want) and float(want.min()) >= 0
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    assert left_in(torch.fx.symbolic_trace(plain), plain, "1", x).name == "_1"
    same = nn.Sequential(nn.ReLU(), nn.Identity())  # an earlier node holds the same values: not a candidate
    assert left_in(torch.fx.symbolic_trace(same), same, "1", x).name == "_1"


class _Counting(nn.Module):
    """Its conv's output changes from call to call, so no traced node reproduces the eager pass's value."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.calls = nn.Conv2d(3, 2, 1), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1  # fx bakes in the count at tracing; every later eager call feeds the conv more
        return self.conv(x * self.calls)


def test_without_a_matching_node_there_is_no_part() -> None:
    """``left_in`` finds no node, so ``Downstream.of`` gives no part (the settling control then runs whole)."""
    model, x = _Counting(), torch.randn(2, 3, 4, 4)
    assert left_in(torch.fx.symbolic_trace(model), model, "conv", x) is None
    assert Downstream.of(_Counting(), "conv", "conv", example=x) is None


def test_batchnorm_recalibrated_through_the_downstream_part_matches() -> None:
    """The settling controls' use: BatchNorm statistics recomputed through the part (train-mode pass tagged
    apart from the eval pass), then measured; the same numbers as recomputing through the whole forward."""
    torch.manual_seed(1)
    model = resnet18(num_classes=5)
    x = torch.randn(8, 3, 32, 32)
    part = Downstream.of(model, "layer2.1.conv1", "layer2.1.bn1")
    conv = model.get_submodule("layer2.1.conv1")
    with torch.no_grad():
        for _ in range(3):
            recalibrate_batchnorm(model, x, forward=lambda v: part(v, "bn"))
            got = part(x, "eval")
            with forward_until(model, ["layer2.1.bn1"]) as run:
                recalibrate_batchnorm(model, x, forward=run)
                assert torch.equal(got, run(x)["layer2.1.bn1"])
            conv.weight.copy_(torch.randn_like(conv.weight))


class _Functional(nn.Module):
    """A residual block written with functional ops, F.relu(h + bn(conv(h))) scaled by h's mean: h feeds a
    function and a method besides the conv, neither of which writes into it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.bn, self.b = (
            nn.Conv2d(3, 4, 3, padding=1),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.Conv2d(4, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        return self.b(F.relu(h + self.bn(self.a(h))) * h.mean())


def test_functional_residual_block() -> None:
    torch.manual_seed(2)
    model = _Functional().eval()
    x = torch.randn(3, 3, 8, 8)
    part = Downstream.of(model, "a", "b")
    assert part is not None and part.frontier == ["relu", "mean"]
    with torch.no_grad():
        model.a.weight.mul_(-2)
        assert part(x, 0).shape == (3, 2, 8, 8)
        model.a.weight.mul_(0.5)
        assert torch.equal(part(x, 0), model(x))


class _LateInPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre, self.a, self.c = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(x)
        y = self.a(h)
        h.add_(1)  # a write into a value a and the sum both read: the split would lose the order
        return self.c(y + h)


class _InPlaceModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre, self.a, self.relu, self.c = (
            nn.Conv2d(3, 3, 1),
            nn.Conv2d(3, 3, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(3, 3, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(x)
        y = self.a(h)
        return self.c(y + self.relu(h))  # the in-place ReLU rewrites h after a has read it


class _Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) if float(x.mean()) > 0 else self.b(x)  # data-dependent: fx cannot trace it


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a(x) + y


def test_models_it_cannot_split_are_refused() -> None:
    assert Downstream.of(_LateInPlace(), "a", "c") is None
    assert Downstream.of(_InPlaceModule(), "a", "c") is None
    assert Downstream.of(_Branching(), "a", "a") is None
    assert Downstream.of(_TwoInputs(), "a", "a") is None
    assert Downstream.of(resnet18(), "layer2.0.conv1", "layer1.1.bn2") is None  # the output is upstream
    assert Downstream.of(resnet18(), "nope", "layer1.1.bn2") is None
