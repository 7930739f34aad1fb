"""featviz runs: the runs under an output folder, one line each."""

from __future__ import annotations

from pathlib import Path

import typer

from featviz.errors import RunError
from featviz.run.store import list_runs

from .common import echo


def runs(out: Path = typer.Option(Path("outputs"), help="Folder that holds runs.")) -> None:
    """List runs: name, data set, epochs done, final validation accuracy, complete or interrupted."""
    found = list_runs(out)
    if not found:
        echo(f"no runs under {out}")
        return
    echo(f"{'name':<32} {'data':<14} {'epochs':>7} {'val_acc':>8}  status")
    for run in found:
        data = str(run.info.configs["data"].get("name", "?"))[:14]
        try:
            recs = run.metrics(strict=False)
            acc = recs[-1].get("val_acc") if recs else None  # recorded and imported runs may not have one
            acc = f"{acc:.4f}" if isinstance(acc, (int, float)) else "-"
            status = "complete" if run.complete else "interrupted"
            done = f"{max(run.epochs_done, 0)}/{run.epochs_planned}"
        except RunError:  # one damaged run does not stop the list
            acc, done, status = "-", "?", "damaged (featviz check RUN)"
        echo(f"{run.name:<32} {data:<14} {done:>7} {acc:>8}  {status}")
