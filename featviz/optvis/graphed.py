"""The optimization loop with its step captured once as a CUDA graph and then replayed.

At the sizes featviz renders (a few hundred kernels per step on a 64-image batch) a GPU spends most
of a step launching kernels; replaying a captured graph launches them all at once. Contract:
``run_steps(step, steps, on_step, sources, capture)`` calls ``step()`` (one whole optimizer step:
zero the gradients, forward, backward, update; returns the objective values) for the first
``WARMUP`` steps as it is, then hands ``step`` to ``capture`` once and calls the replay it returns
for every remaining step. Per-step randomness must come from ``Replayable`` sources: before each
replay they copy the numbers an eager step would have drawn into the buffers the graph reads, so
the graphed loop computes exactly what the eager loop computes. If capturing fails, the remaining
steps run eagerly and the returned note says why.

``cuda_capture`` is the capture for CUDA; tests use ``rerun`` (the replay calls ``step`` again,
with the same static buffers), which exercises everything but the graph on a CPU.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Sequence

import torch
from torch import Tensor

from featviz.optvis.rng import RandomSource

__all__ = ["Replayable", "run_steps", "cuda_capture", "rerun", "CAPTURES", "Capture", "WARMUP"]

WARMUP = 3  # eager steps before the capture (lazy initialization: cuDNN/cuFFT plans, optimizer state)

Step = Callable[[], Tensor]
Capture = Callable[[Step], Step]  # a step -> its replay (which returns the values, like the step)


class Replayable:
    """A ``RandomSource`` whose numbers live in fixed buffers that a captured graph can read.

    ``draw()`` mode (eager steps): each ``uniform`` call draws from ``source`` into its own buffer
    (the i-th call of a step uses buffer i) and returns the buffer. ``read()`` mode (the capture):
    returns the buffers without drawing. ``refill()`` (before a replay): draws, call by call, what
    a step in ``draw`` mode would have drawn, and rewinds to buffer 0.
    """

    def __init__(self, source: RandomSource) -> None:
        self.source = source
        self.buffers: list[Tensor] = []
        self._i, self._draw = 0, True

    def draw(self) -> None:
        self._i, self._draw = 0, True

    def read(self) -> None:
        self._i, self._draw = 0, False

    def uniform(self, batch: int, k: int, device: torch.device) -> Tensor:  # noqa: D102
        if self._draw:
            u = self.source.uniform(batch, k, device)
            if self._i == len(self.buffers):
                self.buffers.append(torch.empty_like(u))
            buf = self.buffers[self._i]
            if buf.shape != u.shape:
                raise RuntimeError(
                    f"random draw {self._i} changed shape between steps: {tuple(buf.shape)} -> {tuple(u.shape)}"
                )
            buf.copy_(u)
        else:
            if self._i >= len(self.buffers):
                raise RuntimeError("a captured step drew more random numbers than the eager steps did")
            buf = self.buffers[self._i]
        self._i += 1
        return buf

    def refill(self) -> None:
        self._i = 0
        for buf in self.buffers:
            buf.copy_(self.source.uniform(buf.shape[0], buf.shape[1], buf.device))


def cuda_capture(step: Step) -> Step:
    """Capture one call of ``step`` as a CUDA graph and return its replay. Nothing runs during the
    capture; each replay runs the step and returns the graph's output buffer (rewritten every time)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        values = step()

    def replay() -> Tensor:
        graph.replay()
        return values

    return replay


def rerun(step: Step) -> Step:
    """A stand-in for ``cuda_capture`` on any device: the replay is the step itself, run again with
    the sources in replay mode (for tests on machines without CUDA)."""
    return step


def run_steps(
    step: Step, steps: int, on_step: Callable[[int, Tensor], None], sources: Sequence[Replayable], capture: Capture
) -> str:
    """Run ``steps`` optimizer steps (see the module docstring); ``on_step(i, values)`` after each.

    Returns how the steps after the warm-up ran: ``"graph"``, or ``"eager: <why>"`` when capturing
    failed (the error's first line) or there were no steps left to capture.
    """
    side = torch.cuda.Stream() if capture is cuda_capture else None
    if side is not None:  # warm-up on a side stream, as CUDA graph capture requires
        side.wait_stream(torch.cuda.current_stream())
    done = 0
    with torch.cuda.stream(side) if side is not None else nullcontext():
        for i in range(min(WARMUP, steps)):
            for src in sources:
                src.draw()
            on_step(i, step())
            done += 1
    if side is not None:
        torch.cuda.current_stream().wait_stream(side)
    if done == steps:
        return "eager: too few steps to capture"
    for src in sources:
        src.read()
    try:
        replay = capture(step)
    except Exception as e:  # noqa: BLE001 - any failure to capture falls back to the eager loop
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        for i in range(done, steps):
            for src in sources:
                src.draw()
            on_step(i, step())
        return f"eager: capture failed ({type(e).__name__}: {first[:160]})"
    for i in range(done, steps):
        for src in sources:
            src.refill()
        on_step(i, replay())
    return "graph"


CAPTURES: dict[str, Capture] = {"cuda": cuda_capture}  # device type -> how its steps are captured
