"""featviz.depth: each conv's position on the longest path, branches and stages, traced (not named)."""

from __future__ import annotations

import pytest
import torchvision
from torch import nn

from featviz.depth import positions, stages_of
from featviz.layers import trace
from featviz.model import small_cnn
from graph_models import Reuse, Untraceable


def _positions(model: nn.Module, size: int = 64):
    model.eval()
    layers = trace(model, 3, size)
    return layers, positions(model, layers)


def test_a_plain_stack_is_numbered_in_order_with_no_branch_and_no_stage():
    layers, pos = _positions(small_cnn(), 32)
    assert [pos[la.name].path_depth for la in layers] == [1, 2, 3, 4]
    assert not any(p.branch for p in pos.values()) and all(p.stage is None for p in pos.values())


@pytest.mark.parametrize(
    "builder, shortcut, beside",
    [
        (torchvision.models.resnet18, "layer2.0.downsample.0", "layer2.0.conv1"),
        (torchvision.models.resnet50, "layer1.0.downsample.0", "layer1.0.conv1"),
    ],
)
def test_resnet_shortcuts_are_branches_beside_the_block_s_first_conv(builder, shortcut, beside):
    layers, pos = _positions(builder(num_classes=3))
    assert pos[shortcut].branch and pos[shortcut].path_depth == pos[beside].path_depth
    shortcuts = [la.name for la in layers if "downsample" in la.name]
    assert [n for n, p in pos.items() if p.branch] == shortcuts  # every shortcut, and nothing else
    main = [pos[la.name].path_depth for la in layers if not pos[la.name].branch]
    assert main == list(range(1, len(main) + 1))  # the main path counts up one by one
    assert pos["layer3.1.conv2"].stage == "layer3" and pos["conv1"].stage == "conv1"


def test_mobilenet_depthwise_then_pointwise_convs_are_in_order():
    layers, pos = _positions(torchvision.models.mobilenet_v3_small(num_classes=3))
    block = [la for la in layers if la.name.startswith("features.4.")]
    expand, depthwise, project = block[0], block[1], block[-1]
    assert depthwise.groups == depthwise.in_ch > 1 and project.kernel == (1, 1)
    d = [pos[la.name].path_depth for la in (expand, depthwise, project)]
    assert d == sorted(d) and len(set(d)) == 3
    assert {pos[la.name].stage for la in block} == {"features.4"}


def test_a_conv_run_twice_is_placed_at_its_first_call():
    layers, pos = _positions(Reuse(), 16)
    assert pos["b"].path_depth == 2 and pos["c"].path_depth == 4  # b's second call is depth 3


def test_an_untraceable_model_keeps_the_forward_order():
    layers, pos = _positions(Untraceable(), 16)
    assert [pos[la.name].path_depth for la in layers] == [1, 2] and not pos["b"].branch


def test_stages_come_from_the_shortest_level_that_groups_names():
    assert stages_of(["features.conv1", "features.conv2"]) == {}
    assert stages_of(["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1"]) == {
        "conv1": "conv1",
        "layer1.0.conv1": "layer1",
        "layer1.0.conv2": "layer1",
        "layer2.0.conv1": "layer2",
    }
    assert stages_of(["f.0.0", "f.1.a.0", "f.1.b.0"])["f.1.b.0"] == "f.1"


def test_the_reading_of_a_deep_network_gives_per_layer_numbers_by_stage() -> None:
    """More than 12 main-path layers: one entry per stage (its range), branches left out; a short list is
    given layer by layer."""
    from featviz.reading import _numbers, _probes

    names = ["conv1"] + [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3, 4) for b in (0, 1) for c in (1, 2)]
    branches = [f"layer{s}.0.downsample.0" for s in (2, 3, 4)]
    depth = {n: {"path_depth": i + 1, "branch": False, "stage": n.split(".")[0]} for i, n in enumerate(names)}
    depth.update({n: {"path_depth": 6, "branch": True, "stage": n.split(".")[0]} for n in branches})
    acc = dict(zip(names, [0.6 + 0.01 * i for i in range(len(names))]))
    acc.update(dict.fromkeys(branches, 0.0))
    probes = {
        "epochs": [0, 2],
        "chance_accuracy": 0.1,
        "images": {"source": "test images"},
        "layers": {n: {"global": {"accuracy": [0.5, v]}} for n, v in acc.items()},
    }
    text = _probes({"layers": names + branches, "depth": depth, "probes": probes})
    assert "accuracy 0.600 (conv1), 0.610 to 0.640 (layer1), 0.650 to 0.680 (layer2), 0.690 to 0.720 (layer3), " in text
    assert "0.730 to 0.760 (layer4) at epoch 2, against 0.500 (conv1), 0.500 (layer1)," in text
    assert "0.000" not in text  # the shortcut convs are branches, not depths
    assert _numbers([1.0, 2.0, 3.0], ".1f", ["a", "a", "b"]) == "1.0, 2.0, 3.0"  # short: layer by layer


def test_the_shown_depth_falls_back_from_the_traced_depth_to_the_forward_order() -> None:
    """A run's layer table gives the path depth; a run recorded before depth was traced takes it from its
    analysis, else the forward order. From an analysis alone: its depth table, else the forward order."""
    from featviz.depth import analysed_depth, shown_depth
    from featviz.run.schema import ConvLayer

    traced = ConvLayer("layer1.0.downsample.0", 5, 64, 128, (1, 1), path_depth=3, branch=True)
    older = ConvLayer("layer1.0.downsample.0", 5, 64, 128, (1, 1))
    assert shown_depth(traced) == 3 and shown_depth(traced, {"path_depth": 9}) == 3
    assert shown_depth(older, {"path_depth": 3}) == 3 and shown_depth(older) == shown_depth(older, {}) == 5
    a = {"layers": ["conv1", "b", "c"], "depth": {"b": {"path_depth": 7}}}
    assert [analysed_depth(a, n) for n in a["layers"]] == [1, 7, 3]
    assert analysed_depth({"layers": ["conv1", "b"], "depth": None}, "b") == 2
