"""The analysis half of the pipeline: a run's snapshots, probe images and renders -> analysis.json.

Per conv layer and epoch (SCIENCE.md): filter updates (relative change to the previous epoch,
rotation from the init, per-filter change, dead filters), convergence (linear CKA of the layer's
spatially averaged post-ReLU activations at each epoch against the final epoch, on a fixed probe set
of validation images), complexity of the activation-maximization images (zlib bits per pixel and
power-spectrum slope, per rendered epoch; the init is the baseline) and receptive fields
(theoretical, and effective: where |d centre unit / d input| averaged over probe images is at least
5% of its peak). Written through the store; reads no file itself.
"""

from __future__ import annotations

import io
import math
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from featviz.config import DataConfig, from_dict
from featviz.data import load_data
from featviz.errors import FeatvizError, RunError
from featviz.hooks import capture
from featviz.metrics import (
    linear_cka, per_filter_change, relative_change, rotation, spectrum_slope, theoretical_receptive_fields,
    zlib_bits_per_pixel,
)
from featviz.render import load_model_at
from featviz.store import Run

Progress = Callable[[str, int, int], None]
DEAD_CHANGE = 1e-6  # a filter whose rotation from init stays below this never learned


def _noop(what: str, done: int, total: int) -> None:
    pass


def _post_relu(model: nn.Module, conv_name: str) -> str:
    """The first ReLU after ``conv_name`` in definition order (the layer's activation); the conv itself if none."""
    names = [n for n, _ in model.named_modules()]
    mods = dict(model.named_modules())
    for n in names[names.index(conv_name) + 1:]:
        if isinstance(mods[n], nn.ReLU):
            return n
        if isinstance(mods[n], nn.Conv2d):
            break
    return conv_name


