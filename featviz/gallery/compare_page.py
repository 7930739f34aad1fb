"""Write a comparison (``featviz.compare``) to a folder: ``compare.json``, the plots and a static
``index.html`` that links each run's gallery and shows matched channels with their pictures.

Every link is relative to the folder, so the page opens from file:// wherever the folder and the runs lie;
every name from a run goes through Jinja's autoescaping. Files are written atomically.
"""

from __future__ import annotations

import os
import statistics
import urllib.parse
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid

from featviz.gallery.build import _env
from featviz.images import png_bytes
from featviz.plots import DEPTH_COLORS, cka_heatmap, overlay, same_depth
from featviz.run.fileio import atomic_write_bytes, atomic_write_json
from featviz.run.renderset import choose_settings_set, records_of
from featviz.run.store import Run


def _rel(target: Path, folder: Path) -> str:
    """``target`` as a link relative to ``folder``, percent-encoded (a run named "a#b" keeps its link)."""
    return urllib.parse.quote(Path(os.path.relpath(target.resolve(), folder.resolve())).as_posix())


def _pictures(run: Run, folder: Path) -> tuple[dict[tuple[str, int], str], dict[tuple[str, int], str]]:
    """(layer, channel) -> the channel's newest activation-maximization image of the run's default settings
    set, and -> its top validation crops from analyze, as links relative to ``folder``."""
    am: dict[tuple[str, int], tuple[int, str]] = {}
    try:
        index = run.render_index()
        sid = choose_settings_set(index, run.info.data.size)
    except Exception:  # noqa: BLE001 - a run without usable renders shows numbers only
        index, sid = [], None
    for r in records_of(index, sid):
        if r.kind == "am" and r.layer is not None and r.channel is not None:
            step = r.step if r.step is not None else -1
            if (r.layer, r.channel) not in am or step >= am[(r.layer, r.channel)][0]:
                am[(r.layer, r.channel)] = (step, _rel(run.path / r.file, folder))
    crops: dict[tuple[str, int], str] = {}
    analysis = run.read_analysis()
    faith = (analysis or {}).get("faithfulness") or {}
    for layer, block in faith.items():
        if isinstance(block, dict) and isinstance(block.get("channels"), list):
            for row in block["channels"]:
                crops[(layer, row["channel"])] = _rel(run.path / row["file"], folder)
    return {k: v for k, (_, v) in am.items()}, crops


def _matches(data: dict[str, Any], runs: list[Run], folder: Path) -> list[dict[str, Any]]:
    # the runs' pictures show their final networks: at another snapshot the page shows the numbers only
    pics = [_pictures(r, folder) if data["at"] == "final" else ({}, {}) for r in runs]
    out = []
    for pair in data["pairs"]:
        if "matching" not in pair:
            continue
        a, b = pair["a"], pair["b"]
        for depth, (la, matched) in enumerate(pair["matching"].items(), start=1):
            lb = data["layers"][b][depth - 1]
            rows = []
            for which, (ca, cb, r) in zip(("best", "median", "worst"), _three(matched)):
                sides = [
                    {"run": runs[k].name, "channel": c, "am": pics[k][0].get((ln, c)), "crops": pics[k][1].get((ln, c))}
                    for k, ln, c in ((a, la, ca), (b, lb, cb))
                ]
                rows.append({"which": which, "r": r, "sides": sides})
            out.append(
                {
                    "pair": f"{runs[a].name} vs {runs[b].name}",
                    "depth": depth,
                    "median": statistics.median(m[2] for m in matched),
                    "rows": rows,
                }
            )
    return out


