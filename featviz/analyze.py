"""The analysis half of the pipeline: a run's snapshots, probe images and renders -> analysis.json.

Per conv layer and epoch (SCIENCE.md): filter updates (relative change to the previous epoch,
rotation from the init, per-filter change, dead filters), convergence (linear CKA of the layer's
spatially averaged post-ReLU activations at each epoch against the final epoch, on a fixed probe set
of validation images), complexity of the activation-maximization images (zlib bits per pixel and
power-spectrum slope, per rendered epoch; the init is the baseline; and zlib bits per weight of the raw filters) and receptive fields
(theoretical, and effective: the square around the centre unit holding 90% of its mean
|d unit / d input| over probe images). Written through the store; reads no file itself.
"""

from __future__ import annotations

import io
import math
import zlib
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from featviz.config import DataConfig, ModelConfig, from_dict
from featviz.data import load_data
from featviz.errors import FeatvizError, RunError
from featviz.hooks import capture
from featviz.metrics import (
    linear_cka, per_filter_change, relative_change, rotation, spectrum_slope, theoretical_receptive_fields,
    zlib_bits_per_pixel,
)
from featviz.model import build_model, response_layer
from featviz.plots import PLOTS, available
from featviz.reading import reading
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
            "filter_bits_per_weight": _filter_bits(ws),
        }
    return out


def _filter_bits(ws: list[torch.Tensor]) -> list[float]:
    """Per epoch: zlib bits per weight of the whole layer's weights, quantized to 8 bits with the
    layer's one scale across epochs (all filters together: a single 3x3 kernel is too small for zlib).
    The filter-weight counterpart of the image complexity: 8 = incompressible noise, lower = structure."""
    from featviz.filters import layer_scale

    scale = layer_scale(ws)
    out = []
    for w in ws:
        q = ((0.5 + 0.5 * w.detach().float() / scale).clamp(0, 1) * 255).round().to(torch.uint8)
        out.append(len(zlib.compress(q.numpy().tobytes(), 9)) * 8 / q.numel())
    return out


