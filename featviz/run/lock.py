"""One writer per run: an exclusive, advisory lock per role, held for as long as a command writes.

Two roles, because two kinds of writers may work on one run at the same time without touching each
other's files:

* ``train``: train, resume, import and ``featviz.record`` (snapshots, metrics, manifest, run.json);
* ``outputs``: render and analyze (renders/, analysis/, the gallery page).

Replacing a run (``--force``) takes both. A second writer of the same role is refused in one line that
names the holder (its process id and command, which the holder writes into the lock file). Readers
take no lock and never remove another process's files.

The lock is ``fcntl.flock`` on ``RUN/.lock-<role>`` (Python's standard library, no extra dependency):
the kernel drops it when the holder exits, however it ends, so a killed process never leaves a stale
lock behind. Two opens of the file conflict even within one process, which is what refuses a nested
``featviz.record`` on the same run. The lock files stay in the run folder (a replaced run keeps them,
so a lock held across the replacement stays meaningful); where ``fcntl`` is missing (Windows), runs
are not locked.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from pathlib import Path
from typing import Iterator

from featviz.errors import RunError, one_line, printable

ROLES = ("train", "outputs")
FILES = tuple(f".lock-{role}" for role in ROLES)  # what a run folder may hold besides featviz's data


def _command() -> str:
    argv = [os.path.basename(sys.argv[0] or "python"), *sys.argv[1:3]]
    return " ".join(a.replace("\n", " ")[:40] for a in argv)


class RunLock:
    """An exclusive lock on one role of the run folder ``path``; ``release()`` (or process exit) ends it."""

    def __init__(self, path: Path, role: str, what: str | None = None) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown lock role {role!r}")
        self.path, self.role = Path(path), role
        self.fd: int | None = None
        self._take(what or _command())

    def _take(self, what: str) -> None:
        try:
            import fcntl
        except ImportError:
            return
        file = self.path / f".lock-{self.role}"
        fd = open_lock_file(file)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                raise RunError(
                    f"run {self.path} is being written by {printable(one_line(holder, 160))}; wait for "
                    "it to finish (or stop it) and try again"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} ({what})\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def release(self) -> None:
        """Unlock (idempotent). The file stays: removing it would let a waiting process lock a stale inode."""
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __del__(self) -> None:  # a Run dropped without release() does not keep its run locked
        self.release()

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def held(path: Path, role: str) -> bool:
    """Whether some process holds ``role``'s lock on the run at ``path`` (e.g. a run being trained).
    Only reads: a run whose lock file does not exist is not held, and none is created."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = os.open(Path(path) / f".lock-{role}", os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock just taken
    return False


def open_lock_file(file: Path) -> int:
    """A descriptor of the lock file ``file``, created if needed; never a symlink or special file (a FIFO
    planted there would block the open, a link would lock something else): a RunError naming it."""
    try:
        fd = os.open(file, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as e:
        raise RunError(f"cannot lock {file.parent} for writing ({file}: {e.strerror or e})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunError(f"{file} is not a regular file; cannot lock it")
    return fd


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` for the block, waiting for it if another process has
    it, so that two processes updating the same index (a live gallery and a background render) never
    lose each other's lines. Where ``fcntl`` is missing (Windows), the block runs unlocked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = open_lock_file(Path(path))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock
