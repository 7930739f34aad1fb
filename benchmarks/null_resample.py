"""Claim e against a second sample of the random-direction null, on the claims runs (seeds 200-209).

    python benchmarks/null_resample.py --seeds 200-209 --out outputs/claims \
        --save docs/findings/claims/resampled-null.json

Needs the trained runs (``python benchmarks/claims.py run --seeds 200-209 --out outputs/claims`` makes them).
For each seed it reads the published analysis (docs/findings/claims/seedS/analysis.json), computes the null
again with the code as it is now (``featviz.nulls.rotation_null``, the run's own seed) and prints claim e's
verdict and ratios with the published null and with the new one, then the count of seeds where it is shown.
``--save``: also write every seed's two claim-e rows and the new null as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from findings import seeds_arg  # noqa: E402

import featviz  # noqa: E402
from featviz.claims import claims  # noqa: E402
from featviz.loading import fitting, probe_images  # noqa: E402
from featviz.nulls import rotation_null  # noqa: E402

PUBLISHED = Path("docs/findings/claims")


def nulls_of(run: featviz.Run, seeds: list[int]) -> list[dict]:
    """The run's random-direction null with each of ``seeds``, computed as `featviz analyze` computes it (the
    snapshots and images loaded once)."""
    loaded, _ = fitting(run, *run.load_snapshots(run.snapshot_epochs()))
    val, _, labels = probe_images(run)
    return [rotation_null(run, loaded, val, labels, torch.device("cpu"), seed=s) for s in seeds]


def claim_e(analysis: dict) -> dict:
    return next(c for c in claims(analysis) if c["key"] == "e")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="200-209", type=seeds_arg, help="e.g. 200-209 or 200,203")
    parser.add_argument("--out", default="outputs/claims", type=Path, help="the folder holding the runs seedS")
    parser.add_argument("--save", type=Path, help="a JSON file for the rows and the new nulls")
    args = parser.parse_args()
    shown = {"published": 0, "resampled": 0}
    saved: dict[str, dict] = {}
    for s in args.seeds:
        run = featviz.load_run(args.out / f"seed{s}")
        analysis = json.loads((PUBLISHED / f"seed{s}" / "analysis.json").read_text())
        before = claim_e(analysis)
        analysis["rotation_null"] = nulls_of(run, [run.info.seed or 0])[0]
        after = claim_e(analysis)
        saved[f"seed{s}"] = {"published": before, "resampled": after, "rotation_null": analysis["rotation_null"]}
        for key, c in (("published", before), ("resampled", after)):
            shown[key] += c["verdict"] == "shown"
            print(f"seed{s} {key:<9} {c['verdict']:<9} {c['numbers']}")
    n = len(args.seeds)
    print(f"claim e shown: {shown['published']} of {n} with the published null, {shown['resampled']} of {n} resampled")
    if args.save:
        args.save.write_text(json.dumps(saved, indent=1) + "\n")
        print(f"wrote {args.save}")


if __name__ == "__main__":
    main()
