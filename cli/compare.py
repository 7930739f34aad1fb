"""featviz compare: featviz.compare.compare on two or more runs, written as a static page (compare.json, plots)."""

from __future__ import annotations

import os
import webbrowser
from pathlib import Path
from typing import List, Optional

import typer

from featviz.compare import PROBE
from featviz.compare import compare as compare_runs
from featviz.gallery.compare_page import write_comparison
from featviz.gallery.serve import serve as serve_http
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
    serve: bool = typer.Option(
        False, help="Serve the page and the runs' galleries on http://127.0.0.1:PORT until Ctrl-C."
    ),
    port: int = typer.Option(8000, min=0, max=65535, help="Port for --serve (0 = any free port)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in the default browser."),
) -> None:
    """Debiased CKA layer x layer, layer identification, matched channels -> a static comparison page."""
    opened = [Run.open(r) for r in runs]
    for r in opened:  # --model vouches for the runs built by that factory; featviz's own networks need none
        allow(r, model if "factory" in r.info.model_config else None, trust_run_code)
    pictures: list = []
    data = compare_runs(opened, at=at, probe_size=probe, device=device, class_images=pictures)
    folder = out or Path("outputs") / ("compare-" + "-".join(r.name for r in opened))[:120]
    page = write_comparison(data, opened, folder, pictures)
    ident = data["identification"]
    if ident["tests"]:
        console.print(f"layer identification: {ident['hits']} of {ident['tests']} ({100 * ident['accuracy']:.1f}%)")
    for pair in data["pairs"]:
        if "same_depth" in pair:
            a, b = data["runs"][pair["a"]], data["runs"][pair["b"]]
            same = ", ".join(f"{v:.2f}" for v in pair["same_depth"])
            init = ", ".join(f"{v:.2f}" for v in pair["init_control"])
            console.print(f"{a} vs {b}: same-depth CKA {same}; against {b}'s random init {init}")
    t = data.get("transfer") or {}
    if "rate" in t:
        console.print(
            f"class visualizations put in their class by the other runs: {100 * t['rate']:.0f}% "
            f"(chance {100 * t['chance']:.0f}%)"
        )
    console.print(f"wrote {page}")
    if serve:
        folders = [folder.resolve(), *(r.path.resolve() for r in opened)]
        root = Path(os.path.commonpath(folders))
        rel = page.resolve().relative_to(root).as_posix()
        console.print("serving the comparison and the runs' folders only; Ctrl-C stops")
        serve_http(root, port, open_browser, lambda url: console.print(url), page=rel, allowed=folders)
    elif open_browser:
        webbrowser.open(page.resolve().as_uri())
