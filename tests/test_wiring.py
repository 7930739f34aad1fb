"""featviz.graph (which conv feeds which, by torch.fx) and featviz.wiring (each unit's wiring over the
snapshots) on constructed networks whose answers are known."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from featviz.circuits import expanded_weights
from featviz.graph import INPUT, chain_between, consumers, links
from featviz.layers import trace
from featviz.model import small_cnn
from featviz.run.schema import SnapshotPoint
from featviz.wiring import measure, page_units
from graph_models import Reuse, Untraceable


def _links(model: nn.Module, size: int = 32):
    layers = trace(model.eval(), 3, size)
    return layers, links(model, layers)


def test_small_cnn_is_one_linear_chain():
    layers, table = _links(small_cnn())
    assert [table[la.name].source for la in layers] == [INPUT, "features.conv1", "features.conv2", "features.conv3"]
    assert table["features.conv3"].chain == ("features.relu2", "features.pool2", "features.conv3", "features.bn3")
    assert chain_between(table, "features.conv2", "features.conv4")[-1] == "features.bn4"
    assert consumers(table, "features.conv3") == ["features.conv4"] and consumers(table, "features.conv4") == []


@pytest.mark.parametrize("builder", [torchvision.models.resnet18, torchvision.models.resnet50])
def test_resnet_shortcuts_and_block_inputs_are_sums_not_chains(builder):
    layers, table = _links(builder(num_classes=10), 64)
    assert table["layer1.0.conv2"].source == "layer1.0.conv1"  # inside a block: a chain
    assert table["layer1.0.conv1"].source == "conv1"  # the stem's max-pool is an average pool for the weights
    for name in ("layer1.1.conv1", "layer2.0.downsample.0", "layer4.1.conv1"):
        assert table[name].source is None and "sum" in table[name].reason
    assert chain_between(table, "conv1", "layer1.0.conv2") is not None
    assert chain_between(table, "layer1.0.conv1", "layer1.1.conv1") is None


def test_mobilenet_depthwise_convs_read_their_expansion_and_other_activations_are_named():
    layers, table = _links(torchvision.models.mobilenet_v3_small(num_classes=10), 64)
    depthwise = [la for la in layers if la.groups > 1 and la.groups == la.in_ch]
    assert depthwise
    by_name = {la.name: la for la in layers}
    fed = [table[la.name] for la in depthwise if table[la.name].linear]
    assert fed and all(by_name[link.source].kernel == (1, 1) for link in fed)  # a ReLU block's expansion conv
    reasons = " ".join(link.reason for link in table.values() if link.reason)
    assert "Hardswish" in reasons  # not taken as the identity: named as what lies between
    assert "a product" in reasons  # squeeze-and-excitation gates the depthwise output before the projection


def test_a_reused_conv_is_counted_and_an_untraceable_model_says_why():
    layers, table = _links(Reuse(), 16)
    assert table["b"].calls == 2 and table["b"].source == "a" and table["c"].source == "b"
    layers = trace(Untraceable(), 3, 16)
    table = links(Untraceable(), layers)
    assert all(link.source is None and "torch.fx" in link.reason for link in table.values())


def test_depthwise_then_pointwise_expand_to_the_product_of_their_weights():
    torch.manual_seed(0)
    dw = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False)
    pw = nn.Conv2d(4, 5, 1, bias=False)
    e = expanded_weights([dw, pw], 4)  # E[o, m] = pw[o, m] * dw[m]: each pointwise unit mixes depthwise kernels
    want = pw.weight[:, :, 0, 0, None, None].double() * dw.weight[:, 0].double().unsqueeze(0)
    assert e.shape == (5, 4, 3, 3) and torch.allclose(e, want, atol=1e-12)


class Three(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 2, 3, padding=1))


def _point(step: int) -> SnapshotPoint:
    return SnapshotPoint(f"step_{step:07d}", "step", step, None, f"step {step}")


def test_measure_finds_the_planted_rewiring_step_and_the_shares():
    model = Three()
    layers = trace(model, 3, 8)
    state = model.state_dict()

    def with_inputs(strong: list[int]) -> dict[str, torch.Tensor]:
        s = {k: v.clone() for k, v in state.items()}
        w = torch.full((2, 12, 3, 3), 0.01)
        w[:, strong] = 1.0
        s["2.weight"] = w
        return s

    early, late = list(range(9)), list(range(3, 12))
    states = {"step_0000000": with_inputs(early), "step_0000010": with_inputs(late), "step_0000020": with_inputs(late)}
    summary, detail = measure(model, layers, [_point(0), _point(10), _point(20)], states)
    assert summary["2"]["wired_at"] == [10, 10] and summary["2"]["source"] == "0"
    share = 9 * 9 / (9 * 9 + 3 * 9 * 0.01**2)  # 9 kernels of nine 1s against three of nine 0.01s
    assert summary["2"]["share_final"] == [pytest.approx(share, rel=1e-3)] * 2
    assert summary["0"]["wired_at"] is None  # 3 inputs: its top 9 are all of them
    unit = detail["layers"]["2"]["units"]["1"]
    assert sorted(i for i, _, _ in unit["inputs"][0]) == early and sorted(i for i, _, _ in unit["inputs"][-1]) == late
    assert unit["inputs"][-1][0][2] == [1.0] * 9  # the kernel itself, for the page to draw
    assert "expanded" not in unit and detail["layers"]["2"]["expanded_reason"] == "two layers down is the input image"
    assert detail["layers"]["0"]["units"]["0"]["outputs"]["2"][0][0] in (0, 1)
    assert detail["steps"] == [0, 10, 20]


def test_pages_cover_every_channel_of_a_shallow_model_and_the_default_selection_of_a_deep_one():
    layers = trace(small_cnn(), 3, 32)
    assert sum(len(c) for c in page_units(layers).values()) == 16 + 32 + 64 + 128
    deep = trace(torchvision.models.resnet18(num_classes=10), 3, 64)
    chosen = page_units(deep)
    assert len(chosen) < len(deep) and all(len(c) <= 64 for c in chosen.values())


def test_a_resnet_measures_its_default_units_and_says_where_a_sum_breaks_the_chain():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    layers = trace(model, 3, 32)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    later = {k: v + 0.05 * torch.randn_like(v) if k.endswith("conv2.weight") else v.clone() for k, v in init.items()}
    summary, detail = measure(model, layers, [_point(0), _point(50)], {"step_0000000": init, "step_0000050": later})
    assert set(detail["layers"]) == set(page_units(layers))  # the default selection only
    assert summary["layer1.1.conv1"]["source"] is None and "sum" in summary["layer1.1.conv1"]["reason"]
    assert len(summary["layer4.1.conv2"]["wired_at"]) == 512  # every unit is measured, pages or not
    for name, layer in detail["layers"].items():
        unit = next(iter(layer["units"].values()))
        if layer["expanded_source"]:
            assert len(unit["expanded"]) == 9
        else:
            assert layer["expanded_reason"]


def test_a_page_names_image_channels_only_for_the_image_and_links_only_to_existing_pages():
    from featviz.gallery.units import _wiring_data

    unit = {"inputs": [[[0, 1.0, [1.0]], [4, 0.5, [0.5]]]], "outputs": {"b": [[2, 1.0, [1.0]], [3, 0.9, [0.9]]]}}
    image = ["red channel of the image", "green", "blue"]

    def data(source):
        wl = {"source": source, "kernel": [1, 1]}
        return _wiring_data(wl, unit, {"k": 9}, lambda la, c: None, image, {"a": 1}, lambda la, c: c == 2)

    assert data("")["input_units"]["0"]["name"] == "red channel of the image"
    summed = data(None)["input_units"]  # a residual sum: channels of no single layer, and not the image
    assert summed["0"]["name"] == "input channel 0" and "href" not in summed["0"]
    assert data("a")["input_units"]["4"]["name"] == "a · 4" and "href" not in data("a")["input_units"]["4"]
    outs = data("a")["outputs"]["b"]
    assert outs[0]["href"].endswith("units/b/2.html") and "href" not in outs[1]  # unit 3 of b has no page


def test_grouped_weights_are_factored_over_every_input_channel():
    from featviz.circuits import one_sided_nmf, ungrouped

    w = torch.arange(1.0, 9.0).view(4, 1, 2, 1)  # depthwise: 4 units, each its own input channel
    full = ungrouped(w, groups=4)
    assert full.shape == (4, 4, 2, 1) and full[2, 2].tolist() == [[5.0], [6.0]] and full[2, 1].abs().sum() == 0
    assert one_sided_nmf(full).input_factors.shape == (4, 3)
    assert ungrouped(w, groups=1) is w
