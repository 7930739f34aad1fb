"""Property-based search for damaged or hostile run folders that break featviz's readers.

Every example starts from a fresh copy of one tiny trained and rendered run (with its gallery) and
damages it with a drawn combination of 1 to 3 of:

* byte flips, truncation or emptying of run.json, manifest.json, metrics.jsonl, renders.jsonl or a snapshot;
* a JSON value (in run.json, manifest.json, a metrics or renders line) replaced by a drawn one: a wrong
  type, a huge number (10,000,000, a 200-digit or a 5,000-digit integer, 1e400), NaN or Infinity, arrays
  or objects nested up to 50,000 deep, a string with terminal escape sequences ("\\x1b[2J") or a lone
  surrogate, a path outside the run;
* a manifest entry or a renders.jsonl ``file`` field pointing outside the run (``../../x``,
  ``/etc/passwd``, an absolute path into a sentinel folder beside the run) or of the wrong type;
* a symlink (to the sentinel folder, to a file in it, to /dev/zero, to /dev/null, dangling), a FIFO or a
  folder in place of a run file or folder.

The readers -- Run.open, Run.manifest, Run.epochs_done, Run.metrics(strict=False), Run.snapshot_points,
Run.render_index, Run.load_snapshot(0), check_run, list_runs, and ``featviz runs --out OUT``,
``featviz check RUN``, ``featviz gallery RUN`` through ``featviz.cli.main.main`` -- must then, one test each:

1. raise nothing but FeatvizError (the CLI: exit code 0 or 1, no "featviz: error: unexpected" line,
   no traceback);
2. finish within READER_TIMEOUT_S seconds and within MEMORY_HEADROOM more memory (a FIFO blocks
   ``open()``; /dev/zero never ends);
3. write nothing outside the run folder: the sentinel folder (which the symlinks point into), the
   output folder and the working directory keep their listing, bytes and mtimes; ``featviz gallery``
   writes only under RUN/gallery/ and never through a symlink out of it;
4. print terminal-safe text: the CLI's output, written to a stream that says it is a terminal (so
   click does not strip escape sequences, as it would not for a user), holds no ESC or other C0
   control character besides newline and tab.

Each example's readers run in a forked child: its address space is capped (RLIMIT_AS), each reader
runs under a SIGALRM timer, and the parent kills a child that stops answering, then runs the remaining
readers in a new child. A hang, a memory blow-up, a crash or an unexpected exception is therefore a
failure that names the reader, the damage and the exception, never a stuck test session.

Budget: EXAMPLES examples per property, derandomized, without shrinking: a failure is reported as
drawn (the damages print readably), so a failing run costs no more than a passing one (Hypothesis may
spend minutes shrinking). FEATVIZ_PROPERTY_SHRINK=1 turns shrinking on for local debugging.

Each violation names the innermost featviz line it happened at: from the exception's traceback, from the
stack the timer interrupted, from a faulthandler dump for a reader stuck where no signal reaches Python,
or, for the CLI's "unexpected" line, from running the command once more with FEATVIZ_TRACEBACK=1.

Counting mode: FEATVIZ_PROPERTY_COUNT=1 makes every property record each failing example instead of
failing, groups the violations into distinct causes (kind -- unexpected exception, hang, memory, write
outside, raw control character -- with the exception type, the featviz line and the message, listing the
readers that show it), reduces each cause's smallest example to a single damage where one suffices, and
prints a summary at the end of the module (FEATVIZ_PROPERTY_COUNT_OUT=FILE also writes it as JSON).
FEATVIZ_PROPERTY_EXAMPLES=N overrides the number of examples.
"""

from __future__ import annotations

import faulthandler
import functools
import hashlib
import io
import json
import os
import re
import resource
import select
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

# ----------------------------------------------------------------------------- budget
# 30 examples per property: the module takes about 45 s on this 2-core machine when every example
# passes (measured with an intact run, where all 12 readers run to the end: ~0.36 s an example, mostly
# the gallery's matplotlib curves), leaving room for a busy machine within 90 s. A failing property
# stops at its first failing example (no shrinking): about 40 s when all four fail.
EXAMPLES = int(os.environ.get("FEATVIZ_PROPERTY_EXAMPLES", "30"))
READER_TIMEOUT_S = 5.0  # the tiny run's slowest reader (a gallery build) takes ~0.3 s; 5 s is a hang
LATER_TIMEOUT_S = 2.0  # once one reader of an example hung, the others (often stuck on the same FIFO) get less
KILL_GRACE_S = 2.0  # past the child's own timer: a reader stuck where no signal reaches Python (Rust's open())
PROCESS_RECURSION_LIMIT = 1000  # CPython's default, which the featviz command runs with
MEMORY_HEADROOM = 1536 << 20  # bytes of address space a child may add; the tiny run needs a few MB
COUNTING = os.environ.get("FEATVIZ_PROPERTY_COUNT") == "1"
SHRINK = os.environ.get("FEATVIZ_PROPERTY_SHRINK") == "1"

