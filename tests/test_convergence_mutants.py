"""Known answers that pin the edges of the batched CKA code in featviz.metrics and of featviz.convergence which
tests/test_convergence.py leaves open: leading batch dimensions, the unbiased HSIC as a U-statistic, float64
results, schedules that are not a grid, the percentiles of the half-sample interval, one forward pass's
measures, and convergence() on a tiny run against each measure's definition (found by mutation testing,
docs/metrics.md)."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY_DATA, TINY_MODEL, TINY_TRAIN
from featviz.convergence import DRAWS, _measure, convergence, formed_at, grid_every, half_sample_interval
from featviz.hooks import capture
from featviz.loading import build_run_model, probe_images
from featviz.metrics import _hsic_of_features, cka_of_features, cka_of_grams, hsic_unbiased, linear_cka
from featviz.model import recalibrate_batchnorm


# ----------------------------------------------------------------------------- batched HSIC and CKA
def _u_statistic(k: torch.Tensor, ell: torch.Tensor) -> float:
    """Song et al.'s unbiased HSIC as the average over ordered distinct (i, j, q, r) of
    k_ij l_ij + k_ij l_qr - 2 k_ij l_iq (the diagonals never enter)."""
    n = k.shape[0]
    total = sum(
        k[i, j] * ell[i, j] + k[i, j] * ell[q, r] - 2 * k[i, j] * ell[i, q]
        for i, j, q, r in itertools.permutations(range(n), 4)
    )
    return float(total) / math.perm(n, 4)


def test_hsic_unbiased_is_the_u_statistic_up_to_one_factor() -> None:
    """HSIC(K, L) / HSIC(K, K) equals the brute-force U-statistics' ratio (n = 5 and 6, diagonals set to junk,
    which the estimator ignores)."""
    g = torch.Generator().manual_seed(4)
    for n in (5, 6):
        x, y = torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)
        k, ell = x @ x.T, y @ y.T + 1.0
        k_junk, ell_junk = k + 7.0 * torch.eye(n, dtype=torch.float64), ell - 3.0 * torch.eye(n, dtype=torch.float64)
        kl, kk, ll = float(hsic_unbiased(k_junk, ell_junk)), float(hsic_unbiased(k, k)), float(hsic_unbiased(ell, ell))
        uk, ukk, ull = _u_statistic(k, ell), _u_statistic(k, k), _u_statistic(ell, ell)
        assert kl / kk == pytest.approx(uk / ukk, rel=1e-9)
        assert ll / kk == pytest.approx(ull / ukk, rel=1e-9)


def test_batched_hsic_and_cka_equal_one_call_per_item() -> None:
    """Leading dimensions [2, 3] (and [3] for the features): each item's value is the unbatched call's; an item
    with a constant representation scores 0 without touching its neighbours."""
    g = torch.Generator().manual_seed(5)
    n = 7
    x = torch.randn(2, 3, n, 4, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, n, 5, generator=g, dtype=torch.float64)
    y[..., :2] += x[..., :2]
    x[1, 2] = 2.5  # a constant representation
    y[0, 1] = 2.0  # and one on the other side
    kx, ky = x @ x.transpose(-2, -1), y @ y.transpose(-2, -1)
    h, c = hsic_unbiased(kx, ky), cka_of_grams(kx, ky)
    f, hf = cka_of_features(x, y), _hsic_of_features(x, y)
    assert h.shape == c.shape == f.shape == hf.shape == (2, 3)
    for a, b in itertools.product(range(2), range(3)):
        want = linear_cka(x[a, b], y[a, b])
        assert float(h[a, b]) == pytest.approx(float(hsic_unbiased(kx[a, b], ky[a, b])), rel=1e-12, abs=1e-12)
        assert float(c[a, b]) == pytest.approx(want, abs=1e-12)
        assert float(f[a, b]) == pytest.approx(want, abs=1e-12)
    assert float(c[1, 2]) == float(f[1, 2]) == float(c[0, 1]) == float(f[0, 1]) == 0.0 and float(f[0, 0]) > 0.2
    f3 = cka_of_features(x[0], y[0])  # [3, n, c]: three draws
    assert f3.tolist() == pytest.approx([linear_cka(x[0, b], y[0, b]) for b in range(3)], abs=1e-12)


def test_hsic_of_features_is_hsic_of_their_grams_exactly() -> None:
    """_hsic_of_features(x, y) == hsic_unbiased(x x^T, y y^T), the same number including its factor, at the
    smallest n (4) and at n = 9, with column offsets."""
    g = torch.Generator().manual_seed(6)
    for n in (4, 9):
        x = torch.randn(n, 3, generator=g, dtype=torch.float64) + 2.0
        y = torch.randn(n, 2, generator=g, dtype=torch.float64) - 1.0
        for a, b in ((x, y), (x, x), (y, y)):
            want = float(hsic_unbiased(a @ a.T, b @ b.T))
            assert float(_hsic_of_features(a, b)) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_cka_of_features_works_in_float64_and_of_tiny_features() -> None:
    """float32 features off the origin (offset 10): the result is float64 and equals float64 linear CKA to
    1e-9 (in float32 the uncentred sums would lose ~1e-3); features of size 1e-4 score like their 1e4-fold
    copies (no threshold at 1)."""
    g = torch.Generator().manual_seed(7)
    x64 = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y64 = x64 @ torch.randn(3, 3, generator=g, dtype=torch.float64) + 0.5 * torch.randn(40, 3, dtype=torch.float64)
    x32, y32 = (x64 + 10).float(), (y64 - 10).float()
    got = cka_of_features(x32, y32)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(linear_cka(x32.double(), y32.double()), abs=1e-9)
    assert float(cka_of_features(1e-4 * x64, 1e-4 * y64)) == pytest.approx(linear_cka(x64, y64), abs=1e-9)
    assert float(cka_of_grams(1e-8 * x64 @ x64.T, 1e-8 * y64 @ y64.T)) == pytest.approx(linear_cka(x64, y64))


# ----------------------------------------------------------------------------- schedules and criteria
def _run(configs: object) -> SimpleNamespace:
    return SimpleNamespace(info=SimpleNamespace(configs=configs))


def test_grid_every_of_schedules_that_are_not_a_grid() -> None:
    """No configs, no train block, an unreadable every:, a list of steps (also of one step): None; every:1 and a
    bare K: K."""
    assert grid_every(_run(None)) is None and grid_every(_run({})) is None and grid_every(_run({"train": {}})) is None
    assert grid_every(_run({"train": {"snapshots": "every:x", "snapshot_every_steps": 0}})) is None
    assert grid_every(_run({"train": {"snapshots": "every:x", "snapshot_every_steps": 5}})) == 5
    assert grid_every(_run({"train": {"snapshots": "steps:3,9"}})) is None
    assert grid_every(_run({"train": {"snapshots": "steps:40"}})) is None
    assert grid_every(_run({"train": {"snapshots": None, "snapshot_every_steps": 6}})) == 6
    assert grid_every(_run({"train": {"snapshots": "every:1"}})) == 1
    assert grid_every(_run({"train": {"snapshots": "every:12", "snapshot_every_steps": 3}})) == 12


def test_formed_at_relative_to_an_init_that_is_already_final() -> None:
    """CKA_0 = 1: nothing left to learn, the baseline-relative criterion is met from the first step; the
    relative series of (0.5, 0.96, 1.0) is (0, 0.92, 1), met from the second."""
    assert formed_at([1.0, 0.7, 1.0], [0, 5, 10], 0.9, relative=True) == 0
    assert formed_at([0.5, 0.96, 1.0], [0, 5, 10], 0.9, relative=True) == 5
    assert formed_at([0.5, 0.95, 1.0], [0, 5, 10], 0.9) == 5 and formed_at([0.5, 0.89, 1.0], [0, 5, 10], 0.9) == 10


# ----------------------------------------------------------------------------- half-sample interval
def test_half_sample_interval_percentiles_and_defaults() -> None:
    """The interval is the 2.5th percentile rounded down and the 97.5th rounded up of the draws' steps (numpy's
    'lower' and 'higher', for 40, 41 and 100 draws); 100 draws by default at threshold 0.9, the same draws
    on every call; a layer that never forms (independent noise at every step) is None at both ends."""
    g = torch.Generator().manual_seed(13)
    final = torch.randn(24, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(24, 3, generator=g, dtype=torch.float64)
    scales = [1.0] + [0.7 - 0.025 * i for i in range(28)] + [0.0]  # halves of 12 images: a wide spread of steps
    steps = list(range(len(scales)))
    feats = [final + s * noise for s in scales]
    interval, found = half_sample_interval(feats, final, steps)
    assert len(found) == DRAWS == 100 and len(set(found)) >= 8
    assert half_sample_interval(feats, final, steps, threshold=0.9, draws=100) == (interval, found)  # seeded
    for draws in (40, 41, 100):
        interval, found = half_sample_interval(feats, final, steps, draws=draws)
        assert len(found) == draws and interval == [
            int(np.percentile(found, 2.5, method="lower")),
            int(np.percentile(found, 97.5, method="higher")),
        ]
    never = [torch.randn(24, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    assert half_sample_interval(never, final, [0, 1, 2], draws=10) == ([None, None], [None] * 10)


def test_half_sample_interval_of_eight_images_uses_halves_of_four() -> None:
    """8 images: halves of 4, the fewest debiased CKA takes; the final features from step 1 on form there."""
    g = torch.Generator().manual_seed(9)
    final = torch.randn(8, 3, generator=g)
    interval, found = half_sample_interval([torch.randn(8, 3, generator=g), final, final], final, [0, 1, 2], draws=5)
    assert interval == [1, 1] and found == [1] * 5


# ----------------------------------------------------------------------------- one forward pass
def test_measure_of_an_identity_layer() -> None:
    """A layer that passes its input through: channel means [N, C], each channel's peak over images and
    positions [C], and the float64 Gram matrix of the column-centred flattened maps; no Gram unless asked."""
    net = nn.Sequential()
    net.add_module("id", nn.Identity())
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2) ** 1.5 - 20.0
    x[:, 1] = -1.0  # a channel never above 0
    m = _measure(net, ["id"], x, gram=True)["id"]
    assert m["mean"].shape == (2, 3) and torch.allclose(m["mean"], x.mean((2, 3)))
    assert m["peak"].tolist() == pytest.approx(x.amax((0, 2, 3)).tolist()) and float(m["peak"][1]) == -1.0
    flat = x.flatten(1).double()
    flat = flat - flat.mean(0)
    assert m["gram"].dtype == torch.float64 and torch.allclose(m["gram"], flat @ flat.T)
    assert set(_measure(net, ["id"], x, gram=False)["id"]) == {"mean", "peak"}


# ----------------------------------------------------------------------------- convergence() on a tiny run
@pytest.fixture(scope="module")
def grid_run(tmp_path_factory: pytest.TempPathFactory):
    """The tiny 2-epoch run (7 steps an epoch) snapshotted every 4 steps: step snapshots 4, 8, 12; epoch ends
    at 0, 7 and 14."""
    from featviz.pipeline import train_run

    out = tmp_path_factory.mktemp("grid_run")
    run = train_run(TINY_DATA, TINY_MODEL, replace(TINY_TRAIN, snapshots="every:4"), out_dir=out, name="grid")
    return run, probe_images(run)[0][:40]


def _maps(run, state: dict[str, torch.Tensor], probe: torch.Tensor, act: str) -> torch.Tensor:
    """The activation maps of ``act`` on ``probe`` for the network with ``state``, BatchNorm recomputed on the
    probe: the definition every series starts from."""
    model = build_run_model(run)
    model.load_state_dict(state)
    recalibrate_batchnorm(model, probe)
    with capture(model, [act], detach=True) as acts, torch.no_grad():
        model(probe)
    return acts[act].double()


def _first_from(values: list[float], steps: list[int], t: float) -> int | None:
    """The first step from which every value is >= t."""
    return next((s for i, s in enumerate(steps) if min(values[i:]) >= t), None)


def test_convergence_of_a_run_snapshotted_every_four_steps(grid_run) -> None:
    """Every series against its definition, computed here from each snapshot's maps: points 0, 4, 7, 8, 12, 14
    (7 and 14 epoch ends), the grid 0, 4, 8, 12, 14; CKA 1 at the final snapshot; the four criteria; the
    interval of the pooled features' half-samples; the progress of both stages."""
    run, probe = grid_run
    calls: list[tuple[str, int, int]] = []
    out = convergence(run, probe, torch.device("cpu"), progress=lambda *a: calls.append(a))
    assert [c for c in calls if c[0] == "activations"] == [("activations", i, 6) for i in range(1, 7)]
    # one step per layer and grid point: 2 layers x 5 points
    assert [c for c in calls if c[0] == "settling controls"] == [("settling controls", i, 10) for i in range(1, 11)]
    states = {0: run.load_snapshot(0), 7: run.load_snapshot(1), 14: run.load_snapshot(2)}
    states.update({s: run.load_step_snapshot(s) for s in (4, 8, 12)})
    grid = [0, 4, 8, 12, 14]
    assert list(out) == [layer.name for layer in run.info.layers]
    for layer in run.info.layers:
        o, act = out[layer.name], layer.activation
        assert o["activation_layer"] == act
        maps = {s: _maps(run, st, probe, act) for s, st in states.items()}
        means = {s: m.mean((2, 3)) for s, m in maps.items()}
        cka = [linear_cka(means[s], means[14]) for s in sorted(states)]
        assert o["by_step"]["steps"] == [0, 4, 7, 8, 12, 14]
        assert o["by_step"]["cka_to_final"] == pytest.approx(cka, abs=1e-6) and cka[-1] == pytest.approx(1.0)
        assert o["cka_to_final"] == pytest.approx([cka[0], cka[2], cka[5]], abs=1e-6)
        assert o["cka_at_init"] == pytest.approx(cka[0], abs=1e-6)
        assert o["formed_at_step"] == _first_from(cka, [0, 4, 7, 8, 12, 14], 0.9)
        s = o["settling"]
        assert s["steps"] == grid
        assert s["pooled"] == pytest.approx([linear_cka(means[t], means[14]) for t in grid], abs=1e-6)
        assert s["flattened"] == pytest.approx(
            [linear_cka(maps[t].flatten(1), maps[14].flatten(1)) for t in grid], abs=1e-6
        )
        prefix = f"{layer.name}."
        own = []
        for t in grid:
            mixed = {k: (states[t][k] if k.startswith(prefix) else v) for k, v in states[14].items()}
            own.append(linear_cka(_maps(run, mixed, probe, act).mean((2, 3)), means[14]))
        assert s["own_weights"] == pytest.approx(own, abs=1e-6)
        for series in ("pooled", "flattened", "own_weights"):
            v = s[series]
            rel = [(c - v[0]) / (1 - v[0]) for c in v]
            want = {t: _first_from(v, grid, float(t)) for t in ("0.8", "0.9", "0.95")}
            assert s["formed_at"][series] == {**want, "relative 0.9": _first_from(rel, grid, 0.9)}
        want_interval, _ = half_sample_interval([means[t] for t in grid], means[14], grid)
        assert s["formed_at_interval"] == want_interval


