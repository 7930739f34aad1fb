"""Pause points: let a test stop a featviz process at an exact moment, then kill it.

``FEATVIZ_PAUSE_AT`` names one point, e.g. ``step:12`` (after optimizer step 12) or
``write:epoch_002.safetensors`` (half-way through writing that file's temp file); ``NAME#K`` pauses
the K-th time the process reaches NAME (``write:manifest.json#3``: the third manifest write); ``...@R``
pauses only the process whose ``RANK`` (torchrun's) is R (``step:12@1``). When the process
reaches it, it writes its pid to the file named by ``FEATVIZ_PAUSE_FILE`` (if set) and sleeps until
it is killed, or until that file is deleted (then it carries on: a paused run can be resumed). With the
variable unset (always, outside fault-injection tests) a pause point costs one environment lookup. Nothing
else in featviz reads these variables.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV_AT, ENV_FILE = "FEATVIZ_PAUSE_AT", "FEATVIZ_PAUSE_FILE"
_hits: dict[str, int] = {}


def pause_point(name: str) -> None:
    """Sleep forever here if ``FEATVIZ_PAUSE_AT`` names this point (and this hit of it)."""
    want = os.environ.get(ENV_AT)
    if want is None:
        return
    want, _, rank = want.partition("@")
    point, _, nth = want.partition("#")
    if point != name or (rank and os.environ.get("RANK", "0") != rank):
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != (int(nth) if nth else 1):
        return
    marker = os.environ.get(ENV_FILE)
    if marker:
        Path(marker).write_text(str(os.getpid()))
    while marker is None or Path(marker).exists():
        time.sleep(0.1 if marker else 60)