HYPOTHESIS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
    phases=(Phase.explicit, Phase.generate, Phase.shrink) if SHRINK else (Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

RUN_REL = "out/tiny"  # the run inside an example's root folder; OUT = root/out is what `featviz runs` lists
SENTINEL_TOKEN = "<SENTINEL>"  # in drawn paths: the example's sentinel folder, known only when applied
LIBRARY_READERS = ("Run.open", "Run.manifest", "Run.epochs_done", "Run.metrics", "Run.snapshot_points",
                   "Run.render_index", "Run.load_snapshot(0)", "check_run", "list_runs")
CLI_READERS = ("featviz runs", "featviz check", "featviz gallery")
ALL_READERS = LIBRARY_READERS + CLI_READERS


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


WRONG_TYPES = [Value(t, t) for t in ("null", "true", "false", "0", "-1", "1.5", '""', '"x"', '"3"', "[]", "{}",
                                     "[1, 2]", '{"a": 1}', '{"file": 5}')]
HUGE = [Value(t, t) for t in ("10000000", "-10000000", "9223372036854775808", "1e308", "1e400", "-1e400")] + [
    Value("a 200-digit integer", "1" + "0" * 199), Value("a 5000-digit integer", "9" * 5000)]
NONFINITE = [Value(t, t) for t in ("NaN", "Infinity", "-Infinity")]
ESCAPES = ["\x1b[2J", "\x1b]0;owned\x07", "red\x1b[31mtext\x1b[0m", "\r\x1b[Kall good", "bell\x07",
           "nul\x00byte", "back\x08space", "\x9b31mcsi", "\ud800"]
PATHS = ["../../sentinel/secret.txt", "../../sentinel", "/etc/passwd", f"{SENTINEL_TOKEN}/secret.txt",
         f"{SENTINEL_TOKEN}/pipe", "renders/../../../sentinel/secret.txt", "/dev/zero", "", "."]

wrong_types = st.sampled_from(WRONG_TYPES)
huge_numbers = st.sampled_from(HUGE + NONFINITE)
deep_values = st.builds(_nested, st.sampled_from("[{"),
                        st.one_of(st.integers(1, 50_000), st.sampled_from([999, 1000, 5000, 50_000])))
escape_values = st.sampled_from(ESCAPES).map(_text_value)
path_values = st.sampled_from(PATHS).map(_text_value)
any_value = st.one_of(wrong_types, huge_numbers, deep_values, escape_values, path_values)


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
        lines[i:i + 1] = [text.encode()]
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
        dest = {"sentinel folder": world.sentinel, "sentinel file": world.sentinel / "secret.txt",
                "dangling": world.sentinel / "missing"}.get(self.dest, self.dest)
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


# ----------------------------------------------------------------------------- damage strategies
# run.json last: Hypothesis draws early elements more often, and a broken run.json hides every other damage
FILES = ["metrics.jsonl", "manifest.json", "renders.jsonl", "snapshots/epoch_000.safetensors",
         "snapshots/step_0000001.safetensors", "snapshots/epoch_002.safetensors", "run.json"]
FOLDERS = ["gallery", "snapshots", "renders", "renders/filters", "state"]
GALLERY_FILES = ["gallery/index.html", "gallery/curves.png"]
SPECIAL_TARGETS = FILES[:-1] + FOLDERS + GALLERY_FILES + ["renders/filters/features.conv2/epoch_002.png", "run.json"]
RUN_SLOTS = [(), ("schema_version",), ("configs",), ("configs", "train"), ("configs", "train", "epochs"),
             ("configs", "data"), ("configs", "data", "size"), ("configs", "data", "name"), ("configs", "model"),
             ("configs", "model", "widths"), ("configs", "model", "pools"), ("layers",), ("layers", 0),
             ("layers", 0, "name"), ("layers", 0, "kernel"), ("layers", 0, "out_ch"), ("layers", 1, "depth"),
             ("recording",), ("name",)]
MANIFEST_SLOTS = [(), ("epochs_done",), ("files",), ("files", "snapshots/epoch_000.safetensors"),
                  ("files", "metrics.jsonl"), ("files", "run.json")]
METRIC_FIELDS = [None, "epoch", "step", "label", "val_acc", "train_loss"]
RENDER_FIELDS = [None, "file", "kind", "layer", "step", "epoch", "label", "channel", "point", "settings", "settings_id",
                 "activation"]
# fields that hold text, where a drawn escape sequence may reach a message or a listing
RUN_TEXT_SLOTS = [("configs", "data", "name"), ("name",), ("layers", 0, "name"), ("configs", "data", "data_dir")]
METRIC_TEXT_FIELDS = ["label", "epoch"]
RENDER_TEXT_FIELDS = ["file", "layer", "kind", "label", "point", "settings_id"]
ENTRY_KEYS = PATHS + ESCAPES + ["snapshots/step_0000003.safetensors", "metrics.jsonl"]
DIGEST = Value("a sha256 of nothing", json.dumps(hashlib.sha256(b"").hexdigest()))


def _json_edits(values: st.SearchStrategy, run_slots: list = RUN_SLOTS, manifest_slots: list = MANIFEST_SLOTS,
                metric_fields: list = METRIC_FIELDS, render_fields: list = RENDER_FIELDS) -> st.SearchStrategy:
    """A drawn value into a drawn slot of run.json or manifest.json, or a field of a metrics or renders line
    (a line index past the end appends a line); an empty slot list leaves that file alone."""
    edits = [
        st.builds(SetLine, st.just("metrics.jsonl"), st.integers(0, 3), st.sampled_from(metric_fields), values),
        st.builds(SetJson, st.just("manifest.json"), st.sampled_from(manifest_slots), values)
        if manifest_slots else None,
        st.builds(SetLine, st.just("renders.jsonl"), st.integers(0, 3), st.sampled_from(render_fields), values),
        st.builds(SetJson, st.just("run.json"), st.sampled_from(run_slots), values),
    ]
    return st.one_of(*[e for e in edits if e is not None])


flips = st.builds(Flip, st.sampled_from(FILES),
                  st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=8).map(tuple))
