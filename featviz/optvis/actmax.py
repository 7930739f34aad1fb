"""Activation maximization on any ``nn.Module``: ``render`` one objective, ``render_channels`` a whole layer.

Contract: the model is used as given (device, dtype) and left as found: during the call it is in
eval mode with every parameter's ``requires_grad`` False (no weight gradients are computed); each
submodule's training flag and each parameter's ``requires_grad`` are restored afterwards, also after
an error, and every hook is removed (``featviz.hooks.capture``). Layers are PyTorch dotted names.
The forward pass stops as soon as the last layer the objective needs has run (a private exception
raised from a forward hook), so later layers cost nothing. Images are optimized in [0, 1]; the
training normalization ``(x - mean) / std`` is applied inside, after the transforms. Element b of a
batch draws all its randomness from ``(seed, keys[b])`` (see ``featviz.optvis.rng``), so batched and
one-at-a-time renders of the same element agree up to float rounding.

Defaults and why. Measured on a 4-epoch ``shapes`` SmallCNN (trained at 32 px), all 64 channels of
``features.conv3`` rendered at 64 px; z = mean standardized activation against 256 pink-noise images,
z_rob = the same on randomly shifted/scaled/rotated copies (robustness), spec/i = fraction of images
whose own channel is their top channel (``quality``):

==========================================  =====  =====  ======
setting (256 steps, lr 0.05 unless named)     z    z_rob  spec/i
==========================================  =====  =====  ======
fourier + standard transforms (default)      57.4   47.5   0.67
fourier + standard + 4 px reflect pad        55.3   46.9   0.69
fourier, no transforms                       87.4   32.1   0.77
pixel + standard                             63.3   51.0   0.59
fourier + standard, 512 steps                62.9   51.2   0.64
fourier + standard, lr 0.1                   61.5   50.4   0.66
fourier + standard, decay_power 1.5          47.6   40.8   0.73
==========================================  =====  =====  ======

* ``param="fourier"``, ``decay_power=1``: pixel images score ~10% higher z but lower specificity and
  look like grey, high-frequency texture; the 1/f spectrum gives legible images (decay 1.5: -17% z).
  Pass the training data's ``color_matrix`` as ``color`` (decorrelated colour; for ``shapes``, whose
  colours are drawn independently, the matrix is near identity and changes nothing measurable).
* ``transforms="standard"``: without transforms z rises but z_rob drops 30%: the images become
  pixel-exact adversarial patterns. The Lucid-style output pad was 2-4% worse and costs 27% more work.
* ``lr=0.05`` (Adam), ``steps=256``: still rising slowly (512 steps: +9% z at twice the cost; lr 0.1:
  +7% z, slightly lower specificity); kept at the recipe's values.
* ``channels_last=None``: NHWC on CPU, 1.45x faster per render than NCHW here (oneDNN); off on GPU.
* ``optimize=True`` (``fastpath.render_copy``: BN folded into convs, ReLU after max-pool; and
  ``select_channels`` for channel objectives): 1.4x faster for the SmallCNN, the same layer outputs.

Speed (benchmarks/actmax.py, 2-core CPU, 64 channels at 64 px, 256 steps): 1.2-1.4x (3-conv CNN)
and 2.1x (SmallCNN) the compute floor in CPU time; one channel at a time takes 4-8x the floor. For a
channel objective the target conv computes only each image's own channel
(``fastpath.select_channels``), 64x less work in that layer. What is left in a SmallCNN step: the
first conv's input gradient (3 output channels) costs oneDNN ~4x its forward pass, and
grid_sample's backward takes ~4 ms. glibc returns big buffers (> up to 32 MiB) to the OS after each
use; ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` set to 1 GiB in the environment made the
3-conv render 20% faster (the SmallCNN's buffers are small enough not to be affected).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from featviz.errors import ConfigError
from featviz.hooks import capture, resolve_layers
from featviz.optvis import param as P
from featviz.optvis.fastpath import render_copy, select_channels
from featviz.optvis.objectives import Objective, channel, parse
from featviz.optvis.rng import PARAM_STREAM, TRANSFORM_STREAM, ElementRandom, element_seed
from featviz.optvis.transforms import Transform, identity, standard, standard_settings

Progress = Callable[[int, int, Tensor], None]  # (step, steps, objective values [B] on the step's images)

__all__ = ["RenderResult", "render", "render_channels", "layer_channels", "frozen", "forward_until"]


@dataclass
class RenderResult:
    """Rendered images and how they came about. All tensors on CPU."""

    images: Tensor  # [B, C, H, W] float32 in (0, 1)
    values: Tensor  # [B] objective on the final, untransformed images, eval mode
    trace: Tensor  # [T, B] objective on the (transformed) images seen at trace_steps
    trace_steps: list[int]  # optimizer step of each trace row (0-based; the last is steps - 1)
    keys: list[int]  # element keys: the seed key of each image (the channel for render_channels)
    settings: dict[str, Any] = field(default_factory=dict)  # JSON-able: everything needed to redo it

    def records(self) -> list[dict[str, Any]]:
        """One JSON-able dict per image: its key, final value and settings; from ``render_channels`` also
        ``layer``, ``channel`` and ``activation`` (the channel-mean activation on the final image)."""
        if self.settings.get("kind") == "channels":
            return [{"layer": self.settings["layer"], "channel": k, "activation": float(v), "value": float(v),
                     "settings": self.settings} for k, v in zip(self.keys, self.values)]
        return [{"key": k, "value": float(v), "settings": self.settings} for k, v in zip(self.keys, self.values)]


class _StopForward(Exception):
    """Raised by a forward hook once every needed layer has produced its output."""


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` inside the block; each module's and parameter's flag restored."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in grads:
            p.requires_grad_(flag)


@contextmanager
def forward_until(model: nn.Module, names: Sequence[str]) -> Iterator[Callable[[Tensor], dict[str, Tensor]]]:
    """Yield ``run(x) -> {name: output}`` that stops the forward pass once every named layer has run.

    Unknown names raise ConfigError listing the valid ones; all hooks are removed on exit.
    """
    names = list(dict.fromkeys(names))
    with capture(model, names) as acts:
        handles = []

        def stop(_m: nn.Module, _inp: object, _out: object) -> None:
            if len(acts) >= len(names):  # registered after capture's hooks, so acts is already filled
                raise _StopForward

        try:
            for module in resolve_layers(model, names).values():
                handles.append(module.register_forward_hook(stop))

            def run(x: Tensor) -> dict[str, Tensor]:
                acts.clear()
                try:
                    model(x)
                except _StopForward:
                    pass
                missing = [n for n in names if n not in acts]
                if missing:
                    raise ConfigError(f"layer(s) {', '.join(missing)} did not run in the model's forward pass")
                return dict(acts)

            yield run
        finally:
            for h in handles:
                h.remove()


def _model_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    t = next(iter(model.parameters()), None)
    if t is None:
        t = next(iter(model.buffers()), None)
    own = t.device if t is not None else torch.device("cpu")
    if device is not None and torch.device(device) != own and not (
            torch.device(device).type == own.type and torch.device(device).index is None):
        raise ConfigError(f"device {device} differs from the model's {own}; move the model first")
    return own


def _model_dtype(model: nn.Module) -> torch.dtype:
    t = next((p for p in model.parameters() if p.is_floating_point()), None)
    return t.dtype if t is not None else torch.float32


def _normalizer(mean: Sequence[float] | Tensor | None, std: Sequence[float] | Tensor | None, channels: int,
                device: torch.device) -> Callable[[Tensor], Tensor]:
    if mean is None and std is None:
        return identity
    m = torch.as_tensor(0.0 if mean is None else mean, dtype=torch.float32).flatten()
    s = torch.as_tensor(1.0 if std is None else std, dtype=torch.float32).flatten()
    if m.numel() not in (1, channels) or s.numel() not in (1, channels):
        raise ConfigError(f"mean/std need 1 or {channels} values, got {m.numel()} and {s.numel()}")
    if (s <= 0).any():
        raise ConfigError("std must be positive")
    m, inv = m.view(1, -1, 1, 1).to(device), (1.0 / s).view(1, -1, 1, 1).to(device)
    return lambda x: (x - m) * inv


def _transform(spec: str | Transform | None, size: int | Sequence[int], rng: ElementRandom) -> Transform:
    if spec is None or spec == "none":
        return identity
    if spec == "standard":
        return standard(size, rng)
    if callable(spec) and not isinstance(spec, str):
        return spec
    raise ConfigError(f"unknown transforms {spec!r}; use 'standard', 'none' or a callable")


def _param(kind: str | P.Param, batch: int, channels: int, size: int | Sequence[int], seeds: list[int],
           decay_power: float, color: Tensor | None, device: torch.device) -> P.Param:
    if kind == "fourier":
        return P.fourier(batch, channels, size, seeds, decay_power=decay_power, color=color, device=device)
    if kind == "pixel":
        return P.pixel(batch, channels, size, seeds, color=color, device=device)
    if isinstance(kind, tuple) and len(kind) == 2 and callable(kind[1]):
        return kind
    raise ConfigError(f"unknown parametrization {kind!r}; use 'fourier', 'pixel' or a (params, image_fn) pair")


def _settings(objective: Objective, param: str | P.Param, transforms: str | Transform | None, **kw: Any) -> dict:
    tdesc: Any = "custom"
    if transforms is None or transforms == "none":
        tdesc = "none"
    elif transforms == "standard":
        tdesc = standard_settings(kw["size"])
    color = kw.pop("color")
    return {"objective": objective.name, "param": param if isinstance(param, str) else "custom",
            "transforms": tdesc, "optimizer": "adam", "color": None if color is None else
            torch.as_tensor(color).tolist(), **kw}


def _check_args(objective: Objective | str, batch: int, steps: int, lr: float, trace_every: int,
                keys: Sequence[int] | None) -> tuple[Objective, list[int]]:
    obj = parse(objective) if isinstance(objective, str) else objective
    if not isinstance(obj, Objective):
        raise ConfigError(f"objective must be an Objective or a string, got {type(objective).__name__}")
    if batch < 1 or steps < 1 or lr <= 0 or trace_every < 1:
        raise ConfigError(f"need batch >= 1, steps >= 1, lr > 0, trace_every >= 1 (got {batch}, {steps}, {lr}, "
                          f"{trace_every})")
    keys = list(range(batch)) if keys is None else [int(k) for k in keys]
    if len(keys) != batch:
        raise ConfigError(f"{len(keys)} keys for a batch of {batch}")
    return obj, keys


def render(model: nn.Module, objective: Objective | str, *, param: str | P.Param = "fourier",
           size: int | Sequence[int] = 32, channels: int = 3, batch: int = 1, steps: int = 256, lr: float = 0.05,
           transforms: str | Transform | None = "standard", seed: int = 0, keys: Sequence[int] | None = None,
           mean: Sequence[float] | Tensor | None = None, std: Sequence[float] | Tensor | None = None,
           color: Tensor | None = None, decay_power: float = 1.0, device: torch.device | str | None = None,
           progress: Progress | None = None, trace_every: int = 16, channels_last: bool | None = None,
           optimize: bool = True) -> RenderResult:
    """Optimize ``batch`` images [B, ``channels``, size, size] in (0, 1) to maximize ``objective``.

    ``keys[b]`` (default ``b``) names element b's random streams; ``param`` is "fourier" | "pixel";
    ``transforms`` is "standard" | "none" | a callable; ``mean``/``std`` are the training
    normalization (per channel, 0..1 scale). With ``optimize`` the work runs on
    ``fastpath.render_copy(model)`` (same layer outputs, BN folded away); ``model`` is never changed.
    Returns images, final values and the trace on CPU.
    """
    obj, keys = _check_args(objective, batch, steps, lr, trace_every, keys)
    dev = _model_device(model, device)
    cl = dev.type == "cpu" if channels_last is None else channels_last
    norm = _normalizer(mean, std, channels, dev)
    dtype = _model_dtype(model)
    params, image_fn = _param(param, batch, channels, size, [element_seed(seed, k, PARAM_STREAM) for k in keys],
                              decay_power, color, dev)
    tf = _transform(transforms, size, ElementRandom([element_seed(seed, k, TRANSFORM_STREAM) for k in keys]))

    def prep(img: Tensor) -> Tensor:
        x = norm(img).to(dtype)
        return x.contiguous(memory_format=torch.channels_last) if cl else x

    t0 = time.perf_counter()
    net = render_copy(model, obj.layers) if optimize else model
    work = obj
    if net is not model and obj.selects is not None:  # a channel objective: compute only that channel
        layer, c = obj.selects
        idx = c if isinstance(c, Tensor) else torch.full((batch,), c, dtype=torch.long)
        if idx.numel() == batch and select_channels(net, layer, idx.to(dev)):
            work = channel(layer, torch.zeros(batch, dtype=torch.long))
    if cl and net is not model:
        net = net.to(memory_format=torch.channels_last)
    with frozen(net), forward_until(net, sorted(obj.layers)) as run:
        trace, trace_steps = _optimize(work, run, params, lambda: prep(tf(image_fn())), batch, steps, lr,
                                       trace_every, progress)
        with torch.no_grad():
            images = image_fn()
            values = work(run(prep(images))).float()
    settings = _settings(obj, param, transforms, size=size, image_channels=channels, batch=batch, steps=steps,
                         lr=lr, seed=seed, decay_power=decay_power, color=color,
                         mean=None if mean is None else torch.as_tensor(mean).flatten().tolist(),
                         std=None if std is None else torch.as_tensor(std).flatten().tolist(),
                         device=str(dev), channels_last=cl, trace_every=trace_every, optimize=optimize,
                         elapsed_s=round(time.perf_counter() - t0, 3))
    return RenderResult(images=images.detach().float().cpu(), values=values.cpu(), trace=trace,
                        trace_steps=trace_steps, keys=keys, settings=settings)


def _optimize(obj: Objective, run: Callable[[Tensor], dict[str, Tensor]], params: list[Tensor],
              make_input: Callable[[], Tensor], batch: int, steps: int, lr: float, trace_every: int,
              progress: Progress | None) -> tuple[Tensor, list[int]]:
    """Adam on ``params`` for ``steps`` steps; returns the trace [T, B] (CPU) and its steps."""
    # fused: one kernel for the whole update (4x faster than the per-op path for a [B, C, H, W'] spectrum)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    opt = torch.optim.Adam(params, lr=lr, fused=fused)
    rows: list[Tensor] = []
    trace_steps: list[int] = []
    for step in range(steps):
        vals = obj(run(make_input()))
        if step == 0 and tuple(vals.shape) != (batch,):
            raise ConfigError(f"objective {obj.name} gave shape {tuple(vals.shape)}, expected ({batch},)")
        opt.zero_grad(set_to_none=True)
        (-vals.sum()).backward()
        opt.step()
        if step % trace_every == 0 or step == steps - 1:
            rows.append(vals.detach().float())
            trace_steps.append(step)
            if progress is not None:
                progress(step, steps, rows[-1])
    return torch.stack(rows).cpu(), trace_steps


def layer_channels(model: nn.Module, layer: str, size: int | Sequence[int] = 32, image_channels: int = 3) -> int:
    """Channel count of ``layer``'s output, from one stopped forward pass of a grey image."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    dev = _model_device(model, None)
    shape = (1, image_channels, h, w)
    with frozen(model), forward_until(model, [layer]) as run, torch.no_grad():
        try:
            act = run(torch.zeros(shape, device=dev, dtype=_model_dtype(model)))[layer]
        except RuntimeError as e:  # e.g. 3 colour channels into a grayscale model
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"model cannot run on images of shape {list(shape)}: {msg}") from None
    if not isinstance(act, Tensor) or act.dim() < 2:
        raise ConfigError(f"layer {layer!r} output has no channel dimension")
    return int(act.shape[1])


