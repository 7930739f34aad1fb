"""Activation maximization as users run it, against the machine's limit and a one-at-a-time loop.

Usage::

    .venv/bin/python benchmarks/actmax.py [RUN_DIR] [--steps N] [--loop] [--threads N]
                                          [--set FIELD=VALUE ...] [--save DIR] [--gpu]

``--set`` changes one ``RenderSettings`` field for every render (e.g. ``--set param=pixel``,
``--set transforms=none``, ``--set optimize=false``); recorded results: ``benchmarks/README.md``.

Renders every channel of a layer at 64x64 px for 256 steps with the default (regularized) settings,
through the API as shipped (``maximize_channels``, in this process as a user's would run it: no
environment tweak, no re-exec), for three targets:

* ``3-conv``: conv 3->32, 32->64, 64->128 (3x3, ReLU, 2x2 max-pool), random weights; ``conv2``
  (64 channels) and ``conv3`` (128 channels).
* ``SmallCNN``: the default featviz model, trained weights from RUN_DIR if given (its last epoch, its
  normalization and the colour matrix of its data), else random; its deepest layer ``features.conv4``
  (128 channels). Also ``featviz render`` of that layer as a subprocess (on a copy of RUN_DIR, or on a
  one-epoch run trained here), start-up included.

Columns: (a) the compute floor = 4 x (multiply-adds of the convs up to the target, one 64x64 image)
x steps x channels / the machine's limit, the best dense fp32 FLOP/s measured in this run
(``machine.dense_peak``: a 2048^2 matmul and large 3x3 convs). 4 = 2 FLOPs per multiply-add x
(forward + input-gradient backward); weight gradients are not needed. (b) the render's wall and
process CPU time and its ratio to the floor (``xfloor``; target <= 2, aim 1.5); ``xconv`` is the
ratio to the measured speed of the same convs at the benchmark's shapes (the floor these benchmarks
used before; it hides the inefficiency of thin convs). (c) with ``--loop``: ``render`` one channel at
a time. (d) quality: the mean standardized activation (z-score against 256 pink-noise images), z_rob
(the same on 4 randomly shifted/scaled/rotated copies: ``transforms.standard``) and the specificity
(fraction of channels whose own image is their top image; spec/i: of images whose own channel is
their top one). Peak memory: Linux's VmHWM, reset before each render.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import dense_peak  # noqa: E402

from featviz.config import DataConfig, ModelConfig  # noqa: E402
from featviz.errors import ConfigError  # noqa: E402
from featviz.model import build_model  # noqa: E402
from featviz.optvis import channel, color_matrix, maximize, maximize_channels, noise_images, standard  # noqa: E402
from featviz.optvis.forward import forward_until, frozen  # noqa: E402
from featviz.optvis.quality import standardized_matrix  # noqa: E402
from featviz.optvis.settings import resolve  # noqa: E402

SIZE, BATCH = 64, 64  # BATCH: the channels of the --gpu and --profile comparisons


def three_conv(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    cin = 3
    for i, w in enumerate((32, 64, 128), start=1):
        layers[f"conv{i}"] = nn.Conv2d(cin, w, 3, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2)
        cin = w
    return nn.Sequential(layers).eval()


def small_cnn(run_dir: str | None) -> tuple[nn.Module, dict, str]:
    """The SmallCNN (trained if ``run_dir``) and render kwargs (mean, std, color) from its run."""
    if run_dir is None:
        return build_model(ModelConfig(), seed=0).eval(), {}, "random"
    import featviz
    from featviz.config import from_dict
    from featviz.data import load_data

    run = featviz.load_run(run_dir)
    model = featviz.load_model(run)
    kw: dict = {"mean": run.meta["data"]["mean"], "std": run.meta["data"]["std"]}
    if run.meta["data"].get("color_matrix"):  # recorded at training time
        kw["color"] = torch.tensor(run.meta["data"]["color_matrix"])
        return model, kw, f"trained, epoch {run.epochs_done}"
    try:
        data = load_data(from_dict(DataConfig, run.meta["configs"]["data"]))
        kw["color"] = color_matrix(data.train_x)
        del data
    except Exception as e:  # noqa: BLE001 - a benchmark can live without the colour matrix
        print(f"  (no colour matrix: {e})")
    release_memory()
    return model, kw, f"trained, epoch {run.epochs_done}"


def release_memory() -> None:
    """Hand freed heap back to the OS (glibc), so the renders' peak RSS is not the data loading's."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def convs_until(model: nn.Module, layer: str) -> list[tuple[nn.Conv2d, tuple[int, ...]]]:
    """Each Conv2d that runs up to and including ``layer``, with its input shape for one image."""
    found: list[tuple[nn.Conv2d, tuple[int, ...]]] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: found.append((m, tuple(i[0].shape))))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with frozen(model), forward_until(model, [layer]) as run, torch.no_grad():
            run(torch.zeros(1, 3, SIZE, SIZE))
    finally:
        for h in hooks:
            h.remove()
    return found


