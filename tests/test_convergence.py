"""The settling controls against known answers: crossing criteria, the uniform grid, the half-sample
interval and the own-weights control on constructed inputs (definitions: docs/metrics.md, "Settling")."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from featviz.convergence import _grid, _own_weights, formed_at, grid_every, half_sample_interval
from featviz.metrics import cka_of_features, cka_of_grams, linear_cka
from featviz.progress import silent


def test_formed_at_fixed_and_baseline_relative() -> None:
    steps = [0, 40, 80, 120]
    cka = [0.5, 0.92, 0.85, 1.0]
    assert formed_at(cka, steps, 0.9) == 120  # 0.92 at step 40 does not stay above
    assert formed_at(cka, steps, 0.8) == 40
    # relative to the init's 0.5: (0.85 - 0.5) / 0.5 = 0.7, (0.92 - 0.5) / 0.5 = 0.84
    assert formed_at(cka, steps, 0.8, relative=True) == 120
    assert formed_at([0.5, 0.96, 0.96, 1.0], steps, 0.9, relative=True) == 40  # 0.46 / 0.5 = 0.92
    assert formed_at([0.1, 0.2, 0.3, 0.4], steps, 0.9) is None


def _run(snapshots: str = "log", every: int = 0) -> SimpleNamespace:
    train = {"snapshots": snapshots, "snapshot_every_steps": every}
    return SimpleNamespace(info=SimpleNamespace(configs={"train": train}))


def test_uniform_grid_of_a_run_snapshotted_every_k_steps() -> None:
    assert grid_every(_run("every:40")) == 40 and grid_every(_run("log", 40)) == 40
    assert grid_every(_run("log")) is None and grid_every(_run("epoch")) is None
    # every 40 steps with epochs of 157: epoch ends off the grid are left out, the final snapshot kept
    steps = [0, 40, 80, 120, 157, 160, 200, 240, 280, 314]
    assert [steps[i] for i in _grid(_run("every:40"), steps)] == [0, 40, 80, 120, 160, 200, 240, 280, 314]
    assert _grid(_run("log"), steps) == list(range(len(steps)))
    assert _grid(_run("log"), [0, 0, 5]) == [0, 1, 2]  # steps unknown (a damaged metrics file): every snapshot


def test_cka_of_features_equals_cka_of_grams() -> None:
    g = torch.Generator().manual_seed(1)
    for n, d1, d2 in ((6, 2, 3), (50, 7, 5), (100, 64, 128)):
        x = torch.randn(n, d1, generator=g, dtype=torch.float64) + 3.0  # offsets change neither
        y = torch.randn(n, d2, generator=g, dtype=torch.float64)
        y[:, : min(d1, d2)] += x[:, : min(d1, d2)]
        want = linear_cka(x, y)
        assert float(cka_of_features(x, y)) == pytest.approx(want, abs=1e-9)
        assert float(cka_of_grams(x @ x.T, y @ y.T)) == pytest.approx(want, abs=1e-9)
    assert float(cka_of_features(torch.ones(8, 3), torch.randn(8, 2))) == 0.0  # a constant representation


def test_half_sample_interval_of_a_sharp_change_is_exact() -> None:
    """Independent noise before step 80, the final features from step 80 on: every half of the images
    agrees that the layer formed at 80."""
    g = torch.Generator().manual_seed(2)
    final = torch.randn(200, 8, generator=g)
    feats = [torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g), final.clone(), final.clone()]
    interval, draws = half_sample_interval(feats, final, [0, 40, 80, 120], draws=20)
    assert interval == [80, 80] and draws == [80] * 20


def test_half_sample_interval_widens_near_the_threshold() -> None:
    """A snapshot whose CKA to the final sits at the threshold: some halves say it formed there, others
    one step later, so the interval spans both; one far from it gives a single step."""
    g = torch.Generator().manual_seed(3)
    final = torch.randn(400, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(400, 4, generator=g, dtype=torch.float64)
    near = final + 0.33 * noise  # CKA about 0.9
    assert 0.85 < linear_cka(near, final) < 0.95
    interval, draws = half_sample_interval([noise, near, final], final, [0, 1, 2], draws=100)
    assert set(draws) == {1, 2} and interval == [1, 2]
    far = final + 0.05 * noise
    assert half_sample_interval([noise, far, final], final, [0, 1, 2], draws=50)[0] == [1, 1]


def test_own_weights_control_sees_only_the_layer_s_own_change() -> None:
    """conv2's weights are the same in the snapshot and at the end while conv1's differ: the whole network's
    conv2 representation differs from its final form, but conv2's own weights do not (CKA 1); conv1's own
    weights differ (CKA below 1)."""
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("conv1", nn.Conv2d(3, 6, 3, padding=1))
    net.add_module("bn1", nn.BatchNorm2d(6))
    net.add_module("relu1", nn.ReLU())
    net.add_module("conv2", nn.Conv2d(6, 8, 3, padding=1))
    net.add_module("relu2", nn.ReLU())
    final = {k: v.clone() for k, v in net.state_dict().items()}
    early = {k: v.clone() for k, v in final.items()}
    early["conv1.weight"] = torch.randn_like(early["conv1.weight"])
    layers = [SimpleNamespace(name="conv1"), SimpleNamespace(name="conv2")]
    probe = torch.randn(64, 3, 8, 8)
    own = _own_weights(layers, net, ["relu1", "relu2"], probe, [lambda: early, lambda: final], silent)
    assert own["conv2"] == pytest.approx([1.0, 1.0], abs=1e-9)
    assert own["conv1"][0] < 0.9 and own["conv1"][1] == pytest.approx(1.0, abs=1e-9)


def test_own_weights_are_the_same_through_the_downstream_part_and_the_whole_forward(monkeypatch) -> None:
    """The control recomputes only what follows each layer (featviz.partial) where fx traces the model; a model
    it cannot split runs whole. Both give the same numbers, bit for bit, on a ResNet-18 with BatchNorm."""
    from torchvision.models import resnet18

    from featviz import convergence

    torch.manual_seed(3)
    net = resnet18(num_classes=4)
    final = {k: v.clone() for k, v in net.state_dict().items()}
    early = {k: (torch.randn_like(v) if k.endswith("conv2.weight") else v.clone()) for k, v in final.items()}
    layers = [SimpleNamespace(name="layer1.1.conv2"), SimpleNamespace(name="layer3.1.conv2")]
    names, probe = ["layer1.1.bn2", "layer3.1.bn2"], torch.randn(300, 3, 16, 16)  # two 250-image chunks
    loaders = [lambda: early, lambda: final]
    asked, split_of = [], convergence.Downstream.of
    monkeypatch.setattr(convergence.Downstream, "of", lambda *a: asked.append(a[1:3]) or split_of(*a))
    split = _own_weights(layers, net, names, probe, loaders, silent)
    assert asked == [("layer1.1.conv2", "layer1.1.bn2"), ("layer3.1.conv2", "layer3.1.bn2")]
    monkeypatch.setattr(convergence.Downstream, "of", lambda *a: None)
    whole = _own_weights(layers, net, names, probe, loaders, silent)
    assert split == whole and split["layer1.1.conv2"][0] < 0.99 and split["layer3.1.conv2"][1] == 1.0


@pytest.mark.parametrize("split", [True, False])
def test_own_weights_measure_what_the_whole_network_measure_sees(monkeypatch, split: bool) -> None:
    """A ResNet block's last BatchNorm is rewritten in place by ``out += identity`` and the ReLU: the
    whole-network measure (``_measure``) reads the block's output. The own-weights control reads the same
    values, bit for bit, through the downstream part and through a whole forward, not the BatchNorm's
    output (which would compare another representation)."""
    from torchvision.models import resnet18

    from featviz import convergence
    from featviz.convergence import _forward_to, _measure, _pooled_until

    if not split:
        monkeypatch.setattr(convergence.Downstream, "of", lambda *a: None)
    torch.manual_seed(4)
    net = resnet18(num_classes=4).eval()
    probe = torch.randn(40, 3, 16, 16)
    whole = _measure(net, ["layer2.1.bn2"], probe, gram=False)["layer2.1.bn2"]["mean"]
    with torch.no_grad(), _forward_to(net, "layer2.1.conv2", "layer2.1.bn2", probe[:8]) as run:
        own = _pooled_until(net, run, probe)
    assert torch.equal(own, whole) and float(own.min()) >= 0  # the block's output, after its ReLU


def test_cka_of_subsets_is_cka_of_each_subset_s_features() -> None:
    """Row b is the debiased CKA of the rows of x and y in subset b, computed from the full Gram matrices;
    identical representations score 1 on every subset, and one constant on a subset scores 0 there."""
    from featviz.metrics import cka_of_subsets

    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(20, 3, generator=g), torch.randn(20, 7, generator=g)
    y[:, :3] += 2 * x  # related, not identical
    idx = torch.stack([torch.randperm(20, generator=g)[:10] for _ in range(4)])
    z = torch.zeros(4, 20).scatter_(1, idx, 1.0)
    want = torch.stack([cka_of_features(x[i], y[i]) for i in idx])
    assert torch.allclose(cka_of_subsets(x, y, z), want, atol=1e-12, rtol=0)
    assert torch.allclose(cka_of_subsets(x, x, z), torch.ones(4, dtype=torch.float64), atol=1e-12, rtol=0)
    flat = x.clone()
    flat[idx[0]] = 1.0  # constant on the first subset only
    got = cka_of_subsets(flat, y, z)
    assert float(got[0]) == 0.0 and bool((got[1:] != 0).all())


def test_hsic_of_subsets_is_the_unbiased_hsic_of_each_sub_gram() -> None:
    from featviz.metrics import _hsic_of_subsets, hsic_unbiased

    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randn(12, 2, generator=g, dtype=torch.float64)
    k, ell = x @ x.T, y @ y.T
    idx = torch.stack([torch.randperm(12, generator=g)[:7] for _ in range(3)])
    z = torch.zeros(3, 12, dtype=torch.float64).scatter_(1, idx, 1.0)
    want = torch.stack([hsic_unbiased(k[i][:, i], ell[i][:, i]) for i in idx])
    assert torch.allclose(_hsic_of_subsets(k, ell, z), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("calibration", [0, 1000])
def test_measure_keeps_the_gram_of_the_first_500_images_across_chunks(monkeypatch, calibration: int) -> None:
    """600 probe images, in 250-image chunks or one calibrating batch: means and peaks of every image; the
    Gram matrix of the first FLAT_IMAGES (500) images' centred flattened maps, exactly as from all maps."""
    from featviz import convergence
    from featviz.convergence import FLAT_IMAGES, _measure

    monkeypatch.setattr(convergence, "CALIBRATION", calibration)
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval()
    x = torch.randn(600, 1, 5, 5)
    out = _measure(net, ["1"], x, gram=True)["1"]
    with torch.no_grad():
        maps = net(x).flatten(2)
    flat = maps[:FLAT_IMAGES].flatten(1)
    flat = flat - flat.mean(0, keepdim=True)
    assert FLAT_IMAGES == 500 and out["gram"].shape == (500, 500)
    assert torch.allclose(out["gram"], (flat @ flat.T).double(), atol=1e-4, rtol=1e-6)
    assert torch.allclose(out["mean"], maps.mean(2), atol=1e-6) and torch.equal(out["peak"], maps.amax((0, 2)))
    assert "gram" not in _measure(net, ["1"], x, gram=set())["1"]


