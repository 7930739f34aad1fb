"""featviz: see what a small CNN learns, epoch by epoch and depth by depth.

Public API::

    import featviz
    run = featviz.train(epochs=3)                 # a Run under outputs/
    run = featviz.load_run("outputs/pairs-...")  # open an existing run
    weights = run.load_snapshot(0)                # dict of tensors at the random init
    with featviz.record(model, name="mine", model_spec="pkg.mod:factory", data=val_set) as rec:
        ...; rec.step(loss=loss) ...; rec.epoch(val_acc=acc)   # your own loop, recorded
"""

import dataclasses
from pathlib import Path

import torch

from featviz.compare import compare
from featviz.config import DataConfig, ModelConfig, RenderConfig, TrainConfig
from featviz.data import ImageData, load_data, make_pairs, make_shapes
from featviz.device import resolve_device
from featviz.errors import ConfigError, FeatvizError
from featviz.loading import allow, load_model_at
from featviz.model import SmallCNN, build_model, conv_layers
from featviz.optvis import RenderSettings
from featviz.pipeline import analyze_run, render_run, resume_run, train_run
from featviz.provenance import featviz_version
from featviz.record import Recorder, record
from featviz.run.schema import ConvLayer, DataInfo, RenderRecord, RunInfo, SnapshotPoint
from featviz.run.store import Run, list_runs

__version__ = featviz_version()  # pyproject.toml's, as installed: one place for the number

__all__ = [
    "compare",
    "DataConfig",
    "ModelConfig",
    "RenderConfig",
    "TrainConfig",
    "ImageData",
    "load_data",
    "make_shapes",
    "make_pairs",
    "FeatvizError",
    "SmallCNN",
    "build_model",
    "conv_layers",
    "train_run",
    "resume_run",
    "render_run",
    "analyze_run",
    "Run",
    "list_runs",
    "train",
    "load_run",
    "load_model",
    "record",
    "Recorder",
    "RenderSettings",
    "RunInfo",
    "DataInfo",
    "ConvLayer",
    "SnapshotPoint",
    "RenderRecord",
]


def train(
    data: str = "pairs",
    epochs: int | None = None,
    out_dir: str = "outputs",
    name: str | None = None,
    force: bool = False,
    **options,
) -> Run:
    """Train with defaults plus any DataConfig/ModelConfig/TrainConfig field given by name.

    Example: ``featviz.train(epochs=2, lr=1e-3, widths=(8, 16, 32, 64))``.
    """
    # TrainConfig first: ``seed`` means the training seed (the data seed is DataConfig's default)
    buckets: dict[type, dict] = {TrainConfig: {}, ModelConfig: {}, DataConfig: {"name": data}}
    if epochs is not None:
        buckets[TrainConfig]["epochs"] = epochs
    for key, val in options.items():
        owner = next((c for c in buckets if key in {f.name for f in dataclasses.fields(c)}), None)
        if owner is None:
            raise FeatvizError(f"unknown option {key!r}")
        buckets[owner][key] = val
    return train_run(
        DataConfig(**buckets[DataConfig]),
        ModelConfig(**buckets[ModelConfig]),
        TrainConfig(**buckets[TrainConfig]),
        out_dir=out_dir,
        name=name,
        force=force,
    )


def load_run(path: str) -> Run:
    """Open a run directory written by ``featviz train``."""
    return Run.open(Path(path))


def load_model(
    run: "Run | str",
    epoch: int | None = None,
    device: str = "cpu",
    model: str | None = None,
    trust_run_code: bool = False,
) -> torch.nn.Module:
    """The run's network (a Run or its folder) with the weights of ``epoch`` (default: the last committed),
    in eval mode. ``model``/``trust_run_code``: for a run of your own factory (see ``featviz.loading.allow``)."""
    run = Run.of(run)
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
        raise ConfigError(f"epoch must be an integer (a committed epoch of the run), got {epoch!r}")
    allow(run, model, trust_run_code)
    return load_model_at(run, run.epochs_done if epoch is None else epoch, resolve_device(device))
