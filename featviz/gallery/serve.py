"""Serve a run folder read-only on 127.0.0.1 so the gallery can be opened over http."""

from __future__ import annotations

import functools
import http.server
import threading
from typing import Callable

from featviz.errors import RunError
from featviz.store import Run


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


def make_server(run: Run, port: int = 0) -> http.server.ThreadingHTTPServer:
    """An HTTP server for the run folder, bound to loopback only (port 0 = any free port)."""
    handler = functools.partial(_Quiet, directory=str(run.path))
    try:
        return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as e:
        raise RunError(f"cannot serve on 127.0.0.1:{port}: {e.strerror or e}") from None


def serve(run: Run, port: int = 8000, open_browser: bool = False,
          on_ready: Callable[[str], None] | None = None, stop: threading.Event | None = None) -> None:
    """Serve until Ctrl-C (or until ``stop`` is set); the URL points at gallery/index.html."""
    server = make_server(run, port)
    url = f"http://127.0.0.1:{server.server_address[1]}/gallery/index.html"
    if on_ready:
        on_ready(url)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        (stop or threading.Event()).wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
