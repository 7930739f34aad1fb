"""CUDA check: train and render with no device flag (auto picks the GPU), then batched vs one-at-a-time,
then a ResNet-50 at 224 px.

Usage: python benchmarks/gpu_check.py [--epochs N] [--out DIR] [--resnet50-size PX] [--resnet50-steps N]
Prints the device each step used, wall times, the batched speed-up on the GPU, and the GPU targets: every
channel of a 64-channel layer (64 px, 256 steps, default settings) in at most 0.3 s on an H100-class GPU,
the default ``featviz render`` of the default run in at most 5 s after start-up, and the default
``featviz render`` of a ResNet-50 at 224 px in at most 60 s, with the CUDA-graph path and without (both
as users run the CLI). ``--resnet50-size 32 --resnet50-steps 2`` makes the last part a quick smoke test
on a CPU; ``--resnet50-size 0`` skips it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from featviz.config import DataConfig, ModelConfig, RenderConfig, TrainConfig
from featviz.pipeline import render_run, train_run
from featviz.zoo import ModelSpec


def resnet50_render(out: Path, size: int, steps: int | None) -> None:
    """A ResNet-50 trained two epochs on 512 generated ``shapes`` images at ``size`` px (for timing: its weights
    are about the init's), then ``featviz render`` with its default selection, once with the default CUDA
    graph (on CUDA) and once with ``--cuda-graph off``, each timed as a subprocess (start-up included)."""
    t0 = time.perf_counter()
    run = train_run(
        DataConfig(name="shapes", size=size, n_train=512, n_val=256),
        train_cfg=TrainConfig(epochs=2),  # a deep model renders the init, the middle and the last epoch
        out_dir=out,
        name="r50",
        force=True,
        model_spec=ModelSpec("torchvision.models:resnet50"),
    )
    print(f"resnet50 {size} px: trained in {time.perf_counter() - t0:.1f} s on {run.meta['device']}")
    extra = ["--steps", str(steps)] if steps else []
    for graph in ("auto", "off"):
        cmd = [sys.executable, "-m", "featviz", "render", str(run.path), "--force", "--cuda-graph", graph, *extra]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        print(f"resnet50 {size} px, default render, --cuda-graph {graph}: {wall:.1f} s wall, exit {done.returncode}")
        print("  " + " ".join((done.stdout + done.stderr).split())[-400:])
    print("target: the default render of a ResNet-50 at 224 px in <= 60 s on an H100-class GPU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/featviz-gpu"))
    ap.add_argument("--resnet50-size", type=int, default=224, help="0 skips the ResNet-50 part")
    ap.add_argument("--resnet50-steps", type=int, default=None, help="default: the render's own")
    ap.add_argument("--skip-small", action="store_true", help="only the ResNet-50 part")
    args = ap.parse_args()
    if args.skip_small:
        resnet50_render(args.out, args.resnet50_size, args.resnet50_steps)
        return
    print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name(0)}")
    t0 = time.perf_counter()
    run = train_run(
        DataConfig(), ModelConfig(), TrainConfig(epochs=args.epochs), out_dir=args.out, name="gpu", force=True
    )
    last = run.metrics()[-1]
    print(
        f"train: {time.perf_counter() - t0:.1f} s on {run.meta['device']}, val acc {last['val_acc']:.4f}, "
        f"epoch wall {[r['wall_s'] for r in run.metrics()[1:]]}"
    )
    t0 = time.perf_counter()
    out = render_run(run, RenderConfig())
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    print(
        f"render: {time.perf_counter() - t0:.1f} s on {out['device']} (target <= 5 s on a GPU), {out['am_images']} "
        f"images at {len(out['moments'])} moments, GPU peak {peak:.0f} MiB"
    )
    if torch.cuda.is_available():
        from featviz.loading import load_model_at
        from featviz.optvis import maximize_channels

        model = load_model_at(run, run.epochs_done, torch.device("cuda"))
        kw = {
            "size": 64,
            "steps": 256,
            "mean": run.meta["data"]["mean"],
            "std": run.meta["data"]["std"],
            "color": torch.tensor(run.meta["data"]["color_matrix"]),
        }
        maximize_channels(model, "features.bn3", **{**kw, "steps": 8})  # warm-up: cuDNN, cuFFT, allocator
        results = {}
        for graph in (None, False):  # the default (a captured CUDA graph) and the eager loop
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = maximize_channels(model, "features.bn3", cuda_graph=graph, **kw)
            torch.cuda.synchronize()
            results[graph] = (time.perf_counter() - t0, res)
        (tg, rg), (te, re_) = results[None], results[False]
        print(
            f"64 channels of features.conv3 (its BatchNorm response, as featviz render targets), 64 px, 256 steps: "
            f"{tg:.3f} s with cuda_graph {rg.settings['resolved']['cuda_graph']!r} (target <= 0.3 s on an H100-class "
            f"GPU), {te:.3f} s eager = {te / tg:.1f}x; largest image difference "
            f"{float((rg.images - re_.images).abs().max()):.2e}, "
            f"mean activation {float(rg.values.mean()):.3f} vs {float(re_.values.mean()):.3f}"
        )
        bench = Path(__file__).with_name("actmax.py")
        subprocess.run([sys.executable, str(bench), str(run.path), "--gpu"], check=True)
    if args.resnet50_size:
        resnet50_render(args.out, args.resnet50_size, args.resnet50_steps)


if __name__ == "__main__":
    main()
