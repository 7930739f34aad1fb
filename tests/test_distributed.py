"""torchrun on CPU with gloo: several processes render (and train) one run, as one process would."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from featviz.run.store import Run

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _hashes(run: Path) -> dict[str, str]:
    return {p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((run / "renders").rglob("*.png"))}


def _records(run: Path) -> list[str]:
    keep = lambda r: {k: v for k, v in r.items() if k not in ("elapsed_s", "render_settings")}  # noqa: E731
    return sorted(json.dumps(keep(json.loads(line))) for line in (run / "renders.jsonl").read_text().splitlines())


@pytest.fixture
def two_copies(tmp_path: Path, cli) -> tuple[Path, Path]:
    code, out, err = cli(["train", "--epochs", "1", "--n-train", "128", "--n-val", "32", "--size", "16",
                          "--widths", "4,8", "--kernels", "5,3", "--pools", "1,0", "--batch-size", "64",
                          "--out", tmp_path, "--name", "one"])
    assert code == 0, err
    import shutil

    return tmp_path / "one", Path(shutil.copytree(tmp_path / "one", tmp_path / "two"))


def test_two_processes_render_what_one_renders(two_copies: tuple[Path, Path], cli) -> None:
    one, two = two_copies
    code, out, err = cli(["render", one, "--steps", "4"])
    assert code == 0, err
    done = _torchrun(2, ["render", two, "--steps", "4"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "on 2 processes" in done.stderr + done.stdout
    assert _hashes(one) == _hashes(two) and len(_hashes(one)) > 40
    assert _records(one) == _records(two)
    assert not list(two.glob(".renders.part*"))
    code, out, err = cli(["check", two])
    assert code == 0, err


def test_two_nodes_on_one_machine(two_copies: tuple[Path, Path]) -> None:
    """Two torchrun launches, one process each, meeting at a c10d rendezvous on localhost: the
    several-machines command, with the run folder shared."""
    one, two = two_copies
    port = _free_port()
    launches = [subprocess.Popen([*TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                                  "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "featviz-test", "-m", "featviz",
                                  "render", str(two), "--steps", "4", "--no-filters"],
                                 env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    results = [p.communicate(timeout=300) for p in launches]
    assert all(p.returncode == 0 for p in launches), [r[1][-1500:] for r in results]
    single = subprocess.run([sys.executable, "-m", "featviz", "render", str(one), "--steps", "4", "--no-filters"],
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-1500:]
    assert _hashes(one) == _hashes(two) and len(_hashes(two)) > 40


TRAIN = ["--n-train", "512", "--n-val", "64", "--size", "16", "--widths", "4,8", "--kernels", "5,3", "--pools", "1,0",
         "--batch-size", "64"]  # 8 global batches of 64 per epoch


def _max_diff(a: Run, b: Run) -> dict[str, float]:
    """Per snapshot point: the largest weight difference between two runs."""
    out = {}
    for p in a.snapshot_points():
        sa, sb = a.load_point(p), b.load_point(p)
        out[p.id] = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
    return out


def _torchrun(n: int, argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([*TORCHRUN, "--standalone", "--nproc-per-node", str(n), "-m", "featviz",
                           *map(str, argv)], env=env or _env(), capture_output=True, text=True, timeout=300)
    return done


def test_two_processes_train_what_one_trains(tmp_path: Path, cli) -> None:
    """gloo on CPU, the same global batch: every snapshot (steps 1, 2, 4, epochs 1, 2) within 1e-4 of one
    process's, and the epoch losses too. Without BatchNorm: PyTorch's SyncBatchNorm needs a GPU."""
    code, out, err = cli(["train", "--epochs", "2", *TRAIN, "--no-batchnorm", "--out", tmp_path, "--name", "one"])
    assert code == 0, err
    done = _torchrun(2, ["train", "--epochs", "2", *TRAIN, "--no-batchnorm", "--out", tmp_path, "--name", "two"])
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = Run.open(tmp_path / "one"), Run.open(tmp_path / "two")
    diffs = _max_diff(one, two)
    assert list(diffs) == ["epoch_000", "step_0000001", "step_0000002", "step_0000004", "epoch_001", "epoch_002"]
    assert max(diffs.values()) < 1e-4, diffs
    for a, b in zip(one.metrics()[1:], two.metrics()[1:]):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4 and a["train_acc"] == b["train_acc"]
    assert two.meta["processes"] == 2
    code, out, err = cli(["check", two.path])
    assert code == 0, err


def test_resume_with_another_number_of_processes(tmp_path: Path, cli) -> None:
    """One process killed in epoch 2, resumed by two: the run matches one uninterrupted process's."""
    import time

    code, out, err = cli(["train", "--epochs", "2", *TRAIN, "--no-batchnorm", "--out", tmp_path, "--name", "whole"])
    assert code == 0, err
    marker = tmp_path / "paused"
    env = {**_env(), "FEATVIZ_PAUSE_AT": "step:12", "FEATVIZ_PAUSE_FILE": str(marker)}
    proc = subprocess.Popen([sys.executable, "-m", "featviz", "train", "--epochs", "2", *TRAIN, "--no-batchnorm",
                             "--out", str(tmp_path), "--name", "cut"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(600):
        if marker.exists():
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    assert Run.open(tmp_path / "cut").epochs_done == 1
    done = _torchrun(2, ["train", "--resume", tmp_path / "cut"])
    assert done.returncode == 0, done.stderr[-2000:]
    diffs = _max_diff(Run.open(tmp_path / "whole"), Run.open(tmp_path / "cut"))
    assert max(diffs.values()) < 1e-4, diffs
    code, out, err = cli(["check", tmp_path / "cut"])
    assert code == 0, err


def test_a_killed_process_leaves_the_committed_run_valid(tmp_path: Path, cli) -> None:
    """Two processes; rank 1 is killed in epoch 2 (torchrun then stops rank 0, waiting for it). Epoch 1
    and every snapshot before it stay valid, and one process resumes the run to one process's result."""
    import time

    code, out, err = cli(["train", "--epochs", "2", *TRAIN, "--no-batchnorm", "--out", tmp_path, "--name", "whole"])
    assert code == 0, err
    marker = tmp_path / "paused"
    env = {**_env(), "FEATVIZ_PAUSE_AT": "step:12@1", "FEATVIZ_PAUSE_FILE": str(marker)}
    proc = subprocess.Popen([*TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "featviz", "train", "--epochs",
                             "2", *TRAIN, "--no-batchnorm", "--out", str(tmp_path), "--name", "cut"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(1200):
        if marker.exists() and marker.read_text():
            break
        time.sleep(0.1)
    os.kill(int(marker.read_text()), 9)  # rank 1, paused after its step 12
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    cut = Run.open(tmp_path / "cut")
    assert cut.epochs_done == 1 and [p.id for p in cut.snapshot_points()][-1] == "epoch_001"
    code, out, err = cli(["check", cut.path])
    assert code == 0, err
    code, out, err = cli(["train", "--resume", cut.path])
    assert code == 0, err
    diffs = _max_diff(Run.open(tmp_path / "whole"), Run.open(tmp_path / "cut"))
    assert max(diffs.values()) < 1e-4, diffs


def test_a_batch_that_does_not_split_is_one_line(tmp_path: Path) -> None:
    done = _torchrun(2, ["train", "--epochs", "1", *TRAIN[:-1], "63", "--out", tmp_path, "--name", "odd"])
    assert done.returncode != 0 and "does not split over 2 processes" in done.stderr
    assert not (tmp_path / "odd").exists()


def test_commands_that_write_shared_files_refuse_torchrun(two_copies: tuple[Path, Path], monkeypatch, cli) -> None:
    one, _ = two_copies
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before any group is joined
    for argv in (["analyze", one], ["gallery", one], ["train", "--live", "--out", one.parent, "--name", "x"]):
        code, out, err = cli(argv)
        assert code == 1 and "torchrun" in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_a_short_last_batch_leaves_a_process_without_images(tmp_path: Path, cli) -> None:
    """464 images in global batches of 66 over 3 processes: the last batch has 2 images, so one process
    gets none in it. Its loss adds nothing (not NaN), and the run follows one process's."""
    odd = ["--n-train", "464", "--n-val", "64", "--size", "16", "--widths", "4,8", "--kernels", "5,3", "--pools", "1,0",
           "--batch-size", "66", "--no-batchnorm", "--epochs", "1"]
    code, out, err = cli(["train", *odd, "--out", tmp_path, "--name", "one"])
    assert code == 0, err
    done = _torchrun(3, ["train", *odd, "--out", tmp_path, "--name", "three"])
    assert done.returncode == 0, done.stderr[-2000:]
    diffs = _max_diff(Run.open(tmp_path / "one"), Run.open(tmp_path / "three"))
    assert max(diffs.values()) < 1e-4, diffs


def _one_epoch(rank: int, world: int, init: str, out: str) -> None:
    """Worker: one epoch of train_one_epoch on its share; writes its running accuracies and the epoch's."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from featviz.config import ModelConfig, TrainConfig
    from featviz.data.base import ImageData
    from featviz.images import Normalizer
    from featviz.model import build_model
    from featviz.training import make_optimizer, train_one_epoch

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (96, 3, 8, 8), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 4, (96,), generator=g)
        data = ImageData("t", x, y, x[:8], y[:8], ("a", "b", "c", "d"), (0.5,) * 3, (0.25,) * 3)
        model = DistributedDataParallel(build_model(ModelConfig(widths=(4,), kernels=(3,), strides=(1,), pools=(True,),
                                                                num_classes=4, batchnorm=False), seed=0))
        cfg = TrainConfig(batch_size=16)
        accs: list[float] = []
        _, acc, _ = train_one_epoch(model, make_optimizer(model, cfg), data, cfg,
                                    Normalizer(data.mean, data.std, "cpu"), 1, 0, 6,
                                    lambda info: accs.append(info.acc), shard=(rank, world))
        Path(out, f"{rank}.json").write_text(json.dumps({"running": accs, "epoch": acc}))
    finally:
        dist.destroy_process_group()


def test_the_running_accuracy_counts_every_process(tmp_path: Path) -> None:
    """The progress bar's running accuracy is the global batch's, the same on every process, and ends at
    the epoch's accuracy (it once counted only rank 0's share)."""
    import torch.multiprocessing as mp

    mp.spawn(_one_epoch, args=(2, f"file://{tmp_path / 'rdzv'}", str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert len(r0["running"]) == 6 and r0 == r1
    assert r0["running"][-1] == r0["epoch"]


def _share(rank: int, world: int, init: str, out: str) -> None:
    """Worker: every rank receives rank 0's texts through share_text and writes them down."""
    import torch.distributed as dist

    from featviz.distributed import Group, share_text

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        group = Group(rank, world)
        texts = ["outputs/run-é" * 800, "", "ok"] if rank == 0 else ["wrong"] * 3
        got = [share_text(group, t) for t in texts]
        Path(out, f"{rank}.json").write_text(json.dumps(got))
    finally:
        dist.destroy_process_group()


def test_share_text_passes_long_and_empty_texts_whole(tmp_path: Path) -> None:
    """More than 4 KB of UTF-8 (it was once cut at 4096 bytes, mid-character) and an empty text."""
    import torch.multiprocessing as mp

    mp.spawn(_share, args=(2, f"file://{tmp_path / 'rdzv'}", str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1 == ["outputs/run-é" * 800, "", "ok"]
