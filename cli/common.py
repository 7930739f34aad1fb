"""Shared CLI helpers: list parsing, refusing options that would not apply, and the training progress bar.
No featviz logic lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from featviz.config import ModelConfig
from featviz.errors import ConfigError, printable


class SafeConsole(Console):
    """rich's Console for featviz's messages: text is printed as it is (no markup, so a name holding
    '[' stays text) and terminal-safe (``errors.printable``: names come from files and checkpoints)."""

    def print(self, *objects: object, **kwargs: object) -> None:  # noqa: A003 - rich's name
        super().print(*(printable(o) if isinstance(o, str) else o for o in objects), **kwargs)


console = SafeConsole(stderr=True, markup=False)


def echo(text: str, err: bool = False) -> None:
    """``typer.echo`` of terminal-safe text (``errors.printable``)."""
    typer.echo(printable(str(text)), err=err)


SMALL_CNN = ("widths", "kernels", "strides", "pools", "batchnorm")  # the options that describe featviz's own CNN


def int_list(text: str | None, option: str) -> tuple[int, ...] | None:
    """'16,32,64' -> (16, 32, 64); a bad list is a usage error naming the option."""
    if text is None:
        return None
    if not all(x.strip() for x in text.split(",")):  # "" or "4,,8": an empty entry is a typo, not a default
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=option)
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=option) from None


def bool_list(text: str | None, option: str) -> tuple[bool, ...] | None:
    """'1,1,0' or 'y,y,n' -> (True, True, False)."""
    if text is None:
        return None
    table = {"1": True, "y": True, "yes": True, "true": True, "0": False, "n": False, "no": False, "false": False}
    try:
        return tuple(table[x.strip().lower()] for x in text.split(","))
    except KeyError:
        raise typer.BadParameter(f"expected comma-separated 1/0 values, got {text!r}", param_hint=option) from None


def model_config(
    widths: str | None, kernels: str | None, strides: str | None, pools: str | None, batchnorm: bool, **fixed: int
) -> ModelConfig:
    """ModelConfig from the comma-list options; per-depth defaults stretch to the number of widths."""
    d = ModelConfig()
    w = int_list(widths, "--widths") or d.widths
    n = len(w)

    def stretch(default: tuple) -> tuple:  # repeat the last entry, or cut
        return tuple(default[:n]) + (default[-1],) * max(0, n - len(default))

    return ModelConfig(
        widths=w,
        kernels=int_list(kernels, "--kernels") or stretch(d.kernels),
        strides=int_list(strides, "--strides") or (1,) * n,
        pools=bool_list(pools, "--pools") or stretch(d.pools),
        batchnorm=batchnorm,
        **fixed,
    )


def not_empty(**options: object) -> None:
    """An option given as an empty string (``--name ""``, ``--layers " "``) is a typo: a one-line error,
    rather than the default it would otherwise fall back to."""
    for name, value in options.items():
        if isinstance(value, (str, Path)) and not str(value).strip():
            raise ConfigError(f"--{name.replace('_', '-')} is empty")


def renamed(value: str | None, old: str | None, flag: str, old_flag: str) -> str | None:
    """An option given by its name or by its old spelling (a hidden alias, kept for one release); both
    at once is a one-line error."""
    if old is not None and value is not None:
        raise ConfigError(f"{old_flag} is the old name of {flag}: give only {flag}")
    return value if old is None else old


def given(ctx: typer.Context, names: Iterable[str]) -> list[str]:
    """The options among ``names`` (parameter names) that the user set, as flags: '--n-train'."""
    # by the source's name: click's ParameterSource enum, which newer typer versions vendor privately
    own = ("COMMANDLINE", "ENVIRONMENT")
    return [f"--{n.replace('_', '-')}" for n in names if getattr(ctx.get_parameter_source(n), "name", None) in own]


def reject(ctx: typer.Context, names: Iterable[str], why: str) -> None:
    """A one-line usage error when the user set any of the options ``names``: an option that would be
    silently ignored is refused instead: '--widths, --pools: WHY'."""
    flags = given(ctx, names)
    if flags:
        raise ConfigError(f"{', '.join(flags)}: {why}")


class TrainBar:
    """A rich progress bar per epoch with loss and accuracy; a line per finished epoch."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.3f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not sys.stderr.isatty(),
        )
        self.task = None
        self.epochs = 0

    def start(self, run, first_epoch: int, epochs: int, batches: int) -> None:
        self.epochs = epochs
        console.print(f"run {run.path}: training epochs {first_epoch}..{epochs}, {batches} batches each")
        self.progress.start()
        self.task = self.progress.add_task("train", total=batches, epoch=first_epoch, epochs=epochs, loss=0.0, acc=0.0)

    def step(self, info) -> None:
        self.progress.update(self.task, completed=info.batch, epoch=info.epoch, loss=info.loss, acc=info.acc)

    def epoch(self, rec: dict) -> None:
        self.progress.console.print(
            f"epoch {rec['epoch']:>3}/{self.epochs}  train loss {rec['train_loss']:.4f} acc {rec['train_acc']:.4f}  "
            f"val loss {rec['val_loss']:.4f} acc {rec['val_acc']:.4f}  {rec['wall_s']:.1f}s"
        )
        self.progress.reset(self.task)

    def stop(self) -> None:
        self.progress.stop()
