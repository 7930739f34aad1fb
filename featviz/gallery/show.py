"""What ``featviz gallery`` does with a run: build its page, then open it, serve it, or keep it live.

Building reads the run's files only (``featviz.gallery.build``). Serving binds 127.0.0.1
(``featviz.gallery.serve``). Watching a run that a training process is writing keeps the page live
(``featviz.gallery.live``); any other run is served as it is, and nothing is written to it.
"""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Callable

from featviz.errors import ConfigError
from featviz.gallery.build import build_gallery
from featviz.gallery.live import serve_live, training
from featviz.gallery.serve import serve
from featviz.run.store import Run


def show(
    run: Run,
    *,
    serve_http: bool = False,
    watch: bool = False,
    port: int = 8000,
    open_browser: bool = False,
    settings_set: str | None = None,
    say: Callable[[str], None] = print,
) -> Path:
    """Build RUN/gallery/index.html (``settings_set``: see ``build.gallery_settings_set``) and, with
    ``open_browser``, open it; with ``serve_http``, serve the run until Ctrl-C; with ``watch`` as well, keep
    the page live while a training process writes the run (a page already built is then served as it
    is). ``say`` hears one line per step. Returns the page's path."""
    if watch and not serve_http:
        raise ConfigError("--watch needs --serve (the live page reads live.json over http)")
    index = run.path / "gallery" / "index.html"
    if watch and training(run):
        serve_live(run, port, open_browser, on_ready=lambda url: say(f"serving {url} live  (Ctrl-C stops)"))
        return index
    if watch:  # nothing will change: the run is served as it is, and --watch writes nothing to it
        say(f"{run.path} is not being trained; serving it as it is")
    if not (watch and index.is_file()):
        index = Path(build_gallery(run, settings_set))
        say(f"gallery: {index}")
    if serve_http:
        serve(run, port, open_browser, on_ready=lambda url: say(f"serving {url}  (Ctrl-C stops)"))
    elif open_browser:
        webbrowser.open(index.resolve().as_uri())
    return index
