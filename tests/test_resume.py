"""Interrupted and diverged training: resume gives the uninterrupted run, divergence keeps the committed epochs."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

import featviz
import featviz.training as train_mod  # the training loop (featviz.train is the public function)
from conftest import TINY_BATCHES
from featviz.errors import RunError, TrainingDiverged
from featviz.pipeline import resume_run, train_run
from run_helpers import run_info
from train_helpers import LOG_STEPS, TINY_API, _snapshot_bytes


# ----------------------------------------------------------------------------- (c) resume
class _StopAfter:
    """A progress object that interrupts training (like Ctrl-C) once ``epoch`` is committed."""

    def __init__(self, epoch: int) -> None:
        self.stop_after = epoch
        self.starts: list[tuple[int, int, int]] = []

    def start(self, run, first_epoch: int, epochs: int, batches: int) -> None:
        self.starts.append((first_epoch, epochs, batches))

    def step(self, info) -> None:
        pass

    def epoch(self, record: dict) -> None:
        if record["epoch"] >= self.stop_after:
            raise KeyboardInterrupt


def test_resume_is_byte_identical_to_an_uninterrupted_run(tiny_cfgs, tmp_path: Path) -> None:
    data_cfg, model_cfg, train_cfg = tiny_cfgs
    cfg3 = dataclasses.replace(train_cfg, epochs=3)
    model_cfg = dataclasses.replace(model_cfg, dropout=0.3)  # dropout draws from the RNG that resume restores
    full = train_run(data_cfg, model_cfg, cfg3, out_dir=tmp_path, name="full")

    stop = _StopAfter(1)
    with pytest.raises(KeyboardInterrupt):
        train_run(data_cfg, model_cfg, cfg3, out_dir=tmp_path, name="cut", progress=stop)
    assert stop.starts == [(1, 3, TINY_BATCHES)]
    cut = featviz.load_run(str(tmp_path / "cut"))
    assert not cut.complete and cut.epochs_done == 1
    assert [r["epoch"] for r in cut.metrics()] == [0, 1]

    # what a crash in the middle of committing epoch 2 could leave behind
    (cut.path / "snapshots" / "epoch_002.safetensors").write_bytes(b"half a file")
    (cut.path / "snapshots" / ".epoch_002.safetensors.abc.tmp").write_bytes(b"temp")
    with open(cut.path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "step": 2 * TINY_BATCHES, "val_loss": 9.9, "val_acc": 0.0}) + "\n")

    progress = _StopAfter(99)
    resumed = resume_run(cut.path, progress=progress)
    assert progress.starts == [(2, 3, TINY_BATCHES)]
    assert resumed.complete and resumed.epochs_done == 3
    assert _snapshot_bytes(resumed) == _snapshot_bytes(full)
    assert list(_snapshot_bytes(full)) == [f"epoch_{e:03d}.safetensors" for e in range(4)] + LOG_STEPS
    recs = resumed.metrics()
    assert [r["epoch"] for r in recs] == [0, 1, 2, 3]
    assert [r["val_loss"] for r in recs] == [r["val_loss"] for r in full.metrics()]
    assert [r["step"] for r in recs] == [0, 7, 14, 21]
    assert not list(resumed.path.rglob("*.tmp"))

    with pytest.raises(RunError, match="already complete"):
        resume_run(cut.path)


def test_resume_without_a_committed_epoch(tmp_path: Path) -> None:
    run = featviz.Run.create(tmp_path, "empty", run_info("empty"))
    with pytest.raises(RunError, match="no complete epoch"):
        resume_run(run.path)
    with pytest.raises(RunError, match="does not exist"):
        resume_run(tmp_path / "missing")


# ----------------------------------------------------------------------------- (d) divergence
def _assert_committed_snapshots_good(run, last_good: int) -> None:
    assert run.epochs_done == last_good and not run.complete
    assert run.snapshot_epochs() == list(range(last_good + 1))
    for e in run.snapshot_epochs():
        sd = run.load_snapshot(e)
        assert all(torch.isfinite(t).all() for t in sd.values() if t.is_floating_point())
    assert [r["epoch"] for r in run.metrics()] == list(range(last_good + 1))
    manifest = json.loads((run.path / "manifest.json").read_text())  # the commit record itself
    assert manifest["epochs_done"] == last_good
    steps = [f"snapshots/{name}" for name in LOG_STEPS] if last_good >= 1 else []  # inside epoch 1 only
    assert (
        sorted(rel for rel in manifest["files"] if rel.startswith("snapshots/"))
        == [f"snapshots/epoch_{e:03d}.safetensors" for e in range(last_good + 1)] + steps
    )
    assert not (run.path / "snapshots" / f"epoch_{last_good + 1:03d}.safetensors").exists()


def test_huge_learning_rate_diverges(tiny_cfgs, tmp_path: Path) -> None:
    data_cfg, model_cfg, train_cfg = tiny_cfgs
    cfg = dataclasses.replace(train_cfg, optimizer="sgd", lr=1e6)
    with pytest.raises(TrainingDiverged) as info:
        train_run(data_cfg, model_cfg, cfg, out_dir=tmp_path, name="boom")
    msg = str(info.value)
    assert "\n" not in msg and "--lr" in msg
    last_good = int(re.search(r"last good snapshot is epoch (\d+)", msg).group(1))
    _assert_committed_snapshots_good(featviz.load_run(str(tmp_path / "boom")), last_good)


class _NanLossAfter:
    """Stands in for torch.nn.functional in featviz.training: the n-th training loss becomes NaN."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __getattr__(self, name: str):
        return getattr(torch.nn.functional, name)

    def cross_entropy(self, logits, target, **kwargs):
        loss = torch.nn.functional.cross_entropy(logits, target, **kwargs)
        if "label_smoothing" in kwargs:  # training calls only, not evaluate()
            self.calls += 1
            if self.calls >= self.n:
                return loss * float("nan")
        return loss


