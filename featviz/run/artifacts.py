"""What the stages after training write into a run: images under ``renders/`` with their index
``renders.jsonl`` (one ``schema.RenderRecord`` per file), ``analysis.json`` and ``analysis/``, and
``gallery/``. ``RunArtifacts`` is the part of ``featviz.run.store.Run`` that reads and writes them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from featviz.errors import RunError
from featviz.run.fileio import (
    MAX_JSONL,
    atomic_write_bytes,
    atomic_write_json,
    confined,
    read_json,
    read_jsonl,
    read_regular,
    write_jsonl,
)
from featviz.run.lock import locked
from featviz.run.schema import RenderRecord, render_problem


class RunArtifacts:
    """Renders, analysis and gallery files of the run folder ``path`` (a ``Run``)."""

    path: Path

    def file(self, rel: str) -> Path:
        """The run's file ``rel`` (a POSIX path of plain names), reached without any symlink: a RunError
        for a path that would leave the run folder (``fileio.confined``)."""
        return confined(self.path, rel)

    # -- renders (PNGs/GIFs under renders/, one JSON line per image in renders.jsonl)
    def write_artifact(self, area: str, rel: str, data: bytes) -> Path:
        """Write ``<area>/<rel>`` (area: renders | gallery | analysis) atomically.

        Every part of ``rel`` must be a safe name and no folder on the way a symlink, so layer or run
        names never escape the run folder.
        """
        if area not in ("renders", "gallery", "analysis"):
            raise RunError(f"unknown run area {area!r}")
        path = self.file(f"{area}/{rel}")
        atomic_write_bytes(path, data)
        return path

    def rel(self, path: Path) -> str:
        """``path`` inside the run as the POSIX relative path that indexes and the gallery use."""
        return Path(path).relative_to(self.path).as_posix()

    def read_renders(self) -> tuple[list[RenderRecord], list[str]]:
        """Records of renders.jsonl in file order, and one message per damaged line."""
        records, damaged = read_jsonl(self.file("renders.jsonl"), "file", render_problem)
        return [RenderRecord.from_checked_json(r) for r in records], damaged

    def render_index(self) -> list[RenderRecord]:
        """Records of renders.jsonl whose file still exists; damaged lines are skipped."""
        return [r for r in self.read_renders()[0] if self.has_file(r.file)]

    def has_file(self, rel: str) -> bool:
        """``rel`` is a regular file of the run, reached without a symlink."""
        try:
            return stat.S_ISREG(os.lstat(self.file(rel)).st_mode)
        except (RunError, OSError):
            return False

    def add_renders(self, records: list[RenderRecord]) -> None:
        """Add or replace (by file) records in renders.jsonl, atomically, under a lock (several processes
        may render into one run: a live gallery and a background render)."""
        new = {r.file: r for r in records}
        with locked(self.path / ".renders.lock"):
            keep = [r for r in self.render_index() if r.file not in new]
            write_jsonl(self.file("renders.jsonl"), [r.to_json() for r in (*keep, *new.values())])

    def save_render_part(self, rank: int, records: list[RenderRecord]) -> None:
        """One process's render records when several render the run (``featviz.distributed``)."""
        write_jsonl(self.path / f".renders.part{rank}.jsonl", [r.to_json() for r in records])

    def merge_render_parts(self) -> None:
        """Rank 0, once every rank has finished (or before starting: what a crashed render left): every
        part into renders.jsonl, then the parts removed."""
        parts = sorted(self.path.glob(".renders.part*.jsonl"))
        if not parts:
            return
        records = [
            RenderRecord.from_checked_json(rec) for p in parts for rec in read_jsonl(p, "file", render_problem)[0]
        ]
        self.add_renders(records)
        for p in parts:
            p.unlink(missing_ok=True)

    def write_analysis(self, result: dict[str, Any]) -> None:
        """RUN/analysis.json, atomically (featviz analyze)."""
        atomic_write_json(self.file("analysis.json"), result)

    def read_analysis(self) -> dict[str, Any] | None:
        """The last analysis, or None if the run was never analyzed."""
        p = self.file("analysis.json")
        return read_json(p) if os.path.lexists(p) else None

    def read_file_bytes(self, rel: str) -> bytes:
        """Bytes of a file inside the run (for the gallery); the path may not leave the run folder."""
        return read_regular(self.file(rel), MAX_JSONL)