truncations = st.builds(Truncate, st.sampled_from(FILES), st.floats(0, 1))
emptied = st.builds(Empty, st.sampled_from(FILES))
entries = st.builds(AddEntry, st.sampled_from(ENTRY_KEYS), st.one_of(st.just(DIGEST), any_value))
outside_files = st.builds(SetLine, st.just("renders.jsonl"), st.integers(0, 3), st.just("file"),
                          st.one_of(path_values, wrong_types))
links = st.builds(Symlink, st.sampled_from(SPECIAL_TARGETS), st.sampled_from(LINK_DESTS))
# the gallery is the one reader that writes: its folder and files first
links_out = st.builds(Symlink, st.sampled_from(FOLDERS + GALLERY_FILES + FILES),
                      st.sampled_from(["sentinel folder", "sentinel file"]))
links_dev = st.builds(Symlink, st.sampled_from(SPECIAL_TARGETS), st.sampled_from(["/dev/zero", "/dev/null"]))
fifos = st.builds(Fifo, st.sampled_from(SPECIAL_TARGETS))
folders = st.builds(FolderInPlace, st.sampled_from(FILES))

# Each property draws from many kinds of damage, with the kinds most likely to break it listed more
# than once (st.one_of picks a branch uniformly), so its few examples are spent where they matter.
# Escape sequences go into text fields (the manifest's text is its keys: AddEntry).
escape_text = _json_edits(escape_values, RUN_TEXT_SLOTS, [], METRIC_TEXT_FIELDS, RENDER_TEXT_FIELDS)
FAMILIES = {
    "errors": [_json_edits(any_value), entries, outside_files, flips, truncations, emptied, links, fifos, folders],
    "time": [fifos, links_dev, _json_edits(st.one_of(huge_numbers, deep_values)), fifos, links_dev,
             _json_edits(st.one_of(huge_numbers, deep_values)), flips, truncations, entries, links],
    "writes": [links_out, links_out, outside_files, links_out, entries, _json_edits(path_values), flips, emptied,
               fifos],
    "escapes": [escape_text, st.builds(AddEntry, st.sampled_from(ESCAPES), st.one_of(st.just(DIGEST), any_value)),
                escape_text, _json_edits(escape_values), escape_text, flips, _json_edits(any_value), links],
}


