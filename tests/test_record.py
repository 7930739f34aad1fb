"""featviz.record: a plain PyTorch loop writes the run featviz train writes, and is not changed by it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import featviz
from featviz.errors import ConfigError, RunError
from featviz.run.store import Run


class Flips(Dataset):
    """Random horizontal flips drawn from torch's global generator (a stream the recorder must not move)."""

    def __init__(self, n: int = 96, size: int = 12) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.rand(n, 3, size, size, generator=g)
        self.y = (self.x[:, 0].mean((1, 2)) > 0.5).long() + (self.x[:, 1].mean((1, 2)) > 0.5).long()
        self.classes = ["low", "mid", "high"]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        x = self.x[i]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.y[i]


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
    rec = featviz.record(model, "mine", out_dir=out, model_spec="usernets:tiny", data=data, **rec_options) if out else None
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
    assert [p["id"] for p in run.snapshot_points()] == [
        "epoch_000", "step_0000001", "step_0000002", "step_0000004", "epoch_001", "epoch_002"]
    metrics = run.metrics()
    assert [m["step"] for m in metrics] == [0, 6, 12] and metrics[2]["val_acc"] == 0.5
    assert metrics[1]["train_loss"] == pytest.approx(sum(losses[:6]) / 6)
    # layers in forward-execution order, with the geometry of the user's network
    layers = run.meta["layers"]
    assert [la["name"] for la in layers] == ["stem", "grouped", "depthwise", "down"]
    assert [la["groups"] for la in layers] == [1, 2, 8, 1]
    assert [la["response"] for la in layers] == ["bn", "grouped", "depthwise", "down"]
    assert [la["rf_px"] for la in layers] == [3, 5, 7, 9]  # 3, +2, +2, +2 (the stride widens only what comes after)
    assert run.meta["data"]["classes"] == ["low", "mid", "high"] and run.meta["data"]["size"] == 12
    images, labels = run.load_probe()
    assert images.dtype == torch.uint8 and images.shape == (96, 3, 12, 12) and labels.tolist()[:3] == Flips().y[:3].tolist()
    code, out, err = cli(["check", run.path])
    assert code == 0, err
    code, out, err = cli(["render", run.path, "--steps", "4", "--model", "usernets:tiny"])
    assert code == 0, err
    code, out, err = cli(["analyze", run.path, "--probe", "32", "--model", "usernets:tiny"])
    assert code == 0, err
    analysis = json.loads((run.path / "analysis.json").read_text())
    assert analysis["probe_images"] == 32 and set(analysis["faithfulness"]) >= {"stem", "down"}
    assert (run.path / "gallery" / "index.html").is_file()
    assert len(list((run.path / "renders" / "am").rglob("ch_*.png"))) == (8 + 8 + 8 + 16) * 5  # init, steps 2 and 4, epochs 1 and 2


def test_a_failed_loop_keeps_committed_epochs(user_code: Path, tmp_path: Path) -> None:
    from usernets import tiny

    model = tiny()
    with pytest.raises(RuntimeError):
        with featviz.record(model, "crash", out_dir=tmp_path, model_spec="usernets:tiny", data=Flips(), epochs=5) as rec:
            for _ in range(3):
                rec.step(loss=1.0)
            rec.epoch()
            rec.step(loss=1.0)
            raise RuntimeError("out of memory, say")
    run = Run.open(tmp_path / "crash")
    assert run.epochs_done == 1 and not run.complete
    assert [p["id"] for p in run.snapshot_points()] == ["epoch_000", "step_0000001", "step_0000002", "epoch_001"]
    assert not run.step_snapshot_file(4).exists()


def test_a_spec_that_builds_another_network_is_refused(user_code: Path, tmp_path: Path) -> None:
    from usernets import tiny

    with pytest.raises(ConfigError, match="builds a different network"):
        featviz.record(tiny(width=4), "x", out_dir=tmp_path, model_spec="usernets:tiny", data=Flips()).start()
    with pytest.raises(ConfigError, match="needs data"):
        featviz.record(tiny(), "y", out_dir=tmp_path, model_spec="usernets:tiny")
    with pytest.raises(ConfigError, match="model_spec"):
        featviz.record(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).__class__.__new__(_Local), "z", out_dir=tmp_path,
                       data=Flips())


class _Local(torch.nn.Module):
    pass


_Local.__module__ = "__main__"


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


