"""The render stage's work: a run's snapshots -> filter pictures and activation-maximization images.

In: a Run, its loaded snapshots, the layers and epochs to draw. Out: files under ``RUN/renders/`` and
one record per file in ``renders.jsonl`` (written through the store). Activation-maximization images
live in one folder per render settings set (``featviz.renderset``). Re-running reuses every file whose
record matches, unless ``force``. ``featviz.pipeline.render_run`` runs this stage and rebuilds the gallery.
"""

from __future__ import annotations

from typing import Any

import torch

from featviz.config import RenderConfig
from featviz.errors import ConfigError
from featviz.filters import evolution_strip, filter_grid, layer_scale
from featviz.images import gif_bytes, png_bytes, to_uint8
from featviz.loading import load_model_at
from featviz.model import response_layer
from featviz.progress import StageProgress, silent
from featviz.renderset import am_settings, record_set, settings_id
from featviz.store import Run


def select_layers(run: Run, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The run's conv layers named in ``names`` (all when empty); unknown names list the valid ones."""
    layers = run.meta["layers"]
    if not names:
        return layers
    valid = [layer["name"] for layer in layers]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"unknown layer {unknown[0]!r}; valid conv layers: {', '.join(valid)}")
    return [layer for layer in layers if layer["name"] in names]


def render_filters(run: Run, layers: list[dict[str, Any]], snaps: dict[int, dict[str, torch.Tensor]],
                   force: bool = False, progress: StageProgress = silent) -> int:
    """Filter grid per epoch, an evolution strip and a GIF per layer, from ``snaps`` (epoch -> snapshot:
    the run's readable epochs; a damaged one is left out of the strip and GIF). Returns how many
    files were written."""
    epochs = run.snapshot_epochs()
    done = {r["file"]: r for r in run.render_index()}
    written = 0
    for i, layer in enumerate(layers):
        name, key = layer["name"], f"{layer['name']}.weight"
        base = f"filters/{name}"
        if not force and all(done.get(f"renders/{base}/epoch_{e:03d}.png", {}).get("settings") == {"epochs": epochs}
                             for e in epochs):
            progress("filters", i + 1, len(layers))
            continue
        usable = sorted(snaps)
        settings = {"epochs": usable}
        weights = [snaps[e][key] for e in usable]
        scale = layer_scale(weights)
        meta = {"layer": name, "depth": layer["depth"], "scale": scale, "settings": settings}
        recs, frames = [], []
        for e, w in zip(usable, weights):
            grid = filter_grid(w, scale)
            frames.append(grid)
            path = run.write_artifact("renders", f"{base}/epoch_{e:03d}.png", png_bytes(grid))
            recs.append({"kind": "filters", "epoch": e, "file": run.rel(path), **meta})
        path = run.write_artifact("renders", f"{base}/strip.png", png_bytes(evolution_strip(weights, scale)))
        recs.append({"kind": "filters_strip", "file": run.rel(path), **meta})
        path = run.write_artifact("renders", f"{base}/evolution.gif", gif_bytes(frames))
        recs.append({"kind": "filters_gif", "file": run.rel(path), **meta})
        run.add_renders(recs)
        written += len(recs)
        progress("filters", i + 1, len(layers))
    return written



def render_actmax(run: Run, layers: list[dict[str, Any]], epochs: list[int], cfg: RenderConfig,
                  device: torch.device, progress: StageProgress = silent,
                  snaps: dict[int, dict[str, torch.Tensor]] | None = None) -> int:
    """Activation maximization of the chosen channels of every layer at every epoch, batched per layer.

    The objective is each channel's mean response: the output of the BatchNorm after the conv when
    there is one (see ``model.response_layer``), else the conv's output.

    Writes one PNG per channel and one grid per (layer, epoch) under ``renders/am/<settings id>/``
    (see ``featviz.renderset``); returns how many images were rendered.
    ``snaps``: epoch -> snapshot, where the caller has them loaded already.
    """
    from featviz.optvis import render_channels
    from torchvision.utils import make_grid

    data = run.meta["data"]
    size = cfg.size or int(data["size"])
    settings = am_settings(cfg, size)
    sid = settings_id(settings)  # one folder per settings set: other settings never overwrite these
    color = torch.tensor(data["color_matrix"]) if data.get("color_matrix") else None
    done = {r["file"]: r for r in run.render_index()}
    total, count, rendered = len(layers) * len(epochs), 0, 0
    for epoch in epochs:
        model = None
        for layer in layers:
            name = layer["name"]
            chans = list(cfg.channels) or list(range(layer["out_ch"]))
            base = f"am/{sid}/{name}/epoch_{epoch:03d}"
            files = [f"renders/{base}/ch_{c:04d}.png" for c in chans]
            if not cfg.force and all(f in done and record_set(done[f]) == sid for f in files):
                count += 1
                progress("activation maximization", count, total)
                continue
            model = model or load_model_at(run, epoch, device, (snaps or {}).get(epoch))
            res = render_channels(model, response_layer(model, name), chans, chunk=cfg.chunk, param=cfg.param, size=size,
                                  image_channels=int(data["channels"]), steps=cfg.steps, lr=cfg.lr,
                                  transforms=cfg.transforms, seed=cfg.seed, mean=data["mean"], std=data["std"],
                                  color=color, device=device)
            imgs = to_uint8(res.images)
            recs = []
            for c, img, val in zip(chans, imgs, res.values.tolist()):
                path = run.write_artifact("renders", f"{base}/ch_{c:04d}.png", png_bytes(img))
                recs.append({"kind": "am", "layer": name, "depth": layer["depth"], "epoch": epoch, "channel": c,
                             "file": run.rel(path), "activation": val, "settings": settings, "settings_id": sid})
            grid = make_grid(imgs, nrow=max(1, int(len(chans) ** 0.5)), padding=1, pad_value=255)
            path = run.write_artifact("renders", f"{base}/grid.png", png_bytes(grid))
            full = {k: v for k, v in res.settings.items() if k != "elapsed_s"}  # every knob, once per batch
            recs.append({"kind": "am_grid", "layer": name, "depth": layer["depth"], "epoch": epoch,
                         "file": run.rel(path), "settings": settings, "settings_id": sid, "render_settings": full,
                         "elapsed_s": res.settings.get("elapsed_s")})
            run.add_renders(recs)
            rendered += len(chans)
            count += 1
            progress("activation maximization", count, total)
    return rendered
