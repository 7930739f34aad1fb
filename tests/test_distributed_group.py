"""featviz.distributed's parts inside a real gloo process group of 2 (torch.multiprocessing, no torchrun):
the running accuracy of a sharded epoch, and texts shared from rank 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _one_epoch(rank: int, world: int, init: str, out: str) -> None:
    """Worker: one epoch of train_one_epoch on its share; writes its running accuracies and the epoch's."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from featviz.config import ModelConfig, TrainConfig
    from featviz.data.base import ImageData
    from featviz.images import Normalizer
    from featviz.model import build_model
    from featviz.training import make_optimizer, train_one_epoch

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (96, 3, 8, 8), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 4, (96,), generator=g)
        data = ImageData("t", x, y, x[:8], y[:8], ("a", "b", "c", "d"), (0.5,) * 3, (0.25,) * 3)
        model = DistributedDataParallel(
            build_model(
                ModelConfig(widths=(4,), kernels=(3,), strides=(1,), pools=(True,), num_classes=4, batchnorm=False),
                seed=0,
            )
        )
        cfg = TrainConfig(batch_size=16)
        accs: list[float] = []
        _, acc, _ = train_one_epoch(
            model,
            make_optimizer(model, cfg),
            data,
            cfg,
            Normalizer(data.mean, data.std, "cpu"),
            1,
            0,
            6,
            lambda info: accs.append(info.acc),
            shard=(rank, world),
        )
        Path(out, f"{rank}.json").write_text(json.dumps({"running": accs, "epoch": acc}))
    finally:
        dist.destroy_process_group()


def test_the_running_accuracy_counts_every_process(tmp_path: Path) -> None:
    """The progress bar's running accuracy is the global batch's, the same on every process, and ends at
    the epoch's accuracy (it once counted only rank 0's share)."""
    import torch.multiprocessing as mp

    mp.spawn(_one_epoch, args=(2, f"file://{tmp_path / 'rdzv'}", str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert len(r0["running"]) == 6 and r0 == r1
    assert r0["running"][-1] == r0["epoch"]


def _share(rank: int, world: int, init: str, out: str) -> None:
    """Worker: every rank receives rank 0's texts through share_text and writes them down."""
    import torch.distributed as dist

    from featviz.distributed import Group, share_text

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        group = Group(rank, world)
        texts = ["outputs/run-é" * 800, "", "ok"] if rank == 0 else ["wrong"] * 3
        got = [share_text(group, t) for t in texts]
        Path(out, f"{rank}.json").write_text(json.dumps(got))
    finally:
        dist.destroy_process_group()


def test_share_text_passes_long_and_empty_texts_whole(tmp_path: Path) -> None:
    """More than 4 KB of UTF-8 (it was once cut at 4096 bytes, mid-character) and an empty text."""
    import torch.multiprocessing as mp

    mp.spawn(_share, args=(2, f"file://{tmp_path / 'rdzv'}", str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1 == ["outputs/run-é" * 800, "", "ok"]