def test_recorder_edge_cases(user_code: Path, tmp_path: Path, cli) -> None:
    from usernets import MLP, TwoHeads, tiny

    with torch.no_grad():  # started inside no_grad (an evaluation block): the layer trace still works
        rec = featviz.record(TwoHeads(), "heads", out_dir=tmp_path, model_spec="usernets:TwoHeads", data=Flips())
        rec.start()
    assert [la["name"] for la in rec.run.meta["layers"]] == ["conv", "mix"]  # the shared conv once, first call
    rec.step(loss=1.0)
    rec.epoch()  # no metrics at all
    with pytest.raises(ConfigError, match="recorder's own"):
        rec.epoch(epoch=3)
    with pytest.warns(UserWarning, match="not a number"):
        rec.epoch(note="fine")
    assert Run.open(rec.run.path).metrics()[-1]["epoch"] == 2 and not Run.open(rec.run.path).complete  # still recording
    code, out, err = cli(["runs", "--out", tmp_path])
    assert code == 0 and "heads" in out and "interrupted" in out and " - " in out  # no val_acc: a dash
    rec.close()
    assert Run.open(rec.run.path).complete and Run.open(rec.run.path).epochs_planned == 2
    with pytest.raises(RunError, match="is closed: the run ended with epoch 2"):
        rec.epoch()  # after close: nothing more is committed (it once went on to epoch 3)
    with pytest.raises(RunError, match="is closed"):
        rec.step(loss=1.0)
    assert Run.open(rec.run.path).epochs_done == 2
    with pytest.raises(ConfigError, match="no Conv2d"):
        featviz.record(MLP(), "mlp", out_dir=tmp_path, model_spec="usernets:MLP", data=Flips()).start()
    with pytest.raises(ConfigError, match="JSON values"):
        featviz.record(tiny(), "kw", out_dir=tmp_path, model_spec="usernets:tiny", data=Flips(),
                       model_kwargs={"dtype": torch.float32})
    assert not (tmp_path / "mlp").exists() and not (tmp_path / "kw").exists()
    images = torch.rand(20, 3, 12, 12)
    rec = featviz.record(tiny(), "bare", out_dir=tmp_path, model_spec="usernets:tiny",
                         data=torch.utils.data.TensorDataset(images))  # 1-tuples: images without labels
    rec.start()
    assert rec.run.load_probe()[1].tolist() == [-1] * 20


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
    from featviz.record import take_probe

    for data, n in ((_Stream(), 4), (DataLoader(_Stream(), batch_size=3), 5)):
        x, y = take_probe(data, n)
        assert x.shape == (n, 3, 4, 4) and y.tolist() == [i % 2 for i in range(n)]
        assert x[:, 0, 0, 0].tolist() == [float(i) for i in range(n)]


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


def test_recorder_arguments_are_checked_before_the_loop(user_code: Path, tmp_path: Path) -> None:
    from usernets import tiny

    x, y = torch.rand(8, 3, 12, 12), torch.zeros(8, dtype=torch.long)
    ok = dict(out_dir=tmp_path, model_spec="usernets:tiny")
    for kwargs, message in (
        (dict(model=None, data=x), "needs the torch.nn.Module being trained, got NoneType"),
        (dict(data=x, probe_size=0), "probe_size must be an integer >= 1, got 0"),
        (dict(data=x, epochs="3"), "epochs must be an integer >= 1, got '3'"),
        (dict(data=x, classes="abcd"), "classes must be a list of class names"),
    ):
        with pytest.raises(ConfigError, match=message):
            featviz.record(kwargs.pop("model", tiny()), "bad", **ok, **kwargs)
    for data, message in ((x[:0], "data has 0 images"), ((x, y[:3]), "data has 8 images and 3 labels")):
        with pytest.raises(ConfigError, match=message):
            featviz.record(tiny(), "bad", **ok, data=data).start()
    rec = featviz.record(tiny(), "steps", **ok, data=(x, y))
    with pytest.raises(RunError, match="not started"):
        rec.step(loss=1.0)
    rec.start()
    for loss in ("abc", torch.tensor([1.0, 2.0])):
        with pytest.raises(ConfigError, match="takes one number or a one-element tensor"):
            rec.step(loss=loss)
    rec.step(loss=2.0)
    rec.epoch()
    rec.close()
    assert [m["train_loss"] for m in Run.open(rec.run.path).metrics()] == [None, 2.0]
    assert not (tmp_path / "bad").exists()


