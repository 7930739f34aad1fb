"""The random-direction null (featviz.nulls): what it feeds the optimizer, that it is seeded, when it
refuses, and how the reading uses it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import featviz.nulls as nulls
from featviz.errors import ConfigError
from featviz.loading import fitting, probe_images
from featviz.run.store import Run


@pytest.fixture(scope="module")
def probe(tiny_run: Run):
    states, _ = fitting(tiny_run, *tiny_run.load_snapshots(tiny_run.snapshot_epochs()))
    val, _, labels = probe_images(tiny_run)
    return states, val, labels


def test_each_step_gets_a_random_direction_with_the_measured_norm(tiny_run: Run, probe, monkeypatch) -> None:
    """Every parameter's gradient at every step has the norm measured at the last snapshot before its
    epoch, and its direction changes from step to step (so no data steers it)."""
    states, val, labels = probe
    norms = nulls.gradient_norms(tiny_run, states, val[:64], labels[:64], torch.device("cpu"))
    seen: list[dict[str, torch.Tensor]] = []
    real_make = nulls.make_optimizer

    def recording(model, cfg, **kw):
        opt = real_make(model, cfg, **kw)
        names = {id(p): n for n, p in model.named_parameters()}
        step = opt.step

        def spy(*a, **k):
            seen.append({names[id(p)]: p.grad.clone() for g in opt.param_groups for p in g["params"]})
            return step(*a, **k)

        opt.step = spy
        return opt

    monkeypatch.setattr(nulls, "make_optimizer", recording)
    monkeypatch.setattr(nulls, "NULL_BATCH", 64)
    measured: list[list[int]] = []
    real_norms = nulls.gradient_norms
    monkeypatch.setattr(nulls, "gradient_norms", lambda r, st, *a: measured.append(sorted(st)) or real_norms(r, st, *a))
    out = nulls.rotation_null(tiny_run, states, val, labels, torch.device("cpu"), seed=3)
    assert measured == [[0, 1]]  # the last epoch's gradient norms would drive no step: not measured
    spe = tiny_run.steps_per_epoch()
    assert len(seen) == spe * tiny_run.epochs_planned
    for i, grads in enumerate(seen):
        held = norms[i // spe]  # epoch 1 uses the init's norms, epoch 2 epoch 1's
        for name, g in grads.items():
            assert float(g.norm()) == pytest.approx(held[name], rel=1e-5), (i, name)
    w = "features.conv1.weight"
    cos = torch.nn.functional.cosine_similarity(seen[0][w].flatten(), seen[1][w].flatten(), dim=0)
    assert abs(float(cos)) < 0.5  # a fresh direction each step
    layer = out["features.conv1"]
    assert layer["rotation_from_init"][0] == 0.0 and len(layer["rotation_from_init"]) == 3
    assert layer["ratio"] == pytest.approx(layer["run_at_last"] / layer["null_at_last"])


def test_the_null_is_the_plain_replay_up_to_rounding(tiny_run: Run, probe, monkeypatch) -> None:
    """The null's threads, buffer reuse, float32 squared norms and fused optimizer give the rotations of the
    plain replay: per step, the parameters laid end to end in STREAMS pieces, each a fresh torch.randn from
    its own generator, each parameter's norm in float64, the optimizer's default implementation."""
    from featviz.training import lr_at, make_optimizer

    states, val, labels = probe
    monkeypatch.setattr(nulls, "NULL_BATCH", 64)
    out = nulls.rotation_null(tiny_run, states, val, labels, torch.device("cpu"), seed=5)
    norms = nulls.gradient_norms(tiny_run, states, val[:64], labels[:64], torch.device("cpu"))
    model = nulls.build_run_model(tiny_run)
    model.load_state_dict(states[0])
    model.train()
    cfg = nulls.from_dict(nulls.TrainConfig, tiny_run.info.configs["train"])
    opt, params = make_optimizer(model, cfg), [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    gens = [torch.Generator().manual_seed(s) for s in nulls.stream_seeds(5)]
    spe, epochs = tiny_run.steps_per_epoch(), tiny_run.epochs_planned
    total = sum(p.numel() for _, p in params)
    lengths = [total // nulls.STREAMS + (i < total % nulls.STREAMS) for i in range(nulls.STREAMS)]
    w0 = model.get_parameter("features.conv2.weight").detach().clone()
    for step in range(spe * epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, spe * epochs, cfg.lr)
        drawn = torch.cat([torch.randn(n, generator=g) for n, g in zip(lengths, gens)])
        parts = drawn.split([p.numel() for _, p in params])
        for (name, p), d in zip(params, parts):
            p.grad = (d * (norms[step // spe][name] / float(d.double().norm()))).view_as(p)
        opt.step()
    want = nulls.rotation(w0, model.get_parameter("features.conv2.weight").detach())
    assert out["features.conv2"]["rotation_from_init"][-1] == pytest.approx(want, rel=1e-5)


def test_the_null_does_not_depend_on_the_thread_count(tiny_run: Run, probe) -> None:
    """One PyTorch thread draws the 4 streams one after another, two draw them side by side: the same random
    numbers, so the same null up to the float rounding that any multi-threaded reduction (the real gradients'
    norms, the dot products) brings; another arrangement of the draw would move it by 1e-3 or more."""
    states, val, labels = probe
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = nulls.rotation_null(tiny_run, states, val, labels, torch.device("cpu"), seed=4)
        torch.set_num_threads(2)
        two = nulls.rotation_null(tiny_run, states, val, labels, torch.device("cpu"), seed=4)
    finally:
        torch.set_num_threads(threads)
    for name in ("features.conv1", "features.conv2"):
        assert one[name]["rotation_from_init"] == pytest.approx(two[name]["rotation_from_init"], rel=1e-6, abs=0)


def test_the_null_is_seeded(tiny_run: Run, probe) -> None:
    states, val, labels = probe
    one = nulls.rotation_null(tiny_run, states, val, labels, torch.device("cpu"), seed=1)
    again = nulls.rotation_null(tiny_run, states, val, labels, torch.device("cpu"), seed=1)
    other = nulls.rotation_null(tiny_run, states, val, labels, torch.device("cpu"), seed=2)
    assert one == again and one["features.conv2"] != other["features.conv2"]
    default = nulls.rotation_null(tiny_run, states, val, labels, torch.device("cpu"))
    epochs = tiny_run.epochs_planned
    assert default["seed"] == 0 and one["seed"] == 1 and default["batch"] == min(len(val), nulls.NULL_BATCH)
    assert default["epochs"] == list(range(epochs + 1)) and default["last_epoch"] == max(states)
    assert default["streams"] == nulls.STREAMS == 4


def test_the_streams_seeds_are_fixed_and_never_a_runs_seed() -> None:
    """The stream seeds are a fixed function of the null's seed (these numbers define the null: changing
    them changes every null), distinct, 63-bit, and none is a small integer a run could have been seeded
    with, whose stream drew the run's init."""
    assert nulls.stream_seeds(0) == [7281411247644510730, 6190360910002978838, 251101237208411019, 1942676445500706465]
    assert nulls.stream_seeds(5)[0] == 2434822991002775868
    seeds = [s for run_seed in range(1000) for s in nulls.stream_seeds(run_seed)]
    assert len(set(seeds)) == len(seeds) and all(2**20 < s < 2**63 for s in seeds)


