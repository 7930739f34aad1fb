"""Linear probes and class selectivity against known answers (definitions: docs/metrics.md)."""

from __future__ import annotations

import math

import pytest
import torch

from featviz.probes import L2, TOLERANCE, class_selectivity, linear_probe, pooled, softmax_loss_grad


def _blobs(n: int, classes: int, dims: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.eye(classes, dims, dtype=torch.float64) * 10
    return centres[y] + spread * torch.randn(n, dims, generator=g, dtype=torch.float64), y


def test_linearly_separable_features_give_accuracy_one() -> None:
    x, y = _blobs(300, 3, 5, 0.5, 0)
    tx, ty = _blobs(150, 3, 5, 0.5, 1)
    out = linear_probe(x, y, tx, ty, 3)
    assert out["accuracy"] == 1.0 and out["cross_entropy"] < 0.1
    assert out["chance_accuracy"] == pytest.approx(1 / 3)


def test_pure_noise_gives_chance_within_three_standard_deviations() -> None:
    """10 classes, features independent of the labels: held-out accuracy is binomial around 0.1 (sd
    sqrt(0.1 x 0.9 / 2000) = 0.0067); the cross-entropy is at least that of the uniform guess, ln 10."""
    g = torch.Generator().manual_seed(2)
    x, tx = torch.randn(2000, 16, generator=g), torch.randn(2000, 16, generator=g)
    y, ty = torch.randint(0, 10, (2000,), generator=g), torch.randint(0, 10, (2000,), generator=g)
    out = linear_probe(x, y, tx, ty, 10)
    assert abs(out["accuracy"] - 0.1) <= 3 * math.sqrt(0.1 * 0.9 / 2000)
    assert out["cross_entropy"] >= math.log(10) - 0.01


def test_the_probe_ignores_feature_scale_and_offset() -> None:
    x, y = _blobs(200, 4, 6, 4.0, 3)
    tx, ty = _blobs(200, 4, 6, 4.0, 4)
    a = linear_probe(x, y, tx, ty, 4)
    b = linear_probe(1000 * x + 7, y, 1000 * tx + 7, ty, 4)  # standardized: the same problem
    assert b["accuracy"] == a["accuracy"] and b["cross_entropy"] == pytest.approx(a["cross_entropy"], abs=1e-6)


def test_the_same_inputs_give_the_same_numbers() -> None:
    x, y = _blobs(200, 4, 6, 4.0, 5)
    assert linear_probe(x, y, x, y, 4) == linear_probe(x.clone(), y.clone(), x.clone(), y.clone(), 4)


def test_the_written_out_gradient_is_autograds() -> None:
    """Loss and gradient of the probe's objective at random weights, against autograd on F.cross_entropy."""
    g = torch.Generator().manual_seed(6)
    z = torch.randn(50, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (50,), generator=g)
    w = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(z @ w + b, y) + 0.01 * (w * w).sum()
    loss.backward()
    gw, gb, mine = softmax_loss_grad(z, y, w.detach(), b.detach(), 0.01)
    assert float(mine) == pytest.approx(float(loss), rel=1e-12)
    assert torch.allclose(gw, w.grad, rtol=0, atol=1e-12) and torch.allclose(gb, b.grad, rtol=0, atol=1e-12)


def test_the_fit_ends_at_the_penalized_optimum() -> None:
    """Overlapping classes (the optimum is not at infinity): refitting from the probe's weights' objective by
    autograd finds no gradient entry above the stopping tolerance, and an autograd-driven L-BFGS fit scores the
    same held-out accuracy."""
    x, y = _blobs(400, 4, 6, 9.0, 7)
    tx, ty = _blobs(400, 4, 6, 9.0, 8)
    mine = linear_probe(x, y, tx, ty, 4)
    z = (x - x.mean(0)) / x.std(0, correction=0)
    w = torch.zeros(6, 4, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=100, line_search_fn="strong_wolfe", tolerance_grad=TOLERANCE)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w + b, y) + L2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert max(float(w.grad.abs().max()), float(b.grad.abs().max())) <= TOLERANCE
    zt = (tx - x.mean(0)) / x.std(0, correction=0)
    assert 0.4 < mine["accuracy"] < 1.0
    assert mine["accuracy"] == float(((zt @ w + b).argmax(1) == ty).double().mean())


def test_probe_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="same, non-zero length"):
        linear_probe(torch.zeros(3, 2), torch.zeros(2), torch.zeros(3, 2), torch.zeros(3), 2)


def test_pooled_by_hand() -> None:
    acts = torch.arange(16.0).view(1, 1, 4, 4)
    assert pooled(acts).tolist() == [[7.5]]  # the global mean
    assert pooled(acts, 2).tolist() == [[2.5, 4.5, 10.5, 12.5]]  # the four 2x2 quadrants' means
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        pooled(torch.zeros(2, 3))


