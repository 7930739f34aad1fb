"""Nulls: the same measurement made where the effect cannot come from learning.

``rotation_null``: the run's network from its own init, trained with its own optimizer, learning-rate
schedule and number of steps, but every step's gradient replaced by a random direction with the norm of
the real gradient of that parameter. The real norms are measured on a batch of validation images at
each epoch snapshot and held through the following epoch. No image reaches the null's updates, so any
pattern its rotation from init shows (e.g. deeper layers turning further) comes from the architecture,
the init and the optimizer's per-weight step, not from the task. Seeded: the same run and seed give
the same null, and the same random numbers with any number of threads.

The Gaussian numbers of a step are drawn in ``STREAMS`` fixed pieces of the parameters laid end to end,
each from its own generator, on up to as many threads: PyTorch's CPU generator draws on one core only,
and the draw is most of a step's time (a ResNet-18: 11.2 M numbers per step).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F

from featviz.config import TrainConfig, from_dict
from featviz.errors import ConfigError
from featviz.loading import build_run_model
from featviz.metrics import rotation
from featviz.run.store import Run
from featviz.training import lr_at, make_optimizer
from featviz.zoo import logits_of

NULL_BATCH = 256  # validation images on which the real gradient norms are measured
STREAMS = 4  # generators a step's draw is split over; fixed, so the draw does not depend on the thread count


def stream_seeds(seed: int) -> list[int]:
    """The seeds of the ``STREAMS`` generators of the null with seed ``seed``: 63 bits of SHA-256 of
    ("featviz null", seed, stream), so that no stream starts from the run's own seed, which drew its init
    (with ``seed`` itself, the null's first step would reuse the init's random numbers)."""
    return [
        int.from_bytes(hashlib.sha256(f"featviz null {seed} {i}".encode()).digest()[:8], "big") >> 1
        for i in range(STREAMS)
    ]


def gradient_norms(
    run: Run, states: dict[int, dict[str, torch.Tensor]], x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> dict[int, dict[str, float]]:
    """Per epoch snapshot: each trainable parameter's gradient norm of the mean cross-entropy on the
    normalized images ``x`` with labels ``y``, the model in training mode (as a training step sees it)."""
    model = build_run_model(run).to(device)
    out: dict[int, dict[str, float]] = {}
    for epoch, state in sorted(states.items()):
        model.load_state_dict(state)
        model.train()
        model.zero_grad(set_to_none=True)
        F.cross_entropy(logits_of(model(x.to(device))), y.to(device)).backward()
        out[epoch] = {n: float(p.grad.norm()) for n, p in model.named_parameters() if p.grad is not None}
    return out


def rotation_null(
    run: Run,
    states: dict[int, dict[str, torch.Tensor]],
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    seed: int = 0,
    keep: dict[int, dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Rotation from init (``metrics.rotation``) of every conv layer at each epoch end of the null (see
    the module docstring) and, at the run's last readable epoch (``last_epoch``), the run's, the null's
    and their ratio: ``{layer: {"rotation_from_init", "run_at_last", "null_at_last", "ratio"}}``. A
    ConfigError when the run cannot be replayed (no optimizer and schedule recorded, no step count, no
    labelled images). ``keep``: filled with the null's tensors at each epoch end (epoch -> state dict, on the
    CPU), for measurements beyond rotation (``featviz.wiring``)."""
    cfg_json = run.info.configs["train"]
    spe = run.steps_per_epoch()
    if run.info.source is not None or "optimizer" not in cfg_json or not spe:
        raise ConfigError(
            "the null replays featviz's own training loop: this run has no recorded optimizer or schedule"
        )
    if len(y) == 0 or int(y.min()) < 0:
        raise ConfigError("the null needs labelled validation images to measure the real gradient norms")
    if 0 not in states:
        raise ConfigError("the null starts from the run's init: its epoch 0 snapshot is not readable")
    cfg = from_dict(TrainConfig, cfg_json)
    used = {e: s for e, s in states.items() if e < run.epochs_planned}  # the last epoch's norms drive no step
    norms = gradient_norms(run, used, x[:NULL_BATCH], y[:NULL_BATCH], device)
    model = build_run_model(run).to(device)
    model.load_state_dict(states[0])
    model.train()
    opt = make_optimizer(model, cfg, fused=True)  # one pass over the weights per step, not one per operation
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    layers = [layer.name for layer in run.info.layers]
    w0 = {n: model.get_parameter(f"{n}.weight").detach().clone() for n in layers}
    null: dict[str, list[float]] = {n: [0.0] for n in layers}
    gens = [torch.Generator().manual_seed(s) for s in stream_seeds(seed)]
    epochs, total, step = run.epochs_planned, spe * run.epochs_planned, 0
    sizes = [p.numel() for _, p in params]
    drawn = torch.empty(sum(sizes))  # one draw per step for every parameter, into the same buffer every step
    parts, pieces = drawn.split(sizes), drawn.tensor_split(STREAMS)
    with ThreadPoolExecutor(max(1, min(STREAMS, torch.get_num_threads()))) as pool:
        for epoch in range(1, epochs + 1):
            held = norms[max(e for e in norms if e < epoch)]  # the last measured snapshot before this epoch
            wanted = torch.tensor([held.get(name, 0.0) for name, _ in params], dtype=torch.float64)
            for _ in range(spe):
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total, cfg.lr)
                list(pool.map(lambda i: pieces[i].normal_(generator=gens[i]), range(STREAMS)))
                # squared norms as float32 dot products: 1e-6 relative, a tenth of the time of float64 norms
                norms_now = torch.stack([torch.dot(d, d) for d in parts]).double().sqrt().clamp_min(1e-12)
                for (_, p), d, k in zip(params, parts, (wanted / norms_now).tolist()):
                    p.grad = d.mul_(k).view_as(p).to(device=p.device, dtype=p.dtype)  # a view where it can be
                opt.step()
                step += 1
            for n in layers:
                null[n].append(rotation(w0[n], model.get_parameter(f"{n}.weight").detach()))
            if keep is not None:
                keep[epoch] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    last = max(states)  # the last readable epoch of the run: where run and null are compared
    out: dict[str, Any] = {
        "seed": seed,
        "streams": STREAMS,  # how the draw was made; an analysis without it drew from one generator seeded `seed`
        "batch": int(min(len(x), NULL_BATCH)),
        "epochs": list(range(epochs + 1)),
    }
    for n in layers:
        real = rotation(w0[n], states[last][f"{n}.weight"])
        out[n] = {
            "rotation_from_init": null[n],
            "run_at_last": real,
            "null_at_last": null[n][last],
            "ratio": real / null[n][last] if null[n][last] > 0 else None,
        }
    out["last_epoch"] = last
    return out
