"""Activation maximization on any ``nn.Module``: ``maximize`` one objective, ``maximize_channels`` a whole layer.

In: a model, an objective (``featviz.optvis.objectives``; layers are PyTorch dotted names) and a
``RenderSettings`` (``featviz.optvis.settings``) or its fields as keywords. Out: a ``RenderResult``
on CPU: images [B, C, H, W] in (0, 1), final objective values [B], a trace, and JSON-able settings.
Invariants: the model is left as found (training flags, ``requires_grad``, weights), also after an
error, and every hook is removed; the fast path works on a copy (``fastpath.prepare_fast``). The
forward pass stops once the objective's last layer has run. Element b draws all its randomness from
``(seed, keys[b])`` (``featviz.optvis.rng``), so a batched render equals the same elements rendered
one at a time, up to float rounding. Measured defaults and speed: ``benchmarks/README.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

import featviz.optvis.param as P
from featviz.checks import is_int
from featviz.errors import ConfigError, one_line
from featviz.optvis.fastpath import hooked, prepare_fast
from featviz.optvis.forward import forward_until, frozen, model_device, model_dtype
from featviz.optvis.graphed import CAPTURES, Capture, Replayable, run_steps
from featviz.optvis.memory import big_buffers
from featviz.optvis.objectives import Objective, channel, parse
from featviz.optvis.rng import PARAM_STREAM, TRANSFORM_STREAM, ElementRandom, element_seed
from featviz.optvis.settings import RenderSettings, normalizer, resolve
from featviz.optvis.transforms import Transform, identity, standard, standard_settings

StepCallback = Callable[[int, int, Tensor], None]  # (step, steps, objective values [B] on the step's images)

__all__ = ["RenderResult", "StepCallback", "maximize", "maximize_channels", "layer_channels"]


@dataclass
class RenderResult:
    """Rendered images and how they came about. All tensors on CPU."""

    images: Tensor  # [B, C, H, W] float32 in (0, 1)
    values: Tensor  # [B] objective on the final, untransformed images, eval mode
    trace: Tensor  # [T, B] objective on the (transformed) images seen at trace_steps
    trace_steps: list[int]  # optimizer step of each trace row (0-based; the last is steps - 1)
    keys: list[int]  # element keys: the seed key of each image (the channel for maximize_channels)
    # JSON-able: RenderSettings.to_dict() as given, plus objective, batch, optimizer, what the defaults
    # resolved to (``resolved``: device, channels_last, transform recipe) and elapsed_s
    settings: dict[str, Any] = field(default_factory=dict)


def _transform(s: RenderSettings, keys: list[int], replayable: bool = False) -> tuple[Transform, Any, list[Replayable]]:
    """The transform for a batch with these keys, how to record it, and (with ``replayable``, for a
    captured step) the random sources a graph replay must refill."""
    if s.transforms is None or s.transforms == "none":
        return identity, "none", []
    if s.transforms == "standard":
        rng = ElementRandom([element_seed(s.seed, k, TRANSFORM_STREAM) for k in keys])
        sources = [Replayable(rng)] if replayable else []
        return standard(s.size, sources[0] if sources else rng), standard_settings(s.size), sources
    return s.transforms, "custom", []


def _graph_plan(s: RenderSettings, dev: torch.device, model: nn.Module) -> tuple[Capture | None, str]:
    """How to capture the optimization step (None: run it eagerly) and why, from ``s.cuda_graph``:
    None (auto) and True capture on CUDA; elsewhere, for a custom param or transform (whose
    randomness a replay could not refill) or a model with hooks (a replay runs no Python), the
    eager loop runs."""
    if s.cuda_graph is False:
        return None, "off"
    if not isinstance(s.param, str) or not (s.transforms is None or isinstance(s.transforms, str)):
        return None, "off: a custom param or transform may draw randomness a graph replay cannot refill"
    if any(hooked(m) for m in model.modules()):
        return None, "off: the model has hooks, which a graph replay would not call"
    capture = CAPTURES.get(dev.type)
    if capture is None:
        return None, f"off: CUDA graphs need a CUDA device, the model is on {dev.type}"
    return capture, "graph"


def _param(s: RenderSettings, keys: list[int], device: torch.device) -> P.Param:
    seeds = [element_seed(s.seed, k, PARAM_STREAM) for k in keys]
    if s.param == "fourier":
        return P.fourier(
            len(keys), s.image_channels, s.size, seeds, decay_power=s.decay_power, color=s.color_tensor(), device=device
        )
    if s.param == "pixel":
        return P.pixel(len(keys), s.image_channels, s.size, seeds, color=s.color_tensor(), device=device)
    return s.param


def _check_call(objective: Objective | str, batch: int, keys: Sequence[int] | None) -> tuple[Objective, list[int]]:
    obj = parse(objective) if isinstance(objective, str) else objective
    if not isinstance(obj, Objective):
        raise ConfigError(f"objective must be an Objective or a string, got {type(objective).__name__}")
    if not is_int(batch) or batch < 1:
        raise ConfigError(f"batch must be an integer >= 1, got {batch!r}")
    keys = list(range(batch)) if keys is None else [int(k) for k in keys]
    if len(keys) != batch:
        raise ConfigError(f"{len(keys)} keys for a batch of {batch}")
    return obj, keys


_RENDER_HINTS = {
    "channels": "the colour channel count is image_channels; to render channels of a layer "
    "use channel(layer, c) or maximize_channels(model, layer, channels=[...])"
}


def maximize(
    model: nn.Module,
    objective: Objective | str,
    settings: RenderSettings | None = None,
    *,
    batch: int = 1,
    keys: Sequence[int] | None = None,
    progress: StepCallback | None = None,
    **overrides: Any,
) -> RenderResult:
    """Optimize ``batch`` images [B, image_channels, H, W] in (0, 1) to maximize ``objective``.

    ``settings`` (default ``RenderSettings()``) with ``overrides`` (its field names, e.g. ``steps=64``)
    replaced; ``keys[b]`` (default ``b``) names element b's random streams; ``progress`` is called
    every ``trace_every`` steps. With ``optimize`` the work runs on ``fastpath.prepare_fast``'s copy
    of the model; ``model`` itself is never changed. Returns images, final values and trace on CPU.
    """
    s = resolve(settings, overrides, "maximize", _RENDER_HINTS)
    obj, keys = _check_call(objective, batch, keys)
    if isinstance(s.param, str) and (s.transforms is None or isinstance(s.transforms, str)):
        _probe(model, sorted(obj.layers), s.size, s.image_channels)  # custom ones may reshape: theirs to check
    return _maximize(model, obj, s, keys, progress)


@torch.enable_grad()  # also when called inside no_grad or inference_mode (an evaluation loop)
@torch.inference_mode(False)
def _maximize(
    model: nn.Module, obj: Objective, s: RenderSettings, keys: list[int], progress: StepCallback | None
) -> RenderResult:
    """``maximize`` once its arguments are checked (``maximize_channels`` calls it for each chunk)."""
    batch = len(keys)
    dev = model_device(model, s.device)
    cl = dev.type == "cpu" if s.channels_last is None else s.channels_last
    norm = normalizer(s.mean, s.std, s.image_channels, dev, channels_last=cl)
    dtype = model_dtype(model)
    params, image_fn = _param(s, keys, dev)
    capture, graph_note = _graph_plan(s, dev, model)
    tf, tdesc, sources = _transform(s, keys, replayable=capture is not None)

    def prep(img: Tensor) -> Tensor:
        return norm(img).to(dtype)

    t0 = time.perf_counter()
    # the fast path: a private copy of the model and the objective that reads it (same values)
    net, work = prepare_fast(model, obj, batch, channels_last=cl) if s.optimize else (model, obj)
    with big_buffers(dev.type == "cpu"), frozen(net), forward_until(net, sorted(obj.layers)) as run:
        trace, trace_steps, ran = _optimize(
            work,
            run,
            params,
            lambda: prep(tf(image_fn())),
            batch,
            s.steps,
            s.lr,
            s.trace_every,
            progress,
            capture,
            sources,
        )
        with torch.no_grad():
            images = image_fn()
            values = work(run(prep(images))).float()
    record = {
        "objective": obj.name,
        "batch": batch,
        **s.to_dict(),
        "optimizer": "adam",
        "resolved": {"device": str(dev), "channels_last": cl, "transforms": tdesc, "cuda_graph": ran or graph_note},
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    return RenderResult(
        images=images.detach().float().cpu(),
        values=values.cpu(),
        trace=trace,
        trace_steps=trace_steps,
        keys=keys,
        settings=record,
    )


def _optimize(
    obj: Objective,
    run: Callable[[Tensor], dict[str, Tensor]],
    params: list[Tensor],
    make_input: Callable[[], Tensor],
    batch: int,
    steps: int,
    lr: float,
    trace_every: int,
    progress: StepCallback | None,
    capture: Capture | None = None,
    sources: Sequence[Replayable] = (),
) -> tuple[Tensor, list[int], str | None]:
    """Adam on ``params`` for ``steps`` steps, eagerly or (``capture``) replaying a captured step
    (``graphed.run_steps``); returns the trace [T, B] (CPU), its steps and, with ``capture``, how
    the steps ran."""
    # fused: one kernel for the whole update (4x faster than the per-op path for a [B, C, H, W'] spectrum)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    capturable = capture is not None and all(p.is_cuda for p in params)
    opt = torch.optim.Adam(params, lr=lr, fused=fused, capturable=capturable)
    rows: list[Tensor] = []
    trace_steps: list[int] = []

    checked = []

    def step() -> Tensor:
        # a captured step keeps its gradient buffers: zeroed in place, not dropped
        opt.zero_grad(set_to_none=capture is None)
        vals = obj(run(make_input()))
        if not checked:  # the first step only: a Python check, no device sync
            _check_values(obj, vals, batch)
            checked.append(True)
        (-vals.sum()).backward()
        opt.step()
        return vals

    def after(i: int, vals: Tensor) -> None:
        if i % trace_every == 0 or i == steps - 1:
            rows.append(vals.detach().float().clone())  # a replay rewrites its output buffer
            trace_steps.append(i)
            if progress is not None:
                progress(i, steps, rows[-1])

    ran = None
    if capture is None:
        for i in range(steps):
            after(i, step())
    else:
        ran = run_steps(step, steps, after, sources, capture)
    return torch.stack(rows).cpu(), trace_steps, ran


def _probe(
    model: nn.Module, layers: Sequence[str], size: int | Sequence[int], image_channels: int
) -> dict[str, Tensor]:
    """The ``layers``' outputs for one grey image, from a stopped forward pass: a model that cannot take
    images of this shape (e.g. 3 colour channels into a grayscale model) is a ConfigError saying so."""
    h, w = P._hw(size)  # a ConfigError for sizes that are not one or two integers >= 2
    dev = model_device(model, None)
    shape = (1, image_channels, h, w)
    with frozen(model), forward_until(model, list(layers)) as run, torch.no_grad():
        try:
            return run(torch.zeros(shape, device=dev, dtype=model_dtype(model)))
        except RuntimeError as e:
            raise ConfigError(f"model cannot run on images of shape {list(shape)}: {one_line(e, 200)}") from e


def _check_values(obj: Objective, vals: Any, batch: int) -> None:
    """An objective's values: a tensor [batch] that depends on the images (else nothing can be optimized)."""
    if not isinstance(vals, Tensor):
        raise ConfigError(f"objective {obj.name} returned {type(vals).__name__}; it must return a tensor [batch]")
    if tuple(vals.shape) != (batch,):
        raise ConfigError(f"objective {obj.name} gave shape {tuple(vals.shape)}, expected ({batch},)")
    if not vals.requires_grad:
        raise ConfigError(f"objective {obj.name} does not depend on the images (its values carry no gradient)")


