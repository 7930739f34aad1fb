"""featviz gallery: (re)build RUN/gallery/index.html; optionally serve it on 127.0.0.1 or open it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from featviz.gallery.show import show
from featviz.run.store import Run

from .common import console, not_empty, reject, renamed


def gallery(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="A run folder."),
    serve: bool = typer.Option(False, help="Serve the run folder on http://127.0.0.1:PORT until Ctrl-C."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port for --serve (0 = any free port)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the gallery in the default browser."),
    watch: bool = typer.Option(
        False,
        help="With --serve: keep the page live while the run trains (new committed "
        "snapshots and curves appear without a reload).",
    ),
    settings_set: Optional[str] = typer.Option(
        None,
        help="Activation-maximization settings set to show (a folder "
        "name under RUN/renders/am/; default: the one featviz analyze measured, "
        "else the default settings' set).",
    ),
    renders: Optional[str] = typer.Option(None, hidden=True, help="Old name of --settings-set (kept for one release)."),
) -> None:
    """Rebuild the static HTML gallery from the run's files (no model is loaded)."""
    if not serve:
        reject(ctx, ["port"], "only with --serve")
    not_empty(settings_set=settings_set, renders=renders)
    settings_set = renamed(settings_set, renders, "--settings-set", "--renders")
    show(
        Run.open(run),
        serve_http=serve,
        watch=watch,
        port=port,
        open_browser=open_browser,
        settings_set=settings_set,
        say=console.print,
    )
