"""What the importer tests share: successive states of the user's TinyNet, written as checkpoints, and imported."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from featviz.config import DataConfig
from featviz.importer import import_checkpoints
from featviz.run.store import Run
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
            torch.save(
                {"model_state_dict": sd, "optimizer": opt.state_dict(), "epoch": i}, folder / f"ckpt-epoch{i}.pth"
            )
        elif fmt == "safetensors":
            save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / f"weights_{step:05d}.safetensors"))
        elif fmt == "ckpt":  # what Lightning writes: keys of the LightningModule, "model." in front
            torch.save(
                {
                    "epoch": i,
                    "global_step": step,
                    "pytorch-lightning_version": "2.6.6",
                    "state_dict": {f"model.{k}": v for k, v in sd.items()},
                    "loops": {"fit_loop": {"x": 1}},
                    "hyper_parameters": {"width": 8, "lr": 0.1},
                },
                folder / f"epoch={i}-step={step}.ckpt",
            )
    return folder


SMALL_DATA = DataConfig(name="shapes", n_train=20, n_val=20, size=16)


def _import(folder: Path, tmp_path: Path, model: str = "usernets:tiny", **kwargs) -> Run:
    return import_checkpoints(folder, ModelSpec(model), SMALL_DATA, out_dir=tmp_path / "runs", **kwargs)
