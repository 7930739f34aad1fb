"""Training: fit / train_one_epoch / evaluate. No file I/O: ``fit`` commits each epoch through an
``EpochWriter`` (``pipeline.RunWriter`` writes the run folder).

Determinism: the initial weights come from ``build_model(cfg, seed)``; the batch order of epoch e
is a permutation drawn from a generator seeded with (seed, e); the learning rate is a pure
function of the global step. Resuming from epoch k therefore needs only the weights, the optimizer
state and k, and reproduces the uninterrupted run exactly on the same machine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from featviz.config import TrainConfig
from featviz.data.base import ImageData
from featviz.distributed import SINGLE, Group, all_sum, finish, wrap
from featviz.errors import TrainingDiverged
from featviz.faults import pause_point
from featviz.hooks import evaluating
from featviz.images import Normalizer
from featviz.progress import SilentTraining
from featviz.run.fileio import nonfinite
from featviz.schedule import extra_steps
from featviz.zoo import logits_of


@dataclass(frozen=True)
class StepInfo:
    epoch: int  # 1-based epoch being trained
    batch: int  # 1-based batch index within the epoch
    batches: int  # batches per epoch
    step: int  # global optimizer step after this batch
    loss: float  # this batch's loss
    acc: float  # running training accuracy of the epoch so far


def make_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names over the model's trainable parameters. ``fused``: PyTorch's fused
    implementation where the parameters' device has one (the CPU and CUDA), the same update in one pass
    over the weights; equal to the default one up to float rounding."""
    params = [p for p in model.parameters() if p.requires_grad]
    kw = {"fused": True} if fused and params and all(p.device.type in ("cpu", "cuda") for p in params) else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay, **kw)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw)


def lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 10% of steps, then cosine decay to 1% of ``peak``."""
    warm = max(1, total // 10)
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Index batches for ``epoch``: a seeded permutation; a last batch of one image is dropped (BatchNorm)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    batches = list(torch.randperm(n, generator=g).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()
    return batches


def steps_per_epoch(n: int, batch_size: int) -> int:
    return len(batch_order(n, batch_size, 0, 0))


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Normalizer, batch_size: int = 512
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (eval mode, every module's flag restored after) on
    uint8 images ``x`` [N, C, H, W]."""
    loss_sum, correct = 0.0, 0
    with evaluating(model):
        for i in range(0, len(x), batch_size):
            logits = logits_of(model(norm(x[i : i + batch_size])))
            yb = y[i : i + batch_size].to(logits.device)
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    return loss_sum / max(1, len(x)), correct / max(1, len(x))


