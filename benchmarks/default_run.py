"""The default run as a user runs it: `featviz train`, `featviz render`, `featviz analyze` as
subprocesses (the CLI as shipped), each timed against its target on this machine, then the cost of the
extra snapshots and of `--live --live-render` on training.

    python benchmarks/default_run.py [--out DIR]      # about 6 minutes on 2 CPU cores

Prints: wall time of each command (targets: train <= 60 s, render <= 180 s, analyze <= 60 s); the
snapshots' share of training time (target <= 2%); training time with `--live` and with `--live
--live-render` against plain training, each as the sum of the epochs' wall times (target: at most 10%
slower). One run of each: on a shared machine, repeat it to see the spread.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import featviz


def timed(*args: str) -> float:
    exe = Path(sys.executable).with_name("featviz")
    t0 = time.perf_counter()
    subprocess.run([str(exe), *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = a.out or Path(tmp)
        train = timed("train", "--out", str(out), "--name", "bench", "--force")
        render = timed("render", str(out / "bench"))
        analyze = timed("analyze", str(out / "bench"))
        run = featviz.load_run(str(out / "bench"))
        recs = run.metrics()
        epochs_s = sum(r["wall_s"] for r in recs)
        snaps_s = sum(r.get("snapshot_s", 0) + r.get("step_snapshot_s", 0) for r in recs)
        print(
            f"featviz train   : {train:6.1f} s (target <= 60 s), {len(run.snapshot_points())} snapshots, "
            f"val acc {recs[-1]['val_acc']:.4f}"
        )
        print(f"featviz render  : {render:6.1f} s (target <= 180 s)")
        print(f"featviz analyze : {analyze:6.1f} s (target <= 60 s)")
        print(f"snapshots       : {snaps_s:.3f} s = {100 * snaps_s / epochs_s:.2f}% of training (target <= 2%)")
        timed("train", "--out", str(out), "--name", "watched", "--force", "--live", "--port", "0")
        watched_s = sum(r["wall_s"] for r in featviz.load_run(str(out / "watched")).metrics())
        print(
            f"--live             : training {watched_s:.1f} s against {epochs_s:.1f} s plain = "
            f"{watched_s / epochs_s:.2f}x"
        )
        live = timed("train", "--out", str(out), "--name", "live", "--force", "--live", "--live-render", "--port", "0")
        live_run = featviz.load_run(str(out / "live"))
        live_s = sum(r["wall_s"] for r in live_run.metrics())
        n_am = sum(1 for r in live_run.render_index() if r["kind"] == "am")
        print(
            f"--live --live-render: training {live_s:.1f} s against {epochs_s:.1f} s plain = "
            f"{live_s / epochs_s:.2f}x (target <= 1.10x); {n_am} activation-maximization images rendered "
            f"in the background; whole command {live:.1f} s"
        )


if __name__ == "__main__":
    main()
