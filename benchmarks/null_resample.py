"""Claim e against a second sample of the random-direction null, on the claims runs (seeds 200-209).

    python benchmarks/null_resample.py --seeds 200-209 --out outputs/claims

Needs the trained runs (``python benchmarks/claims.py run --seeds 200-209 --out outputs/claims`` makes them).
For each seed it reads the published analysis (docs/findings/claims/seedS/analysis.json), computes the null
again with the code as it is now (``featviz.nulls.rotation_null``, the run's own seed) and prints claim e's
verdict and ratios with the published null and with the new one, then the count of seeds where it is shown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import featviz
from featviz.claims import claims
from featviz.loading import fitting, probe_images
from featviz.nulls import rotation_null

PUBLISHED = Path("docs/findings/claims")


def claim_e(analysis: dict) -> dict:
    return next(c for c in claims(analysis) if c["key"] == "e")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="200-209", help="first-last")
    parser.add_argument("--out", default="outputs/claims", help="the folder holding the runs seedS")
    args = parser.parse_args()
    first, last = (int(v) for v in args.seeds.split("-"))
    shown = {"published": 0, "resampled": 0}
    for s in range(first, last + 1):
        run = featviz.load_run(Path(args.out) / f"seed{s}")
        analysis = json.loads((PUBLISHED / f"seed{s}" / "analysis.json").read_text())
        before = claim_e(analysis)
        loaded, _ = fitting(run, *run.load_snapshots(run.snapshot_epochs()))
        val, _, labels = probe_images(run)
        analysis["rotation_null"] = rotation_null(
            run, loaded, val, labels, torch.device("cpu"), seed=run.info.seed or 0
        )
        after = claim_e(analysis)
        for key, c in (("published", before), ("resampled", after)):
            shown[key] += c["verdict"] == "shown"
            print(f"seed{s} {key:<9} {c['verdict']:<9} {c['numbers']}")
    n = last - first + 1
    print(f"claim e shown: {shown['published']} of {n} with the published null, {shown['resampled']} of {n} resampled")


if __name__ == "__main__":
    main()
