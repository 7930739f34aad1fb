"""featviz import: checkpoint folders in each on-disk format -> a run; pickled objects are refused unread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from featviz.config import DataConfig
from featviz.errors import ConfigError
from featviz.importer import checkpoint_files, import_checkpoints, read_checkpoint, unnumbered
from featviz.store import Run
from featviz.zoo import ModelSpec

DATA = ["--data", "shapes", "--size", "16"]


def _states(n: int = 3) -> list[dict[str, torch.Tensor]]:
    """``n`` successive states of the user's TinyNet for the 10 classes of the shapes data set."""
    from usernets import tiny

    torch.manual_seed(0)
    model = tiny(num_classes=10)
    out = []
    for _ in range(n):
        out.append({k: v.clone() for k, v in model.state_dict().items()})
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return out


def _write(folder: Path, fmt: str, states: list[dict[str, torch.Tensor]]) -> Path:
    folder.mkdir(parents=True)
    for i, sd in enumerate(states):
        step = 10 * i
        if fmt == "pt":
            torch.save(sd, folder / f"step_{step}.pt")
        elif fmt == "pth":  # a training script's full checkpoint: model, optimizer, counters
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
            torch.save({"model_state_dict": sd, "optimizer": opt.state_dict(), "epoch": i}, folder / f"ckpt-epoch{i}.pth")
        elif fmt == "safetensors":
            save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / f"weights_{step:05d}.safetensors"))
        elif fmt == "ckpt":  # what Lightning writes: keys of the LightningModule, "model." in front
            torch.save({"epoch": i, "global_step": step, "pytorch-lightning_version": "2.6.6",
                        "state_dict": {f"model.{k}": v for k, v in sd.items()}, "loops": {"fit_loop": {"x": 1}},
                        "hyper_parameters": {"width": 8, "lr": 0.1}}, folder / f"epoch={i}-step={step}.ckpt")
    return folder


@pytest.mark.parametrize("fmt", ["pt", "pth", "safetensors", "ckpt"])
def test_each_format_imports_renders_and_analyzes(fmt: str, user_code: Path, tmp_path: Path, cli) -> None:
    states = _states()
    folder = _write(tmp_path / fmt, fmt, states)
    code, out, err = cli(["import", folder, "--model", "usernets:tiny", *DATA, "--out", tmp_path / "runs", "--name", fmt])
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
    assert run.snapshot_points()[0]["label"].startswith(f"{unit} 0 · ")  # named by its file, not "init"
    code, out, err = cli(["check", run.path])
    assert code == 0, err
    code, out, err = cli(["render", run.path, "--steps", "2", "--epochs", "last", "--model", "usernets:tiny"])
    assert code == 0, err
    code, out, err = cli(["analyze", run.path, "--probe", "16", "--model", "usernets:tiny"])
    assert code == 0, err
    assert json.loads((run.path / "analysis.json").read_text())["epochs"] == [0, 1, 2]
    assert (run.path / "gallery" / "index.html").is_file()


class _Evil:
    def __reduce__(self):
        return (Path.write_text, (Path(__file__).parent / "PWNED", "unpickled"))


def test_pickled_objects_are_refused_and_never_run(user_code: Path, tmp_path: Path, cli) -> None:
    folder = _write(tmp_path / "ckpts", "pt", _states(2))
    marker = Path(__file__).parent / "PWNED"
    torch.save({"model": _states(1)[0], "extra": _Evil()}, folder / "step_30.pt")
    code, out, err = cli(["import", folder, "--model", "usernets:tiny", *DATA, "--out", tmp_path / "runs"])
    assert code == 1 and "step_30.pt" in err and "refusing to unpickle" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "runs" / "import-ckpts").exists()


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
        import_checkpoints(folder, ModelSpec("torchvision.models:resnet18"), DataConfig(n_train=20, n_val=20, size=16),
                           out_dir=tmp_path / "runs")
    with pytest.raises(ConfigError, match="no state dict"):
        torch.save({"epoch": 3}, folder / "x.pt")
        read_checkpoint(folder / "x.pt")


@pytest.mark.parametrize("fmt, name", [("pt", "step_20.pt"), ("safetensors", "weights_00020.safetensors")])
def test_a_diverged_checkpoint_is_named_before_any_run_is_written(user_code: Path, tmp_path: Path, cli, fmt: str,
                                                                  name: str) -> None:
    states = _states()
    states[2]["fc.weight"][0, 0] = float("nan")
    folder = _write(tmp_path / "nan", fmt, states)
    code, out, err = cli(["import", folder, "--model", "usernets:tiny", *DATA, "--out", tmp_path / "runs", "--name", "n"])
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
        from litck import Lit, fit

        fit(tmp_path / "ck", L)
        code, out, err = cli(["import", tmp_path / "ck", "--model", "litck:Lit", *DATA, "--out", tmp_path / "runs",
                              "--name", "lit"])
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
        read_checkpoint(tmp_path / "text" / "epoch_9.pt")
    with pytest.raises(ConfigError, match="its group must capture the file's number, not step_0.pt .group: 'step'."):
        checkpoint_files(_write(tmp_path / "named", "pt", _states()), r"(step)_\d+")
