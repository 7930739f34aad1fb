"""How faithful a run's activation-maximization images are to what the network responds to in data: where
each image's activation falls among the validation images' (``am_percentile``), and the top validation
images of each rendered channel, cropped to its receptive field (strip PNGs under ``renders/top9/``).
Part of the analyze stage (``featviz.analyze``); definitions in docs/metrics.md.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.utils import make_grid

from featviz.images import Normalizer, decode_png, png_bytes
from featviz.layers import fields_px
from featviz.loading import load_model_at
from featviz.metrics import crop_around, layer_stats, percentile_of
from featviz.model import load_batchnorm, response_layer
from featviz.render import PROBE_IMAGES
from featviz.run.renderset import records_of
from featviz.run.store import Run


def faithfulness(
    run: Run,
    images: torch.Tensor,
    raw: torch.Tensor,
    device: torch.device,
    sid: str | None,
    k: int = 9,
    snaps: dict[int, dict[str, torch.Tensor]] | None = None,
    batchnorm: dict[int, dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """For every rendered channel of settings set ``sid`` at its last rendered epoch: ``am_percentile``,
    where a(AM image) falls among a(validation image) for that channel (``metrics.percentile_of``: 100 =
    above every image), with a = the channel's spatially averaged response (the render objective, see
    ``model.response_layer``), both measured the same way: the stored image
    (resized to the data's size when it was rendered at another one), normalized like the data, one
    forward pass in eval mode; and the top-``k`` data-set images, cropped to the receptive field around
    the channel's strongest position, saved as one strip PNG. ``snaps``: epoch -> snapshot of the
    readable epochs (then only those are considered); ``batchnorm``: as for ``receptive_fields``, statistics
    recomputed on ``images[:PROBE_IMAGES]``.
    """
    am = [
        r
        for r in records_of(run.render_index(), sid)  # epoch snapshots only: the last is the final model
        if r.kind == "am" and r.epoch is not None and (snaps is None or r.epoch in snaps)
    ]
    if not am:
        return {"skipped": f"no activation-maximization renders: run featviz render {run.path}"}
    epoch = max(r.epoch for r in am)  # type: ignore[type-var]
    am = [r for r in am if r.epoch == epoch]
    model = load_model_at(run, epoch, device, (snaps or {}).get(epoch))
    calibrate = 0
    if (am[0].settings or {}).get("batchnorm") == "probe":  # as the renders were made
        kept = (batchnorm or {}).get(epoch)
        if kept is not None:
            load_batchnorm(model, kept)
        else:  # recomputed on images[:PROBE_IMAGES] by the measuring pass itself (the same statistics)
            calibrate = PROBE_IMAGES
    rfs = dict(zip([layer.name for layer in run.info.layers], fields_px(run.info)))
    names = sorted({r.layer for r in am if r.layer is not None})
    responses = {layer.name: layer.response for layer in run.info.layers}
    targets = {n: responses.get(n) or response_layer(model, n) for n in names}  # what the renders maximized
    stats = layer_stats(model, list(targets.values()), images.to(device), as_returned=True, calibrate=calibrate)
    size = raw.shape[-1]
    data = run.info.data
    am_imgs = torch.stack([decode_png(run.read_file_bytes(r.file)) for r in am])
    am_size = int(am_imgs.shape[-1])
    am_x = _normalize(am_imgs, data.mean, data.std, size)
    am_stats = layer_stats(model, list(targets.values()), am_x.to(device), as_returned=True)
    am_index = {(r.layer, r.channel): i for i, r in enumerate(am)}
    out: dict[str, Any] = {
        "epoch": epoch,
        "settings_set": sid,
        "am_size_px": am_size,
        "measured_at_px": size,
        "validation_images": len(images),
    }
    for name in names:
        means, where = stats[targets[name]]["mean"], stats[targets[name]]["argmax"]
        top = means.topk(min(k, len(means)), dim=0).indices  # [k, C]
        data_max = means.max(0).values
        side = min(rfs.get(name, size), size)
        feat = stats[targets[name]]["width"]
        recs = sorted((r for r in am if r.layer == name), key=lambda r: r.channel or 0)
        rows = []
        for rec in recs:
            c = rec.channel
            crops = [crop_around(raw[i], int(where[i, c]), feat, side) for i in top[:, c].tolist()]
            strip = make_grid(torch.stack(crops), nrow=len(crops), padding=1, pad_value=255)
            path = run.write_artifact("renders", f"top9/{name}/ch_{c:04d}.png", png_bytes(strip))
            peak = float(data_max[c])
            act = float(am_stats[targets[name]]["mean"][am_index[(name, c)], c])
            rows.append(
                {
                    "channel": c,
                    "am_percentile": percentile_of(act, means[:, c]),
                    "am_activation": act,
                    "data_max": peak,
                    "top": top[:, c].tolist(),
                    "file": run.rel(path),
                }
            )
        out[name] = {"receptive_field_px": side, "channels": rows}
    return out


def _normalize(imgs: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], size: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> the model's input at ``size`` px, normalized: resized when needed (area
    averaging to shrink, bilinear to enlarge), channels matched to the data (an RGB render of a
    grayscale model is averaged)."""
    x = imgs.float() / 255.0
    if x.shape[1] != len(mean):
        x = x.mean(1, keepdim=True).expand(-1, len(mean), -1, -1)
    if x.shape[-1] > size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
    elif x.shape[-1] < size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return Normalizer(mean, std)(x)