def render_channels(model: nn.Module, layer: str, channel_ids: Sequence[int] | None = None, *, chunk: int = 64,
                    **kwargs: Any) -> RenderResult:
    """Render every channel of ``layer`` (or those in ``channel_ids``) in batches: batch index = channel.

    Element keys are the channel indices, so image c is the same whichever chunk renders it and equals
    ``render(model, channel(layer, c), keys=[c], ...)`` with the same settings (up to float rounding).
    ``values`` are each channel's mean activation on its final untransformed image (eval mode).
    ``kwargs`` go to ``render``; there ``channels`` is the image's colour channel count (an int), so a
    list/tuple/tensor given as ``channels=`` is taken as ``channel_ids`` instead.
    """
    if channel_ids is None and isinstance(kwargs.get("channels"), (list, tuple, range, Tensor)):
        channel_ids = kwargs.pop("channels")
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    for bad in ("batch", "keys", "objective"):
        if bad in kwargs:
            raise ConfigError(f"render_channels sets {bad!r} itself")
    n = layer_channels(model, layer, kwargs.get("size", 32), kwargs.get("channels", 3))
    chans = list(range(n)) if channel_ids is None else [int(c) for c in channel_ids]
    bad_c = [c for c in chans if not 0 <= c < n]
    if bad_c or not chans:
        first = bad_c[0] if bad_c else "(none)"
        raise ConfigError(f"channel {first} out of range for layer {layer!r} with {n} channels")
    parts = []
    for i in range(0, len(chans), chunk):
        part = chans[i:i + chunk]
        obj = channel(layer, torch.tensor(part))
        parts.append(render(model, obj, batch=len(part), keys=part, **kwargs))
    settings = {**parts[0].settings, "kind": "channels", "layer": layer, "objective": f"{layer}:<channel>",
                "chunk": chunk, "batch": len(chans),
                "elapsed_s": round(sum(p.settings["elapsed_s"] for p in parts), 3)}
    return RenderResult(images=torch.cat([p.images for p in parts]), values=torch.cat([p.values for p in parts]),
                        trace=torch.cat([p.trace for p in parts], 1), trace_steps=parts[0].trace_steps,
                        keys=chans, settings=settings)