def layer_channels(model: nn.Module, layer: str, size: int | Sequence[int] = 32, image_channels: int = 3) -> int:
    """Channel count of ``layer``'s output, from one stopped forward pass of a grey image."""
    act = _probe(model, [layer], size, image_channels)[layer]
    if not isinstance(act, Tensor) or act.dim() < 2:
        raise ConfigError(f"layer {layer!r} output has no channel dimension")
    return int(act.shape[1])


def _channel_ids(channels: Any) -> list[int] | None:
    """``maximize_channels``'s channel indices as ints (None = all); ConfigError for anything else."""
    if channels is None:
        return None
    if is_int(channels) or isinstance(channels, (str, bytes)) or (isinstance(channels, Tensor) and channels.dim() != 1):
        raise ConfigError(
            f"channels are channel indices (a list of ints), got {channels!r}; the image's colour "
            "channel count is image_channels"
        )
    ids = channels.tolist() if isinstance(channels, Tensor) else list(channels)
    bad = [c for c in ids if not is_int(c)]
    if bad:
        raise ConfigError(f"channel indices must be integers, got {bad[0]!r}")
    return [int(c) for c in ids]


_CHANNELS_HINTS = {k: f"maximize_channels sets {k!r} itself" for k in ("batch", "keys", "objective")}


