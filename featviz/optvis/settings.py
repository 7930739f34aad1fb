"""The knobs of one activation-maximization render, checked once, and the input normalization.

Contract: :class:`RenderSettings` is a frozen dataclass whose ``__post_init__`` rejects every bad
value with a one-line ``ConfigError`` and stores values in plain form (ints, floats, tuples,
strings), so ``to_dict()`` is JSON-able and records exactly what was asked for. ``resolve`` builds
the settings of a call from an optional settings object plus keyword overrides (an unknown keyword
is a ConfigError naming it). ``image_channels`` is the colour channel count of the images;
channel indices of a layer are never a setting (``maximize_channels(..., channels=[...])``).
``normalizer`` checks a training normalization and applies it with ``featviz.images.Normalizer``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from featviz.checks import is_int
from featviz.errors import ConfigError
from featviz.images import Normalizer
from featviz.optvis.param import Param, check_color
from featviz.optvis.transforms import Transform

__all__ = ["RenderSettings", "resolve", "normalizer", "norm_values", "is_int"]

PARAMS = ("fourier", "pixel")
TRANSFORMS = ("standard", "none")


def _count(name: str, v: object, lo: int, hi: int | None = None) -> int:
    if not is_int(v):
        hint = "; channel indices go to maximize_channels(..., channels=[...])" if name == "image_channels" else ""
        raise ConfigError(f"{name} must be an integer, got {v!r}{hint}")
    if int(v) < lo or (hi is not None and int(v) > hi):
        raise ConfigError(f"{name} must be >= {lo}, got {v}" if int(v) < lo else f"{name} must be <= {hi}, got {v}")
    return int(v)


def _real(name: str, v: object, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {v!r}")
    if positive and v <= 0:
        raise ConfigError(f"{name} must be positive, got {v}")
    return float(v)


def _is_param(p: object) -> bool:
    if isinstance(p, str):
        return p in PARAMS
    return isinstance(p, tuple) and len(p) == 2 and callable(p[1])


def _is_transforms(t: object) -> bool:
    if t is None or isinstance(t, str):
        return t is None or t in TRANSFORMS
    return callable(t)


def _floats(v: Sequence[float] | Tensor | float) -> tuple[float, ...]:
    return tuple(float(x) for x in torch.as_tensor(v, dtype=torch.float64).flatten().tolist())


def norm_values(
    mean: Sequence[float] | Tensor | float | None, std: Sequence[float] | Tensor | float | None, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Checked ``(mean, std)`` with 1 or ``channels`` values each (None for a missing one: 0 / 1);
    None when both are None (no normalization)."""
    if mean is None and std is None:
        return None
    try:
        m, s = _floats(0.0 if mean is None else mean), _floats(1.0 if std is None else std)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"mean/std must be numbers, got {mean!r} and {std!r}") from None
    if len(m) not in (1, channels) or len(s) not in (1, channels):
        raise ConfigError(f"mean/std need 1 or {channels} values, got {len(m)} and {len(s)}")
    if not all(math.isfinite(x) for x in m + s):
        raise ConfigError("mean/std must be finite")
    if min(s) <= 0:
        raise ConfigError("std must be positive")
    return m, s


