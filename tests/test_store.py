"""The run store: atomic writes, damaged files, names, create/open."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

import featviz.run.fileio as fileio
from featviz.errors import ConfigError, RunError
from featviz.run.fileio import atomic_write_bytes, check_name, load_tensors, save_tensors
from featviz.run.outputs import check_out_dir
from featviz.run.schema import SCHEMA_VERSION, ConvLayer, DataInfo, RunInfo
from featviz.run.store import Run, list_runs
from run_helpers import run_info


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _meta(name: str = "r") -> RunInfo:
    return run_info(name)


# ----------------------------------------------------------------------------- atomic writes
def test_atomic_write_replaces_content_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(p, b"first")
    assert p.read_bytes() == b"first"
    atomic_write_bytes(p, b"second, longer")
    assert p.read_bytes() == b"second, longer"
    assert sorted(x.name for x in p.parent.iterdir()) == ["f.bin"]
    mode = p.stat().st_mode & 0o777
    assert mode == 0o666 & ~fileio._umask()  # not mkstemp's 0600


class _FullDiskFile:
    """A file object whose second write fails with ENOSPC (the first half of the data lands)."""

    def __init__(self, f) -> None:
        self.f, self.writes = f, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, data) -> int:
        self.writes += 1
        if self.writes > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def __getattr__(self, name: str):
        return getattr(self.f, name)


@pytest.mark.parametrize("fail_in", ["write", "fsync", "replace"])
def test_disk_full_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_in: str) -> None:
    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"old content")

    def boom(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if fail_in == "write":
        real_fdopen = os.fdopen
        monkeypatch.setattr(fileio.os, "fdopen", lambda *a, **k: _FullDiskFile(real_fdopen(*a, **k)))
    else:
        monkeypatch.setattr(fileio.os, fail_in, boom)
    with pytest.raises(RunError, match="disk full") as info:
        atomic_write_bytes(p, b"new content that never lands")
    monkeypatch.undo()
    assert str(p) in str(info.value)
    assert p.read_bytes() == b"old content"
    assert _temp_files(tmp_path) == []
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.bin"]


def test_other_write_errors_are_run_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args, **kwargs):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(fileio.os, "replace", denied)
    with pytest.raises(RunError, match="not writable"):
        atomic_write_bytes(tmp_path / "g.bin", b"x")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_interrupt_during_write_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"old")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(p, b"new")
    monkeypatch.undo()
    assert p.read_bytes() == b"old" and _temp_files(tmp_path) == []


# ----------------------------------------------------------------------------- tensors
def test_save_and_load_tensors_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "t.safetensors"
    tensors = {
        "a": torch.arange(6, dtype=torch.float32).view(2, 3),
        "b": torch.tensor([1, 2], dtype=torch.int64),
        "c": torch.randn(3, 4).t(),
    }  # non-contiguous
    save_tensors(p, tensors)
    back = load_tensors(p, fileio.sha256_file(p))
    assert back.keys() == tensors.keys()
    for k in tensors:
        assert torch.equal(back[k], tensors[k])


def _valid_file(tmp_path: Path) -> Path:
    p = tmp_path / "snap.safetensors"
    save_tensors(p, {"w": torch.randn(16, 16)})
    return p


@pytest.mark.parametrize("damage", ["truncated", "zero-length", "garbage", "header-only"])
def test_load_damaged_tensors_names_the_file(tmp_path: Path, damage: str) -> None:
    p = _valid_file(tmp_path)
    data = p.read_bytes()
    if damage == "truncated":
        p.write_bytes(data[: len(data) // 2])
    elif damage == "zero-length":
        p.write_bytes(b"")
    elif damage == "garbage":
        p.write_bytes(b"this is not a safetensors file at all \x00\xff" * 10)
    else:
        p.write_bytes(data[:6])
    with pytest.raises(RunError) as info:
        load_tensors(p)
    msg = str(info.value)
    assert str(p) in msg and "\n" not in msg
    if damage == "zero-length":
        assert "empty" in msg


def test_load_missing_tensors(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="missing"):
        load_tensors(tmp_path / "nope.safetensors")


def test_checksum_mismatch(tmp_path: Path) -> None:
    p = _valid_file(tmp_path)
    load_tensors(p, fileio.sha256_file(p))  # fine with the right hash
    with pytest.raises(RunError, match="checksum") as info:
        load_tensors(p, "0" * 64)
    assert str(p) in str(info.value)


def test_snapshot_edited_after_commit_is_detected(tiny_run, tmp_path: Path) -> None:
    path = Path(shutil.copytree(tiny_run.path, tmp_path / "copy"))
    run = Run.open(path)
    sd = run.load_snapshot(1)
    sd["features.conv1.weight"] = sd["features.conv1.weight"] + 1.0  # a valid file with other values
    (path / "snapshots" / "epoch_001.safetensors").write_bytes(st_save(sd))
    run.load_snapshot(0)
    with pytest.raises(RunError, match="checksum") as info:
        run.load_snapshot(1)
    assert "epoch_001.safetensors" in str(info.value)


def test_load_refuses_non_finite_file(tmp_path: Path) -> None:
    p = tmp_path / "nan.safetensors"
    p.write_bytes(st_save({"w": torch.tensor([1.0, float("nan")])}))
    with pytest.raises(RunError, match="non-finite"):
        load_tensors(p)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_save_refuses_non_finite(tmp_path: Path, bad: float) -> None:
    p = tmp_path / "x.safetensors"
    with pytest.raises(RunError, match="non-finite") as info:
        save_tensors(p, {"ok": torch.ones(2), "bad": torch.tensor([0.0, bad])})
    assert "'bad'" in str(info.value)
    assert not p.exists() and _temp_files(tmp_path) == []


# ----------------------------------------------------------------------------- names
@pytest.mark.parametrize("name", ["../x", "a/b", "", ".", "..", ".hidden", "-x", "a b", "x\n", "a\\b", "x" * 101])
def test_check_name_rejects(name: str) -> None:
    with pytest.raises(RunError, match="invalid run name"):
        check_name(name)


@pytest.mark.parametrize("name", ["run-1.b_2", "a", "A9", "x" * 100])
def test_check_name_accepts(name: str) -> None:
    assert check_name(name) == name


# ----------------------------------------------------------------------------- the run
def test_create_writes_run_json_and_empty_manifest(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", _meta())
    meta = json.loads((run.path / "run.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION and meta["configs"]["train"]["epochs"] == 2
    assert run.epochs_done == -1 and not run.complete and run.snapshot_epochs() == []
    assert run.manifest()["files"].keys() == {"run.json"}
    assert Run.open(run.path).meta == run.meta


def test_create_existing_without_force_leaves_it_untouched(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", _meta())
    (run.path / "keep.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in run.path.iterdir()}
    with pytest.raises(RunError, match="already exists"):
        Run.create(tmp_path, "r", _meta(name="other"))
    assert {p.name: p.read_bytes() for p in run.path.iterdir()} == before


def test_create_with_force_replaces_a_run_but_not_a_foreign_folder(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", _meta())
    (run.path / "snapshots").mkdir()
    (run.path / "snapshots" / "epoch_000.safetensors").write_bytes(b"old")
    with pytest.raises(RunError, match="being written by pid"):  # its writer still holds it
        Run.create(tmp_path, "r", _meta(name="new"), force=True)
    run.release()
    Run.create(tmp_path, "r", _meta(name="new"), force=True).release()
    assert not (run.path / "snapshots").exists()
    assert Run.open(run.path).meta["name"] == "new"
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(RunError, match="not a featviz run"):
        Run.create(tmp_path, "photos", _meta(), force=True)
    assert (foreign / "holiday.jpg").read_bytes() == b"precious"


def test_create_rejects_bad_name_and_file_out_dir(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="invalid run name"):
        Run.create(tmp_path, "../evil", _meta())
    assert not (tmp_path.parent / "evil").exists()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(RunError, match="is a file"):
        Run.create(f, "r", _meta())


def test_open_rejects_non_runs(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="does not exist"):
        Run.open(tmp_path / "missing")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RunError, match="not a featviz run"):
        Run.open(plain)
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(RunError, match="is a file"):
        Run.open(f)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_text("{not json")
    with pytest.raises(RunError, match="not valid JSON"):
        Run.open(bad)
    (bad / "run.json").write_text("[1, 2]")
    with pytest.raises(RunError, match="missing configs"):
        Run.open(bad)
    (bad / "run.json").write_text(json.dumps({"schema_version": 99, "configs": {}}))
    with pytest.raises(RunError, match="newer"):
        Run.open(bad)
    for configs in ({}, {"data": {}, "model": {}}, {"data": {}, "model": {}, "train": {"epochs": "x"}}, []):
        (bad / "run.json").write_text(json.dumps({"schema_version": 1, "configs": configs}))
        with pytest.raises(RunError, match="configs must hold data, model and train sections"):
            Run.open(bad)  # an edited run.json: one line here, not a KeyError in whichever command reads it


def test_a_malformed_manifest_and_run_of(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", _meta())
    assert Run.of(run) is run and Run.of(str(run.path)).path == run.path and Run.of(run.path).name == "r"
    with pytest.raises(ConfigError, match="expected a Run or a run folder's path, got int"):
        Run.of(3)
    (run.path / "manifest.json").write_text(json.dumps({"epochs_done": "two", "files": {}}))
    with pytest.raises(RunError, match="malformed manifest"):
        run.epochs_done


def test_list_runs_skips_non_runs(tmp_path: Path) -> None:
    Run.create(tmp_path, "b", _meta())
    Run.create(tmp_path, "a", _meta())
    (tmp_path / "plain").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{")
    assert [r.name for r in list_runs(tmp_path)] == ["a", "b"]
    assert list_runs(tmp_path / "missing") == []


def test_check_out_dir(tmp_path: Path) -> None:
    assert check_out_dir(tmp_path / "new" / "deeper").is_dir()
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(RunError, match="is a file"):
        check_out_dir(f)


def test_damaged_metrics_line(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", _meta())
    run.write_metrics([{"epoch": 0, "step": 0}, {"epoch": 1, "step": 7}])
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "st\n')
    with pytest.raises(RunError, match="line 3"):
        run.metrics()
    assert [r["epoch"] for r in run.metrics(strict=False)] == [0, 1]


def test_load_snapshot_out_of_range(tiny_run) -> None:
    with pytest.raises(RunError, match=r"epochs 0\.\.2"):
        tiny_run.load_snapshot(3)
    with pytest.raises(RunError):
        tiny_run.load_snapshot(-1)


def test_manifest_hashes_match_files(tiny_run) -> None:
    m = tiny_run.manifest()
    assert m["epochs_done"] == 2
    expected = {"run.json", "metrics.jsonl"} | {f"snapshots/epoch_{e:03d}.safetensors" for e in range(3)}
    expected |= {f"snapshots/step_{s:07d}.safetensors" for s in (1, 2, 4)}  # the log schedule inside epoch 1
    assert set(m["files"]) == expected
    for rel, digest in m["files"].items():
        assert fileio.sha256_file(tiny_run.path / rel) == digest, rel
    assert _temp_files(tiny_run.path) == []
    # only the last epoch's resume state is kept
    assert sorted(p.name for p in (tiny_run.path / "state").iterdir()) == ["epoch_002.json", "epoch_002.safetensors"]
    assert not any(p.suffix in (".pt", ".pth", ".pkl") for p in tiny_run.path.rglob("*"))
    # run.json holds what was written, and every file is readable by others like any other output
    # (0666 & ~umask, e.g. 0644), not mkstemp's owner-only 0600
    assert json.loads((tiny_run.path / "run.json").read_text()) == json.loads(json.dumps(tiny_run.meta))
    modes = {tiny_run.rel(p): p.stat().st_mode & 0o777 for p in tiny_run.path.rglob("*") if p.is_file()}
    assert {"run.json", "manifest.json", "state/epoch_002.json"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o666 & ~fileio._umask())


def test_one_builder_describes_every_run(tmp_path: Path, tiny_run: Run) -> None:
    """run.json comes from one builder (records.describe_run), which refuses a description its own reader
    would refuse; a trained run holds the keys every run holds."""
    from torch import nn

    from featviz.run.records import describe_run

    net = nn.Conv2d(3, 4, 3)
    configs = {"data": {"name": "shapes"}, "model": {}, "train": {"epochs": 1}}
    layer = ConvLayer("conv", 1, 3, 4, (3, 3))
    data = DataInfo(size=8, image_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    info = describe_run("r", configs, data, [layer], net, torch.device("cpu"), source="record")
    assert info.params_total == 4 * 3 * 9 + 4 and info.source == "record" and "versions" in info.provenance
    with pytest.raises(RunError, match="layer 0: depth is missing or of the wrong type"):
        describe_run("r", configs, data, [dataclasses.replace(layer, depth="1")], net, torch.device("cpu"))
    common = {"name", "seed", "configs", "data", "layers", "params_total", "versions", "schema_version"}
    assert common <= set(tiny_run.meta) and common <= set(info.to_json())
