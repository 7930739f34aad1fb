"""featviz gallery: (re)build RUN/gallery/index.html; optionally serve it on 127.0.0.1 or open it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import console, not_empty, reject
from featviz.errors import ConfigError
from featviz.gallery.build import build_gallery
from featviz.gallery.live import serve_live, training
from featviz.gallery.serve import serve as serve_run
from featviz.run.store import Run


def gallery(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="A run folder."),
    serve: bool = typer.Option(False, help="Serve the run folder on http://127.0.0.1:PORT until Ctrl-C."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port for --serve (0 = any free port)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the gallery in the default browser."),
    watch: bool = typer.Option(False, help="With --serve: keep the page live while the run trains (new committed "
                               "snapshots and curves appear without a reload)."),
    renders: Optional[str] = typer.Option(None, help="Render settings set to show (a folder name under RUN/renders/am/; "
                                "default: the one featviz analyze measured, else the default settings' set)."),
) -> None:
    """Rebuild the static HTML gallery from the run's files (no model is loaded)."""
    if not serve:
        reject(ctx, ["port"], "only with --serve")
    not_empty(renders=renders)
    r = Run.open(run)
    if watch and not serve:
        raise ConfigError("--watch needs --serve (the live page reads live.json over http)")
    if watch and training(r):
        serve_live(r, port, open_browser, on_ready=lambda url: console.print(f"serving {url} live  (Ctrl-C stops)"))
        return
    if watch:  # nothing will change: the run is served as it is, and --watch writes nothing to it
        console.print(f"{r.path} is not being trained; serving it as it is")
    index = r.path / "gallery" / "index.html"
    if not (watch and index.is_file()):
        index = Path(build_gallery(r, renders))
        console.print(f"gallery: {index}")
    if serve:
        serve_run(r, port, open_browser, on_ready=lambda url: console.print(f"serving {url}  (Ctrl-C stops)"))
    elif open_browser:
        import webbrowser

        webbrowser.open(index.resolve().as_uri())
