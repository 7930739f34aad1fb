"""Training runs end to end: snapshots, metrics, reproducibility, step snapshots, image folders.

Resume and divergence are in test_resume.py, the public API and the config checks in test_train_api.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

import featviz
from conftest import TINY_BATCHES, make_png_folder
from featviz.config import DataConfig, TrainConfig
from featviz.errors import FeatvizError
from featviz.model import build_model
from featviz.pipeline import train_run
from featviz.run.fileio import load_tensors
from train_helpers import LOG_STEPS, _snapshot_bytes

METRIC_KEYS = {"epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "wall_s"}


# ----------------------------------------------------------------------------- (a) a tiny run trains
def test_snapshots_exist_and_load(tiny_run) -> None:
    names = sorted(p.name for p in (tiny_run.path / "snapshots").iterdir())
    assert names == ["epoch_000.safetensors", "epoch_001.safetensors", "epoch_002.safetensors", *LOG_STEPS]
    assert tiny_run.epochs_done == 2 and tiny_run.complete and tiny_run.snapshot_epochs() == [0, 1, 2]
    keys = set(
        build_model(
            featviz.ModelConfig(widths=(4, 8), kernels=(5, 3), strides=(1, 1), pools=(True, False))
        ).state_dict()
    )
    for e in range(3):
        sd = tiny_run.load_snapshot(e)
        assert set(sd) == keys
        assert sd["features.conv1.weight"].shape == (4, 3, 5, 5)
        assert sd["head.fc.weight"].shape == (10, 8)
        assert all(torch.isfinite(t).all() for t in sd.values() if t.is_floating_point())


def test_epoch_zero_is_the_seeded_init(tiny_run, tiny_cfgs) -> None:
    _, model_cfg, train_cfg = tiny_cfgs
    init = build_model(model_cfg, seed=train_cfg.seed).state_dict()
    snap = tiny_run.load_snapshot(0)
    for k, v in init.items():
        assert torch.equal(snap[k], v), k


def test_weights_change_every_epoch(tiny_run) -> None:
    s = [tiny_run.load_snapshot(e) for e in range(3)]
    for a, b in ((0, 1), (1, 2)):
        for key in ("features.conv1.weight", "features.conv2.weight", "head.fc.weight", "features.bn1.running_mean"):
            assert not torch.equal(s[a][key], s[b][key]), (a, b, key)
    assert int(s[1]["features.bn1.num_batches_tracked"]) == TINY_BATCHES
    assert int(s[2]["features.bn1.num_batches_tracked"]) == 2 * TINY_BATCHES


def test_metrics(tiny_run) -> None:
    recs = tiny_run.metrics()
    assert [r["epoch"] for r in recs] == [0, 1, 2]
    for r in recs:
        assert METRIC_KEYS <= set(r)
    assert [r["step"] for r in recs] == [0, TINY_BATCHES, 2 * TINY_BATCHES]
    assert recs[0]["train_loss"] is None and recs[0]["lr"] == 0.0 and recs[0]["wall_s"] == 0.0
    # at init, 10 classes: about log(10) and about chance accuracy
    assert 1.8 < recs[0]["val_loss"] < 3.0
    peak = tiny_run.meta["configs"]["train"]["lr"]
    for r in recs[1:]:
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"])
        assert 0.0 <= r["train_acc"] <= 1.0 and 0.0 <= r["val_acc"] <= 1.0
        assert 0 < r["lr"] <= peak and r["wall_s"] >= 0
    # the loss fell
    assert recs[2]["train_loss"] < recs[1]["train_loss"] or recs[2]["val_loss"] < recs[0]["val_loss"]
    # the schedule decays towards 1% of the peak at the end
    assert recs[2]["lr"] < recs[1]["lr"]
    # metrics.jsonl is one JSON object per line
    lines = (tiny_run.path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]


def test_run_json(tiny_run, tiny_cfgs) -> None:
    data_cfg, model_cfg, train_cfg = tiny_cfgs
    meta = json.loads((tiny_run.path / "run.json").read_text())
    assert meta["name"] == "tiny" and meta["schema_version"] == 2
    assert meta["seed"] == train_cfg.seed
    cfgs = meta["configs"]
    assert cfgs["data"] == featviz.config.to_dict(data_cfg)
    assert cfgs["train"] == featviz.config.to_dict(train_cfg)
    assert cfgs["model"]["widths"] == [4, 8] and cfgs["model"]["kernels"] == [5, 3]
    assert cfgs["model"]["in_channels"] == 3 and cfgs["model"]["num_classes"] == 10  # from the data
    assert {"featviz", "torch", "torchvision", "python"} <= set(meta["versions"])
    assert meta["versions"]["featviz"] == featviz.__version__
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["device"] == "cpu" or meta["device"].startswith("cuda")
    assert meta["data"]["size"] == 16 and meta["data"]["n_train"] == 200 and len(meta["data"]["classes"]) == 10
    layers = meta["layers"]
    assert [layer["name"] for layer in layers] == ["features.conv1", "features.conv2"]
    assert [layer["params"] for layer in layers] == [4 * 3 * 5 * 5, 8 * 4 * 3 * 3]
    model = featviz.load_model(tiny_run)
    assert meta["params_total"] == sum(p.numel() for p in model.parameters())


def test_num_classes_and_channels_come_from_the_data(tmp_path: Path, tiny_cfgs, monkeypatch) -> None:
    data_cfg, model_cfg, train_cfg = tiny_cfgs
    gray = featviz.make_shapes(n_train=40, n_val=10, size=16)
    keep = gray.train_y < 4
    vkeep = gray.val_y < 4
    small = dataclasses.replace(
        gray,
        train_x=gray.train_x[keep, :1].contiguous(),
        train_y=gray.train_y[keep],
        val_x=gray.val_x[vkeep, :1].contiguous(),
        val_y=gray.val_y[vkeep],
        classes=gray.classes[:4],
        mean=gray.mean[:1],
        std=gray.std[:1],
    )
    monkeypatch.setattr(featviz.pipeline, "load_data", lambda cfg: small)
    run = train_run(data_cfg, model_cfg, dataclasses.replace(train_cfg, epochs=1), out_dir=tmp_path, name="g")
    model_meta = run.meta["configs"]["model"]
    assert (model_meta["in_channels"], model_meta["num_classes"]) == (1, 4)
    assert run.load_snapshot(1)["features.conv1.weight"].shape == (4, 1, 5, 5)
    assert run.load_snapshot(1)["head.fc.weight"].shape == (4, 8)


# ----------------------------------------------------------------------------- (b) reproducibility
def test_same_seed_gives_byte_identical_snapshots(tiny_run, tiny_cfgs, tmp_path: Path) -> None:
    again = train_run(*tiny_cfgs, out_dir=tmp_path, name="again")
    a, b = _snapshot_bytes(tiny_run), _snapshot_bytes(again)
    assert list(a) == ["epoch_000.safetensors", "epoch_001.safetensors", "epoch_002.safetensors", *LOG_STEPS]
    assert a == b
    assert [r["val_loss"] for r in tiny_run.metrics()] == [r["val_loss"] for r in again.metrics()]


def test_different_seed_gives_different_init(tiny_run, tiny_cfgs, tmp_path: Path) -> None:
    data_cfg, model_cfg, train_cfg = tiny_cfgs
    other = train_run(
        data_cfg, model_cfg, dataclasses.replace(train_cfg, seed=1, epochs=1), out_dir=tmp_path, name="s1"
    )
    assert other.meta["seed"] == 1
    assert _snapshot_bytes(other)["epoch_000.safetensors"] != _snapshot_bytes(tiny_run)["epoch_000.safetensors"]


# ----------------------------------------------------------------------------- (e) step snapshots
def test_snapshot_every_steps(tiny_run, tiny_cfgs, tmp_path: Path) -> None:
    data_cfg, model_cfg, train_cfg = tiny_cfgs
    run = train_run(
        data_cfg, model_cfg, dataclasses.replace(train_cfg, snapshot_every_steps=2), out_dir=tmp_path, name="steps"
    )
    snaps = tmp_path / "steps" / "snapshots"
    step_files = sorted(p.name for p in snaps.glob("step_*.safetensors"))
    # 7 batches per epoch, 14 steps: every 2nd step except epoch ends (step 14: the epoch snapshot covers it)
    assert step_files == [f"step_{s:07d}.safetensors" for s in (2, 4, 6, 8, 10, 12)]
    manifest = run.manifest()["files"]
    for name in step_files:
        assert f"snapshots/{name}" in manifest
        sd = load_tensors(snaps / name, manifest[f"snapshots/{name}"])
        assert sd["features.conv1.weight"].shape == (4, 3, 5, 5)
    s3 = load_tensors(snaps / "step_0000002.safetensors")
    s6 = load_tensors(snaps / "step_0000006.safetensors")
    e0, e1 = run.load_snapshot(0), run.load_snapshot(1)
    w = "features.conv1.weight"
    assert not torch.equal(s3[w], e0[w]) and not torch.equal(s3[w], s6[w]) and not torch.equal(s6[w], e1[w])
    assert int(s3["features.bn1.num_batches_tracked"]) == 2
    # step snapshots only observe: every epoch snapshot, the last included, is bit-identical to a run
    # without them (tiny_cfgs, as this run but for the step snapshots)
    plain = {k: v for k, v in _snapshot_bytes(tiny_run).items() if k.startswith("epoch_")}
    assert list(plain) == [f"epoch_{e:03d}.safetensors" for e in range(3)]
    assert {k: v for k, v in _snapshot_bytes(run).items() if k.startswith("epoch_")} == plain


def test_snapshot_schedules() -> None:
    from featviz.schedule import extra_steps, label, parse_schedule

    assert extra_steps("log", 157, 1256) == [1, 2, 4, 8, 16, 32, 64, 128]  # inside epoch 1; 157 is an epoch end
    assert extra_steps("log", 8, 80) == [1, 2, 4]
    assert extra_steps("epoch", 157, 1256) == []
    assert extra_steps("every:40", 80, 240) == [40, 120, 200]  # 80 and 160 are epoch ends
    assert extra_steps("steps:3,80,81,999", 80, 240) == [3, 81]
    assert label(64, 157) == "step 64 · epoch 0.41" and label(314, 157) == "step 314 · epoch 2"
    for bad in ("weekly", "every:0", "every:x", "steps:", "steps:-3"):
        with pytest.raises(FeatvizError, match="snapshot schedule"):
            parse_schedule(bad)
    assert TrainConfig(snapshot_every_steps=40).schedule == "every:40"  # the earlier option still works
    with pytest.raises(FeatvizError, match="snapshot schedule"):
        TrainConfig(snapshots="hourly")


def test_schedule_epoch_writes_no_step_snapshots(tiny_run, tiny_cfgs, tmp_path: Path) -> None:
    data_cfg, model_cfg, train_cfg = tiny_cfgs
    run = train_run(data_cfg, model_cfg, dataclasses.replace(train_cfg, snapshots="epoch"), out_dir=tmp_path, name="e")
    assert list(_snapshot_bytes(run)) == [f"epoch_{e:03d}.safetensors" for e in range(3)]
    assert run.snapshot_steps() == []
    # the log schedule's extra snapshots only observe: the epoch snapshots are bit-identical
    assert _snapshot_bytes(run) == {k: v for k, v in _snapshot_bytes(tiny_run).items() if k.startswith("epoch_")}


# ----------------------------------------------------------------------------- (f) image folder
def test_train_on_image_folder(tmp_path: Path, tiny_cfgs) -> None:
    _, model_cfg, train_cfg = tiny_cfgs
    folder = make_png_folder(tmp_path / "imgs", classes=3, per_class=12, size=20)
    run = train_run(
        DataConfig(name=f"folder:{folder}", size=16),
        model_cfg,
        dataclasses.replace(train_cfg, epochs=1),
        out_dir=tmp_path / "out",
        name="folder",
    )
    assert run.complete and run.epochs_done == 1
    assert run.meta["data"]["classes"] == ["class_0", "class_1", "class_2"]
    assert run.meta["configs"]["model"]["num_classes"] == 3
    assert run.meta["data"]["n_train"] + run.meta["data"]["n_val"] == 36 and run.meta["data"]["n_val"] == 3
    assert run.meta["data"]["size"] == 16
    assert run.load_snapshot(1)["head.fc.weight"].shape == (3, 8)
    model = featviz.load_model(run)
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
