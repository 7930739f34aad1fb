"""When training writes a snapshot: a pure function of the schedule, the epoch length and the run length.

Schedules (``--snapshots``): ``log`` (default) = optimizer steps 1, 2, 4, 8, ... inside the first epoch,
where features form, then the end of every epoch; ``epoch`` = epoch ends only; ``every:K`` = also every
K optimizer steps; ``steps:LIST`` = also these steps. The init (step 0) and every epoch end are always
snapshots (``epoch_XXX``); the extra ones are ``step_XXXXXXX``. Being pure, the schedule is the same
after ``--resume``, so a resumed run writes exactly the snapshots of an uninterrupted one.
"""

from __future__ import annotations

import math

from featviz.errors import ConfigError
from featviz.run.schema import SnapshotPoint

KINDS = ("log", "epoch", "every:K", "steps:LIST")


def parse_schedule(spec: str) -> tuple[str, tuple[int, ...]]:
    """'log' | 'epoch' | 'every:K' | 'steps:1,5,9' -> (kind, numbers); anything else is a ConfigError."""
    text = spec.strip().lower()
    if text in ("log", "epoch"):
        return text, ()
    kind, _, rest = text.partition(":")
    try:
        nums = tuple(int(x) for x in rest.split(",") if x.strip())
    except ValueError:
        nums = ()
    if kind == "every" and len(nums) == 1 and nums[0] >= 1:
        return "every", nums
    if kind == "steps" and nums and all(n >= 1 for n in nums):
        return "steps", tuple(sorted(set(nums)))
    raise ConfigError(
        f"unknown snapshot schedule {spec!r}; use one of {', '.join(KINDS)} (K and the steps are positive integers)"
    )


def extra_steps(spec: str, steps_per_epoch: int, total_steps: int) -> list[int]:
    """The optimizer steps, besides the init and the epoch ends, after which a snapshot is written."""
    kind, nums = parse_schedule(spec)
    if kind == "log":
        steps = [2**k for k in range(steps_per_epoch.bit_length() + 1) if 2**k < steps_per_epoch]
    elif kind == "every":
        steps = list(range(nums[0], total_steps, nums[0]))
    elif kind == "steps":
        steps = [n for n in nums if n < total_steps]
    else:
        steps = []
    return [s for s in steps if s % steps_per_epoch]


def label(step: int, steps_per_epoch: int) -> str:
    """'step 64 · epoch 0.41': how a snapshot is named to people."""
    return f"step {step} · epoch {step / max(1, steps_per_epoch):.2f}".replace(".00", "")


def moments(
    spec: str, points: list[SnapshotPoint], planned: int | None = None, deep: bool = False
) -> list[SnapshotPoint]:
    """The snapshot points (``Run.snapshot_points``) to render activation maximization at.

    ``auto`` (default): the init; up to three step snapshots inside the first epoch, log-spaced (those
    nearest to E^(1/4), E^(1/2), E^(3/4) steps on a log scale, E = steps per epoch); the end of epoch 1;
    the middle epoch; the final epoch (of ``planned`` epochs, when given: then a run still training gets
    only the moments it has already reached); for a ``deep`` model (``layers.is_deep``) only the init, the
    middle and the final epoch, the steps inside epoch 1 left out (each moment of a ResNet costs minutes on a
    CPU). ``snapshots``: every point. Otherwise an epoch spec of ``parse_epochs`` (all | last | 0,5,10 |
    every:K), which selects epoch snapshots.
    """
    epochs = {p.epoch: p for p in points if p.epoch is not None}
    text = spec.strip().lower()
    if text == "snapshots":
        return list(points)
    if text != "auto":
        return [epochs[e] for e in parse_epochs(spec, sorted(epochs))]
    last = planned if planned is not None else (max(epochs) if epochs else 0)
    if deep:
        return [epochs[e] for e in sorted({0, last // 2, last}) if e in epochs]
    chosen = {id(epochs[e]): epochs[e] for e in sorted({0, min(1, last), last // 2, last}) if e in epochs}
    spe = epochs[1].step if 1 in epochs else None
    inside = [p for p in points if p.kind == "step" and spe and 0 < p.step < spe]
    for q in (0.25, 0.5, 0.75):
        if inside:
            target = math.log(spe) * q
            best = min(inside, key=lambda p: abs(math.log(p.step) - target))
            chosen[id(best)] = best
    return sorted(chosen.values(), key=lambda p: p.step)


def parse_epochs(spec: str, available: list[int]) -> list[int]:
    """'auto' | 'all' | 'last' | '0,5,10' | 'every:K' -> sorted epochs, each checked against ``available``."""
    spec = spec.strip().lower()
    if not available:
        raise ConfigError("the run has no complete epoch yet")
    last = available[-1]
    if spec == "auto":
        return sorted({0, last // 2, last})
    if spec == "all":
        return list(available)
    if spec == "last":
        return [last]
    if spec.startswith("every:"):
        try:
            k = int(spec[6:])
        except ValueError:
            raise ConfigError(f"bad --moments {spec!r}: expected every:K with an integer K") from None
        if k < 1:
            raise ConfigError(f"bad --moments {spec!r}: K must be at least 1")
        return sorted({*range(0, last + 1, k), last})
    try:
        wanted = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"bad --moments {spec!r}: use auto, all, last, every:K or a list like 0,5,10") from None
    missing = [e for e in wanted if e not in available]
    if missing:
        raise ConfigError(f"epoch(s) {', '.join(map(str, missing))} not in the run (available: 0..{last})")
    return wanted
