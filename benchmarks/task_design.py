"""How hard is an embedded data set for the default recipe, and does it need depth?

Trains the default 4-depth SmallCNN and the same recipe cut to its first 2 conv depths (same widths,
kernels, epochs, optimizer) on one generated data set, and prints the validation accuracy after every
epoch. No run folder is written: this measures the task, not featviz's I/O.

The default data set was chosen with this script on the design seeds named in docs/findings.md
(data seed 0, training seeds 0 and 1); those seeds are never evidence.

Usage: python benchmarks/task_design.py [--data pairs] [--seeds 0,1] [--depths 4,2]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from featviz.config import DataConfig, ModelConfig, TrainConfig
from featviz.data import load_data
from featviz.images import Normalizer
from featviz.model import build_model
from featviz.training import evaluate, make_optimizer, steps_per_epoch, train_one_epoch


def curve(data, depth: int, seed: int, cfg: TrainConfig = TrainConfig()) -> tuple[list[float], float]:
    """Validation accuracy after epochs 0..N of the default recipe cut to ``depth`` conv depths, and
    the seconds it took."""
    full = ModelConfig(in_channels=data.image_channels, num_classes=len(data.classes))
    mcfg = dataclasses.replace(
        full,
        widths=full.widths[:depth],
        kernels=full.kernels[:depth],
        strides=full.strides[:depth],
        pools=full.pools[:depth],
    )
    cfg = dataclasses.replace(cfg, seed=seed)
    model = build_model(mcfg, seed=seed).to(memory_format=torch.channels_last)
    norm = Normalizer(data.mean, data.std, "cpu", True)
    opt = make_optimizer(model, cfg)
    total = steps_per_epoch(len(data.train_x), cfg.batch_size) * cfg.epochs
    accs, step, t0 = [evaluate(model, data.val_x, data.val_y, norm)[1]], 0, time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        _, _, step = train_one_epoch(model, opt, data, cfg, norm, epoch, step, total)
        accs.append(evaluate(model, data.val_x, data.val_y, norm)[1])
    return accs, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="pairs")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--depths", default="4,2")
    args = ap.parse_args()
    t = time.perf_counter()
    data = load_data(DataConfig(name=args.data))
    print(
        f"{args.data}: {len(data.train_x)} train / {len(data.val_x)} val images, generated in "
        f"{time.perf_counter() - t:.1f} s"
    )
    for seed in (int(s) for s in args.seeds.split(",")):
        for depth in (int(d) for d in args.depths.split(",")):
            accs, sec = curve(data, depth, seed)
            print(
                f"seed {seed} depth {depth}: val acc by epoch {' '.join(f'{a:.3f}' for a in accs)}  ({sec:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
