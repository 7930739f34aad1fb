"""featviz render: options -> RenderConfig -> featviz.pipeline.render_run."""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from featviz.config import RenderConfig, render_settings
from featviz.distributed import main_process, setup
from featviz.errors import printable
from featviz.loading import allow
from featviz.pipeline import plan_render, render_run
from featviz.run.store import Run

from .common import console, echo, int_list, not_empty

_R, _S = RenderConfig(), RenderConfig().settings


def render(
    run: Path = typer.Argument(..., help="A run folder written by featviz train."),
    moments: str = typer.Option(
        _R.moments,
        help="Activation-maximization moments: auto (init, 3 log-spaced steps of "
        "epoch 1, epoch 1, middle, final; a model with more than 8 convs: init, middle, final) | "
        "snapshots (every snapshot) | all (every epoch) | last | 0,5,10 | every:K.",
    ),
    layers: Optional[str] = typer.Option(
        None,
        help="all | conv layers by dotted name or glob, comma-separated, e.g. "
        "'layer*.1.conv2' (default: every conv of a model with up to 8; for deeper "
        "models the first conv and the last before each downsampling).",
    ),
    channels: Optional[str] = typer.Option(
        None,
        help="all | channel indices, e.g. 0,1,2 (default: all up to 64 per layer, else 64 evenly spaced; a model "
        "with more than 8 convs: 6 to 32 per layer, as many as a fixed compute budget buys).",
    ),
    steps: int = typer.Option(_S.steps, min=1, help="Optimization steps per image."),
    size: Optional[int] = typer.Option(None, min=8, max=512, help="Image side in px (default: the run's)."),
    param: str = typer.Option(_S.param, help="fourier (decorrelated colour) | pixel"),
    transforms: str = typer.Option(_S.transforms, help="standard (pad, jitter, scale, rotate) | none"),
    lr: float = typer.Option(_S.lr, help="Adam learning rate."),
    seed: int = typer.Option(_S.seed, help="Seed of the parametrization and transforms."),
    chunk: int = typer.Option(_S.chunk, min=1, help="Channels optimized together per batch."),
    device: str = typer.Option(_R.device, help="auto | cpu | cuda | mps"),
    cuda_graph: str = typer.Option(
        "auto",
        help="auto (on CUDA) | on | off: capture each image batch's "
        "optimization step once as a CUDA graph and replay it (much less launch overhead).",
    ),
    filters: bool = typer.Option(True, help="Also draw the filters at every epoch."),
    force: bool = typer.Option(False, help="Redo renders whose settings match existing ones."),
    batchnorm: str = typer.Option(
        _R.batchnorm,
        help="BatchNorm statistics of each moment's network: probe (recomputed on the validation images, as "
        "analyze measures) | stored (the snapshot's own: 0 and 1 at the init) | auto (probe where there is "
        "BatchNorm and the validation images load).",
    ),
    model: Optional[str] = typer.Option(
        None,
        help="The run's model factory, when it is your code "
        "(package.module:factory): a run folder alone never imports code outside "
        "torchvision and featviz.",
    ),
    trust_run_code: bool = typer.Option(False, help="Import the model factory the run names, whatever it is."),
    epochs: Optional[str] = typer.Option(None, hidden=True, help="Old name of --moments (kept for one release)."),
) -> None:
    """Draw the learned filters and activation-maximization images, then build the gallery."""
    not_empty(layers=layers, channels=channels, model=model, epochs=epochs)
    moments = moments if epochs is None else epochs  # the old spelling, kept for one release
    r = Run.open(run)
    allow(r, model, trust_run_code)
    every = (channels or "").strip().lower() == "all"
    cfg = RenderConfig(
        moments=moments,
        layers=tuple(x.strip() for x in layers.split(",") if x.strip()) if layers else (),
        channels=() if every else int_list(channels, "--channels") or (),
        all_channels=every,
        settings=render_settings(
            size=size,
            steps=steps,
            param=param,
            transforms=transforms,
            lr=lr,
            seed=seed,
            chunk=chunk,
            cuda_graph=cuda_graph,
        ),
        device=device,
        filters=filters,
        force=force,
        batchnorm=batchnorm,
    )
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not sys.stderr.isatty() or not main_process(),
    )
    tasks: dict[str, int] = {}

    def progress(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(printable(what), total=total)  # labels may hold checkpoint names
        bar.update(tasks[what], completed=done)

    group = setup(device)  # under torchrun: this process's place among the renderers
    plan = plan_render(r, cfg, estimate=group.main)
    if plan.get("estimate_s", 0) > 60:
        console.print(
            f"about {plan['estimate_s'] / 60:.0f} min for {plan['images']:,} activation-maximization images "
            f"({len(plan['layers'])} layers x {len(plan['moments'])} "
            f"moment{'s' * (len(plan['moments']) != 1)}); fewer with --layers, --channels "
            "or --moments"
        )
    with bar:
        out = render_run(r, cfg, progress)
    if not group.main:  # rank 0 reports for all processes
        return
    on = f"{out['processes']} processes" if out["processes"] > 1 else out["device"]
    console.print(
        f"rendered {len(out['moments'])} moments ({', '.join(out['moments'])}) of {len(out['layers'])} "
        f"layers on {on}: "
        f"{out['am_images']} activation-maximization images (settings set {out['settings_set']}), "
        f"{out['filter_files']} filter files"
    )
    for msg in out["skipped"]:
        echo(f"featviz: warning: {msg}", err=True)
    console.print(f"gallery: {out['gallery']}  (featviz gallery {r.path} --open)")
    console.print(f"peak memory {_peak_mb():.0f} MB")


def _peak_mb() -> float:
    """Peak resident memory of this process (MB; ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
