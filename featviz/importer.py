"""``featviz import``: a folder of checkpoints someone already saved -> a featviz run.

In: a folder of ``.pt``/``.pth``/``.ckpt`` files (read with ``torch.load(weights_only=True)``: plain
tensors and containers only, never arbitrary pickled objects) or ``.safetensors`` files, the model spec
that builds the network, and the data set it was trained on. Each file's number (the step or epoch in
its name; ``pattern`` for unusual names) orders them; the i-th becomes the run's epoch i snapshot,
labelled with its file. A file may hold a bare state dict or one under a common key (``state_dict``
as Lightning writes it, ``model_state_dict``, ``model``, ``net``); a prefix shared by every key
(``model.``, ``module.``) is dropped when the network's own names lack it. Out: a complete run
(``source: import``) with each checkpoint's validation loss and accuracy as its metrics line.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch

from featviz.config import DataConfig, to_dict
from featviz.data import load_data
from featviz.device import resolve_device
from featviz.errors import ConfigError, one_line
from featviz.fileio import load_tensors, nonfinite, save_tensors
from featviz.images import Normalizer
from featviz.layers import trace
from featviz.progress import StageProgress, silent
from featviz.provenance import provenance
from featviz.outputs import check_new_run, check_out_dir
from featviz.store import Run
from featviz.training import evaluate
from featviz.zoo import ModelSpec, build, check_output

SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "weights")
_NUMBERS = (("step", re.compile(r"(?:global_step|step|iter|iteration)[=_-]?(\d+)", re.I)),
            ("epoch", re.compile(r"(?:epoch|ep)[=_-]?(\d+)", re.I)))


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
        raise ConfigError(f"no step or epoch number in the checkpoint name {missing[0]}; pass --pattern REGEX with a "
                          "group around the number")
    bad = next((f"{p.name} (group: {m.group(1)!r})" for m, p in found if m is not None
                and not (m.group(1) or "").strip().isdigit()), None)
    if bad is not None:
        raise ConfigError(f"--pattern {pattern!r}: its group must capture the file's number, not {bad}; "
                          "e.g. 'ckpt_(\\d+)'")
    numbered = sorted((int(m.group(1)), p) for m, p in found if m is not None)
    dupes = [n for (n, _), (m, _) in zip(numbered, numbered[1:]) if n == m]
    if dupes:
        raise ConfigError(f"two checkpoints have the number {dupes[0]}; pass --pattern to tell them apart")
    return numbered, unit


def unnumbered(folder: Path) -> list[str]:
    """Checkpoint files of ``folder`` without a number in their name (left out of an import without --pattern)."""
    return sorted(p.name for p in folder.iterdir() if p.suffix in SUFFIXES and not re.search(r"\d", p.stem))


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, without unpickling anything but tensors and plain containers."""
    if path.suffix == ".safetensors":
        return load_tensors(path, finite=False)  # a damaged file is a RunError naming it; NaNs: _finite
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises pickle's error for refused objects, others for damage
        refused = next((ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln), None)
        if refused is not None:  # a pickled object that is not a tensor or a plain container
            why = refused.split(" Please")[0].replace("WeightsUnpickler error: ", "")
            raise ConfigError(f"{path}: holds more than plain tensors ({one_line(why, 160)}); refusing to unpickle "
                              "it; save model.state_dict() or use safetensors") from None
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((b for a, b in zip(lines, lines[1:]) if a.endswith("WeightsUnpickler error:")), one_line(e, 120))
        raise ConfigError(f"{path}: not a readable PyTorch checkpoint (damaged, or not written by torch.save: "
                          f"{one_line(detail, 120)})") from None
    state = _find_state(obj)
    if state is None:
        raise ConfigError(f"{path}: no state dict found (a dict of tensors, or one under {', '.join(STATE_KEYS)})")
    return state


def _find_state(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, dict):
        for key in STATE_KEYS:
            if key in obj and _find_state(obj[key]) is not None:
                return _find_state(obj[key])
    return None


