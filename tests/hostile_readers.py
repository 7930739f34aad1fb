"""The reader harness of test_hostile_runs.py: featviz's readers in a forked child, under a timer and a memory cap."""

from __future__ import annotations

import faulthandler
import functools
import io
import json
import os
import re
import resource
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hostile_damages import World, _tree, _writes_outside

READER_TIMEOUT_S = 5.0  # the tiny run's slowest reader (a gallery build) takes ~0.3 s; 5 s is a hang
LATER_TIMEOUT_S = 2.0  # once one reader of an example hung, the others (often stuck on the same FIFO) get less
KILL_GRACE_S = 2.0  # past the child's own timer: a reader stuck where no signal reaches Python (Rust's open())
PROCESS_RECURSION_LIMIT = 1000  # CPython's default, which the featviz command runs with
MEMORY_HEADROOM = 1536 << 20  # bytes of address space a child may add; the tiny run needs a few MB
LIBRARY_READERS = (
    "Run.open",
    "Run.manifest",
    "Run.epochs_done",
    "Run.metrics",
    "Run.snapshot_points",
    "Run.render_index",
    "Run.load_snapshot(0)",
    "check_run",
    "list_runs",
)
CLI_READERS = ("featviz runs", "featviz check", "featviz gallery")
ALL_READERS = LIBRARY_READERS + CLI_READERS
# cli.main's line for an exception it did not expect: the type, then the message before its advice
UNEXPECTED_LINE = re.compile(
    r"^featviz: error: unexpected (\w+): (.*?)(?: \(a damaged or edited run file.*)?$", re.MULTILINE
)


# ----------------------------------------------------------------------------- the child: running readers
class ReaderTimeout(BaseException):
    """Raised by the SIGALRM timer; a BaseException so that no ``except Exception`` in featviz hides it.
    ``where``: the deepest featviz function that every stack sample taken at the timeout shares."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


HANG_SAMPLES: list[list[str]] = []  # featviz functions on the stack (outermost first) at each alarm


def _on_alarm(signum: int, frame: Any) -> None:
    """Sample the stack three times, 0.1 s apart, then raise: a reader looping over 2**63 epochs is
    caught at whichever line it happens to run, but the loop's own function is in every sample."""
    stack = []
    while frame is not None:
        code = frame.f_code
        if where := _project_frame(code.co_filename, code.co_name):
            stack.append(where)
        frame = frame.f_back
    HANG_SAMPLES.append(stack[::-1])
    if len(HANG_SAMPLES) < 3:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        return
    shared = ""
    for functions in zip(*HANG_SAMPLES):
        if len(set(functions)) > 1:
            break
        shared = functions[0]
    raise ReaderTimeout(shared)


def _limit_memory() -> None:
    """Cap the child's address space at its current size plus MEMORY_HEADROOM, so reading /dev/zero
    ends in a MemoryError here instead of eating the shared machine's memory."""
    size = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmSize:")
    )
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + MEMORY_HEADROOM, hard))


def _fresh_recursion_limit() -> None:
    """Give the readers the stack headroom of a fresh ``featviz`` process: Hypothesis raises the
    recursion limit while a test runs, which would let json parse nesting a real process cannot."""
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    sys.setrecursionlimit(depth + PROCESS_RECURSION_LIMIT)


@functools.cache
def _project_dirs() -> tuple[str, ...]:
    import featviz
    import featviz.cli as cli

    return tuple(str(Path(m.__file__).parent) + os.sep for m in (featviz, cli))


def _project_frame(filename: str, func: str, line: int | None = None) -> str | None:
    """'featviz/run/fileio.py:187 read_jsonl' (or without the line) for featviz's or the CLI's code, else None."""
    for folder in _project_dirs():
        if filename.startswith(folder):
            return f"{Path(folder).name}/{filename[len(folder) :]}{'' if line is None else f':{line}'} {func}"
    return None


def _where(err: BaseException) -> str:
    """The innermost featviz (or CLI) frame of an exception: where the reader failed, or hung."""
    where, tb = "", err.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        where = _project_frame(code.co_filename, code.co_name, tb.tb_lineno) or where
        tb = tb.tb_next
    return where


FAULTHANDLER_FRAME = re.compile(r'File "(.+)", line \d+ in (\S+)')


