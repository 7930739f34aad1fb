"""One checkpoint file, read into a network's own tensors without pickle (``featviz import`` reads a
folder of them through ``featviz.importer``).

A ``.pt``/``.pth``/``.ckpt`` file is read with ``torch.load(weights_only=True)`` (plain tensors and
containers only, never arbitrary pickled objects); a ``.safetensors`` file through its header. A file
may hold a bare state dict or one under a common key (``STATE_KEYS``), at most ``MAX_DEPTH`` levels
down; a prefix shared by every key (``model.``, ``module.``) is dropped when the names then fit the
network better.

Each tensor is stored in the dtype of the network's own tensor (float16 or bfloat16 weights become
float32 and an int32 counter int64, both exactly), so every snapshot has the network's names, dtypes
and shapes, as a trained run's snapshots do, whatever mix of precisions the checkpoints were saved in.

Reading a checkpoint costs one block of memory beyond the network, whatever the file's size:
safetensors files and torch's zip format are memory-mapped, every name, dtype and shape is checked
from the file's header (torch: its tensor records) before any tensor data is read, and only the
network's tensors are read, a block at a time, straight into the network's own tensors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from featviz.errors import ConfigError, RunError, one_line
from featviz.run.fileio import nonfinite, open_safetensors

STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "weights")
MAX_DEPTH = 5  # levels of STATE_KEYS above a state dict; real checkpoints use one or two
_BLOCK = 64 << 20  # bytes of a checkpoint read at once: memory beyond the network's own stays below this
Header = dict[str, tuple[torch.dtype, tuple[int, ...]]]  # tensor name -> (dtype, shape)
_ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "C64": "complex64",
}
# torch's weights-only unpickler names what it refused: "unsupported GLOBAL posix.system whose module
# ... is blocked", "Unsupported global: GLOBAL getattr was not an allowed global", "Can only build
# Tensor, Parameter, ... but got <class 'x.Y'>"
_REFUSALS = (
    re.compile(r"\bglobal\s+([^\s'\"`]+)", re.IGNORECASE),
    re.compile(r"\bcan only (?:build|create)\b.*?\bbut got\s+(?:<class\s+')?([^\s'\"`>]+)", re.IGNORECASE),
)


def open_checkpoint(path: Path) -> tuple[Header, Callable[[str], Any]]:
    """(header, source) of checkpoint ``path``: ``header`` gives each tensor's (dtype, shape) with no
    tensor data read (safetensors: its header; torch's zip format: memory-mapped, so data is read when
    used; torch's legacy format cannot be mapped and is read whole); ``source(name)[index]`` reads the
    rows ``index`` (a slice, or ``...`` for all) of one tensor. Nothing but tensors and plain containers
    is ever unpickled; anything else, or damage, is a ConfigError naming the file."""
    if path.suffix == ".safetensors":
        try:
            header, f = open_safetensors(path)
        except RunError as e:  # one kind of error for every bad checkpoint
            raise ConfigError(str(e)) from None
        return {k: (_st_dtype(d, k, path), s) for k, (d, s) in header.items()}, f.get_slice
    state = _find_state(_torch_load(path), path)
    return {k: (v.dtype, tuple(v.shape)) for k, v in state.items()}, state.__getitem__


def _st_dtype(name: str, key: str, path: Path) -> torch.dtype:
    dtype = getattr(torch, _ST_DTYPES.get(name, ""), None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"{path}: {_clip(key, 120)} has dtype {_clip(name, 20)}, which featviz cannot read")
    return dtype


def _torch_load(path: Path) -> Any:
    """What ``torch.save`` wrote to ``path``, with ``weights_only`` (tensors and plain containers only);
    memory-mapped when the file is in torch's zip format, which every torch since 1.6 writes."""
    try:
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as e:  # noqa: BLE001 - torch raises pickle's error for refused objects, others for damage
        refused = _refused(str(e)) if type(e).__name__ == "UnpicklingError" else None  # pickle's, not imported
        if refused is not None:
            raise ConfigError(
                f"{path}: holds more than plain tensors (its pickle asks for {refused}); refusing to "
                "unpickle it; save model.state_dict() or use safetensors"
            ) from None
        raise ConfigError(
            f"{path}: not a readable PyTorch checkpoint (damaged, or not written by torch.save: {_damage(e)})"
        ) from None


def _refused(text: str) -> str | None:
    """What torch's weights-only unpickler refused (a global such as ``posix.system``, or the class it
    would have built), from its error text; None if the text is about something else (damage).
    Matched case-insensitively: torch's wording and capitals change between versions."""
    for rx in _REFUSALS:
        m = rx.search(text)
        if m:
            return _clip(m.group(1).rstrip(".,;:"), 80)
    return None


def _damage(e: Exception) -> str:
    """The part of a load error that says what is wrong with the file, without torch's advice around it."""
    text = re.split(r"WeightsUnpickler error:", str(e), flags=re.IGNORECASE)[-1]
    text = re.split(r"\n\s*Check the documentation", text, flags=re.IGNORECASE)[0]
    return _clip(text if text.strip() else type(e).__name__, 120)


def _clip(text: Any, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters: cut at the last space that fits and marked
    with "…", so no word is cut; only a single word longer than ``limit`` is cut inside itself."""
    text = one_line(text)
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    if text[limit - 1] != " " and " " in head:  # the cut falls inside a word: drop that word whole
        head = head.rsplit(" ", 1)[0]
    return head.rstrip() + "…"


def _find_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The shallowest dict of named tensors in ``obj``: ``obj`` itself or one under ``STATE_KEYS``, at most
    ``MAX_DEPTH`` levels down. Searched level by level, each dict once (a file can share one dict under
    many keys, or nest dicts in a loop), so the time is linear in the file and bounded by the depth."""
    level: list[Any] = [obj]
    seen: set[int] = set()
    for _ in range(MAX_DEPTH + 1):
        below = []
        for d in level:
            if not isinstance(d, dict) or id(d) in seen:
                continue
            seen.add(id(d))
            if d and all(isinstance(k, str) and torch.is_tensor(v) for k, v in d.items()):
                return dict(d)
            below += [d[k] for k in STATE_KEYS if isinstance(d.get(k), dict)]
        if not below:
            raise ConfigError(f"{path}: no state dict found (a dict of tensors, or one under {', '.join(STATE_KEYS)})")
        level = below
    raise ConfigError(
        f"{path}: no state dict within {MAX_DEPTH} levels, and dicts under {', '.join(STATE_KEYS)} "
        "nest deeper; save model.state_dict() itself"
    )


def match_keys(names: Iterable[str], wanted: Mapping[str, Any], path: Path) -> dict[str, str]:
    """The network's key -> the file's key for each of ``wanted``: the file's names as written, or with a
    leading prefix that every one of them shares dropped (``model.`` as Lightning writes it, then
    ``module.`` as DataParallel does), whichever fits the network's names best; a prefix is dropped
    only when that fits strictly better. A misfit is a ConfigError naming a key the file really lacks
    (under either naming), else one it really has that the network lacks."""
    names = list(names)
    best = max(_prefixes(names), key=lambda p: (sum(n[len(p) :] in wanted for n in names), -len(p)))
    rename = {n[len(best) :]: n for n in names}
    missing = [k for k in wanted if k not in rename]
    extra = [n for k, n in rename.items() if k not in wanted]
    if not missing and not extra:
        return {k: rename[k] for k in wanted}
    have = set(names)
    lacks = next((k for k in missing if k not in have), None)
    has = next((n for n in extra if n not in wanted), None)
    if lacks is None and has is None:  # true of the names as written, whatever the prefix
        lacks = next((k for k in wanted if k not in have), None)
        has = next((n for n in names if n not in wanted), None)
    what = f"lacks {_clip(lacks, 120)}" if lacks is not None else f"has {_clip(has, 120)}, which the model does not"
    dropped = f", after dropping {_clip(best, 60)!r} from its names" if best else ""
    raise ConfigError(
        f"{path.name} does not fit the model: it {what} ({len(missing)} missing, {len(extra)} "
        f"unexpected{dropped}); check --model and --model-kwargs"
    )


def _prefixes(names: list[str]) -> list[str]:
    """ "" and each leading prefix that every one of ``names`` shares, shortest first (two at most)."""
    out = [""]
    for _ in range(2):
        rest = [n[len(out[-1]) :] for n in names]
        heads = {r.split(".", 1)[0] for r in rest}
        if len(heads) != 1 or not all("." in r for r in rest):
            break
        out.append(out[-1] + heads.pop() + ".")
    return out


def check_header(header: Header, keys: dict[str, str], wanted: Mapping[str, torch.Tensor], path: Path) -> None:
    """Each of the network's tensors has its counterpart's shape and kind of values (floating point or
    not: integers where the network has floats are some other data, not its weights)."""
    for k, t in wanted.items():
        dtype, shape = header[keys[k]]
        if (dtype.is_floating_point, dtype.is_complex) != (t.is_floating_point(), t.is_complex()):
            raise ConfigError(
                f"{path.name}: {k} holds {_name(dtype)} values, the model's {_name(t.dtype)}; the file "
                "does not hold this model's weights"
            )
        if shape != tuple(t.shape):
            raise ConfigError(
                f"{path.name}: {k} is {list(shape)}, the model's is {list(t.shape)}; check --model-kwargs and --data"
            )


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def load_checkpoint(path: Path, into: Mapping[str, torch.Tensor]) -> None:
    """Overwrite the network's tensors ``into`` (its ``state_dict()``, which shares the modules' storage)
    with checkpoint ``path``'s values, each converted to the network's dtype. Every name, dtype and
    shape is checked before any tensor data is read; then only the network's tensors are read, at most
    ``_BLOCK`` bytes at a time, so memory holds the network and one block whatever the file's size
    (torch's legacy format, which cannot be mapped, is read whole first).
    NaN or infinite values, or values the network's dtype cannot hold, are a ConfigError naming the
    file and the tensor (``into`` is then partly overwritten)."""
    header, source = open_checkpoint(path)
    keys = match_keys(header, into, path)
    check_header(header, keys, into, path)
    with torch.no_grad():
        for k, dst in into.items():
            src = source(keys[k])
            for index in _blocks(dst.shape, header[keys[k]][0].itemsize):
                dst[index] = _conform(src[index], dst.dtype, k, path)


def _blocks(shape: torch.Size, itemsize: int) -> Iterator[Any]:
    """Indexes covering a tensor of ``shape`` in blocks of whole leading rows of at most ``_BLOCK``
    bytes (a single row can be larger): ``...`` (all of it) when it fits in one block."""
    row = itemsize * math.prod(shape[1:])
    if not shape or row * shape[0] <= _BLOCK:
        yield ...
        return
    step = max(1, _BLOCK // row)
    for start in range(0, shape[0], step):
        yield slice(start, start + step)


def _conform(t: torch.Tensor, dtype: torch.dtype, key: str, path: Path) -> torch.Tensor:
    """``t`` (a block of the file's tensor ``key``) in ``dtype``: a wider dtype holds every value exactly
    (float16 -> float32, int32 -> int64); a narrower one rounds floats as loading them into the network
    would, but an overflow is refused, as are NaN and infinite values in the file."""
    if nonfinite([(key, t)]) is not None:
        raise ConfigError(
            f"{path.name}: {key} has NaN or infinite values (training had diverged); move the file out "
            "of the folder or pass --pattern to skip it"
        )
    if t.dtype == dtype:
        return t
    out = t.to(dtype)
    fits = nonfinite([(key, out)]) is None if out.is_floating_point() else torch.equal(out.to(t.dtype), t)
    if not fits:
        raise ConfigError(
            f"{path.name}: {key} holds {_name(t.dtype)} values that the model's {_name(dtype)} cannot "
            "hold; the file does not hold this model's weights"
        )
    return out
