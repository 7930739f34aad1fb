"""featviz.record: a plain PyTorch loop writes the run featviz train writes, and is not changed by it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import featviz
from featviz.errors import ConfigError
from featviz.run.store import Run
from record_data import Flips


def _one_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, loader: DataLoader, rec) -> list[float]:
    """One pass of the user's plain SGD loop; each step's loss, also given to ``rec`` when recording."""
    losses = []
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if rec:
            rec.step(loss=loss.item())
    return losses


def _loop(out: Path | None, epochs: int = 2, **rec_options) -> tuple[dict, list[float], Run | None]:
    """The user's loop; recorded into ``out`` when given. Returns (final state, losses, run)."""
    from usernets import tiny

    torch.manual_seed(0)
    model = tiny(num_classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = Flips()
    loader = DataLoader(data, batch_size=16, shuffle=True)
    losses: list[float] = []
    rec = (
        featviz.record(model, "mine", out_dir=out, model_spec="usernets:tiny", data=data, **rec_options)
        if out
        else None
    )
    if rec:
        rec.start()
    for _ in range(epochs):
        losses += _one_epoch(model, opt, loader, rec)
        if rec:
            rec.epoch(val_acc=0.5)
    if rec:
        rec.close()
    return {k: v.clone() for k, v in model.state_dict().items()}, losses, rec.run if rec else None


def test_recording_changes_nothing_in_the_loop(user_code: Path, tmp_path: Path) -> None:
    plain_state, plain_losses, _ = _loop(None)
    rec_state, rec_losses, run = _loop(tmp_path / "out")
    assert rec_losses == plain_losses  # bit for bit, every step
    assert plain_state.keys() == rec_state.keys()
    for k in plain_state:
        assert torch.equal(plain_state[k], rec_state[k]), k
    assert run is not None and torch.equal(run.load_snapshot(2)["stem.weight"], rec_state["stem.weight"])


def test_recorded_run_has_the_trained_run_layout(user_code: Path, tmp_path: Path, cli) -> None:
    state, losses, run = _loop(tmp_path / "out")
    run = Run.open(run.path)
    assert run.epochs_done == 2 and run.complete and run.meta["source"] == "record"
    # 96 images / 16 = 6 steps per epoch: the log schedule adds steps 1, 2, 4 inside epoch 1
    assert [p.id for p in run.snapshot_points()] == [
        "epoch_000",
        "step_0000001",
        "step_0000002",
        "step_0000004",
        "epoch_001",
        "epoch_002",
    ]
    metrics = run.metrics()
    assert [m["step"] for m in metrics] == [0, 6, 12] and metrics[2]["val_acc"] == 0.5
    assert metrics[1]["train_loss"] == pytest.approx(sum(losses[:6]) / 6)
    # layers in forward-execution order, with the geometry of the user's network
    layers = run.info.layers
    assert [la.name for la in layers] == ["stem", "grouped", "depthwise", "down"]
    assert [la.groups for la in layers] == [1, 2, 8, 1]
    assert [la.response for la in layers] == ["bn", "grouped", "depthwise", "down"]
    assert [la.rf_px for la in layers] == [3, 5, 7, 9]  # 3, +2, +2, +2 (the stride widens only what comes after)
    assert run.meta["data"]["classes"] == ["low", "mid", "high"] and run.meta["data"]["size"] == 12
    images, labels = run.load_probe()
    assert (
        images.dtype == torch.uint8
        and images.shape == (96, 3, 12, 12)
        and labels.tolist()[:3] == Flips().y[:3].tolist()
    )
    code, out, err = cli(["check", run.path])
    assert code == 0, err
    code, out, err = cli(["render", run.path, "--steps", "4", "--model", "usernets:tiny"])
    assert code == 0, err
    code, out, err = cli(["analyze", run.path, "--probe", "32", "--model", "usernets:tiny"])
    assert code == 0, err
    analysis = json.loads((run.path / "analysis.json").read_text())
    assert analysis["probe_images"] == 32 and set(analysis["faithfulness"]) >= {"stem", "down"}
    assert (run.path / "gallery" / "index.html").is_file()
    # init, steps 2 and 4, epochs 1 and 2
    assert len(list((run.path / "renders" / "am").rglob("ch_*.png"))) == (8 + 8 + 8 + 16) * 5


def test_a_failed_loop_keeps_committed_epochs(user_code: Path, tmp_path: Path) -> None:
    from usernets import tiny

    model = tiny()
    with pytest.raises(RuntimeError):
        with featviz.record(
            model, "crash", out_dir=tmp_path, model_spec="usernets:tiny", data=Flips(), epochs=5
        ) as rec:
            for _ in range(3):
                rec.step(loss=1.0)
            rec.epoch()
            rec.step(loss=1.0)
            raise RuntimeError("out of memory, say")
    run = Run.open(tmp_path / "crash")
    assert run.epochs_done == 1 and not run.complete
    assert [p.id for p in run.snapshot_points()] == ["epoch_000", "step_0000001", "step_0000002", "epoch_001"]
    assert not run.step_snapshot_file(4).exists()


def test_a_dataloader_as_data_leaves_its_generator_alone(user_code: Path, tmp_path: Path) -> None:
    """The probe is read from the loader's dataset: iterating the loader would draw from its generator."""
    from usernets import tiny

    def run(out: Path | None) -> list[float]:
        torch.manual_seed(0)
        model = tiny()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = DataLoader(Flips(), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(5))
        rec = featviz.record(model, "dl", out_dir=out, model_spec="usernets:tiny", data=loader) if out else None
        if rec:
            rec.start()
        return _one_epoch(model, opt, loader, None)

    assert run(tmp_path) == run(None)


def test_a_failed_loop_without_a_planned_count_is_interrupted(user_code: Path, tmp_path: Path) -> None:
    from usernets import tiny

    with pytest.raises(KeyboardInterrupt):
        with featviz.record(tiny(), "open", out_dir=tmp_path, model_spec="usernets:tiny", data=Flips()) as rec:
            rec.step(loss=1.0)
            rec.epoch()
            raise KeyboardInterrupt
    run = Run.open(tmp_path / "open")
    assert run.epochs_done == 1 and not run.complete


def test_train_loss_comes_from_the_loop_only_when_it_gives_no_step_losses(user_code: Path, tmp_path: Path) -> None:
    from usernets import TwoHeads

    rec = featviz.record(TwoHeads(), "tl", out_dir=tmp_path, model_spec="usernets:TwoHeads", data=Flips())
    rec.start()
    rec.step()
    rec.epoch(train_loss=0.5)  # e.g. Lightning's manual optimization: the loop logs its own
    rec.step(loss=torch.tensor(2.0))
    rec.step(loss=torch.tensor([4.0], requires_grad=True))  # tensors are kept on their device until the epoch ends
    rec.epoch()
    rec.step(loss=1.0)
    with pytest.raises(ConfigError, match="recorder's own"):
        rec.epoch(train_loss=1.0)
    rec.close()
    assert [m["train_loss"] for m in Run.open(rec.run.path).metrics()] == [None, 0.5, 3.0]


class _Stream(torch.utils.data.IterableDataset):
    def __len__(self) -> int:  # a length does not make it indexable
        return 10

    def __iter__(self):
        for i in range(10):
            yield torch.full((3, 4, 4), float(i)), i % 2


def test_probe_from_an_iterable_dataset() -> None:
    from featviz.probe import take_probe

    for data, n in ((_Stream(), 4), (DataLoader(_Stream(), batch_size=3), 5)):
        x, y = take_probe(data, n)
        assert x.shape == (n, 3, 4, 4) and y.tolist() == [i % 2 for i in range(n)]
        assert x[:, 0, 0, 0].tolist() == [float(i) for i in range(n)]


def test_probe_tells_examples_from_batches_by_their_dimensions(user_code: Path, tmp_path: Path) -> None:
    """Any iterable: an image [C, H, W] is one example, [N, C, H, W] a batch (a generator of examples was read
    as batches of C images)."""
    from usernets import tiny

    from featviz.probe import take_probe

    x, y = take_probe(((torch.full((3, 4, 4), float(i)), i % 3) for i in range(10)), 4)
    assert x.shape == (4, 3, 4, 4) and y.tolist() == [0, 1, 2, 0] and x[:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    x, y = take_probe(iter([(torch.rand(3, 3, 4, 4), torch.tensor([0, 1, 2]))] * 2), 5)
    assert x.shape == (5, 3, 4, 4) and y.tolist() == [0, 1, 2, 0, 1]
    for data, message in (
        ((torch.rand(4, 4) for _ in range(3)), r"image tensors shaped \[4, 4\]; featviz reads one"),
        (iter([torch.rand(1, 2, 3, 4, 4)]), r"shaped \[1, 2, 3, 4, 4\]"),
        (iter([(torch.rand(2, 3, 4, 4), torch.tensor([0, 1, 2]))]), r"2 image\(s\) with 3 labels"),
    ):
        with pytest.raises(ConfigError, match=message):
            take_probe(data, 4)
    examples = ((Flips().x[i], i % 3) for i in range(20))
    rec = featviz.record(tiny(), "gen", out_dir=tmp_path, model_spec="usernets:tiny", data=examples, probe_size=8)
    rec.start()
    images, labels = rec.run.load_probe()
    assert images.shape == (8, 3, 12, 12) and labels.tolist() == [i % 3 for i in range(8)]


def test_a_nan_loss_is_written_as_null_and_every_file_stays_valid_json(user_code: Path, tmp_path: Path, cli) -> None:
    """A mixed-precision loop logs NaN or inf for the steps its scaler skips; Python would write NaN, which
    is not JSON (browsers' JSON.parse refuses it). Non-finite numbers are stored as null, "not measured"."""
    from usernets import TwoHeads

    rec = featviz.record(TwoHeads(), "nan", out_dir=tmp_path, model_spec="usernets:TwoHeads", data=Flips())
    rec.start()
    rec.step(loss=float("nan"))
    rec.epoch(val_acc=0.5, val_loss=float("inf"))
    rec.close()
    run = Run.open(rec.run.path)
    assert run.metrics()[1]["train_loss"] is None and run.metrics()[1]["val_loss"] is None
    assert cli(["gallery", run.path])[0] == 0

    def strict(text: str) -> None:
        json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} written into JSON"))

    for line in (run.path / "metrics.jsonl").read_text().splitlines():
        strict(line)
    html = (run.path / "gallery" / "index.html").read_text()
    assert "NaN" not in html and "Infinity" not in html
