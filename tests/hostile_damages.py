"""Damaged run folders for test_hostile_runs.py: hostile JSON values, the folders, the damages, the file tree."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_REL = "out/tiny"  # the run inside an example's root folder; OUT = root/out is what `featviz runs` lists
SENTINEL_TOKEN = "<SENTINEL>"  # in drawn paths: the example's sentinel folder, known only when applied


# ----------------------------------------------------------------------------- hostile JSON values
@dataclass(frozen=True)
class Value:
    """A JSON value kept as text, so NaN, a 5,000-digit integer or 50,000-deep nesting can be written
    into a file; ``label`` is what a failure report shows instead of the (possibly huge) text."""

    label: str
    text: str

    def __repr__(self) -> str:
        return self.label

    def json(self, world: World) -> str:
        return self.text.replace(SENTINEL_TOKEN, str(world.sentinel))


def _text_value(s: str) -> Value:
    return Value(repr(s), json.dumps(s))


def _nested(bracket: str, depth: int) -> Value:
    text = "[" * depth + "]" * depth if bracket == "[" else '{"a":' * depth + "0" + "}" * depth
    return Value(f"{bracket * 2}...nested {depth} deep", text)


WRONG_TYPES = [
    Value(t, t)
    for t in (
        "null",
        "true",
        "false",
        "0",
        "-1",
        "1.5",
        '""',
        '"x"',
        '"3"',
        "[]",
        "{}",
        "[1, 2]",
        '{"a": 1}',
        '{"file": 5}',
    )
]
HUGE = [Value(t, t) for t in ("10000000", "-10000000", "9223372036854775808", "1e308", "1e400", "-1e400")] + [
    Value("a 200-digit integer", "1" + "0" * 199),
    Value("a 5000-digit integer", "9" * 5000),
]
NONFINITE = [Value(t, t) for t in ("NaN", "Infinity", "-Infinity")]
ESCAPES = [
    "\x1b[2J",
    "\x1b]0;owned\x07",
    "red\x1b[31mtext\x1b[0m",
    "\r\x1b[Kall good",
    "bell\x07",
    "nul\x00byte",
    "back\x08space",
    "\x9b31mcsi",
    "\ud800",
]
PATHS = [
    "../../sentinel/secret.txt",
    "../../sentinel",
    "/etc/passwd",
    f"{SENTINEL_TOKEN}/secret.txt",
    f"{SENTINEL_TOKEN}/pipe",
    "renders/../../../sentinel/secret.txt",
    "/dev/zero",
    "",
    ".",
]


# ----------------------------------------------------------------------------- one example's folders
@dataclass(frozen=True)
class World:
    """root/out/tiny (the damaged run), root/sentinel (outside it; symlinks point here), root/cwd (the
    readers' working directory), and a capture folder beside root for the CLI's output."""

    root: Path
    capture: Path

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def run(self) -> Path:
        return self.root / RUN_REL

    @property
    def sentinel(self) -> Path:
        return self.root / "sentinel"

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"


def _make_world(base: Path, template: Path) -> World:
    world = World(Path(tempfile.mkdtemp(dir=base, prefix="ex")), Path(tempfile.mkdtemp(dir=base, prefix="cap")))
    shutil.copytree(template, world.run, symlinks=True)
    world.sentinel.mkdir()
    (world.sentinel / "secret.txt").write_text('{"secret": "outside the run"}\n')
    (world.sentinel / "sub").mkdir()
    (world.sentinel / "sub" / "keep.txt").write_text("keep\n")
    os.mkfifo(world.sentinel / "pipe")  # an absolute path to it must not block a reader either
    world.cwd.mkdir()
    return world


def _remove_world(world: World) -> None:
    for folder in (world.root, world.capture):  # rmtree unlinks symlinks, never follows them
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- damages
def _inside(world: World, rel: str) -> Path | None:
    """``run/rel`` if every folder on the way is a real folder (not a symlink an earlier damage left):
    a damage must never write through a link into the sentinel."""
    p = world.run
    for part in rel.split("/")[:-1]:
        p = p / part
        try:
            if not stat.S_ISDIR(os.lstat(p).st_mode):
                return None
        except OSError:
            return None
    return p / rel.split("/")[-1]


def _regular(world: World, rel: str) -> Path | None:
    p = _inside(world, rel)
    try:
        return p if p is not None and stat.S_ISREG(os.lstat(p).st_mode) else None
    except OSError:
        return None


def _clear(world: World, rel: str) -> Path | None:
    """Remove whatever is at ``run/rel`` (file, link, FIFO or folder) so something else can take its place."""
    p = _inside(world, rel)
    if p is None:
        return None
    try:
        mode = os.lstat(p).st_mode
    except FileNotFoundError:
        return p
    if stat.S_ISDIR(mode):
        shutil.rmtree(p)
    else:
        p.unlink()
    return p


PLACEHOLDER = "\uffffHOSTILE\uffff"


def _with_value(doc: Any, slot: tuple, value_text: str, indent: int | None = 2) -> str | None:
    """``doc`` as JSON text with the value at ``slot`` (keys/indexes) replaced by ``value_text``."""
    if not slot:
        return value_text
    try:
        parent = doc
        for key in slot[:-1]:
            parent = parent[key]
        if isinstance(parent, list) and not -len(parent) <= slot[-1] < len(parent):
            return None
        parent[slot[-1]] = PLACEHOLDER
    except (KeyError, IndexError, TypeError):
        return None
    return json.dumps(doc, indent=indent).replace(json.dumps(PLACEHOLDER), value_text, 1)


def _load_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except Exception:  # noqa: BLE001 - an earlier damage left it unreadable (too deep, too long a number)
        return None


@dataclass(frozen=True)
class Flip:
    target: str
    flips: tuple  # (position as a fraction of the file, byte to xor)

    def apply(self, world: World) -> None:
        p = _regular(world, self.target)
        data = bytearray(p.read_bytes()) if p else b""
        if not data:
            return
        for frac, xor in self.flips:
            data[min(int(frac * len(data)), len(data) - 1)] ^= xor
        p.write_bytes(bytes(data))


@dataclass(frozen=True)
class Truncate:
    target: str
    keep: float  # fraction of the bytes kept

    def apply(self, world: World) -> None:
        if p := _regular(world, self.target):
            data = p.read_bytes()
            p.write_bytes(data[: int(len(data) * self.keep)])


@dataclass(frozen=True)
class Empty:
    target: str

    def apply(self, world: World) -> None:
        if p := _regular(world, self.target):
            p.write_bytes(b"")


@dataclass(frozen=True)
class SetJson:
    """run.json or manifest.json with the value at ``slot`` replaced (``()``: the whole document)."""

    target: str
    slot: tuple
    value: Value

    def apply(self, world: World) -> None:
        p = _regular(world, self.target)
        if p is None:
            return
        doc = _load_json(p.read_bytes()) if self.slot else None
        if self.slot and doc is None:
            return  # an earlier damage left nothing to edit
        if (text := _with_value(doc, self.slot, self.value.json(world))) is not None:
            p.write_text(text + "\n")


@dataclass(frozen=True)
class SetLine:
    """A line of a JSON-lines file (an index past the end appends one) with ``field`` replaced, or the
    whole line when ``field`` is None."""

    target: str
    line: int
    field: str | None
    value: Value

    def apply(self, world: World) -> None:
        p = _regular(world, self.target)
        lines = p.read_bytes().splitlines() if p else []
        if not lines:
            return
        i = min(self.line, len(lines))
        if self.field is None:
            text = self.value.json(world)
        else:
            rec = _load_json(lines[min(i, len(lines) - 1)])
            text = _with_value(rec, (self.field,), self.value.json(world), None) if isinstance(rec, dict) else None
            if text is None:
                return
        lines[i : i + 1] = [text.encode()]
        p.write_bytes(b"\n".join(lines) + b"\n")


@dataclass(frozen=True)
class AddEntry:
    """A manifest ``files`` entry: ``key`` (a path, possibly outside the run) -> ``value``."""

    key: str
    value: Value

    def apply(self, world: World) -> None:
        p = _regular(world, "manifest.json")
        doc = _load_json(p.read_bytes()) if p else None
        if isinstance(doc, dict) and isinstance(doc.get("files"), dict):
            key = self.key.replace(SENTINEL_TOKEN, str(world.sentinel))
            text = _with_value(doc, ("files", key), self.value.json(world))
            p.write_text(text + "\n")


LINK_DESTS = ("sentinel folder", "sentinel file", "/dev/zero", "/dev/null", "dangling")


@dataclass(frozen=True)
class Symlink:
    target: str
    dest: str  # one of LINK_DESTS

    def apply(self, world: World) -> None:
        dest = {
            "sentinel folder": world.sentinel,
            "sentinel file": world.sentinel / "secret.txt",
            "dangling": world.sentinel / "missing",
        }.get(self.dest, self.dest)
        if p := _clear(world, self.target):
            os.symlink(dest, p)


@dataclass(frozen=True)
class Fifo:
    target: str

    def apply(self, world: World) -> None:
        if p := _clear(world, self.target):
            os.mkfifo(p)


@dataclass(frozen=True)
class FolderInPlace:
    target: str

    def apply(self, world: World) -> None:
        if p := _clear(world, self.target):
            p.mkdir()


def _apply(world: World, damages: list) -> None:
    for d in damages:
        d.apply(world)


# ----------------------------------------------------------------------------- the file tree, for writes
def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _under(rel: str, folder: str) -> bool:
    return rel == folder or rel.startswith(folder + "/")


def _tree(root: Path) -> dict[str, tuple]:
    """rel path -> (type, mode, size, mtime, inode[, link target | sha256]) of everything under ``root``,
    never following a symlink and never opening anything but a regular file outside the run."""
    out: dict[str, tuple] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries_ = list(os.scandir(root / rel))
        except OSError:
            continue
        for e in entries_:
            r = f"{rel}/{e.name}" if rel else e.name
            try:
                s = e.stat(follow_symlinks=False)
            except OSError:
                continue
            sig: tuple = (stat.S_IFMT(s.st_mode), s.st_mode, s.st_size, s.st_mtime_ns, s.st_ino)
            if stat.S_ISLNK(s.st_mode):
                sig += (os.readlink(e.path),)
            elif stat.S_ISDIR(s.st_mode):
                stack.append(r)
            elif stat.S_ISREG(s.st_mode) and not _under(r, RUN_REL):
                sig += (_sha(e.path),)
            out[r] = sig
    return out


def _writes_outside(before: dict, after: dict, reader: str) -> list[str]:
    """Paths (relative to the example's root) that changed where ``reader`` may not write."""
    allowed = RUN_REL + "/gallery" if reader == "featviz gallery" else RUN_REL
    bad = []
    for rel in sorted(before.keys() | after.keys()):
        if before.get(rel) == after.get(rel) or _under(rel, allowed):
            continue
        if rel == RUN_REL and before.get(rel, (None,))[0] == after.get(rel, (None,))[0] == stat.S_IFDIR:
            continue  # the run folder's own mtime: gallery/ was (re)created in it
        what = "added" if rel not in before else "removed" if rel not in after else "changed"
        bad.append(f"{rel} {what}")
    return bad
