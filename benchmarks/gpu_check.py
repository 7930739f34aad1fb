"""CUDA check: train and render with no device flag (auto picks the GPU), then batched vs one-at-a-time.

Usage: python benchmarks/gpu_check.py [--epochs N] [--out DIR]
Prints the device each step used, wall times, the batched speed-up on the GPU, and the two GPU
targets: every channel of a 64-channel layer (64 px, 256 steps, default settings) in at most 0.3 s on
an H100-class GPU, and the default ``featviz render`` of the default run in at most 5 s after start-up.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/featviz-gpu"))
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
