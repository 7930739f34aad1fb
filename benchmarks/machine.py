"""The machine's limit: the best dense fp32 throughput measured here, now.

``dense_peak()`` times a 2048 x 2048 matmul and a few large convolutions with the process's own
thread settings and returns the best FLOP/s of them (2 FLOPs per multiply-add). Compute floors in the
benchmarks are FLOPs divided by this number, so a ratio of 1.0 means "as fast as this machine's best
dense kernel", not "as fast as the same convolutions".
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def _best_rate(fn, flops: float, repeats: int = 20) -> float:
    """``flops`` over the fastest of ``repeats`` calls after 3 warm-ups (allocation, kernel choice): as
    many as the renders' own timings get, so that noise cannot lower the limit and flatter the ratios."""
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return flops / best


@torch.no_grad()
def dense_peak(device: str = "cpu") -> dict[str, float]:
    """FLOP/s of each probe and ``best``: a 2048^2 matmul and 3x3 convs of 64..256 channels (NCHW and NHWC)."""
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out: dict[str, float] = {}
    a, b = torch.randn(2048, 2048, device=dev), torch.randn(2048, 2048, device=dev)
    out["matmul 2048"] = _best_rate(lambda: (a @ b, sync()), 2 * 2048**3)
    for c, hw, n in ((64, 32, 32), (128, 16, 64), (256, 8, 128)):
        w = torch.randn(c, c, 3, 3, device=dev)
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(n, c, hw, hw, device=dev).contiguous(memory_format=fmt)
            wf = w.contiguous(memory_format=fmt)
            flops = 2 * n * c * c * 9 * hw * hw
            name = f"conv3x3 {c}ch {hw}px{' NHWC' if fmt is torch.channels_last else ''}"
            out[name] = _best_rate(lambda: (F.conv2d(x, wf, padding=1), sync()), flops)
    out["best"] = max(out.values())
    return out
