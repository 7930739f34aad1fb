"""Tiny models the optvis tests optimize against."""

from __future__ import annotations

import torch
from torch import nn

from featviz.config import ModelConfig
from featviz.model import build_model

TINY_CFG = ModelConfig(widths=(4, 8), kernels=(5, 3), strides=(1, 1), pools=(True, False))


def seq_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()


def tiny_cnn(in_channels: int = 3) -> nn.Module:
    from dataclasses import replace

    model = build_model(replace(TINY_CFG, in_channels=in_channels), seed=0)
    with torch.no_grad():  # non-trivial BN statistics, so folding BN is actually tested
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()
