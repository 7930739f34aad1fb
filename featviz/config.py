"""Typed, frozen configuration: one dataclass per concern, written verbatim into run.json.

Every field maps one-to-one onto a CLI option. Values are validated in ``__post_init__`` so
that a bad value fails before any work starts, with a one-line ConfigError.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any

from featviz.checks import is_int
from featviz.device import NAMES
from featviz.errors import ConfigError
from featviz.optvis.settings import RenderSettings
from featviz.schedule import parse_schedule

OPTIMIZERS = ("sgd", "adam", "adamw")
DEVICES = NAMES  # featviz.device: one list of device names


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the field type ``hint``: int (not bool), float (any real number), bool
    (or 0/1), str, None, ``X | Y`` and ``tuple[X, ...]``."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return isinstance(value, tuple) and all(_fits(v, typing.get_args(hint)[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1))
    if hint is int:
        return is_int(value)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "None"}
_PLURAL = {int: "integers", float: "numbers", bool: "true/false values", str: "strings"}


def _words(hint: Any) -> str:
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return " or ".join(_words(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"a tuple of {_PLURAL.get(typing.get_args(hint)[0], 'values')}"
    return _WORDS.get(hint, getattr(hint, "__name__", str(hint)))


def _plain(value: Any) -> Any:
    """numpy and other number types as Python's own (run.json is written from these fields)."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value) if isinstance(value, numbers.Real) else value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_types(cfg: Any) -> None:
    """Every field of a config dataclass has its declared type, so that a wrong one (``epochs=2.5``,
    ``widths=16``, ``seed="a"``) is a one-line ConfigError before any work, never a TypeError later."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not _fits(value, hints[f.name]):
            raise ConfigError(f"{type(cfg).__name__}.{f.name} must be {_words(hints[f.name])}, got {value!r}")
        if hints[f.name] is bool or hints[f.name] == tuple[bool, ...]:
            value = bool(value) if not isinstance(value, tuple) else tuple(bool(v) for v in value)
        object.__setattr__(cfg, f.name, _plain(value))  # frozen: set once, before anyone reads it


LABELS = ("true", "shuffled")


@dataclass(frozen=True)
class DataConfig:
    # pairs (the default: two objects, the class is the textured one's shape and texture) | shapes (one object
    # or pattern: the earlier default) | mnist | fashion-mnist | cifar10 | cifar100 | svhn | folder:PATH
    name: str = "pairs"
    data_dir: str = "data"  # where torchvision data sets live (ignored by the generated sets)
    download: bool = False  # let torchvision download a missing data set (never by default)
    size: int | None = None  # image side in px; None = the data set's own (pairs, shapes: 32)
    n_train: int = 20_000  # pairs and shapes only: training images generated
    n_val: int = 2_000  # pairs and shapes only: validation images generated
    val_fraction: float = 0.1  # folder only: fraction held out for validation (stratified, seeded)
    seed: int = 0  # generation (pairs, shapes) and folder split; independent of the training seed
    # true | shuffled: the training labels permuted once (seeded by ``seed``), the validation labels kept; a
    # control run that can learn nothing of the task, only the images
    labels: str = "true"

    def __post_init__(self) -> None:
        _check_types(self)
        _check(bool(self.name), "data set name is empty")
        _check(self.labels in LABELS, f"unknown labels {self.labels!r}; choose one of {', '.join(LABELS)}")
        _check(self.size is None or 8 <= self.size <= 512, f"image size must be 8..512 px, got {self.size}")
        _check(self.n_train >= 10 and self.n_val >= 10, "n_train and n_val must be at least 10")
        _check(0.0 < self.val_fraction < 1.0, f"val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class ModelConfig:
    in_channels: int = 3  # 1 for grayscale data; set from the data set by the pipeline
    num_classes: int = 10  # set from the data set by the pipeline
    widths: tuple[int, ...] = (16, 32, 64, 128)  # output channels of each conv depth
    kernels: tuple[int, ...] = (5, 3, 3, 3)  # square kernel side per depth (5x5 first: filters worth looking at)
    strides: tuple[int, ...] = (1, 1, 1, 1)  # conv stride per depth
    pools: tuple[bool, ...] = (True, True, True, False)  # 2x2 max-pool after the depth's ReLU
    batchnorm: bool = True  # BatchNorm2d after each conv (the conv then has no bias)
    dropout: float = 0.0  # dropout before the linear head

    def __post_init__(self) -> None:
        _check_types(self)
        n = len(self.widths)
        _check(n >= 1, "the model needs at least one conv depth")
        for name in ("kernels", "strides", "pools"):
            _check(len(getattr(self, name)) == n, f"{name} has {len(getattr(self, name))} entries, widths has {n}")
        _check(all(w >= 1 for w in self.widths), f"widths must be positive, got {self.widths}")
        _check(
            all(k >= 1 and k % 2 == 1 for k in self.kernels), f"kernels must be odd and positive, got {self.kernels}"
        )
        _check(all(s >= 1 for s in self.strides), f"strides must be positive, got {self.strides}")
        _check(self.in_channels >= 1 and self.num_classes >= 2, "in_channels >= 1 and num_classes >= 2 required")
        _check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8  # full passes over the training set
    batch_size: int = 128  # images per optimizer step
    lr: float = 0.005  # peak learning rate (linear warm-up for 1/10 of the steps, then cosine to 1% of the peak)
    optimizer: str = "adamw"  # sgd (momentum 0.9, nesterov) | adam | adamw
    weight_decay: float = 0.05  # decoupled for adamw, L2 for sgd/adam
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    seed: int = 0  # weight init and batch order
    device: str = "auto"  # auto | cpu | cuda | mps
    snapshots: str = "log"  # log (steps 1, 2, 4, ... of epoch 1, then epoch ends) | epoch | every:K | steps:LIST
    snapshot_every_steps: int = 0  # kept for earlier runs and scripts: K > 0 means snapshots="every:K"
    channels_last: bool = True  # NHWC memory format (several times faster for small CNNs on CPU)

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}")
        _check(self.lr > 0, f"learning rate must be positive, got {self.lr}")
        _check(
            self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
        _check(self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}")
        _check(0.0 <= self.label_smoothing < 1.0, "label smoothing must be in [0, 1)")
        _check(self.device in DEVICES, f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        _check(self.snapshot_every_steps >= 0, "snapshot_every_steps must be >= 0")
        _check(
            not (self.snapshot_every_steps and self.snapshots not in ("log", f"every:{self.snapshot_every_steps}")),
            f"snapshots {self.snapshots!r} and snapshot_every_steps {self.snapshot_every_steps} disagree; give one "
            "(--snapshots every:K is the same as --snapshot-every-steps K)",
        )

        parse_schedule(self.schedule)

    @property
    def schedule(self) -> str:
        """The snapshot schedule in effect (``featviz.schedule``)."""
        return f"every:{self.snapshot_every_steps}" if self.snapshot_every_steps else self.snapshots


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain JSON-able data (tuples become lists)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config from run.json data; unknown keys are ignored, lists become tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
    return cls(**kwargs)


PARAMS = ("fourier", "pixel")
TRANSFORMS = ("standard", "none")


GRAPH_SWITCH = {"auto": None, "on": True, "off": False}  # the CLI's --cuda-graph -> RenderSettings.cuda_graph


def _check_names(param: Any, transforms: Any) -> None:
    """The render stage records its parametrization and transforms by name: one of ``PARAMS`` / ``TRANSFORMS``."""
    _check(param in PARAMS, f"unknown parametrization {param!r}; choose one of {', '.join(PARAMS)}")
    _check(transforms in TRANSFORMS, f"unknown transforms {transforms!r}; choose one of {', '.join(TRANSFORMS)}")


def render_settings(
    *,
    size: int | None = None,
    steps: int = 256,
    param: str = "fourier",
    transforms: str = "standard",
    lr: float = 0.05,
    seed: int = 0,
    chunk: int = 64,
    cuda_graph: str = "auto",
) -> RenderSettings:
    """The render stage's ``RenderSettings`` from its options by name (what ``featviz render`` takes):
    ``param`` and ``transforms`` by name, ``cuda_graph`` as auto | on | off, ``size`` None = the run's."""
    _check_names(param, transforms)
    _check(cuda_graph in GRAPH_SWITCH, f"unknown cuda_graph {cuda_graph!r}; choose one of {', '.join(GRAPH_SWITCH)}")
    return RenderSettings(
        size=size,
        steps=steps,
        param=param,
        transforms=transforms,
        lr=lr,
        seed=seed,
        chunk=chunk,
        cuda_graph=GRAPH_SWITCH[cuda_graph],
    )


