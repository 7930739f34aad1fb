"""The gallery server answers only this machine's browser, and only with regular files inside the run."""

from __future__ import annotations

import os
import socket
import stat
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from featviz.gallery.serve import make_server
from featviz.run.store import Run
from run_helpers import run_info

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs, unix sockets, device nodes: POSIX")

TIMEOUT = 5.0  # seconds: a server that blocks fails the test instead of hanging it
MAX_READ = 1 << 20  # bytes: a server streaming a device (/dev/zero) fails the test instead of hanging it
INDEX = b"<!doctype html><title>featviz gallery</title>"
SECRET = b"top-secret-bytes-outside-the-run"


class Served:
    """A run folder served on 127.0.0.1 by a server thread; ``stop()`` also waits for its request threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = make_server(Run(root, run_info()), 0)
        self.port = self.server.server_address[1]
        # a short poll interval keeps shutdown (and so each test) fast
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.stopped = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.server.shutdown()
            self.server.server_close()  # joins the request threads, so their output is all written

    def request(self, path: str, method: str = "GET", host: str | None = "default") -> tuple[int, bytes, bytes]:
        """(status, headers, body) of one raw HTTP/1.0 request (the reply cut at MAX_READ bytes);
        ``host=None`` sends no Host header."""
        if host == "default":
            host = f"127.0.0.1:{self.port}"
        head = f"{method} {path} HTTP/1.0\r\n" + (f"Host: {host}\r\n" if host is not None else "") + "\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as s:
            s.sendall(head.encode("latin-1"))
            data = b""
            while len(data) < MAX_READ and (chunk := s.recv(65536)):
                data += chunk
        headers, _, body = data.partition(b"\r\n\r\n")
        return int(headers.split(b" ", 2)[1]), headers, body


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the run holding a secret file."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.txt").write_bytes(SECRET)
    return d


@pytest.fixture
def served(tmp_path: Path, outside: Path) -> Iterator[Served]:
    root = tmp_path / "run"
    (root / "gallery").mkdir(parents=True)
    (root / "gallery" / "index.html").write_bytes(INDEX)
    (root / "renders").mkdir()
    (root / "renders" / "a.png").write_bytes(b"\x89PNG fake")
    (root / "public.txt").write_bytes(b"public")
    s = Served(root)
    yield s
    s.stop()


def test_serves_a_regular_file_and_head(served: Served) -> None:
    status, headers, body = served.request("/gallery/index.html")
    assert status == 200 and body == INDEX
    assert b"content-type: text/html" in headers.lower()
    status, headers, body = served.request("/gallery/index.html?t=123")  # the live page busts caches so
    assert status == 200 and body == INDEX
    status, headers, body = served.request("/gallery/index.html", method="HEAD")
    assert status == 200 and body == b""
    assert f"content-length: {len(INDEX)}".encode() in headers.lower()


def test_symlinks_out_of_the_run_are_404(served: Served, outside: Path, tmp_path: Path) -> None:
    (served.root / "etcdir").symlink_to(outside, target_is_directory=True)
    (served.root / "leak.txt").symlink_to(outside / "secret.txt")
    # a sibling whose name starts with the run's: inside by a string prefix test, outside in fact
    sibling = tmp_path / "run2"
    sibling.mkdir()
    (sibling / "secret.txt").write_bytes(SECRET)
    (served.root / "sib").symlink_to(sibling, target_is_directory=True)
    for path in ("/etcdir/secret.txt", "/leak.txt", "/sib/secret.txt", "/etcdir/", "/etcdir"):
        for method in ("GET", "HEAD"):
            status, headers, body = served.request(path, method=method)
            assert status == 404, (path, method)
            assert SECRET not in headers + body and b"secret.txt" not in body


def test_symlink_inside_the_run_is_served(served: Served) -> None:
    (served.root / "gallery" / "same.html").symlink_to(served.root / "gallery" / "index.html")
    (served.root / "rel.png").symlink_to(Path("renders") / "a.png")
    assert served.request("/gallery/same.html")[::2] == (200, INDEX)
    assert served.request("/rel.png")[::2] == (200, b"\x89PNG fake")


def test_fifo_is_404_without_blocking(served: Served) -> None:
    fifo = served.root / "gallery" / "pipe.html"
    os.mkfifo(fifo)
    try:
        assert served.request("/gallery/pipe.html")[0] == 404
        assert served.request("/gallery/index.html")[0] == 200  # and the server is not stuck
    finally:
        # should a reader be blocked on the FIFO, opening its other end releases it
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_unix_socket_file_is_404(served: Served) -> None:
    sock = socket.socket(socket.AF_UNIX)
    path = served.root / "s.sock"
    try:
        sock.bind(str(path))
    except OSError:  # e.g. a path too long for AF_UNIX: nothing to check
        pytest.skip("cannot bind a unix socket here")
    try:
        assert served.request("/s.sock")[0] == 404
    finally:
        sock.close()


def test_device_node_is_404(served: Served) -> None:
    # a symlink to a device (outside the run) and, where this user may make one, a device node inside
    (served.root / "zero").symlink_to("/dev/zero")
    assert served.request("/zero")[0] == 404
    try:
        os.mknod(served.root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, AttributeError):
        return
    assert served.request("/null")[0] == 404


def test_folders_are_404_and_never_listed(served: Served) -> None:
    for path in ("/", "/renders/", "/renders", "/gallery/", "/gallery"):
        status, _, body = served.request(path)
        assert status == 404, path
        assert b"a.png" not in body and b"index.html" not in body


def test_host_header_must_name_this_server(served: Served) -> None:
    port = served.port
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}", "127.0.0.1", "", None):
        status, headers, body = served.request("/gallery/index.html", host=host)
        assert status == 403, host
        assert b"content-type: text/plain" in headers.lower() and INDEX not in body
        assert len(body.splitlines()) == 1
    status, _, body = served.request("/gallery/index.html", method="HEAD", host=f"evil.example:{port}")
    assert status == 403 and body == b""
    assert served.request("/gallery/index.html", host=f"localhost:{port}")[::2] == (200, INDEX)
    assert served.request("/gallery/index.html", host=f"LocalHost:{port}")[0] == 200  # host names ignore case


def test_two_host_headers_are_403(served: Served) -> None:
    head = (
        f"GET /gallery/index.html HTTP/1.0\r\nHost: 127.0.0.1:{served.port}\r\nHost: evil.example:{served.port}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT) as s:
        s.sendall(head.encode())
        assert s.recv(64).startswith(b"HTTP/1.0 403")


def test_traversal_and_odd_paths_are_404(served: Served) -> None:
    for path in (
        "/../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/%2E%2E/outside/secret.txt",
        "/gallery/%2e%2e/%2e%2e/outside/secret.txt",
        "/%2e%2e%2foutside%2fsecret.txt",
        "/gallery/../public.txt",
        "/gallery/%2e%2e/public.txt",  # refused, not cleaned up
        "//" + str(served.root.parent / "outside" / "secret.txt").lstrip("/"),
        "/%2F" + str(served.root.parent / "outside" / "secret.txt").lstrip("/"),
        "/public.txt%00",
        "/%ff",
        "gallery/index.html",
    ):
        status, _, body = served.request(path)
        assert status == 404, path
        assert SECRET not in body


def test_only_get_and_head(served: Served) -> None:
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        assert served.request("/gallery/index.html", method=method)[0] == 501, method


def test_reset_mid_download_is_quiet(served: Served, capfd: pytest.CaptureFixture[str]) -> None:
    big = os.urandom(1 << 20) * 16  # 16 MB: more than loopback buffers hold, so the reset lands mid-reply
    (served.root / "big.bin").write_bytes(big)
    for _ in range(2):
        s = socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT)
        s.sendall(f"GET /big.bin HTTP/1.0\r\nHost: 127.0.0.1:{served.port}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.0 200")
        # linger on, zero timeout: close() sends RST instead of FIN
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    assert served.request("/gallery/index.html")[::2] == (200, INDEX)
    served.stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err and err == ""


def test_other_request_errors_are_one_line(served: Served, capfd: pytest.CaptureFixture[str]) -> None:
    try:
        raise RuntimeError("disk\nfailed")
    except RuntimeError:
        served.server.handle_error(None, ("127.0.0.1", 12345))
    try:
        raise ConnectionResetError("reset by peer")
    except ConnectionResetError:
        served.server.handle_error(None, ("127.0.0.1", 12345))
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and "RuntimeError" in err and "disk failed" in err


def test_port_80_accepts_bare_host_names() -> None:
    from featviz.gallery.serve import _allowed_hosts

    assert {"127.0.0.1", "localhost", "127.0.0.1:80", "localhost:80"} <= _allowed_hosts(80)
    assert "localhost" not in _allowed_hosts(8000) and "localhost:8000" in _allowed_hosts(8000)
