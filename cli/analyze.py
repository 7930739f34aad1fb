"""featviz analyze: featviz.pipeline.analyze_run (analysis.json, plots, gallery), then a compact table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from featviz.claims import claims
from featviz.loading import allow
from featviz.pipeline import analyze_run
from featviz.run.store import Run

from .common import console, echo, not_empty, renamed


def analyze(
    run: Path = typer.Argument(..., help="A run folder (rendered, for the complexity numbers)."),
    probe: Optional[int] = typer.Option(
        None,
        min=10,
        help="Validation images in the fixed probe set (CKA, the probes' test, receptive field) [default: 1000; "
        "500 for a model of more than 8 conv layers, unless --full].",
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps"),
    settings_set: Optional[str] = typer.Option(
        None,
        help="Activation-maximization settings set to measure (a folder "
        "name under RUN/renders/am/; default: the default settings' set, "
        "else the only one).",
    ),
    renders: Optional[str] = typer.Option(None, hidden=True, help="Old name of --settings-set (kept for one release)."),
    model: Optional[str] = typer.Option(
        None, help="The run's model factory, when it is your code (package.module:factory)."
    ),
    trust_run_code: bool = typer.Option(False, help="Import the model factory the run names, whatever it is."),
    control: Optional[Path] = typer.Option(
        None,
        help="A control run of the same network and data trained with --labels shuffled: its linear probes "
        "are the baseline of what this run learned from the task.",
    ),
    full: bool = typer.Option(
        False,
        "--full",
        help="Measure everything for a deep model too (more than 8 conv layers): the settling controls, the "
        "2x2-grid probes, the probes at every epoch, 1000 probe images and faithfulness on every validation "
        "image; by default a deep model's analysis leaves them out to stay near a minute (analysis.json: scope).",
    ),
) -> None:
    """Filter updates, CKA to the final snapshot, image complexity, receptive fields -> RUN/analysis.json."""
    not_empty(settings_set=settings_set, renders=renders)
    settings_set = renamed(settings_set, renders, "--settings-set", "--renders")
    r = Run.open(run)
    allow(r, model, trust_run_code)
    ctl = None if control is None else Run.open(control)
    if ctl is not None:
        allow(ctl, model, trust_run_code)
    res = analyze_run(r, probe_size=probe, device=device, settings_set=settings_set, control=ctl, full=full)
    conv = res.get("convergence", {})
    comp = res.get("complexity", {})
    echo(
        f"{'layer':<22} {'rot.init':>8} {'CKA@1':>6} {'CKA@mid':>7} {'dead':>5} {'RF th/eff':>10} {'RMS r':>6} "
        f"{'incomp':>6} {'struct init':>11} {'struct last':>11} {'probe init':>10} {'probe last':>10}"
    )
    probes = res.get("probes", {}).get("layers", {})
    for name in res["layers"]:
        upd = res["filter_updates"][name]
        cka = conv.get(name, {}).get("cka_to_final", [])
        rf = res.get("receptive_field", {}).get(name, {})
        c = comp.get(name, {}) if isinstance(comp, dict) else {}
        keys = sorted(c, key=int) if c and "skipped" not in comp else []
        inc = f"{c[keys[-1]]['incompressibility']['mean']:.1f}" if keys else "-"
        struct0 = f"{c[keys[0]]['structure']['mean']:.2f}" if keys else "-"
        struct1 = f"{c[keys[-1]]['structure']['mean']:.2f}" if keys else "-"
        acc = (probes.get(name) or {}).get("global", {}).get("accuracy")
        acc0, acc1 = (f"{acc[0]:.3f}", f"{acc[-1]:.3f}") if acc else ("-", "-")
        eff = rf.get(f"effective_px_epoch_{res['epochs'][-1]}", "-")
        rms = rf.get(f"rms_radius_px_epoch_{res['epochs'][-1]}")
        echo(
            f"{name:<22} {upd['rotation_from_init'][-1]:8.3f} "
            f"{(cka[1] if len(cka) > 1 else float('nan')):6.2f} "
            f"{(cka[len(cka) // 2] if cka else float('nan')):7.2f} "
            f"{len(conv.get(name, {}).get('dead_channels', [])):5d} "
            f"{str(rf.get('theoretical_px', '-')) + '/' + str(eff):>10} "
            f"{(f'{rms:.1f}' if rms is not None else '-'):>6} "
            f"{inc:>6} {struct0:>11} {struct1:>11} {acc0:>10} {acc1:>10}"
        )
    for e, msg in res.get("skipped_epochs", {}).items():
        echo(f"featviz: warning: epoch {e} left out: {msg}", err=True)
    for key in ("convergence", "complexity", "probes"):
        if isinstance(res.get(key), dict) and "skipped" in res[key]:
            console.print(f"note: {key} skipped: {res[key]['skipped']}")
    if res.get("scope", {}).get("left_out"):
        console.print(f"note: {res['scope']['left_out']}")
    verdicts = ", ".join(f"{c['key']} {c['verdict'].split(':')[0]}" for c in claims(res))
    console.print(f"claims (docs/metrics.md; the gallery's table): {verdicts}")
    if res.get("settings_set"):
        console.print(f"settings set measured: {res['settings_set']}")
    console.print(f"wrote {r.path / 'analysis.json'}")