def damages(focus: str) -> st.SearchStrategy:
    return st.lists(st.one_of(*FAMILIES[focus]), min_size=1, max_size=3)


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


# ----------------------------------------------------------------------------- the child: running readers
class ReaderTimeout(BaseException):
    """Raised by the SIGALRM timer; a BaseException so that no ``except Exception`` in featviz hides it.
    ``where``: the deepest featviz function that every stack sample taken at the timeout shares."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


HANG_SAMPLES: list[list[str]] = []  # featviz functions on the stack (outermost first) at each alarm


def _on_alarm(signum: int, frame: Any) -> None:
    """Sample the stack three times, 0.1 s apart, then raise: a reader looping over 2**63 epochs is
    caught at whichever line it happens to run, but the loop's own function is in every sample."""
    stack = []
    while frame is not None:
        code = frame.f_code
        if where := _project_frame(code.co_filename, code.co_name):
            stack.append(where)
        frame = frame.f_back
    HANG_SAMPLES.append(stack[::-1])
    if len(HANG_SAMPLES) < 3:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        return
    shared = ""
    for functions in zip(*HANG_SAMPLES):
        if len(set(functions)) > 1:
            break
        shared = functions[0]
    raise ReaderTimeout(shared)


def _limit_memory() -> None:
    """Cap the child's address space at its current size plus MEMORY_HEADROOM, so reading /dev/zero
    ends in a MemoryError here instead of eating the shared machine's memory."""
    size = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmSize:"))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + MEMORY_HEADROOM, hard))


def _fresh_recursion_limit() -> None:
    """Give the readers the stack headroom of a fresh ``featviz`` process: Hypothesis raises the
    recursion limit while a test runs, which would let json parse nesting a real process cannot."""
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    sys.setrecursionlimit(depth + PROCESS_RECURSION_LIMIT)


@functools.cache
def _project_dirs() -> tuple[str, ...]:
    import featviz.cli as cli
    import featviz

    return tuple(str(Path(m.__file__).parent) + os.sep for m in (featviz, cli))


def _project_frame(filename: str, func: str, line: int | None = None) -> str | None:
    """'featviz/run/fileio.py:187 read_jsonl' (or without the line) for featviz's or the CLI's code, else None."""
    for folder in _project_dirs():
        if filename.startswith(folder):
            return f"{Path(folder).name}/{filename[len(folder):]}{'' if line is None else f':{line}'} {func}"
    return None


def _where(err: BaseException) -> str:
    """The innermost featviz (or CLI) frame of an exception: where the reader failed, or hung."""
    where, tb = "", err.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        where = _project_frame(code.co_filename, code.co_name, tb.tb_lineno) or where
        tb = tb.tb_next
    return where


FAULTHANDLER_FRAME = re.compile(r'File "(.+)", line \d+ in (\S+)')


def _stuck_where(dump: str) -> str:
    """The innermost project function of a faulthandler dump (most recent call first)."""
    for m in FAULTHANDLER_FRAME.finditer(dump):
        if where := _project_frame(m.group(1), m.group(2)):
            return where
    return ""


class _Terminal(io.TextIOWrapper):
    """A UTF-8 text stream that says it is a terminal: click strips escape sequences only from output
    that is not, and the property is about what reaches a user's terminal."""

    def isatty(self) -> bool:
        return True


