"""Serve a run folder read-only on 127.0.0.1 so the gallery can be opened over http.

Contract: only GET and HEAD are answered, and only when the Host header names this server
(``127.0.0.1:PORT`` or ``localhost:PORT``; the bare names too when PORT is 80), so a page on another
site cannot reach the run by DNS rebinding: any other Host, or none, gets 403. A request is answered
with a regular file that lies inside the run folder after resolving symlinks; everything else
(folders, symlinks leading out of the run, FIFOs, devices, sockets, ``..``) is 404 and nothing is
ever listed. Requests are not logged; a client that drops the connection is not an error, and any
other failure of a request is one line on stderr.
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import http.server
import os
import sys
import threading
import urllib.parse
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO

from featviz.errors import RunError
from featviz.run.fileio import open_file
from featviz.run.store import Run

# A client closing or resetting the connection mid-reply (a reload, a closed tab) is routine.
_CLIENT_GONE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError)


class _Server(http.server.ThreadingHTTPServer):
    """A threading HTTP server whose per-request failures never print a traceback."""

    def handle_error(self, request: object, client_address: tuple) -> None:
        """Quiet for a vanished client; any other exception is one line on stderr."""
        err = sys.exc_info()[1]
        if err is None or isinstance(err, _CLIENT_GONE):
            return
        detail = " ".join(str(err).split())  # one line even if the message has several
        print(
            f"featviz serve: request from {client_address[0]} failed: {type(err).__name__}: {detail}", file=sys.stderr
        )


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Answers GET/HEAD with the run's regular files only (see the module docstring)."""

    # Errors are short plain text: there is no page to render them in.
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain; charset=utf-8"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        """Never list a folder: 404 (send_head does not call this; the override guards other callers)."""
        self.send_error(HTTPStatus.NOT_FOUND, "not found")

    def send_head(self) -> BinaryIO | None:
        """Send the status and headers; the open file for GET to copy, or None when nothing follows."""
        if not self._host_allowed():
            self.send_error(HTTPStatus.FORBIDDEN, "host not allowed")
            return None
        path = _resolve_inside(self.directory, self.path)
        allowed = getattr(self.server, "allowed", None)  # a comparison: only its folder and the runs it names
        if path is not None and allowed and not any(os.path.commonpath([a, path]) == a for a in allowed):
            path = None
        f = _open_regular(path) if path is not None else None
        if f is None:
            self.send_error(HTTPStatus.NOT_FOUND, "not found")
            return None
        try:
            fs = os.fstat(f.fileno())
            if self._not_modified(fs.st_mtime):
                self.send_response(HTTPStatus.NOT_MODIFIED)
                self.end_headers()
                f.close()
                return None
            self.send_response(HTTPStatus.OK)
            # the type follows the name asked for, as before (an inside symlink may be named otherwise)
            self.send_header("Content-type", self.guess_type(urllib.parse.unquote(_target(self.path))))
            self.send_header("Content-Length", str(fs.st_size))
            self.send_header("Last-Modified", self.date_time_string(fs.st_mtime))
            self.end_headers()
            return f
        except BaseException:
            f.close()
            raise

    def _host_allowed(self) -> bool:
        """True iff exactly one Host header names this server; anything else may be DNS rebinding."""
        hosts = self.headers.get_all("Host") or []
        return len(hosts) == 1 and hosts[0].strip().lower() in _allowed_hosts(self.server.server_address[1])

    def _not_modified(self, mtime: float) -> bool:
        """True if the client's If-Modified-Since copy is current (same rule as the stdlib server)."""
        if "If-Modified-Since" not in self.headers or "If-None-Match" in self.headers:
            return False
        try:
            ims = email.utils.parsedate_to_datetime(self.headers["If-Modified-Since"])
        except (TypeError, IndexError, OverflowError, ValueError):
            return False  # ill-formed: ignore it
        if ims.tzinfo is None:
            ims = ims.replace(tzinfo=datetime.timezone.utc)
        if ims.tzinfo is not datetime.timezone.utc:
            return False
        modified = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).replace(microsecond=0)
        return modified <= ims


def _allowed_hosts(port: int) -> frozenset[str]:
    """The Host header values that name a server on 127.0.0.1:``port``."""
    names = ("127.0.0.1", "localhost")
    hosts = {f"{name}:{port}" for name in names}
    if port == 80:  # clients leave out the default port
        hosts.update(names)
    return frozenset(hosts)


def _target(request_path: str) -> str:
    """The request target without its query and fragment (the page adds ``?t=`` to defeat caches)."""
    return request_path.split("?", 1)[0].split("#", 1)[0]


def _resolve_inside(root: str, request_path: str) -> str | None:
    """The real path ``request_path`` names under ``root``, or None if it is not strictly inside ``root``.

    The query and fragment are ignored; a ``..`` segment (also percent-encoded), a NUL or a
    backslash, or a request target that is not an absolute path is None rather than being cleaned up.
    """
    target = _target(request_path)
    if not target.startswith("/"):
        return None
    try:
        target = urllib.parse.unquote(target, errors="strict")
    except UnicodeDecodeError:
        return None
    parts = [p for p in target.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." or "\0" in p or "\\" in p for p in parts):
        return None
    real_root = os.path.realpath(root)
    try:
        real = os.path.realpath(os.path.join(real_root, *parts), strict=True)
    except (OSError, ValueError):
        return None
    # commonpath, not a prefix test: /run2 is not inside /run
    if real == real_root or os.path.commonpath([real_root, real]) != real_root:
        return None
    return real


def _open_regular(path: str) -> BinaryIO | None:
    """``path`` opened for reading, or None unless it is a regular file (``fileio.open_file``: never
    blocks on a FIFO, checks the open file's type); a symlink swapped in at the last moment is refused."""
    if os.path.islink(path):
        return None
    try:
        return open_file(Path(path))
    except RunError:
        return None


def make_server(run: Run | Path, port: int = 0, allowed: list[Path] | None = None) -> http.server.ThreadingHTTPServer:
    """An HTTP server for the run folder (or any folder), bound to loopback only (port 0 = any free port);
    with ``allowed``, only files inside those folders (below the root) are answered."""
    root = run.path if isinstance(run, Run) else Path(run)
    handler = functools.partial(_Handler, directory=str(root))
    try:
        server = _Server(("127.0.0.1", port), handler)
    except OSError as e:
        raise RunError(f"cannot serve on 127.0.0.1:{port}: {e.strerror or e}") from None
    server.allowed = tuple(os.path.realpath(a) for a in allowed) if allowed else ()  # type: ignore[attr-defined]
    return server


def serve(
    run: Run | Path,
    port: int = 8000,
    open_browser: bool = False,
    on_ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    page: str = "gallery/index.html",
    allowed: list[Path] | None = None,
) -> None:
    """Serve until Ctrl-C (or until ``stop`` is set); the URL points at ``page`` (the run's gallery)."""
    server = make_server(run, port, allowed)
    url = f"http://127.0.0.1:{server.server_address[1]}/{page}"
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
