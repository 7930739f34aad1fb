"""Render throughput with 1 and N processes under torchrun, measured side by side in one run.

Trains a small run (SmallCNN on shapes, 2 epochs), then times ``featviz render`` of it (every layer,
the default moments, 64 steps, no filter pictures) as a user runs it: ``python -m featviz render`` for
one process (torch's default threads), and ``torchrun --standalone --nproc-per-node N -m featviz
render`` (one thread per process), each on its own copy of the run. Prints activation-maximization
images per second and the ratio; checks the copies' images are byte-identical. On a CUDA machine,
``--gpu`` adds one process on the GPU.

Usage: python benchmarks/scale.py [--procs 2] [--steps 64] [--gpu]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0


def images(run: Path) -> dict[str, str]:
    return {
        p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((run / "renders" / "am").rglob("ch_*.png"))
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--gpu", action="store_true")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    render = ["render", "--steps", str(args.steps), "--no-filters"]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "featviz",
                "train",
                "--epochs",
                "2",
                "--n-train",
                "2000",
                "--n-val",
                "500",
                "--out",
                tmp,
                "--name",
                "base",
            ],
            check=True,
            capture_output=True,
            env=env,
            cwd=ROOT,
        )
        rows = []
        one = Path(shutil.copytree(base, Path(tmp) / "one"))
        t1 = timed([sys.executable, "-m", "featviz", str(render[0]), str(one), *render[1:], "--device", "cpu"], env)
        n = len(images(one))
        rows.append(("1 process (CPU, default threads)", t1))
        many = Path(shutil.copytree(base, Path(tmp) / "many"))
        tn = timed(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                str(args.procs),
                "-m",
                "featviz",
                render[0],
                str(many),
                *render[1:],
                "--device",
                "cpu",
            ],
            {**env, "OMP_NUM_THREADS": "1"},
        )
        rows.append((f"{args.procs} processes (torchrun, CPU, 1 thread each)", tn))
        same = images(one) == images(many)
        if args.gpu:
            gpu = Path(shutil.copytree(base, Path(tmp) / "gpu"))
            rows.append(
                (
                    "1 process (CUDA)",
                    timed([sys.executable, "-m", "featviz", render[0], str(gpu), *render[1:], "--device", "cuda"], env),
                )
            )
    print(
        f"featviz render, {n} activation-maximization images ({args.steps} steps), {os.cpu_count()} CPUs; "
        "wall time including start-up"
    )
    for label, t in rows:
        print(f"  {label:48s} {t:7.1f} s  {n / t:7.1f} images/s  {t1 / t:5.2f}x one process")
    print(f"  images byte-identical between 1 and {args.procs} processes: {same}")


if __name__ == "__main__":
    main()
