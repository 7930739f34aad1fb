"""``featviz import``: a folder of checkpoints someone already saved -> a featviz run.

In: a folder of ``.pt``/``.pth``/``.ckpt`` files (read with ``torch.load(weights_only=True)``: plain
tensors and containers only, never arbitrary pickled objects) or ``.safetensors`` files, the model spec
that builds the network, and the data set it was trained on. Each file's number (the step or epoch in
its name; ``pattern`` for unusual names) orders them; the i-th becomes the run's epoch i snapshot,
labelled with its file. Each file is read by ``featviz.checkpoint`` (a bare state dict, or one under a
common key such as Lightning's ``state_dict``; a shared key prefix dropped where that fits better).
Out: a complete run (``source: import``) with each checkpoint's validation loss and accuracy as its
metrics line.

Each tensor is stored in the dtype of the network's own tensor; reading a checkpoint costs one block of
memory beyond the network, whatever the file's size (``featviz.checkpoint``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch

from featviz.checkpoint import load_checkpoint
from featviz.config import DataConfig, to_dict
from featviz.data import load_data
from featviz.device import resolve_device
from featviz.errors import ConfigError
from featviz.images import Normalizer
from featviz.layers import trace
from featviz.optvis.param import color_matrix_or_none
from featviz.progress import StageProgress, silent
from featviz.run.fileio import save_tensors
from featviz.run.outputs import check_new_run, check_out_dir
from featviz.run.records import describe_run
from featviz.run.store import Run
from featviz.training import evaluate
from featviz.zoo import ModelSpec, build, check_output

SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
_NUMBERS = (
    ("step", re.compile(r"(?:global_step|step|iter|iteration)[=_-]?(\d+)", re.I)),
    ("epoch", re.compile(r"(?:epoch|ep)[=_-]?(\d+)", re.I)),
)


def checkpoint_files(folder: Path, pattern: str | None = None) -> tuple[list[tuple[int, Path]], str]:
    """The checkpoints of ``folder`` as (number, path) in number order, and what the numbers count
    ("step", "epoch", or "number" for a bare last integer or a ``pattern``'s first group). Without a
    pattern, files with no number in their name (Lightning's ``last.ckpt``) are left out (see ``unnumbered``)."""
    if not folder.is_dir():
        raise ConfigError(f"checkpoint folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise ConfigError(f"no checkpoints ({', '.join(SUFFIXES)}) in {folder}")
    if pattern:
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"--pattern {pattern!r} is not a regular expression: {e}") from None
        if rx.groups < 1:
            raise ConfigError(f"--pattern {pattern!r} needs a group around the number, e.g. 'ckpt_(\\d+)'")
        found = [(rx.search(p.name), p) for p in files]
        unit = "number"
    else:
        numbered = [p for p in files if re.search(r"\d", p.stem)] or files
        for unit, rx in _NUMBERS:
            found = [(rx.search(p.stem), p) for p in numbered]
            if all(m for m, _ in found):
                break
        else:
            unit, found = "number", [(re.search(r"(\d+)(?!.*\d)", p.stem), p) for p in numbered]
    missing = [p.name for m, p in found if m is None]
    if missing and (pattern or len(missing) == len(found)):
        raise ConfigError(
            f"no step or epoch number in the checkpoint name {missing[0]}; pass --pattern REGEX with a "
            "group around the number"
        )
    bad = next(
        (
            f"{p.name} (group: {m.group(1)!r})"
            for m, p in found
            if m is not None and not (m.group(1) or "").strip().isdigit()
        ),
        None,
    )
    if bad is not None:
        raise ConfigError(
            f"--pattern {pattern!r}: its group must capture the file's number, not {bad}; e.g. 'ckpt_(\\d+)'"
        )
    numbered = sorted((int(m.group(1)), p) for m, p in found if m is not None)
    dupes = [n for (n, _), (m, _) in zip(numbered, numbered[1:]) if n == m]
    if dupes:
        raise ConfigError(f"two checkpoints have the number {dupes[0]}; pass --pattern to tell them apart")
    return numbered, unit


def unnumbered(folder: Path) -> list[str]:
    """Checkpoint files of ``folder`` without a number in their name (left out of an import without --pattern)."""
    return sorted(p.name for p in folder.iterdir() if p.suffix in SUFFIXES and not re.search(r"\d", p.stem))


def import_checkpoints(
    folder: str | Path,
    spec: ModelSpec,
    data_cfg: DataConfig = DataConfig(),
    out_dir: str | Path = "outputs",
    name: str | None = None,
    pattern: str | None = None,
    force: bool = False,
    device: str = "auto",
    progress: StageProgress = silent,
) -> Run:
    """Build a run from the checkpoints in ``folder`` (see the module docstring); every check, and
    every checkpoint's reading, happens before the run folder is created."""
    folder = Path(folder)
    dev = resolve_device(device)  # every check before any work
    files, unit = checkpoint_files(folder, pattern)
    if len(files) < 2:
        raise ConfigError(f"{folder} has one checkpoint; a run compares at least two (the first and a later one)")
    name = name or f"import-{folder.resolve().name}"
    out = check_out_dir(Path(out_dir))
    check_new_run(out, name, force, reading=[folder])  # never replaces the run it reads checkpoints from
    data = load_data(data_cfg)
    spec = dataclasses.replace(spec, in_channels=data.image_channels, num_classes=len(data.classes))
    model = build(spec)
    check_output(model, spec, data.size)
    for i, (_, path) in enumerate(files):  # every file read and checked before the run exists
        load_checkpoint(path, model.state_dict())
        progress("checking checkpoints", i + 1, len(files))
    color = color_matrix_or_none(data.train_x)
    info = describe_run(
        name,
        {"data": to_dict(data_cfg), "model": spec.as_dict(), "train": {"epochs": len(files) - 1}},
        data.describe(color),
        trace(model, data.image_channels, data.size),
        model,
        dev,
        source="import",
        imported={
            "folder": str(folder.resolve()),
            "unit": unit,
            "files": [p.name for _, p in files],
            "numbers": [n for n, _ in files],
            "left_out": [] if pattern else unnumbered(folder),
        },
    )
    run = Run.create(out, name, info, force=force, reading=[folder])  # holds the run's train lock
    try:
        _import_into(run, model, files, unit, data, dev, progress)
    finally:
        run.release()
    return run


def _import_into(
    run: Run,
    model: torch.nn.Module,
    files: list[tuple[int, Path]],
    unit: str,
    data: Any,
    dev: torch.device,
    progress: StageProgress,
) -> None:
    """Each checkpoint, in order, as the run's epoch i: snapshot, validation metrics, manifest."""
    norm = Normalizer(data.mean, data.std, dev)
    model.to(dev)
    state = model.state_dict()  # the network's own tensors, which each checkpoint overwrites in turn
    records = []
    for i, (number, path) in enumerate(files):
        load_checkpoint(path, state)
        model.load_state_dict(state)  # a module with its own loading code runs it, as for any state dict
        val_loss, val_acc = evaluate(model, data.val_x, data.val_y, norm)
        save_tensors(run.snapshot_file(i), state)
        records.append(
            {
                "epoch": i,
                "step": number if unit == "step" else i,
                "train_loss": None,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "checkpoint": path.name,
                "label": f"{unit} {number} · {path.name}",
            }
        )
        run.write_metrics(records)
        run.write_manifest(i)
        progress("importing", i + 1, len(files))