def test_divergence_in_epoch_two_keeps_epoch_one_and_can_resume(
    tiny_run, tiny_cfgs, tmp_path: Path, monkeypatch
) -> None:
    data_cfg, model_cfg, train_cfg = tiny_cfgs
    monkeypatch.setattr(train_mod, "F", _NanLossAfter(TINY_BATCHES + 3))  # epoch 2, batch 3
    with pytest.raises(TrainingDiverged, match="epoch 2, batch 3.*last good snapshot is epoch 1"):
        train_run(data_cfg, model_cfg, train_cfg, out_dir=tmp_path, name="nan")
    run = featviz.load_run(str(tmp_path / "nan"))
    _assert_committed_snapshots_good(run, 1)
    monkeypatch.undo()
    done = resume_run(run.path)
    assert done.complete and [r["epoch"] for r in done.metrics()] == [0, 1, 2]
    # resuming after the failure gives the uninterrupted run (same configs), every epoch bit for bit
    assert list(_snapshot_bytes(done)) == [f"epoch_{e:03d}.safetensors" for e in range(3)] + LOG_STEPS
    assert _snapshot_bytes(done) == _snapshot_bytes(tiny_run)


def test_non_finite_weights_after_last_step_of_epoch_is_training_diverged(tiny_cfgs, tmp_path, monkeypatch) -> None:
    data_cfg, model_cfg, train_cfg = tiny_cfgs

    class _NanGradOnLastBatch(_NanLossAfter):
        def cross_entropy(self, logits, target, **kwargs):
            loss = torch.nn.functional.cross_entropy(logits, target, **kwargs)
            if "label_smoothing" in kwargs:
                self.calls += 1
                if self.calls == self.n:  # finite value, NaN gradient: d sqrt(x)/dx at 0 is inf, times 0
                    return loss + 0.0 * torch.sqrt(logits.sum() * 0.0)
            return loss

    monkeypatch.setattr(train_mod, "F", _NanGradOnLastBatch(TINY_BATCHES))  # last batch of epoch 1
    with pytest.raises(TrainingDiverged, match="during epoch 1; .*last good snapshot is epoch 0"):
        train_run(data_cfg, model_cfg, dataclasses.replace(train_cfg, optimizer="sgd"), out_dir=tmp_path, name="x")
    # epoch 0 (the init) stays committed and loads; nothing of the diverged epoch 1 is committed
    _assert_committed_snapshots_good(featviz.load_run(str(tmp_path / "x")), 0)


def test_resume_leaves_strange_files_alone_and_refuses_unreadable_metrics(tmp_path: Path) -> None:
    """What --resume removes first (Run.discard_uncommitted): files featviz did not name (step_abc, a folder
    called epoch_005.safetensors) once crashed it; an unreadable metrics record stops it before any removal."""
    run = featviz.train(epochs=2, out_dir=str(tmp_path), name="r", **TINY_API)
    run.write_manifest(1)  # as if killed after epoch 1: epoch 2's snapshot is uncommitted
    snaps = run.path / "snapshots"
    (snaps / "step_abc.safetensors").write_bytes(b"not ours")
    (snaps / "epoch_005.safetensors").mkdir()
    metrics = (run.path / "metrics.jsonl").read_text()
    (run.path / "metrics.jsonl").write_text(metrics.replace('"epoch": 1,', '"epoch": "one",', 1))
    before = sorted(p.name for p in snaps.iterdir())
    with pytest.raises(RunError, match="epoch is not a whole number.*nothing was removed"):
        run.discard_uncommitted()
    assert sorted(p.name for p in snaps.iterdir()) == before
    (run.path / "metrics.jsonl").write_text(metrics)
    run.discard_uncommitted()
    left = sorted(p.name for p in snaps.iterdir())
    assert "epoch_002.safetensors" not in left and "epoch_001.safetensors" in left
    assert "step_abc.safetensors" in left and (snaps / "epoch_005.safetensors").is_dir()
    assert [m["epoch"] for m in run.metrics()] == [0, 1]