def macs(conv: nn.Conv2d, shape: tuple[int, ...]) -> int:
    out = conv(torch.zeros(shape)).shape
    kh, kw = conv.kernel_size
    return out[1] * out[2] * out[3] * (conv.in_channels // conv.groups) * kh * kw


class Clock:
    """Wall-clock and process CPU time (all threads) of a block; CPU time is what a shared machine
    distorts least: other processes stretch our wall time but not the work our threads do."""

    def __enter__(self) -> "Clock":
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w0, time.process_time() - self.c0


def best_s(fn, n: int = 20) -> tuple[float, float]:
    """(fastest wall, median CPU) seconds of ``fn()`` over ``n`` calls after 3 warm-ups. The floor
    should be the best throughput the convs reach here, and noise cannot lower a minimum wall time;
    the CPU-time minimum, though, picks calls where one thread sat idle, so CPU takes the median."""
    for _ in range(3):
        fn()
    walls, cpus = [], []
    for _ in range(n):
        with Clock() as c:
            fn()
        walls.append(c.wall)
        cpus.append(c.cpu)
    return min(walls), sorted(cpus)[n // 2]


def conv_flops(convs: list[tuple[nn.Conv2d, tuple[int, ...]]]) -> tuple[int, float, float]:
    """(multiply-adds per image, conv FLOP/s by wall time, by CPU time) of a batched forward pass of
    each conv (the faster of NCHW and channels-last)."""
    total_macs, wall, cpu = 0, 0.0, 0.0
    with torch.no_grad():
        for conv, shape in convs:
            x = torch.randn(BATCH, *shape[1:])
            x_cl = x.contiguous(memory_format=torch.channels_last)  # converted outside the timed call
            times = [best_s(lambda: conv(x)), best_s(lambda: conv(x_cl))]
            best = min(times)
            total_macs += macs(conv, shape)
            wall, cpu = wall + best[0], cpu + best[1]
    return total_macs, 2 * total_macs * BATCH / wall, 2 * total_macs * BATCH / cpu


def quality(
    model: nn.Module, layer: str, images: torch.Tensor, kw: dict, noise: torch.Tensor
) -> tuple[float, float, float, float]:
    """(mean z of each channel on its own image, the same on transformed copies, specificity by
    channel, by image)."""
    z = standardized_matrix(model, layer, images, kw.get("mean"), kw.get("std"), noise)
    z_rob = standardized_matrix(
        model,
        layer,
        images,
        kw.get("mean"),
        kw.get("std"),
        noise,
        transform=standard(images.shape[-1], rng=123),
        repeats=4,
    )
    n = z.shape[0]
    own = z[torch.arange(n), torch.arange(n)]
    own_rob = z_rob[torch.arange(n), torch.arange(n)]
    by_channel = (z[:, :n].argmax(0) == torch.arange(n)).float().mean().item()
    by_image = (z.argmax(1) == torch.arange(n)).float().mean().item()
    return own.mean().item(), own_rob.mean().item(), by_channel, by_image


def peak_mb() -> float:
    """Peak resident memory of this process so far (MB), from resource.getrusage."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_phase_peak() -> float:
    """Restart Linux's RSS high-water mark (VmHWM) so a phase's own peak can be read; returns RSS now (MB)."""
    release_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_mb("VmRSS") or 0.0


def phase_peak_mb() -> float:
    """VmHWM since the last ``reset_phase_peak`` (MB); the getrusage peak where /proc is unavailable."""
    return _status_mb("VmHWM") or peak_mb()


def row(
    label: str,
    what: str,
    wall: float,
    cpu: float,
    floor: float,
    conv_floor: float,
    q: tuple[float, float, float, float] | None,
    note: str,
) -> str:
    qs = f"{q[0]:6.1f} {q[1]:6.1f} {q[2]:5.2f} {q[3]:6.2f}" if q else f"{'':6s} {'':6s} {'':5s} {'':6s}"
    return f"{label:26s} {what:8s} {wall:7.1f} {wall / floor:6.2f} {wall / conv_floor:6.2f} {cpu:7.1f} {qs}  {note}"


def save_side_by_side(path: Path, batched: torch.Tensor, loop: torch.Tensor) -> None:
    """One PNG: the batched images (left) next to the one-at-a-time images (right), same channels."""
    from torchvision.utils import make_grid, save_image

    left, right = make_grid(batched, nrow=8, padding=1), make_grid(loop, nrow=8, padding=1)
    gap = torch.ones(left.shape[0], left.shape[1], 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([left, gap, right], 2), str(path))


def gpu_compare(model: nn.Module, layer: str, kw: dict, steps: int) -> str:
    """On CUDA: wall time of the batched render vs the one-channel-at-a-time loop (synchronized)."""
    dev = torch.device("cuda")
    model = model.to(dev)
    common = {"size": SIZE, "steps": steps, "chunk": BATCH, **kw}
    maximize_channels(model, layer, range(4), **{**common, "steps": 4})  # warm-up (cuDNN, allocator)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    maximize_channels(model, layer, **common)
    torch.cuda.synchronize()
    tb = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in range(BATCH):
        maximize(model, channel(layer, c), keys=[c], **common)
    torch.cuda.synchronize()
    tl = time.perf_counter() - t0
    return (
        f"{torch.cuda.get_device_name(dev)}: {layer}, {BATCH} channels, {SIZE}x{SIZE}, {steps} steps: "
        f"batched {tb:.2f} s, one at a time {tl:.2f} s, speed-up {tl / tb:.1f}x"
    )


def profile_ops(model: nn.Module, layer: str, kw: dict, steps: int) -> str:
    """The ops with the most own CPU time in one batched render of ``steps`` steps (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    common = {"size": SIZE, "chunk": BATCH, **kw}
    maximize_channels(model, layer, **{**common, "steps": 2})  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        maximize_channels(model, layer, **{**common, "steps": steps})
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def bench(
    name: str, model: nn.Module, layer: str, kw: dict, steps: int, loop: bool, peak: float, save: Path | None = None
) -> list[str]:
    """Rows for every channel of ``layer``: the floor, featviz's render, and with ``loop`` one at a time."""
    convs = convs_until(model, layer)
    chans = convs[-1][0].out_channels
    mac, flops_w, _ = conv_flops(convs)
    flops = 4 * mac * steps * chans
    floor, conv_floor = flops / peak, flops / flops_w
    noise = noise_images(256, 3, SIZE, seed=123)
    common = {"size": SIZE, "steps": steps, **kw}
    rows = [
        row(
            name,
            "floor",
            floor,
            float("nan"),
            floor,
            conv_floor,
            None,
            f"{chans} channels; {mac / 1e6:.1f} M mult-adds/image; {flops / 1e12:.2f} TFLOP; the same convs "
            f"reach {flops_w / 1e9:.0f} GFLOP/s",
        )
    ]
    base = reset_phase_peak()
    with Clock() as tb:
        batched = maximize_channels(model, layer, **common)
    mem = phase_peak_mb()
    rows.append(
        row(
            "",
            "featviz",
            tb.wall,
            tb.cpu,
            floor,
            conv_floor,
            quality(model, layer, batched.images, kw, noise),
            f"peak RSS {mem:.0f} MB (+{mem - base:.0f} during the render)",
        )
    )
    if loop:
        base = reset_phase_peak()
        with Clock() as tl:
            singles = [maximize(model, channel(layer, c), keys=[c], **common) for c in range(chans)]
        mem = phase_peak_mb()
        images = torch.cat([s.images for s in singles])
        diff = (images - batched.images).abs()
        if save is not None:
            save_side_by_side(save / f"{layer}_batched_vs_loop.png", batched.images, images)
        rows.append(
            row(
                "",
                "loop",
                tl.wall,
                tl.cpu,
                floor,
                conv_floor,
                quality(model, layer, images, kw, noise),
                f"peak RSS {mem:.0f} MB (+{mem - base:.0f}); |loop - batched| px mean "
                f"{diff.mean():.1e}, max {diff.max():.1e}",
            )
        )
    return rows


def cli_render(run_dir: str | None, layer: str, steps: int, peak: float, model: nn.Module) -> str:
    """``featviz render`` of one layer at 64 px, one moment, as a subprocess (start-up included),
    on a copy of ``run_dir`` or on a one-epoch run trained here."""
    import shutil
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        if run_dir is None:
            from featviz.config import TrainConfig
            from featviz.pipeline import train_run

            run_path = train_run(
                DataConfig(n_train=512, n_val=256), ModelConfig(), TrainConfig(epochs=1), out_dir=tmp, name="bench"
            ).path
        else:
            run_path = Path(shutil.copytree(run_dir, Path(tmp) / "run"))
        argv = [
            sys.executable,
            "-m",
            "featviz",
            "render",
            str(run_path),
            "--layers",
            layer,
            "--epochs",
            "last",
            "--size",
            str(SIZE),
            "--steps",
            str(steps),
            "--channels",
            "all",
            "--no-filters",
            "--force",
        ]
        with Clock() as c:
            subprocess.run(argv, check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1])
    convs = convs_until(model, layer)
    mac, chans = sum(macs(c, shape) for c, shape in convs), convs[-1][0].out_channels  # as bench() counts them
    floor = 4 * mac * steps * chans / peak
    return (
        f"featviz render --layers {layer} --size {SIZE} --steps {steps} (subprocess, start-up included): "
        f"{c.wall:.1f} s wall = {c.wall / floor:.2f}x the floor ({floor:.1f} s)"
    )


def setting(text: str) -> tuple[str, object]:
    """``FIELD=VALUE`` -> (field, value): the value parsed as JSON (numbers, true/false, null, lists),
    else kept as a string."""
    field, sep, value = text.partition("=")
    if not sep or not field:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    try:
        return field, json.loads(value)
    except json.JSONDecodeError:
        return field, value


def main() -> None:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", help="a featviz run directory (trained SmallCNN weights)")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--loop", action="store_true", help="also render one channel at a time (slow)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--save", type=Path, default=None, help="write batched-vs-loop images side by side here")
    ap.add_argument("--gpu", action="store_true", help="only compare batched vs one-at-a-time on CUDA")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="only print the top ops of the SmallCNN's batched render (use a small --steps)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        type=setting,
        help="a RenderSettings field for every render (VALUE as JSON, else a string); repeatable",
    )
    args = ap.parse_args()
    sets = dict(args.set)
    try:  # a bad field or value stops here, before any measuring
        resolve(None, sets, "--set")
    except ConfigError as e:
        ap.error(str(e))
    if args.profile:
        small, kw, how = small_cnn(args.run)
        print(profile_ops(small, "features.conv4", {**kw, **sets}, args.steps))
        return
    if args.gpu:
        small, kw, how = small_cnn(args.run)
        print(gpu_compare(three_conv(), "conv2", sets, args.steps))
        print(gpu_compare(small, "features.conv3", {**kw, **sets}, args.steps))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}; every channel, {SIZE}x{SIZE} px, {args.steps} steps"
    )
    peaks = dense_peak()
    peak = peaks["best"]
    print("machine limit (best dense fp32): " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items()) + " GFLOP/s")
    if sets:
        print(f"settings changed for every render: {sets}")
    small, kw, how = small_cnn(args.run)
    header = (
        f"{'model / layer':26s} {'what':8s} {'wall s':>7s} {'xfloor':>6s} {'xconv':>6s} {'CPU s':>7s} "
        f"{'z':>6s} {'z_rob':>6s} {'spec':>5s} {'spec/i':>6s}  notes"
    )
    rows = []
    for layer in ("conv2", "conv3"):
        rows += bench(f"3-conv random / {layer}", three_conv(), layer, sets, args.steps, args.loop, peak, args.save)
    rows += bench(
        f"SmallCNN {how.split(',')[0]} / conv4",
        small,
        "features.conv4",
        {**kw, **sets},
        args.steps,
        args.loop,
        peak,
        args.save,
    )
    print(header)
    print("-" * len(header))
    print("\n".join(rows))
    if not sets:
        print(cli_render(args.run, "features.conv4", args.steps, peak, small))
    print(
        f"load average at the end {os.getloadavg()[0]:.2f}; process peak RSS (getrusage, includes generating "
        f"the run's data for its colour matrix) {peak_mb():.0f} MB. z: mean standardized "
        "activation of each channel on its own image vs 256 pink-noise images; z_rob: the same on 4 randomly "
        "transformed copies; spec: fraction of channels whose "
        "own image is their top image; spec/i: fraction of images whose own channel is their top channel."
    )


if __name__ == "__main__":
    main()
