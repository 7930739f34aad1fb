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
    return {
        p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((run / "renders").rglob("*.png"))
    }


def _records(run: Path) -> list[str]:
    keep = lambda r: {k: v for k, v in r.items() if k not in ("elapsed_s", "render_settings")}  # noqa: E731
    return sorted(json.dumps(keep(json.loads(line))) for line in (run / "renders.jsonl").read_text().splitlines())


@pytest.fixture
def two_copies(tmp_path: Path, cli) -> tuple[Path, Path]:
    code, out, err = cli(
        [
            "train",
            "--epochs",
            "1",
            "--n-train",
            "128",
            "--n-val",
            "32",
            "--size",
            "16",
            "--widths",
            "4,8",
            "--kernels",
            "5,3",
            "--pools",
            "1,0",
            "--batch-size",
            "64",
            "--out",
            tmp_path,
            "--name",
            "one",
        ]
    )
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
    launches = [
        subprocess.Popen(
            [
                *TORCHRUN,
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"localhost:{port}",
                "--rdzv-id",
                "featviz-test",
                "-m",
                "featviz",
                "render",
                str(two),
                "--steps",
                "4",
                "--no-filters",
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in launches]
    assert all(p.returncode == 0 for p in launches), [r[1][-1500:] for r in results]
    single = subprocess.run(
        [sys.executable, "-m", "featviz", "render", str(one), "--steps", "4", "--no-filters"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-1500:]
    assert _hashes(one) == _hashes(two) and len(_hashes(two)) > 40


TRAIN = [
    "--n-train",
    "512",
    "--n-val",
    "64",
    "--size",
    "16",
    "--widths",
    "4,8",
    "--kernels",
    "5,3",
    "--pools",
    "1,0",
    "--batch-size",
    "64",
]  # 8 global batches of 64 per epoch


def _max_diff(a: Run, b: Run) -> dict[str, float]:
    """Per snapshot point: the largest weight difference between two runs."""
    out = {}
    for p in a.snapshot_points():
        sa, sb = a.load_point(p), b.load_point(p)
        out[p.id] = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
    return out


def _torchrun(n: int, argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [*TORCHRUN, "--standalone", "--nproc-per-node", str(n), "-m", "featviz", *map(str, argv)],
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
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
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "featviz",
            "train",
            "--epochs",
            "2",
            *TRAIN,
            "--no-batchnorm",
            "--out",
            str(tmp_path),
            "--name",
            "cut",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
    proc = subprocess.Popen(
        [
            *TORCHRUN,
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "featviz",
            "train",
            "--epochs",
            "2",
            *TRAIN,
            "--no-batchnorm",
            "--out",
            str(tmp_path),
            "--name",
            "cut",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
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
    odd = [
        "--n-train",
        "464",
        "--n-val",
        "64",
        "--size",
        "16",
        "--widths",
        "4,8",
        "--kernels",
        "5,3",
        "--pools",
        "1,0",
        "--batch-size",
        "66",
        "--no-batchnorm",
        "--epochs",
        "1",
    ]
    code, out, err = cli(["train", *odd, "--out", tmp_path, "--name", "one"])
    assert code == 0, err
    done = _torchrun(3, ["train", *odd, "--out", tmp_path, "--name", "three"])
    assert done.returncode == 0, done.stderr[-2000:]
    diffs = _max_diff(Run.open(tmp_path / "one"), Run.open(tmp_path / "three"))
    assert max(diffs.values()) < 1e-4, diffs
