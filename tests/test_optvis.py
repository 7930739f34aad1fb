"""featviz.optvis on tiny models: render, quality, settings (the parts: test_optvis_parts.py; the fast path:
test_optvis_fastpath.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featviz.errors import ConfigError
from featviz.hooks import hook_count
from featviz.optvis import (
    Objective,
    channel,
    color_matrix,
    jitter,
    layer_channels,
    maximize,
    maximize_channels,
    noise_images,
    pad,
    random_rotate,
    random_scale,
    specificity,
    standardized_activation,
)
from featviz.optvis.quality import channel_activations
from featviz.optvis.transforms import RandomAffine
from optvis_models import seq_model, tiny_cnn


# ----------------------------------------------------------------------------------- render
def _initial_and_final(model: nn.Module, obj: Objective, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    r0 = maximize(model, obj, **{**kw, "steps": 1, "lr": 1e-12})  # the initial image's value
    r = maximize(model, obj, **kw)
    return r0.values, r.values


@pytest.mark.parametrize("param", ["pixel", "fourier"])
@pytest.mark.parametrize("transforms", ["none", "standard"])
def test_target_activation_rises(param: str, transforms: str) -> None:
    for model, layer in ((seq_model(), "2"), (tiny_cnn(), "features.conv2")):
        v0, v1 = _initial_and_final(
            model, channel(layer, 1), param=param, transforms=transforms, size=16, steps=40, batch=2
        )
        assert (v1 > v0 + 0.05).all(), (param, transforms, layer, v0, v1)


def test_render_result_contents() -> None:
    seen = []
    r = maximize(seq_model(), "2:3", size=12, steps=20, trace_every=8, progress=lambda s, n, v: seen.append(s))
    assert r.images.shape == (1, 3, 12, 12) and r.images.device.type == "cpu"
    assert r.trace.shape == (4, 1) and r.trace_steps == [0, 8, 16, 19] and seen == [0, 8, 16, 19]
    assert r.settings["objective"] == "2:3" and r.settings["steps"] == 20 and r.settings["lr"] == 0.05
    assert r.keys == [0]


@pytest.mark.parametrize("make, layer", [(seq_model, "2"), (tiny_cnn, "features.conv2")])
def test_batched_channels_match_one_at_a_time(make, layer: str) -> None:
    model = make()
    kw = dict(size=16, steps=12, seed=3)
    batched = maximize_channels(model, layer, chunk=3, **kw)  # chunking does not matter either
    assert batched.images.shape[0] == 8 and batched.keys == list(range(8))
    for c in (0, 4, 7):
        single = maximize(model, channel(layer, c), keys=[c], **kw)
        assert torch.allclose(single.images, batched.images[c : c + 1], atol=1e-4)
        assert torch.allclose(single.values, batched.values[c : c + 1], atol=1e-4)
    assert batched.settings["layer"] == layer and batched.settings["steps"] == 12
    # the recorded value is the channel-mean activation on the final, untransformed image
    with torch.no_grad():
        act = model[:3](batched.images) if isinstance(model, nn.Sequential) and layer == "2" else None
    if act is not None:
        assert torch.allclose(act.mean((2, 3)).diagonal(), batched.values, atol=1e-5)


@pytest.mark.parametrize("layer", ["features.pool1", "features.bn2"])
def test_recorded_activation_is_the_channel_mean_on_the_returned_image(layer: str) -> None:
    """A grayscale CNN with BatchNorm and max-pooling (folded and reordered by the fast path), a layer in
    the middle of the network, and a training normalization: the value recorded for channel c equals
    the mean of channel c of ``layer``'s output when the ORIGINAL model (eval mode) runs on the returned
    image, normalized with the same mean/std. Recomputed with a plain forward hook, not featviz.hooks."""
    model = tiny_cnn(in_channels=1)
    mean, std = 0.4, 0.2
    chans = [0, 2, 3] if layer == "features.pool1" else [1, 5, 6, 7]
    r = maximize_channels(model, layer, chans, image_channels=1, size=16, steps=10, mean=[mean], std=[std])
    assert r.images.shape == (len(chans), 1, 16, 16) and r.keys == chans

    out = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: out.update(act=o))
    try:
        with torch.no_grad():
            model((r.images - mean) / std)
    finally:
        handle.remove()
    assert not model.training
    want = out["act"][torch.arange(len(chans)), torch.tensor(chans)].mean((1, 2))
    assert torch.allclose(r.values, want, atol=1e-5), (r.values, want)
    # the values differ between channels, so a value recorded for the wrong channel would be caught
    assert len({round(v, 4) for v in want.tolist()}) == len(chans)


def test_unknown_layer_and_bad_channel() -> None:
    model = tiny_cnn()
    with pytest.raises(ConfigError, match="valid layers: .*features.conv1"):
        maximize(model, channel("features.nope", 0), steps=2, size=8)
    with pytest.raises(ConfigError, match="out of range"):
        maximize(model, channel("features.conv2", 8), steps=2, size=8)
    with pytest.raises(ConfigError, match="out of range"):
        maximize_channels(model, "features.conv1", [0, 4], steps=2, size=8)
    with pytest.raises(ConfigError, match="valid layers"):
        maximize_channels(model, "conv9", steps=2, size=8)
    assert hook_count(model) == 0


@pytest.mark.parametrize("optimize", [True, False])
def test_images_the_model_cannot_take_are_one_line(optimize: bool) -> None:
    """The same message from render and maximize_channels, before any optimization (it was a raw torch error
    from whichever layer met the image first: on the fast path, the one-channel conv's batched matmul)."""
    model = tiny_cnn()
    for call in (
        lambda: maximize(model, "features.conv2:1", steps=2, size=8, image_channels=1, optimize=optimize),
        lambda: maximize_channels(model, "features.conv2", [0], steps=2, size=8, image_channels=1),
    ):
        with pytest.raises(ConfigError, match=r"model cannot run on images of shape \[1, 1, 8, 8\]: .*3 channels"):
            call()
    assert hook_count(model) == 0 and all(p.requires_grad for p in model.parameters())


def test_model_state_restored_and_hooks_removed_after_errors() -> None:
    model = tiny_cnn()
    model.train()
    model.features.bn1.eval()  # mixed modes are restored module by module
    model.features.conv1.weight.requires_grad_(False)
    before = {n: p.clone() for n, p in model.state_dict().items()}

    def check() -> None:
        assert hook_count(model) == 0
        assert model.training and not model.features.bn1.training and model.features.bn2.training
        assert not model.features.conv1.weight.requires_grad and model.features.conv2.weight.requires_grad

    for optimize in (True, False):
        maximize(model, "features.conv2:1", steps=3, size=8, optimize=optimize)
        check()

        def boom(acts):
            raise RuntimeError("objective failed")

        with pytest.raises(RuntimeError, match="objective failed"):
            maximize(model, Objective(boom, ["features.conv2"]), steps=3, size=8, optimize=optimize)
        check()

        def bad_hook(*_):
            raise RuntimeError("hook failed")

        h = model.features.relu1.register_forward_hook(bad_hook)
        with pytest.raises((RuntimeError, ConfigError), match="hook failed"):  # ConfigError: caught by the probe
            maximize(model, "features.conv2:1", steps=3, size=8, optimize=optimize)
        h.remove()
        check()
    after = model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)  # weights and BN statistics untouched


