"""How much one sample of the random-direction null varies: the run / null rotation ratio of every conv
layer under several null seeds, on one run.

    python benchmarks/null_spread.py outputs/demo --seeds 10    # after the README's main command, ~25 s

Prints each seed's ratios (layers in the run's order) and whether they rise strictly with depth (claim e's
criterion), then each layer's range and standard deviation over the seeds. Null seeds 1000, 1001, ... are
used, not the run's own seed, which ``featviz analyze`` uses.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from null_resample import nulls_of  # noqa: E402

import featviz  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="outputs/demo")
    parser.add_argument("--seeds", type=int, default=10, help="how many null seeds (1000, 1001, ...)")
    args = parser.parse_args()
    run = featviz.load_run(args.run)
    layers = [layer.name for layer in run.info.layers]
    rows = []
    seeds = [1000 + s for s in range(args.seeds)]
    for s, null in zip(seeds, nulls_of(run, seeds)):
        ratios = [null[n]["ratio"] for n in layers]
        rows.append(ratios)
        rising = all(b > a for a, b in zip(ratios, ratios[1:]))
        print(f"null seed {s}: ratios {', '.join(f'{r:.3f}' for r in ratios)}; rising: {rising}")
    count = sum(all(b > a for a, b in zip(r, r[1:])) for r in rows)
    print(f"rising strictly with depth in {count} of {len(rows)} null seeds")
    for i, n in enumerate(layers):
        col = [r[i] for r in rows]
        print(f"{n}: {min(col):.3f}-{max(col):.3f}, standard deviation {statistics.pstdev(col):.3f}")


if __name__ == "__main__":
    main()
