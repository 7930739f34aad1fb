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

TINY_DATA = DataConfig(name="shapes", n_train=200, n_val=50, size=16)
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
    """Call ``featviz.cli.main.main(argv)`` in-process; returns (exit code, stdout, stderr) of that call only."""
    from featviz.cli.main import main

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


USER_MODULE = '''
"""A user's own models, as they would live in their package (written by the test fixture)."""
import torch
from torch import nn


class TinyNet(nn.Module):
    """BatchNorm, a residual sum, a grouped and a depthwise conv, a strided conv without BatchNorm, dropout."""

    def __init__(self, num_classes: int = 3, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.grouped = nn.Conv2d(width, width, 3, padding=1, groups=2)
        self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.relu(self.bn(self.stem(x)))
        x = x + self.depthwise(torch.relu(self.grouped(x)))
        x = torch.relu(self.down(x))
        return self.fc(self.drop(x.mean((2, 3))))


def tiny(num_classes: int = 3, width: int = 8) -> nn.Module:
    return TinyNet(num_classes=num_classes, width=width)
'''

HOSTILE_MODULE = """
from pathlib import Path
Path(__file__).with_name("IMPORTED").write_text("the module ran")


def factory(num_classes: int = 10):
    raise ValueError("this factory is never meant to run")
"""


@pytest.fixture
def user_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on sys.path with ``usernets`` (the user's models) and ``hostile`` (writes IMPORTED when imported)."""
    root = tmp_path / "usercode"
    root.mkdir()
    (root / "usernets.py").write_text(USER_MODULE)
    (root / "hostile.py").write_text(HOSTILE_MODULE)
    monkeypatch.syspath_prepend(str(root))
    return root


USER_MODULE_EXTRA = '''

class TwoHeads(nn.Module):
    """Returns (logits, aux) like Inception in train mode; a shared conv runs twice."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.mix = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        h = torch.relu(self.mix(torch.relu(self.mix(self.conv(x)))))
        z = self.fc(h.mean((2, 3)))
        return z, z.detach()


class MLP(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 12 * 12, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))
'''
USER_MODULE += USER_MODULE_EXTRA


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, for a module's browser tests; skipped (with the install command) when it or
    the playwright package is missing."""
    from browser_helpers import CHROMIUM, FLAGS, playwright  # skips here without playwright

    if not CHROMIUM.exists():
        pytest.skip(
            "browser tests need Debian's chromium at /usr/bin/chromium: "
            "sudo apt-get install -y chromium (.ci/run installs it)"
        )
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield b
        b.close()
