"""featviz.hooks: a layer name that is not in the model is a one-line error that says what to pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featviz.errors import ConfigError
from featviz.hooks import resolve_layers


def test_a_compiled_model_s_layer_names_the_module_to_pass() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert resolve_layers(model, ["0"]) == {"0": model[0]}
    with pytest.raises(ConfigError, match=r"^unknown layer 'conv'; valid layers: 0, 1$"):
        resolve_layers(model, ["conv"])
    compiled = torch.compile(model)  # wrapped, not compiled until it runs
    with pytest.raises(ConfigError, match=r"layer '0' is inside a torch.compile wrapper: pass model._orig_mod"):
        resolve_layers(compiled, ["0"])
    assert resolve_layers(compiled._orig_mod, ["0"]) == {"0": model[0]}
