"""What a run's JSON-lines records may hold: one check per kind of record, used by the readers so a
hostile or damaged record is a damaged line (named and skipped), never a crash later in a reader.

``manifest_problem``, ``metric_problem`` and ``render_problem`` return what is wrong with a record, or None.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from featviz.errors import RunError
from featviz.fileio import confined

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_COUNT = 2**53  # the largest epoch, step or channel a record may hold (exact as a float and in JavaScript)


def inside(root: Path, rel: Any) -> bool:
    try:
        confined(root, rel)
    except RunError:
        return False
    return True


def _count(v: Any) -> bool:
    return type(v) is int and 0 <= v <= MAX_COUNT


def metric_problem(rec: dict[str, Any]) -> str | None:
    """What is wrong with a metrics.jsonl record, else None: ``epoch`` a whole number, ``step`` one or
    null, ``label`` text or null."""
    if not _count(rec.get("epoch")):
        return "epoch is not a whole number from 0"
    if rec.get("step") is not None and not _count(rec["step"]):
        return "step is not a whole number from 0"
    if rec.get("label") is not None and not isinstance(rec["label"], str):
        return "label is not text"
    return None


def render_problem(root: Path, rec: dict[str, Any]) -> str | None:
    """What is wrong with a renders.jsonl record, else None: ``file`` a path of plain names under
    ``renders/`` inside the run, numbers whole, names text, settings an object."""
    f = rec.get("file")
    if not isinstance(f, str) or not f.startswith("renders/") or not inside(root, f):
        return "file is not a path under the run's renders/ folder"
    for key in ("epoch", "step", "depth", "channel"):
        if rec.get(key) is not None and not _count(rec[key]):
            return f"{key} is not a whole number from 0"
    for key in ("kind", "layer", "label", "point"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            return f"{key} is not text"
    if rec.get("settings") is not None and not isinstance(rec["settings"], dict):
        return "settings is not an object"
    return None


def manifest_problem(root: Path, m: Any) -> str | None:
    """What is wrong with a parsed manifest.json of the run at ``root`` ("" when its shape is wrong),
    else None: ``files`` maps paths of the run's files to sha256 digests, and ``epochs_done`` is no more
    than the files listed can hold, so no reader loops over an edited count."""
    if not isinstance(m, dict) or type(m.get("epochs_done")) is not int or not isinstance(m.get("files"), dict):
        return ""
    files = m["files"]
    bad = next((k for k, v in files.items() if not (isinstance(v, str) and _SHA256.fullmatch(v))
                or not inside(root, k)), None)
    if bad is not None:
        return f" (entry {bad[:120]!r} is not a file of the run with a sha256)"
    if not -1 <= m["epochs_done"] < max(1, len(files)):
        return f" (epochs_done {m['epochs_done']} but {len(files)} files listed)"
    return None