def test_convergence_with_given_snapshots_a_damaged_step_and_dead_channels(grid_run) -> None:
    """Snapshots passed in, step 8 missing (left out as damaged: points 0, 4, 7, 12, 14) and a final snapshot
    whose BatchNorm drives channel 1 of conv1 and channel 3 of conv2 to -1 before the ReLU (channel 2 of conv1 to
    0.5): exactly those two are dead; the epoch-end CKA is 1 at the final snapshot; a subset of epochs passed in
    is all that is measured."""
    run, probe = grid_run
    snaps = {e: run.load_snapshot(e) for e in (0, 1, 2)}
    final = snaps[2] = dict(snaps[2])
    for bn, ch, value in (("features.bn1", 1, -1.0), ("features.bn1", 2, 0.5), ("features.bn2", 3, -1.0)):
        final[f"{bn}.weight"], final[f"{bn}.bias"] = final[f"{bn}.weight"].clone(), final[f"{bn}.bias"].clone()
        final[f"{bn}.weight"][ch], final[f"{bn}.bias"][ch] = 0.0, value
    steps = {s: run.load_step_snapshot(s) for s in (4, 12)}
    out = convergence(run, probe, torch.device("cpu"), snaps=snaps, steps=steps)
    conv1, conv2 = (out[layer.name] for layer in run.info.layers)
    assert conv1["dead_channels"] == [1] and conv2["dead_channels"] == [3]
    for o in (conv1, conv2):
        assert o["by_step"]["steps"] == [0, 4, 7, 12, 14] and o["settling"]["steps"] == [0, 4, 12, 14]
        assert len(o["cka_to_final"]) == 3 and o["cka_to_final"][-1] == pytest.approx(1.0)
        assert o["settling"]["pooled"][-1] == pytest.approx(1.0)
        assert o["settling"]["own_weights"][-1] == pytest.approx(1.0)
    # only the epochs passed in count: without epoch 1, points 0, 4, 12, 14; up to epoch 1, the run ends at step 7
    for given, points in (((0, 2), [0, 4, 12, 14]), ((0, 1), [0, 4, 7])):
        out = convergence(run, probe, torch.device("cpu"), snaps={e: snaps[e] for e in given}, steps=steps)
        for o in out.values():
            assert o["by_step"]["steps"] == points and len(o["cka_to_final"]) == 2
            assert o["by_step"]["cka_to_final"][-1] == pytest.approx(1.0)


