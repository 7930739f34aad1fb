"""Data sets: the embedded generated ``shapes`` set and torchvision sources, all as ImageData."""

from __future__ import annotations

from featviz.config import DataConfig
from featviz.data.base import ImageData, channel_stats
from featviz.data.shapes import SHAPE_CLASSES, make_shapes
from featviz.data.sources import KNOWN_SOURCES, load_source

__all__ = ["ImageData", "channel_stats", "load_data", "make_shapes", "SHAPE_CLASSES", "KNOWN_SOURCES"]


def load_data(cfg: DataConfig) -> ImageData:
    """Load or generate the data set ``cfg.name`` as in-memory uint8 tensors.

    Raises DataError (one line) for an unknown name, a missing/empty/corrupt folder, or a
    torchvision data set that is not on disk (unless ``cfg.download``).
    """
    if cfg.name == "shapes":
        return make_shapes(n_train=cfg.n_train, n_val=cfg.n_val, size=cfg.size or 32, seed=cfg.seed)
    return load_source(cfg)
