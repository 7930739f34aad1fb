"""The analyze stage: a run's snapshots, probe images and one render settings set -> analysis.json.

In: a run with at least one trained epoch (renders optional). Out: ``RUN/analysis.json`` (filter
updates, convergence, receptive fields, complexity, faithfulness, a generated reading) and plots in
``RUN/analysis/``. Every metric's definition, biases and tests are in docs/metrics.md; the pure
computations live in ``featviz.metrics``. Invariants: representations are measured with BatchNorm
statistics recomputed on the probe images; complexity and faithfulness use one settings set, named
in the result (``settings_set``). Written through the store; reads no file itself.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from featviz.convergence import CALIBRATION, convergence
from featviz.depth import depth_table
from featviz.device import resolve_device
from featviz.errors import ConfigError, FeatvizError, RunError
from featviz.faithfulness import faithfulness
from featviz.filters import layer_scale
from featviz.gabor import GOOD, gabor_r2
from featviz.images import decode_png
from featviz.layers import fields_px, is_deep, measured_layers, prefix_macs
from featviz.loading import build_run_model, fitting, load_model_at, probe_images
from featviz.metrics import (
    filter_bits,
    incompressibility,
    per_filter_change,
    relative_change,
    rotation,
    spectrum_slope,
    structure_bits,
)
from featviz.model import recalibrate_or_set
from featviz.nulls import rotation_null
from featviz.plots import PLOTS, available
from featviz.probing import POOLINGS, probes, readable_control
from featviz.progress import StageProgress, silent
from featviz.reading import reading
from featviz.receptive import IMAGES, channels_within, effective_receptive_field, measuring_side, mirror_pad
from featviz.render import PROBE_IMAGES
from featviz.run.fileio import json_text
from featviz.run.renderset import choose_settings_set, records_of, set_status
from featviz.run.schema import SnapshotPoint
from featviz.run.store import Run
from featviz.wiring import measure as measure_wiring

DEAD_CHANGE = 1e-6  # a filter whose rotation from init stays below this never learned


def filter_updates(run: Run, snaps: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Relative change per epoch, rotation from init per epoch, per-filter change init -> final, dead filters."""
    out = {}
    for layer in run.info.layers:
        ws = [s[f"{layer.name}.weight"] for s in snaps]
        per_filter = [rotation(ws[0][i], ws[-1][i]) for i in range(ws[0].shape[0])]
        out[layer.name] = {
            "relative_change": [None] + [relative_change(a, b) for a, b in zip(ws, ws[1:])],
            "rotation_from_init": [rotation(ws[0], w) for w in ws],
            "filter_relative_change": per_filter_change(ws[0], ws[-1]).tolist(),
            "filter_rotation": per_filter,
            "unchanged_filters": [i for i, r in enumerate(per_filter) if r < DEAD_CHANGE],
            "filter_bits_per_weight": filter_bits(ws, layer_scale(ws)),
        }
    return out


def updates_by_step(
    run: Run, points: list[SnapshotPoint], states: dict[str, dict[str, torch.Tensor]]
) -> dict[str, Any]:
    """At every readable snapshot point in step order: rotation from init and the relative change from
    the previous snapshot (how much a filter picture changes from one slider notch to the next)."""
    usable = [p for p in points if p.id in states]
    out = {}
    for layer in run.info.layers:
        ws = [states[p.id][f"{layer.name}.weight"] for p in usable]
        out[layer.name] = {
            "steps": [p.step for p in usable],
            "rotation_from_init": [rotation(ws[0], w) for w in ws],
            "change_from_previous": [None] + [relative_change(a, b) for a, b in zip(ws, ws[1:])],
        }
    return out


