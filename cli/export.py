"""featviz export: featviz.export.export_tensorboard, then a one-line summary."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import console, not_empty
from featviz.export import export_tensorboard
from featviz.run.store import Run


def export(
    run: Path = typer.Argument(..., help="A run folder."),
    tensorboard: Path = typer.Option(..., help="Folder for the TensorBoard event files (created if needed)."),
    renders: Optional[str] = typer.Option(None, help="Render settings set whose activation-maximization grids to export."),
) -> None:
    """Write a run as TensorBoard events: metrics, analysis, filter and activation-maximization images, weight histograms."""
    not_empty(renders=renders)
    r = Run.open(run)
    counts = export_tensorboard(r, tensorboard, renders)
    console.print(f"wrote {counts['scalars']} scalars, {counts['images']} images and {counts['histograms']} "
                  f"histograms to {tensorboard}  (tensorboard --logdir {tensorboard})")
