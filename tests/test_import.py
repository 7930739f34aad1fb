"""featviz import: checkpoint folders in each on-disk format -> a run; names, dtypes and checkpoints that do not fit.

Pickled objects, hostile nesting and what is read before a checkpoint is trusted: test_import_safety.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from featviz import checkpoint
from featviz.config import DataConfig
from featviz.errors import ConfigError
from featviz.importer import checkpoint_files, import_checkpoints, unnumbered
from featviz.run.check import check_run
from featviz.run.store import Run
from featviz.zoo import ModelSpec
from import_helpers import DATA, _import, _states, _write


@pytest.mark.parametrize("fmt", ["pt", "pth", "safetensors", "ckpt"])
def test_each_format_imports_renders_and_analyzes(fmt: str, user_code: Path, tmp_path: Path, cli) -> None:
    states = _states()
    folder = _write(tmp_path / fmt, fmt, states)
    code, out, err = cli(
        ["import", folder, "--model", "usernets:tiny", *DATA, "--out", tmp_path / "runs", "--name", fmt]
    )
    assert code == 0, err
    run = Run.open(tmp_path / "runs" / fmt)
    assert run.meta["source"] == "import" and run.epochs_done == 2 and run.complete
    for i, sd in enumerate(states):
        snap = run.load_snapshot(i)
        assert all(torch.equal(snap[k], sd[k]) for k in sd), i
    unit = run.meta["imported"]["unit"]
    assert unit == {"pt": "step", "pth": "epoch", "safetensors": "number", "ckpt": "step"}[fmt]  # from the names
    assert [m["step"] for m in run.metrics()] == ([0, 10, 20] if unit == "step" else [0, 1, 2])
    assert all(0 <= m["val_acc"] <= 1 for m in run.metrics())
    assert run.snapshot_points()[0].label.startswith(f"{unit} 0 · ")  # named by its file, not "init"
    code, out, err = cli(["check", run.path])
    assert code == 0, err
    code, out, err = cli(["render", run.path, "--steps", "2", "--moments", "last", "--model", "usernets:tiny"])
    assert code == 0, err
    code, out, err = cli(["analyze", run.path, "--probe", "16", "--model", "usernets:tiny"])
    assert code == 0, err
    assert json.loads((run.path / "analysis.json").read_text())["epochs"] == [0, 1, 2]
    assert (run.path / "gallery" / "index.html").is_file()
    pages = list((run.path / "gallery" / "units").rglob("*.html"))  # a page per unit, with its wiring
    assert len(pages) == sum(la.out_ch for la in run.info.layers)
    assert all('id="unit-data"' in p.read_text() for p in pages)


def test_names_patterns_and_misfits(user_code: Path, tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    for n in (3, 12, 7):
        torch.save(_states(1)[0], folder / f"snap{n}-final.pt")
    files, unit = checkpoint_files(folder)
    assert [n for n, _ in files] == [3, 7, 12] and unit == "number"
    files, unit = checkpoint_files(folder, r"snap(\d+)")
    assert [n for n, _ in files] == [3, 7, 12]
    with pytest.raises(ConfigError, match="group around the number"):
        checkpoint_files(folder, r"snap\d+")
    torch.save(_states(1)[0], folder / "final.pt")  # like Lightning's last.ckpt: no number, left out and named
    assert [n for n, _ in checkpoint_files(folder)[0]] == [3, 7, 12] and unnumbered(folder) == ["final.pt"]
    with pytest.raises(ConfigError, match="final.pt"):
        checkpoint_files(folder, r"snap(\d+)")
    with pytest.raises(ConfigError, match="no checkpoints"):
        checkpoint_files(tmp_path)
    (folder / "final.pt").unlink()
    with pytest.raises(ConfigError, match="does not fit the model"):
        import_checkpoints(
            folder,
            ModelSpec("torchvision.models:resnet18"),
            DataConfig(n_train=20, n_val=20, size=16),
            out_dir=tmp_path / "runs",
        )
    with pytest.raises(ConfigError, match="no state dict"):
        torch.save({"epoch": 3}, folder / "x.pt")
        checkpoint.open_checkpoint(folder / "x.pt")


@pytest.mark.parametrize("fmt, name", [("pt", "step_20.pt"), ("safetensors", "weights_00020.safetensors")])
def test_a_diverged_checkpoint_is_named_before_any_run_is_written(
    user_code: Path, tmp_path: Path, cli, fmt: str, name: str
) -> None:
    states = _states()
    states[2]["fc.weight"][0, 0] = float("nan")
    folder = _write(tmp_path / "nan", fmt, states)
    code, out, err = cli(
        ["import", folder, "--model", "usernets:tiny", *DATA, "--out", tmp_path / "runs", "--name", "n"]
    )
    assert code == 1 and not (tmp_path / "runs" / "n").exists()
    # the same message whatever the format: the file, the tensor, and what to do
    assert f"{name}: fc.weight has NaN or infinite values" in err and "--pattern to skip it" in err


def test_a_real_lightning_checkpoint_folder(tmp_path: Path, cli) -> None:
    """What ModelCheckpoint writes (epoch=E-step=S.ckpt per epoch, last.ckpt, hyper-parameters, loop and
    callback state) imports with weights_only; last.ckpt has no number and is left out, with a note."""
    L = pytest.importorskip("lightning")
    import sys

    module = tmp_path / "litck.py"
    module.write_text(LIT_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        from litck import fit

        fit(tmp_path / "ck", L)
        code, out, err = cli(
            ["import", tmp_path / "ck", "--model", "litck:Lit", *DATA, "--out", tmp_path / "runs", "--name", "lit"]
        )
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("litck", None)
    assert code == 0, err
    run = Run.open(tmp_path / "runs" / "lit")
    assert run.meta["imported"]["files"] == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt"]
    assert run.meta["imported"]["left_out"] == ["last.ckpt"] and "last.ckpt" in err
    assert [m["step"] for m in run.metrics()] == [2, 4]


LIT_MODULE = """
import torch
import torch.nn.functional as F
from torch import nn
import lightning as L


