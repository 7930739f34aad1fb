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

from featviz.store import Run

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
    code, out, err = cli(["train", "--epochs", "1", "--n-train", "128", "--n-val", "32", "--size", "16", "--widths", "4,8",
                          "--kernels", "5,3", "--pools", "1,0", "--batch-size", "64", "--out", tmp_path, "--name", "one"])
    assert code == 0, err
    import shutil

    return tmp_path / "one", Path(shutil.copytree(tmp_path / "one", tmp_path / "two"))


def test_two_processes_render_what_one_renders(two_copies: tuple[Path, Path], cli) -> None:
    one, two = two_copies
    code, out, err = cli(["render", one, "--steps", "4"])
    assert code == 0, err
    done = subprocess.run([*TORCHRUN, "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m", "featviz",
                           "render", str(two), "--steps", "4"], env=_env(), capture_output=True, text=True, timeout=300)
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