def test_pooled_averages_float32_maps_to_float32_rounding() -> None:
    """float32 maps are averaged as float32 (no float64 copy of the maps: the float32 average exactly, which
    on these maps differs from the float64 one) and come back as float64, within float32 rounding of the
    float64 average; half-precision maps are averaged in float32 and float64 maps in float64; a map of
    3 x 3 cells splits into overlapping 2 x 2 bins."""
    acts = torch.rand(8, 5, 33, 33, generator=torch.Generator().manual_seed(0)) * 100 + 1e4
    avg = torch.nn.functional.adaptive_avg_pool2d
    for grid in (1, 2):
        got = pooled(acts, grid)
        in_float32 = avg(acts, grid).flatten(1).double()
        exact = avg(acts.double(), grid).flatten(1)
        assert got.dtype == torch.float64 and got.shape == (8, 5 * grid * grid)
        assert torch.equal(got, in_float32) and not torch.equal(got, exact)
        assert torch.allclose(got, exact, rtol=1e-6, atol=0)
        half = acts.to(torch.bfloat16)
        assert torch.equal(pooled(half, grid), avg(half.float(), grid).flatten(1).double())
        assert torch.equal(pooled(acts.double(), grid), exact)  # float64 maps keep their precision
    odd = torch.arange(9.0).view(1, 1, 3, 3)
    assert pooled(odd, 2).tolist() == [[2.0, 3.0, 5.0, 6.0]]  # rows 0-1 / 1-2 and columns 0-1 / 1-2


def test_class_selectivity_known_answers() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    one_class = torch.tensor([1.0, 3.0, 0, 0, 0, 0])  # fires for class 0 only: 1
    uniform = torch.full((6,), 2.0)  # the same for every class: 0
    mixed = torch.tensor([3.0, 3.0, 1.0, 1.0, 1.0, 1.0])  # mu = 3, 1, 1: (3 - 1) / (3 + 1) = 0.5
    silent = torch.zeros(6)  # never responds: 0
    got = class_selectivity(torch.stack([one_class, uniform, mixed, silent], 1), labels, 3)
    assert got.tolist() == pytest.approx([1.0, 0.0, 0.5, 0.0])
    assert class_selectivity(torch.stack([mixed], 1), labels, 4).tolist() == pytest.approx([0.5])  # class 3 absent
    with pytest.raises(ValueError, match="two classes"):
        class_selectivity(torch.ones(2, 1), torch.tensor([0, 0]), 3)


def test_each_feature_is_standardized_on_its_own() -> None:
    """Offsets and scales that differ per feature (up to 1e4 and down to 1e-3), and a constant feature, give
    the same probe as the plain features: each column is standardized with its own mean and sd."""
    x, y = _blobs(200, 4, 6, 4.0, 6)
    tx, ty = _blobs(200, 4, 6, 4.0, 7)
    a = linear_probe(x, y, tx, ty, 4)
    scale = torch.tensor([1e-3, 1.0, 50.0, 1e-2, 3.0, 1e3], dtype=torch.float64)
    shift = torch.tensor([1e4, -5.0, 0.0, 2e3, 7.0, -1e4], dtype=torch.float64)
    b = linear_probe(x * scale + shift, y, tx * scale + shift, ty, 4)
    assert b["accuracy"] == a["accuracy"] and b["cross_entropy"] == pytest.approx(a["cross_entropy"], abs=1e-6)
    const = torch.full((200, 1), 3.0, dtype=torch.float64)
    c = linear_probe(torch.cat([x, const], 1), y, torch.cat([tx, const], 1), ty, 4)
    assert c["accuracy"] == a["accuracy"] and c["cross_entropy"] == pytest.approx(a["cross_entropy"], abs=1e-6)


def test_the_bias_carries_the_class_frequencies() -> None:
    """Features that say nothing, with 90% of the images in class 0: only the bias can learn the prior, and
    the probe then always answers class 0 (accuracy 0.9, the chance accuracy it reports)."""
    g = torch.Generator().manual_seed(8)
    y = (torch.arange(500) % 10 == 0).long()  # 10% class 1
    x, tx = (torch.randn(500, 3, generator=g, dtype=torch.float64) for _ in range(2))
    out = linear_probe(x, 1 - y, tx, 1 - y, 2)
    assert out["accuracy"] == pytest.approx(0.9, abs=0.02) and out["chance_accuracy"] == pytest.approx(0.9)
    assert out["cross_entropy"] < math.log(2) - 0.2  # the prior alone: 0.325 nats, well under ln 2


def test_empty_or_mismatched_splits_are_refused() -> None:
    for args in (
        (torch.zeros(3, 2), torch.zeros(3), torch.zeros(0, 2), torch.zeros(0)),  # no test images
        (torch.zeros(0, 2), torch.zeros(0), torch.zeros(3, 2), torch.zeros(3)),  # no training images
        (torch.zeros(3, 2), torch.zeros(3), torch.zeros(3, 2), torch.zeros(2)),  # test labels short
    ):
        with pytest.raises(ValueError, match="same, non-zero length"):
            linear_probe(*args, 2)


def test_class_selectivity_with_two_classes_small_means_and_bad_shapes() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    small = torch.tensor([[0.3], [0.3], [0.1], [0.1]])  # (0.3 - 0.1) / (0.3 + 0.1) = 0.5, below 1 in every part
    assert class_selectivity(small, labels, 2).tolist() == pytest.approx([0.5])
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        class_selectivity(torch.ones(4), labels, 2)  # one number per image: not [N, C]
    with pytest.raises(ValueError, match="one label per row"):
        class_selectivity(torch.ones(3, 1), labels, 2)
