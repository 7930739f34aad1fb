"""Does ``torch.compile`` speed up activation maximization on this CPU? Side by side in one run: the
machine's limit (``machine.dense_peak``), one forward-and-backward step of a ResNet-18 to its input at
64 px, batch 32 (the inner step of a render), eager and compiled, and the compile time (inductor keeps a
cache: the first run on a machine pays the full compile, later runs less).

Usage: python benchmarks/compile_cpu.py    (under a minute on 2 cores with a warm cache; needs a C++
compiler for inductor, and says so when there is none)
"""

from __future__ import annotations

import time

import torch
from torchvision.models import resnet18

try:
    from machine import dense_peak
except ImportError:  # run from the repository root
    from benchmarks.machine import dense_peak

STEP_FLOPS = 3 * 2 * 32 * 1.82e9 * (64 / 224) ** 2  # forward + backward (x2), 2 FLOPs per multiply-add, batch 32


def _step_time(model: torch.nn.Module, x: torch.Tensor, repeats: int = 10) -> float:
    def step() -> None:
        model(x)[:, 0].mean().backward()

    step()
    t = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    peak = max(dense_peak().values())
    print(f"machine limit: {peak / 1e9:.0f} GFLOP/s (best dense fp32 kernel, measured now)")
    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval().requires_grad_(False)
    x = torch.randn(32, 3, 64, 64, requires_grad=True)
    eager = _step_time(model, x)
    t = time.perf_counter()
    try:
        compiled = torch.compile(model)
        compiled(x)[:, 0].mean().backward()
    except Exception as e:  # no compiler, or inductor cannot build here: say which path ran
        print(f"torch.compile failed ({type(e).__name__}): eager only")
        return
    build = time.perf_counter() - t
    fast = _step_time(compiled, x)
    for name, s in (("eager", eager), ("compiled", fast)):
        print(f"{name:<9} step {s * 1e3:6.1f} ms = {STEP_FLOPS / s / peak:.2f} of the limit")
    print(f"compile: {build:.1f} s; compiled/eager step time {fast / eager:.2f}")


if __name__ == "__main__":
    main()
