"""Checks of the run's own bookkeeping records, and the one builder of run.json.

``run_problem``, ``manifest_problem`` and ``metric_problem`` return what is wrong with a parsed record,
or None, so a hostile or damaged record is a damaged line (named and skipped), never a crash later in a
reader. ``describe_run`` builds run.json (a ``schema.RunInfo``) for every way a run is made. The types
of run.json and renders.jsonl are in ``featviz.run.schema``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

from torch import nn

from featviz.errors import RunError
from featviz.provenance import provenance
from featviz.run.fileio import confined, plain_rel, read_json
from featviz.run.schema import ConvLayer, DataInfo, RunInfo, SchemaError
from featviz.run.values import whole as _count

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


NUMBERS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "wall_s", "snapshot_s", "step_snapshot_s")


def metric_problem(rec: dict[str, Any]) -> str | None:
    """What is wrong with a metrics.jsonl record, else None: ``epoch`` a whole number, ``step`` one or
    null, ``label`` text or null, the metrics featviz plots (``NUMBERS``) numbers or null."""
    if not _count(rec.get("epoch")):
        return "epoch is not a whole number from 0"
    if rec.get("step") is not None and not _count(rec["step"]):
        return "step is not a whole number from 0"
    if rec.get("label") is not None and not isinstance(rec["label"], str):
        return "label is not text"
    bad = next(
        (
            k
            for k in NUMBERS
            if rec.get(k) is not None and (isinstance(rec[k], bool) or not isinstance(rec[k], (int, float)))
        ),
        None,
    )
    return f"{bad} is not a number" if bad else None


def manifest_problem(m: Any) -> str | None:
    """What is wrong with a parsed manifest.json ("" when its shape is wrong),
    else None: ``files`` maps paths of the run's files to sha256 digests, and ``epochs_done`` is no more
    than the files listed can hold, so no reader loops over an edited count."""
    if not isinstance(m, dict) or type(m.get("epochs_done")) is not int or not isinstance(m.get("files"), dict):
        return ""
    files = m["files"]
    bad = next(
        (k for k, v in files.items() if not (isinstance(v, str) and _SHA256.fullmatch(v)) or not plain_rel(k)), None
    )
    if bad is not None:
        return f" (entry {bad[:120]!r} is not a file of the run with a sha256)"
    if not -1 <= m["epochs_done"] < max(1, len(files)):
        return f" (epochs_done {m['epochs_done']} but {len(files)} files listed)"
    return None


def run_problem(meta: Any) -> str | None:
    """What is wrong with a parsed run.json (``schema.RunInfo.from_json``'s complaint), else None."""
    try:
        RunInfo.from_json(meta)
    except SchemaError as err:
        return str(err)
    return None


def read_run_info(path: Path) -> RunInfo:
    """The run.json of the run folder ``path`` (read without following a symlink); a RunError naming the
    file and its first problem (``schema.RunInfo.from_json``)."""
    if not os.path.lexists(path / "run.json"):
        raise RunError(f"{path} is not a featviz run (no run.json)")
    try:
        return RunInfo.from_json(read_json(confined(path, "run.json")))
    except SchemaError as err:
        raise RunError(f"{path / 'run.json'}: {err}") from None


def describe_run(
    name: str,
    configs: dict[str, Any],
    data: DataInfo,
    layers: Iterable[ConvLayer],
    model: nn.Module,
    device: Any,
    *,
    seed: int | None = None,
    source: str | None = None,
    recording: bool = False,
    processes: int = 1,
    imported: dict[str, Any] | None = None,
) -> RunInfo:
    """run.json's content: the one builder that train, record and import use. ``configs``: the data,
    model and train sections; ``data``: ``ImageData.describe``; ``layers``: ``layers.trace``; ``model``:
    the network (its parameter count); ``source``: "record" or "import" for runs featviz did not train."""
    info = RunInfo(
        name=name,
        configs=configs,
        data=data,
        layers=tuple(layers),
        seed=seed,
        source=source,
        recording=recording,
        params_total=sum(p.numel() for p in model.parameters()),
        processes=processes,
        imported=imported,
        provenance=provenance(device),
    )
    problem = run_problem(info.to_json())
    if problem is not None:  # featviz's own description must pass its own reader's checks
        raise RunError(f"the run description for {name} is malformed: {problem}")
    return info
