"""featviz import: a folder of checkpoints -> featviz.importer.import_checkpoints -> a run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from featviz.config import DataConfig
from featviz.importer import import_checkpoints
from featviz.zoo import ModelSpec, model_flag, normalize_spec, parse_kwargs

from .common import console, not_empty

_D = DataConfig()


def import_run(
    folder: Path = typer.Argument(
        ..., help="A folder of checkpoints: .pt/.pth state dicts, Lightning .ckpt, .safetensors."
    ),
    model: str = typer.Option(
        ..., help="The network the checkpoints belong to: torchvision:NAME or package.module:factory."
    ),
    model_kwargs: Optional[str] = typer.Option(None, help="JSON keyword arguments for the factory."),
    data: str = typer.Option(
        _D.name, help="The data set it was trained on (pairs | shapes | mnist | cifar10 | ... | folder:PATH)."
    ),
    data_dir: Path = typer.Option(Path(_D.data_dir), help="Folder holding torchvision data sets."),
    size: Optional[int] = typer.Option(None, min=8, max=512, help="Image side in px (default: the data set's)."),
    pattern: Optional[str] = typer.Option(
        None,
        help="Regular expression with a group around each file's number, "
        "for names without 'step'/'epoch' (default: step N, else epoch N, else the "
        "last number).",
    ),
    out: Path = typer.Option(Path("outputs"), help="Folder that holds runs."),
    name: Optional[str] = typer.Option(None, help="Run name (default: import-FOLDER)."),
    force: bool = typer.Option(False, help="Replace an existing run of the same name."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps (for each checkpoint's validation accuracy)."),
) -> None:
    """Make a run from checkpoints you already saved (never unpickles anything but tensors), ready to render."""
    not_empty(model=model, model_kwargs=model_kwargs, name=name, pattern=pattern)
    spec = ModelSpec(normalize_spec(model), parse_kwargs(model_kwargs))
    run = import_checkpoints(
        folder,
        spec,
        DataConfig(name=data, data_dir=str(data_dir), size=size),
        out_dir=out,
        name=name,
        pattern=pattern,
        force=force,
        device=device,
    )
    files = (run.info.imported or {})["files"]
    for name in (run.info.imported or {})["left_out"]:
        console.print(
            f"note: {name} has no step or epoch number in its name and was left out (--pattern to include it)"
        )
    named = model_flag(spec.factory)
    console.print(
        f"imported {len(files)} checkpoints ({files[0]} .. {files[-1]}) into {run.path} as epochs "
        f"0..{len(files) - 1}; next: featviz render {run.path}{named}"
    )
