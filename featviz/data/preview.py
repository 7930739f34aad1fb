"""A PNG grid of samples per class, with class names, for a first look at a data set."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torchvision.utils import make_grid

from featviz.data.base import ImageData
from featviz.errors import ConfigError
from featviz.run.fileio import atomic_write_bytes, replaceable


def sample_grid(data: ImageData, per_class: int = 8) -> torch.Tensor:
    """uint8 [C, H', W'] grid: one row per class, the first ``per_class`` training images of it."""
    rows = []
    for c in range(len(data.classes)):
        idx = (data.train_y == c).nonzero()[:per_class, 0]
        imgs = data.train_x[idx]
        if len(imgs) < per_class:  # pad short classes with blanks so rows line up
            imgs = torch.cat([imgs, torch.zeros(per_class - len(imgs), *imgs.shape[1:], dtype=imgs.dtype)])
        rows.append(imgs)
    return make_grid(torch.cat(rows), nrow=per_class, padding=2, pad_value=255)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def default_path(data_name: str) -> Path:
    """outputs/preview-NAME.png for a data set's name (any character but letters and digits: '-')."""
    return Path("outputs") / f"preview-{''.join(c if c.isalnum() else '-' for c in data_name.split('/')[-1])}.png"


def check_png_target(path: Path) -> Path:
    """``path`` if a preview may be written there: a ``.png`` name, and nothing there yet or a regular
    PNG file (an earlier preview). Any other file (a run's run.json, a device node) is never replaced."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--out {path}: the preview is a PNG; give a file name ending in .png")
    replaceable(path)  # a folder, device node, FIFO or symlink there: refused
    if path.exists():
        with open(path, "rb") as f:
            if f.read(len(PNG_MAGIC)) != PNG_MAGIC:
                raise ConfigError(f"--out {path} exists and is not a PNG image; refusing to replace it")
    return path


def write_preview(data: ImageData, path: Path, per_class: int = 8, scale: int = 3) -> Path:
    """Write the grid with class names on the left as a PNG (atomically) and return its path; the target
    is checked first (``check_png_target``)."""
    path = check_png_target(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = sample_grid(data, per_class)
    img = grid.permute(1, 2, 0).numpy()
    h, w = img.shape[:2]
    fig = plt.figure(figsize=(w * scale / 100 + 1.2, h * scale / 100 + 0.2), dpi=100)
    ax = fig.add_axes((1.2 / (w * scale / 100 + 1.2), 0, 1 - 1.2 / (w * scale / 100 + 1.2), 1))
    ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", interpolation="nearest")
    step = h / len(data.classes)
    ax.set_yticks([step * (i + 0.5) for i in range(len(data.classes))], list(data.classes))
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
