"""When each layer's representation reached its final form, measured several ways, so that a claim about
the order in which layers settle can be checked against how it was measured.

In: a run's snapshots (epoch ends and within-epoch steps) and probe images. Out: per conv layer, debiased
linear CKA to the final snapshot at every snapshot (``convergence``), and the settling controls
(``settling``): pooled and flattened features, the layer's own weights alone, four crossing criteria and a
half-sample interval for the step at which the layer formed. Every snapshot is measured with BatchNorm
statistics recomputed on the probe images. Definitions and biases: docs/metrics.md ("Settling").
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from featviz.errors import RunError
from featviz.hooks import capture
from featviz.layers import measured_layers
from featviz.loading import build_run_model
from featviz.metrics import cka_of_features, cka_of_grams, cka_of_subsets, linear_cka
from featviz.model import activation_layer, batchnorm_buffers, calibrating_batchnorm, measuring_passes
from featviz.partial import Downstream
from featviz.progress import StageProgress, silent
from featviz.reading import first_epoch_above
from featviz.run.schema import ConvLayer
from featviz.run.store import Run

# crossing criteria: name -> (threshold, of the baseline-relative CKA (CKA_t - CKA_0) / (1 - CKA_0))
CRITERIA = {"0.8": (0.8, False), "0.9": (0.9, False), "0.95": (0.95, False), "relative 0.9": (0.9, True)}
DRAWS = 100  # half-samples of the probe images for the interval of the step at which a layer formed
# probe images the flattened-map CKA and the own-weights control are measured on (the first ones): a Gram
# matrix of flattened maps costs images^2 x channels x positions (about 36 GFLOP per snapshot at 1,000
# images for the default network, a quarter at 500), and the own-weights control one pass per layer per snapshot
FLAT_IMAGES = 500
CALIBRATION = 1000  # the first probe images each snapshot's BatchNorm statistics are recomputed on, in one batch


def grid_every(run: Run) -> int | None:
    """K when the run's within-epoch snapshots were taken every K optimizer steps (a uniform grid), else None."""
    train = run.info.configs.get("train", {}) if isinstance(run.info.configs, dict) else {}
    spec = train.get("snapshots", "log")
    every = train.get("snapshot_every_steps") or 0
    if isinstance(spec, str) and spec.startswith("every:") and spec[6:].isdigit():
        every = int(spec[6:])
    return int(every) if isinstance(every, int) and every > 0 else None


def formed_at(cka: list[float], steps: list[int], threshold: float, relative: bool = False) -> int | None:
    """The first step from which CKA stays >= ``threshold`` (with ``relative``: the baseline-relative
    CKA, (CKA_t - CKA_0) / (1 - CKA_0), where step 0's value is the baseline); None if never."""
    if relative:
        c0 = cka[0]
        cka = [(c - c0) / (1 - c0) if c0 < 1 else 1.0 for c in cka]
    return first_epoch_above(cka, threshold, steps)


def _measure(
    model: nn.Module, names: list[str], x: torch.Tensor, gram: bool | set[str]
) -> dict[str, dict[str, torch.Tensor]]:
    """One eval-mode pass over ``x`` (in batches) that also recomputes every BatchNorm's statistics on its first
    ``CALIBRATION`` images (``model.measuring_passes``): per named layer, the channel means [N, C] (the pooled
    representation), each channel's peak [C] and, with ``gram``, the Gram matrix [M, M] (float64) of the
    column-centred flattened maps (every position a feature) of the first M = min(N, ``FLAT_IMAGES``) images
    (``gram``: True for every layer, or the set of layer names that need it). Each batch's maps are reduced
    after the batch's pass (a layer's output as the whole pass left it: an in-place ReLU after it counts), so
    memory holds one batch's maps and the Gram layers' first M images, not every layer's maps of every image."""
    names = list(dict.fromkeys(names))  # a module named twice is measured once
    wanted = {n for n in names if gram is True or (isinstance(gram, set) and n in gram)}
    means: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    peaks: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    flats: dict[str, list[torch.Tensor]] = {n: [] for n in wanted}
    kept = 0
    for chunk, acts in measuring_passes(model, names, x, CALIBRATION):
        for n in names:
            a = acts[n].float().flatten(2).cpu()  # [chunk, C, P]
            means[n].append(a.mean(2))
            peaks[n].append(a.amax((0, 2)))
            if n in wanted and kept < FLAT_IMAGES:
                flats[n].append(a[: FLAT_IMAGES - kept].flatten(1))
        kept += len(chunk)
    out = {n: {"mean": torch.cat(means[n]), "peak": torch.stack(peaks[n]).amax(0)} for n in names}
    for n in wanted:
        flat = torch.cat(flats[n])
        flat = flat - flat.mean(0, keepdim=True)
        out[n]["gram"] = (flat @ flat.T).double()
    return out


