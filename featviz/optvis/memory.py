"""Big buffers reused instead of mapped afresh: glibc's malloc thresholds raised while a render runs.

Why: glibc serves every allocation above its mmap threshold (128 KiB, rising by itself to at most
32 MiB) with a fresh ``mmap`` and unmaps it on free, and gives heap memory back above its trim
threshold. A render allocates the same multi-megabyte activations and gradients on every one of its
hundreds of steps, so each step page-faults them in again; on 2 CPU cores that cost the 3-conv
benchmark render 1.9x (18.1 s -> 9.5 s). ``big_buffers()`` raises both thresholds to 1 GiB for the
block (freed buffers go back to the heap and the next step reuses them), then sets them to where
glibc's own adjustment tops out (32 MiB, trim at 64 MiB) and trims the heap, so a program that uses
featviz as a library gets its memory back and keeps its speed.

It does nothing where glibc is absent (macOS, Windows, musl), when the user set
``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` themselves (their choice stands), on a CUDA
render (the GPU's caching allocator already reuses its buffers), and inside another ``big_buffers``.
One difference remains after the block: glibc stops moving its mmap threshold by itself once a
program has set it, so it stays at 32 MiB (the value it would have reached) instead of starting low.
``GLIBC_TUNABLES`` with malloc settings also counts as the user's choice.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
from contextlib import contextmanager
from typing import Iterator

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)
RAISED = 1 << 30
# after the block: where glibc's own adjustment of the thresholds tops out (DEFAULT_MMAP_THRESHOLD_MAX on
# 64-bit, trim at twice that). Its 128 KiB start values would be worse than before: once a program sets
# them, glibc stops adjusting, and every buffer above 128 KiB would be mapped afresh (measured 15-46% slower)
DEFAULTS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}
_lock = threading.Lock()
_depth = 0
_raised = False


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or None elsewhere (mallopt is glibc's; gnu_get_libc_version tells glibc from musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError outside glibc
        return libc
    except (OSError, AttributeError, TypeError):
        return None


def _user_tuned() -> bool:
    return any(
        k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
    ) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")


@contextmanager
def big_buffers(enabled: bool = True) -> Iterator[bool]:
    """Raise glibc's mmap and trim thresholds for the block (see the module docstring); yields whether
    they are raised. Nested and concurrent blocks share one raise: the last to leave restores."""
    global _depth, _raised
    libc = _libc() if enabled and not _user_tuned() else None
    with _lock:
        _depth += 1
        if libc is not None and not _raised:
            done = []
            for param in DEFAULTS:  # stop at the first refusal (mallopt returns 0) and undo what was set
                if libc.mallopt(param, RAISED) != 1:
                    _restore(libc, done)
                    break
                done.append(param)
            _raised = len(done) == len(DEFAULTS)
        raised = _raised
    try:
        yield raised
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _raised:
                lib = _libc()
                _restore(lib, list(DEFAULTS))
                lib.malloc_trim(0)
                _raised = False


def _restore(libc: ctypes.CDLL, params: list[int]) -> None:
    for param in params:
        libc.mallopt(param, DEFAULTS[param])
