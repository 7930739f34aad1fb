"""Training runs end to end: snapshots, metrics, reproducibility, resume, divergence, public API."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch

import featviz
import featviz.training as train_mod  # the training loop (featviz.train is the public function)
from conftest import TINY_BATCHES, make_png_folder
from featviz.config import DataConfig, ModelConfig, RenderConfig, TrainConfig
from featviz.errors import ConfigError, FeatvizError, RunError, TrainingDiverged
from featviz.model import build_model
from featviz.pipeline import resume_run, train_run
from featviz.run.fileio import load_tensors


METRIC_KEYS = {"epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "wall_s"}


LOG_STEPS = [f"step_{s:07d}.safetensors" for s in (1, 2, 4)]  # the default schedule at 7 batches per epoch


def _snapshot_bytes(run) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run.path / "snapshots").glob("*.safetensors"))}


# ----------------------------------------------------------------------------- (a) a tiny run trains
def test_snapshots_exist_and_load(tiny_run) -> None:
    names = sorted(p.name for p in (tiny_run.path / "snapshots").iterdir())
    assert names == ["epoch_000.safetensors", "epoch_001.safetensors", "epoch_002.safetensors", *LOG_STEPS]
    assert tiny_run.epochs_done == 2 and tiny_run.complete and tiny_run.snapshot_epochs() == [0, 1, 2]
    keys = set(build_model(featviz.ModelConfig(widths=(4, 8), kernels=(5, 3), strides=(1, 1),
                                               pools=(True, False))).state_dict())
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
    assert meta["name"] == "tiny" and meta["schema_version"] == 1
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
    small = dataclasses.replace(gray, train_x=gray.train_x[keep, :1].contiguous(), train_y=gray.train_y[keep],
                                val_x=gray.val_x[vkeep, :1].contiguous(), val_y=gray.val_y[vkeep],
                                classes=gray.classes[:4], mean=gray.mean[:1], std=gray.std[:1])
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
    other = train_run(data_cfg, model_cfg, dataclasses.replace(train_cfg, seed=1, epochs=1), out_dir=tmp_path, name="s1")
    assert other.meta["seed"] == 1
    assert _snapshot_bytes(other)["epoch_000.safetensors"] != _snapshot_bytes(tiny_run)["epoch_000.safetensors"]


# ----------------------------------------------------------------------------- (c) resume
class _StopAfter:
    """A progress object that interrupts training (like Ctrl-C) once ``epoch`` is committed."""

    def __init__(self, epoch: int) -> None:
        self.stop_after = epoch
        self.starts: list[tuple[int, int, int]] = []

    def start(self, run, first_epoch: int, epochs: int, batches: int) -> None:
        self.starts.append((first_epoch, epochs, batches))

    def step(self, info) -> None:
        pass

    def epoch(self, record: dict) -> None:
        if record["epoch"] >= self.stop_after:
            raise KeyboardInterrupt


def test_resume_is_byte_identical_to_an_uninterrupted_run(tiny_cfgs, tmp_path: Path) -> None:
    data_cfg, model_cfg, train_cfg = tiny_cfgs
    cfg3 = dataclasses.replace(train_cfg, epochs=3)
    model_cfg = dataclasses.replace(model_cfg, dropout=0.3)  # dropout draws from the RNG that resume restores
    full = train_run(data_cfg, model_cfg, cfg3, out_dir=tmp_path, name="full")

    stop = _StopAfter(1)
    with pytest.raises(KeyboardInterrupt):
        train_run(data_cfg, model_cfg, cfg3, out_dir=tmp_path, name="cut", progress=stop)
    assert stop.starts == [(1, 3, TINY_BATCHES)]
    cut = featviz.load_run(str(tmp_path / "cut"))
    assert not cut.complete and cut.epochs_done == 1
    assert [r["epoch"] for r in cut.metrics()] == [0, 1]

    # what a crash in the middle of committing epoch 2 could leave behind
    (cut.path / "snapshots" / "epoch_002.safetensors").write_bytes(b"half a file")
    (cut.path / "snapshots" / ".epoch_002.safetensors.abc.tmp").write_bytes(b"temp")
    with open(cut.path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "step": 2 * TINY_BATCHES, "val_loss": 9.9, "val_acc": 0.0}) + "\n")

    progress = _StopAfter(99)
    resumed = resume_run(cut.path, progress=progress)
    assert progress.starts == [(2, 3, TINY_BATCHES)]
    assert resumed.complete and resumed.epochs_done == 3
    assert _snapshot_bytes(resumed) == _snapshot_bytes(full)
    assert list(_snapshot_bytes(full)) == [f"epoch_{e:03d}.safetensors" for e in range(4)] + LOG_STEPS
    recs = resumed.metrics()
    assert [r["epoch"] for r in recs] == [0, 1, 2, 3]
    assert [r["val_loss"] for r in recs] == [r["val_loss"] for r in full.metrics()]
    assert [r["step"] for r in recs] == [0, 7, 14, 21]
    assert not list(resumed.path.rglob("*.tmp"))

    with pytest.raises(RunError, match="already complete"):
        resume_run(cut.path)


def test_resume_without_a_committed_epoch(tmp_path: Path) -> None:
    run = featviz.Run.create(tmp_path, "empty", {"configs": {"data": {}, "model": {}, "train": {"epochs": 2}}})
    with pytest.raises(RunError, match="no complete epoch"):
        resume_run(run.path)
    with pytest.raises(RunError, match="does not exist"):
        resume_run(tmp_path / "missing")


# ----------------------------------------------------------------------------- (d) divergence
def _assert_committed_snapshots_good(run, last_good: int) -> None:
    assert run.epochs_done == last_good and not run.complete
    assert run.snapshot_epochs() == list(range(last_good + 1))
    for e in run.snapshot_epochs():
        sd = run.load_snapshot(e)
        assert all(torch.isfinite(t).all() for t in sd.values() if t.is_floating_point())
    assert [r["epoch"] for r in run.metrics()] == list(range(last_good + 1))
    manifest = json.loads((run.path / "manifest.json").read_text())  # the commit record itself
    assert manifest["epochs_done"] == last_good
    steps = [f"snapshots/{name}" for name in LOG_STEPS] if last_good >= 1 else []  # inside epoch 1 only
    assert sorted(rel for rel in manifest["files"] if rel.startswith("snapshots/")) == [
        f"snapshots/epoch_{e:03d}.safetensors" for e in range(last_good + 1)] + steps
    assert not (run.path / "snapshots" / f"epoch_{last_good + 1:03d}.safetensors").exists()


def test_huge_learning_rate_diverges(tiny_cfgs, tmp_path: Path) -> None:
    data_cfg, model_cfg, train_cfg = tiny_cfgs
    cfg = dataclasses.replace(train_cfg, optimizer="sgd", lr=1e6)
    with pytest.raises(TrainingDiverged) as info:
        train_run(data_cfg, model_cfg, cfg, out_dir=tmp_path, name="boom")
    msg = str(info.value)
    assert "\n" not in msg and "--lr" in msg
    last_good = int(re.search(r"last good snapshot is epoch (\d+)", msg).group(1))
    _assert_committed_snapshots_good(featviz.load_run(str(tmp_path / "boom")), last_good)


class _NanLossAfter:
    """Stands in for torch.nn.functional in featviz.training: the n-th training loss becomes NaN."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __getattr__(self, name: str):
        return getattr(torch.nn.functional, name)

    def cross_entropy(self, logits, target, **kwargs):
        loss = torch.nn.functional.cross_entropy(logits, target, **kwargs)
        if "label_smoothing" in kwargs:  # training calls only, not evaluate()
            self.calls += 1
            if self.calls >= self.n:
                return loss * float("nan")
        return loss