def half_sample_interval(
    pooled: list[torch.Tensor], final: torch.Tensor, steps: list[int], threshold: float = 0.9, draws: int = DRAWS
) -> tuple[list[int | None], list[int | None]]:
    """The step at which a layer formed (CKA >= ``threshold`` for good), recomputed on ``draws`` random
    halves of the probe images (without replacement: a half-sample's spread matches the full sample's
    sampling spread, and no image is paired with itself, which would bias debiased CKA upward).
    ``pooled``: the layer's features [N, C] at each step; ``final``: at the final snapshot. Returns the
    2.5th and 97.5th percentile steps (None = never formed) and every draw's step, in draw order."""
    n = final.shape[0]
    g = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(n, generator=g)[: n // 2] for _ in range(draws)])  # [B, m]
    halves = torch.zeros(draws, n, dtype=torch.float64).scatter_(1, idx, 1.0)
    series = torch.stack([cka_of_subsets(x, final, halves) for x in pooled])  # [P, B]
    never = steps[-1] + 1
    found = [first_epoch_above(series[:, b].tolist(), threshold, steps) for b in range(draws)]
    ranked = sorted(never if s is None else s for s in found)
    lo, hi = ranked[math.floor(0.025 * (draws - 1))], ranked[math.ceil(0.975 * (draws - 1))]
    return [None if v == never else v for v in (lo, hi)], found


def convergence(
    run: Run,
    probe: torch.Tensor,
    device: torch.device,
    progress: StageProgress = silent,
    snaps: dict[int, dict[str, torch.Tensor]] | None = None,
    steps: dict[int, dict[str, torch.Tensor]] | None = None,
    keep_batchnorm: dict[int, dict[str, torch.Tensor]] | None = None,
    settling: bool = True,
) -> dict[str, Any]:
    """Debiased linear CKA to the final snapshot per layer and epoch (and per step snapshot, when the
    run has them), with every snapshot's BatchNorm statistics recomputed on ``probe``; channels never
    active on the probe set at the final snapshot; ``formed_at_step``: the first snapshot's step from which
    CKA to the final snapshot stays >= 0.9 (None if never); ``settling``: the controls (module docstring).
    ``snaps``: epoch -> snapshot, if the caller has them loaded already (then only those epochs are used:
    the readable ones); ``steps``: step -> snapshot, likewise for the within-epoch snapshots.
    ``keep_batchnorm``: filled with each epoch snapshot's BatchNorm statistics as recomputed on the first
    ``CALIBRATION`` probe images (epoch -> ``model.batchnorm_buffers``), for the measurements that recompute
    them on the same images (``model.load_batchnorm``). ``settling=False``: CKA alone, without the settling
    controls (no ``settling`` entries)."""
    recs = run.metrics(strict=False)
    epoch_step = {r["epoch"]: r["step"] for r in recs}
    epochs = sorted(snaps) if snaps is not None else run.snapshot_epochs()
    points = [(epoch_step.get(e, 0), "epoch", e) for e in epochs]
    last_step = epoch_step.get(epochs[-1], 0)
    at_epoch_end = {step for step, _, _ in points}
    points += [(s, "step", s) for s in run.snapshot_steps() if s <= last_step and s not in at_epoch_end]
    points.sort()

    def state_of(kind: str, key: int) -> dict[str, torch.Tensor] | None:
        if kind == "epoch":
            return snaps[key] if snaps is not None else run.load_snapshot(key)
        try:
            return steps[key] if steps is not None else run.load_step_snapshot(key)
        except (KeyError, RunError):  # a damaged step snapshot is left out, like a damaged epoch
            return None

    model = build_run_model(run).to(device).eval()
    names = [layer.activation or activation_layer(model, layer.name) for layer in run.info.layers]
    controlled = {la.name for la in measured_layers(run.info.layers)} if settling else set()  # deep: those shown
    control_names = {n for la, n in zip(run.info.layers, names) if la.name in controlled}
    probe = probe.to(device)
    readable = [(step, kind, key) for step, kind, key in points if state_of(kind, key) is not None]
    grid = _grid(run, [s for s, _, _ in readable])  # indices into readable

    def measured(kind: str, key: int, gram: bool) -> dict[str, dict[str, torch.Tensor]]:
        model.load_state_dict(state_of(kind, key))  # type: ignore[arg-type]
        # _measure recomputes BatchNorm: the snapshot's own running statistics lag behind its weights
        got = _measure(model, names, probe, control_names if gram else False)
        if keep_batchnorm is not None and kind == "epoch":
            keep_batchnorm[key] = batchnorm_buffers(model)
        return got

    final = measured(*readable[-1][1:], gram=True)  # the last grid point: its Gram matrices are needed too
    last = len(readable) - 1
    pooled: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    flattened: dict[str, list[float]] = {n: [] for n in names}
    for i, (_, kind, key) in enumerate(readable):
        m = final if i == last else measured(kind, key, gram=i in grid)
        for n in names:
            pooled[n].append(m[n]["mean"])
            if i in grid and n in control_names:
                flattened[n].append(float(cka_of_grams(m[n]["gram"], final[n]["gram"])))
        progress("activations", i + 1, len(readable))
    out = {}
    at = [s for s, _, _ in readable]
    for layer, n in zip(run.info.layers, names):
        cka = [linear_cka(x, final[n]["mean"]) for x in pooled[n]]
        out[layer.name] = {
            "activation_layer": n,
            "cka_to_final": [c for c, (_, kind, _) in zip(cka, readable) if kind == "epoch"],
            "cka_at_init": cka[0],  # the baseline: how much of the final form the random init already has
            "dead_channels": [int(c) for c in (final[n]["peak"] <= 0).nonzero().flatten()],
            "formed_at_step": first_epoch_above(cka, 0.9, at),
        }
        if run.snapshot_steps():
            out[layer.name]["by_step"] = {"steps": at, "cka_to_final": cka}
    steps_on = [at[i] for i in grid]
    kept = [(la, n) for la, n in zip(run.info.layers, names) if la.name in controlled]
    if not kept:
        return out
    own = _own_weights(
        [la for la, _ in kept],
        model,
        [n for _, n in kept],
        probe[:FLAT_IMAGES],
        [(lambda k=readable[i][1], key=readable[i][2]: state_of(k, key)) for i in grid],
        progress,
    )
    for layer, n in kept:  # the settling controls: every layer of a small model, a deep one's shown layers
        on = [pooled[n][i] for i in grid]
        series = {
            "pooled": [float(cka_of_features(x, on[-1])) for x in on],
            "flattened": flattened[n],
            "own_weights": own[layer.name],
        }
        interval, _ = half_sample_interval(on, on[-1], steps_on)
        out[layer.name]["settling"] = {
            "steps": steps_on,
            **series,
            "formed_at": {
                v: {c: formed_at(cka, steps_on, t, rel) for c, (t, rel) in CRITERIA.items()}
                for v, cka in series.items()
            },
            "formed_at_interval": interval,
        }
    return out


def _grid(run: Run, steps: list[int]) -> list[int]:
    """Which of the snapshots at ``steps`` (in order) settling is measured on, as indices: for a run
    snapshotted every K steps the multiples of K (a uniform grid; epoch ends off it are left out) and the
    final snapshot, else every snapshot."""
    every = grid_every(run)
    last = len(steps) - 1
    return [i for i, s in enumerate(steps) if every is None or s % every == 0 or i == last]


def _own_weights(
    layers: list[ConvLayer],
    model: nn.Module,
    names: list[str],
    probe: torch.Tensor,
    loaders: list[Callable[[], dict[str, torch.Tensor] | None]],
    progress: StageProgress,
) -> dict[str, list[float]]:
    """Per layer, at each snapshot of ``loaders`` (the last is the final one), CKA to the final snapshot of
    the own-weights control: the final network with only this layer's conv parameters (its ``<name>.``
    tensors) from the snapshot, every other layer at its final values, BatchNorm recomputed on the probe
    images. What the layer itself still had to learn, apart from the changes upstream of it (which the
    whole-network measure includes). Only the part of the network after the layer is recomputed per
    snapshot (``featviz.partial``): what runs before it is the final network's every time."""
    final_state = loaders[-1]()
    out: dict[str, list[float]] = {layer.name: [] for layer in layers}
    with torch.no_grad():
        for j, (layer, n) in enumerate(zip(layers, names)):
            model.load_state_dict(final_state)  # type: ignore[arg-type]
            with _forward_to(model, layer.name, n, probe[:8]) as run:
                final = _pooled_until(model, run, probe)
                for i, load in enumerate(loaders):
                    state = load()
                    own = {k: v for k, v in state.items() if k.startswith(f"{layer.name}.")}  # type: ignore[union-attr]
                    model.load_state_dict(own, strict=False)
                    out[layer.name].append(float(cka_of_features(_pooled_until(model, run, probe), final)))
                    progress("settling controls", j * len(loaders) + i + 1, len(layers) * len(loaders))
    return out


@contextmanager
def _forward_to(
    model: nn.Module, layer: str, name: str, example: torch.Tensor
) -> Iterator[Callable[[torch.Tensor, Any], torch.Tensor]]:
    """``run(x, tag)`` -> what the forward pass leaves in module ``name``'s output (as ``_measure`` sees it:
    after any in-place op that rewrites it, ``partial.left_in``, found on ``example``):
    ``partial.Downstream`` where fx can trace the model and find that value, else a whole forward pass
    (``tag`` unused)."""
    part = Downstream.of(model, layer, name, example)
    if part is not None:
        yield part
        return
    with capture(model, [name], detach=True) as acts:

        def run(x: torch.Tensor, _tag: Any) -> torch.Tensor:
            model(x)
            return acts[name]

        yield run


def _pooled_until(
    model: nn.Module, run: Callable[[torch.Tensor, Any], torch.Tensor], probe: torch.Tensor
) -> torch.Tensor:
    """Channel means [N, C] of ``run``'s layer on ``probe``, in one pass that also recomputes the BatchNorms
    it passes on ``probe`` (``model.calibrating_batchnorm``)."""
    with calibrating_batchnorm(model):
        return run(probe, ("probe", len(probe))).float().flatten(2).mean(2).cpu()