def test_a_recorder_starts_once(user_code: Path, tmp_path: Path) -> None:
    """A second `with` on a finished recorder once replaced the run (force=True) by an empty interrupted one."""
    from usernets import TwoHeads

    rec = featviz.record(TwoHeads(), "once", out_dir=tmp_path, model_spec="usernets:TwoHeads", data=Flips(), force=True)
    with rec:
        rec.step(loss=1.0)
        rec.epoch(val_acc=0.5)

    def files() -> dict[str, bytes]:
        return {str(p.relative_to(tmp_path)): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    before = files()
    with pytest.raises(RunError, match="a recorder starts once"):
        with rec:
            pytest.fail("the block of a second start ran")
    with pytest.raises(RunError, match="a recorder starts once"):
        rec.start()
    assert files() == before
    assert Run.open(tmp_path / "once").complete and Run.open(tmp_path / "once").epochs_done == 1


def test_featviz_own_metric_fields_are_refused(user_code: Path, tmp_path: Path) -> None:
    """`label` names a snapshot and `checkpoint` an imported file: a number there once broke featviz render."""
    from usernets import TwoHeads

    with featviz.record(TwoHeads(), "own", out_dir=tmp_path, model_spec="usernets:TwoHeads", data=Flips()) as rec:
        rec.step(loss=1.0)
        for field in ("label", "checkpoint"):
            with pytest.raises(ConfigError, match=f"rec.epoch\\({field}=...\\): '{field}' is the recorder's own"):
                rec.epoch(**{field: 2.0})
        rec.epoch(val_acc=0.5)  # the refused calls counted nothing
    metrics = Run.open(tmp_path / "own").metrics()
    assert [m["epoch"] for m in metrics] == [0, 1] and not any("label" in m or "checkpoint" in m for m in metrics)


def test_a_model_that_changes_its_tensors_is_refused_at_the_snapshot(user_code: Path, tmp_path: Path) -> None:
    """Every snapshot must load into the run's one network: a replaced layer or a new dtype is refused, and
    the refused snapshot is not written (the committed epochs stay valid)."""
    from usernets import TwoHeads

    model = TwoHeads()
    with pytest.raises(ConfigError, match=r"conv.weight is \[6, 3, 3, 3\] float32, was \[4, 3, 3, 3\] float32.*"
                                          r"epoch 2 snapshot was not written"):
        with featviz.record(model, "grown", out_dir=tmp_path, model_spec="usernets:TwoHeads", data=Flips(),
                            snapshots="epoch") as rec:
            rec.step(loss=1.0)
            rec.epoch()
            model.conv = torch.nn.Conv2d(3, 6, 3, padding=1)  # other channels between two epochs
            rec.step(loss=1.0)
            rec.epoch()
    run = Run.open(tmp_path / "grown")
    assert run.epochs_done == 1 and not run.complete and not run.snapshot_file(2).exists()
    assert [p["id"] for p in run.snapshot_points()] == ["epoch_000", "epoch_001"]

    model = TwoHeads()
    rec = featviz.record(model, "halved", out_dir=tmp_path, model_spec="usernets:TwoHeads", data=Flips(),
                         snapshots="every:1")
    rec.start()
    rec.step(loss=1.0)
    model.half()
    with pytest.raises(ConfigError, match=r"conv.weight is \[4, 3, 3, 3\] float16, was \[4, 3, 3, 3\] float32.*"
                                          r"step 2 snapshot was not written"):
        rec.step(loss=1.0)
    assert rec.step_count == 1 and len(rec.losses) == 1 and not rec.run.step_snapshot_file(2).exists()


def _run_with_another_network_at_epoch_2(tmp_path: Path) -> Run:
    """A recorded run whose epoch 2 snapshot holds a wider conv (written by hand, as an unchecked recorder did)."""
    from usernets import TwoHeads

    from featviz.run.fileio import save_tensors

    model = TwoHeads()
    with featviz.record(model, "changed", out_dir=tmp_path, model_spec="usernets:TwoHeads", data=Flips(),
                        snapshots="epoch") as rec:
        rec.step(loss=1.0)
        rec.epoch()
    run = Run.open(rec.run.path)
    model.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
    save_tensors(run.snapshot_file(2), model.state_dict())
    run.write_metrics(run.metrics() + [{"epoch": 2, "step": 2, "train_loss": None, "wall_s": 0.0}])
    run.write_manifest(2)
    return Run.open(run.path)


def test_render_names_a_snapshot_of_another_network(user_code: Path, tmp_path: Path, cli) -> None:
    """Render treats a snapshot that does not fit the run's network as a damaged one: set aside and named
    (``loading.fitting``), a one-line error where it is asked for, never an unexpected RuntimeError; the
    other snapshots still render and analyze."""
    from featviz import render
    from featviz.config import RenderConfig
    from featviz.loading import allow, fitting

    run = _run_with_another_network_at_epoch_2(tmp_path)
    code, out, err = cli(["render", run.path, "--steps", "2", "--size", "12", "--model", "usernets:TwoHeads"])
    assert code == 1 and len(err.splitlines()) == 1 and "unexpected" not in err, err
    assert "snapshots/epoch_002.safetensors does not fit the run's network: conv.weight is [6, 3, 3, 3]" in err
    allow(run, "usernets:TwoHeads")
    points = run.snapshot_points()
    snaps, bad = fitting(run, *run.load_points(points))
    assert set(snaps) == {"epoch_000", "epoch_001"} and list(bad) == ["epoch_002"]
    assert "conv.weight is [6, 3, 3, 3] in it, [4, 3, 3, 3] in the run's network" in bad["epoch_002"]
    assert render.render_filters(run, run.meta["layers"], points, snaps) > 0
    assert not [r for r in run.render_index() if "epoch_002" in r["file"]]
    cfg = RenderConfig(steps=2, size=12, filters=False)
    with pytest.raises(RunError, match=r"epoch_002.safetensors does not fit the run's network: conv.weight is \[6"):
        render.render_actmax(run, run.meta["layers"], points[-1:], cfg, torch.device("cpu"))
    code, out, err = cli(["render", run.path, "--steps", "2", "--size", "12", "--epochs", "0,1",
                          "--model", "usernets:TwoHeads"])
    assert code == 0 and "epoch_002 left out of the filter images" in err, err
    result = featviz.analyze_run(run, probe_size=10)
    assert list(result["skipped_epochs"]) == ["2"] and result["epochs"] == [0, 1]


def test_a_model_on_the_meta_device_is_refused_before_the_run_exists(user_code: Path, tmp_path: Path) -> None:
    from usernets import tiny

    with torch.device("meta"):
        model = tiny()
    with pytest.raises(ConfigError, match="stem.weight is on the meta device"):
        with featviz.record(model, "meta", out_dir=tmp_path, model_spec="usernets:tiny", data=Flips()):
            pytest.fail("recording started")
    assert not (tmp_path / "meta").exists()


def test_probe_tells_examples_from_batches_by_their_dimensions(user_code: Path, tmp_path: Path) -> None:
    """Any iterable: an image [C, H, W] is one example, [N, C, H, W] a batch (a generator of examples was read
    as batches of C images)."""
    from usernets import tiny

    from featviz.record import take_probe

    x, y = take_probe(((torch.full((3, 4, 4), float(i)), i % 3) for i in range(10)), 4)
    assert x.shape == (4, 3, 4, 4) and y.tolist() == [0, 1, 2, 0] and x[:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    x, y = take_probe(iter([(torch.rand(3, 3, 4, 4), torch.tensor([0, 1, 2]))] * 2), 5)
    assert x.shape == (5, 3, 4, 4) and y.tolist() == [0, 1, 2, 0, 1]
    for data, message in (((torch.rand(4, 4) for _ in range(3)), r"image tensors shaped \[4, 4\]; featviz reads one"),
                          (iter([torch.rand(1, 2, 3, 4, 4)]), r"shaped \[1, 2, 3, 4, 4\]"),
                          (iter([(torch.rand(2, 3, 4, 4), torch.tensor([0, 1, 2]))]), r"2 image\(s\) with 3 labels")):
        with pytest.raises(ConfigError, match=message):
            take_probe(data, 4)
    examples = ((Flips().x[i], i % 3) for i in range(20))
    rec = featviz.record(tiny(), "gen", out_dir=tmp_path, model_spec="usernets:tiny", data=examples, probe_size=8)
    rec.start()
    images, labels = rec.run.load_probe()
    assert images.shape == (8, 3, 12, 12) and labels.tolist() == [i % 3 for i in range(8)]


def test_a_nested_recorder_of_the_same_run_is_refused(user_code: Path, tmp_path: Path) -> None:
    """A second ``featviz.record(..., force=True)`` of the same run inside the first gave a run mixing both
    models' epochs that check called ok: the first holds the run's writer lock until it closes."""
    from usernets import tiny

    outer_model, inner_model = tiny(), tiny()
    with featviz.record(outer_model, "x", out_dir=tmp_path, model_spec="usernets:tiny", data=Flips(), force=True) as rec:
        with pytest.raises(RunError, match=r"run .*x is being written by pid \d+"):
            with featviz.record(inner_model, "x", out_dir=tmp_path, model_spec="usernets:tiny", data=Flips(),
                                force=True):
                pytest.fail("the nested recorder started")
        rec.step(loss=1.0)
        rec.epoch()
    from featviz.run.check import check_run

    rep = check_run(tmp_path / "x")
    assert rep.ok and rep.epochs_done == 1, rep.problems
    with featviz.record(inner_model, "x", out_dir=tmp_path, model_spec="usernets:tiny", data=Flips(),
                        force=True) as rec:  # once the first has closed, force replaces it
        rec.epoch()
    assert check_run(tmp_path / "x").ok
