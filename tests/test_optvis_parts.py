"""featviz.optvis's parts on tiny models: objectives and their parser, parametrizations, transforms."""

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
    compose,
    direction,
    diversity,
    fourier,
    jitter,
    layer_objective,
    maximize,
    neuron,
    pad,
    parse,
    pixel,
    random_rotate,
    random_scale,
    standard,
)
from featviz.optvis.rng import ElementRandom, element_seed
from featviz.optvis.transforms import RandomAffine
from optvis_models import seq_model


# ------------------------------------------------------------------------------------- objectives
def _acts() -> dict[str, torch.Tensor]:
    a = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)  # [B=2, C=3, 2, 2]
    return {"l": a, "fc": torch.tensor([[1.0, -2.0], [3.0, 4.0]])}


def test_objective_arithmetic_on_fixed_activations() -> None:
    acts = _acts()
    a, b = channel("l", 1), channel("l", 2)
    assert torch.allclose(a(acts), torch.tensor([5.5, 17.5]))  # mean of 4..7 and 16..19
    assert torch.allclose(b(acts), torch.tensor([9.5, 21.5]))
    assert torch.allclose((a + b)(acts), torch.tensor([15.0, 39.0]))
    assert torch.allclose((a - b)(acts), torch.tensor([-4.0, -4.0]))
    assert torch.allclose((0.8 * a)(acts), 0.8 * a(acts))
    assert torch.allclose((a * 0.5)(acts), 0.5 * a(acts))
    assert torch.allclose((-a)(acts), -a(acts))
    assert torch.allclose((a / 2)(acts), a(acts) / 2)
    assert torch.allclose((a * b)(acts), a(acts) * b(acts))
    assert torch.allclose(sum([a, b])(acts), (a + b)(acts))
    assert (0.8 * a - 0.2 * b).layers == {"l"}
    assert (a + channel("fc", 0)).layers == {"l", "fc"}
    assert torch.allclose(channel("fc", 1)(acts), torch.tensor([-2.0, 4.0]))  # [B, C] layers work too


def test_objective_constructors() -> None:
    acts = _acts()
    per = channel("l", torch.tensor([2, 0]))  # batched: element 0 -> channel 2, element 1 -> channel 0
    assert torch.allclose(per(acts), torch.tensor([9.5, 13.5]))
    assert torch.allclose(neuron("l", 1)(acts), torch.tensor([7.0, 19.0]))  # centre of 2x2 = (1, 1)
    assert torch.allclose(neuron("l", 1, x=0, y=1)(acts), torch.tensor([6.0, 18.0]))
    assert torch.allclose(layer_objective("l")(acts), acts["l"].pow(2).mean((1, 2, 3)))
    vec = torch.tensor([1.0, 0.0, -1.0])
    expect = (acts["l"][:, 0] - acts["l"][:, 2]).mean((1, 2))
    assert torch.allclose(direction("l", vec)(acts), expect)
    cos = direction("l", vec, cosine=True)(acts)
    assert cos.shape == (2,) and (cos.abs() <= 1).all()
    div = diversity("l")(acts)
    assert div.shape == (2,) and (div <= 0).all() and (div >= -1).all()
    assert torch.equal(diversity("l")({"l": acts["l"][:1]}), torch.zeros(1))


