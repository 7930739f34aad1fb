"""Do class visualizations carry what a network learned? A cross-run transfer test after the
transferability score of the MACO paper (Fel et al. 2023): render one activation-maximization image per
class at each run's logits, classify every image with every other run's network, and count the hits
against chance (1 / classes). High: the pictures carry features the networks share; at chance: each
network's private noise.

Each network is measured with BatchNorm statistics recomputed on the comparison's shared images, in eval
mode; images are rendered with the render stage's default settings in the run's own input space.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from featviz.config import RenderConfig
from featviz.errors import ConfigError
from featviz.images import Normalizer
from featviz.loading import build_run_model
from featviz.model import recalibrate_batchnorm
from featviz.optvis import RenderSettings, maximize_channels
from featviz.render import optimization_settings
from featviz.run.store import Run
from featviz.zoo import logits_of


def logit_layer(model: nn.Module) -> str:
    """The name of the model's last ``nn.Linear`` (its logits); ConfigError when it has none."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError("the class-visualization transfer test needs a network whose logits come from an nn.Linear")
    return names[-1]


def network(run: Run, state: dict[str, torch.Tensor], shared: torch.Tensor, device: torch.device) -> nn.Module:
    """``run``'s network with ``state``, BatchNorm recomputed on the shared uint8 images, in eval mode."""
    model = build_run_model(run)
    model.load_state_dict(state)
    model.to(device).eval()
    recalibrate_batchnorm(model, Normalizer(run.info.data.mean, run.info.data.std)(shared).to(device))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def class_images(run: Run, model: nn.Module, device: torch.device, settings: RenderSettings) -> torch.Tensor:
    """One image per class [K, C, H, W] in 0..1, maximizing each logit of ``model``."""
    s = optimization_settings(RenderConfig(settings=settings), run.info.data, run.info.data.size, str(device))
    return maximize_channels(model, logit_layer(model), None, s).images


@torch.no_grad()
def predictions(run: Run, model: nn.Module, images: torch.Tensor, device: torch.device) -> list[int]:
    """``model``'s class for each 0..1 image, normalized as ``run`` was trained."""
    return logits_of(model(Normalizer(run.info.data.mean, run.info.data.std)(images.to(device)))).argmax(1).tolist()


def transfer(
    runs: list[Run],
    states: list[dict[str, torch.Tensor]],
    shared: torch.Tensor,
    device: torch.device,
    settings: RenderSettings = RenderSettings(),
    keep: list[torch.Tensor] | None = None,
    models: list[nn.Module] | None = None,
) -> dict[str, Any]:
    """``hits[i][j]``: how many of run i's class images run j's network puts in their class (the diagonal:
    run i on its own images); ``rate``: the mean off-diagonal hit rate; ``chance``: 1 / classes. ``keep``: a
    list that receives each run's class images [K, C, H, W] (0..1), for a page to show. ``models``: each run's
    ``network`` already built (then ``states`` is not read)."""
    names = {tuple(r.info.data.classes) for r in runs}
    if len(names) != 1 or names == {()}:
        raise ConfigError("the class-visualization transfer test needs runs trained on the same named classes")
    k = len(names.pop())
    models = models or [network(r, s, shared, device) for r, s in zip(runs, states)]
    images = [class_images(r, m, device, dataclasses.replace(settings)) for r, m in zip(runs, models)]
    hits = [
        [sum(p == c for c, p in enumerate(predictions(rj, mj, images[i], device))) for rj, mj in zip(runs, models)]
        for i in range(len(runs))
    ]
    if keep is not None:
        keep.extend(images)
    off = [hits[i][j] for i in range(len(runs)) for j in range(len(runs)) if i != j]
    return {"classes": k, "hits": hits, "rate": sum(off) / (k * len(off)), "chance": 1 / k}