def test_convergence_measures_each_snapshot_once_and_keeps_the_epochs_batchnorm(grid_run, monkeypatch) -> None:
    """Six snapshot points, six measuring passes (the final snapshot, measured first for its Gram matrices, is
    not measured again); ``keep_batchnorm`` holds, for each epoch end, exactly the statistics a recalibration on
    the probe images sets, and setting them (``recalibrate_or_set``) leaves the model as that recalibration
    does."""
    import featviz.convergence as conv
    from featviz.model import batchnorm_buffers, recalibrate_or_set

    run, probe = grid_run
    passes = []
    real = conv._measure
    monkeypatch.setattr(conv, "_measure", lambda *a, **k: passes.append(1) or real(*a, **k))
    kept: dict[int, dict[str, torch.Tensor]] = {}
    out = convergence(run, probe, torch.device("cpu"), keep_batchnorm=kept)
    assert len(passes) == 6 and len(out[run.info.layers[0].name]["by_step"]["steps"]) == 6
    assert sorted(kept) == [0, 1, 2]
    for epoch, stats in kept.items():
        model = build_run_model(run)
        model.load_state_dict(run.load_snapshot(epoch))
        recalibrate_batchnorm(model, probe)
        want = batchnorm_buffers(model)
        assert set(stats) == set(want) and any(k.endswith("running_var") for k in stats)
        for k in want:
            assert torch.equal(stats[k], want[k]), (epoch, k)
        other = build_run_model(run)
        other.load_state_dict(run.load_snapshot(epoch))
        other.train()
        recalibrate_or_set(other, probe, stats)
        assert not other.training
        assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), model.state_dict().values()))
    with pytest.raises(ValueError, match="has no"):
        recalibrate_or_set(build_run_model(run), probe, {"nowhere.running_mean": torch.zeros(1)})