class Lit(L.LightningModule):
    def __init__(self, width: int = 4, num_classes: int = 10):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, i):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(folder, L):
    from torch.utils.data import DataLoader, TensorDataset

    data = DataLoader(TensorDataset(torch.rand(16, 3, 16, 16), torch.randint(0, 10, (16,))), batch_size=8)
    ck = L.pytorch.callbacks.ModelCheckpoint(dirpath=folder, save_top_k=-1, every_n_epochs=1, save_last=True)
    L.Trainer(max_epochs=2, callbacks=[ck], logger=False, enable_progress_bar=False, enable_model_summary=False,
              accelerator="cpu").fit(Lit(), data)
"""


def test_checkpoints_that_are_not_this_models_weights(user_code: Path, tmp_path: Path, cli) -> None:
    """Integer tensors where the model has floats (they once imported as all-zero weights), a text file
    with a checkpoint's name, and a --pattern whose group does not capture the number: one line each."""
    states = _states()
    states[1] = {k: v.to(torch.int64) for k, v in states[1].items()}
    folder = _write(tmp_path / "ints", "pt", states)
    code, _, err = cli(["import", folder, "--model", "usernets:tiny", *DATA, "--out", tmp_path / "runs"])
    assert code == 1 and "step_10.pt" in err and "holds int64 values, the model's float32" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "epoch_9.pt").write_text("hello")
    with pytest.raises(ConfigError, match="epoch_9.pt: not a readable PyTorch checkpoint .damaged, or not written by"):
        checkpoint.open_checkpoint(tmp_path / "text" / "epoch_9.pt")
    with pytest.raises(ConfigError, match="its group must capture the file's number, not step_0.pt .group: 'step'."):
        checkpoint_files(_write(tmp_path / "named", "pt", _states()), r"(step)_\d+")


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_half_precision_checkpoints_are_stored_in_the_networks_dtypes(
    user_code: Path, tmp_path: Path, fmt: str
) -> None:
    """float16 and bfloat16 weights and an int32 BatchNorm counter become the network's float32 and
    int64 exactly, so every snapshot has the same dtypes and `featviz check` finds the run sound."""
    states = _states()
    half = {k: v.half() if v.is_floating_point() else v.int() for k, v in states[1].items()}
    bf16 = {k: v.bfloat16() if v.is_floating_point() else v for k, v in states[2].items()}
    run = _import(_write(tmp_path / "ckpts", fmt, [states[0], half, bf16]), tmp_path)
    rep = check_run(run.path)
    assert rep.ok, rep.problems
    for i, sd in enumerate([states[0], half, bf16]):
        snap = run.load_snapshot(i)
        assert all(snap[k].dtype == states[0][k].dtype for k in sd), i
        assert all(torch.equal(snap[k], sd[k].to(states[0][k].dtype)) for k in sd), i


HEADS_MODULE = '''
from torch import nn


class Net(nn.Module):
    """A backbone under "features" and a head, as VGG and AlexNet name them."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))
'''


def _write_all(folder: Path, sd: dict[str, torch.Tensor]) -> Path:
    """``folder`` with two checkpoints (step_1.pt, step_2.pt) that both hold ``sd``."""
    folder.mkdir(parents=True)
    for n in (1, 2):
        torch.save(sd, folder / f"step_{n}.pt")
    return folder


def _misfit(folder: Path, tmp_path: Path, sd: dict[str, torch.Tensor]) -> str:
    """The error of importing two checkpoints holding ``sd`` into headsnet:Net."""
    with pytest.raises(ConfigError, match="does not fit the model") as e:
        _import(_write_all(folder, sd), tmp_path, "headsnet:Net")
    return str(e.value)


def test_a_prefix_is_dropped_only_when_the_names_then_fit_better(
    user_code: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key of a backbone-only file starts with "features.": dropping it would make none fit, so the
    error names the head it really lacks. With Lightning's "model." in front, the prefix is dropped and
    the error says so; either way the key named is really absent from the file."""
    (user_code / "headsnet.py").write_text(HEADS_MODULE)
    monkeypatch.delitem(sys.modules, "headsnet", raising=False)
    from headsnet import Net

    full = Net().state_dict()
    backbone = {k: v for k, v in full.items() if k.startswith("features.")}
    msg = _misfit(tmp_path / "backbone", tmp_path, backbone)
    assert "it lacks classifier.weight (2 missing, 0 unexpected)" in msg and "dropping" not in msg
    lit = {f"model.{k}": v for k, v in full.items() if k != "classifier.bias"}
    msg = _misfit(tmp_path / "lit", tmp_path, lit)
    assert "it lacks classifier.bias (1 missing, 0 unexpected, after dropping 'model.' from its names)" in msg
    extra = {**full, "features.9.weight": torch.zeros(1)}
    msg = _misfit(tmp_path / "extra", tmp_path, extra)
    assert "it has features.9.weight, which the model does not (0 missing, 1 unexpected)" in msg
    wrapped = {f"model.module.{k}": v for k, v in full.items()}  # Lightning around DataParallel
    run = _import(_write_all(tmp_path / "ok", wrapped), tmp_path, "headsnet:Net")
    assert torch.equal(run.load_snapshot(1)["classifier.weight"], full["classifier.weight"])