def test_the_null_refuses_what_it_cannot_replay(tiny_run: Run, probe) -> None:
    states, val, labels = probe
    with pytest.raises(ConfigError, match="labelled validation images"):
        nulls.rotation_null(tiny_run, states, val, torch.full_like(labels, -1), torch.device("cpu"))
    with pytest.raises(ConfigError, match="epoch 0 snapshot"):
        nulls.rotation_null(tiny_run, {e: s for e, s in states.items() if e}, val, labels, torch.device("cpu"))
    with pytest.raises(ConfigError, match="labelled validation images"):
        nulls.rotation_null(tiny_run, states, val[:0], labels[:0], torch.device("cpu"))
    train = tiny_run.info.configs["train"]
    untrained = {k: v for k, v in train.items() if k != "optimizer"}
    for source, cfg, spe in ((object(), train, 5), (None, untrained, 5), (None, train, 0)):
        # a recorded run, no optimizer recorded, no step count: each alone is refused
        fake = SimpleNamespace(
            info=SimpleNamespace(source=source, configs={"train": cfg}), steps_per_epoch=lambda s=spe: s
        )
        with pytest.raises(ConfigError, match="no recorded optimizer or schedule"):
            nulls.rotation_null(fake, states, val, labels, torch.device("cpu"))


@pytest.mark.parametrize(
    "real,null,phrases",
    [
        (
            [0.2, 0.3, 0.5],
            [0.3, 0.4, 0.6],
            ["both rise with depth, so that ordering does not need learning", "more with each depth"],
        ),
        ([0.2, 0.3, 0.5], [0.5, 0.5, 0.4], ["the run's rise with depth, the null's do not", "more with each depth"]),
        ([0.2, 0.3, 0.5], [0.1, 0.2, 0.6], ["both rise with depth", "not rising with depth"]),
    ],
)
def test_the_reading_compares_the_run_with_its_null(real, null, phrases) -> None:
    from featviz.reading import _null

    layers = ["c1", "c2", "c3"]
    a = {"layers": layers, "rotation_null": {"last_epoch": 8}}
    for n, r, z in zip(layers, real, null):
        a["rotation_null"][n] = {"run_at_last": r, "null_at_last": z, "ratio": r / z}
    text = _null(a)
    assert all(p in text for p in phrases), text
    assert _null({"layers": layers, "rotation_null": {"skipped": "no"}}) == ""
