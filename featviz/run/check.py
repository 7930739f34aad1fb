"""``featviz check RUN``: verify a run folder against its manifest and report every problem found.

What is checked, in order (each problem names the file and what is wrong):

* ``run.json`` parses and describes a featviz run (if not, nothing else can be read: stop there);
* ``manifest.json`` parses (written last after each epoch: it says which epochs are complete);
* every file the manifest lists exists and has the recorded sha256; snapshots also load as
  safetensors with finite values;
* every committed epoch has its snapshot and a line in ``metrics.jsonl``, and every line there parses;
* ``renders.jsonl`` lines parse and the files they name exist.

Notes (not problems): temp files left by an interrupted write, and files of an epoch that was never
committed (``featviz train --resume`` discards both).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from featviz.errors import RunError
from featviz.run.fileio import load_tensors, sha256_file, tensor_header
from featviz.run.renderset import set_status, settings_sets
from featviz.run.store import Run


@dataclass
class CheckReport:
    path: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files_checked: int = 0
    epochs_done: int = -1

    @property
    def ok(self) -> bool:
        return not self.problems


def check_run(path: str | Path) -> CheckReport:
    """Verify the run at ``path``: damage is reported, not raised. A path that is not a run folder at
    all (missing, a file, no run.json) is a RunError, as for every other command."""
    rep = CheckReport(Path(path))
    try:
        run = Run.open(rep.path)
    except RunError as e:
        if not rep.path.is_dir() or not os.path.lexists(rep.path / "run.json"):
            raise  # not a run folder at all: the usual one-line error
        rep.problems.append(str(e))  # a run whose run.json is damaged: reported
        return rep
    rep.files_checked += 1
    if not os.path.lexists(run.path / "manifest.json"):
        rep.problems.append(f"{run.path / 'manifest.json'}: file is missing, so no epoch can be trusted as committed")
        return rep
    try:
        manifest = run.manifest()
        rep.epochs_done = int(manifest["epochs_done"])
        files = dict(manifest["files"])
    except (RunError, TypeError, ValueError) as e:
        rep.problems.append(str(e) if isinstance(e, RunError) else f"{run.path / 'manifest.json'}: malformed ({e})")
        return rep
    rep.files_checked += 1
    for part in (_check_manifest_files, _check_tensor_names, _check_epochs, _check_renders, _check_sets, _notes):
        try:
            part(run, files, rep)
        except RunError as e:  # e.g. a folder of the run replaced by a symlink: a problem, and the rest goes on
            rep.problems.append(str(e))
    return rep


def _check_manifest_files(run: Run, files: dict[str, str], rep: CheckReport) -> None:
    for rel, digest in sorted(files.items()):
        rep.files_checked += 1
        if rel == "metrics.jsonl" and run.has_file(rel):
            _check_metrics_hash(run, rel, digest, rep)
        elif problem := verify_file(run, rel, digest):
            rep.problems.append(problem)


def verify_file(run: Run, rel: str, digest: str) -> str | None:
    """None if the run's file ``rel`` exists and has sha256 ``digest`` (snapshots: and loads as finite
    safetensors); else what is wrong, naming the file."""
    p = run.file(rel)
    if not run.has_file(rel):
        return (
            f"{p}: file is missing (the manifest lists it)"
            if not os.path.lexists(p)
            else f"{p}: not a regular file (the manifest lists it)"
        )
    if rel.endswith(".safetensors"):
        try:
            load_tensors(p, digest)
        except RunError as e:
            return str(e)
        return None
    if sha256_file(p) != digest:
        return f"{p}: checksum does not match the manifest (file is damaged or was edited)"
    return None


def _check_tensor_names(run: Run, files: dict[str, str], rep: CheckReport) -> None:
    """Every snapshot holds the same tensors (names, dtypes, shapes) as the first, whose conv weights
    have the shapes run.json's layer list gives: a snapshot with its hash recomputed after an edit, or
    written by another network, is caught here rather than by a renderer's KeyError."""
    first: tuple[str, dict] | None = None
    for rel in sorted(r for r in files if r.startswith("snapshots/") and r.endswith(".safetensors")):
        try:
            head = tensor_header(run.file(rel))
        except RunError:
            continue  # a damaged or missing file is already reported by its hash
        if first is None:
            first = (rel, head)
            for layer in run.info.layers:
                key, want = f"{layer.name}.weight", tuple(layer.weight_shape)
                if key not in head or head[key][1] != want:
                    got = "missing" if key not in head else list(head[key][1])
                    rep.problems.append(f"{run.path / rel}: {key} is {got}, run.json's layer list says {list(want)}")
        elif head != first[1]:
            name = next(k for k in sorted(set(head) | set(first[1])) if head.get(k) != first[1].get(k))
            rep.problems.append(
                f"{run.path / rel}: tensor {name} differs from {first[0]} (names, dtypes and shapes "
                "must match in every snapshot)"
            )