def receptive_fields(
    run: Run,
    probe: torch.Tensor,
    snaps: dict[int, dict[str, torch.Tensor]],
    device: torch.device,
    batchnorm: dict[int, dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Per conv layer: the theoretical field and, at each epoch in ``snaps``, the effective field
    (``receptive.effective_receptive_field``) on ``receptive.IMAGES`` probe images mirrored out to
    ``receptive.measuring_side`` px, so that the deepest field fits inside the image, with BatchNorm
    statistics recomputed on the probe images (as for CKA; ``batchnorm``: epoch -> the statistics CKA's
    pass recomputed on the same images, set instead of a pass of their own)."""
    rfs = fields_px(run.info)
    size = run.info.data.size
    side = measuring_side(size, max(rfs))
    images = mirror_pad(probe[:IMAGES], side).to(device)
    out: dict[str, Any] = {}
    prefix, total = prefix_macs(build_run_model(run), run.info.data.image_channels, side)
    shown = {la.name for la in measured_layers(run.info.layers)}  # a deep model: the layers the gallery shows
    for e, state in snaps.items():
        model = load_model_at(run, e, device, state)
        recalibrate_or_set(model, probe[:CALIBRATION].to(device), (batchnorm or {}).get(e))
        for layer, theo in zip(run.info.layers, rfs):
            if layer.name not in shown:
                continue
            chans = channels_within(layer.out_ch, prefix.get(layer.name, total))
            eff = effective_receptive_field(model, layer.name, images, channels=chans)
            row = out.setdefault(
                layer.name,
                {
                    "theoretical_px": theo,
                    "theoretical_at_least": layer.rf_exceeds,
                    "image_px": size,
                    "measured_at_px": side,
                },
            )
            row[f"effective_px_epoch_{e}"] = eff["effective_px"]  # raw: never clamped
            row[f"outside_fraction_epoch_{e}"] = eff["outside_fraction"]
            row[f"centre_px_epoch_{e}"] = eff["centre_px"]
            row[f"rms_radius_px_epoch_{e}"] = eff["rms_radius_px"]
            row[f"rms_radius_sd_px_epoch_{e}"] = eff["rms_radius_sd_px"]
            row[f"mass_by_side_epoch_{e}"] = [[s, round(f, 6)] for s, f in eff["mass_by_side"]]
            row["channels_measured"] = len(eff["channels"])
    return out


def complexity(run: Run, sid: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Incompressibility, structure bits and spectrum slope (``featviz.metrics``) of every
    activation-maximization image of settings set ``sid``, per layer and epoch (epoch snapshots only) and per
    layer and step (every rendered moment): mean, std and n (slope: over the images that are not flat;
    ``flat`` counts the others, see ``metrics.spectrum_slope``). Each image is decoded and measured once."""
    by_epoch: dict[str, Any] = {}
    by_step: dict[str, Any] = {}
    step_of = run.step_of_epoch()
    for rec in records_of(run.render_index(), sid):
        step = rec.step if rec.step is not None else step_of.get(rec.epoch)  # type: ignore[arg-type]
        if rec.kind != "am" or (rec.epoch is None and step is None):
            continue
        img = decode_png(run.read_file_bytes(rec.file))
        try:
            slope = spectrum_slope(img)
        except ValueError:  # too small for the fitted band: counted with the flat ones
            slope = None
        values = {"incompressibility": incompressibility(img), "structure": structure_bits(img), "slope": slope}
        for out, key in ((by_epoch, rec.epoch), (by_step, step)):
            if key is None:
                continue
            per = out.setdefault(rec.layer, {}).setdefault(
                str(key), {"incompressibility": [], "structure": [], "slope": [], "flat": 0}
            )
            for k, v in values.items():
                if v is not None:
                    per[k].append(v)
            per["flat"] += values["slope"] is None
    return _summarized(by_epoch), _summarized(by_step)


def _summarized(out: dict[str, Any]) -> dict[str, Any]:
    """Each list of values -> its mean, std and n (None where empty); ``flat`` kept as a count."""
    for layer in out.values():
        for e, per in layer.items():
            layer[e] = {
                k: {"mean": _mean(v), "std": _std(v), "n": len(v)} if v else None for k, v in per.items() if k != "flat"
            }
            layer[e]["flat"] = per["flat"]
    return out


def _mean(v: list[float]) -> float:
    return sum(v) / len(v)


def _std(v: list[float]) -> float:
    m = _mean(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / max(1, len(v) - 1))


def gabor(
    run: Run, epochs: tuple[int, int], first: dict[str, torch.Tensor], last: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """The depth-1 layer's filters fitted by a colour-times-Gabor (``featviz.gabor``) at the first and last
    snapshot, and the learned part (last minus first): every filter's R^2 and the share at R^2 >= ``GOOD``."""
    layer = run.info.layers[0]
    if layer.kernel[0] != layer.kernel[1] or layer.kernel[0] < 3:
        return {
            "skipped": f"{layer.name} has {layer.kernel[0]}x{layer.kernel[1]} kernels; the fit needs square ones >= 3"
        }
    w0, w1 = first[f"{layer.name}.weight"].float(), last[f"{layer.name}.weight"].float()
    r2 = gabor_r2(torch.cat([w0, w1, w1 - w0])).split(len(w0))
    out: dict[str, Any] = {"layer": layer.name, "threshold": GOOD, "epochs": list(epochs)}
    for key, r in zip(("init", "last", "learned_part"), r2):
        out[key] = {"share": float((r >= GOOD).double().mean()), "r2": [round(float(v), 4) for v in r]}
    return out


def wiring(
    run: Run,
    points: list[SnapshotPoint],
    states: dict[str, dict[str, torch.Tensor]],
    null: dict[int, dict[str, torch.Tensor]],
    progress: StageProgress = silent,
) -> dict[str, Any]:
    """``featviz.wiring.measure`` over every snapshot point: the summary for analysis.json; the unit pages'
    detail goes to analysis/wiring.json. The null is compared only when it has more than the init."""
    epoch_points = {p.epoch: p.id for p in points if p.epoch is not None}
    try:
        summary, detail = measure_wiring(
            build_run_model(run),
            run.info.layers,
            points,
            states,
            null if len(null) > 1 else None,
            epoch_points,
            progress=progress,
        )
    except ValueError as e:  # the unit pages must not show an earlier analysis's wiring
        run.write_artifact("analysis", "wiring.json", json_text({"skipped": str(e), "layers": {}}).encode())
        return {"skipped": str(e)}
    run.write_artifact("analysis", "wiring.json", json_text(detail, separators=(",", ":")).encode())
    return summary


PROBE = 1000  # validation images in the probe set (CKA, the probes' test images, receptive fields)
DEEP_PROBE = 500  # ... for a deep model's default scope


def analysis_scope(run: Run, full: bool = False, probe_size: int | None = None) -> dict[str, Any]:
    """What an analysis measures: everything for a small model or with ``full``; for a deep model
    (``layers.is_deep``) by default CKA on ``DEEP_PROBE`` probe images, no settling controls and the global
    probes at the first and last epoch only, which keeps the analysis of a ResNet-18 at 64 px near a minute on
    2 CPU cores (benchmarks/README.md, "Deep models"). ``probe_size``: the probe images asked for (None: the
    scope's default)."""
    quick = is_deep(run.info.layers) and not full
    out: dict[str, Any] = {
        "full": not quick,
        "probe_images": probe_size or (DEEP_PROBE if quick else PROBE),
        "settling_controls": not quick,
        "poolings": ["global"] if quick else list(POOLINGS),
        "probe_epochs": "first and last" if quick else "every",
        "faithfulness_images": PROBE_IMAGES if quick else "all",
    }
    if quick:
        out["left_out"] = (
            f"a deep model ({len(run.info.layers)} conv layers) is analyzed in a smaller scope by default: "
            "the settling controls and the 2 x 2-grid probes are left out, the probes run at the first and "
            "last epoch only, faithfulness ranks the renders among the first 1000 validation images"
            + ("" if probe_size else f", and CKA and the probes' test use {DEEP_PROBE} probe images, not {PROBE}")
            + f"; featviz analyze {run.path} --full measures them"
        )
    return out


def analyze(
    run: Run,
    probe_size: int | None = None,
    device: str = "auto",
    progress: StageProgress = silent,
    settings_set: str | None = None,
    control: Run | None = None,
    full: bool = False,
) -> dict[str, Any]:
    """Compute every metric above and write RUN/analysis.json and the plots; returns the same dict.

    Needs at least one trained epoch. Complexity and faithfulness use one render settings set:
    ``settings_set`` (an id from ``featviz.run.renderset``), else the default settings' set, else the only one;
    without renders those sections say which command to run instead of holding empty numbers.
    ``control``: a run of the same network trained without the task (``featviz train --labels shuffled``),
    probed on the same images as this run; its probes are the baseline of "learned from the task".
    A deep model (``layers.is_deep``) is measured in its default scope unless ``full`` (``analysis_scope``):
    the settling controls and the 2 x 2-grid probes left out, the probes at the first and last epoch only, and
    ``probe_size`` (None) ``DEEP_PROBE`` instead of ``PROBE`` images; analysis.json's ``scope`` says which.
    """
    sid = choose_settings_set(run.render_index(), run.info.data.size, settings_set)  # a bad choice fails first
    epochs = run.snapshot_epochs()
    if len(epochs) < 2:
        raise RunError(
            f"run {run.name} has {max(len(epochs) - 1, 0)} trained epochs; analysis compares epochs, "
            "train at least one (featviz train --resume RUN)"
        )
    scope = analysis_scope(run, full, probe_size)
    probe_size = scope["probe_images"]
    dev = resolve_device(device)
    control_snaps = readable_control(run, control) if control is not None else None  # a wrong one fails first
    loaded, bad = fitting(run, *run.load_snapshots(epochs))  # a damaged or misfit snapshot: left out, named
    if len(loaded) < 2:
        raise RunError(f"run {run.name} has fewer than two readable snapshots: {'; '.join(bad.values())}")
    epochs = sorted(loaded)
    snaps = [loaded[e] for e in epochs]
    result: dict[str, Any] = {
        "epochs": epochs,
        "layers": [layer.name for layer in run.info.layers],
        "depth": depth_table(build_run_model(run), run.info.layers),
        "settings_set": sid,
        "scope": scope,
    }
    if bad:
        result["skipped_epochs"] = {str(e): msg for e, msg in sorted(bad.items())}
    recs = run.metrics(strict=False)
    if len(recs) > 1 and recs[1].get("step"):
        result["steps_per_epoch"] = recs[1]["step"]
    result["filter_updates"] = filter_updates(run, snaps)
    points = [p for p in run.snapshot_points() if p.kind == "step" or p.epoch in loaded]
    steps_loaded, _ = fitting(run, *run.load_points([p for p in points if p.kind == "step"]))
    states = {**steps_loaded, **{f"epoch_{e:03d}": s for e, s in loaded.items()}}
    result["updates_by_step"] = updates_by_step(run, points, states)
    progress("filter updates", 1, 1)
    null_states: dict[int, dict[str, torch.Tensor]] = {0: loaded[epochs[0]]} if epochs[0] == 0 else {}
    try:
        val, raw, labels = probe_images(run)
        probe = val[:probe_size]
        try:
            result["rotation_null"] = rotation_null(
                run, loaded, val, labels, dev, seed=run.info.seed or 0, keep=null_states
            )
        except ConfigError as e:
            result["rotation_null"] = {"skipped": str(e)}
        progress("random-direction null", 1, 1)
    except FeatvizError as e:
        probe = None
        result["convergence"] = result["faithfulness"] = {"skipped": f"validation images unavailable: {e}"}
    if probe is not None and probe.shape[0] < 4:
        probe = None
        result["convergence"] = result["faithfulness"] = {
            "skipped": "fewer than 4 validation images: CKA needs at least 4"
        }
    if probe is not None:
        result["probe_images"] = int(probe.shape[0])
        steps = {p.step: states[p.id] for p in points if p.kind == "step" and p.id in states}
        bn: dict[int, dict[str, torch.Tensor]] = {}  # epoch -> BatchNorm statistics on probe[:CALIBRATION]
        result["convergence"] = convergence(
            run, probe, dev, progress, loaded, steps, keep_batchnorm=bn, settling=scope["settling_controls"]
        )
        ends = {e: loaded[e] for e in (epochs[0], epochs[-1])}
        result["receptive_field"] = receptive_fields(run, probe, ends, dev, bn)
        progress("receptive fields", 1, 1)
        same = torch.equal(probe[:CALIBRATION], val[:PROBE_IMAGES])  # then CKA's statistics are the render's too
        n = None if scope["full"] else PROBE_IMAGES  # the smaller scope: the images the renders' BatchNorm came from
        result["faithfulness"] = faithfulness(
            run, val[:n], raw[:n], dev, sid, snaps=loaded, batchnorm=bn if same else None
        )
        progress("faithfulness", 1, 1)
    result["wiring"] = wiring(run, points, states, null_states, progress)
    result["gabor"] = gabor(run, (epochs[0], epochs[-1]), snaps[0], snaps[-1])
    result["probes"] = probes(
        run, loaded, dev, progress, control, probe_size, control_snaps, scope["poolings"], not scope["full"]
    )
    if sid is not None:  # what the measured set holds: an interrupted render's set says so
        result["settings_set_status"] = set_status(run, run.render_index(), sid)
    comp, comp_by_step = complexity(run, sid)
    result["complexity"] = comp or {"skipped": f"no activation-maximization renders: run featviz render {run.path}"}
    if comp:
        result["complexity_by_step"] = comp_by_step
    result["reading"] = reading(result, run.info.data.size)
    run.write_analysis(result)
    for key in available(result):
        for fmt, data in PLOTS[key](result).items():
            run.write_artifact("analysis", f"{key}.{fmt}", data)
    return result
