"""Activation maximization for any ``nn.Module`` (layers named by PyTorch dotted names).

``objectives`` (what to maximize) · ``param`` (how images are parametrized) · ``transforms`` (random
robustness transforms) · ``settings`` (``RenderSettings``) · ``actmax`` (``maximize``, ``maximize_channels``)
· ``fastpath`` (``prepare_fast``: the render-only model copy) · ``quality`` (standardized activation,
specificity). Nothing here reads or writes files.
"""

from featviz.optvis.actmax import RenderResult, StepCallback, layer_channels, maximize, maximize_channels
from featviz.optvis.fastpath import prepare_fast
from featviz.optvis.objectives import (
    Objective,
    channel,
    direction,
    diversity,
    layer_objective,
    neuron,
    parse,
)
from featviz.optvis.param import color_matrix, fourier, pixel
from featviz.optvis.quality import noise_images, specificity, standardized_activation
from featviz.optvis.rng import ElementRandom, element_seed
from featviz.optvis.settings import RenderSettings
from featviz.optvis.transforms import RandomAffine, compose, jitter, pad, random_rotate, random_scale, standard

__all__ = [
    "RenderSettings",
    "RenderResult",
    "StepCallback",
    "maximize",
    "maximize_channels",
    "layer_channels",
    "prepare_fast",
    "Objective",
    "channel",
    "neuron",
    "layer_objective",
    "direction",
    "diversity",
    "parse",
    "pixel",
    "fourier",
    "color_matrix",
    "pad",
    "jitter",
    "random_scale",
    "random_rotate",
    "compose",
    "standard",
    "RandomAffine",
    "ElementRandom",
    "element_seed",
    "standardized_activation",
    "specificity",
    "noise_images",
]
