"""Any architecture: model specs, layers in forward order, the default selection, and the trust rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from featviz.config import ModelConfig
from featviz.errors import ConfigError
from featviz.layers import default_channels, default_layers, receptive_fields, select_layers, trace
from featviz.model import build_model
from featviz.receptive import theoretical_receptive_fields
from featviz.run.store import Run
from featviz.zoo import ModelSpec, build, check_output, normalize_spec, parse_kwargs


def test_specs_and_kwargs() -> None:
    assert normalize_spec("torchvision:resnet18") == "torchvision.models:resnet18"
    assert normalize_spec(" pkg.mod:make.net ") == "pkg.mod:make.net"
    for bad in ("resnet18", "a:b:c", ":x", "a b:c", "pkg:"):
        with pytest.raises(ConfigError, match="bad model spec"):
            normalize_spec(bad)
    assert parse_kwargs('{"width_mult": 0.5}') == {"width_mult": 0.5}
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_kwargs("{width: 1}")
    with pytest.raises(ConfigError, match="JSON object"):
        parse_kwargs("[1]")


def test_torchvision_models_are_adapted_to_the_data() -> None:
    spec = ModelSpec("torchvision.models:resnet18", in_channels=1, num_classes=7)
    a, b = build(spec, seed=3), build(spec, seed=3)
    assert a.conv1.in_channels == 1 and a.fc.out_features == 7
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    check_output(a, spec, 32)
    with pytest.raises(ConfigError, match="num_classes"):
        check_output(
            build(ModelSpec("torchvision.models:resnet18", {"num_classes": 4}, 3, 10)),
            ModelSpec("torchvision.models:resnet18", {}, 3, 10),
            32,
        )
    with pytest.raises(ConfigError, match="has no 'resnet999'"):
        build(ModelSpec("torchvision.models:resnet999"))
    with pytest.raises(ConfigError, match="cannot import"):
        build(ModelSpec("no_such_package_here:net"))


def test_layers_in_forward_order_with_traced_fields() -> None:
    class Backwards(nn.Module):  # defined in one order, run in the other
        def __init__(self) -> None:
            super().__init__()
            self.late = nn.Conv2d(4, 4, 3, padding=1)
            self.early = nn.Conv2d(3, 4, 5, padding=2)

        def forward(self, x):
            return self.late(self.early(x)).mean((2, 3))

    layers = trace(Backwards(), 3, 16)
    assert [la.name for la in layers] == ["early", "late"] and [la.depth for la in layers] == [1, 2]
    assert [la.rf_px for la in layers] == [5, 7]
    # the traced field equals the chain formula of the small CNN, for several configs
    for cfg in (
        ModelConfig(),
        ModelConfig(widths=(4, 8, 8), kernels=(3, 5, 3), strides=(2, 1, 1), pools=(False, True, False)),
    ):
        traced = [la.rf_px for la in trace(build_model(cfg), 3, 32)]
        assert traced == theoretical_receptive_fields(cfg.kernels, cfg.strides, cfg.pools)


def test_resnet18_fields_and_default_selection() -> None:
    import torchvision

    layers = trace(torchvision.models.resnet18(num_classes=10), 3, 32)
    assert len(layers) == 20 and layers[7].name == "layer2.0.downsample.0"  # after conv2: the order it runs in
    rf = {la.name: (la.rf_px, la.rf_exceeds) for la in layers}
    assert rf["conv1"] == (7, False) and rf["layer1.1.conv2"] == (43, False) and rf["layer2.1.conv2"] == (99, False)
    assert rf["layer4.1.conv2"] == (128, True)  # 435 px in truth: beyond the 128 px probe, reported as "at least"
    assert [la.name for la in default_layers(layers)] == [
        "conv1",
        "layer1.1.conv2",
        "layer2.1.conv2",
        "layer3.1.conv2",
        "layer4.1.conv2",
    ]
    assert [la.name for la in select_layers(layers, "layer4.*.conv2,conv1")] == [
        "conv1",
        "layer4.0.conv2",
        "layer4.1.conv2",
    ]
    assert len(select_layers(layers, "all")) == 20
    with pytest.raises(ConfigError, match="matches no conv layer"):
        select_layers(layers, "layer9.*")


def test_default_channels() -> None:
    assert default_channels(16) == list(range(16))
    chans = default_channels(512)
    assert len(chans) == 64 and chans[0] == 0 and chans[-1] == 511
    assert all(8 <= b - a <= 9 for a, b in zip(chans, chans[1:]))  # evenly spaced: 511 / 63 = 8.1


def test_receptive_field_of_a_branch_is_the_widest_path() -> None:
    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wide = nn.Conv2d(1, 1, 7, padding=3)
            self.narrow = nn.Conv2d(1, 1, 1)
            self.out = nn.Conv2d(1, 1, 3, padding=2, dilation=2)

        def forward(self, x):
            return self.out(self.wide(x) + self.narrow(x))

    assert receptive_fields(Branches(), ["narrow", "wide", "out"], 1, 16) == {
        "narrow": (1, False),
        "wide": (7, False),
        "out": (11, False),
    }  # 7 + (3 - 1) x 2


@pytest.mark.slow
def test_train_render_analyze_a_resnet18_from_the_cli(cli, tmp_path: Path) -> None:
    code, out, err = cli(
        [
            "train",
            "--model",
            "torchvision:resnet18",
            "--epochs",
            "1",
            "--n-train",
            "128",
            "--n-val",
            "32",
            "--batch-size",
            "64",
            "--out",
            tmp_path,
            "--name",
            "r18",
        ]
    )
    assert code == 0, err
    run = Run.open(tmp_path / "r18")
    assert run.meta["configs"]["model"]["factory"] == "torchvision.models:resnet18" and len(run.info.layers) == 20
    code, out, err = cli(["render", run.path, "--steps", "2", "--moments", "last"])
    assert code == 0, err
    am = list((run.path / "renders" / "am").rglob("ch_*.png"))
    assert len(am) == 5 * 32  # 5 default layers; 2 steps are cheap: the deep cap of 32 evenly spaced channels
    assert (run.path / "renders" / "filters" / "layer4.1.conv2" / "epoch_001.png").is_file()
    code, out, err = cli(["analyze", run.path, "--probe", "16"])
    assert code == 0, err
    analysis = json.loads((run.path / "analysis.json").read_text())
    assert len(analysis["filter_updates"]) == 20 and analysis["receptive_field"]["conv1"]["theoretical_px"] == 7
    assert analysis["receptive_field"]["layer4.1.conv2"]["theoretical_at_least"] is True
    html = (run.path / "gallery" / "index.html").read_text()
    assert "layer4.1.conv2" in html


def test_a_run_never_imports_a_factory_nobody_named(user_code: Path, tiny_run: Run, tmp_path: Path, cli) -> None:
    import shutil

    path = tmp_path / "hostile-run"
    shutil.copytree(tiny_run.path, path)
    meta = json.loads((path / "run.json").read_text())
    meta["configs"]["model"] = {"factory": "hostile:factory", "kwargs": {}, "in_channels": 3, "num_classes": 10}
    (path / "run.json").write_text(json.dumps(meta))
    for argv in (
        ["render", path, "--steps", "1"],
        ["analyze", path],
        ["summary", path],
        ["render", path, "--model", "other:factory"],
    ):
        code, out, err = cli(argv)
        assert code == 1 and "nothing was imported" in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert not (user_code / "IMPORTED").exists(), argv
    code, out, err = cli(["gallery", path])  # the gallery never builds a model
    assert code == 0, err
    code, out, err = cli(["summary", path, "--model", "hostile:factory"])  # named by the user: imported
    assert (user_code / "IMPORTED").exists()


def test_train_your_own_factory_from_the_cli(user_code: Path, tmp_path: Path, cli, monkeypatch) -> None:
    argv = [
        "train",
        "--model",
        "usernets:tiny",
        "--model-kwargs",
        '{"width": 4}',
        "--epochs",
        "1",
        "--n-train",
        "64",
        "--n-val",
        "16",
        "--size",
        "16",
        "--batch-size",
        "32",
        "--out",
        tmp_path,
        "--name",
        "mine",
    ]
    code, out, err = cli(argv)
    assert code == 0, err
    run = Run.open(tmp_path / "mine")
    assert run.meta["configs"]["model"] == {
        "factory": "usernets:tiny",
        "kwargs": {"width": 4},
        "in_channels": 3,
        "num_classes": 10,
        "pretrained": False,
    }
    code, out, err = cli(["render", run.path, "--steps", "1"])  # a run alone never imports user code
    assert code == 1 and "--model usernets:tiny" in err
    import featviz.render

    monkeypatch.setattr(featviz.render, "estimate_seconds", lambda *a, **k: 150.0)
    code, out, err = cli(
        ["render", run.path, "--steps", "1", "--moments", "last", "--channels", "all", "--model", "usernets:tiny"]
    )
    assert code == 0, err
    assert "about 2 min for 20 activation-maximization images (4 layers x 1 moment)" in err  # 4 + 4 + 4 + 8 channels
    code, out, err = cli(
        ["render", run.path, "--steps", "1", "--moments", "last", "--channels", "all", "--model", "usernets:tiny"]
    )
    assert code == 0 and "about" not in err  # all rendered already: nothing to estimate
    code, out, err = cli(["train", "--model-kwargs", "{}", "--out", tmp_path])
    assert code == 1 and "--model-kwargs: only with --model" in err
    code, out, err = cli(["train", "--model", "usernets:tiny", "--pretrained", "--out", tmp_path, "--name", "p"])
    assert code == 1 and "--pretrained works for torchvision models" in err


@pytest.mark.parametrize(
    "factory, kwargs",
    [
        ("featviz.pipeline:train_run", {"out_dir": "/tmp/x", "force": True}),  # in featviz, but not a model builder
        ("torchvision.datasets:MNIST", {"root": "/tmp/x", "download": True}),
        ("torchvision.models:get_model", {"name": "resnet18"}),
        ("featviz.run.store:os.system", {"command": "touch PWNED"}),  # a dotted path through a module featviz imports
        ("featviz.provenance:subprocess.run", {"args": ["touch", "PWNED"]}),
    ],
)
def test_only_model_builders_are_trusted_by_a_run(
    factory: str, kwargs: dict, tiny_run: Run, tmp_path: Path, cli
) -> None:
    import shutil

    path = tmp_path / "run"
    shutil.copytree(tiny_run.path, path)
    meta = json.loads((path / "run.json").read_text())
    meta["configs"]["model"] = {"factory": factory, "kwargs": kwargs, "in_channels": 3, "num_classes": 10}
    (path / "run.json").write_text(json.dumps(meta))
    code, out, err = cli(["render", path, "--steps", "1"])
    assert code == 1 and "not a torchvision model builder" in err and "nothing was imported" in err


def test_a_run_never_downloads_weights() -> None:
    with pytest.raises(ConfigError, match="never downloads"):
        build(ModelSpec("torchvision.models:resnet18", {"weights": "DEFAULT"}))


def test_a_factory_is_a_function_or_class_of_its_own_module() -> None:
    from featviz.zoo import resolve_factory

    for bad in (
        "featviz.run.store:os.system",
        "featviz.zoo:importlib.import_module",
        "featviz.model:_private",
        "featviz.model:torch.nn.Module.__subclasses__",
    ):
        with pytest.raises(ConfigError, match="name a function or class|not a function or class"):
            resolve_factory(bad)
    assert resolve_factory("featviz.model:small_cnn").__name__ == "small_cnn"
