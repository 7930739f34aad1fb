"""What a run's JSON-lines records may hold: one check per kind of record, used by the readers so a
hostile or damaged record is a damaged line (named and skipped), never a crash later in a reader.

``describe_run`` builds run.json for every way a run is made; ``run_problem``, ``manifest_problem``, ``metric_problem`` and ``render_problem`` return what is wrong with a record, or None.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from featviz.errors import RunError
from featviz.provenance import provenance
from featviz.run.fileio import plain_rel

SCHEMA_VERSION = 1  # the on-disk shape of a run; bump it when that shape changes
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_COUNT = 2**53  # the largest epoch, step or channel a record may hold (exact as a float and in JavaScript)


def _count(v: Any) -> bool:
    return type(v) is int and 0 <= v <= MAX_COUNT


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
    bad = next((k for k in NUMBERS if rec.get(k) is not None and (isinstance(rec[k], bool)
                                                                   or not isinstance(rec[k], (int, float)))), None)
    return f"{bad} is not a number" if bad else None


def render_problem(rec: dict[str, Any]) -> str | None:
    """What is wrong with a renders.jsonl record, else None: ``file`` a path of plain names under
    ``renders/`` inside the run, numbers whole, names text, settings an object."""
    f = rec.get("file")
    if not isinstance(f, str) or not f.startswith("renders/") or not plain_rel(f):
        return "file is not a path under the run's renders/ folder"
    for key in ("epoch", "step", "depth", "channel"):
        if rec.get(key) is not None and not _count(rec[key]):
            return f"{key} is not a whole number from 0"
    if not isinstance(rec.get("kind"), str) or ("layer" in rec and not isinstance(rec["layer"], str)):
        return "kind or layer is not text"
    for key in ("label", "point"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            return f"{key} is not text"
    if rec.get("settings") is not None and not isinstance(rec["settings"], dict):
        return "settings is not an object"
    return None


def manifest_problem(m: Any) -> str | None:
    """What is wrong with a parsed manifest.json ("" when its shape is wrong),
    else None: ``files`` maps paths of the run's files to sha256 digests, and ``epochs_done`` is no more
    than the files listed can hold, so no reader loops over an edited count."""
    if not isinstance(m, dict) or type(m.get("epochs_done")) is not int or not isinstance(m.get("files"), dict):
        return ""
    files = m["files"]
    bad = next((k for k, v in files.items() if not (isinstance(v, str) and _SHA256.fullmatch(v))
                or not plain_rel(k)), None)
    if bad is not None:
        return f" (entry {bad[:120]!r} is not a file of the run with a sha256)"
    if not -1 <= m["epochs_done"] < max(1, len(files)):
        return f" (epochs_done {m['epochs_done']} but {len(files)} files listed)"
    return None


def _whole(v: Any, low: int = 0) -> bool:
    return type(v) is int and low <= v <= MAX_COUNT


def _numbers(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


_LAYER_TYPES: dict[str, Callable[[Any], bool]] = {
    "name": lambda v: isinstance(v, str) and bool(v), "depth": lambda v: _whole(v, 1), "in_ch": lambda v: _whole(v, 1),
    "out_ch": lambda v: _whole(v, 1), "groups": lambda v: _whole(v, 1), "stride": lambda v: _whole(v, 1),
    "kernel": lambda v: isinstance(v, list) and len(v) == 2 and all(_whole(k, 1) for k in v),
    "weights": _whole, "biases": _whole, "params": _whole, "out_px": _whole, "rf_px": _whole,
    "batchnorm": lambda v: isinstance(v, bool), "rf_exceeds": lambda v: isinstance(v, bool),
    "response": lambda v: v is None or isinstance(v, str), "activation": lambda v: v is None or isinstance(v, str),
}
_REQUIRED_LAYER = ("name", "depth", "in_ch", "out_ch", "kernel")
_DATA_TYPES: dict[str, Callable[[Any], bool]] = {
    "size": lambda v: _whole(v, 1), "channels": lambda v: _whole(v, 1), "mean": _numbers, "std": _numbers,
    "classes": lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
    "color_matrix": lambda v: v is None or (isinstance(v, list) and all(_numbers(r) for r in v)),
}


def run_problem(meta: Any) -> str | None:
    """What is wrong with a parsed run.json, else None: the configs' data, model and train sections (train
    epochs a whole number), and, where present, the layer list and data description with the types the
    stages read (so an edited run.json is one line here, not a TypeError in whichever stage reads it)."""
    if not isinstance(meta, dict) or "configs" not in meta or "schema_version" not in meta:
        return "not a featviz run description (missing configs/schema_version)"
    if type(meta["schema_version"]) is not int:
        return "schema_version is not an integer"
    cfgs = meta["configs"]
    if not isinstance(cfgs, dict) or not all(isinstance(cfgs.get(k), dict) for k in ("data", "model", "train")) \
            or type(cfgs["train"].get("epochs")) is not int:
        return "configs must hold data, model and train sections, with train.epochs an integer (the file was " \
               "edited or damaged)"
    layers = meta.get("layers", [])
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        return "layers is not a list of layer descriptions"
    for i, layer in enumerate(layers):
        bad = next((k for k in _REQUIRED_LAYER if k not in layer), None) or \
            next((k for k, ok in _LAYER_TYPES.items() if k in layer and not ok(layer[k])), None)
        if bad is not None:
            return f"layer {i}: {bad} is missing or of the wrong type"
    data = meta.get("data", {})
    if not isinstance(data, dict):
        return "data is not an object"
    bad = next((k for k, ok in _DATA_TYPES.items() if k in data and not ok(data[k])), None)
    if bad is not None:
        return f"data.{bad} is of the wrong type"
    for key in ("name", "source"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            return f"{key} is not text"
    return None


def describe_run(name: str, configs: dict[str, Any], data: dict[str, Any], layers: list[dict[str, Any]],
                 model: Any, device: Any, *, seed: int | None = None, source: str | None = None,
                 **extra: Any) -> dict[str, Any]:
    """run.json's content (without the schema version, which ``Run.create`` adds): the one builder that
    train, record and import use. ``configs``: the data, model and train sections; ``data``: the data
    description (``ImageData.describe`` and the colour matrix); ``layers``: ``layers.trace``; ``model``:
    the network (its parameter count); ``source``: "record" or "import" for runs featviz did not train."""
    meta = {"name": name, "seed": seed, **({"source": source} if source else {}), **provenance(device),
            "configs": configs, "data": data, "layers": layers,
            "params_total": sum(p.numel() for p in model.parameters()), **extra}
    problem = run_problem({"schema_version": SCHEMA_VERSION, **meta})
    if problem is not None:  # featviz's own description must pass its own reader's checks
        raise RunError(f"the run description for {name} is malformed: {problem}")
    return meta
