"""Shared fixtures: tiny configs, one trained run per session, a CLI runner and a PNG folder maker."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from featviz.config import DataConfig, ModelConfig, TrainConfig

# Small CNNs on small batches are dominated by thread start-up and, on a busy 2-core machine, by
# OpenMP threads fighting each other (a 7-batch epoch takes ~3 s with 2 threads, ~0.05 s with 1).
# Every run in a test process uses the same thread count, so reproducibility checks are unaffected.
torch.set_num_threads(1)

TINY_DATA = DataConfig(n_train=200, n_val=50, size=16)
TINY_MODEL = ModelConfig(widths=(4, 8), kernels=(5, 3), strides=(1, 1), pools=(True, False))
TINY_TRAIN = TrainConfig(epochs=2, batch_size=32)
TINY_BATCHES = 7  # ceil(200 / 32); the last batch has 8 images, so none is dropped

# CLI options that give the tiny model (data size comes from the data set)
TINY_CLI_MODEL = ["--widths", "4,8", "--kernels", "5,3", "--strides", "1,1", "--pools", "1,0", "--batch-size", "32"]


@pytest.fixture(scope="session")
def tiny_cfgs() -> tuple[DataConfig, ModelConfig, TrainConfig]:
    """(data, model, train) configs that train in well under a second."""
    return TINY_DATA, TINY_MODEL, TINY_TRAIN


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_cfgs):
    """A finished 2-epoch run, shared by the session: treat it as read-only (copy it to modify)."""
    from featviz.pipeline import train_run

    out = tmp_path_factory.mktemp("tiny_run")
    return train_run(*tiny_cfgs, out_dir=out, name="tiny")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Call ``cli.main.main(argv)`` in-process; returns (exit code, stdout, stderr) of that call only."""
    from cli.main import main

    capsys.readouterr()  # drop anything printed before
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[[list], tuple[int, str, str]]:
    """``code, out, err = cli(["train", ...])``."""
    return lambda argv: run_cli(argv, capsys)


def make_png_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 20, seed: int = 0) -> Path:
    """An ImageFolder layout ROOT/class_i/img_j.png of RGB PNGs; each class has its own brightness."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir()
        for j in range(per_class):
            base = 40 + 80 * c
            arr = np.clip(base + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr, "RGB").save(d / f"img_{j:02d}.png")
    return root


@pytest.fixture
def png_folder(tmp_path: Path) -> Path:
    """3 classes x 12 images, 20x20 px."""
    return make_png_folder(tmp_path / "pngs")
