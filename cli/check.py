"""featviz check: featviz.run.check.check_run, one line per problem; exit code 1 when there is any."""

from __future__ import annotations

from pathlib import Path

import typer

from featviz.run.check import check_run

from .common import echo


def check(run: Path = typer.Argument(..., help="A run folder.")) -> int:
    """Verify a run against its manifest (sha256 of every file, snapshots load and are finite, metrics
    parse); print each problem and exit 1 if there is any."""
    rep = check_run(run)
    for note in rep.notes:
        echo(f"note: {note}")
    for problem in rep.problems:
        echo(f"problem: {problem}", err=True)
    if rep.ok:
        echo(f"ok: {rep.path}: {rep.epochs_done} epochs committed, {rep.files_checked} files verified")
        return 0
    echo(f"featviz: error: {len(rep.problems)} problem(s) in {rep.path}", err=True)
    return 1
