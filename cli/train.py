"""featviz train: options -> configs -> featviz.pipeline.train_run (or resume_run)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from featviz.config import DataConfig, ModelConfig, TrainConfig
from featviz.data import GENERATED
from featviz.data.sources import DATA_HELP
from featviz.distributed import launched, main_process
from featviz.errors import ConfigError
from featviz.livetrain import LiveTraining
from featviz.pipeline import resume_run, train_run
from featviz.zoo import ModelSpec, model_flag, normalize_spec, parse_kwargs

from .common import SMALL_CNN, TrainBar, console, model_config, not_empty, reject

_D, _M, _T = DataConfig(), ModelConfig(), TrainConfig()
SHAPES_ONLY = ("n_train", "n_val")
RESUME_MAY_SET = {"resume", "device", "model", "trust_run_code", "live", "port", "live_render"}


def train(
    ctx: typer.Context,
    data: str = typer.Option(_D.name, help=DATA_HELP),
    data_dir: Path = typer.Option(Path(_D.data_dir), help="Folder holding torchvision data sets."),
    download: bool = typer.Option(False, help="Let torchvision download a missing data set into --data-dir."),
    size: Optional[int] = typer.Option(None, min=8, max=512, help="Image side in px (generated sets: 32; 64 works)."),
    n_train: int = typer.Option(_D.n_train, min=10, help="pairs and shapes only: training images to generate."),
    n_val: int = typer.Option(_D.n_val, min=10, help="pairs and shapes only: validation images to generate."),
    labels: str = typer.Option(
        _D.labels,
        help="true | shuffled: train on the labels permuted once (seeded by the data seed; validation labels "
        "kept), a control that can learn nothing of the task.",
    ),
    epochs: int = typer.Option(_T.epochs, min=1, help="Training epochs (snapshots: epoch 0 = init .. N)."),
    batch_size: int = typer.Option(_T.batch_size, min=1, help="Images per optimizer step."),
    lr: float = typer.Option(_T.lr, help="Peak learning rate (warm-up, then cosine decay to 1% of it)."),
    optimizer: str = typer.Option(_T.optimizer, help="sgd | adam | adamw"),
    weight_decay: float = typer.Option(_T.weight_decay, min=0, help="Weight decay."),
    seed: int = typer.Option(_T.seed, help="Seed for weight init and batch order."),
    device: str = typer.Option(_T.device, help="auto | cpu | cuda | mps"),
    out: Path = typer.Option(Path("outputs"), help="Folder that holds runs."),
    name: Optional[str] = typer.Option(None, help="Run name (default: DATA-DATE-TIME)."),
    force: bool = typer.Option(False, help="Replace an existing run of the same name."),
    resume: Optional[Path] = typer.Option(None, help="Continue this run folder from its last complete epoch."),
    snapshots: str = typer.Option(
        _T.snapshots,
        help="Snapshot schedule: log (steps 1, 2, 4, ... of the first epoch, "
        "then every epoch end) | epoch | every:K | steps:1,5,9.",
    ),
    snapshot_every_steps: int = typer.Option(0, min=0, help="Same as --snapshots every:K (kept for earlier scripts)."),
    widths: Optional[str] = typer.Option(None, help="Conv widths per depth, e.g. 16,32,64,128."),
    kernels: Optional[str] = typer.Option(None, help="Kernel side per depth, e.g. 5,3,3,3."),
    strides: Optional[str] = typer.Option(None, help="Conv stride per depth, e.g. 1,1,1,1."),
    pools: Optional[str] = typer.Option(None, help="2x2 max-pool after each depth, e.g. 1,1,1,0."),
    batchnorm: bool = typer.Option(_M.batchnorm, help="BatchNorm after each conv."),
    model: Optional[str] = typer.Option(
        None,
        help="Train another architecture instead of the small CNN: "
        "torchvision:NAME (e.g. torchvision:resnet18, random init) or "
        "package.module:factory (your code).",
    ),
    model_kwargs: Optional[str] = typer.Option(
        None, help="JSON keyword arguments for --model's factory, e.g. '{\"width_mult\": 0.5}'."
    ),
    pretrained: bool = typer.Option(
        False, help="With --model torchvision:NAME: start from torchvision's weights (downloads them)."
    ),
    trust_run_code: bool = typer.Option(
        False, help="With --resume: import the run's model factory even if it is not torchvision's or featviz's."
    ),
    channels_last: bool = typer.Option(_T.channels_last, help="NHWC memory format (faster on CPU)."),
    live: bool = typer.Option(
        False, help="Serve the gallery on 127.0.0.1 while training; it updates as snapshots commit."
    ),
    port: int = typer.Option(8000, min=0, max=65535, help="Port for --live (0 = any free port)."),
    live_render: bool = typer.Option(
        False,
        help="With --live: render activation maximization at the moments as they "
        "commit, in a background process at the lowest CPU priority.",
    ),
) -> None:
    """Train a small CNN (or --model ARCH) and snapshot every conv filter at every epoch (epoch 0 = the random init)."""
    not_empty(name=name, model=model, model_kwargs=model_kwargs, out=out)
    if resume is not None:
        reject(
            ctx,
            [p.name for p in ctx.command.params if p.name not in RESUME_MAY_SET],
            "not with --resume, which continues with the run's recorded configuration (only --device may change)",
        )
    else:
        reject(ctx, ["trust_run_code"], "only with --resume")
    if model is not None:
        reject(ctx, SMALL_CNN, "only for the small CNN, not with --model")
    else:
        reject(ctx, ["model_kwargs", "pretrained"], "only with --model")
    if not live:
        reject(ctx, ["port"], "only with --live")
    if data not in GENERATED:
        reject(ctx, SHAPES_ONLY, "only for the generated data sets (--data pairs or shapes)")
    bar = TrainBar()
    if live_render and not live:
        raise ConfigError("--live-render needs --live")
    if live and launched():
        raise ConfigError(
            "--live serves from one process; under torchrun, serve the run with featviz gallery RUN --serve --watch"
        )
    watcher = (
        LiveTraining(bar, port, on_ready=lambda url: console.print(f"live gallery: {url}"), render=live_render)
        if live
        else None
    )
    try:
        if resume is not None:
            run = resume_run(
                resume,
                device=None if device == "auto" else device,
                progress=watcher or bar,
                model=model,
                trust_run_code=trust_run_code,
            )
        else:
            data_cfg = DataConfig(
                name=data,
                data_dir=str(data_dir),
                download=download,
                size=size,
                n_train=n_train,
                n_val=n_val,
                labels=labels,
            )
            model_cfg = model_config(widths, kernels, strides, pools, batchnorm)
            train_cfg = TrainConfig(
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                optimizer=optimizer,
                weight_decay=weight_decay,
                seed=seed,
                device=device,
                snapshots=snapshots,
                snapshot_every_steps=snapshot_every_steps,
                channels_last=channels_last,
            )
            spec = (
                ModelSpec(normalize_spec(model), parse_kwargs(model_kwargs), pretrained=pretrained) if model else None
            )
            run = train_run(
                data_cfg,
                model_cfg,
                train_cfg,
                out_dir=out,
                name=name,
                force=force,
                progress=watcher or bar,
                model_spec=spec,
            )
    finally:
        bar.stop()
        if watcher:
            if live_render:
                console.print("finishing the background activation-maximization render...")
            watcher.stop()
    if not main_process():  # under torchrun, rank 0 reports for every process
        return
    last = run.metrics()[-1]
    named = model_flag(run.info.model_config.get("factory"))
    console.print(
        f"done: {run.path}  epochs {run.epochs_done}/{run.epochs_planned}  "
        f"val acc {last['val_acc']:.4f}  (next: featviz render {run.path}{named})"
    )
