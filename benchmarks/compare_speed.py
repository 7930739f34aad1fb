"""Wall time of `featviz compare` on five runs as a user runs it (target: at most 60 s on a 2-core CPU for
five default runs), next to the machine's limit measured in the same process.

Usage: python benchmarks/compare_speed.py RUN1 RUN2 RUN3 RUN4 RUN5 [--out DIR]

Prints the CLI's wall time (a subprocess: start-up, loading, measuring, the class visualizations, page), then
the API's (``featviz.compare``, as shipped: the class-visualization transfer test included) with its compute
floor: the conv multiply-adds of the forward passes of the CKA part (each run at the compared snapshot and at
its init: one BatchNorm pass and one measuring pass over the images) plus those of the class renders (per run,
classes x 256 steps of a forward and a backward pass, counted as 3 forward passes), divided by the best
dense FLOP/s of this machine (``machine.dense_peak``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import dense_peak  # noqa: E402

import featviz  # noqa: E402
from featviz.compare import PROBE  # noqa: E402
from featviz.layers import prefix_macs  # noqa: E402
from featviz.loading import build_run_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="compare-")
    exe = Path(sys.executable).with_name("featviz")
    t = time.perf_counter()
    subprocess.run([str(exe), "compare", *a.runs, "--out", out], check=True, capture_output=True)
    cli = time.perf_counter() - t
    t = time.perf_counter()
    data = featviz.compare(a.runs)
    api = time.perf_counter() - t
    runs = [featviz.load_run(r) for r in a.runs]
    macs = 0
    for r in runs:
        _, total = prefix_macs(build_run_model(r), r.info.data.image_channels, r.info.data.size)
        macs += 2 * 2 * total * data["images"]["count"]  # two snapshots, two passes each
        macs += 3 * 256 * total * len(r.info.data.classes)  # class renders: forward + backward
    peak = dense_peak()["best"]
    floor = 2 * macs / peak
    print(f"featviz compare, {len(runs)} runs, {PROBE} images: CLI {cli:.1f} s wall (target <= 60 s)")
    print(
        f"featviz.compare (API): {api:.1f} s; compute floor {floor:.2f} s ({2 * macs / 1e9:.1f} GFLOP at "
        f"{peak / 1e9:.0f} GFLOP/s) = {api / floor:.0f}x the floor"
    )
    print(f"layer identification {data['identification']['hits']} of {data['identification']['tests']}")


if __name__ == "__main__":
    main()
