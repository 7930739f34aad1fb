"""The default render of a deep model: fewer moments, and as many channels per layer as a compute budget buys."""

from __future__ import annotations

import torchvision

from featviz.config import RenderConfig
from featviz.layers import DEEP_MIN_CHANNELS, deep_channel_count, is_deep, prefix_macs, prefix_macs_of, trace
from featviz.render import channels_for
from featviz.run.schema import ConvLayer, SnapshotPoint
from featviz.schedule import moments


def _plain(n: int, out_px: int = 100) -> list[ConvLayer]:
    """n 1x1 convs of 100 -> 100 channels on a 100 x 100 map: 1e8 multiply-adds each."""
    return [ConvLayer(f"c{d}", d, 100, 100, (1, 1), out_px=out_px) for d in range(1, n + 1)]


def test_the_budget_buys_fewer_channels_deeper_within_the_bounds():
    layers = _plain(9)
    assert [prefix_macs_of(layers, la) for la in layers[:3]] == [10**8, 2 * 10**8, 3 * 10**8]
    # 1e12 / (3 x d x 1e8 x 256 steps) = 13.0 / d channels, at least 6 and at most 32
    assert [deep_channel_count(layers, la, 256) for la in layers[:4]] == [13, DEEP_MIN_CHANNELS, 6, 6]
    assert deep_channel_count(layers, layers[0], 64) == 32 and deep_channel_count(layers, layers[0], 256, 0.25) == 32
    assert deep_channel_count(_plain(9, out_px=0), layers[0], 256) == 32  # an older run without out_px
    cfg = RenderConfig()
    assert channels_for(layers[0], cfg, layers) == [round(i * 99 / 12) for i in range(13)]  # evenly spaced
    assert len(channels_for(layers[0], cfg, layers[:8])) == 64  # 8 layers is not deep: up to 64 as before
    assert channels_for(layers[0], RenderConfig(channels=(1, 2)), layers) == [1, 2]


def test_the_traced_geometry_counts_the_multiply_adds_the_model_runs():
    model = torchvision.models.resnet18(num_classes=3).eval()
    layers = trace(model, 3, 64)
    prefix, _ = prefix_macs(model, 3, 64)
    assert is_deep(layers)
    for la in layers:
        assert prefix_macs_of(layers, la) == prefix[la.name], la.name


def test_a_deep_model_renders_the_init_the_middle_and_the_last_epoch():
    points = [SnapshotPoint(f"epoch_{e:03d}", "epoch", 10 * e, e) for e in range(5)]
    points += [SnapshotPoint(f"step_{s:07d}", "step", s) for s in (1, 2, 4)]
    assert [p.id for p in moments("auto", points, deep=True)] == ["epoch_000", "epoch_002", "epoch_004"]
    assert len(moments("auto", points)) > 3  # a small model keeps the steps inside epoch 1


def test_analyze_of_a_deep_model_leaves_out_its_costly_controls_unless_full(tmp_path):
    """By default a deep model's analysis measures CKA on every layer and the receptive fields on the shown ones,
    with no settling controls and the global probes only, and says so (scope, the reading, claim d); with
    ``full`` the settling controls run on the shown layers and the grid probes are back."""
    from featviz.analyze import DEEP_PROBE, PROBE, analysis_scope
    from featviz.claims import claims
    from featviz.config import DataConfig, ModelConfig, TrainConfig
    from featviz.pipeline import analyze_run, train_run

    nine = ModelConfig(widths=(4,) * 9, kernels=(3,) * 9, strides=(1,) * 9, pools=(False,) * 9)
    run = train_run(
        DataConfig(name="shapes", n_train=64, n_val=32, size=12), nine, TrainConfig(epochs=1), out_dir=tmp_path
    )
    assert analysis_scope(run)["probe_images"] == DEEP_PROBE and analysis_scope(run, full=True)["probe_images"] == PROBE
    a = analyze_run(run, probe_size=16)
    shown = ["features.conv1", "features.conv9"]  # no downsampling: the first and the last conv
    assert a["scope"]["full"] is False and a["scope"]["probe_images"] == 16 and a["scope"]["poolings"] == ["global"]
    assert a["scope"]["settling_controls"] is False and "--full" in a["scope"]["left_out"]
    assert not [n for n in a["layers"] if "settling" in a["convergence"][n]]
    assert sorted(a["receptive_field"]) == shown
    assert all("cka_to_final" in a["convergence"][n] for n in a["layers"])  # CKA itself: every layer
    assert all(set(p) == {"global", "selectivity"} for p in a["probes"]["layers"].values())
    assert a["probes"]["grid2_epochs"] == [] and a["probes"]["poolings"] == {"global": 1}
    assert a["probes"]["epochs"] == [0, 1] and a["scope"]["probe_epochs"] == "first and last"
    assert a["scope"]["faithfulness_images"] == 1000 and "first 1000 validation images" in a["scope"]["left_out"]
    d = next(c for c in claims(a) if c["key"] == "d")
    assert "--full" in d["verdict"] and "features.conv9" in a["reading"] and "--full measures them" in a["reading"]
    page = (run.path / "gallery" / "index.html").read_text()
    assert 'id="scope"' in page and "--full measures them" in page  # said above the claim table too
    b = analyze_run(run, probe_size=16, full=True)
    assert 'id="scope"' not in (run.path / "gallery" / "index.html").read_text()
    assert b["scope"]["full"] is True and "left_out" not in b["scope"] and "--full" not in b["reading"]
    assert b["scope"]["faithfulness_images"] == "all"
    assert [n for n in b["layers"] if "settling" in b["convergence"][n]] == shown
    assert all("grid2" in p for p in b["probes"]["layers"].values()) and b["probes"]["grid2_epochs"] == [0, 1]
    assert b["convergence"]["features.conv1"]["cka_to_final"] == a["convergence"]["features.conv1"]["cka_to_final"]
