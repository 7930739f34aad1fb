"""Wall time of `featviz analyze` on a rendered run, linear probes and the Gabor fit included (target: at
most 60 s on a 2-core CPU for the default run).

Usage: python benchmarks/analyze_speed.py RUN_DIR [CONTROL_RUN]   (e.g. outputs/demo after the README's main
command; CONTROL_RUN: a --labels shuffled run, probed too, as `featviz analyze RUN --control CONTROL_RUN`)
Prints the time of each part and the total, with the peak memory.
"""

from __future__ import annotations

import resource
import sys
import time

import featviz
from featviz.pipeline import analyze_run


def main() -> None:
    run = featviz.load_run(sys.argv[1] if len(sys.argv) > 1 else "outputs/demo")
    marks: list[tuple[str, float]] = []
    t0 = time.perf_counter()

    def progress(what: str, done: int, total: int) -> None:
        if done == total:
            marks.append((what, time.perf_counter() - t0))

    control = featviz.load_run(sys.argv[2]) if len(sys.argv) > 2 else None
    analyze_run(run, progress=progress, control=control)
    total = time.perf_counter() - t0
    prev = 0.0
    for what, t in marks:
        print(f"{what:<20} {t - prev:6.1f} s")
        prev = t
    print(f"{'complexity + plots':<20} {total - prev:6.1f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"featviz analyze {run.path}: {total:.1f} s wall (target <= 60 s), peak memory {peak:.0f} MB")


if __name__ == "__main__":
    main()
