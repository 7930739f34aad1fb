"""The public training API (featviz.train, load_run, load_model) and the checks of config fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import featviz
from featviz.config import DataConfig, ModelConfig, RenderConfig, TrainConfig
from featviz.errors import ConfigError, FeatvizError, RunError
from featviz.optvis import RenderSettings
from featviz.pipeline import train_run
from train_helpers import TINY_API


def test_public_api(tmp_path: Path) -> None:
    run = featviz.train(epochs=1, out_dir=str(tmp_path), name="api", **TINY_API)
    assert isinstance(run, featviz.Run) and run.complete
    assert run.meta["configs"]["train"]["epochs"] == 1 and run.meta["configs"]["data"]["n_train"] == 200
    again = featviz.load_run(str(tmp_path / "api"))
    assert again.meta == json.loads(json.dumps(run.meta)) and again.epochs_done == 1
    assert [r.name for r in featviz.list_runs(tmp_path)] == ["api"]

    model = featviz.load_model(again)
    assert not model.training
    last = again.load_snapshot(1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, last[k]), k
    init = featviz.load_model(again, epoch=0)
    assert not torch.equal(init.features.conv1.weight, model.features.conv1.weight)
    with torch.no_grad():
        assert model(torch.zeros(3, 3, 16, 16)).shape == (3, 10)

    with pytest.raises(FeatvizError, match="unknown option"):
        featviz.train(epochs=1, out_dir=str(tmp_path), name="x", no_such_option=1)
    with pytest.raises(RunError, match="already exists"):
        featviz.train(epochs=1, out_dir=str(tmp_path), name="api", **TINY_API)
    with pytest.raises(RunError, match="not in run"):
        featviz.load_model(again, epoch=5)
    with pytest.raises(RunError):
        featviz.load_run(str(tmp_path / "nothing"))


def test_public_api_seed_is_the_training_seed(tmp_path: Path) -> None:
    run = featviz.train(epochs=1, out_dir=str(tmp_path), name="seeded", seed=3, **TINY_API)
    assert run.meta["seed"] == 3 and run.meta["configs"]["train"]["seed"] == 3


def test_bad_train_config_fails_before_creating_a_run(tmp_path: Path) -> None:
    with pytest.raises(FeatvizError):
        TrainConfig(epochs=0)
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(FeatvizError, match="CUDA"):
        train_run(DataConfig(n_train=20, n_val=10), train_cfg=TrainConfig(device="cuda"), out_dir=tmp_path, name="c")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: TrainConfig(epochs=2.5), "TrainConfig.epochs must be an integer, got 2.5"),
        (lambda: TrainConfig(seed="a"), "TrainConfig.seed must be an integer, got 'a'"),
        (lambda: TrainConfig(lr=None), "TrainConfig.lr must be a number, got None"),
        (lambda: TrainConfig(snapshots=3), "TrainConfig.snapshots must be a string, got 3"),
        (lambda: ModelConfig(widths=16), "ModelConfig.widths must be a tuple of integers, got 16"),
        (lambda: ModelConfig(pools=(2, 0, 0, 0)), "ModelConfig.pools must be a tuple of true/false values"),
        (lambda: DataConfig(size=16.5), "DataConfig.size must be an integer or None, got 16.5"),
        (lambda: RenderConfig(settings=RenderSettings(steps=2.5)), "steps must be an integer, got 2.5"),
        (lambda: RenderConfig(channels=("a",)), "RenderConfig.channels must be a tuple of integers"),
        (lambda: RenderConfig(settings={"steps": 4}), "RenderConfig.settings must be RenderSettings"),
        (lambda: RenderConfig(settings=RenderSettings(size=600)), "size must be 8..512 px (square), got 600"),
        (lambda: RenderConfig(settings=RenderSettings(size=(16, 24))), "size must be 8..512 px (square), got (16, 24)"),
        (
            lambda: RenderConfig(settings=RenderSettings(mean=(0.5,) * 3, std=(0.2,) * 3)),
            "RenderConfig.settings: mean, std, color and device come from the run; leave them unset",
        ),
    ],
)
def test_a_config_field_of_the_wrong_type_is_one_line(make, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert str(info.value).startswith(message)


def test_config_numbers_become_python_numbers_and_a_wrong_type_leaves_no_run(tmp_path: Path) -> None:
    import numpy as np

    cfg = TrainConfig(epochs=np.int64(2), lr=np.float32(0.5), batch_size=64)
    assert (type(cfg.epochs), type(cfg.lr)) == (int, float) and cfg.lr == 0.5
    assert ModelConfig(pools=(1, 1, 1, 0)).pools == (True, True, True, False)  # as run.json stores them
    with pytest.raises(ConfigError, match="must be an integer"):
        featviz.train(epochs=2.5, out_dir=str(tmp_path), name="half", **TINY_API)
    assert not (tmp_path / "half").exists()


def test_the_api_takes_a_run_or_its_path(tmp_path: Path) -> None:
    from featviz.config import RenderConfig

    run = featviz.train(epochs=1, out_dir=str(tmp_path), name="p", **TINY_API)
    a, b = featviz.load_model(str(run.path)), featviz.load_model(run)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        featviz.load_model(run, device="gpu")
    with pytest.raises(ConfigError, match="epoch must be an integer"):
        featviz.load_model(run, epoch="1")
    with pytest.raises(ConfigError, match="cfg must be a RenderConfig, got dict"):
        featviz.render_run(str(run.path), {"steps": 2})
    with pytest.raises(ConfigError, match="probe_size must be an integer >= 10"):
        featviz.analyze_run(run.path, probe_size=-5)
    summary = featviz.render_run(
        run.path,
        RenderConfig(
            moments="last", layers=("features.conv1",), channels=(0,), filters=False, settings=RenderSettings(steps=2)
        ),
    )
    assert summary["am_images"] >= 1 and summary["layers"] == ["features.conv1"]


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_make_optimizer_fuses_only_when_asked_and_where_the_device_has_it(name: str) -> None:
    """``fused=True`` gives PyTorch's fused implementation on the CPU; the default, and parameters on a
    device without one (here ``meta``), get the default implementation."""
    from featviz.training import make_optimizer

    cfg = TrainConfig(optimizer=name, lr=0.02, weight_decay=0.003)
    opt = make_optimizer(torch.nn.Linear(3, 2), cfg, fused=True)
    want = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name]
    assert type(opt) is want and opt.defaults["lr"] == 0.02 and opt.defaults["weight_decay"] == 0.003
    if name == "sgd":
        assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"] is True
    assert opt.defaults["fused"] is True and len(opt.param_groups[0]["params"]) == 2
    assert not make_optimizer(torch.nn.Linear(3, 2), cfg).defaults["fused"]
    assert not make_optimizer(torch.nn.Linear(3, 2, device="meta"), cfg, fused=True).defaults["fused"]
