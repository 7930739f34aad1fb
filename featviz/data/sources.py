"""Torchvision data sets and image folders, loaded whole into uint8 ImageData.

Named sets go through torchvision's own classes (MNIST, FashionMNIST, CIFAR10, CIFAR100, SVHN) in
their usual on-disk layout under ``cfg.data_dir``; their train split is used for training and their
test split for validation. ``folder:PATH`` goes through ImageFolder (one subfolder per class) with
a stratified, seeded validation split. Folder images are always converted to RGB and square-resized
(``cfg.size``, default 32), so a folder always gives a 3-channel model.

Every failure is a one-line DataError; nothing from torchvision or PIL escapes as a traceback.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import datasets
from torchvision.transforms.v2 import functional as TF

from featviz.config import DataConfig
from featviz.data.base import ImageData, channel_stats
from featviz.data.pairs import make_pairs
from featviz.data.shapes import make_shapes
from featviz.errors import DataError, one_line

KNOWN_SOURCES: tuple[str, ...] = (
    "pairs",
    "shapes",
    "mnist",
    "fashion-mnist",
    "cifar10",
    "cifar100",
    "svhn",
    "folder:PATH",
)
DATA_HELP = " | ".join(KNOWN_SOURCES)  # the --data option's help

FOLDER_PREFIX = "folder:"
DEFAULT_FOLDER_SIZE = 32

# Errors that torchvision's readers raise on truncated or malformed files: the IDX reader uses bare
# asserts, CIFAR's own format is unpickled by torchvision, SVHN needs scipy.
_READ_ERRORS = (OSError, ValueError, TypeError, AssertionError, EOFError, KeyError, URLError)
# PIL reports damaged files through several unrelated types (SyntaxError for some broken PNG chunks).
_IMAGE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _is_read_error(err: BaseException) -> bool:
    """A reader's error on a damaged file; the UnpicklingError of torchvision's CIFAR reader is matched by
    name, so featviz itself never imports the pickle module."""
    return isinstance(err, _READ_ERRORS) or type(err).__name__ == "UnpicklingError"


def _expected_folder(key: str, root: Path) -> Path:
    """Where torchvision looks for the named set under ``root``, for the not-found message."""
    if key == "mnist":
        return root / "MNIST" / "raw"
    if key == "fashion-mnist":
        return root / "FashionMNIST" / "raw"
    if key == "cifar10":
        return root / datasets.CIFAR10.base_folder
    if key == "cifar100":
        return root / datasets.CIFAR100.base_folder
    return root  # svhn keeps train_32x32.mat / test_32x32.mat directly in root


def _open_named(key: str, root: Path, train: bool, download: bool) -> Any:
    """One split of a named set through its torchvision class."""
    if key == "mnist":
        return datasets.MNIST(str(root), train=train, download=download)
    if key == "fashion-mnist":
        return datasets.FashionMNIST(str(root), train=train, download=download)
    if key == "cifar10":
        return datasets.CIFAR10(str(root), train=train, download=download)
    if key == "cifar100":
        return datasets.CIFAR100(str(root), train=train, download=download)
    return datasets.SVHN(str(root), split="train" if train else "test", download=download)


def _as_tensors(key: str, ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 [N, C, H, W] and labels as int64 [N], straight from the data set's arrays.

    Reading ``.data`` avoids a PIL round trip per image (60k of them for MNIST).
    """
    if key in ("mnist", "fashion-mnist"):
        x = ds.data.unsqueeze(1)  # grayscale stays 1-channel end to end
        y = torch.as_tensor(ds.targets)
    elif key in ("cifar10", "cifar100"):
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)  # stored NHWC
        y = torch.as_tensor(ds.targets)
    else:
        x = torch.from_numpy(np.ascontiguousarray(ds.data))  # SVHN is already NCHW
        y = torch.as_tensor(ds.labels)
    return x.to(torch.uint8).contiguous(), y.to(torch.int64)


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Square-resize uint8 images with antialiasing; a no-op at the native size."""
    if size is None or (x.shape[-2] == size and x.shape[-1] == size):
        return x
    # Chunked so that any float intermediate of a 60k-image set stays small.
    return torch.cat([TF.resize(c, [size, size], antialias=True) for c in x.split(4096)]).contiguous()


def _load_named(key: str, cfg: DataConfig) -> ImageData:
    root = Path(cfg.data_dir).expanduser()
    splits = []
    for train in (True, False):
        try:
            ds = _open_named(key, root, train, cfg.download)
        except ImportError as err:
            missing = err.name or "scipy"
            raise DataError(f"{key} needs the optional package {missing}; install it to read {key}") from None
        except RuntimeError as err:
            msg = one_line(err)
            if "Dataset not found" in msg or "not found or corrupted" in msg:
                where = _expected_folder(key, root)
                hint = (
                    "the files there may be incomplete"
                    if cfg.download
                    else f"fetch it with featviz train --data {key} --download, or DataConfig(download=True)"
                )
                raise DataError(f"{key} not found (or corrupted) in {where}; {hint}") from None
            if cfg.download and "download" in msg.lower():
                raise DataError(f"could not download {key} into {root}: {msg}") from None
            raise DataError(f"could not read {key} from {root} (damaged file?): {msg}") from None
        except Exception as err:  # noqa: BLE001 - narrowed to reading errors right here
            if not _is_read_error(err):
                raise
            raise DataError(f"could not read {key} from {_expected_folder(key, root)}: {one_line(err)}") from None
        splits.append(_as_tensors(key, ds))
    (train_x, train_y), (val_x, val_y) = splits
    train_x, val_x = _resize(train_x, cfg.size), _resize(val_x, cfg.size)
    classes = getattr(ds, "classes", None) or [str(i) for i in range(10)]  # SVHN has no .classes
    # torchvision does not cross-check image and label files, so a damaged pair would only fail
    # later, mid-training, with an index error.
    for x, y in splits:
        if len(x) != len(y) or len(y) == 0 or int(y.min()) < 0 or int(y.max()) >= len(classes):
            raise DataError(f"{key} in {_expected_folder(key, root)} is damaged: image and label files disagree")
    mean, std = channel_stats(train_x)
    return ImageData(cfg.name, train_x, train_y, val_x, val_y, tuple(str(c) for c in classes), mean, std)


class _VisibleImageFolder(datasets.ImageFolder):
    """ImageFolder that ignores hidden subfolders (``.ipynb_checkpoints``, ``.git``) as classes."""

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        names = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not names:
            raise FileNotFoundError(f"no class subfolders in {directory}")
        return names, {n: i for i, n in enumerate(names)}


def _read_image(path: str, size: int) -> torch.Tensor:
    """One image file as uint8 RGB [3, size, size]; DataError naming the file when unreadable."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")  # convert() forces a full decode, so truncation shows up here
    except _IMAGE_ERRORS as err:
        raise DataError(f"cannot read image {path}: {one_line(err)}") from None
    x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)
    return _resize(x, size)