def train_one_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: ImageData,
    cfg: TrainConfig,
    norm: Normalizer,
    epoch: int,
    step: int,
    total_steps: int,
    on_step: Callable[[StepInfo], None] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> tuple[float, float, int]:
    """One pass over the training set. Returns (mean loss, accuracy, global step after the epoch).

    ``shard`` = (rank, processes): each process takes every processes-th image of each global batch
    (the batches are those of one process) and its loss is scaled so that DistributedDataParallel's
    averaged gradient is the global batch's mean; losses and accuracy are summed over the processes.
    Raises TrainingDiverged at the first non-finite loss, before the optimizer applies it.
    """
    rank, world = shard
    model.train()
    batches = batch_order(len(data.train_x), cfg.batch_size, cfg.seed, epoch)
    # one process: running sums on the device (no sync beyond the loss's); several: host numbers, since
    # the step's all-reduce brings the global loss and hits to the host anyway
    loss_sum = 0.0 if world > 1 else torch.zeros((), dtype=torch.float64, device=norm.device)
    correct = 0 if world > 1 else torch.zeros((), dtype=torch.int64, device=norm.device)
    total_seen = 0
    for i, whole in enumerate(batches, start=1):
        lr = lr_at(step, total_steps, cfg.lr)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = whole[rank::world]
        x, y = norm(data.train_x[idx]), data.train_y[idx].to(norm.device, non_blocking=True)
        out = model(x)
        logits = logits_of(out)
        # one process: the batch mean; several: this share's sum scaled so that DDP's average over the
        # processes is the global batch's mean (an empty share, at the end of a short last batch, adds 0)
        reduction, scale = ("mean", 1.0) if world == 1 else ("sum", world / len(whole))
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing, reduction=reduction) * scale
        if isinstance(out, tuple) and hasattr(out, "aux_logits") and out.aux_logits is not None:
            aux = F.cross_entropy(out.aux_logits, y, reduction=reduction) * scale  # Inception v3's auxiliary head
            loss = loss + 0.4 * aux
        hits = (logits.detach().argmax(1) == y).sum()
        if world > 1:  # one all-reduce per step: the global batch's loss and hits (for the progress bar too)
            both = all_sum(Group(rank, world), torch.stack([loss.detach().float() / world, hits.float()]))
            loss_val, hits = both.tolist()  # one device-to-host copy
            hits = int(hits)
        else:
            loss_val = loss.detach().item()  # one sync per step: needed for the finite check and the progress bar
        if not math.isfinite(loss_val):
            raise TrainingDiverged(
                f"loss became {loss_val} at epoch {epoch}, batch {i} (lr {lr:.3g}); training stopped, "
                f"the last good snapshot is epoch {epoch - 1}; try a smaller --lr"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        loss_sum += loss_val * len(whole) if world > 1 else loss.detach() * len(idx)
        correct += hits  # with several processes: every process's hits
        total_seen += len(whole)
        if on_step is not None:
            on_step(StepInfo(epoch, i, len(batches), step, loss_val, int(correct) / total_seen))
    check_finite(model, epoch)
    return float(loss_sum) / total_seen, int(correct) / total_seen, step


def check_finite(model: nn.Module, epoch: int) -> None:
    """Raise TrainingDiverged if any parameter or buffer became NaN or infinite (the last step can do it)."""
    name = nonfinite([*model.named_parameters(), *model.named_buffers()])
    if name is not None:
        raise TrainingDiverged(
            f"{name} became non-finite during epoch {epoch}; training stopped, "
            f"the last good snapshot is epoch {epoch - 1}; try a smaller --lr"
        )


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``opt.state_dict()`` into tensors (for safetensors) and JSON structure; no pickle."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"state.{pid}.{key}"] = val
            else:
                scalars[f"{pid}.{key}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict) -> None:
    """Inverse of :func:`optimizer_state`."""
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        if name.startswith("state."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = t
    for name, val in info.get("scalars", {}).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})


class EpochWriter(Protocol):
    """Where ``fit`` commits its epochs (``pipeline.RunWriter``: a run folder); called on rank 0 only."""

    run: Any

    def commit(self, epoch: int, model: nn.Module, opt: torch.optim.Optimizer, rec: dict) -> None: ...
    def step_snapshot(self, step: int, model: nn.Module) -> None: ...
    def resume_state(self, epoch: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...


def fit(
    writer: EpochWriter,
    data: ImageData,
    model: nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    first_epoch: int,
    progress: Any,
    group: Group = SINGLE,
) -> None:
    """The epochs from ``first_epoch`` (1 = a new run: the init is committed as epoch 0; later = resumed
    from ``writer.resume_state``). With several processes (``group``) each trains its share of every
    global batch under DistributedDataParallel, and rank 0 alone validates, reports and writes."""
    if device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=fmt)
    trained = wrap(model, group)  # model itself: the weights to save and evaluate
    if not group.main:  # rank 0 reports and writes for every process
        progress = SilentTraining()
    norm = Normalizer(data.mean, data.std, device, cfg.channels_last)
    opt = make_optimizer(trained, cfg)
    batches = steps_per_epoch(len(data.train_x), cfg.batch_size)
    total = batches * cfg.epochs
    torch.manual_seed(cfg.seed)  # dropout, if any, draws from the global generator
    if first_epoch == 1:
        val_loss, val_acc = _validate(model, data, norm, group)
        init = {
            "epoch": 0,
            "step": 0,
            "train_loss": None,
            "train_acc": None,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": 0.0,
            "wall_s": 0.0,
        }
        if group.main:
            writer.commit(0, model, opt, init)
    else:
        tensors, info = writer.resume_state(first_epoch - 1)
        load_optimizer_state(opt, {k: v.to(device) for k, v in tensors.items() if k.startswith("state.")}, info)
        torch.set_rng_state(tensors["rng.cpu"])
    step = (first_epoch - 1) * batches
    progress.start(writer.run, first_epoch, cfg.epochs, batches)
    extra = set(extra_steps(cfg.schedule, batches, total))
    spent = [0.0]  # seconds spent writing this epoch's step snapshots

    def on_step(info: StepInfo) -> None:
        progress.step(info)
        pause_point(f"step:{info.step}")  # fault-injection tests kill the process here
        if group.main and info.step in extra and info.batch != info.batches:
            t = time.perf_counter()
            check_finite(model, info.epoch)
            writer.step_snapshot(info.step, model)
            spent[0] += time.perf_counter() - t

    for epoch in range(first_epoch, cfg.epochs + 1):
        t0, spent[0] = time.perf_counter(), 0.0
        train_loss, train_acc, step = train_one_epoch(
            trained, opt, data, cfg, norm, epoch, step, total, on_step, shard=(group.rank, group.world)
        )
        val_loss, val_acc = _validate(model, data, norm, group)
        rec = {
            "epoch": epoch,
            "step": step,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": opt.param_groups[0]["lr"],
            "wall_s": round(time.perf_counter() - t0, 3),
            "step_snapshot_s": round(spent[0], 4),
        }
        if group.main:
            writer.commit(epoch, model, opt, rec)
        progress.epoch(rec)
    finish(group)


def _validate(model: nn.Module, data: ImageData, norm: Normalizer, group: Group) -> tuple[float | None, float | None]:
    """Validation loss and accuracy, on rank 0 only: it alone writes them (no collective runs here)."""
    return evaluate(model, data.val_x, data.val_y, norm) if group.main else (None, None)