def _short(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


def _library_call(reader: str, world: World) -> Callable[[], Any]:
    from featviz.run.check import check_run
    from featviz.run.outputs import list_runs
    from featviz.run.store import Run

    run = world.run
    return {
        "Run.open": lambda: Run.open(run),
        "Run.manifest": lambda: Run.open(run).manifest(),
        "Run.epochs_done": lambda: Run.open(run).epochs_done,
        "Run.metrics": lambda: Run.open(run).metrics(strict=False),
        "Run.snapshot_points": lambda: Run.open(run).snapshot_points(),
        "Run.render_index": lambda: Run.open(run).render_index(),
        "Run.load_snapshot(0)": lambda: Run.open(run).load_snapshot(0),
        "check_run": lambda: check_run(run),
        "list_runs": lambda: list_runs(world.out),
    }[reader]


def _cli_argv(reader: str, world: World) -> list[str]:
    return {"featviz runs": ["runs", "--out", str(world.out)], "featviz check": ["check", str(world.run)],
            "featviz gallery": ["gallery", str(world.run)]}[reader]


def _redirect(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _captured_main(argv: list[str], out_path: Path, err_path: Path) -> int:
    """``cli.main.main(argv)`` with stdout and stderr going to files through streams that say they
    are a terminal; afterwards both point at the child's own log again."""
    from featviz.cli.main import main

    for fd, path in ((1, out_path), (2, err_path)):
        new = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(new, fd)
        os.close(new)
    sys.stdout = _Terminal(open(1, "wb", closefd=False), encoding="utf-8", errors="strict", line_buffering=True)
    sys.stderr = _Terminal(open(2, "wb", closefd=False), encoding="utf-8", errors="strict", line_buffering=True)
    try:
        return main(argv)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001 - a half-written surrogate: the bytes before it are what counts
                pass
        _redirect(out_path.with_name("library-output"))
        sys.stdout = sys.stderr = open(1, "w", closefd=False)


def _run_cli(reader: str, world: World, res: dict, timeout: float) -> None:
    """The command as a user's terminal would show it; an "unexpected" error is run once more with
    FEATVIZ_TRACEBACK=1 (the CLI then re-raises) to learn where it happened."""
    out_path, err_path = world.capture / "stdout", world.capture / "stderr"
    try:
        res["code"] = _captured_main(_cli_argv(reader, world), out_path, err_path)
    finally:
        out, err = out_path.read_bytes(), err_path.read_bytes()
        res["stdout"], res["stderr"] = out[-4000:].decode("utf-8", "replace"), err[-4000:].decode("utf-8", "replace")
        res["control"] = _control_lines(out + b"\n" + err)
    if UNEXPECTED_LINE.search(res["stderr"]):
        os.environ["FEATVIZ_TRACEBACK"] = "1"
        HANG_SAMPLES.clear()
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            _captured_main(_cli_argv(reader, world), world.capture / "rerun-out", world.capture / "rerun-err")
        except BaseException as e:  # noqa: BLE001 - the re-raised error, or the timer
            res["where"] = e.where if isinstance(e, ReaderTimeout) else _where(e)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            os.environ.pop("FEATVIZ_TRACEBACK", None)


CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f]")


def _control_lines(data: bytes) -> list[str]:
    """Each output line that holds a C0 control character other than newline and tab."""
    return [line.decode("utf-8", "replace")[:300] for line in data.split(b"\n") if CONTROL.search(line)]


def _call(reader: str, world: World, timeout: float) -> dict:
    """Run one reader under a ``timeout`` s timer; what happened, as plain JSON. faulthandler dumps
    the stack shortly after the timer should have fired, for a reader the timer cannot interrupt."""
    from featviz.errors import FeatvizError

    res: dict[str, Any] = {"reader": reader}
    start = time.monotonic()
    HANG_SAMPLES.clear()
    with open(world.capture / "stuck", "w") as stuck:
        faulthandler.dump_traceback_later(timeout + KILL_GRACE_S / 2, file=stuck)
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                if reader in CLI_READERS:
                    _run_cli(reader, world, res, timeout)
                else:
                    _library_call(reader, world)()
                res["outcome"] = "ok"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except ReaderTimeout as e:
            res.update(outcome="hang", where=e.where)
        except MemoryError as e:
            res.update(outcome="memory", where=_where(e))
        except FeatvizError as e:
            res.update(outcome="featviz error", message=_short(str(e)))
        except BaseException as e:  # noqa: BLE001 - anything else is what the property looks for
            res.update(outcome="unexpected", type=type(e).__name__, message=_short(str(e)), where=_where(e))
        finally:
            faulthandler.cancel_dump_traceback_later()
    res["seconds"] = round(time.monotonic() - start, 3)
    return res


def _send(fd: int, obj: dict) -> None:
    os.write(fd, (json.dumps(obj) + "\n").encode())


def _child(world: World, readers: list[str], fd: int, timeout: float) -> None:
    _fresh_recursion_limit()
    os.chdir(world.cwd)  # a reader writing to a relative path lands in the watched tree
    os.environ.pop("FEATVIZ_TRACEBACK", None)  # the CLI must report, not re-raise
    _redirect(world.capture / "library-output")  # warnings a library reader prints stay out of pytest's
    import featviz.cli.main  # noqa: F401 - before the memory cap: mapping torch's libraries needs more than it leaves
    import featviz.run.check  # noqa: F401

    _limit_memory()
    signal.signal(signal.SIGALRM, _on_alarm)
    for reader in readers:
        _send(fd, {"start": reader, "timeout": timeout})
        before = _tree(world.root)
        res = _call(reader, world, timeout)
        if res["outcome"] == "hang":
            timeout = LATER_TIMEOUT_S
        try:
            res["writes"] = _writes_outside(before, _tree(world.root), reader)
        except MemoryError:
            res["writes"] = []
        _send(fd, res)


def _fork_readers(world: World, readers: list[str], timeout: float) -> list[dict]:
    """Run ``readers`` in one forked child; a reader that stops answering is killed and reported."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 0
        try:
            os.close(r)
            _child(world, readers, w, timeout)
        except BaseException as e:  # noqa: BLE001 - the harness itself failed: say why
            code = 3
            try:
                _send(w, {"error": f"{type(e).__name__}: {_short(str(e))}"})
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(code)
    os.close(w)
    results: list[dict] = []
    current, buf, killed, error = None, b"", False, ""
    deadline = time.monotonic() + timeout + KILL_GRACE_S
    try:
        while True:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                msg = json.loads(line)
                if "error" in msg:
                    error = msg["error"]
                elif "start" in msg:
                    current, timeout = msg["start"], msg["timeout"]
                else:
                    current = None
                    results.append(msg)
                deadline = time.monotonic() + timeout + KILL_GRACE_S
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    if error:
        raise RuntimeError(f"the reader process failed outside any reader: {error}")
    if current is not None:  # started, never answered: stuck where the timer cannot reach, or crashed
        stuck = world.capture / "stuck"
        where = _stuck_where(stuck.read_text(errors="replace")) if stuck.exists() else ""
        if killed:
            results.append({"reader": current, "outcome": "hang", "where": where, "writes": [],
                            "message": f"not interruptible, killed after {timeout + KILL_GRACE_S:.0f} s"})
        else:
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            results.append({"reader": current, "outcome": "crash", "where": where, "writes": [], "message":
                            f"signal {sig}" if sig else f"exit code {os.waitstatus_to_exitcode(status)}"})
    return results


def run_readers(world: World, readers: tuple[str, ...]) -> dict[str, dict]:
    """Every reader's result; after a killed or crashed child the rest run in a new one."""
    done: dict[str, dict] = {}
    while remaining := [x for x in readers if x not in done]:
        hung = any(res["outcome"] == "hang" for res in done.values())
        results = _fork_readers(world, remaining, LATER_TIMEOUT_S if hung else READER_TIMEOUT_S)
        if not results:  # the child died before starting a reader
            done[remaining[0]] = {"reader": remaining[0], "outcome": "crash", "message": "child failed to start",
                                  "writes": []}
        done.update((res["reader"], res) for res in results)
    return done


# ----------------------------------------------------------------------------- the properties
# cli.main's line for an exception it did not expect: the type, then the message before its advice
UNEXPECTED_LINE = re.compile(r"^featviz: error: unexpected (\w+): (.*?)(?: \(a damaged or edited run file.*)?$",
                             re.MULTILINE)


def _cli_unexpected(res: dict) -> tuple[str, str] | None:
    m = UNEXPECTED_LINE.search(res.get("stderr", ""))
    return (m.group(1), m.group(2)) if m else None


def _reader_violations(prop: str, res: dict) -> list[dict]:
    """What one reader's result breaks of property ``prop``: [{kind, type, message}]."""
    outcome, cli_error, out = res["outcome"], _cli_unexpected(res), []
    if prop == "errors":
        if outcome in ("unexpected", "crash"):
            out.append({"kind": outcome, "type": res.get("type", ""), "message": res.get("message", "")})
        if cli_error and cli_error[0] != "MemoryError":  # a MemoryError is the time property's
            out.append({"kind": "unexpected", "type": cli_error[0], "message": cli_error[1]})
        if res.get("code") not in (None, 0, 1):
            out.append({"kind": "exit code", "type": str(res["code"]), "message": _short(res["stderr"], 200)})
        if "Traceback" in res.get("stdout", "") + res.get("stderr", ""):
            out.append({"kind": "traceback printed", "message": _short(res["stderr"], 200)})
    elif prop == "time":
        if outcome in ("hang", "memory"):
            out.append({"kind": outcome, "message": res.get("message", "")})
        elif cli_error and cli_error[0] == "MemoryError":
            out.append({"kind": "memory"})
    elif prop == "writes" and res.get("writes"):
        out.append({"kind": "write outside", "message": ", ".join(res["writes"][:4]), "where": ""})
    elif prop == "escapes" and res.get("control"):
        line = res["control"][0]
        out.append({"kind": "raw control character", "message": repr(line)[:200], "line": line, "where": ""})
    return out


def violations(prop: str, results: dict[str, dict]) -> list[dict]:
    """The violations of property ``prop`` in one example: {reader, kind, type, where, message}."""
    return [{"reader": reader, "type": "", "message": "", "where": res.get("where", ""), **v}
            for reader, res in results.items() for v in _reader_violations(prop, res)]


RUNS_COLUMNS = ((32, "name"), (47, "data"), (55, "epochs"), (64, "val_acc"))  # `featviz runs` row layout


def _printed_cause(v: dict, world_root: str) -> str:
    """Where in the printed text a control character sits, without the drawn string itself."""
    line = v["line"]
    if v["reader"] == "featviz runs" and not line.startswith("featviz:"):  # a row of the listing: its column
        at = re.search(r"[\x00-\x08\x0b-\x1f]", line).start()
        column = next((name for end, name in RUNS_COLUMNS if at < end), "status")
        return f"listing row, {column} column"
    msg = line.replace(world_root, "<root>")
    for s in ESCAPES:
        msg = msg.replace(s, "\x1b")
    return re.sub(r"\S*[\x00-\x08\x0b-\x1f]\S*", "<ctl>", msg)  # each word with a control character


def _cause(v: dict, world_root: str) -> str:
    """A violation without its reader and what varies between examples (paths, numbers, drawn strings,
    type names): readers that fail at the same line of featviz share one cause."""
    if "line" in v:
        msg = _printed_cause(v, world_root)
    else:
        msg = re.sub(r"'" + re.escape(world_root) + r"[^']*'", "'<path>'", v["message"])
        for s in ESCAPES:
            msg = msg.replace(repr(s)[1:-1], "<str>")
    if v["type"] == "TypeError":
        msg = re.sub(r"'\w+'", "'T'", msg)
    msg = re.sub(r"JSON (object|array)", "JSON value", msg)
    msg = re.sub(r"[0-9a-f]{64}", "<sha>", msg)
    msg = " ".join(re.sub(r"\d+", "N", msg).split())
    return " | ".join(x for x in (v["kind"], v["type"], v["where"], msg[:110]) if x)


def _report(damage: list, found: list[dict]) -> str:
    lines = [f"damage: {damage!r}"]
    for v in found:
        at = f"  [at {v['where']}]" if v["where"] else ""
        lines.append(f"  {v['reader']}: {v['kind']} {v['type']} {v['message']}".rstrip() + at)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- counting mode
COUNTS: dict[str, dict[str, Any]] = {p: {"tried": 0, "failing": 0, "causes": {}} for p in
                                     ("errors", "time", "writes", "escapes")}
READERS_OF = {"errors": ALL_READERS, "time": ALL_READERS, "writes": ALL_READERS, "escapes": CLI_READERS}


def check_property(prop: str, base: Path, template: Path, damage: list) -> None:
    """Apply ``damage`` to a fresh run, run the property's readers, then fail (or, counting, record)."""
    start = time.monotonic()
    world = _make_world(base, template)
    try:
        _apply(world, damage)
        before = _tree(world.root)
        results = run_readers(world, READERS_OF[prop])
        _add_unattributed_writes(results, _writes_outside(before, _tree(world.root), ""))
        found = violations(prop, results)
    finally:
        _remove_world(world)
    if COUNTING:
        _record(prop, damage, found, str(world.root), results, time.monotonic() - start)
        return
    if found:
        raise AssertionError(f"property '{prop}' violated\n{_report(damage, found)}")


def _add_unattributed_writes(results: dict[str, dict], writes: list[str]) -> None:
    """Writes outside the run that no reader's own before/after comparison saw: made by a reader whose
    child was killed before it could compare."""
    seen = {w for res in results.values() for w in res.get("writes", [])}
    if missed := [w for w in writes if w not in seen]:
        results["a reader killed mid-way"] = {"outcome": "killed", "writes": missed}


def _record(prop: str, damage: list, found: list[dict], root: str, results: dict, seconds: float) -> None:
    counts = COUNTS[prop]
    counts["tried"] += 1
    counts["failing"] += bool(found)
    if not any(res["outcome"] in ("hang", "memory", "crash") for res in results.values()):
        counts.setdefault("quick_seconds", []).append(seconds)  # what an example costs once readers are fixed
    by_cause: dict[str, list[dict]] = {}
    for v in found:
        by_cause.setdefault(_cause(v, root), []).append(v)
    for cause, vs in by_cause.items():
        entry = counts["causes"].setdefault(cause, {"count": 0, "readers": set(), "examples": []})
        entry["count"] += 1  # examples that show the cause, in however many readers
        entry["readers"].update(v["reader"] for v in vs)
        entry["examples"].append((damage, vs[0]["message"]))


def _smallest(examples: list) -> tuple[list, str]:
    return min(examples, key=lambda ex: (len(ex[0]), len(repr(ex[0]))))


def _reduce(prop: str, cause: str, base: Path, template: Path, damage: list) -> list:
    """A single damage of ``damage`` that alone shows ``cause``, else ``damage`` itself."""
    if len(damage) == 1:
        return damage
    for d in sorted(damage, key=lambda d: len(repr(d))):
        world = _make_world(base, template)
        try:
            _apply(world, [d])
            found = violations(prop, run_readers(world, READERS_OF[prop]))
        finally:
            _remove_world(world)
        if any(_cause(v, str(world.root)) == cause for v in found):
            return [d]
    return damage


def _summary(base: Path, template: Path) -> tuple[str, dict]:
    lines, data = ["", "hostile run folders: failing examples per property (counting mode)"], {}
    for prop, counts in COUNTS.items():
        quick = counts.get("quick_seconds") or [0.0]
        pairs = sum(len(e["readers"]) for e in counts["causes"].values())
        lines.append(f"{prop}: {counts['tried']} examples tried, {counts['failing']} failing, "
                     f"{len(counts['causes'])} distinct causes ({pairs} reader x cause pairs); an example without "
                     f"a hang took {sum(quick) / len(quick):.2f} s on average")
        data[prop] = {"tried": counts["tried"], "failing": counts["failing"], "causes": []}
        for cause, entry in sorted(counts["causes"].items(), key=lambda kv: -kv[1]["count"]):
            damage, message = _smallest(entry["examples"])
            damage = _reduce(prop, cause, base, template, damage)
            readers = ", ".join([r for r in ALL_READERS if r in entry["readers"]]
                                + sorted(entry["readers"] - set(ALL_READERS)))
            lines.append(f"  [{entry['count']:>3}] {cause}\n        readers: {readers}\n        e.g. {damage!r}"
                         f"\n        -> {message[:200]}")
            data[prop]["causes"].append({"cause": cause, "examples": entry["count"], "readers": readers,
                                         "example": repr(damage), "message": message[:300]})
    return "\n".join(lines), data


# ----------------------------------------------------------------------------- fixtures and tests
@pytest.fixture(scope="module")
def template(tiny_run, tmp_path_factory) -> Path:
    """The tiny run, copied and rendered once (a few AM images, every filter image, the gallery)."""
    from featviz.config import RenderConfig
    from featviz.pipeline import render_run
    from featviz.run.store import Run

    dst = tmp_path_factory.mktemp("hostile_template") / "tiny"
    shutil.copytree(tiny_run.path, dst)
    render_run(Run.open(dst), RenderConfig(steps=4, chunk=64, epochs="last"))
    import featviz.cli.main  # noqa: F401 - imported before forking, so each child starts warm

    return dst


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Where each example's folders are made (and removed again)."""
    return tmp_path_factory.mktemp("hostile_examples")


@pytest.fixture(scope="module", autouse=True)
def counting_summary(request, template, base):
    """Counting mode: the summary of every property's failing examples, after the module's tests."""
    yield
    if not COUNTING:
        return
    text, data = _summary(base, template)
    reporter = request.config.pluginmanager.getplugin("terminalreporter")  # past pytest's output capture
    for line in text.splitlines():
        if reporter:
            reporter.write_line(line)
        else:
            print(line)
    if out := os.environ.get("FEATVIZ_PROPERTY_COUNT_OUT"):
        Path(out).write_text(json.dumps(data, indent=2))


@HYPOTHESIS
@given(damage=damages("errors"))
def test_readers_raise_only_featviz_errors(template: Path, base: Path, damage: list) -> None:
    check_property("errors", base, template, damage)


@HYPOTHESIS
@given(damage=damages("time"))
def test_readers_finish_in_time_and_memory(template: Path, base: Path, damage: list) -> None:
    check_property("time", base, template, damage)


@HYPOTHESIS
@given(damage=damages("writes"))
def test_readers_write_nothing_outside_the_run(template: Path, base: Path, damage: list) -> None:
    check_property("writes", base, template, damage)


@HYPOTHESIS
@given(damage=damages("escapes"))
def test_cli_output_is_terminal_safe(template: Path, base: Path, damage: list) -> None:
    check_property("escapes", base, template, damage)
