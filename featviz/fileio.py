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
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from featviz.errors import RunError, one_line
from featviz.faults import pause_point

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


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
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
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
            f.write(view[len(view) // 2:])
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


def read_json(path: Path) -> Any:
    """Parse a JSON file; any problem is a RunError naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: file is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({one_line(e, 200)})") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"{path}: snapshot file is missing") from None
    except OSError as e:
        raise RunError(f"{path}: cannot read ({one_line(e, 200)})") from None
    if not data:
        raise RunError(f"{path}: file is empty (zero bytes)")
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise RunError(f"{path}: checksum does not match the manifest (file is damaged or was edited)")
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises several types for truncated/garbled headers
        raise RunError(f"{path}: not a valid safetensors file ({one_line(e, 200)})") from None
    bad = nonfinite(tensors.items()) if finite else None
    if bad is not None:
        raise RunError(f"{path}: tensor {bad!r} has non-finite values")
    return tensors


def tensor_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of every tensor in a safetensors file, from its header alone (safetensors'
    ``safe_open`` reads no tensor data): cheap for any file size. An unreadable file is a RunError."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for truncated/garbled headers
        raise RunError(f"{path}: not a valid safetensors file ({one_line(e, 120)})") from None


def read_jsonl(path: Path, required: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of a JSON-lines file in file order, and one message per damaged line (not JSON, not
    an object, or without the ``required`` key), naming the file and the line. A missing file has none."""
    path = Path(path)
    if not path.exists():
        return [], []
    out, damaged = [], []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or required not in rec:
                raise ValueError(f"no {required} field")
        except ValueError as e:
            damaged.append(f"{path}: line {i} is damaged ({one_line(e, 200)})")
            continue
        out.append(rec)
    return out, damaged


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite a JSON-lines file whole, atomically (so a crash never leaves half a line)."""
    atomic_write_bytes(path, "".join(json_text(r) + "\n" for r in records).encode())


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed) for the block, so that two
    processes updating the same index (a live gallery and a background render) never lose each other's
    lines. Where ``fcntl`` is missing (Windows), the block runs unlocked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def not_a_file(folder: Path, what: str = "output folder") -> Path:
    """``folder`` unless it exists as a file (then a RunError saying so)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunError(f"{what} {folder} is a file, not a folder")
    return folder