def filter_updates(run: Run, snaps: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Relative change per epoch, rotation from init per epoch, per-filter change init -> final, dead filters."""
    out = {}
    for layer in run.meta["layers"]:
        key = f"{layer['name']}.weight"
        ws = [s[key] for s in snaps]
        per_filter = [rotation(ws[0][i], ws[-1][i]) for i in range(ws[0].shape[0])]
        out[layer["name"]] = {
            "relative_change": [None] + [relative_change(a, b) for a, b in zip(ws, ws[1:])],
            "rotation_from_init": [rotation(ws[0], w) for w in ws],
            "filter_relative_change": per_filter_change(ws[0], ws[-1]).tolist(),
            "filter_rotation": per_filter,
            "unchanged_filters": [i for i, r in enumerate(per_filter) if r < DEAD_CHANGE],
        }
    return out


@torch.no_grad()
def _activations(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Spatially averaged activations [N, C] and per-channel max [C] of each named layer."""
    pooled: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    peak: dict[str, torch.Tensor] = {}
    with capture(model, names, detach=True) as acts:
        for chunk in x.split(250):
            model(chunk)
            for n in names:
                a = acts[n].float()
                pooled[n].append(a.mean((2, 3)).cpu())
                m = a.amax((0, 2, 3)).cpu()
                peak[n] = torch.maximum(peak[n], m) if n in peak else m
    return {**{n: torch.cat(v) for n, v in pooled.items()}, **{f"{n}/max": peak[n] for n in names}}


def _probe(run: Run, n: int) -> torch.Tensor:
    """The first ``n`` validation images, normalized like training, as float [n, C, H, W]."""
    data = load_data(from_dict(DataConfig, run.meta["configs"]["data"]))
    x = data.val_x[:n].float() / 255.0
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return (x - mean) / std


def convergence(run: Run, probe: torch.Tensor, device: torch.device, progress: Progress = _noop) -> dict[str, Any]:
    """CKA to the final epoch per layer and epoch; channels never active on the probe set (final epoch)."""
    epochs = run.snapshot_epochs()
    acts = []
    names: list[str] = []
    for i, e in enumerate(epochs):
        model = load_model_at(run, e, device)
        names = [_post_relu(model, layer["name"]) for layer in run.meta["layers"]]
        acts.append(_activations(model, names, probe.to(device)))
        progress("activations", i + 1, len(epochs))
    final = acts[-1]
    out = {}
    for layer, n in zip(run.meta["layers"], names):
        out[layer["name"]] = {
            "activation_layer": n,
            "cka_to_final": [linear_cka(a[n], final[n]) for a in acts],
            "dead_channels": [int(c) for c in (final[f"{n}/max"] <= 0).nonzero().flatten()],
        }
    return out


def effective_receptive_field(model: nn.Module, layer: str, probe: torch.Tensor, threshold: float = 0.05) -> dict[str, Any]:
    """Side (px) of the square holding every input pixel whose mean |gradient| of the centre unit
    (summed over channels) is >= ``threshold`` x the peak, averaged over the probe images."""
    x = probe.clone().requires_grad_(True)
    with capture(model, [layer]) as acts:
        model(x)
        a = acts[layer]
        h, w = a.shape[-2:]
        a[:, :, h // 2, w // 2].sum().backward()
    g = x.grad.abs().mean((0, 1))
    ys, xs = (g >= threshold * g.max()).nonzero(as_tuple=True)
    side = int(max(ys.max() - ys.min(), xs.max() - xs.min()) + 1) if len(ys) else 0
    return {"effective_px": side, "threshold": threshold}


def complexity(run: Run) -> dict[str, Any]:
    """zlib bits per pixel and spectrum slope of every activation-maximization image, per layer and epoch."""
    out: dict[str, Any] = {}
    for rec in run.render_index():
        if rec.get("kind") != "am":
            continue
        img = torch.from_numpy(np.array(Image.open(io.BytesIO(run.read_file_bytes(rec["file"])))))
        img = img.permute(2, 0, 1) if img.dim() == 3 else img[None]
        per = out.setdefault(rec["layer"], {}).setdefault(str(rec["epoch"]), {"bpp": [], "slope": []})
        per["bpp"].append(zlib_bits_per_pixel(img))
        per["slope"].append(spectrum_slope(img))
    for layer in out.values():
        for e, per in layer.items():
            layer[e] = {k: {"mean": _mean(v), "std": _std(v), "n": len(v)} for k, v in per.items()}
    return out


def _mean(v: list[float]) -> float:
    return sum(v) / len(v)


def _std(v: list[float]) -> float:
    m = _mean(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / max(1, len(v) - 1))


def analyze_run(run: Run, probe_size: int = 1000, device: str = "auto", progress: Progress = _noop) -> dict[str, Any]:
    """Compute every metric above and write RUN/analysis.json; returns the same dict.

    Needs at least one trained epoch. Complexity needs renders (``featviz render``); without them the
    section says which command to run instead of holding empty numbers.
    """
    from featviz.train import resolve_device

    epochs = run.snapshot_epochs()
    if len(epochs) < 2:
        raise RunError(f"run {run.name} has {max(len(epochs) - 1, 0)} trained epochs; analysis compares epochs, "
                       "train at least one (featviz train --resume RUN)")
    dev = resolve_device(device)
    snaps = [run.load_snapshot(e) for e in epochs]
    result: dict[str, Any] = {"epochs": epochs, "layers": [layer["name"] for layer in run.meta["layers"]]}
    result["filter_updates"] = filter_updates(run, snaps)
    progress("filter updates", 1, 1)
    try:
        probe = _probe(run, probe_size)
    except FeatvizError as e:
        probe = None
        result["convergence"] = {"skipped": f"probe images unavailable: {e}"}
    if probe is not None:
        result["probe_images"] = int(probe.shape[0])
        result["convergence"] = convergence(run, probe, dev, progress)
        cfg = run.meta["configs"]["model"]
        rfs = theoretical_receptive_fields(cfg["kernels"], cfg["strides"], cfg["pools"])
        rf: dict[str, Any] = {}
        for e in (epochs[0], epochs[-1]):
            model = load_model_at(run, e, dev)
            for layer, theo in zip(run.meta["layers"], rfs):
                eff = effective_receptive_field(model, layer["name"], probe[:64].to(dev))
                rf.setdefault(layer["name"], {"theoretical_px": theo, "image_px": run.meta["data"]["size"]})
                rf[layer["name"]][f"effective_px_epoch_{e}"] = eff["effective_px"]
        result["receptive_field"] = rf
        progress("receptive fields", 1, 1)
    comp = complexity(run)
    result["complexity"] = comp or {"skipped": f"no activation-maximization renders: run featviz render {run.path}"}
    run.write_analysis(result)
    return result