BATCHNORM = ("auto", "probe", "stored")


@dataclass(frozen=True)
class RenderConfig:
    """The render stage's config: the selection (moments, layers, channels) and the activation-maximization
    settings (``settings``; its ``size`` None = the run's image size). The stage sets the settings' colour
    channels, normalization, colour basis and device from the run, so those stay unset here."""

    # activation-maximization moments (schedule.moments): auto | snapshots | all | last | 0,5,10 | every:K
    moments: str = "auto"
    # conv layers: dotted names or globs, or ("all",); empty = the default selection (featviz.layers)
    layers: tuple[str, ...] = ()
    channels: tuple[int, ...] = ()  # channel indices; empty = all up to 64 per layer, else 64 evenly spaced
    all_channels: bool = False  # every channel of each layer (--channels all)
    settings: RenderSettings = RenderSettings()  # steps, parametrization, transforms, lr, seed, size, chunk, ...
    device: str = "auto"  # auto | cpu | cuda | mps
    filters: bool = True  # also draw the filter grids, strips and GIFs (every epoch; milliseconds)
    force: bool = False  # redo renders whose settings match existing ones
    # BatchNorm statistics of each moment's network: probe (recomputed on the validation images, as analyze
    # measures) | stored (the snapshot's running statistics: 0 and 1 at the init) | auto (probe where the
    # network has BatchNorm and validation images load, else stored)
    batchnorm: str = "auto"

    def __post_init__(self) -> None:
        _check_types(self)
        s = self.settings
        _check(bool(self.moments.strip()), "--moments is empty")
        _check(
            s.size is None or (isinstance(s.size, int) and 8 <= s.size <= 512),
            f"size must be 8..512 px (square), got {s.size}",
        )
        _check_names(s.param, s.transforms)
        _check(
            s.mean is None and s.std is None and s.color is None and s.device is None,
            "RenderConfig.settings: mean, std, color and device come from the run; leave them unset",
        )
        _check(self.device in DEVICES, f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        _check(
            self.batchnorm in BATCHNORM, f"unknown batchnorm {self.batchnorm!r}; choose one of {', '.join(BATCHNORM)}"
        )
        _check(all(c >= 0 for c in self.channels), "channels must be >= 0")