def layer_stats(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """One pass over ``x`` (in chunks): per named layer, the channel means [N, C] (spatial average),
    the flat position of each channel's strongest response [N, C], each channel's peak [C], and the
    feature map's width (to turn flat positions into coordinates)."""
    parts: dict[str, dict[str, list[torch.Tensor]]] = {n: {"mean": [], "argmax": [], "peak": []} for n in names}
    with capture(model, names, detach=True) as acts:
        for chunk in x.split(250):
            model(chunk)
            for n in names:
                a = acts[n].float().flatten(2)
                parts[n]["mean"].append(a.mean(2).cpu())
                parts[n]["argmax"].append(a.argmax(2).cpu())
                parts[n]["peak"].append(a.amax((0, 2)).cpu()[None])
            widths = {n: int(acts[n].shape[-1]) for n in names}
    return {n: {"mean": torch.cat(p["mean"]), "argmax": torch.cat(p["argmax"]), "peak": torch.cat(p["peak"]).amax(0),
                "width": widths[n]} for n, p in parts.items()}


def _probe(run: Run, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (None = all) validation images: normalized like training (float [n, C, H, W])
    and raw (uint8)."""
    data = load_data(from_dict(DataConfig, run.meta["configs"]["data"]))
    raw = data.val_x if n is None else data.val_x[:n]
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return (raw.float() / 255.0 - mean) / std, raw


def convergence(run: Run, probe: torch.Tensor, device: torch.device, progress: Progress = _noop,
                snaps: dict[int, dict[str, torch.Tensor]] | None = None) -> dict[str, Any]:
    """CKA to the final epoch per layer and epoch (and per step snapshot, when the run has them);
    channels never active on the probe set at the final epoch. ``snaps``: epoch -> snapshot, if the
    caller has them loaded already (then only those epochs are used: the readable ones)."""
    recs = run.metrics(strict=False)
    epoch_step = {r["epoch"]: r["step"] for r in recs}
    epochs = sorted(snaps) if snaps is not None else run.snapshot_epochs()
    points = [(epoch_step.get(e, 0), "epoch", e) for e in epochs]
    last_step = epoch_step.get(epochs[-1], 0)
    points += [(s, "step", s) for s in run.snapshot_steps() if s <= last_step]
    points.sort()
    model = build_model(from_dict(ModelConfig, run.meta["configs"]["model"])).to(device).eval()
    names = [_post_relu(model, layer["name"]) for layer in run.meta["layers"]]
    probe = probe.to(device)
    acts: list[tuple[int, str, int, dict]] = []
    for i, (step, kind, key) in enumerate(points):
        if kind == "epoch":
            state = snaps[key] if snaps is not None else run.load_snapshot(key)
        else:
            state = run.load_step_snapshot(key)
        model.load_state_dict(state)
        acts.append((step, kind, key, layer_stats(model, names, probe)))
        progress("activations", i + 1, len(points))
    final = acts[-1][3]
    out = {}
    for layer, n in zip(run.meta["layers"], names):
        cka = [(step, kind, linear_cka(a[n]["mean"], final[n]["mean"])) for step, kind, _, a in acts]
        out[layer["name"]] = {
            "activation_layer": n,
            "cka_to_final": [c for _, kind, c in cka if kind == "epoch"],
            "dead_channels": [int(c) for c in (final[n]["peak"] <= 0).nonzero().flatten()],
        }
        if run.snapshot_steps():
            out[layer["name"]]["by_step"] = {"steps": [s for s, _, _ in cka], "cka_to_final": [c for _, _, c in cka]}
    return out


def effective_receptive_field(model: nn.Module, layer: str, probe: torch.Tensor, mass: float = 0.9) -> dict[str, Any]:
    """Effective receptive field (Luo et al. 2016): the side (px) of the smallest square around the
    centre unit's position that holds ``mass`` of the mean |d centre unit / d input| over the probe
    images (channels of the unit summed). Never larger than the theoretical field or the image."""
    x = probe.clone().requires_grad_(True)
    with capture(model, [layer]) as acts:
        model(x)
        a = acts[layer]
        h, w = a.shape[-2:]
        a[:, :, h // 2, w // 2].sum().backward()
    g = x.grad.abs().mean((0, 1)).double()
    total = float(g.sum())
    if total <= 0:
        return {"effective_px": 0, "mass": mass}
    size = g.shape[-1]
    cy, cx = int((h // 2 + 0.5) * g.shape[-2] / h), int((w // 2 + 0.5) * size / w)
    for r in range(size):
        box = g[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1]
        if float(box.sum()) >= mass * total:
            return {"effective_px": min(2 * r + 1, size), "mass": mass}
    return {"effective_px": size, "mass": mass}


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


def faithfulness(run: Run, images: torch.Tensor, raw: torch.Tensor, device: torch.device, k: int = 9,
                 snaps: dict[int, dict[str, torch.Tensor]] | None = None) -> dict[str, Any]:
    """For every rendered channel at the last rendered epoch: r = a(AM image) / max over the data set
    of a, with a = the channel's mean activation (the render objective); and the top-``k`` data-set
    images, cropped to the receptive field around the channel's strongest position, saved as one
    strip PNG. ``snaps``: epoch -> snapshot of the readable epochs (then only those are considered).
    """
    from torchvision.utils import make_grid

    from featviz.filters import png_bytes

    am = [r for r in run.render_index() if r.get("kind") == "am" and (snaps is None or r.get("epoch") in snaps)]
    if not am:
        return {"skipped": f"no activation-maximization renders: run featviz render {run.path}"}
    epoch = max(r["epoch"] for r in am)
    am = [r for r in am if r["epoch"] == epoch]
    model = load_model_at(run, epoch, device, (snaps or {}).get(epoch))
    cfg = run.meta["configs"]["model"]
    rfs = dict(zip([layer["name"] for layer in run.meta["layers"]],
                   theoretical_receptive_fields(cfg["kernels"], cfg["strides"], cfg["pools"])))
    names = sorted({r["layer"] for r in am})
    targets = {n: response_layer(model, n) for n in names}  # what the renders maximized
    stats = layer_stats(model, list(targets.values()), images.to(device))
    size = raw.shape[-1]
    out: dict[str, Any] = {"epoch": epoch}
    for name in names:
        means, where = stats[targets[name]]["mean"], stats[targets[name]]["argmax"]
        top = means.topk(min(k, len(means)), dim=0).indices  # [k, C]
        data_max = means.max(0).values
        side = min(rfs.get(name, size), size)
        feat = stats[targets[name]]["width"]
        recs = sorted((r for r in am if r["layer"] == name and r["epoch"] == epoch), key=lambda r: r["channel"])
        rows = []
        for rec in recs:
            c = rec["channel"]
            crops = [_crop(raw[i], int(where[i, c]), feat, side) for i in top[:, c].tolist()]
            strip = make_grid(torch.stack(crops), nrow=len(crops), padding=1, pad_value=255)
            path = run.write_artifact("renders", f"top9/{name}/ch_{c:04d}.png", png_bytes(strip))
            peak = float(data_max[c])
            rows.append({"channel": c, "r": rec["activation"] / peak if peak > 0 else None,
                         "data_max": peak, "top": top[:, c].tolist(),
                         "file": run.rel(path)})
        out[name] = {"receptive_field_px": side, "channels": rows}
    return out


def _crop(img: torch.Tensor, flat: int, feat: int, side: int) -> torch.Tensor:
    """A ``side`` x ``side`` crop of uint8 ``img`` [C, H, W] centred on feature-map position ``flat``."""
    size = img.shape[-1]
    y, x = divmod(flat, feat)
    cy, cx = int((y + 0.5) * size / feat), int((x + 0.5) * size / feat)
    top = min(max(cy - side // 2, 0), size - side)
    left = min(max(cx - side // 2, 0), size - side)
    crop = img[:, top:top + side, left:left + side]
    if crop.shape[0] == 1:
        crop = crop.expand(3, -1, -1)
    return crop


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
    loaded, bad = run.load_snapshots(epochs)  # a damaged snapshot leaves its epoch out, named in the result
    if len(loaded) < 2:
        raise RunError(f"run {run.name} has fewer than two readable snapshots: {'; '.join(bad.values())}")
    epochs = sorted(loaded)
    snaps = [loaded[e] for e in epochs]
    result: dict[str, Any] = {"epochs": epochs, "layers": [layer["name"] for layer in run.meta["layers"]]}
    if bad:
        result["skipped_epochs"] = {str(e): msg for e, msg in sorted(bad.items())}
    recs = run.metrics(strict=False)
    if len(recs) > 1 and recs[1].get("step"):
        result["steps_per_epoch"] = recs[1]["step"]
    result["filter_updates"] = filter_updates(run, snaps)
    progress("filter updates", 1, 1)
    try:
        val, raw = _probe(run, None)
        probe = val[:probe_size]
    except FeatvizError as e:
        probe = None
        result["convergence"] = result["faithfulness"] = {"skipped": f"validation images unavailable: {e}"}
    if probe is not None:
        result["probe_images"] = int(probe.shape[0])
        result["convergence"] = convergence(run, probe, dev, progress, loaded)
        cfg = run.meta["configs"]["model"]
        rfs = theoretical_receptive_fields(cfg["kernels"], cfg["strides"], cfg["pools"])
        rf: dict[str, Any] = {}
        for e in (epochs[0], epochs[-1]):
            model = load_model_at(run, e, dev, loaded[e])
            for layer, theo in zip(run.meta["layers"], rfs):
                eff = effective_receptive_field(model, layer["name"], probe[:64].to(dev))
                rf.setdefault(layer["name"], {"theoretical_px": theo, "image_px": run.meta["data"]["size"]})
                rf[layer["name"]][f"effective_px_epoch_{e}"] = min(eff["effective_px"], theo)
        result["receptive_field"] = rf
        progress("receptive fields", 1, 1)
        result["faithfulness"] = faithfulness(run, val, raw, dev, snaps=loaded)
        progress("faithfulness", 1, 1)
    comp = complexity(run)
    result["complexity"] = comp or {"skipped": f"no activation-maximization renders: run featviz render {run.path}"}
    result["reading"] = reading(result, run.meta["data"]["size"])
    run.write_analysis(result)
    for key in available(result):
        for fmt, data in PLOTS[key](result).items():
            run.write_artifact("analysis", f"{key}.{fmt}", data)
    return result
