"""load_data for torchvision sources, on tiny fixtures written in the real on-disk formats."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featviz.config import DataConfig
from featviz.data import KNOWN_SOURCES, load_data
from featviz.errors import DataError

# ---------------------------------------------------------------- fixtures


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX (the MNIST format): magic 0x0000 08 <ndim> (uint8 data), big-endian dims, raw bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _make_mnist_style(root: Path, folder: str, n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    """Raw (un-gzipped) IDX files where torchvision's MNIST classes look: ROOT/<folder>/raw/."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": (np.arange(n_train) % 10).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": ((np.arange(n_test) * 3) % 10).astype(np.uint8),
    }
    _write_idx(raw / "train-images-idx3-ubyte", arrays["train_x"])
    _write_idx(raw / "train-labels-idx1-ubyte", arrays["train_y"])
    _write_idx(raw / "t10k-images-idx3-ubyte", arrays["test_x"])
    _write_idx(raw / "t10k-labels-idx1-ubyte", arrays["test_y"])
    return arrays


def _make_folder(root: Path, counts: dict[str, int]) -> Path:
    """ROOT/<class>/<i>.png, non-square images of varying sizes and modes."""
    rng = np.random.default_rng(1)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            h, w = 20 + i % 3, 24 + i % 5
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            img = Image.fromarray(pixels, "RGB")
            if i % 4 == 1:
                img = img.convert("L")  # grayscale files are converted to RGB too
            img.save(root / name / f"{i}.png")
    return root


def _load_error(cfg: DataConfig) -> str:
    with pytest.raises(DataError) as info:
        load_data(cfg)
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


# ---------------------------------------------------------------- MNIST family


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_family_loads_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    arrays = _make_mnist_style(tmp_path, folder)
    data = load_data(DataConfig(name=name, data_dir=str(tmp_path)))

    assert data.train_x.shape == (20, 1, 28, 28) and data.val_x.shape == (10, 1, 28, 28)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert data.image_channels == 1 and data.size == 28 and len(data.classes) == 10
    assert torch.equal(data.train_x[:, 0], torch.from_numpy(arrays["train_x"]))
    assert torch.equal(data.val_x[:, 0], torch.from_numpy(arrays["test_x"]))
    assert data.train_y.tolist() == arrays["train_y"].tolist()
    assert data.val_y.tolist() == arrays["test_y"].tolist()

    f = arrays["train_x"].astype(np.float64) / 255.0
    assert data.mean[0] == pytest.approx(f.mean(), abs=1e-9)
    assert data.std[0] == pytest.approx(f.std(), abs=1e-9)


def test_mnist_resize(tmp_path: Path) -> None:
    _make_mnist_style(tmp_path, "MNIST")
    data = load_data(DataConfig(name="mnist", data_dir=str(tmp_path), size=16))
    assert data.train_x.shape == (20, 1, 16, 16) and data.val_x.shape == (10, 1, 16, 16)
    assert data.train_x.dtype == torch.uint8


def test_mnist_truncated_file_is_a_data_error(tmp_path: Path) -> None:
    _make_mnist_style(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00")
    assert "mnist" in _load_error(DataConfig(name="mnist", data_dir=str(tmp_path)))


def test_mnist_label_count_mismatch_is_a_data_error(tmp_path: Path) -> None:
    _make_mnist_style(tmp_path, "MNIST")
    _write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(7, dtype=np.uint8))
    assert "disagree" in _load_error(DataConfig(name="mnist", data_dir=str(tmp_path)))


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100", "svhn"])
def test_named_set_missing_without_download(tmp_path: Path, name: str) -> None:
    msg = _load_error(DataConfig(name=name, data_dir=str(tmp_path), download=False))
    assert "--download" in msg and str(tmp_path) in msg


# ---------------------------------------------------------------- image folders


def test_folder_split_resize_and_classes(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imgs", {"cat": 10, "dog": 8, "emu": 5})
    cfg = DataConfig(name=f"folder:{root}", size=16, val_fraction=0.2, seed=3)
    data = load_data(cfg)

    assert data.classes == ("cat", "dog", "emu")
    assert data.train_x.shape[1:] == (3, 16, 16) and data.val_x.shape[1:] == (3, 16, 16)
    assert data.train_x.dtype == torch.uint8 and data.val_y.dtype == torch.int64
    # round(0.2 * n) per class, at least 1: cat 2, dog 2, emu 1
    assert torch.bincount(data.val_y, minlength=3).tolist() == [2, 2, 1]
    assert torch.bincount(data.train_y, minlength=3).tolist() == [8, 6, 4]
    assert len(data.mean) == 3 and len(data.std) == 3

    again = load_data(cfg)
    assert torch.equal(again.val_x, data.val_x) and torch.equal(again.val_y, data.val_y)
    assert torch.equal(again.train_x, data.train_x)
    other = load_data(DataConfig(name=f"folder:{root}", size=16, val_fraction=0.2, seed=4))
    assert not torch.equal(other.val_x, data.val_x)


def test_folder_default_size_and_small_classes(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imgs", {"a": 2, "b": 3, "c": 1})
    data = load_data(DataConfig(name=f"folder:{root}"))
    assert data.size == 32 and data.image_channels == 3
    # val_fraction 0.1 would hold out nobody; classes with >= 2 images still give one
    assert torch.bincount(data.val_y, minlength=3).tolist() == [1, 1, 0]
    assert torch.bincount(data.train_y, minlength=3).tolist() == [1, 2, 1]


def test_folder_ignores_hidden_subfolders(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imgs", {"a": 3, "b": 3, ".ipynb_checkpoints": 2})
    assert load_data(DataConfig(name=f"folder:{root}")).classes == ("a", "b")


# ---------------------------------------------------------------- bad inputs


def test_unknown_name_lists_known_sources() -> None:
    msg = _load_error(DataConfig(name="imagenet5"))
    assert "imagenet5" in msg and all(s in msg for s in KNOWN_SOURCES)


def test_folder_missing(tmp_path: Path) -> None:
    assert "does not exist" in _load_error(DataConfig(name=f"folder:{tmp_path / 'nope'}"))


def test_folder_path_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    assert "is a file" in _load_error(DataConfig(name=f"folder:{f}"))


def test_folder_empty(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "no class subfolders" in _load_error(DataConfig(name=f"folder:{tmp_path / 'empty'}"))


def test_folder_class_dirs_without_images(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "b").mkdir()
    (tmp_path / "imgs" / "a" / "notes.txt").write_text("not an image")
    assert "no images" in _load_error(DataConfig(name=f"folder:{tmp_path / 'imgs'}"))


def test_folder_one_empty_class(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imgs", {"a": 3, "b": 3})
    (root / "c").mkdir()
    assert "class folder(s) c have no images" in _load_error(DataConfig(name=f"folder:{root}"))


def test_folder_single_class(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imgs", {"only": 4})
    assert "1 class" in _load_error(DataConfig(name=f"folder:{root}"))


def test_folder_corrupt_image_is_named(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imgs", {"a": 3, "b": 3})
    (root / "b" / "x.png").write_bytes(np.random.default_rng(2).integers(0, 256, 300, dtype=np.uint8).tobytes())
    assert "x.png" in _load_error(DataConfig(name=f"folder:{root}"))


def test_folder_truncated_png_is_named(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imgs", {"a": 3, "b": 3})
    good = (root / "a" / "0.png").read_bytes()
    (root / "a" / "cut.png").write_bytes(good[: len(good) // 2])
    assert "cut.png" in _load_error(DataConfig(name=f"folder:{root}"))