def test_divergence_in_epoch_two_keeps_epoch_one_and_can_resume(tiny_run, tiny_cfgs, tmp_path: Path,
                                                                 monkeypatch) -> None:
    data_cfg, model_cfg, train_cfg = tiny_cfgs
    monkeypatch.setattr(train_mod, "F", _NanLossAfter(TINY_BATCHES + 3))  # epoch 2, batch 3
    with pytest.raises(TrainingDiverged, match="epoch 2, batch 3.*last good snapshot is epoch 1"):
        train_run(data_cfg, model_cfg, train_cfg, out_dir=tmp_path, name="nan")
    run = featviz.load_run(str(tmp_path / "nan"))
    _assert_committed_snapshots_good(run, 1)
    monkeypatch.undo()
    done = resume_run(run.path)
    assert done.complete and [r["epoch"] for r in done.metrics()] == [0, 1, 2]
    # resuming after the failure gives the uninterrupted run (same configs), every epoch bit for bit
    assert list(_snapshot_bytes(done)) == [f"epoch_{e:03d}.safetensors" for e in range(3)] + LOG_STEPS
    assert _snapshot_bytes(done) == _snapshot_bytes(tiny_run)


def test_non_finite_weights_after_last_step_of_epoch_is_training_diverged(tiny_cfgs, tmp_path, monkeypatch) -> None:
    data_cfg, model_cfg, train_cfg = tiny_cfgs

    class _NanGradOnLastBatch(_NanLossAfter):
        def cross_entropy(self, logits, target, **kwargs):
            loss = torch.nn.functional.cross_entropy(logits, target, **kwargs)
            if "label_smoothing" in kwargs:
                self.calls += 1
                if self.calls == self.n:  # finite value, NaN gradient: d sqrt(x)/dx at 0 is inf, times 0
                    return loss + 0.0 * torch.sqrt(logits.sum() * 0.0)
            return loss

    monkeypatch.setattr(train_mod, "F", _NanGradOnLastBatch(TINY_BATCHES))  # last batch of epoch 1
    with pytest.raises(TrainingDiverged, match="during epoch 1; .*last good snapshot is epoch 0"):
        train_run(data_cfg, model_cfg, dataclasses.replace(train_cfg, optimizer="sgd"), out_dir=tmp_path, name="x")
    # epoch 0 (the init) stays committed and loads; nothing of the diverged epoch 1 is committed
    _assert_committed_snapshots_good(featviz.load_run(str(tmp_path / "x")), 0)