def _check_metrics_hash(run: Run, rel: str, digest: str, rep: CheckReport) -> None:
    """metrics.jsonl is rewritten just before the manifest: a process killed between the two leaves
    the committed lines (one per epoch 0..epochs_done) intact, followed by the uncommitted epoch's
    line. That is a note, not damage."""
    p = run.file(rel)
    lines = run.read_file_bytes(rel).splitlines(keepends=True)
    committed = rep.epochs_done + 1
    if hashlib.sha256(b"".join(lines)).hexdigest() == digest:
        return
    if len(lines) > committed and hashlib.sha256(b"".join(lines[:committed])).hexdigest() == digest:
        rep.notes.append(
            f"{p}: has {len(lines) - committed} record(s) after the last committed epoch "
            f"{rep.epochs_done} (an interrupted epoch; --resume discards them)"
        )
        return
    rep.problems.append(f"{p}: checksum does not match the manifest (file is damaged or was edited)")


def _check_epochs(run: Run, files: dict[str, str], rep: CheckReport) -> None:
    """Every committed epoch has its snapshot in the manifest and its metrics line (the manifest's
    count is bounded by ``Run.manifest``, so this loop is too)."""
    for e in range(rep.epochs_done + 1):
        rel = f"snapshots/{run.snapshot_file(e).name}"
        if rel not in files:
            rep.problems.append(f"{run.path / rel}: snapshot of committed epoch {e} is not in the manifest")
    p = run.file("metrics.jsonl")
    if not os.path.lexists(p):
        if rep.epochs_done >= 0:
            rep.problems.append(f"{p}: file is missing")
        return
    records, damaged = run.read_metrics()
    rep.problems.extend(damaged)
    seen = {r["epoch"] for r in records}
    missing = [e for e in range(rep.epochs_done + 1) if e not in seen]
    if missing:
        rep.problems.append(f"{p}: no record for committed epoch(s) {', '.join(map(str, missing))}")


def _check_renders(run: Run, files: dict[str, str], rep: CheckReport) -> None:
    records, damaged = run.read_renders()  # a file outside renders/ or the run is a damaged line
    rep.problems.extend(damaged)
    for rec in records:
        if not run.has_file(rec.file):
            rep.problems.append(
                f"{run.path / rec.file}: render file is missing or not a regular file (listed in renders.jsonl)"
            )


def _check_sets(run: Run, files: dict[str, str], rep: CheckReport) -> None:
    """A note per activation-maximization settings set whose last render did not finish, with what it lacks."""
    index = run.render_index()
    for sid in sorted(settings_sets(index)):
        status = set_status(run, index, sid)
        if not status["complete"]:
            lacks = "; ".join(
                f"{m}: " + ", ".join(f"{la} {n}" for la, n in layers.items()) for m, layers in status["missing"].items()
            )
            rep.notes.append(
                f"settings set {sid} is incomplete (a render into it did not finish): it holds {status['images']} "
                f"images at {', '.join(status['moments']) or 'no moment'}; missing {lacks or 'nothing listed'}; "
                "featviz render finishes it"
            )


def _notes(run: Run, files: dict[str, str], rep: CheckReport) -> None:
    for root, dirs, names in os.walk(run.path):  # never follows a symlink out of the run
        for name in sorted(n for n in names if n.startswith(".") and n.endswith(".tmp")):
            rep.notes.append(f"{Path(root, name)}: temp file of an interrupted write (never read; --resume removes it)")
    snaps = run.file("snapshots")
    if snaps.is_dir():
        for p in sorted(snaps.glob("*.safetensors")):
            rel = f"snapshots/{p.name}"
            if rel not in files:
                rep.notes.append(
                    f"{p}: written after the last committed epoch {rep.epochs_done} (ignored; --resume discards it)"
                )
