"""How much of the task each conv layer's activations hold, at every epoch snapshot of a run: linear-probe
accuracy and cross-entropy (``probes.linear_probe``) and the class selectivity of its channels
(``probes.class_selectivity``), each with its gap to the same layer at the random init.

The probes read each layer's activation (the ReLU after the conv, ``model.activation_layer``) averaged
over positions (``global``: the readout the network's own head uses) and over a 2 x 2 grid of the map
(``grid2``: some of where a feature was), with BatchNorm statistics recomputed on the probe's training
images. Definitions, biases and tests: docs/metrics.md ("Linear probes and class selectivity").
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import nn

from featviz.errors import ConfigError, FeatvizError, RunError
from featviz.loading import ProbeTask, build_run_model, fitting, load_model_at, probe_task
from featviz.model import activation_layer, measuring_passes
from featviz.probes import class_selectivity, linear_probe, pooled
from featviz.progress import StageProgress, silent
from featviz.run.store import Run

POOLINGS = {"global": 1, "grid2": 2}  # name -> grid side of the average pooling
BATCHNORM_IMAGES = 1000  # probe-train images the BatchNorm statistics are recomputed on


def features(
    model: nn.Module,
    layers: dict[str, str],
    x: torch.Tensor,
    chunk: int = 250,
    calibrate: int = 0,
    poolings: tuple[str, ...] = tuple(POOLINGS),
) -> dict[str, dict[str, Any]]:
    """One pass over ``x`` in chunks of ``chunk`` (``model.measuring_passes``; with ``calibrate``, recomputing
    the BatchNorm statistics on the first ``calibrate`` images): per conv layer (``layers``: conv name -> the
    module whose output is its activation), that activation pooled as each of ``poolings`` ([N, F] float64),
    and ``relu``: whether it was never negative on ``x`` (class selectivity is defined for such activations
    only)."""
    parts: dict[str, dict[str, list[torch.Tensor]]] = {n: {p: [] for p in poolings} for n in layers}
    low = {n: float("inf") for n in layers}
    for _, got in measuring_passes(model, list(set(layers.values())), x, calibrate, chunk):
        for n, act in layers.items():
            low[n] = min(low[n], float(got[act].amin()))
            for p in poolings:
                parts[n][p].append(pooled(got[act], POOLINGS[p]).cpu())
    return {n: {**{p: torch.cat(v) for p, v in parts[n].items()}, "relu": low[n] >= 0} for n in layers}


def measure(
    model: nn.Module, layers: dict[str, str], task: ProbeTask, poolings: tuple[str, ...] = tuple(POOLINGS)
) -> dict[str, dict[str, Any]]:
    """Per layer (conv name -> its activation module) at one set of weights: probe accuracy and cross-entropy
    per pooling in ``poolings``, and the selectivity of every channel on the test images (None where the
    activation went negative on them)."""
    which = ("global", *(p for p in poolings if p != "global"))  # global: selectivity reads it too
    fit = features(model, layers, task.train_x, calibrate=BATCHNORM_IMAGES, poolings=which)  # BatchNorm on these
    test = features(model, layers, task.test_x, poolings=which)
    out: dict[str, dict[str, Any]] = {}
    for n in layers:
        row: dict[str, Any] = {}
        for p in poolings:
            r = linear_probe(fit[n][p], task.train_y, test[n][p], task.test_y, task.classes)
            row[p] = {"accuracy": r["accuracy"], "cross_entropy": r["cross_entropy"]}
        row["chance_accuracy"] = r["chance_accuracy"]
        row["selectivity"] = (
            class_selectivity(test[n]["global"], task.test_y, task.classes).tolist()
            if test[n]["relu"] and fit[n]["relu"]
            else None
        )
        out[n] = row
    return out


def _summary(values: list[float] | None) -> dict[str, float] | None:
    if not values:
        return None
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {"mean": statistics.fmean(values), "q25": q[0], "median": q[1], "q75": q[2]}


def probe_run(
    run: Run,
    task: ProbeTask,
    device: torch.device,
    snaps: dict[int, dict[str, torch.Tensor]],
    progress: StageProgress = silent,
    poolings: tuple[str, ...] = tuple(POOLINGS),
    ends_only: bool = False,
) -> dict[str, Any]:
    """Probes and selectivity of every conv layer at every epoch in ``snaps`` (epoch -> snapshot;
    ``ends_only``: the first and last only; the first is the baseline of every gap, normally epoch 0, the
    random init). The result's ``layers`` maps a conv to per-epoch lists: ``accuracy``, ``cross_entropy`` and
    ``gap_from_init`` (accuracy minus the first epoch's) of the ``global`` probe, and the selectivity's mean
    and quartiles; ``grid2`` holds the same numbers at the first and last epoch only (``grid2_epochs``: its
    fits cost twice the global ones; ``poolings`` without it: none); plus every channel's selectivity at the
    first and last epoch."""
    model = build_run_model(run)
    layers = {layer.name: layer.activation or activation_layer(model, layer.name) for layer in run.info.layers}
    epochs = sorted(snaps)
    if ends_only:
        epochs = sorted({epochs[0], epochs[-1]})
    rows = []
    ends = {epochs[0], epochs[-1]}
    for i, e in enumerate(epochs, start=1):
        which = poolings if e in ends else ("global",)
        rows.append(measure(load_model_at(run, e, device, snaps[e]), layers, task.to(device), which))
        progress("linear probes", i, len(epochs))
    out: dict[str, Any] = {
        "epochs": epochs,
        "baseline_epoch": epochs[0],
        "images": {"fit": len(task.train_y), "test": len(task.test_y), "source": task.source},
        "chance_accuracy": rows[0][next(iter(layers))]["chance_accuracy"],
        "activation_layers": dict(layers),
        "poolings": {p: POOLINGS[p] for p in poolings},
        "grid2_epochs": sorted(ends) if "grid2" in poolings else [],
        "layers": {},
    }
    for n in layers:
        entry: dict[str, Any] = {}
        for p in poolings:
            have = [r[n][p] for r in rows if p in r[n]]
            acc = [h["accuracy"] for h in have]
            entry[p] = {
                "accuracy": acc,
                "cross_entropy": [h["cross_entropy"] for h in have],
                "gap_from_init": [a - acc[0] for a in acc],
            }
        sel = [r[n]["selectivity"] for r in rows]
        entry["selectivity"] = (
            None
            if any(s is None for s in sel)
            else {
                "by_epoch": [_summary(s) for s in sel],
                "channels_first": sel[0],
                "channels_last": sel[-1],
            }
        )
        out["layers"][n] = entry
    return out


def probes(
    run: Run,
    loaded: dict[int, dict[str, torch.Tensor]],
    device: torch.device,
    progress: StageProgress = silent,
    control: Run | None = None,
    probe_size: int | None = None,
    control_snaps: tuple[dict[int, dict[str, torch.Tensor]], dict[int, str]] | None = None,
    poolings: tuple[str, ...] = tuple(POOLINGS),
    ends_only: bool = False,
) -> dict[str, Any]:
    """Linear probes and class selectivity at every readable epoch (``ends_only``: the first and last), and, with
    ``control``, the same on the control run's readable epochs (``control_snaps``: ``readable_control``'s result, if
    the caller has it) and the run's own probe images; ``poolings``: which of ``POOLINGS`` (``global`` always). A
    wrong control is a one-line error even when the probes are skipped."""
    checked = control_snaps or (readable_control(run, control) if control is not None else None)
    try:
        task = probe_task(run, test=probe_size)
    except FeatvizError as e:
        return {"skipped": f"probe images unavailable: {e}"}
    poolings = ("global", *(p for p in poolings if p != "global"))
    out = probe_run(run, task, device, loaded, progress, poolings, ends_only)
    if control is not None and checked is not None:
        snaps, bad = checked
        out["control"] = {"run": control.name, **probe_run(control, task, device, snaps, progress, poolings, ends_only)}
        if bad:
            out["control"]["skipped_epochs"] = {str(e): msg for e, msg in sorted(bad.items())}
    return out


def readable_control(run: Run, control: Run) -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, str]]:
    """``check_control``, then the control's readable snapshots (epoch -> tensors) and the reasons the others
    were left out; a RunError (one line) when fewer than two are readable."""
    check_control(run, control)
    snaps, bad = fitting(control, *control.load_snapshots(control.snapshot_epochs()))
    if len(snaps) < 2:
        raise RunError(f"control run {control.name} has fewer than two readable snapshots")
    return snaps, bad


def check_control(run: Run, control: Run) -> None:
    """A ConfigError (one line) unless ``control`` was trained with shuffled labels on ``run``'s network and
    data set."""
    if control.path.resolve() == run.path.resolve():
        raise ConfigError("--control names the run itself; give a run trained with --labels shuffled")
    if (control.info.configs.get("data") or {}).get("labels") != "shuffled":
        raise ConfigError(f"control run {control.name} was not trained with --labels shuffled")
    if control.info.model_config != run.info.model_config:
        raise ConfigError(
            f"control run {control.name} has another network than {run.name}; train it with the same model"
        )
    mine, theirs = (
        {k: v for k, v in (r.info.configs.get("data") or {}).items() if k != "labels"} for r in (run, control)
    )
    if mine != theirs:
        raise ConfigError(f"control run {control.name} was trained on other data than {run.name}")
