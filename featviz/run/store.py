"""The run folder: the ``Run`` class, the only code that knows where a run keeps what.

Layout (schema 2; the content of run.json and renders.jsonl is typed in ``featviz.run.schema``)::

    RUN/run.json                      configs, seed, versions, git sha, device, data, layers (``RunInfo``)
    RUN/metrics.jsonl                 one JSON line per finished epoch (epoch 0 = the init)
    RUN/snapshots/epoch_003.safetensors   model tensors after epoch 3; step_0000150.* with --snapshot-every-steps
    RUN/state/epoch_003.safetensors   optimizer state + RNG state for resuming (structure in .json beside it)
    RUN/probe.safetensors             runs recorded from the user's own loop: the probe images (uint8) and labels
    RUN/manifest.json                 written LAST after each epoch: epochs done + sha256 of every file
    RUN/renders.jsonl, renders/, analysis.json, analysis/, gallery/   written by render, analyze, gallery

Invariants: every byte goes through ``featviz.run.fileio`` (atomic writes, no pickle); an epoch counts as
done only once the manifest says so; names from users never leave the run folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, TypeVar

import torch

from featviz.errors import ConfigError, RunError
from featviz.run.artifacts import RunArtifacts
from featviz.run.fileio import (
    atomic_write_json,
    load_tensors,
    not_a_file,
    read_json,
    read_jsonl,
    save_tensors,
    sha256_file,
    write_jsonl,
)
from featviz.run.lock import RunLock
from featviz.run.outputs import check_new_run, empty_run_folder
from featviz.run.records import manifest_problem, metric_problem, read_run_info
from featviz.run.schema import RunInfo, SnapshotPoint
from featviz.schedule import label

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
_STEP_FILE = re.compile(r"snapshots/step_(\d+)\.safetensors")
TRAIN_FILES = ("run.json", "metrics.jsonl", "manifest.json", "probe.safetensors")  # the top-level files training writes


# ----------------------------------------------------------------------------- the run
class Run(RunArtifacts):
    """A run directory. ``Run.create`` starts one, ``Run.open`` validates and opens one."""

    def __init__(self, path: Path, info: RunInfo) -> None:
        self.path = Path(path)
        self.info = info  # run.json (``featviz.run.schema``)
        self.model_access: tuple[str | None, bool] = (None, False)  # --model / --trust-run-code (featviz.loading)
        self._locks: list[RunLock] = []  # the writer locks this object holds (create, hold)

    # -- creation / opening
    @classmethod
    def create(
        cls, out_dir: Path, name: str, info: RunInfo, force: bool = False, reading: Iterable[Path] = ()
    ) -> "Run":
        """Make ``out_dir/name`` and write ``info`` as its run.json. An existing run is an error unless ``force``, which
        replaces only a run featviz made and none that holds a path in ``reading`` (``outputs``). The
        returned run holds the run's ``train`` lock (``featviz.run.lock``) until ``release()``: a second
        writer, or a second replacement, is refused in one line while this one writes."""
        path = check_new_run(out_dir, name, force, reading)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot create {path}: {e.strerror or e}") from None
        if not os.access(path, os.W_OK):
            raise RunError(f"cannot write {path}: folder is not writable")
        train = RunLock(path, "train")
        try:
            with RunLock(path, "outputs"):  # nobody renders into the run being replaced
                check_new_run(out_dir, name, force, reading)  # again: nobody else can change it now
                empty_run_folder(path)
                run = cls(path, info)
                atomic_write_json(path / "run.json", info.to_json())
                run.write_manifest(-1)
        except BaseException:
            train.release()
            raise
        run._locks.append(train)
        return run

    def hold(self, role: str) -> RunLock:
        """Take the run's ``role`` lock (``featviz.run.lock``: "train" or "outputs") until ``release()``;
        a RunError naming the holder if another writer has it."""
        lock = RunLock(self.path, role)
        self._locks.append(lock)
        return lock

    def release(self) -> None:
        """Release every lock this object holds (idempotent)."""
        while self._locks:
            self._locks.pop().release()

    @classmethod
    def open(cls, path: Path) -> "Run":
        """Open an existing run; a folder without a valid run.json is a RunError."""
        path = Path(path)
        if not path.exists():
            raise RunError(f"run {path} does not exist")
        if not path.is_dir():
            raise RunError(f"{path} is a file, not a run folder")
        return cls(path, read_run_info(path))

    @classmethod
    def of(cls, run: "Run | str | os.PathLike[str]") -> "Run":
        """``run`` itself, or the run opened at that path: the API's functions take either."""
        if isinstance(run, Run):
            return run
        if isinstance(run, (str, os.PathLike)):
            return cls.open(Path(run))
        raise ConfigError(f"expected a Run or a run folder's path, got {type(run).__name__}")

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def meta(self) -> dict[str, Any]:
        """run.json as it is on disk (a fresh dict); stages read the typed ``info``."""
        return self.info.to_json()

    def update_info(self, info: RunInfo) -> None:
        """Replace run.json with ``info``, atomically (a recorded run learns its length when its loop ends)."""
        atomic_write_json(self.file("run.json"), info.to_json())
        self.info = info

    @property
    def epochs_planned(self) -> int:
        return self.info.epochs_planned

    # -- manifest: the commit point of every epoch
    def manifest(self) -> dict[str, Any]:
        """``{"epochs_done": int, "files": {rel: sha256}}``, checked: every listed file lies inside the
        run, and ``epochs_done`` is no more than the files it lists can hold (so no reader loops over
        an edited count); anything else is a RunError naming the file."""
        p = self.file("manifest.json")
        if not os.path.lexists(p):
            return {"epochs_done": -1, "files": {}}
        m = read_json(p)
        problem = manifest_problem(m)
        if problem is not None:
            raise RunError(f"{p}: malformed manifest{problem}")
        return m

    def write_manifest(self, epochs_done: int, extra_files: Iterable[str] = ()) -> None:
        """Record ``epochs_done`` and the hash of every tracked file; written last, atomically."""
        old = self.manifest()["files"] if (self.path / "manifest.json").exists() else {}
        files = {}
        for rel in ["run.json", "metrics.jsonl", "probe.safetensors", *self._snapshot_rels(epochs_done), *extra_files]:
            p = self.file(rel)
            if p.exists():
                written_once = rel.startswith("snapshots/") or rel == "probe.safetensors"
                files[rel] = old.get(rel) if written_once and rel in old else sha256_file(p)
        atomic_write_json(self.file("manifest.json"), {"epochs_done": epochs_done, "files": files})

    def _snapshot_rels(self, epochs_done: int) -> list[str]:
        snaps = self.file("snapshots")
        if not snaps.is_dir():
            return []
        rels = [f"snapshots/{self.snapshot_file(e).name}" for e in range(epochs_done + 1)]
        done_steps = {r["step"] for r in self.metrics(strict=False) if r["epoch"] <= epochs_done}
        last = max(done_steps) if done_steps else 0
        rels += [
            f"snapshots/{p.name}" for p in sorted(snaps.glob("step_*.safetensors")) if int(p.stem.split("_")[1]) <= last
        ]
        return rels

    @property
    def epochs_done(self) -> int:
        """The last epoch whose snapshot, metrics and state are all committed (-1 = none)."""
        return int(self.manifest()["epochs_done"])

    @property
    def complete(self) -> bool:
        """All planned epochs are committed (a run still being recorded from someone's loop, or whose loop
        failed, is not complete: ``featviz.record`` clears ``recording`` when the loop ends well)."""
        return not self.info.recording and self.epochs_done >= self.epochs_planned

    # -- metrics
    def read_metrics(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Metric records in file order, and one message per damaged line (naming the file and line)."""
        return read_jsonl(self.file("metrics.jsonl"), "epoch", metric_problem)

    def metrics(self, strict: bool = True) -> list[dict[str, Any]]:
        """Metric records in epoch order. ``strict=False`` skips a damaged line instead of failing."""
        records, damaged = self.read_metrics()
        if strict and damaged:
            raise RunError(damaged[0])
        return records

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl whole (it is small) so a crash never leaves half a line."""
        write_jsonl(self.file("metrics.jsonl"), records)

    # -- snapshots
    def snapshot_file(self, epoch: int) -> Path:
        return self.file(f"snapshots/epoch_{epoch:03d}.safetensors")

    def step_snapshot_file(self, step: int) -> Path:
        return self.file(f"snapshots/step_{step:07d}.safetensors")

    def snapshot_epochs(self) -> list[int]:
        """Epochs whose snapshot is committed by the manifest (0 = the random init)."""
        return list(range(self.epochs_done + 1))

    def snapshot_steps(self) -> list[int]:
        """Optimizer steps of the committed within-epoch snapshots (--snapshot-every-steps), sorted."""
        files = self.manifest()["files"]
        return sorted(int(m.group(1)) for rel in files if (m := _STEP_FILE.fullmatch(rel)))

    def load_step_snapshot(self, step: int) -> dict[str, torch.Tensor]:
        """The model tensors after optimizer step ``step``, verified against the manifest."""
        rel = f"snapshots/{self.step_snapshot_file(step).name}"
        files = self.manifest()["files"]
        if rel not in files:
            raise RunError(f"step {step} has no committed snapshot in run {self.name}")
        return load_tensors(self.file(rel), files[rel])

    def steps_per_epoch(self) -> int | None:
        """Optimizer steps in one epoch (from the metrics of epoch 1), None before epoch 1 is committed."""
        return next((int(r["step"]) for r in self.metrics(strict=False) if r["epoch"] == 1 and r.get("step")), None)

    def step_of_epoch(self) -> dict[int, int]:
        """Epoch -> the optimizer step at its end, for every committed epoch (from the metrics where they
        are readable, else epoch x steps per epoch)."""
        spe = self.steps_per_epoch() or 1
        recorded = {r["epoch"]: int(r["step"]) for r in self.metrics(strict=False) if r.get("step") is not None}
        return {e: recorded.get(e, e * spe) for e in self.snapshot_epochs()}

    def snapshot_points(self) -> list[SnapshotPoint]:
        """Every committed snapshot in step order (epoch ends before the step snapshot of the same step),
        labelled "step 64 · epoch 0.41" (or as an imported checkpoint was named)."""
        spe = self.steps_per_epoch() or 1
        named = {r["epoch"]: r["label"] for r in self.metrics(strict=False) if r.get("label")}  # imported checkpoints
        points = [
            SnapshotPoint(f"epoch_{e:03d}", "epoch", s, e, named.get(e) or (label(s, spe) if e else "step 0 · init"))
            for e, s in self.step_of_epoch().items()
        ]
        points += [SnapshotPoint(f"step_{s:07d}", "step", s, None, label(s, spe)) for s in self.snapshot_steps()]
        return sorted(points, key=lambda p: (p.step, p.kind == "step"))

    def load_point(self, point: SnapshotPoint) -> dict[str, torch.Tensor]:
        """The model tensors of a snapshot point (see ``snapshot_points``), verified against the manifest."""
        return self.load_snapshot(point.epoch) if point.epoch is not None else self.load_step_snapshot(point.step)

    def load_points(self, points: list[SnapshotPoint]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
        """Load each snapshot point; a damaged one goes into the second dict (id -> the error) instead."""
        return _load_each({p.id: p for p in points}, self.load_point)

    def load_snapshots(self, epochs: Iterable[int]) -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, str]]:
        """The tensors of each epoch's snapshot, keyed by epoch (a damaged or missing one: epoch -> the error)."""
        return _load_each({e: e for e in epochs}, self.load_snapshot)

    def load_snapshot(self, epoch: int) -> dict[str, torch.Tensor]:
        """The model tensors after ``epoch``, verified against the manifest's checksum."""
        manifest = self.manifest()
        done = int(manifest["epochs_done"])
        if not 0 <= epoch <= done:
            raise RunError(f"epoch {epoch} is not in run {self.name} (epochs 0..{done} are available)")
        rel = f"snapshots/{self.snapshot_file(epoch).name}"
        return load_tensors(self.file(rel), manifest["files"].get(rel))

    # -- the probe images of a run recorded from someone's loop (featviz.record); trained runs reload their data
    def save_probe(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """uint8 images [N, C, H, W] and int64 labels [N] (-1 = unknown), atomically."""
        save_tensors(self.file("probe.safetensors"), {"images": images, "labels": labels})

    def load_probe(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The stored probe (images, labels), verified against the manifest; None if the run has none."""
        p = self.file("probe.safetensors")
        if not os.path.lexists(p):
            return None
        t = load_tensors(p, self.manifest()["files"].get("probe.safetensors"))
        return t["images"], t["labels"]

    # -- resume state (optimizer tensors in safetensors, their structure in JSON)
    def save_train_state(self, epoch: int, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        base = self.file(f"state/epoch_{epoch:03d}")
        save_tensors(base.with_suffix(".safetensors"), tensors)
        atomic_write_json(base.with_suffix(".json"), info)

    def load_train_state(self, epoch: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        base = self.file(f"state/epoch_{epoch:03d}")
        return load_tensors(base.with_suffix(".safetensors")), read_json(base.with_suffix(".json"))

    def prune_train_state(self, keep_epoch: int) -> None:
        """Remove resume state of other epochs once ``keep_epoch`` is committed."""
        for p in self.file("state").glob("epoch_*"):
            if not p.name.startswith(f"epoch_{keep_epoch:03d}."):
                p.unlink(missing_ok=True)

    def discard_uncommitted(self) -> None:
        """Before resuming (the caller holds the ``train`` lock): drop the training's own temp files and
        anything written after the last committed epoch. Every check comes first: a metrics record it
        cannot read is a RunError before anything is removed. Files of other writers (a render's temp
        files) are never touched."""
        done = self.epochs_done
        records, damaged = self.read_metrics()
        if damaged:
            raise RunError(f"{damaged[0]}; nothing was removed (featviz check RUN lists every problem)")
        keep = [r for r in records if r["epoch"] <= done]
        last_step = max((r.get("step") or 0 for r in keep), default=0)

        def numbered(pattern: str, limit: int) -> list[Path]:  # only files named as featviz names them
            return [
                p
                for p in self.file("snapshots").glob(pattern)
                if p.is_file()
                and not p.is_symlink()
                and p.stem.split("_")[1].isdigit()
                and int(p.stem.split("_")[1]) > limit
            ]

        own = [*TRAIN_FILES, "snapshots", "state"]
        temps = [p for rel in own for p in self.file(rel).parent.glob(f".{Path(rel).name}*.tmp")]
        temps += [p for folder in ("snapshots", "state") for p in self.file(folder).glob(".*.tmp")]
        stale = [*temps, *numbered("epoch_*.safetensors", done), *numbered("step_*.safetensors", last_step)]
        for p in stale:
            p.unlink(missing_ok=True)
        self.write_metrics(keep)


def _load_each(
    items: dict[K, T], load: Callable[[T], dict[str, torch.Tensor]]
) -> tuple[dict[K, dict[str, torch.Tensor]], dict[K, str]]:
    """``load`` of each item: key -> tensors for the readable ones, key -> the RunError's text for the others."""
    good: dict[K, dict[str, torch.Tensor]] = {}
    bad: dict[K, str] = {}
    for key, item in items.items():
        try:
            good[key] = load(item)
        except RunError as err:
            bad[key] = str(err)
    return good, bad


def list_runs(out_dir: Path) -> list[Run]:
    """Every run directly under ``out_dir`` (folders with a run.json), sorted by name; none if the
    folder does not exist yet. A file where the folder should be is a RunError."""
    out_dir = not_a_file(out_dir)
    if not out_dir.is_dir():
        return []
    runs = []
    for p in sorted(out_dir.iterdir()):
        if p.is_dir() and os.path.lexists(p / "run.json"):
            try:
                runs.append(Run.open(p))
            except RunError:
                continue
    return runs
