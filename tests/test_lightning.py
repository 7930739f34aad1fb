"""featviz.integrations.lightning: a LightningModule trained by a Trainer is recorded into a run that check,
render and analyze take, and the callback changes nothing in the training (bit for bit)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

import lightning  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from featviz.errors import ConfigError  # noqa: E402
from featviz.run.store import Run  # noqa: E402

LIT_MODULE = '''
"""A user's LightningModule (written by the test fixture)."""
import lightning
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 3, width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def net(num_classes: int = 3, width: int = 4) -> nn.Module:
    return Net(num_classes, width)


class LitTiny(lightning.LightningModule):
    def __init__(self, width: int = 4, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = Net(3, width)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        flip = torch.rand(len(x)) < 0.5  # an augmentation on torch's global stream, which the callback must not move
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)  # on_step only: a per-batch value the recorder's mean must win over
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class Data(lightning.LightningDataModule):
    def __init__(self, train, val) -> None:
        super().__init__()
        self.train, self.val = train, val

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.train, batch_size=8, shuffle=True)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.val, batch_size=16)
'''


@pytest.fixture
def litcode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on sys.path with ``litnets`` (the user's LightningModule, its inner network and a datamodule)."""
    root = tmp_path / "litcode"
    root.mkdir()
    (root / "litnets.py").write_text(LIT_MODULE)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "litnets", raising=False)
    return root


def _sets() -> tuple[TensorDataset, TensorDataset]:
    """64 training and 32 validation images, 3x12x12, 3 classes (by the red channel's brightness)."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(96, 3, 12, 12, generator=g)
    y = (x[:, 0].mean((1, 2)) * 3 * 2 - 2.5).clamp(0, 2).round().long()
    return TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:])


def _fit(root: Path, callback=None, epochs: int = 1, datamodule: bool = False, **trainer_options):
    """Train LitTiny from seed 0; returns (the module, its final state)."""
    from litnets import Data, LitTiny

    lightning.seed_everything(0, verbose=False)
    model = LitTiny(width=4)
    trainer = lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[callback] if callback else [],
        **trainer_options,
    )
    train, val = _sets()
    if datamodule:
        trainer.fit(model, datamodule=Data(train, val))
    else:
        trainer.fit(model, DataLoader(train, batch_size=8, shuffle=True), DataLoader(val, batch_size=16))
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def test_a_lightning_fit_is_recorded_and_renders(litcode: Path, tmp_path: Path, cli) -> None:
    from featviz.integrations.lightning import FeatvizCallback
    from featviz.loading import allow
    from featviz.optvis import RenderSettings
    from featviz.pipeline import RenderConfig, analyze_run, render_run

    model, state = _fit(tmp_path / "pl", FeatvizCallback("lit", out_dir=tmp_path / "out"))
    run = Run.open(tmp_path / "out" / "lit")
    assert run.epochs_done == 1 and run.complete and run.meta["source"] == "record"
    assert run.meta["configs"]["model"]["factory"] == "litnets:LitTiny"
    assert run.meta["configs"]["model"]["kwargs"] == {"width": 4, "lr": 0.1}  # save_hyperparameters
    # 64 images / 8 = 8 optimizer steps (the sanity check's validation is none): log-schedule steps 1, 2, 4
    assert [p.id for p in run.snapshot_points()] == [
        "epoch_000",
        "step_0000001",
        "step_0000002",
        "step_0000004",
        "epoch_001",
    ]
    metrics = run.metrics()
    assert [m["step"] for m in metrics] == [0, 8]
    assert set(metrics[1]) >= {"train_loss", "val_acc", "val_loss"} and 0 <= metrics[1]["val_acc"] <= 1
    assert metrics[1]["val_acc"] == pytest.approx(float(model.trainer.callback_metrics["val_acc"]))
    assert metrics[1]["train_loss"] > 0 and metrics[1]["train_loss"] != pytest.approx(
        float(model.trainer.callback_metrics["train_loss"])
    )  # the mean over steps, not the last batch's
    snap = run.load_snapshot(1)
    assert snap.keys() == state.keys() and all(torch.equal(snap[k], state[k]) for k in state)  # bit for bit
    images, _ = run.load_probe()
    assert images.shape == (32, 3, 12, 12)  # the validation loader's dataset
    assert [la.name for la in run.info.layers] == ["net.conv1", "net.conv2"]
    code, out, err = cli(["check", run.path])
    assert code == 0, err

    allow(run, model="litnets:LitTiny")  # the factory is the user's code, outside torchvision and featviz
    summary = render_run(run, RenderConfig(settings=RenderSettings(steps=2)))
    assert summary["am_images"] > 0
    assert list((run.path / "renders" / "am").rglob("ch_*.png"))
    analysis = analyze_run(run, probe_size=16)
    assert analysis["probe_images"] == 16
    assert json.loads((run.path / "analysis.json").read_text())["probe_images"] == 16
    assert (run.path / "gallery" / "index.html").is_file()
    page = (run.path / "gallery" / "units" / "net.conv2" / "0.html").read_text()  # a recorded run's unit page
    assert 'id="unit-data"' in page and '"source":"net.conv1"' in page  # its inputs are net.conv1's units


def test_the_callback_changes_nothing_in_training(litcode: Path, tmp_path: Path) -> None:
    from featviz.integrations.lightning import FeatvizCallback

    _, plain = _fit(tmp_path / "a", epochs=2)
    _, recorded = _fit(tmp_path / "b", FeatvizCallback("same", out_dir=tmp_path / "out"), epochs=2)
    assert plain.keys() == recorded.keys()
    for k in plain:
        assert torch.equal(plain[k], recorded[k]), k
    last = Run.open(tmp_path / "out" / "same").load_snapshot(2)
    assert all(torch.equal(last[k], recorded[k]) for k in recorded)


def test_a_submodule_with_accumulation_and_a_datamodule(litcode: Path, tmp_path: Path, cli) -> None:
    from featviz.integrations.lightning import FeatvizCallback

    cb = FeatvizCallback(
        "inner", out_dir=tmp_path / "out", submodule="net", model_spec="litnets:net", model_kwargs={"width": 4}
    )
    model, state = _fit(tmp_path / "pl", cb, epochs=2, datamodule=True, accumulate_grad_batches=2)
    run = Run.open(tmp_path / "out" / "inner")
    assert run.epochs_done == 2 and run.complete and run.meta["configs"]["model"]["factory"] == "litnets:net"
    assert model.trainer.global_step == 8  # 8 batches an epoch, one optimizer step every 2
    assert [m["step"] for m in run.metrics()] == [0, 4, 8]  # optimizer steps, not batches
    assert [p.id for p in run.snapshot_points()] == [
        "epoch_000",
        "step_0000001",
        "step_0000002",
        "epoch_001",
        "epoch_002",
    ]
    snap = run.load_snapshot(2)
    inner = {k[len("net.") :]: v for k, v in state.items()}
    assert snap.keys() == inner.keys() and all(torch.equal(snap[k], inner[k]) for k in inner)
    assert [la.name for la in run.info.layers] == ["conv1", "conv2"]
    # with accumulation, a step's loss is its batches' mean (about ln 3 here), not half of it: Lightning's
    # outputs carry each batch's loss divided by the accumulation count
    assert 0.8 < run.metrics()[1]["train_loss"] < 1.5
    code, out, err = cli(["check", run.path])
    assert code == 0, err


def test_mistakes_are_config_errors(litcode: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from litnets import LitTiny

    from featviz.integrations.lightning import FeatvizCallback

    with pytest.raises(ConfigError, match="needs model_spec"):
        FeatvizCallback(submodule="net")
    from featviz.errors import RunError

    # checked when the callback is built, not minutes later inside Trainer.fit
    with pytest.raises(ConfigError, match="unknown snapshot schedule .every:0."):
        FeatvizCallback("x", snapshots="every:0")
    with pytest.raises(ConfigError, match="probe_size must be an integer >= 1, got -1"):
        FeatvizCallback("x", probe_size=-1)
    with pytest.raises(RunError, match="invalid run name 'a/b'"):
        FeatvizCallback("a/b")
    trainer = lightning.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[FeatvizCallback("nodata", out_dir=tmp_path / "out")],
    )
    with pytest.raises(ConfigError, match="no validation dataloader"):
        trainer.fit(LitTiny(), DataLoader(_sets()[0], batch_size=8))
    assert not (tmp_path / "out" / "nodata").exists()
    # without Lightning installed, importing the integration says how to install it
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "featviz.integrations.lightning")
    with pytest.raises(ConfigError, match=r"pip install 'featviz\[lightning\]'"):
        import featviz.integrations.lightning  # noqa: F401


def test_a_crash_leaves_the_run_interrupted(litcode: Path, tmp_path: Path) -> None:
    from featviz.integrations.lightning import FeatvizCallback

    class Crash(lightning.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.current_epoch == 1 and batch_idx == 4:
                raise RuntimeError("out of memory, say")

    from litnets import LitTiny

    trainer = lightning.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[FeatvizCallback("crash", out_dir=tmp_path / "out"), Crash()],
    )
    train, val = _sets()
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.fit(LitTiny(), DataLoader(train, batch_size=8), DataLoader(val, batch_size=16))
    run = Run.open(tmp_path / "out" / "crash")
    assert run.epochs_done == 1 and not run.complete and run.meta["configs"]["train"]["epochs"] == 3
    assert [p.id for p in run.snapshot_points()][-1] == "epoch_001"
