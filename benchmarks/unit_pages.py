"""What the unit pages cost on a run, as users get them: the time to build them and the gallery's size.

Usage: python benchmarks/unit_pages.py [RUN]     (default outputs/demo: the README's main command's run)

Targets for the default run (240 channels): unit pages built in at most 30 s on 2 CPU cores after render and
analyze, without activation maximization; the gallery, unit pages included, at most 60 MB.

Prints:
- ``featviz gallery RUN`` through the CLI: the index and every unit page, from start-up to exit (best of 3);
- the unit pages alone through the API (``featviz.gallery.units.unit_pages``), and the wiring measurement that
  analyze makes for them (``featviz.wiring.measure`` over every snapshot, without the null);
- the sizes: gallery/ (and units/ in it), analysis/wiring.json, and everything the gallery's pages load
  (gallery/, renders/, analysis/).

There is no FLOP floor to compare with: building the pages is templating and writing files, and the wiring
measurement is a few norms per kernel; the times are reported against the budgets instead.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import featviz
from featviz.gallery.build import _env, _timing, gallery_settings_set
from featviz.gallery.units import unit_pages
from featviz.loading import build_run_model, fitting
from featviz.wiring import measure


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/demo")
    exe = Path(sys.executable).with_name("featviz")
    if not (path / "analysis.json").is_file():
        raise SystemExit(f"{path} has no analysis.json: run featviz train, render and analyze first (README)")
    run = featviz.load_run(path)
    cli = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([str(exe), "gallery", str(path)], check=True, capture_output=True)
        cli.append(time.perf_counter() - t)
    index = run.render_index()
    analysis = run.read_analysis()
    sid = gallery_settings_set(index, run.info.data.size, analysis)
    am = [r for r in index if r.kind == "am" and r.settings_set == sid]
    template = _env().get_template("unit.html.j2")
    t = time.perf_counter()
    pages = unit_pages(run, am, analysis, lambda page: template.render(**page), _timing(run))
    api = time.perf_counter() - t
    points = run.snapshot_points()
    t = time.perf_counter()
    states, _ = fitting(run, *run.load_points(points))
    loaded = time.perf_counter() - t
    t = time.perf_counter()
    measure(build_run_model(run), run.info.layers, points, states)
    wiring = time.perf_counter() - t
    gallery, units = _size(path / "gallery"), _size(path / "gallery" / "units")
    shown = gallery + _size(path / "renders") + _size(path / "analysis")
    print(f"run {path}: {pages} unit pages, {len(points)} snapshots")
    print(
        f"featviz gallery (CLI, index + unit pages): {min(cli):.1f} s (best of 3; target <= 30 s): "
        f"{min(cli) / 30:.2f} of the budget"
    )
    print(f"unit pages alone (API): {api:.1f} s = {1000 * api / max(pages, 1):.1f} ms per page")
    print(f"wiring measurement in analyze: {wiring:.1f} s (+ {loaded:.1f} s loading {len(points)} snapshots)")
    print(
        f"sizes: gallery/ {_mb(gallery)} (units/ {_mb(units)}; target <= 60 MB: {gallery / 60e6:.2f} of it), "
        f"analysis/wiring.json {_mb((path / 'analysis' / 'wiring.json').stat().st_size)}, "
        f"everything the pages load (gallery/, renders/, analysis/) {_mb(shown)}"
    )


if __name__ == "__main__":
    main()