def test_one_channel_model() -> None:
    model = tiny_cnn(in_channels=1)
    color = color_matrix(torch.randint(0, 255, (4, 1, 8, 8), dtype=torch.uint8))
    v0, v1 = _initial_and_final(
        model, channel("features.conv2", 0), image_channels=1, size=16, steps=30, color=color, mean=[0.5], std=[0.25]
    )
    assert (v1 > v0).all()
    r = maximize_channels(model, "features.conv1", [0, 2], image_channels=1, size=12, steps=3)
    assert r.images.shape == (2, 1, 12, 12) and r.keys == [0, 2]
    with pytest.raises(ConfigError, match="1, 3, 12, 12"):  # 3 colour channels into a 1-channel model
        maximize_channels(model, "features.conv1", size=12, steps=2)
    assert maximize_channels(seq_model(), "0", channels=[1], size=12, steps=2).keys == [1]  # channels = indices


# ---------------------------------------------------------------------------------- quality
def test_quality_measures() -> None:
    model = seq_model()
    r = maximize_channels(model, "2", size=16, steps=30)
    noise = noise_images(16, 3, 16, seed=1)
    z = standardized_activation(model, "2", r.images, None, None, noise)
    assert z.shape == (8,) and (z > 0).all()
    s = specificity(model, "2", r.images, None, None, noise)
    assert 0.5 <= s <= 1.0
    assert 0.0 <= specificity(model, "2", r.images, None, None, noise, by="image") <= 1.0
    with pytest.raises(ConfigError):
        specificity(model, "2", r.images, None, None, noise, by="nope")
    assert noise_images(2, 1, 8, kind="uniform").shape == (2, 1, 8, 8)
    # uint8 images are 0..255 and get divided by 255 (they were once taken as 0..255 floats: z in the thousands)
    as_bytes = (r.images * 255).round().to(torch.uint8)
    assert torch.allclose(channel_activations(model, "2", as_bytes), channel_activations(model, "2", as_bytes / 255))
    with pytest.raises(ConfigError, match="floats in \\[0, 1\\] or uint8, got int64"):
        channel_activations(model, "2", as_bytes.long())