def _three(matched: list[list[Any]]) -> list[list[Any]]:
    """The best, the median and the worst of matches sorted best first."""
    return [matched[0], matched[len(matched) // 2], matched[-1]]


def legend(data: dict[str, Any]) -> list[str]:
    """Each run's name with the settings that tell it apart from the others (``compare.differences``)."""
    differs = data["differs"]
    return [
        name + (" (" + ", ".join(f"{k}={v[i]}" for k, v in list(differs.items())[:3]) + ")" if differs else "")
        for i, name in enumerate(data["runs"])
    ]


def curves(data: dict[str, Any], runs: list[Run]) -> dict[str, dict[str, bytes]]:
    """Training curves and per-depth analysis numbers of every run on shared axes in optimizer steps: name ->
    plot. Numbers a run's analysis.json lacks (not analyzed, or an older featviz) are left out of its lines."""
    labels = legend(data)
    out: dict[str, dict[str, bytes]] = {}
    acc: dict[str, dict[str, tuple[list[float], list[float]]]] = {"validation accuracy": {}, "validation loss": {}}
    rotation: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    probe: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    cka: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    structure: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for run, label in zip(runs, labels):
        rows = [r for r in run.metrics(strict=False) if r.get("step") is not None]
        for key, panel in (("val_acc", "validation accuracy"), ("val_loss", "validation loss")):
            have = [r for r in rows if r.get(key) is not None]
            if have:
                acc[panel][label] = ([r["step"] for r in have], [r[key] for r in have])
        a = run.read_analysis() or {}
        step_of = {r.get("epoch"): r.get("step") or 0 for r in run.metrics(strict=False)}
        for depth, name in enumerate(a.get("layers", []), start=1):
            upd = (a.get("updates_by_step") or {}).get(name)
            if upd:
                rotation.setdefault(f"depth {depth}", {})[label] = (upd["steps"], upd["rotation_from_init"])
            p = (a.get("probes") or {}).get("layers", {}).get(name)
            if p:
                steps = [step_of.get(e, 0) for e in a["probes"]["epochs"]]
                probe.setdefault(f"depth {depth}", {})[label] = (steps, p["global"]["accuracy"])
            conv = (a.get("convergence") or {}).get(name) or {}
            if "by_step" in conv:
                cka.setdefault(f"depth {depth}", {})[label] = (
                    conv["by_step"]["steps"],
                    conv["by_step"]["cka_to_final"],
                )
            comp = (a.get("complexity_by_step") or {}).get(name) or {}
            points = sorted((int(s), v["structure"]["mean"]) for s, v in comp.items() if (v.get("structure") or {}))
            if points:
                structure.setdefault(f"depth {depth}", {})[label] = ([s for s, _ in points], [v for _, v in points])
    acc = {k: v for k, v in acc.items() if v}
    if acc:
        out["curves"] = overlay(acc, "value", "Training")
    if rotation:
        out["rotation"] = overlay(rotation, "1 - cos(W_t, W_0)", "Rotation from init, per depth")
    if probe:
        out["probe_accuracy"] = overlay(probe, "probe accuracy", "Linear-probe accuracy, per depth")
    if cka:
        out["cka_to_final"] = overlay(
            cka, "debiased CKA to final", "Each run's CKA to its own final snapshot, per depth"
        )
    if structure:
        out["structure"] = overlay(
            structure, "structure bits per pixel", "Spatial structure of activation-maximization images, per depth"
        )
    return out


def write_comparison(
    data: dict[str, Any], runs: list[Run], folder: Path, class_images: list[Any] | None = None
) -> Path:
    """``compare.json``, the plots, each run's class visualizations (``class_images``, if given: one row of
    0..1 images per run) and ``index.html`` in ``folder``; returns the page."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "compare.json", data)
    rows = []
    for i, imgs in enumerate(class_images or []):
        grid = make_grid(imgs, nrow=len(imgs), padding=1, pad_value=1.0)
        atomic_write_bytes(folder / f"classes_{i}.png", png_bytes((grid * 255).round().to(torch.uint8)))
        rows.append({"run": runs[i].name, "file": f"classes_{i}.png"})
    plots, curve_plots = [], []
    for name, figure in curves(data, runs).items():
        atomic_write_bytes(folder / f"{name}.png", figure["png"])
        curve_plots.append(f"{name}.png")
    same = [p for p in data["pairs"] if "same_depth" in p]
    if same:
        atomic_write_bytes(folder / "same_depth.png", same_depth(data)["png"])
        plots.append("same_depth.png")
    for pair in data["pairs"]:
        a, b = pair["a"], pair["b"]
        name = f"cka_{a}_{b}.png"
        title = f"{runs[a].name} (rows) vs {runs[b].name} (columns)"
        atomic_write_bytes(folder / name, cka_heatmap(pair["cka"], data["layers"][a], data["layers"][b], title)["png"])
        plots.append(name)
    table = [
        {
            "index": i,
            "name": r.name,
            "color": DEPTH_COLORS[i % len(DEPTH_COLORS)],
            "gallery": _rel(r.path / "gallery" / "index.html", folder)
            if (r.path / "gallery" / "index.html").is_file()
            else None,
        }
        for i, r in enumerate(runs)
    ]
    html = (
        _env()
        .get_template("compare.html.j2")
        .render(
            data=data,
            names=data["runs"],
            runs=table,
            differs=data["differs"],
            plots=plots,
            curve_plots=curve_plots,
            class_rows=rows,
            matches=_matches(data, runs, folder),
        )
    )
    page = folder / "index.html"
    atomic_write_bytes(page, html.encode())
    return page
