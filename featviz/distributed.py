"""Several processes on one run, with PyTorch's own engine: ``torchrun ... -m featviz train|render``.

torchrun starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous; ``setup``
joins them into one process group (gloo on CPU, NCCL on CUDA), one device per process. Outside
torchrun (WORLD_SIZE unset or 1) every function here is a no-op for a single process, so the
stages call them unconditionally. Rank 0 alone writes a run's shared files (run.json, snapshots,
metrics, manifest, the render index); every rank writes only its own images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from featviz.errors import ConfigError


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # this process's device under torchrun (None: the stage decides)

    @property
    def main(self) -> bool:
        return self.rank == 0


T = TypeVar("T")
SINGLE = Group()
_ours = False  # whether featviz started the process group (then it also ends it)


def launched() -> bool:
    """Whether this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def main_process() -> bool:
    """Whether this is rank 0 (or the only process), without joining any group: for reporting after a
    stage has left its group."""
    return int(os.environ.get("RANK", "0")) == 0


def setup(device: str = "auto") -> Group:
    """Join torchrun's process group (once) and pick this rank's device: cuda:LOCAL_RANK when CUDA is
    asked for or available (auto), else the CPU. A single process gets ``SINGLE``."""
    if not launched():
        return SINGLE
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    global _ours
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(dev)
        # NCCL for the model's CUDA tensors, gloo for the small CPU ones (the run name, counts)
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
        _ours = True
    return Group(dist.get_rank(), dist.get_world_size(), dev)


def barrier(group: Group) -> None:
    if group.world > 1:
        dist.barrier()


def share_text(group: Group, text: str) -> str:
    """Rank 0's ``text`` on every rank (e.g. the run folder rank 0 created), whole: its length goes
    first, then its UTF-8 bytes (CPU tensors: the gloo side of the group)."""
    if group.world == 1:
        return text
    raw = text.encode() if group.main else b""
    size = torch.tensor([len(raw)], dtype=torch.int64)
    dist.broadcast(size, 0)
    data = torch.tensor(list(raw), dtype=torch.uint8) if group.main else torch.empty(int(size), dtype=torch.uint8)
    if data.numel():
        dist.broadcast(data, 0)
    return bytes(data.tolist()).decode()


def rank0_first(group: Group, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on rank 0, then on the other ranks (e.g. a data set rank 0 downloads and the others
    then read), so they never write the same files at once."""
    if not group.main:
        barrier(group)
    try:
        return fn(*args)
    finally:
        if group.main:
            barrier(group)


def all_sum(group: Group, value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over every rank (itself for one process)."""
    if group.world > 1:
        dist.all_reduce(value)
    return value


def check_batch(group: Group, batch_size: int) -> None:
    """Each process takes an equal share of every global batch (one process's batch size)."""
    if group.world > 1 and batch_size % group.world:
        raise ConfigError(
            f"--batch-size {batch_size} does not split over {group.world} processes; use a multiple "
            f"of {group.world} (it is the global batch, the same as one process's)"
        )


def wrap(model: torch.nn.Module, group: Group) -> torch.nn.Module:
    """The module to train: ``model`` itself for one process; else DistributedDataParallel around it
    (its BatchNorms made SyncBatchNorm on CUDA, so they see the global batch; PyTorch's SyncBatchNorm
    needs a GPU, so on CPU each process normalizes with its own share's statistics)."""
    if group.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if group.device is not None and group.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[group.device])
    return DistributedDataParallel(model)


def finish(group: Group) -> None:
    """Wait for every rank; end the process group if featviz started it (a caller's own stays)."""
    global _ours
    if group.world > 1 and dist.is_initialized():
        dist.barrier()
        if _ours:
            dist.destroy_process_group()
            _ours = False
