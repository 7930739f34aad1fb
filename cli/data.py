"""featviz data preview: a PNG grid of samples per class."""

from __future__ import annotations

from pathlib import Path

import typer

from featviz.config import DataConfig
from featviz.data import load_data
from featviz.data.preview import check_png_target, default_path, write_preview
from featviz.data.sources import DATA_HELP

from .common import console

app = typer.Typer(help="Look at data sets.", no_args_is_help=True)


@app.command()
def preview(
    data: str = typer.Option(DataConfig.name, help=DATA_HELP),
    data_dir: Path = typer.Option(Path("data"), help="Folder holding torchvision data sets."),
    size: int = typer.Option(None, min=8, max=512, help="Image side in px."),
    per_class: int = typer.Option(8, min=1, max=64, help="Samples per class."),
    out: Path = typer.Option(None, help="PNG to write (default outputs/preview-DATA.png)."),
) -> None:
    """Write a PNG grid of training samples, one row per class."""
    target = check_png_target(out or default_path(data))  # before the data are loaded
    cfg = DataConfig(name=data, data_dir=str(data_dir), size=size, n_train=max(100, per_class * 40), n_val=10)
    images = load_data(cfg)
    path = write_preview(images, target, per_class)
    console.print(f"wrote {path}")
