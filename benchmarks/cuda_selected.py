"""CUDA check of the channel-selecting render path: SelectedConv equals the full conv's channel on the
GPU (values and input gradients), and a render with and without it agrees. Usage: python benchmarks/cuda_selected.py"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featviz.config import ModelConfig  # noqa: E402
from featviz.model import build_model  # noqa: E402
from featviz.optvis import maximize_channels  # noqa: E402
from featviz.optvis.fastpath import SelectedConv  # noqa: E402


def main() -> None:  # noqa: D103
    dev = torch.device("cuda")
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 64, 3, padding=1).to(dev)
    idx = torch.arange(64, device=dev)
    x = torch.randn(64, 32, 32, 32, device=dev, requires_grad=True)
    ref = conv(x)[idx, idx].unsqueeze(1)
    out = SelectedConv(conv, idx)(x)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    (g_out,) = torch.autograd.grad(SelectedConv(conv, idx)(x).square().sum(), x)
    print(
        f"SelectedConv on {torch.cuda.get_device_name(dev)}: max |out - ref| {(out - ref).abs().max():.2e}, "
        f"max |grad - ref| {(g_out - g_ref).abs().max():.2e} (ref max {g_ref.abs().max():.2e})"
    )
    model = build_model(ModelConfig(), seed=0).eval().to(dev)
    a = maximize_channels(model, "features.bn3", size=64, steps=64)
    b = maximize_channels(model, "features.bn3", size=64, steps=64, optimize=False)
    print(
        f"render with vs without selection: max |values| diff {(a.values - b.values).abs().max():.2e}, "
        f"mean |px| diff {(a.images - b.images).abs().mean():.2e}, device {a.settings['resolved']['device']}"
    )


if __name__ == "__main__":
    main()
