"""featviz summary: the per-layer parameter table for a run or for a model config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from featviz.loading import allow, build_run_model
from featviz.model import build_model
from featviz.run.store import Run
from featviz.summary import format_table, layer_table
from featviz.zoo import ModelSpec, build, normalize_spec, parse_kwargs

from .common import SMALL_CNN, echo, model_config, reject

ANY_MODEL = ("in_channels", "classes", "size", "model_kwargs")


def summary(
    ctx: typer.Context,
    run: Optional[Path] = typer.Argument(None, help="A run folder; omit to describe a model config."),
    widths: Optional[str] = typer.Option(None, help="Conv widths per depth (without RUN)."),
    kernels: Optional[str] = typer.Option(None, help="Kernel side per depth (without RUN)."),
    strides: Optional[str] = typer.Option(None, help="Conv stride per depth (without RUN)."),
    pools: Optional[str] = typer.Option(None, help="Max-pool after each depth, e.g. 1,1,1,0 (without RUN)."),
    batchnorm: bool = typer.Option(True, help="BatchNorm after each conv (without RUN)."),
    in_channels: int = typer.Option(3, min=1, help="Input channels (without RUN)."),
    classes: int = typer.Option(10, min=2, help="Number of classes (without RUN)."),
    size: int = typer.Option(32, min=8, max=512, help="Input side in px, for output shapes (without RUN)."),
    model: Optional[str] = typer.Option(
        None,
        help="Describe this architecture instead (torchvision:NAME or "
        "package.module:factory); with RUN: the run's factory, when it is your code.",
    ),
    model_kwargs: Optional[str] = typer.Option(
        None, help="JSON keyword arguments for --model's factory (without RUN)."
    ),
    trust_run_code: bool = typer.Option(
        False, help="With RUN: import the model factory the run names, whatever it is."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Per-layer table: output shape, weights with their formula, biases, trainable total."""
    if run is not None:
        reject(ctx, SMALL_CNN + ANY_MODEL, "not with RUN, whose table follows the run's own configuration")
        r = Run.open(run)
        allow(r, model, trust_run_code)
        net, chans, size = build_run_model(r), r.info.data.image_channels, r.info.data.size
    elif model is not None:
        reject(ctx, SMALL_CNN, "only for the small CNN, not with --model")
        spec = ModelSpec(
            normalize_spec(model), parse_kwargs(model_kwargs), in_channels=in_channels, num_classes=classes
        )
        net, chans = build(spec), in_channels
    else:
        reject(ctx, ["model_kwargs"], "only with --model")
        reject(ctx, ["trust_run_code"], "only with RUN")
        cfg = model_config(widths, kernels, strides, pools, batchnorm, in_channels=in_channels, num_classes=classes)
        net, chans = build_model(cfg), cfg.in_channels
    rows = layer_table(net, (chans, size, size))
    if as_json:
        total = sum(r.trainable for r in rows)
        echo(
            json.dumps(
                {"input": [chans, size, size], "layers": [r.as_dict() for r in rows], "trainable_total": total},
                indent=2,
            )
        )
    else:
        echo(format_table(rows))
