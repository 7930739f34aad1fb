"""The render stage's work: a run's snapshots -> filter pictures and activation-maximization images.

In: a Run, its loaded snapshots, the layers and epochs to draw. Out: files under ``RUN/renders/`` and
one record per file in ``renders.jsonl`` (written through the store). Activation-maximization images
live in one folder per render settings set (``featviz.run.renderset``). Re-running reuses every file whose
record matches, unless ``force``. A snapshot whose tensors do not fit the run's network is set aside
like a damaged one (``loading.fitting``) and named. ``featviz.pipeline.render_run`` runs this stage and rebuilds
the gallery.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import torch
from torchvision.utils import make_grid

from featviz.config import RenderConfig
from featviz.distributed import SINGLE, Group
from featviz.errors import ConfigError, FeatvizError, RunError, one_line
from featviz.filters import evolution_strip, filter_grid, layer_scale
from featviz.images import gif_bytes, png_bytes, to_uint8
from featviz.layers import default_render_channels, prefix_macs
from featviz.loading import build_run_model, difference, misfit, probe_images
from featviz.model import recalibrate_batchnorm, response_layer
from featviz.optvis import RenderSettings, maximize_channels
from featviz.progress import StageProgress, silent
from featviz.run.renderset import am_settings
from featviz.run.schema import ConvLayer, DataInfo, RenderRecord, SnapshotPoint, settings_set_of
from featviz.run.store import Run


def channels_for(
    layer: ConvLayer, cfg: RenderConfig, layers: Sequence[ConvLayer] = (), size: int | None = None
) -> list[int]:
    """The channels to render of ``layer``: ``cfg.channels``; else all with ``cfg.all_channels``; else all up
    to 64, or 64 evenly spaced; for a deep model (``is_deep(layers)``, the run's layers) as many as its compute
    budget buys (``layers.default_render_channels``; ``size``: the run's image side)."""
    if cfg.channels:
        return list(cfg.channels)
    if cfg.all_channels:
        return list(range(layer.out_ch))
    scale = ((cfg.settings.size or size or 1) / (size or cfg.settings.size or 1)) ** 2
    return default_render_channels(list(layers), layer, cfg.settings.steps, scale)


def run_channels(run: Run, layer: ConvLayer, cfg: RenderConfig) -> list[int]:
    """``channels_for`` one of ``run``'s layers."""
    return channels_for(layer, cfg, run.info.layers, run.info.data.size)


def _check_filters(layer: ConvLayer, weights: list[torch.Tensor | None], usable: list[SnapshotPoint]) -> None:
    """RunError naming the first snapshot whose weights of ``layer`` are not the traced conv's shape
    [out, in / groups, kh, kw] (``fitting`` sets such snapshots aside before; this keeps a caller that did
    not from failing inside the drawing)."""
    want = layer.weight_shape
    for p, w in zip(usable, weights):
        if w is None or list(w.shape) != want:
            have = "absent" if w is None else list(w.shape)
            raise RunError(misfit(p.id, f"{layer.name}.weight is {have} in it, {want} in the run's network"))


def draw_filters(
    run: Run,
    layers: list[ConvLayer],
    points: list[SnapshotPoint],
    snaps: dict[str, dict[str, torch.Tensor]],
    force: bool = False,
    progress: StageProgress = silent,
) -> int:
    """Per layer and snapshot point (``Run.snapshot_points``; ``snaps``: point id -> its tensors, the
    readable ones), two views: the filters W_t, and what training added to the init, W_t - W_0
    (``learned/``), each with one colour scale per layer across time; plus an evolution strip and a
    GIF per view. Returns how many files were written."""
    usable = [p for p in points if p.id in snaps]
    settings = {"points": [p.id for p in usable]}
    done = {r.file: r.settings for r in run.render_index()}
    written = 0
    for i, layer in enumerate(layers):
        name, key = layer.name, f"{layer.name}.weight"
        base = f"filters/{name}"
        files = [f"renders/{base}/{sub}{p.id}.png" for sub in ("", "learned/") for p in usable]
        if not force and all(done.get(f) == settings for f in files):
            progress("filters", i + 1, len(layers))
            continue
        weights = [snaps[p.id].get(key) for p in usable]
        _check_filters(layer, weights, usable)
        learned = [w - weights[0] for w in weights]  # the first readable point: the init unless it is damaged
        recs = []
        for view, sub, ws in (("filters", "", weights), ("filters_learned", "learned/", learned)):
            scale = layer_scale(ws)
            meta = {"layer": name, "depth": layer.depth, "scale": scale, "settings": settings}
            rgb = layer.depth == 1  # only the first conv sees the image's colours; 3 inputs deeper are features
            frames = [filter_grid(w, scale, rgb=rgb) for w in ws]
            for p, grid in zip(usable, frames):
                path = run.write_artifact("renders", f"{base}/{sub}{p.id}.png", png_bytes(grid))
                recs.append(
                    RenderRecord(run.rel(path), view, epoch=p.epoch, step=p.step, point=p.id, label=p.label, **meta)
                )
            path = run.write_artifact(
                "renders", f"{base}/{sub}strip.png", png_bytes(evolution_strip(ws, scale, rgb=rgb))
            )
            recs.append(RenderRecord(run.rel(path), f"{view}_strip", **meta))
            path = run.write_artifact("renders", f"{base}/{sub}evolution.gif", gif_bytes(frames))
            recs.append(RenderRecord(run.rel(path), f"{view}_gif", **meta))
        run.add_renders(recs)
        written += len(recs)
        progress("filters", i + 1, len(layers))
    return written


def maximize_layers(
    run: Run,
    layers: list[ConvLayer],
    points: list[SnapshotPoint],
    cfg: RenderConfig,
    device: torch.device,
    progress: StageProgress = silent,
    snaps: dict[str, dict[str, torch.Tensor]] | None = None,
    group: Group = SINGLE,
) -> int:
    """Activation maximization of the chosen channels of every layer at every snapshot point in
    ``points`` (``Run.snapshot_points``), batched per layer.

    The objective is each channel's mean response: the output of the BatchNorm after the conv when
    there is one (see ``model.response_layer``), else the conv's output.

    Writes one PNG per channel and one grid per (layer, point) under ``renders/am/<settings id>/``
    (see ``featviz.run.renderset``); returns how many images were rendered.
    ``snaps``: point id -> tensors, where the caller has them loaded already. ``group``: with several
    processes (``featviz.distributed``) this one renders every world-th (moment, layer) item and keeps
    its records in its own part file, which rank 0 merges; each image depends only on (seed, channel),
    so the result equals a single process's.
    """
    data = run.info.data
    size = cfg.settings.size or data.size
    cfg = resolve_batchnorm(run, cfg)
    settings = am_settings(cfg, size)
    sid = settings_set_of(settings)  # one folder per settings set: other settings never overwrite these
    knobs = optimization_settings(cfg, run.info.data, size, str(device))
    done = {r.file: r.settings_set for r in run.render_index()}
    total, count, rendered = len(layers) * len(points), 0, 0
    mine: list[RenderRecord] = []
    model, model_point = None, None  # loaded once per moment, for its first layer that needs rendering
    for item, (point, layer) in enumerate((p, la) for p in points for la in layers):
        if item % group.world != group.rank:
            continue
        if model_point is not point:
            model, model_point = None, point
        name = layer.name
        chans = run_channels(run, layer, cfg)
        base = f"am/{sid}/{name}/{point.id}"
        files = am_files(sid, name, point, chans)
        if not cfg.force and all(done.get(f) == sid for f in files):
            count += 1
            progress("activation maximization", count, total)
            continue
        if model is None:
            model = _model_at(run, point, (snaps or {}).get(point.id), device, cfg.batchnorm)
        target = layer.response or response_layer(model, name)  # runs before layers were traced
        res = maximize_channels(model, target, chans, knobs)
        imgs = to_uint8(res.images)
        where = {
            "layer": name,
            "depth": layer.depth,
            "epoch": point.epoch,
            "step": point.step,
            "point": point.id,
            "label": point.label,
            "settings": settings,
            "settings_set": sid,
        }
        recs = []
        for c, file, img, val in zip(chans, files, imgs, res.values.tolist()):
            path = run.write_artifact("renders", file.removeprefix("renders/"), png_bytes(img))
            recs.append(RenderRecord(run.rel(path), "am", channel=c, activation=val, **where))
        grid = make_grid(imgs, nrow=max(1, int(len(chans) ** 0.5)), padding=1, pad_value=255)
        path = run.write_artifact("renders", f"{base}/grid.png", png_bytes(grid))
        full = {k: v for k, v in res.settings.items() if k != "elapsed_s"}  # every knob, once per batch
        recs.append(
            RenderRecord(
                run.rel(path), "am_grid", render_settings=full, elapsed_s=res.settings.get("elapsed_s"), **where
            )
        )
        if group.world > 1:  # the part so far, after every item: a crash keeps what is done
            mine += recs
            run.save_render_part(group.rank, mine)
        else:
            run.add_renders(recs)
        rendered += len(chans)
        count += 1
        progress("activation maximization", count, total)
    return rendered


def optimization_settings(cfg: RenderConfig, data: DataInfo, size: int, device: str) -> RenderSettings:
    """``cfg.settings`` in the run's input space: ``size`` px, the colour channels, normalization and
    colour basis of ``data``, on ``device``."""
    return dataclasses.replace(
        cfg.settings,
        size=size,
        image_channels=data.image_channels,
        mean=data.mean,
        std=data.std,
        color=data.color_matrix or None,
        device=device,
    )


PROBE_IMAGES = 1000  # validation images the BatchNorm statistics of a render are recomputed on (as analyze's probe)


def resolve_batchnorm(run: Run, cfg: RenderConfig) -> RenderConfig:
    """``cfg`` with its ``batchnorm`` made concrete for ``run``: "probe" where the network has BatchNorm and
    its validation images load, else "stored" (there is nothing to recompute, or nothing to recompute it on).
    Asking for "probe" where the images do not load is a ConfigError saying why."""
    if cfg.batchnorm == "stored":
        return cfg
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in build_run_model(run).modules()):
        return dataclasses.replace(cfg, batchnorm="stored")
    try:
        probe_images(run)  # kept for the renders (``loading.probe_images`` keeps the last data set loaded)
    except FeatvizError as e:
        if cfg.batchnorm == "probe":
            raise ConfigError(
                f"--batchnorm probe needs the run's validation images, which did not load ({one_line(e, 200)}); "
                "use --batchnorm stored"
            ) from None
        return dataclasses.replace(cfg, batchnorm="stored")
    return dataclasses.replace(cfg, batchnorm="probe")


def settings_set(run: Run, cfg: RenderConfig) -> str:
    """The id of the settings set ``cfg`` renders into (``featviz.run.renderset``)."""
    return settings_set_of(am_settings(resolve_batchnorm(run, cfg), cfg.settings.size or run.info.data.size))


def _model_at(
    run: Run, point: SnapshotPoint, state: dict[str, torch.Tensor] | None, device: torch.device, batchnorm: str
) -> torch.nn.Module:
    """The run's network with the weights of ``point`` (``state``, if the caller has loaded them), in eval mode
    on ``device``, with its BatchNorm statistics recomputed on the validation images when ``batchnorm`` is
    "probe"; a snapshot that does not fit the network is a RunError naming it, like a damaged one."""
    model = build_run_model(run)
    state = run.load_point(point) if state is None else state
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # load_state_dict's missing, unexpected or mis-shaped tensors
        raise RunError(misfit(point.id, difference(model.state_dict(), state) or one_line(err, 200))) from None
    model = model.to(device).eval()
    if batchnorm == "probe":
        with torch.no_grad():
            recalibrate_batchnorm(model, probe_images(run)[0][:PROBE_IMAGES].to(device))
    return model


def am_files(sid: str, layer: str, point: SnapshotPoint, chans: list[int]) -> list[str]:
    """The run-relative files of one (layer, snapshot point) batch of activation-maximization images."""
    return [f"renders/am/{sid}/{layer}/{point.id}/ch_{c:04d}.png" for c in chans]


def pending(run: Run, layers: list[ConvLayer], points: list[SnapshotPoint], cfg: RenderConfig) -> int:
    """How many activation-maximization images of ``layers`` at ``points`` are not yet rendered with
    ``cfg``'s settings (all of them with ``cfg.force``)."""
    sid = settings_set_of(am_settings(resolve_batchnorm(run, cfg), cfg.settings.size or run.info.data.size))
    done = {r.file for r in run.render_index() if r.settings_set == sid} if not cfg.force else set()
    return sum(
        f not in done
        for layer in layers
        for p in points
        for f in am_files(sid, layer.name, p, run_channels(run, layer, cfg))
    )


TIMED_STEPS = (1, 4)  # the estimate's two short renders: their difference is the cost of 3 steps, without set-up


def estimate_seconds(
    run: Run, layers: list[ConvLayer], points: list[SnapshotPoint], cfg: RenderConfig, device: torch.device
) -> float:
    """Expected seconds for the activation-maximization images of ``layers`` at ``points``: short real renders
    (``TIMED_STEPS``, the layer's own channels and settings, the run's init weights) of the cheapest and the
    costliest layer give the seconds per image and step at each; every layer's cost is interpolated between
    them by the multiply-adds of the network up to it (``layers.prefix_macs``), x channels x steps x moments.
    A real step also pays for the transforms, the parametrization and Adam, which a bare forward and backward
    pass misses (it made a ResNet-18's estimate 40% short)."""
    size = cfg.settings.size or run.info.data.size
    model = build_run_model(run).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    prefix, total = prefix_macs(model, run.info.data.image_channels, size)
    macs = {la.name: prefix.get(la.name, total) for la in layers}
    lo, hi = min(layers, key=lambda la: macs[la.name]).name, max(layers, key=lambda la: macs[la.name]).name
    ends = [lo] if lo == hi else [lo, hi]
    by_name = {la.name: la for la in layers}
    knobs = optimization_settings(cfg, run.info.data, size, str(device))
    per: dict[str, float] = {}  # seconds per image and step
    for name in ends:
        la = by_name[name]
        chans = run_channels(run, la, cfg)[: cfg.settings.chunk]
        target = la.response or response_layer(model, name)
        maximize_channels(model, target, chans, dataclasses.replace(knobs, steps=1, trace_every=1))  # warm-up
        took = []
        for steps in TIMED_STEPS:
            t0 = time.perf_counter()
            maximize_channels(model, target, chans, dataclasses.replace(knobs, steps=steps, trace_every=steps))
            took.append(time.perf_counter() - t0)
        per[name] = max(took[1] - took[0], 1e-6) / (TIMED_STEPS[1] - TIMED_STEPS[0]) / len(chans)
    span = macs[hi] - macs[lo]
    seconds = 0.0
    for la in layers:
        w = (macs[la.name] - macs[lo]) / span if span > 0 else 0.0
        seconds += len(run_channels(run, la, cfg)) * cfg.settings.steps * (per[lo] + w * (per[hi] - per[lo]))
    return seconds * len(points)
