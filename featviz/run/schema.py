"""What a run holds, as types: open this file to learn what is in a run and what shape each thing is.

- ``RunInfo``: run.json, the run's description (configs, seed, provenance, ``DataInfo``, ``ConvLayer`` s).
- ``DataInfo``: the images the network saw (side, colour channels, normalization, classes).
- ``ConvLayer``: one conv layer as the forward pass meets it (``featviz.layers.trace``); the one
  conv-layer type of the package.
- ``SnapshotPoint``: one committed snapshot of the weights (an epoch end or a within-epoch step).
- ``RenderRecord``: one line of renders.jsonl, describing one image file under ``renders/``.

Each type has ``to_json`` (the on-disk dict) and ``from_json`` (which checks the types every stage relies on
and raises ``SchemaError`` naming what is wrong). ``from_json`` is the only code that reads older formats:

- schema 1 (featviz before run types) named the colour-channel count ``data.channels``; schema 2 calls
  it ``data.image_channels`` ("channels" elsewhere means channel indices, the units of a layer);
- schema 1's render records named their settings set ``settings_id``; schema 2 calls it ``settings_set``.

The folder layout (which file lives where) is in ``featviz.run.store``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from featviz.errors import RunError
from featviz.run.fileio import plain_rel
from featviz.run.values import SchemaError, are_numbers, checked, fields_of, is_text, or_none, whole

SCHEMA_VERSION = 2  # the on-disk shape of a run; bump it when that shape changes, and migrate in from_json
PROVENANCE = ("created", "versions", "git_sha", "device", "device_name", "threads", "determinism")


# ----------------------------------------------------------------------------- conv layer
_LAYER_TYPES: dict[str, Callable[[Any], bool]] = {
    "name": lambda v: isinstance(v, str) and bool(v),
    "depth": lambda v: whole(v, 1),
    "in_ch": lambda v: whole(v, 1),
    "out_ch": lambda v: whole(v, 1),
    "groups": lambda v: whole(v, 1),
    "stride": lambda v: whole(v, 1),
    "kernel": lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(whole(k, 1) for k in v),
    "weights": or_none(whole),
    "biases": or_none(whole),
    "params": or_none(whole),
    "out_px": or_none(whole),
    "rf_px": or_none(whole),
    "batchnorm": or_none(lambda v: isinstance(v, bool)),
    "rf_exceeds": lambda v: isinstance(v, bool),
    "response": or_none(is_text),
    "activation": or_none(is_text),
    "path_depth": or_none(lambda v: whole(v, 1)),
    "branch": lambda v: isinstance(v, bool),
    "stage": or_none(is_text),
}


@dataclass(frozen=True)
class ConvLayer:
    """One ``Conv2d`` of the network, in forward-execution order (``featviz.layers.trace``).

    ``depth``: d for the d-th conv to run. ``in_ch``/``out_ch``: its input and output channel counts
    (``out_ch`` units, each one filter of ``in_ch // groups`` x kernel weights). ``out_px``: the side of
    its output map at the run's image size. ``response``: the module whose output activation
    maximization targets (the BatchNorm right after the conv, else the conv); ``batchnorm``: whether
    there is such a BatchNorm. ``activation``: the
    first activation module after it (else the response). ``rf_px``: the theoretical receptive field,
    a lower bound where ``rf_exceeds``. ``path_depth``, ``branch``, ``stage``: see ``featviz.depth``. Runs
    made before a field was traced hold None (False) there.
    """

    name: str
    depth: int
    in_ch: int
    out_ch: int
    kernel: tuple[int, int]
    stride: int = 1
    groups: int = 1
    weights: int | None = None
    biases: int | None = None
    params: int | None = None
    out_px: int | None = None
    batchnorm: bool | None = None
    response: str | None = None
    activation: str | None = None
    rf_px: int | None = None
    rf_exceeds: bool = False
    path_depth: int | None = None
    branch: bool = False
    stage: str | None = None

    @property
    def weight_shape(self) -> list[int]:
        """The conv's weight tensor shape: [out, in / groups, kh, kw]."""
        return [self.out_ch, self.in_ch // self.groups, *self.kernel]

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kernel"] = list(self.kernel)
        return d

    @classmethod
    def from_json(cls, d: Any, what: str = "layer") -> "ConvLayer":
        d = checked(what, d, _LAYER_TYPES, ("name", "depth", "in_ch", "out_ch", "kernel"))
        return cls(**{**fields_of(cls, d), "kernel": (int(d["kernel"][0]), int(d["kernel"][1]))})


# ----------------------------------------------------------------------------- data
_DATA_TYPES: dict[str, Callable[[Any], bool]] = {
    "name": or_none(is_text),
    "size": lambda v: whole(v, 1),
    "image_channels": lambda v: whole(v, 1),
    "mean": are_numbers,
    "std": are_numbers,
    "classes": lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
    "n_train": or_none(whole),
    "n_val": or_none(whole),
    "color_matrix": lambda v: v is None or (isinstance(v, list) and all(are_numbers(r) for r in v)),
}


@dataclass(frozen=True)
class DataInfo:
    """The images of a run: ``size`` px square, ``image_channels`` colour channels (1 grey, 3 RGB),
    normalized by per-channel ``mean``/``std`` on the 0..1 scale; ``classes`` by label index;
    ``color_matrix``: the decorrelated-colour basis activation maximization draws in (None: plain RGB)."""

    size: int
    image_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str | None = None
    classes: tuple[str, ...] = ()
    n_train: int | None = None
    n_val: int | None = None
    color_matrix: tuple[tuple[float, ...], ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "image_channels": self.image_channels,
            "size": self.size,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "mean": list(self.mean),
            "std": list(self.std),
            "color_matrix": None if self.color_matrix is None else [list(r) for r in self.color_matrix],
        }

    @classmethod
    def from_json(cls, d: Any, version: int = SCHEMA_VERSION) -> "DataInfo":
        if version < 2 and isinstance(d, dict) and "channels" in d:  # schema 1's name for the colour count
            d = {("image_channels" if k == "channels" else k): v for k, v in d.items()}
        d = checked("data", d, _DATA_TYPES, ("size", "image_channels", "mean", "std"))
        m = d.get("color_matrix")
        return cls(
            **{
                **fields_of(cls, d),
                "mean": tuple(d["mean"]),
                "std": tuple(d["std"]),
                "classes": tuple(d.get("classes", ())),
                "color_matrix": None if m is None else tuple(tuple(r) for r in m),
            }
        )


# ----------------------------------------------------------------------------- run.json
@dataclass(frozen=True)
class RunInfo:
    """run.json: a run's description, written once when the run is made.

    ``configs``: the ``data``, ``model`` and ``train`` sections, each the JSON of its config
    (``featviz.config``; for runs featviz did not train, what is known: the model's factory and
    ``train.epochs`` at least). ``source``: None for runs ``featviz train`` made, "record" (the user's own
    loop, ``featviz.record``) or "import" (a checkpoint folder, ``featviz.importer``). ``recording``: a
    recorded run whose loop has not yet ended well. ``provenance``: when, with which versions, on which
    machine (``featviz.provenance``). ``extra``: keys this featviz does not know, kept as they were.
    """

    name: str
    configs: dict[str, Any]
    data: DataInfo
    layers: tuple[ConvLayer, ...]
    seed: int | None = None
    source: str | None = None
    recording: bool = False
    params_total: int | None = None
    processes: int = 1
    imported: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def epochs_planned(self) -> int:
        return int(self.configs["train"]["epochs"])

    @property
    def model_config(self) -> dict[str, Any]:
        """The model section: featviz's SmallCNN config, or a ``featviz.zoo`` spec (with ``factory``)."""
        return self.configs["model"]

    def layer(self, name: str) -> ConvLayer:
        """The conv layer called ``name``; a RunError naming the valid ones if there is none."""
        for la in self.layers:
            if la.name == name:
                return la
        raise RunError(
            f"run {self.name} has no conv layer {name!r} (it has {', '.join(la.name for la in self.layers)})"
        )

    def to_json(self) -> dict[str, Any]:
        """run.json's content, a fresh copy: changing it changes neither this object nor the file."""
        return copy.deepcopy(self._json())

    def _json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema_version": self.schema_version, "name": self.name, "seed": self.seed}
        if self.source is not None:
            d["source"] = self.source
        d.update(self.provenance)
        d.update(
            {
                "configs": self.configs,
                "data": self.data.to_json(),
                "layers": [la.to_json() for la in self.layers],
                "params_total": self.params_total,
                "processes": self.processes,
            }
        )
        if self.recording:
            d["recording"] = True
        if self.imported is not None:
            d["imported"] = self.imported
        return {**d, **self.extra}

    @classmethod
    def from_json(cls, d: Any) -> "RunInfo":
        """The run described by a parsed run.json of this schema or an older one; a SchemaError naming the
        first problem (a newer schema is one too: it may hold anything)."""
        if not isinstance(d, dict) or "configs" not in d or "schema_version" not in d:
            raise SchemaError("not a featviz run description (missing configs/schema_version)")
        version = d["schema_version"]
        if type(version) is not int:
            raise SchemaError("schema_version is not an integer")
        if version > SCHEMA_VERSION:
            raise SchemaError(f"schema {version} is newer than this featviz")
        cfgs = d["configs"]
        if (
            not isinstance(cfgs, dict)
            or not all(isinstance(cfgs.get(k), dict) for k in ("data", "model", "train"))
            or type(cfgs["train"].get("epochs")) is not int
        ):
            raise SchemaError(
                "configs must hold data, model and train sections, with train.epochs an integer "
                "(the file was edited or damaged)"
            )
        layers = d.get("layers", [])
        if not isinstance(layers, list):
            raise SchemaError("layers is not a list of layer descriptions")
        for key, ok in (
            ("name", is_text),
            ("source", or_none(is_text)),
            ("seed", or_none(lambda v: type(v) is int)),
            ("params_total", or_none(whole)),
            ("processes", lambda v: whole(v, 1)),
            ("recording", lambda v: isinstance(v, bool)),
            ("imported", or_none(lambda v: isinstance(v, dict))),
        ):
            if key in d and not ok(d[key]):
                raise SchemaError(f"{key} is of the wrong type")
        named = {f.name for f in dataclasses.fields(cls)} | set(PROVENANCE)
        return cls(
            name=d.get("name") or "",
            configs=cfgs,
            data=DataInfo.from_json(d.get("data", {}), version),
            layers=tuple(ConvLayer.from_json(la, f"layer {i}") for i, la in enumerate(layers)),
            seed=d.get("seed"),
            source=d.get("source"),
            recording=bool(d.get("recording", False)),
            params_total=d.get("params_total"),
            processes=d.get("processes", 1),
            imported=d.get("imported"),
            provenance={k: d[k] for k in PROVENANCE if k in d},
            extra={k: v for k, v in d.items() if k not in named},
            schema_version=SCHEMA_VERSION,
        )


# ----------------------------------------------------------------------------- snapshots
@dataclass(frozen=True)
class SnapshotPoint:
    """One committed snapshot of the weights: ``kind`` "epoch" (``epoch`` set; epoch 0 is the random
    init) or "step" (a ``--snapshot-every-steps`` point, ``epoch`` None); ``step``: optimizer steps
    done; ``id``: its file's stem ("epoch_003", "step_0000064"); ``label``: how the gallery names it."""

    id: str
    kind: str
    step: int
    epoch: int | None = None
    label: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- renders.jsonl
def render_problem(rec: Any) -> str | None:
    """What is wrong with a renders.jsonl record, else None: ``file`` a path of plain names under
    ``renders/`` inside the run, numbers whole, names text, settings an object."""
    f = rec.get("file")
    if not isinstance(f, str) or not f.startswith("renders/") or not plain_rel(f):
        return "file is not a path under the run's renders/ folder"
    for key in ("epoch", "step", "depth", "channel"):
        if rec.get(key) is not None and not whole(rec[key]):
            return f"{key} is not a whole number from 0"
    if not isinstance(rec.get("kind"), str) or ("layer" in rec and not isinstance(rec["layer"], str)):
        return "kind or layer is not text"
    for key in ("label", "point", "settings_set", "settings_id"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            return f"{key} is not text"
    for key in ("settings", "render_settings"):
        if rec.get(key) is not None and not isinstance(rec[key], dict):
            return f"{key} is not an object"
    for key in ("activation", "scale", "elapsed_s"):
        if rec.get(key) is not None and (isinstance(rec[key], bool) or not isinstance(rec[key], (int, float))):
            return f"{key} is not a number"
    return None


@dataclass(frozen=True)
class RenderRecord:
    """One image file under ``renders/`` and what it shows.

    ``kind``: "am" (one channel's activation-maximization image), "am_grid" (a layer's at one moment),
    "filters" / "filters_learned" (a layer's weights, or what training added to the init, at one moment)
    and their "_strip" (all moments side by side) and "_gif". ``point``/``epoch``/``step``/``label``:
    the snapshot it shows (None for strips and GIFs). ``settings``: the settings the file was made with;
    ``settings_set``: the settings set of an activation-maximization image (``featviz.run.renderset``);
    ``activation``: the channel's mean response to its image; ``scale``: the weights' colour scale.
    """

    file: str
    kind: str
    layer: str | None = None
    depth: int | None = None
    channel: int | None = None
    point: str | None = None
    epoch: int | None = None
    step: int | None = None
    label: str | None = None
    settings: dict[str, Any] | None = None
    settings_set: str | None = None
    activation: float | None = None
    scale: float | None = None
    render_settings: dict[str, Any] | None = None
    elapsed_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, d: Any) -> "RenderRecord":
        """A checked record. Older records: schema 1 named the settings set ``settings_id``; records
        written before snapshot points and settings sets existed get the point of their epoch and the
        set of their settings."""
        problem = render_problem(d) if isinstance(d, dict) else "not an object"
        if problem is not None:
            raise SchemaError(f"render record: {problem}")
        return cls.from_checked_json(d)

    @classmethod
    def from_checked_json(cls, d: dict[str, Any]) -> "RenderRecord":
        """``from_json`` for a record ``render_problem`` has passed already (a reader of renders.jsonl that
        reports damaged lines by number checks each line once)."""
        known = fields_of(cls, d)
        if known.get("settings_set") is None and d.get("settings_id") is not None:
            known["settings_set"] = d["settings_id"]
        if known.get("point") is None and known.get("epoch") is not None:
            known["point"] = f"epoch_{known['epoch']:03d}"
        if known.get("settings_set") is None and known["kind"] in ("am", "am_grid"):
            known["settings_set"] = settings_set_of(known.get("settings") or {})
        return cls(**known)


def settings_set_of(settings: Mapping[str, Any]) -> str:
    """The name of an activation-maximization settings set (the folder its images live in,
    ``featviz.run.renderset``): a pure function of the settings that decide what an image looks like."""
    lr = settings.get("lr", 0)
    lr = f"{float(lr):g}" if isinstance(lr, (int, float)) and not isinstance(lr, bool) else lr
    sid = (
        f"{settings.get('param')}-{settings.get('transforms')}-{settings.get('steps')}st-"
        f"lr{lr}-s{settings.get('seed')}-{settings.get('size')}px"
    )
    if settings.get("target", "response") != "response":
        sid += f"-{settings['target']}"
    if settings.get("batchnorm") == "probe":
        sid += "-bnprobe"
    return sid