# ----------------------------------------------------------------------------- (e) step snapshots
def test_snapshot_every_steps(tiny_run, tiny_cfgs, tmp_path: Path) -> None:
    data_cfg, model_cfg, train_cfg = tiny_cfgs
    run = train_run(data_cfg, model_cfg, dataclasses.replace(train_cfg, snapshot_every_steps=2),
                    out_dir=tmp_path, name="steps")
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
    run = train_run(DataConfig(name=f"folder:{folder}", size=16), model_cfg, dataclasses.replace(train_cfg, epochs=1),
                    out_dir=tmp_path / "out", name="folder")
    assert run.complete and run.epochs_done == 1
    assert run.meta["data"]["classes"] == ["class_0", "class_1", "class_2"]
    assert run.meta["configs"]["model"]["num_classes"] == 3
    assert run.meta["data"]["n_train"] + run.meta["data"]["n_val"] == 36 and run.meta["data"]["n_val"] == 3
    assert run.meta["data"]["size"] == 16
    assert run.load_snapshot(1)["head.fc.weight"].shape == (3, 8)
    model = featviz.load_model(run)
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)


# ----------------------------------------------------------------------------- (g) public API
TINY_API = dict(n_train=200, n_val=50, size=16, widths=(4, 8), kernels=(5, 3), strides=(1, 1),
                pools=(True, False), batch_size=32)


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


@pytest.mark.parametrize("make, message", [
    (lambda: TrainConfig(epochs=2.5), "TrainConfig.epochs must be an integer, got 2.5"),
    (lambda: TrainConfig(seed="a"), "TrainConfig.seed must be an integer, got 'a'"),
    (lambda: TrainConfig(lr=None), "TrainConfig.lr must be a number, got None"),
    (lambda: TrainConfig(snapshots=3), "TrainConfig.snapshots must be a string, got 3"),
    (lambda: ModelConfig(widths=16), "ModelConfig.widths must be a tuple of integers, got 16"),
    (lambda: ModelConfig(pools=(2, 0, 0, 0)), "ModelConfig.pools must be a tuple of true/false values"),
    (lambda: DataConfig(size=16.5), "DataConfig.size must be an integer or None, got 16.5"),
    (lambda: RenderConfig(steps=2.5), "RenderConfig.steps must be an integer, got 2.5"),
    (lambda: RenderConfig(channels=("a",)), "RenderConfig.channels must be a tuple of integers"),
])
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
    summary = featviz.render_run(run.path, RenderConfig(steps=2, epochs="last", layers=("features.conv1",),
                                                        channels=(0,), filters=False))
    assert summary["am_images"] >= 1 and summary["layers"] == ["features.conv1"]


def test_resume_leaves_strange_files_alone_and_refuses_unreadable_metrics(tmp_path: Path) -> None:
    """What --resume removes first (Run.discard_uncommitted): files featviz did not name (step_abc, a folder
    called epoch_005.safetensors) once crashed it; an unreadable metrics record stops it before any removal."""
    run = featviz.train(epochs=2, out_dir=str(tmp_path), name="r", **TINY_API)
    run.write_manifest(1)  # as if killed after epoch 1: epoch 2's snapshot is uncommitted
    snaps = run.path / "snapshots"
    (snaps / "step_abc.safetensors").write_bytes(b"not ours")
    (snaps / "epoch_005.safetensors").mkdir()
    metrics = (run.path / "metrics.jsonl").read_text()
    (run.path / "metrics.jsonl").write_text(metrics.replace('"epoch": 1,', '"epoch": "one",', 1))
    before = sorted(p.name for p in snaps.iterdir())
    with pytest.raises(RunError, match="epoch is not a whole number.*nothing was removed"):
        run.discard_uncommitted()
    assert sorted(p.name for p in snaps.iterdir()) == before
    (run.path / "metrics.jsonl").write_text(metrics)
    run.discard_uncommitted()
    left = sorted(p.name for p in snaps.iterdir())
    assert "epoch_002.safetensors" not in left and "epoch_001.safetensors" in left
    assert "step_abc.safetensors" in left and (snaps / "epoch_005.safetensors").is_dir()
    assert [m["epoch"] for m in run.metrics()] == [0, 1]
