"""featviz export: featviz.export.export_tensorboard, then a one-line summary."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from featviz.export import export_tensorboard
from featviz.run.store import Run

from .common import console, not_empty, renamed


def export(
    run: Path = typer.Argument(..., help="A run folder."),
    tensorboard: Path = typer.Option(..., help="Folder for the TensorBoard event files (created if needed)."),
    settings_set: Optional[str] = typer.Option(
        None,
        help="Activation-maximization settings set to export the grids of "
        "(a folder name under RUN/renders/am/; default: the default settings' "
        "set, else the only one).",
    ),
    renders: Optional[str] = typer.Option(None, hidden=True, help="Old name of --settings-set (kept for one release)."),
) -> None:
    """Write a run as TensorBoard events: metrics, analysis, filters, activation maximization, histograms."""
    not_empty(settings_set=settings_set, renders=renders)
    settings_set = renamed(settings_set, renders, "--settings-set", "--renders")
    r = Run.open(run)
    counts = export_tensorboard(r, tensorboard, settings_set)
    console.print(
        f"wrote {counts['scalars']} scalars, {counts['images']} images and {counts['histograms']} "
        f"histograms to {tensorboard}  (tensorboard --logdir {tensorboard})"
    )
