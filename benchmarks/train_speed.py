"""Training speed, measured side by side in one process.

Prints:
  1. throughput of featviz's training loop vs a bare PyTorch loop over the same model, batch size
     and data (images/s and their ratio; target >= 0.9x);
  2. channels-last vs contiguous for the same loop (why channels-last is the CPU default);
  3. the default `featviz train` end to end: wall time (target <= 90 s on a 2-core CPU), final
     validation accuracy (target >= 0.90) and the share of wall time spent writing snapshots
     (target <= 2%).

Usage: python benchmarks/train_speed.py [--skip-full]
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from featviz.config import DataConfig, ModelConfig, TrainConfig
from featviz.data import make_shapes
from featviz.images import Normalizer
from featviz.model import build_model
from featviz.pipeline import train_run
from featviz.training import make_optimizer, train_one_epoch


def bare_loop(data, cfg: TrainConfig, channels_last: bool, steps: int) -> float:
    """images/s of the plainest loop: pre-normalized floats, shuffled batches, AdamW."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(ModelConfig(), seed=0).to(memory_format=fmt)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    x_all = ((data.train_x.float() / 255 - mean) / std).contiguous(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    perm = torch.randperm(len(x_all))
    t0 = 0.0
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()  # three warm-up steps
        idx = perm[(i * cfg.batch_size) % (len(perm) - cfg.batch_size) :][: cfg.batch_size]
        loss = F.cross_entropy(model(x_all[idx]), data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def featviz_loop(data, cfg: TrainConfig, steps: int) -> float:
    """images/s of featviz's train_one_epoch (uint8 -> normalize per batch, lr schedule, accuracy)."""
    from dataclasses import replace

    n = (steps + 3) * cfg.batch_size
    sub = replace(data, train_x=data.train_x[:n], train_y=data.train_y[:n])
    model = build_model(ModelConfig(), seed=0).to(memory_format=torch.channels_last)
    norm = Normalizer(data.mean, data.std, torch.device("cpu"), True)
    opt = make_optimizer(model, cfg)
    times = []
    train_one_epoch(model, opt, sub, cfg, norm, 1, 0, steps + 3, lambda info: times.append(time.perf_counter()))
    return steps * cfg.batch_size / (times[-1] - times[2])


def main() -> None:
    torch.manual_seed(0)
    cfg = TrainConfig()
    data = make_shapes(n_train=cfg.batch_size * 80, n_val=10)
    steps = 60
    print(f"threads: {torch.get_num_threads()}, batch {cfg.batch_size}, {steps} timed steps each")
    bare_cl = bare_loop(data, cfg, True, steps)
    fv = featviz_loop(data, cfg, steps)
    bare_cl2 = bare_loop(data, cfg, True, steps)  # again, to bracket drift
    bare_nchw = bare_loop(data, cfg, False, steps)
    bare = (bare_cl + bare_cl2) / 2
    print(f"bare PyTorch loop, channels-last : {bare:8.0f} img/s")
    print(f"featviz train loop               : {fv:8.0f} img/s   ratio {fv / bare:.2f}x (target >= 0.90x)")
    print(f"bare PyTorch loop, contiguous    : {bare_nchw:8.0f} img/s   channels-last speed-up {bare / bare_nchw:.2f}x")
    if "--skip-full" in sys.argv:
        return
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = train_run(DataConfig(), ModelConfig(), TrainConfig(), out_dir=tmp, name="bench")
        wall = time.perf_counter() - t0
        recs = run.metrics()
        snap = sum(r["snapshot_s"] for r in recs)
        steps = sum(r.get("step_snapshot_s", 0.0) for r in recs)
        print(
            f"default featviz train: {wall:.1f} s wall (target <= 60 s), final val acc {recs[-1]['val_acc']:.4f} "
            f"(target >= 0.90), {len(run.snapshot_points())} snapshots (schedule {TrainConfig().schedule}): "
            f"epoch commits {snap:.3f} s + step snapshots {steps:.3f} s = {100 * (snap + steps) / wall:.2f}% of wall "
            "(target <= 2%)"
        )


if __name__ == "__main__":
    main()
