"""featviz summary: the per-layer parameter table for a run or for a model config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cli.common import model_config
from featviz.config import ModelConfig, from_dict
from featviz.model import build_model
from featviz.store import Run
from featviz.summary import format_table, layer_table



def summary(
    run: Optional[Path] = typer.Argument(None, help="A run folder; omit to describe a model config."),
    widths: Optional[str] = typer.Option(None, help="Conv widths per depth (without RUN)."),
    kernels: Optional[str] = typer.Option(None, help="Kernel side per depth (without RUN)."),
    strides: Optional[str] = typer.Option(None, help="Conv stride per depth (without RUN)."),
    pools: Optional[str] = typer.Option(None, help="Max-pool after each depth, e.g. 1,1,1,0 (without RUN)."),
    batchnorm: bool = typer.Option(True, help="BatchNorm after each conv (without RUN)."),
    in_channels: int = typer.Option(3, min=1, help="Input channels (without RUN)."),
    classes: int = typer.Option(10, min=2, help="Number of classes (without RUN)."),
    size: int = typer.Option(32, min=8, max=512, help="Input side in px, for output shapes (without RUN)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Per-layer table: output shape, weights with their formula, biases, trainable total."""
    if run is not None:
        r = Run.open(run)
        cfg = from_dict(ModelConfig, r.meta["configs"]["model"])
        size = int(r.meta["data"]["size"])
    else:
        cfg = model_config(widths, kernels, strides, pools, batchnorm, in_channels=in_channels, num_classes=classes)
    rows = layer_table(build_model(cfg), (cfg.in_channels, size, size))
    if as_json:
        total = sum(r.trainable for r in rows)
        typer.echo(json.dumps({"input": [cfg.in_channels, size, size], "layers": [r.as_dict() for r in rows],
                               "trainable_total": total}, indent=2))
    else:
        typer.echo(format_table(rows))
