"""Big buffers reused instead of mapped afresh: glibc's malloc thresholds raised while a render runs.

Why: glibc serves every allocation above its mmap threshold (128 KiB, rising by itself to at most
32 MiB) with a fresh ``mmap`` and unmaps it on free, and gives heap memory back above its trim
threshold. A render allocates the same multi-megabyte activations and gradients on every one of its
hundreds of steps, so each step page-faults them in again; on 2 CPU cores that cost the 3-conv
benchmark render 1.8x. ``big_buffers()`` raises both thresholds to 1 GiB for the block (freed
buffers go back to the heap and the next step reuses them), then sets glibc's documented defaults
back and trims the heap, so a program that uses featviz as a library gets its memory back.

It does nothing where glibc is absent (macOS, Windows, musl), when the user set
``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` themselves (their choice stands), on a CUDA
render (the GPU's caching allocator already reuses its buffers), and inside another ``big_buffers``.
One difference remains after the block: glibc stops moving its mmap threshold by itself once a
program has set it, so it stays at the 128 KiB default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from contextlib import contextmanager
from typing import Iterator

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)
RAISED = 1 << 30
DEFAULTS = {M_MMAP_THRESHOLD: 128 * 1024, M_TRIM_THRESHOLD: 128 * 1024}  # glibc's documented defaults
_lock = threading.Lock()
_depth = 0
_raised = False


def _libc() -> ctypes.CDLL | None:
    """glibc, or None elsewhere (mallopt is glibc's; gnu_get_libc_version tells glibc from musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError outside glibc
        return libc
    except (OSError, AttributeError, TypeError):
        return None


def _user_tuned() -> bool:
    return any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"))


@contextmanager
def big_buffers(enabled: bool = True) -> Iterator[bool]:
    """Raise glibc's mmap and trim thresholds for the block (see the module docstring); yields whether
    they are raised. Nested and concurrent blocks share one raise: the last to leave restores."""
    global _depth, _raised
    libc = _libc() if enabled and not _user_tuned() else None
    with _lock:
        _depth += 1
        if libc is not None and not _raised:
            for param in DEFAULTS:
                libc.mallopt(param, RAISED)
            _raised = True
        raised = _raised
    try:
        yield raised
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _raised:
                lib = _libc()
                for param, value in DEFAULTS.items():
                    lib.mallopt(param, value)
                lib.malloc_trim(0)
                _raised = False