def maximize_channels(
    model: nn.Module,
    layer: str,
    channels: Sequence[int] | Tensor | None = None,
    settings: RenderSettings | None = None,
    *,
    progress: StepCallback | None = None,
    **overrides: Any,
) -> RenderResult:
    """Render every channel of ``layer`` (or the indices in ``channels``), ``chunk`` per batch: key = channel.

    ``settings``/``overrides`` as for ``maximize``. Image c is the same whichever chunk renders it and
    equals ``maximize(model, channel(layer, c), keys=[c], ...)`` with the same settings (up to float
    rounding). ``values`` are each channel's mean activation on its final untransformed image (eval mode).
    """
    s = resolve(settings, overrides, "maximize_channels", _CHANNELS_HINTS)
    ids = _channel_ids(channels)
    n = layer_channels(model, layer, s.size, s.image_channels)
    chans = list(range(n)) if ids is None else ids
    bad_c = [c for c in chans if not 0 <= c < n]
    if bad_c or not chans:
        first = bad_c[0] if bad_c else "(none)"
        raise ConfigError(f"channel {first} out of range for layer {layer!r} with {n} channels")
    parts = []
    for i in range(0, len(chans), s.chunk):
        part = chans[i : i + s.chunk]
        parts.append(_maximize(model, channel(layer, torch.tensor(part)), s, part, progress))  # probed once above
    settings_out = {
        **parts[0].settings,
        "kind": "channels",
        "layer": layer,
        "objective": f"{layer}:<channel>",
        "batch": len(chans),
        "elapsed_s": round(sum(p.settings["elapsed_s"] for p in parts), 3),
    }
    return RenderResult(
        images=torch.cat([p.images for p in parts]),
        values=torch.cat([p.values for p in parts]),
        trace=torch.cat([p.trace for p in parts], 1),
        trace_steps=parts[0].trace_steps,
        keys=chans,
        settings=settings_out,
    )