def normalizer(
    mean: Sequence[float] | Tensor | float | None,
    std: Sequence[float] | Tensor | float | None,
    channels: int,
    device: torch.device | str,
    channels_last: bool = False,
) -> Callable[[Tensor], Tensor]:
    """Images [B, C, H, W] in 0..1 -> ``(x - mean) / std`` (differentiable) in the given memory format."""
    values = norm_values(mean, std, channels)
    if values is not None:
        return Normalizer(values[0], values[1], device, channels_last=channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return lambda x: x.contiguous(memory_format=fmt)


@dataclass(frozen=True)
class RenderSettings:
    """Everything that decides a render except the objective and the batch's element keys."""

    # image side, or (height, width), in px; None: the model's own input size where the caller knows it (the
    # render stage: a run's image size), else DEFAULT_SIZE
    size: int | tuple[int, int] | None = None
    steps: int = 256  # Adam steps
    lr: float = 0.05  # Adam learning rate
    param: str | Param = "fourier"  # "fourier" | "pixel" | a (params, image_fn) pair
    transforms: str | Transform | None = "standard"  # "standard" | "none" (or None) | a callable
    seed: int = 0  # with each element's key, seeds all of its randomness
    image_channels: int = 3  # colour channels of the images
    mean: tuple[float, ...] | None = None  # training normalization (0..1 scale), 1 or image_channels values
    std: tuple[float, ...] | None = None
    color: tuple[tuple[float, ...], ...] | None = None  # [C, C] colour matrix (``param.color_matrix``)
    decay_power: float = 1.0  # fourier spectrum falls as 1 / f**decay_power
    chunk: int = 64  # maximize_channels: channels per batch
    channels_last: bool | None = None  # NHWC activations; None = on CPU only
    optimize: bool = True  # run on ``fastpath.prepare_fast``'s copy of the model
    trace_every: int = 16  # record the objective every this many steps (and at the last)
    device: str | None = None  # must be the model's device; None = wherever the model is
    cuda_graph: bool | None = None  # capture the optimization step as a CUDA graph; None = on CUDA only

    def __post_init__(self) -> None:
        put = object.__setattr__
        if self.size is None:
            pass
        elif isinstance(self.size, (tuple, list)) and len(self.size) == 2:
            put(self, "size", (_count("size", self.size[0], 2), _count("size", self.size[1], 2)))
        else:
            put(self, "size", _count("size", self.size, 2))
        for name, lo in (("steps", 1), ("image_channels", 1), ("chunk", 1), ("trace_every", 1)):
            put(self, name, _count(name, getattr(self, name), lo))
        # a signed 64-bit seed: element seeds hash it modulo 2**64, so wider ones would collide with these
        put(self, "seed", _count("seed", self.seed, -(1 << 63), (1 << 63) - 1))
        put(self, "lr", _real("lr", self.lr, positive=True))
        put(self, "decay_power", _real("decay_power", self.decay_power))
        if not _is_param(self.param):
            raise ConfigError(f"unknown param {self.param!r}; use 'fourier', 'pixel' or a (params, image_fn) pair")
        if not _is_transforms(self.transforms):
            raise ConfigError(f"unknown transforms {self.transforms!r}; use 'standard', 'none' or a callable")
        values = norm_values(self.mean, self.std, self.image_channels)
        put(self, "mean", None if self.mean is None else values[0])
        put(self, "std", None if self.std is None else values[1])
        if self.color is not None:
            c = check_color(self.color, self.image_channels, torch.device("cpu"))
            put(self, "color", tuple(tuple(row) for row in c.tolist()))
        if not isinstance(self.optimize, bool):
            raise ConfigError(f"optimize must be True or False, got {self.optimize!r}")
        for name in ("channels_last", "cuda_graph"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True, False or None, got {getattr(self, name)!r}")
        if self.device is not None:
            try:
                put(self, "device", str(torch.device(self.device)))
            except (RuntimeError, TypeError):
                raise ConfigError(f"unknown device {self.device!r}") from None

    def to_dict(self) -> dict[str, Any]:
        """The settings as given, JSON-able: a custom param or transform is recorded as "custom"."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["param"] = self.param if isinstance(self.param, str) else "custom"
        d["transforms"] = self.transforms if self.transforms is None or isinstance(self.transforms, str) else "custom"
        for k in ("size", "mean", "std"):
            d[k] = list(d[k]) if isinstance(d[k], tuple) else d[k]
        d["color"] = None if self.color is None else [list(row) for row in self.color]
        return d

    def color_tensor(self) -> Tensor | None:
        """The colour matrix as a float32 tensor (None if none)."""
        return None if self.color is None else torch.tensor(self.color, dtype=torch.float32)


FIELDS = tuple(f.name for f in dataclasses.fields(RenderSettings))
DEFAULT_SIZE = 32  # px: the image side when the settings leave it to the caller and the caller does not know one


def resolve(
    settings: RenderSettings | None,
    overrides: Mapping[str, Any],
    caller: str = "render",
    hints: Mapping[str, str] | None = None,
) -> RenderSettings:
    """``settings`` (default: ``RenderSettings()``) with the fields in ``overrides`` replaced, and a size
    left open (None) made ``DEFAULT_SIZE``.

    A key that is not a field is a ConfigError naming it (with ``hints[key]`` appended if given).
    """
    if settings is None:
        settings = RenderSettings()
    elif not isinstance(settings, RenderSettings):
        raise ConfigError(f"{caller}: settings must be a RenderSettings, got {type(settings).__name__}")
    for key in overrides:
        if key not in FIELDS:
            hint = (hints or {}).get(key, f"settings are {', '.join(FIELDS)}")
            raise ConfigError(f"{caller}: unknown keyword {key!r}; {hint}")
    settings = dataclasses.replace(settings, **overrides) if overrides else settings
    return settings if settings.size is not None else dataclasses.replace(settings, size=DEFAULT_SIZE)