def test_batched_channel_gradient_matches_autograd_and_keeps_memory_format() -> None:
    """The batched channel objective's hand-written backward equals autograd's indexing path (float64
    gradcheck) and returns the gradient in the activation's memory format (no transpose copy)."""
    idx = torch.tensor([2, 0, 2])
    act = torch.randn(3, 4, 5, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    act.requires_grad_(True)
    obj = channel("l", idx)
    assert torch.autograd.gradcheck(lambda a: obj({"l": a}), (act,))
    (g,) = torch.autograd.grad(obj({"l": act}).sum(), act)
    ref = torch.zeros_like(act)
    ref[torch.arange(3), idx] = 1.0 / 30
    assert torch.equal(g, ref)
    assert g.is_contiguous(memory_format=torch.channels_last)


def test_objective_errors() -> None:
    acts = _acts()
    with pytest.raises(ConfigError, match="out of range"):
        channel("l", 3)(acts)
    with pytest.raises(ConfigError, match="out of range"):
        channel("l", torch.tensor([0, 5]))(acts)
    with pytest.raises(ConfigError):
        channel("l", -1)
    with pytest.raises(ConfigError, match="outside"):
        neuron("l", 0, x=2)(acts)
    with pytest.raises(ConfigError):
        direction("l", torch.ones(4))(acts)
    with pytest.raises(ConfigError):
        channel("l", 0) / 0
    with pytest.raises(ConfigError, match="layer names are strings"):
        channel(0, 1)
    with pytest.raises(ConfigError, match="channel index 1000000000000000000000000000000 is out of range"):
        channel("l", 10**30)
    assert Objective(lambda a: a["conv"].mean((1, 2, 3)), "conv").layers == {"conv"}  # one name, not c, o, n, v


def test_objectives_that_cannot_be_optimized_are_one_line() -> None:
    model = seq_model()
    cases = [
        (Objective(lambda a: {"v": a["2"]}, ["2"], "dict"), "objective dict returned dict; it must return a tensor"),
        (Objective(lambda a: a["0"].mean((1, 2, 3)), ["2"], "sly"), "layer '0' was not recorded: list every layer"),
        (Objective(lambda a: torch.zeros(1), ["2"], "const"), "objective const does not depend on the images"),
        (Objective(lambda a: a["2"].mean(1), ["2"], "map"), r"gave shape \(1, 12, 12\), expected \(1,\)"),
    ]
    for obj, message in cases:
        with pytest.raises(ConfigError, match=message):
            maximize(model, obj, steps=2, size=16)
    assert hook_count(model) == 0


def test_diversity_for_one_image_and_for_vector_layers() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    one = maximize(model, channel("1", 0) + diversity("1"), steps=2, size=12)  # batch 1: diversity is 0
    plain = maximize(model, channel("1", 0), steps=2, size=12)
    assert torch.allclose(one.images, plain.images)
    two = maximize(model, diversity("3"), batch=2, steps=2, size=12)  # [B, C] outputs: a Gram matrix of 1 pixel
    assert two.values.shape == (2,) and torch.isfinite(two.values).all()


def test_parse_forms() -> None:
    acts = _acts()
    assert torch.allclose(parse("l:1")(acts), channel("l", 1)(acts))
    assert torch.allclose(parse(" l:1@0,1 ")(acts), neuron("l", 1, 0, 1)(acts))
    assert torch.allclose(parse("l")(acts), layer_objective("l")(acts))
    assert torch.allclose(parse("l:1 - 0.5*l:2")(acts), (channel("l", 1) - 0.5 * channel("l", 2))(acts))
    assert torch.allclose(parse("0.8*l:1+l:2*.2")(acts), (0.8 * channel("l", 1) + 0.2 * channel("l", 2))(acts))
    assert torch.allclose(parse("-(l:1 + l:2) / 2")(acts), (-(channel("l", 1) + channel("l", 2)) / 2)(acts))
    assert parse("features.conv3:7").layers == {"features.conv3"}
    assert parse("2:5").layers == {"2"}  # nn.Sequential child names are digits


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "l:",
        "l:x",
        "l:1@2",
        "l:1@2,",
        ":3",
        "l:1 +",
        "3",
        "l:1 * * 2",
        "__import__('os')",
        "l:1; l:2",
        "l..a:1",
        "l:1 / l:2",
        "l:-1",
        "(l:1",
    ],
)
def test_parse_rejects_garbage(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(bad)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------- parametrizations
@pytest.mark.parametrize("make", [pixel, fourier])
def test_param_shapes_range_and_seeding(make) -> None:
    params, image_fn = make(3, 3, (12, 10), seed=5)
    img = image_fn()
    assert img.shape == (3, 3, 12, 10) and (img > 0).all() and (img < 1).all()
    assert all(p.requires_grad and p.is_leaf for p in params)
    again = make(3, 3, (12, 10), seed=5)[1]()
    assert torch.equal(img, again)
    one = make(1, 3, (12, 10), seed=[element_seed(5, 2)])[1]()  # element 2 alone: same numbers
    assert torch.allclose(one[0], img[2], atol=1e-6)
    img.sum().backward()
    assert params[0].grad is not None and params[0].grad.abs().sum() > 0


def test_color_matrix() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.rand(50, 1, 8, 8, generator=g)
    mixed = 0.5 * base + 0.1 * torch.rand(50, 1, 8, 8, generator=g)
    imgs = torch.cat([base, mixed, torch.rand(50, 1, 8, 8, generator=g)], 1)
    m = color_matrix(imgs)
    assert m.shape == (3, 3) and torch.allclose(m, m.T, atol=1e-6)
    assert torch.isclose(m.norm(dim=0).max(), torch.tensor(1.0))
    px = imgs.transpose(0, 1).reshape(3, -1).double()
    cov = torch.cov(px)
    k = cov.diagonal().max()  # max column norm^2 of the root
    assert torch.allclose((m.double() @ m.double()), cov / k, atol=1e-4)
    assert torch.allclose(color_matrix((imgs * 255).to(torch.uint8)), m, atol=2e-2)
    assert torch.equal(color_matrix(torch.rand(4, 1, 5, 5)), torch.ones(1, 1))
    with pytest.raises(ConfigError):
        fourier(1, 3, 8, color=torch.eye(2))


# ------------------------------------------------------------------------------- transforms
def test_transforms_shapes_and_identity() -> None:
    x = torch.rand(4, 3, 16, 16)
    keep = x.clone()
    assert torch.allclose(RandomAffine()(x), x, atol=1e-6)
    assert pad(2)(x).shape == (4, 3, 20, 20)
    assert pad(2, mode="constant")(x)[0, 0, 0, 0] == 0.5
    for t in (
        jitter(2, rng=0),
        random_scale(0.9, 1.1, rng=0),
        random_rotate(10, rng=0),
        standard(16, rng=0),
        RandomAffine(pad=2, rng=0),
        RandomAffine(pad=2, mode="constant", translate=3, rng=0),
    ):
        y = t(x)
        assert y.shape[:2] == (4, 3) and y.min() >= -1e-6 and y.max() <= 1 + 1e-6
    assert compose(pad(1), jitter(1, rng=1))(x).shape == (4, 3, 18, 18)
    assert torch.equal(x, keep)  # inputs are never modified
    with pytest.raises(ConfigError):
        pad(1, mode="wrap")


def test_element_random_is_independent_of_batch() -> None:
    seeds = [element_seed(0, k, 1) for k in range(5)]
    x = torch.rand(5, 3, 12, 12)
    full = standard(12, ElementRandom(seeds))
    alone = standard(12, ElementRandom(seeds[3:4]))
    for _ in range(3):  # several calls: the streams stay aligned
        a, b = full(x), alone(x[3:4])
        assert torch.allclose(a[3:4], b, atol=1e-6)
    assert not torch.allclose(a[0], a[1])  # each element gets its own draw
