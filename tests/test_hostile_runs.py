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

The pieces live beside this file: hostile_damages.py (the values, folders and damages), hostile_strategies.py
(what each property draws) and hostile_readers.py (the forked reader harness, READER_TIMEOUT_S, MEMORY_HEADROOM).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from hostile_damages import ESCAPES, _apply, _make_world, _remove_world, _tree, _writes_outside
from hostile_readers import ALL_READERS, CLI_READERS, UNEXPECTED_LINE, _short, run_readers
from hostile_strategies import damages

# ----------------------------------------------------------------------------- budget
# 30 examples per property: the module takes about 45 s on this 2-core machine when every example
# passes (measured with an intact run, where all 12 readers run to the end: ~0.36 s an example, mostly
# the gallery's matplotlib curves), leaving room for a busy machine within 90 s. A failing property
# stops at its first failing example (no shrinking): about 40 s when all four fail.
EXAMPLES = int(os.environ.get("FEATVIZ_PROPERTY_EXAMPLES", "30"))
COUNTING = os.environ.get("FEATVIZ_PROPERTY_COUNT") == "1"
SHRINK = os.environ.get("FEATVIZ_PROPERTY_SHRINK") == "1"

HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate, Phase.shrink) if SHRINK else (Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ----------------------------------------------------------------------------- the properties
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
    return [
        {"reader": reader, "type": "", "message": "", "where": res.get("where", ""), **v}
        for reader, res in results.items()
        for v in _reader_violations(prop, res)
    ]


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
COUNTS: dict[str, dict[str, Any]] = {
    p: {"tried": 0, "failing": 0, "causes": {}} for p in ("errors", "time", "writes", "escapes")
}
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
        lines.append(
            f"{prop}: {counts['tried']} examples tried, {counts['failing']} failing, "
            f"{len(counts['causes'])} distinct causes ({pairs} reader x cause pairs); an example without "
            f"a hang took {sum(quick) / len(quick):.2f} s on average"
        )
        data[prop] = {"tried": counts["tried"], "failing": counts["failing"], "causes": []}
        for cause, entry in sorted(counts["causes"].items(), key=lambda kv: -kv[1]["count"]):
            damage, message = _smallest(entry["examples"])
            damage = _reduce(prop, cause, base, template, damage)
            readers = ", ".join(
                [r for r in ALL_READERS if r in entry["readers"]] + sorted(entry["readers"] - set(ALL_READERS))
            )
            lines.append(
                f"  [{entry['count']:>3}] {cause}\n        readers: {readers}\n        e.g. {damage!r}"
                f"\n        -> {message[:200]}"
            )
            data[prop]["causes"].append(
                {
                    "cause": cause,
                    "examples": entry["count"],
                    "readers": readers,
                    "example": repr(damage),
                    "message": message[:300],
                }
            )
    return "\n".join(lines), data


# ----------------------------------------------------------------------------- fixtures and tests
@pytest.fixture(scope="module")
def template(tiny_run, tmp_path_factory) -> Path:
    """The tiny run, copied and rendered once (a few AM images, every filter image, the gallery)."""
    from featviz.config import RenderConfig
    from featviz.optvis import RenderSettings
    from featviz.pipeline import render_run
    from featviz.run.store import Run

    dst = tmp_path_factory.mktemp("hostile_template") / "tiny"
    shutil.copytree(tiny_run.path, dst)
    render_run(Run.open(dst), RenderConfig(moments="last", settings=RenderSettings(steps=4, chunk=64)))
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