# --------------------------------------------------------------------------------- settings
def test_render_settings_are_checked_recorded_and_overridable() -> None:
    import dataclasses
    import json

    from featviz.optvis import RenderSettings

    base = RenderSettings(size=12, steps=4, mean=[0.5], std=(0.25,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.steps = 5
    r = maximize(seq_model(), "2:1", base, steps=3, trace_every=2)
    assert r.settings["steps"] == 3 and r.settings["size"] == 12 and r.settings["mean"] == [0.5]
    assert r.settings["resolved"]["device"] == "cpu" and r.settings["resolved"]["transforms"]["mode"] == "reflect"
    assert json.loads(json.dumps(r.settings)) == r.settings
    fields = [f.name for f in dataclasses.fields(RenderSettings)]
    assert RenderSettings(**{k: r.settings[k] for k in fields}) == dataclasses.replace(base, steps=3, trace_every=2)
    again = maximize(seq_model(), "2:1", RenderSettings(size=12, steps=3, mean=0.5, std=0.25, trace_every=2))
    assert torch.equal(again.images, r.images)  # the settings object and keywords are the same thing


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(image_channels=[0, 1]), "image_channels must be an integer"),
        (dict(image_channels=True), "image_channels must be an integer"),
        (dict(size=1), "size must be >= 2"),
        (dict(steps=2.5), "steps must be an integer"),
        (dict(lr=0), "lr must be positive"),
        (dict(param="nope"), "unknown param"),
        (dict(transforms="nope"), "unknown transforms"),
        (dict(mean=[0.1, 0.2]), "mean/std need 1 or 3 values"),
        (dict(std=[0.0]), "std must be positive"),
        (dict(color=torch.eye(2)), r"colour matrix must be \[3, 3\]"),
        (dict(optimize="yes"), "optimize must be"),
        (dict(device="nowhere"), "unknown device"),
    ],
)
def test_render_settings_reject_bad_values(kw: dict, match: str) -> None:
    from featviz.optvis import RenderSettings

    with pytest.raises(ConfigError, match=match) as err:
        RenderSettings(**kw)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=match):
        maximize(seq_model(), "2:1", **kw)


def test_counts_and_indices_are_not_confused() -> None:
    model = seq_model()
    with pytest.raises(ConfigError, match="unknown keyword 'channels'.*image_channels"):
        maximize(model, "2:1", channels=3, steps=2, size=8)
    with pytest.raises(ConfigError, match="unknown keyword 'stepz'"):
        maximize(model, "2:1", stepz=2)
    with pytest.raises(ConfigError, match="channel indices"):
        maximize_channels(model, "2", 3, steps=2, size=8)  # an int where indices are expected
    with pytest.raises(ConfigError, match="image_channels must be an integer"):
        maximize_channels(model, "2", image_channels=[0, 1], steps=2, size=8)
    with pytest.raises(ConfigError, match="maximize_channels sets 'batch' itself"):
        maximize_channels(model, "2", batch=2, steps=2, size=8)
    r = maximize_channels(model, "2", torch.tensor([3, 1]), steps=2, size=8)
    assert r.keys == [3, 1] and r.settings["kind"] == "channels" and r.settings["batch"] == 2


def test_color_matrix_or_none_for_run_json() -> None:
    from featviz.optvis.param import color_matrix, color_matrix_or_none

    assert color_matrix_or_none(torch.full((4, 3, 5, 5), 128, dtype=torch.uint8)) is None  # no colour variance
    imgs = torch.randint(0, 256, (12, 3, 5, 5), dtype=torch.uint8)
    assert color_matrix_or_none(imgs, max_images=4) == color_matrix(imgs[::3]).tolist()  # an even subsample


def test_seeds_sizes_and_counts_out_of_range_are_one_line() -> None:
    """Seeds beyond 64 bits would collide with smaller ones (the element seeds hash them modulo 2**64)."""
    model = seq_model()
    with pytest.raises(ConfigError, match="seed must be <= 9223372036854775807"):
        maximize(model, "2:1", steps=1, size=12, seed=5 + 2**64)
    with pytest.raises(ConfigError, match="seed must be an integer in"):
        noise_images(2, 3, 8, seed=2**70)
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="noise_images needs n >= 1"):
            noise_images(bad, 3, 8)
    for size, message in (
        (-4, "at least 2x2 px, got -4x-4"),
        (16.5, "an integer or .height, width. integers"),
        ((16, 16, 3), "an integer or .height, width. integers"),
    ):
        with pytest.raises(ConfigError, match=message):
            layer_channels(model, "2", size=size)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: pad(1.5), "pad must be a whole number of pixels >= 0, got 1.5"),
        (lambda: random_rotate("5"), "degrees must be a finite number, got '5'"),
        (lambda: RandomAffine(scale=1.0), r"scale is a \(lo, hi\) range, got 1.0"),
        (lambda: jitter(float("nan")), "translate must be a finite number, got nan"),
        (lambda: random_scale(1, float("inf")), "scale must be a finite number, got inf"),
    ],
)
def test_transform_settings_are_checked_when_built(make, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_render_inside_no_grad_and_inference_mode() -> None:
    """Called from an evaluation block (a validation hook, a notebook cell under no_grad): the same images."""
    model = seq_model()
    plain = maximize(model, "2:1", steps=3, size=12)
    with torch.no_grad():
        quiet = maximize(model, "2:1", steps=3, size=12)
        assert not torch.is_grad_enabled()  # the caller's mode is back
    with torch.inference_mode():
        frozen_mode = maximize_channels(model, "2", [1], steps=3, size=12)
    assert torch.equal(plain.images, quiet.images)
    assert torch.equal(maximize_channels(model, "2", [1], steps=3, size=12).images, frozen_mode.images)
