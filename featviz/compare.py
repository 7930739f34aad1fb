"""Compare runs: the same layers across seeds, optimizers and architectures, on one shared set of images.

In: two or more runs that take the same input size and colour channels. Out (a dict, written by the CLI as
``compare.json``):

- ``cka``: debiased linear CKA of every layer of run A against every layer of run B (each layer's
  activation averaged over positions, as analyze's CKA), for every pair of runs, at one moment (``at``:
  the final snapshot, the random init or a step), with each run's BatchNorm statistics recomputed on the
  shared images;
- ``identification``: Kornblith et al.'s test (2019): for each layer of A, whether B's most similar layer
  is the one at the same depth; over every ordered pair of runs with the same number of conv layers;
- ``init_control``: the same-depth CKA of A against B's random init, the baseline with no training in B;
- ``matching``: channels matched one to one between A and B per depth by the correlation of their mean
  activations (the assignment problem, solved by ``scipy.optimize.linear_sum_assignment``), after Li et al.
  (2016), "Convergent learning".

Definitions and tests: docs/metrics.md ("Comparing runs").
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featviz.device import resolve_device
from featviz.errors import ConfigError, RunError
from featviz.images import Normalizer
from featviz.loading import fitting, probe_images
from featviz.metrics import layer_stats, linear_cka
from featviz.model import activation_layer
from featviz.optvis import RenderSettings
from featviz.progress import StageProgress, silent
from featviz.run.store import Run
from featviz.transfer import network, transfer

PROBE = 500  # shared images the runs are compared on (the first run's validation images)


def differences(runs: list[Run]) -> dict[str, list[Any]]:
    """The run.json settings that differ between ``runs`` ("seed", "train.optimizer", "model.widths",
    "data.name", ...): name -> one value per run, for legends that say what tells the runs apart."""
    rows = []
    for r in runs:
        cfg = r.info.configs if isinstance(r.info.configs, dict) else {}
        flat = {"seed": r.info.seed}
        for section in ("data", "model", "train"):
            for k, v in (cfg.get(section) or {}).items():
                if (section, k) != ("train", "seed"):  # the run's seed, above
                    flat[f"{section}.{k}"] = tuple(v) if isinstance(v, list) else v
        rows.append(flat)
    keys = sorted({k for row in rows for k in row})
    return {k: [row.get(k) for row in rows] for k in keys if len({repr(row.get(k)) for row in rows}) > 1}


def check_comparable(runs: list[Run]) -> None:
    """ConfigError (one line) unless there are at least two runs, all different folders, that take images of
    one size and colour channel count."""
    if len(runs) < 2:
        raise ConfigError("compare needs at least two runs")
    if len({r.path.resolve() for r in runs}) < len(runs):
        raise ConfigError("compare got the same run twice")
    shapes = {(r.info.data.size, r.info.data.image_channels) for r in runs}
    if len(shapes) > 1:
        said = ", ".join(f"{r.name}: {r.info.data.size} px, {r.info.data.image_channels} channels" for r in runs)
        raise ConfigError(f"runs take different inputs ({said}); compare needs one input size and channel count")


def state_at(run: Run, at: str) -> tuple[str, dict[str, torch.Tensor]]:
    """The snapshot ``at`` names: "final" (the last readable epoch), "init" (epoch 0: the random init of a
    trained run; for an imported run, its first checkpoint) or a step number (any snapshot at that optimizer
    step); its label and tensors."""
    points = [p for p in run.snapshot_points()]
    if at == "final":  # the last epoch snapshot that loads and fits the network
        for point in reversed([p for p in points if p.kind == "epoch"]):
            good, _ = fitting(run, *run.load_points([point]))
            if good:
                return point.label or point.id, next(iter(good.values()))
        raise RunError(f"run {run.name} has no readable epoch snapshot")
    if at == "init":
        chosen = [p for p in points if p.kind == "epoch" and p.epoch == 0]
    elif at.isdigit():
        chosen = [p for p in points if p.step == int(at)]
    else:
        raise ConfigError(f"--at must be final, init or an optimizer step, got {at!r}")
    if not chosen:
        steps = ", ".join(str(p.step) for p in points)
        raise ConfigError(f"run {run.name} has no snapshot at {at}; its snapshots are at steps {steps}")
    states, bad = fitting(run, *run.load_points(chosen[-1:]))
    if not states:
        raise RunError(f"run {run.name}: the snapshot at {at} is unreadable: {'; '.join(bad.values())}")
    point = chosen[-1]
    return point.label or point.id, next(iter(states.values()))


def layer_means(
    run: Run, state: dict[str, torch.Tensor], raw: torch.Tensor, device: torch.device, model: nn.Module | None = None
) -> dict[str, Any]:
    """Each conv layer's activation averaged over positions [N, C] on ``raw`` (uint8 images, normalized as
    the run was trained), with BatchNorm statistics recomputed on them (``model``: ``transfer.network`` of
    the same run, state and images, if the caller has built it)."""
    model = model if model is not None else network(run, state, raw, device)
    x = Normalizer(run.info.data.mean, run.info.data.std)(raw).to(device)
    names = {layer.name: layer.activation or activation_layer(model, layer.name) for layer in run.info.layers}
    stats = layer_stats(model, list(set(names.values())), x)
    return {conv: stats[act]["mean"].double() for conv, act in names.items()}


def cka_matrix(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[list[float]]:
    """Debiased linear CKA of every layer of ``a`` (rows) against every layer of ``b`` (columns)."""
    return [[linear_cka(x, y) for y in b.values()] for x in a.values()]


def identified(cka: list[list[float]]) -> list[bool]:
    """Per row layer: whether the most similar column layer is the one at the same depth (square only)."""
    return [max(range(len(row)), key=row.__getitem__) == i for i, row in enumerate(cka)]


def match_units(a: torch.Tensor, b: torch.Tensor) -> list[tuple[int, int, float]]:
    """Channels of ``a`` [N, Ca] matched one to one with channels of ``b`` [N, Cb] (min(Ca, Cb) pairs) so that
    the summed Pearson correlation of their activations is largest; (a channel, b channel, correlation),
    best first. A channel that never varies correlates 0 with everything."""
    from scipy.optimize import linear_sum_assignment  # the assignment problem: scipy's Jonker-Volgenant solver

    za, zb = _standardized(a), _standardized(b)
    corr = (za.T @ zb) / a.shape[0]  # [Ca, Cb]
    rows, cols = linear_sum_assignment(corr.numpy(), maximize=True)
    pairs = [(int(i), int(j), float(corr[i, j])) for i, j in zip(rows, cols)]
    return sorted(pairs, key=lambda p: -p[2])


def _standardized(x: torch.Tensor) -> torch.Tensor:
    x = x.double() - x.double().mean(0)
    sd = x.pow(2).mean(0).sqrt()
    return torch.where(sd > 0, x / torch.where(sd > 0, sd, 1.0), torch.zeros_like(x))


def compare(
    runs: list[Run | str | Path],
    at: str = "final",
    probe_size: int = PROBE,
    device: str = "auto",
    progress: StageProgress = silent,
    transfer_steps: int | None = 256,
    class_images: list[torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Every number of the module docstring for ``runs`` (Run objects or folders) at ``at``; the shared images
    are the first run's first ``probe_size`` validation images (each run normalizes them as it was trained).
    ``transfer_steps``: optimizer steps of the class visualizations of ``featviz.transfer`` (None: skip it;
    it is also skipped, saying why, when the runs do not share their classes); ``class_images``: a list that
    receives each run's class visualizations, for the page."""
    runs = [Run.of(r) for r in runs]
    check_comparable(runs)
    dev = resolve_device(device)
    _, raw, _ = probe_images(runs[0])
    raw = raw[torch.randperm(len(raw), generator=torch.Generator().manual_seed(1))[:probe_size]]  # any class order
    if len(raw) < 4:
        raise ConfigError(f"compare needs at least 4 shared images, run {runs[0].name} gives {len(raw)}")
    feats, init, labels, models = [], [], [], []
    for i, r in enumerate(runs, start=1):
        label, state = state_at(r, at)
        labels.append(label)
        models.append(network(r, state, raw, dev))  # built once: the CKA part and the transfer test share it
        feats.append(layer_means(r, state, raw, dev, models[-1]))
        init.append(feats[-1] if at == "init" else layer_means(r, state_at(r, "init")[1], raw, dev))
        progress("activations", i, len(runs))
    out: dict[str, Any] = {
        "runs": [r.name for r in runs],
        "paths": [str(r.path) for r in runs],
        "differs": differences(runs),
        "at": at,
        "snapshots": labels,
        "images": {"count": len(raw), "from": runs[0].name},
        "layers": [list(f) for f in feats],
        "pairs": [],
    }
    hits: list[bool] = []
    for i, j in itertools.combinations(range(len(runs)), 2):
        cka = cka_matrix(feats[i], feats[j])
        pair: dict[str, Any] = {"a": i, "b": j, "cka": cka}
        same = len(feats[i]) == len(feats[j])
        if same:
            cols = list(zip(*cka))
            pair["identified_ab"] = identified(cka)
            pair["identified_ba"] = identified([list(c) for c in cols])
            hits += pair["identified_ab"] + pair["identified_ba"]
            pair["same_depth"] = [cka[d][d] for d in range(len(cka))]
            pair["init_control"] = [
                linear_cka(x, y) for x, y in zip(feats[i].values(), init[j].values())
            ]  # A at ``at`` against B's random init
            pair["matching"] = {
                la: [list(p) for p in match_units(feats[i][la], feats[j][lb])] for la, lb in zip(feats[i], feats[j])
            }
        out["pairs"].append(pair)
    out["identification"] = {"hits": sum(hits), "tests": len(hits), "accuracy": sum(hits) / len(hits) if hits else None}
    if transfer_steps:
        try:
            out["transfer"] = transfer(
                runs, [], raw, dev, RenderSettings(steps=transfer_steps), class_images, models=models
            )
        except ConfigError as e:
            out["transfer"] = {"skipped": str(e)}
        progress("class visualizations", 1, 1)
    return out
