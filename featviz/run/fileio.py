"""Safe file I/O: every byte a run folder holds is written and read through these functions.

Writes are atomic (temp file in the same folder, fsync, ``os.replace``, then the folder is fsynced), so
a reader sees the old file or the new one, never half of one; a failed write (disk full, no permission)
leaves the old file and no temp file, and says why in one line. Reads never unpickle: tensors come from
safetensors (hash-checked when a digest is given, finite values only), everything else is JSON. JSONL
files have one rule for damaged lines: they are skipped and each is named. Nothing runs at import time.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save as st_save

from featviz.errors import RunError, one_line
from featviz.faults import pause_point

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_JSON = 64 << 20  # bytes: run.json, manifest.json, analysis.json (the largest real one is well under 1 MiB)
MAX_JSONL = 256 << 20  # bytes: metrics.jsonl, renders.jsonl (a deep model's renders index is a few MiB)
MAX_DEPTH = 64  # JSON nesting: featviz writes at most about 6; a model's kwargs rarely more than 3


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask (mkstemp creates 0600 files; run files should get the usual 0644)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- atomic primitives
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one. Only a
    regular file is ever replaced: a device node, FIFO, folder or symlink at ``path`` is a RunError."""
    path = Path(path)
    replaceable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _os_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            view = memoryview(data)
            f.write(view[: len(view) // 2])
            f.flush()
            pause_point(f"write:{path.name}")  # fault-injection tests kill the process here
            f.write(view[len(view) // 2 :])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _os_error(path, e) from None
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:  # makes the rename itself durable; not supported on every platform
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _os_error(path: Path, e: OSError) -> RunError:
    if e.errno == errno.ENOSPC:
        return RunError(f"disk full while writing {path}; the previous version of the file is unchanged")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return RunError(f"cannot write {path}: folder is not writable")
    return RunError(f"cannot write {path}: {e.strerror or e}")


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None: JSON has no such numbers (Python writes
    NaN, which browsers' JSON.parse and strict readers refuse), and null already means "not measured"
    in featviz's records (e.g. a loss from a mixed-precision step the scaler skipped)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def json_text(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``finite_json(obj)``: always valid JSON."""
    return json.dumps(finite_json(obj), allow_nan=False, **kwargs)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json_text(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path, limit: int = MAX_JSON) -> Any:
    """Parse a JSON file (a regular file of at most ``limit`` bytes, nested at most ``MAX_DEPTH`` deep);
    any problem is a RunError naming the file."""
    return parse_json(read_regular(path, limit), str(path))


def parse_json(text: str | bytes, what: str) -> Any:
    """``json.loads`` with featviz's bounds: nesting deeper than ``MAX_DEPTH`` (which would overflow the
    parser's or a later reader's recursion) and invalid JSON are one RunError naming ``what``."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise RunError(f"{what}: nested deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise RunError(f"{what}: not valid JSON ({one_line(e, 200)})") from None
    if json_depth(obj) > MAX_DEPTH:
        raise RunError(f"{what}: nested deeper than {MAX_DEPTH} levels")
    return obj


def json_depth(obj: Any) -> int:
    """How deeply lists and dicts nest in ``obj`` (a scalar: 0, ``[[1]]``: 2), without recursion; counting
    stops past ``MAX_DEPTH``."""
    depth, level = 0, [obj]
    while depth <= MAX_DEPTH:
        containers = [o for o in level if isinstance(o, (list, dict))]
        if not containers:
            break
        depth += 1
        level = [v for o in containers for v in (o.values() if isinstance(o, dict) else o)]
    return depth


def sha256_file(path: Path) -> str:
    """The sha256 of a regular file, read in blocks (any size, bounded memory)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- bounded, confined access


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_file(path: Path) -> BinaryIO:
    """``path`` opened for reading in binary mode if it is a regular file (the caller closes it); a FIFO,
    device, folder or missing file is a RunError naming it. Opening never blocks (a FIFO would wait
    for a writer), and the type is checked on the open file, so a name swapped in between cannot slip by."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise RunError(f"{path}: file is missing") from None
    except OSError as e:
        raise RunError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise RunError(f"{path}: is {_kind(mode)}, not a regular file; featviz reads only regular files")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def open_regular(path: Path) -> Iterator[BinaryIO]:
    """``open_file`` as a context manager that closes the file."""
    with open_file(path) as f:
        yield f


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (see ``open_regular``); a larger one is a
    RunError before it is read, so a hostile or runaway file cannot exhaust memory."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(limit + 1) if size <= limit else b""
        if size > limit or len(data) > limit:
            raise RunError(
                f"{path}: larger than {limit >> 20} MiB, more than featviz ever writes there "
                "(damaged or not featviz's file)"
            )
        return data


def replaceable(path: Path) -> None:
    """A RunError unless ``path`` is missing or a regular file (not a symlink): featviz replaces only
    its own files, never a device node, FIFO, folder or link that stands where one should be."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise RunError(f"cannot write {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise RunError(f"{path} is {_kind(mode)}; featviz replaces only regular files it wrote, refusing to write")


def plain_rel(rel: Any) -> bool:
    """``rel`` is a relative POSIX path of plain names (``check_name``'s): it cannot leave the folder it is
    joined to, by its spelling alone (``confined`` also refuses symlinks on the way, on disk)."""
    return isinstance(rel, str) and all(_NAME_RE.fullmatch(p) and p not in (".", "..") for p in rel.split("/"))


def confined(root: Path, rel: str, what: str = "file") -> Path:
    """``root/rel`` for reading or writing a run's file: ``rel`` is a relative path of plain names
    (``check_name``), and neither the file nor any folder between ``root`` and it is a symlink (or a
    non-folder), so nothing featviz reads or writes through it leaves ``root`` (``root`` itself may be
    a link: the user chose it)."""
    if not plain_rel(rel):
        raise RunError(f"{str(rel)[:120]!r} is not a {what} inside the run folder")
    parts = rel.split("/")
    path = Path(root)
    for part in parts[:-1]:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return Path(root, *parts)  # nothing below it exists yet: nothing to escape through
        except OSError as e:
            raise RunError(f"cannot reach {path}: {e.strerror or e}") from None
        if not stat.S_ISDIR(mode):
            raise RunError(f"{path} is {_kind(mode)}, not a folder of the run; featviz never follows it out of the run")
    path = path / parts[-1]
    if os.path.islink(path):
        raise RunError(f"{path} is a symlink; featviz reads and writes only the run's own files, never through a link")
    return path


def check_name(name: str, what: str = "run name") -> str:
    """Names used in file names: letters, digits, . _ - only, so they never escape the run folder."""
    if not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise RunError(f"invalid {what} {name!r}: use letters, digits, '.', '_' or '-' (at most 100)")
    return name


# ----------------------------------------------------------------------------- tensors
def nonfinite(tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor with a NaN or infinite value, else None."""
    return next((k for k, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save plain tensors (CPU, contiguous) as safetensors, atomically; refuse non-finite values."""
    clean = {}
    seen: set[int] = set()
    for k, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:  # a weight shared by two modules: safetensors stores each tensor's own bytes
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        clean[k] = t
    bad = nonfinite(clean.items())
    if bad is not None:
        raise RunError(f"refusing to save {path.name}: tensor {bad!r} has non-finite values")
    atomic_write_bytes(path, st_save(clean))


def load_tensors(path: Path, expected_sha256: str | None = None, finite: bool = True) -> dict[str, torch.Tensor]:
    """Load a safetensors file without pickle; any damage is a RunError that names the file, and so is a
    NaN or infinite value unless ``finite`` is False (the caller checks and explains it)."""
    path = Path(path)
    with open_regular(path) as f:  # the type check first: a FIFO or device is never mapped or read
        if os.fstat(f.fileno()).st_size == 0:
            raise RunError(f"{path}: file is empty (zero bytes)")
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise RunError(f"{path}: checksum does not match the manifest (file is damaged or was edited)")
    try:  # memory-mapped: the file's bytes are never held twice
        tensors = st_load_file(str(path))
    except Exception as e:  # safetensors raises several types for truncated/garbled headers
        raise RunError(f"{path}: not a valid safetensors file ({one_line(e, 200)})") from None
    bad = nonfinite(tensors.items()) if finite else None
    if bad is not None:
        raise RunError(f"{path}: tensor {bad!r} has non-finite values")
    return tensors


def open_safetensors(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], Any]:
    """(header, handle) of a safetensors file: name -> (safetensors dtype name, shape) of every tensor, from
    the header alone (no tensor data is read), and safetensors' memory-mapped ``safe_open`` handle for
    reading tensors or slices of them later. A FIFO or device is refused before it is mapped; an
    unreadable file is a RunError naming it."""
    with open_regular(path):
        pass  # safe_open would block on a FIFO and map a device
    try:
        handle = safe_open(str(path), framework="pt")
        return {
            k: (handle.get_slice(k).get_dtype(), tuple(handle.get_slice(k).get_shape())) for k in handle.keys()
        }, handle
    except Exception as e:  # safetensors raises several types for truncated/garbled headers
        raise RunError(f"{path}: not a valid safetensors file ({one_line(e, 120)})") from None


def tensor_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of every tensor in a safetensors file (``open_safetensors``): cheap for any size."""
    return open_safetensors(path)[0]


def read_jsonl(
    path: Path, required: str, valid: Callable[[dict[str, Any]], str | None] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of a JSON-lines file in file order, and one message per damaged line (not JSON, not
    an object, without the ``required`` key, or refused by ``valid``, which returns what is wrong or
    None), naming the file and the line. A missing file has none; a file that is not a regular file of
    at most ``MAX_JSONL`` bytes is a RunError."""
    path = Path(path)
    if not os.path.lexists(path):
        return [], []
    out, damaged = [], []
    for i, line in enumerate(read_regular(path, MAX_JSONL).decode(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = parse_json(line, "record")
            if not isinstance(rec, dict) or required not in rec:
                raise ValueError(f"no {required} field")
            problem = valid(rec) if valid is not None else None
            if problem:
                raise ValueError(problem)
        except (ValueError, RunError) as e:
            damaged.append(f"{path}: line {i} is damaged ({one_line(e, 200)})")
            continue
        out.append(rec)
    return out, damaged


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite a JSON-lines file whole, atomically (so a crash never leaves half a line)."""
    atomic_write_bytes(path, "".join(json_text(r) + "\n" for r in records).encode())


def not_a_file(folder: Path, what: str = "output folder") -> Path:
    """``folder`` unless it exists as a file (then a RunError saying so)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunError(f"{what} {folder} is a file, not a folder")
    return folder