@pytest.mark.parametrize("held", [2**30, 0])
def test_measure_recomputes_batchnorm_in_its_pass_and_sees_an_in_place_relu(monkeypatch, held: int) -> None:
    """A BatchNorm measured where an in-place ReLU follows it (a torchvision ResNet's activation): the
    measure is the output as the pass left it, after the ReLU, with the BatchNorm's statistics recomputed
    on the first CALIBRATION images, in the measuring pass itself or, when its maps would not fit, in a
    pass before it; both give the recalibrated model's eval-mode output."""
    from featviz import model as model_mod
    from featviz.convergence import _measure
    from featviz.model import recalibrate_batchnorm

    monkeypatch.setattr(model_mod, "HELD_BYTES", held)
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(inplace=True))
    x = torch.randn(1100, 1, 6, 6) * 3 + 2
    out = _measure(net, ["1"], x, gram=False)["1"]
    stats = net[1].running_mean.clone(), net[1].running_var.clone()
    twin = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU())
    twin.load_state_dict(net.state_dict())
    recalibrate_batchnorm(twin, x[:1000])
    with torch.no_grad():
        want = twin(x).flatten(2)
    assert torch.equal(net[1].running_mean, twin[1].running_mean) and torch.equal(stats[1], twin[1].running_var)
    assert float(out["mean"].min()) >= 0 and torch.allclose(out["mean"], want.mean(2), atol=1e-6)
    with torch.no_grad():  # the first 1,000 images' statistics, not all 1,100 images'
        conv = net[0](x[:1000]).transpose(0, 1).flatten(1)
    assert torch.allclose(stats[0], conv.mean(1), atol=1e-5) and torch.allclose(stats[1], conv.var(1), rtol=1e-5)
