"""What the command-line tests share: data sets made tiny, a folder per test, argv and file helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

import featviz.loading
import featviz.pipeline
from conftest import TINY_CLI_MODEL
from featviz.data import GENERATED, shuffled_labels

_real_load_data = featviz.pipeline.load_data


@pytest.fixture(autouse=True)
def tiny_shapes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The generated sets (``--data pairs``, the default, and ``shapes``) give 200 + 50 images of 16 px, in
    training and in the later stages that reload them; other sources are real.

    Also runs every test in its own folder, so a default ``outputs/`` never lands in the checkout.
    """

    def load(cfg):
        if cfg.name in GENERATED:
            data = GENERATED[cfg.name](n_train=200, n_val=50, size=16, seed=cfg.seed)
            return shuffled_labels(data, cfg.seed) if cfg.labels == "shuffled" else data
        return _real_load_data(cfg)

    monkeypatch.setattr(featviz.pipeline, "load_data", load)
    monkeypatch.setattr(featviz.loading, "load_data", load)
    monkeypatch.chdir(tmp_path)
    featviz.loading._dataset.cache_clear()
    yield
    featviz.loading._dataset.cache_clear()


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
