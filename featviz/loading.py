"""A run's model at one snapshot: the one place a stage gets a network with a run's weights."""

from __future__ import annotations

import torch

from featviz.config import ModelConfig, from_dict
from featviz.model import build_model
from featviz.store import Run


def load_model_at(run: Run, epoch: int, device: torch.device,
                  state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """The run's CNN with the weights of ``epoch`` (``state``, if the caller has loaded them), eval mode."""
    model = build_model(from_dict(ModelConfig, run.meta["configs"]["model"]))
    model.load_state_dict(run.load_snapshot(epoch) if state is None else state)
    return model.to(device).eval()