def match_keys(state: dict[str, torch.Tensor], wanted: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """``state`` renamed to the network's keys (a shared leading prefix dropped if needed), shapes checked."""
    if set(state) != set(wanted):
        for _ in range(2):  # e.g. "model." (Lightning) then "module." (DataParallel)
            heads = {k.split(".", 1)[0] for k in state}
            if len(heads) == 1 and all("." in k for k in state) and set(state) != set(wanted):
                state = {k.split(".", 1)[1]: v for k, v in state.items()}
    missing = [k for k in wanted if k not in state]
    extra = [k for k in state if k not in wanted]
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the model does not"
        raise ConfigError(f"{path.name} does not fit the model: it {what} ({len(missing)} missing, {len(extra)} "
                          "unexpected); check --model and --model-kwargs")
    for k, t in wanted.items():
        if state[k].is_floating_point() != t.is_floating_point():
            raise ConfigError(f"{path.name}: {k} holds {str(state[k].dtype).replace('torch.', '')} values, the model's "
                              f"{str(t.dtype).replace('torch.', '')}; the file does not hold this model's weights")
        if state[k].shape != t.shape:
            raise ConfigError(f"{path.name}: {k} is {list(state[k].shape)}, the model's is {list(t.shape)}; "
                              "check --model-kwargs and --data")
    return state


def _finite(state: dict[str, torch.Tensor], path: Path) -> None:
    bad = nonfinite(state.items())
    if bad is not None:
        raise ConfigError(f"{path.name}: {bad} has NaN or infinite values (training had diverged); move the file out "
                          "of the folder or pass --pattern to skip it")


def import_checkpoints(folder: str | Path, spec: ModelSpec, data_cfg: DataConfig = DataConfig(),
                       out_dir: str | Path = "outputs", name: str | None = None, pattern: str | None = None,
                       force: bool = False, device: str = "auto", progress: StageProgress = silent) -> Run:
    """Build a run from the checkpoints in ``folder`` (see the module docstring); every check, and
    every checkpoint's reading, happens before the run folder is created."""
    folder = Path(folder)
    dev = resolve_device(device)  # every check before any work
    files, unit = checkpoint_files(folder, pattern)
    if len(files) < 2:
        raise ConfigError(f"{folder} has one checkpoint; a run compares at least two (the first and a later one)")
    name = name or f"import-{folder.resolve().name}"
    out = check_out_dir(Path(out_dir))
    check_new_run(out, name, force)
    data = load_data(data_cfg)
    spec = dataclasses.replace(spec, in_channels=data.channels, num_classes=len(data.classes))
    model = build(spec)
    check_output(model, spec, data.size)
    wanted = model.state_dict()
    for i, (_, path) in enumerate(files):  # every file checked before the run exists; none kept in memory
        _finite(match_keys(read_checkpoint(path), wanted, path), path)
        progress("checking checkpoints", i + 1, len(files))
    from featviz.optvis.param import color_matrix_or_none

    color = color_matrix_or_none(data.train_x)
    meta = {"name": name, "seed": None, "source": "import", **provenance(dev),
            "configs": {"data": to_dict(data_cfg), "model": spec.as_dict(), "train": {"epochs": len(files) - 1}},
            "imported": {"folder": str(folder.resolve()), "unit": unit, "files": [p.name for _, p in files],
                         "numbers": [n for n, _ in files], "left_out": [] if pattern else unnumbered(folder)},
            "data": {**data.describe(), "color_matrix": color}, "layers": trace(model, data.channels, data.size),
            "params_total": sum(p.numel() for p in model.parameters())}
    run = Run.create(out, name, meta, force=force)
    norm = Normalizer(data.mean, data.std, dev)
    model.to(dev)
    records = []
    for i, (number, path) in enumerate(files):
        state = match_keys(read_checkpoint(path), wanted, path)
        model.load_state_dict(state)
        val_loss, val_acc = evaluate(model, data.val_x, data.val_y, norm)
        save_tensors(run.snapshot_file(i), state)
        records.append({"epoch": i, "step": number if unit == "step" else i, "train_loss": None, "val_loss": val_loss,
                        "val_acc": val_acc, "checkpoint": path.name, "label": f"{unit} {number} · {path.name}"})
        run.write_metrics(records)
        run.write_manifest(i)
        progress("importing", i + 1, len(files))
    return run
