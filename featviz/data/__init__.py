"""Data sets: the embedded generated ``shapes`` set and torchvision sources, all as ImageData."""

from __future__ import annotations

import dataclasses

import torch

from featviz.config import DataConfig
from featviz.data.base import ImageData, channel_stats
from featviz.data.pairs import PAIR_CLASSES, make_pairs
from featviz.data.shapes import SHAPE_CLASSES, make_shapes
from featviz.data.sources import GENERATED, KNOWN_SOURCES, load_source

__all__ = [
    "ImageData",
    "channel_stats",
    "load_data",
    "shuffled_labels",
    "make_shapes",
    "make_pairs",
    "SHAPE_CLASSES",
    "PAIR_CLASSES",
    "GENERATED",
    "KNOWN_SOURCES",
]


def load_data(cfg: DataConfig) -> ImageData:
    """Load or generate the data set ``cfg.name`` as in-memory uint8 tensors.

    Raises DataError (one line) for an unknown name, a missing/empty/corrupt folder, or a
    torchvision data set that is not on disk (unless ``cfg.download``).
    """
    data = load_source(cfg)  # the generated sets (GENERATED) or a torchvision / folder source
    return shuffled_labels(data, cfg.seed) if cfg.labels == "shuffled" else data


def shuffled_labels(data: ImageData, seed: int) -> ImageData:
    """``data`` with its training labels permuted once (seeded; every class keeps its count) and its
    validation labels kept: a network trained on it can fit the images but learn nothing of the task."""
    perm = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(seed))
    return dataclasses.replace(data, train_y=data.train_y[perm])
