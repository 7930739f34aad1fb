"""featviz compare: featviz.compare.compare on two or more runs, written as a static page (compare.json, plots)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from featviz.compare import PROBE
from featviz.compare import compare as compare_runs
from featviz.gallery.compare_page import write_comparison
from featviz.loading import allow
from featviz.run.store import Run

from .common import console


def compare(
    runs: List[Path] = typer.Argument(..., help="Two or more run folders (same input size and colour channels)."),
    at: str = typer.Option("final", help="final | init | STEP: the snapshot of every run that is compared."),
    out: Optional[Path] = typer.Option(
        None, help="Folder for index.html, compare.json, plots (default outputs/compare-A-B...)."
    ),
    probe: int = typer.Option(PROBE, min=4, help="Shared validation images (the first run's) to compare on."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps"),
    model: Optional[str] = typer.Option(
        None, help="The runs' model factory, when it is your code (pkg.module:factory)."
    ),
    trust_run_code: bool = typer.Option(False, help="Import the model factories the runs name, whatever they are."),
) -> None:
    """Debiased CKA layer x layer, layer identification, matched channels -> a static comparison page."""
    opened = [Run.open(r) for r in runs]
    for r in opened:
        allow(r, model, trust_run_code)
    data = compare_runs(opened, at=at, probe_size=probe, device=device)
    folder = out or Path("outputs") / ("compare-" + "-".join(r.name for r in opened))[:120]
    page = write_comparison(data, opened, folder)
    ident = data["identification"]
    if ident["tests"]:
        console.print(f"layer identification: {ident['hits']} of {ident['tests']} ({100 * ident['accuracy']:.1f}%)")
    for pair in data["pairs"]:
        if "same_depth" in pair:
            a, b = data["runs"][pair["a"]], data["runs"][pair["b"]]
            same = ", ".join(f"{v:.2f}" for v in pair["same_depth"])
            init = ", ".join(f"{v:.2f}" for v in pair["init_control"])
            console.print(f"{a} vs {b}: same-depth CKA {same}; against {b}'s random init {init}")
    console.print(f"wrote {page}")