def _stuck_where(dump: str) -> str:
    """The innermost project function of a faulthandler dump (most recent call first)."""
    for m in FAULTHANDLER_FRAME.finditer(dump):
        if where := _project_frame(m.group(1), m.group(2)):
            return where
    return ""


class _Terminal(io.TextIOWrapper):
    """A UTF-8 text stream that says it is a terminal: click strips escape sequences only from output
    that is not, and the property is about what reaches a user's terminal."""

    def isatty(self) -> bool:
        return True


def _short(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


def _library_call(reader: str, world: World) -> Callable[[], Any]:
    from featviz.run.check import check_run
    from featviz.run.store import Run, list_runs

    run = world.run
    return {
        "Run.open": lambda: Run.open(run),
        "Run.manifest": lambda: Run.open(run).manifest(),
        "Run.epochs_done": lambda: Run.open(run).epochs_done,
        "Run.metrics": lambda: Run.open(run).metrics(strict=False),
        "Run.snapshot_points": lambda: Run.open(run).snapshot_points(),
        "Run.render_index": lambda: Run.open(run).render_index(),
        "Run.load_snapshot(0)": lambda: Run.open(run).load_snapshot(0),
        "check_run": lambda: check_run(run),
        "list_runs": lambda: list_runs(world.out),
    }[reader]


def _cli_argv(reader: str, world: World) -> list[str]:
    return {
        "featviz runs": ["runs", "--out", str(world.out)],
        "featviz check": ["check", str(world.run)],
        "featviz gallery": ["gallery", str(world.run)],
    }[reader]


def _redirect(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _captured_main(argv: list[str], out_path: Path, err_path: Path) -> int:
    """``cli.main.main(argv)`` with stdout and stderr going to files through streams that say they
    are a terminal; afterwards both point at the child's own log again."""
    from featviz.cli.main import main

    for fd, path in ((1, out_path), (2, err_path)):
        new = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(new, fd)
        os.close(new)
    sys.stdout = _Terminal(open(1, "wb", closefd=False), encoding="utf-8", errors="strict", line_buffering=True)
    sys.stderr = _Terminal(open(2, "wb", closefd=False), encoding="utf-8", errors="strict", line_buffering=True)
    try:
        return main(argv)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001 - a half-written surrogate: the bytes before it are what counts
                pass
        _redirect(out_path.with_name("library-output"))
        sys.stdout = sys.stderr = open(1, "w", closefd=False)


def _run_cli(reader: str, world: World, res: dict, timeout: float) -> None:
    """The command as a user's terminal would show it; an "unexpected" error is run once more with
    FEATVIZ_TRACEBACK=1 (the CLI then re-raises) to learn where it happened."""
    out_path, err_path = world.capture / "stdout", world.capture / "stderr"
    try:
        res["code"] = _captured_main(_cli_argv(reader, world), out_path, err_path)
    finally:
        out, err = out_path.read_bytes(), err_path.read_bytes()
        res["stdout"], res["stderr"] = out[-4000:].decode("utf-8", "replace"), err[-4000:].decode("utf-8", "replace")
        res["control"] = _control_lines(out + b"\n" + err)
    if UNEXPECTED_LINE.search(res["stderr"]):
        os.environ["FEATVIZ_TRACEBACK"] = "1"
        HANG_SAMPLES.clear()
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            _captured_main(_cli_argv(reader, world), world.capture / "rerun-out", world.capture / "rerun-err")
        except BaseException as e:  # noqa: BLE001 - the re-raised error, or the timer
            res["where"] = e.where if isinstance(e, ReaderTimeout) else _where(e)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            os.environ.pop("FEATVIZ_TRACEBACK", None)


CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f]")


def _control_lines(data: bytes) -> list[str]:
    """Each output line that holds a C0 control character other than newline and tab."""
    return [line.decode("utf-8", "replace")[:300] for line in data.split(b"\n") if CONTROL.search(line)]


def _call(reader: str, world: World, timeout: float) -> dict:
    """Run one reader under a ``timeout`` s timer; what happened, as plain JSON. faulthandler dumps
    the stack shortly after the timer should have fired, for a reader the timer cannot interrupt."""
    from featviz.errors import FeatvizError

    res: dict[str, Any] = {"reader": reader}
    start = time.monotonic()
    HANG_SAMPLES.clear()
    with open(world.capture / "stuck", "w") as stuck:
        faulthandler.dump_traceback_later(timeout + KILL_GRACE_S / 2, file=stuck)
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                if reader in CLI_READERS:
                    _run_cli(reader, world, res, timeout)
                else:
                    _library_call(reader, world)()
                res["outcome"] = "ok"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except ReaderTimeout as e:
            res.update(outcome="hang", where=e.where)
        except MemoryError as e:
            res.update(outcome="memory", where=_where(e))
        except FeatvizError as e:
            res.update(outcome="featviz error", message=_short(str(e)))
        except BaseException as e:  # noqa: BLE001 - anything else is what the property looks for
            res.update(outcome="unexpected", type=type(e).__name__, message=_short(str(e)), where=_where(e))
        finally:
            faulthandler.cancel_dump_traceback_later()
    res["seconds"] = round(time.monotonic() - start, 3)
    return res


def _send(fd: int, obj: dict) -> None:
    os.write(fd, (json.dumps(obj) + "\n").encode())


def _child(world: World, readers: list[str], fd: int, timeout: float) -> None:
    _fresh_recursion_limit()
    os.chdir(world.cwd)  # a reader writing to a relative path lands in the watched tree
    os.environ.pop("FEATVIZ_TRACEBACK", None)  # the CLI must report, not re-raise
    _redirect(world.capture / "library-output")  # warnings a library reader prints stay out of pytest's
    import featviz.cli.main  # noqa: F401 - before the memory cap: mapping torch's libraries needs more than it leaves
    import featviz.run.check  # noqa: F401

    _limit_memory()
    signal.signal(signal.SIGALRM, _on_alarm)
    for reader in readers:
        _send(fd, {"start": reader, "timeout": timeout})
        before = _tree(world.root)
        res = _call(reader, world, timeout)
        if res["outcome"] == "hang":
            timeout = LATER_TIMEOUT_S
        try:
            res["writes"] = _writes_outside(before, _tree(world.root), reader)
        except MemoryError:
            res["writes"] = []
        _send(fd, res)


def _fork_readers(world: World, readers: list[str], timeout: float) -> list[dict]:
    """Run ``readers`` in one forked child; a reader that stops answering is killed and reported."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 0
        try:
            os.close(r)
            _child(world, readers, w, timeout)
        except BaseException as e:  # noqa: BLE001 - the harness itself failed: say why
            code = 3
            try:
                _send(w, {"error": f"{type(e).__name__}: {_short(str(e))}"})
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(code)
    os.close(w)
    results: list[dict] = []
    current, buf, killed, error = None, b"", False, ""
    deadline = time.monotonic() + timeout + KILL_GRACE_S
    try:
        while True:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                msg = json.loads(line)
                if "error" in msg:
                    error = msg["error"]
                elif "start" in msg:
                    current, timeout = msg["start"], msg["timeout"]
                else:
                    current = None
                    results.append(msg)
                deadline = time.monotonic() + timeout + KILL_GRACE_S
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    if error:
        raise RuntimeError(f"the reader process failed outside any reader: {error}")
    if current is not None:  # started, never answered: stuck where the timer cannot reach, or crashed
        stuck = world.capture / "stuck"
        where = _stuck_where(stuck.read_text(errors="replace")) if stuck.exists() else ""
        if killed:
            results.append(
                {
                    "reader": current,
                    "outcome": "hang",
                    "where": where,
                    "writes": [],
                    "message": f"not interruptible, killed after {timeout + KILL_GRACE_S:.0f} s",
                }
            )
        else:
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            results.append(
                {
                    "reader": current,
                    "outcome": "crash",
                    "where": where,
                    "writes": [],
                    "message": f"signal {sig}" if sig else f"exit code {os.waitstatus_to_exitcode(status)}",
                }
            )
    return results


def run_readers(world: World, readers: tuple[str, ...]) -> dict[str, dict]:
    """Every reader's result; after a killed or crashed child the rest run in a new one."""
    done: dict[str, dict] = {}
    while remaining := [x for x in readers if x not in done]:
        hung = any(res["outcome"] == "hang" for res in done.values())
        results = _fork_readers(world, remaining, LATER_TIMEOUT_S if hung else READER_TIMEOUT_S)
        if not results:  # the child died before starting a reader
            done[remaining[0]] = {
                "reader": remaining[0],
                "outcome": "crash",
                "message": "child failed to start",
                "writes": [],
            }
        done.update((res["reader"], res) for res in results)
    return done
