"""What the command-line tests share: data sets made tiny, a folder per test, argv and file helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

import featviz.pipeline
from conftest import TINY_CLI_MODEL
from featviz.data import make_shapes

_real_load_data = featviz.pipeline.load_data


@pytest.fixture(autouse=True)
def tiny_shapes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--data shapes`` gives 200 + 50 images of 16 px (the CLI has no n_train option); other sources are real.

    Also runs every test in its own folder, so a default ``outputs/`` never lands in the checkout.
    """

    def load(cfg):
        if cfg.name == "shapes":
            return make_shapes(n_train=200, n_val=50, size=16, seed=cfg.seed)
        return _real_load_data(cfg)

    monkeypatch.setattr(featviz.pipeline, "load_data", load)
    monkeypatch.chdir(tmp_path)


def _train_argv(out: Path, name: str = "r", epochs: int = 1) -> list[str]:
    return ["train", "--out", str(out), "--name", name, "--epochs", str(epochs), *TINY_CLI_MODEL]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_error(code: int, out: str, err: str) -> None:
    assert code != 0
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("featviz: error:") and len(lines[0]) > len("featviz: error: ")
    assert "Traceback" not in out + err
