"""The probe a recorded run keeps: a few examples of the user's validation data, read without touching
any random stream the user's loop depends on (``featviz.record``; the Lightning callback too).

``take_probe`` accepts whatever a user has at hand: a map-style Dataset, a DataLoader (its dataset is
read, never the loader), any iterable of items, a tensor, or an (x, y) pair of tensors.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator

import numpy
import torch
from torch.utils.data import IterableDataset

from featviz.errors import ConfigError


@contextlib.contextmanager
def untouched_rng() -> Iterator[None]:
    """Run the block with torch's (CPU and initialized CUDA), Python's and NumPy's random state restored after."""
    py = random.getstate()
    np_state = numpy.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py)
        numpy.random.set_state(np_state)


def take_probe(data: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` examples of ``data`` as (x float [N, C, H, W], y int64 [N], -1 where unknown), evenly
    spaced over the data (class-sorted sets stay balanced). ``data``: a map-style Dataset of (x, y) or x,
    a DataLoader (its dataset is read, never the loader: iterating it would move its random generator),
    any other iterable of items (a DataLoader over an IterableDataset, an IterableDataset, a generator),
    a tensor, or an (x, y) pair of tensors. An item's image tensor says what it is: [C, H, W] one example,
    [N, C, H, W] a batch (``_examples``)."""
    dataset = getattr(data, "dataset", None)
    if _map_style(dataset):
        data = dataset  # a DataLoader over a map-style dataset
    if torch.is_tensor(data) or (isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0])):
        x, y = (data, None) if torch.is_tensor(data) else data
        if len(x) == 0 or (y is not None and len(y) != len(x)):
            raise ConfigError(
                f"data has {len(x)} images"
                + ("" if y is None else f" and {len(y)} labels")
                + "; give featviz.record a few validation images (and one label each)"
            )
        idx = _spread(len(x), n)
        return x[idx].float(), torch.full((len(idx),), -1) if y is None else torch.as_tensor(y)[idx].long()
    if _map_style(data):
        items: Any = (data[i] for i in _spread(len(data), n).tolist())
    elif hasattr(data, "__iter__"):
        items = iter(data)
    else:
        raise ConfigError(f"data is a {type(data).__name__}; give a Dataset, DataLoader or tensor of images")
    xs, ys, count = [], [], 0
    for item in items:
        x, y = _examples(item)
        xs.append(x)
        ys.append(y)
        count += len(x)
        if count >= n:
            break
    if not xs:
        raise ConfigError("data has no examples: give featviz.record a few validation images")
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def _map_style(data: Any) -> bool:
    """Indexable with a length (an IterableDataset has ``__getitem__`` too, but only to raise)."""
    return (
        data is not None
        and not isinstance(data, IterableDataset)
        and hasattr(data, "__getitem__")
        and hasattr(data, "__len__")
    )


def _spread(total: int, n: int) -> torch.Tensor:
    """min(n, total) indices evenly spread over range(total)."""
    k = min(n, total)
    return torch.linspace(0, total - 1, k).round().long() if k > 1 else torch.arange(k)


def _examples(item: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """One item of the data as (images float [N, C, H, W], labels int64 [N], -1 where unknown). The item is
    x, (x,) or (x, y, ...); x is one image [C, H, W] or a batch [N, C, H, W], told apart by its dimensions
    (the same for every kind of data: a generator of single examples is not read as batches); anything
    else, or a label count other than the image count, is a one-line ConfigError."""
    x, y = (item[0], item[1] if len(item) > 1 else None) if isinstance(item, (tuple, list)) else (item, None)
    try:
        x = torch.as_tensor(x).float()
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(
            f"data gives {type(x).__name__} examples; featviz needs image tensors (apply your "
            "ToTensor/Normalize transform in the dataset)"
        ) from None
    if x.dim() not in (3, 4):
        raise ConfigError(
            f"data gives image tensors shaped {list(x.shape)}; featviz reads one image [C, H, W] or "
            "a batch [N, C, H, W] per item"
        )
    x = x if x.dim() == 4 else x.unsqueeze(0)
    try:
        labels = torch.full((len(x),), -1) if y is None else torch.as_tensor(y).long().reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"data gives {type(y).__name__} labels; featviz needs class indices") from None
    if len(labels) != len(x):
        raise ConfigError(f"data gives {len(x)} image(s) with {len(labels)} labels; give one class index per image")
    return x, labels