def _stratified_val(targets: torch.Tensor, n_classes: int, fraction: float, seed: int) -> torch.Tensor:
    """Boolean mask of validation samples: ``fraction`` of each class, seeded.

    Every class with >= 2 images puts at least one in validation and keeps at least one for
    training, so small folders still validate every class.
    """
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(targets), dtype=torch.bool)
    for c in range(n_classes):
        idx = (targets == c).nonzero().flatten()
        n = len(idx)
        if n < 2:
            continue
        k = min(n - 1, max(1, math.floor(n * fraction + 0.5)))
        mask[idx[torch.randperm(n, generator=gen)[:k]]] = True
    return mask


def _load_folder(cfg: DataConfig) -> ImageData:
    raw = cfg.name[len(FOLDER_PREFIX) :].strip()
    if not raw:
        raise DataError("folder: needs a path, e.g. folder:./my_images")
    root = Path(raw).expanduser()
    # Checked up front: ImageFolder would report these as scandir errors with less context.
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder of class subfolders")
    try:
        ds = _VisibleImageFolder(str(root), allow_empty=True)
    except PermissionError:
        raise DataError(f"image folder {root} is not readable (permission denied)") from None
    except FileNotFoundError:
        raise DataError(f"image folder {root} has no class subfolders (expected {root}/CLASS/IMAGE.png)") from None
    except OSError as err:
        raise DataError(f"cannot list image folder {root}: {one_line(err)}") from None
    if not ds.samples:
        raise DataError(f"image folder {root} has no images in its class subfolders")
    if len(ds.classes) < 2:
        raise DataError(f"image folder {root} has only 1 class ({ds.classes[0]}); at least 2 are needed")
    counts = torch.bincount(torch.tensor(ds.targets), minlength=len(ds.classes))
    empty = [ds.classes[i] for i in range(len(ds.classes)) if counts[i] == 0]
    if empty:
        raise DataError(f"image folder {root}: class folder(s) {', '.join(empty)} have no images")

    size = cfg.size or DEFAULT_FOLDER_SIZE
    x = torch.stack([_read_image(path, size) for path, _ in ds.samples])
    y = torch.tensor(ds.targets, dtype=torch.int64)
    val = _stratified_val(y, len(ds.classes), cfg.val_fraction, cfg.seed)
    if not val.any():
        raise DataError(f"image folder {root} is too small to hold out validation images (need 2+ per class)")
    train_x, train_y = x[~val].contiguous(), y[~val]
    mean, std = channel_stats(train_x)
    return ImageData(cfg.name, train_x, train_y, x[val].contiguous(), y[val], tuple(ds.classes), mean, std)


def load_source(cfg: DataConfig) -> ImageData:
    """Load ``cfg.name`` (any known source except the generated ``pairs`` and ``shapes``) as in-memory uint8 tensors.

    Raises DataError with a one-line message for an unknown name, a set not on disk (without
    ``cfg.download``), or a missing, empty, single-class, unreadable or corrupt image folder.
    """
    if cfg.name.startswith(FOLDER_PREFIX):
        return _load_folder(cfg)
    key = cfg.name.strip().lower()
    if key in ("pairs", "shapes"):  # normally handled by load_data; delegated so a direct call still works
        make = make_pairs if key == "pairs" else make_shapes
        return make(n_train=cfg.n_train, n_val=cfg.n_val, size=cfg.size or 32, seed=cfg.seed)
    if key not in KNOWN_SOURCES:
        raise DataError(f"unknown data set {cfg.name!r}; choose one of {', '.join(KNOWN_SOURCES)}")
    return _load_named(key, cfg)
