"""featviz on other people's models: the recorder's cost to a training loop, and rendering a ResNet-18.

Prints, measured side by side in one run:
  1. a plain PyTorch loop (SmallCNN on the default shapes data, 20,000 images, 2 epochs, AdamW) with and
     without ``featviz.record`` on the default (log) snapshot schedule, alternated, median of the
     repeats: the recorder's overhead (target <= 2%), everything it does included (tracing the layers,
     the probe, every snapshot), and the recorder's own seconds (start, snapshots);
  2. `featviz render` of a ResNet-18 run on shapes (the default layer selection: first conv and the
     last conv before each downsampling; 64 evenly spaced channels per layer; default regularized
     settings, 256 steps), as a user runs it (a subprocess), at one moment (--epochs last), against the
     compute floor: 4 x multiply-adds of the network up to each layer x channels x steps, divided by the
     machine's best dense fp32 FLOP/s measured in the same run (benchmarks/machine.py).

Usage: python benchmarks/any_model.py [--repeats 3] [--skip-render]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import dense_peak  # noqa: E402

import featviz  # noqa: E402
from featviz.config import DataConfig, ModelConfig, RenderConfig, TrainConfig  # noqa: E402
from featviz.data import load_data  # noqa: E402
from featviz.layers import default_channels, default_layers, prefix_macs  # noqa: E402
from featviz.model import build_model  # noqa: E402
from featviz.pipeline import train_run  # noqa: E402
from featviz.zoo import ModelSpec, build  # noqa: E402


def loop(data, out: Path | None, epochs: int = 2, batch: int = 128) -> tuple[float, float]:
    """(seconds for the user's loop over ``data``, start to finish; seconds the recorder itself spent:
    its start and its snapshots), recorded into ``out`` when given."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build_model(ModelConfig()).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=0.005, weight_decay=0.05)
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    x_all = ((data.train_x.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
    val = (data.val_x[:500].float() / 255 - mean) / std, data.val_y[:500]
    rec = (
        featviz.record(
            model,
            "bench",
            out_dir=out,
            model_spec="featviz.model:small_cnn",
            data=val,
            force=True,
            mean=data.mean,
            std=data.std,
        )
        if out
        else None
    )
    start_s = 0.0
    if rec:
        t = time.perf_counter()
        rec.start()
        start_s = time.perf_counter() - t
    for _ in range(epochs):
        for idx in torch.randperm(len(x_all)).split(batch):
            loss = F.cross_entropy(model(x_all[idx]), data.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if rec:
                rec.step(loss=loss)
        if rec:
            rec.epoch()
    if rec:
        rec.close()
    return time.perf_counter() - t0, start_s + (rec.snapshot_s if rec else 0.0)


def recorder_overhead(repeats: int) -> None:
    data = load_data(DataConfig())
    plain, recorded, own = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):  # alternated, so drift in machine speed hits both alike
            plain.append(loop(data, None)[0])
            total, self_s = loop(data, Path(tmp))
            recorded.append(total)
            own.append(self_s)
    p, r = statistics.median(plain), statistics.median(recorded)
    print(
        f"recorder: plain loop {p:.2f} s, recorded {r:.2f} s (median of {repeats}; spread plain "
        f"{min(plain):.2f}-{max(plain):.2f}, recorded {min(recorded):.2f}-{max(recorded):.2f}): "
        f"{100 * (r / p - 1):+.1f}%; the recorder's own time {statistics.median(own):.3f} s = "
        f"{100 * statistics.median(own) / p:.1f}% of the loop (target <= 2%)"
    )


def resnet_render(peak: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = train_run(
            DataConfig(n_train=512, n_val=256),
            ModelConfig(),
            TrainConfig(epochs=1, batch_size=128),
            out_dir=tmp,
            name="r18",
            model_spec=ModelSpec("torchvision.models:resnet18"),
        )
        layers = default_layers(run.meta["layers"])
        spec = ModelSpec("torchvision.models:resnet18", in_channels=3, num_classes=10)
        prefix, _ = prefix_macs(build(spec), 3, 32)
        steps = RenderConfig().settings.steps
        flops = sum(4 * prefix[la["name"]] * len(default_channels(la["out_ch"])) * steps for la in layers)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "featviz", "render", str(run.path), "--epochs", "last", "--no-filters"],
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - t0
    floor = flops / peak
    print(
        f"ResNet-18 render, layers {', '.join(la['name'] for la in layers)}; 64 channels each, {steps} steps, "
        f"one moment: {wall:.1f} s wall (featviz render as a subprocess, start-up included); compute floor "
        f"{floor:.1f} s ({flops / 1e12:.2f} TFLOP at {peak / 1e9:.0f} GFLOP/s): {wall / floor:.1f}x the floor"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-render", action="store_true")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peak = dense_peak()
    print("machine limit: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peak.items()) + " GFLOP/s")
    recorder_overhead(args.repeats)
    if not args.skip_render:
        resnet_render(peak["best"])


if __name__ == "__main__":
    main()
