"""featviz.record refuses what would leave a wrong run: another network, bad arguments, a second start.

A closed or nested recorder is refused too. That a plain loop writes the run featviz train writes, and is
not changed by it: test_record_loop.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import featviz
from featviz.errors import ConfigError, RunError
from featviz.run.store import Run
from record_data import Flips


def test_a_spec_that_builds_another_network_is_refused(user_code: Path, tmp_path: Path) -> None:
    from usernets import tiny

    with pytest.raises(ConfigError, match="builds a different network"):
        featviz.record(tiny(width=4), "x", out_dir=tmp_path, model_spec="usernets:tiny", data=Flips()).start()
    with pytest.raises(ConfigError, match="needs data"):
        featviz.record(tiny(), "y", out_dir=tmp_path, model_spec="usernets:tiny")
    with pytest.raises(ConfigError, match="model_spec"):
        featviz.record(
            torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).__class__.__new__(_Local), "z", out_dir=tmp_path, data=Flips()
        )


class _Local(torch.nn.Module):
    pass


_Local.__module__ = "__main__"


def test_recorder_edge_cases(user_code: Path, tmp_path: Path, cli) -> None:
    from usernets import MLP, TwoHeads, tiny

    with torch.no_grad():  # started inside no_grad (an evaluation block): the layer trace still works
        rec = featviz.record(TwoHeads(), "heads", out_dir=tmp_path, model_spec="usernets:TwoHeads", data=Flips())
        rec.start()
    assert [la.name for la in rec.run.info.layers] == ["conv", "mix"]  # the shared conv once, first call
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
        featviz.record(
            tiny(),
            "kw",
            out_dir=tmp_path,
            model_spec="usernets:tiny",
            data=Flips(),
            model_kwargs={"dtype": torch.float32},
        )
    assert not (tmp_path / "mlp").exists() and not (tmp_path / "kw").exists()
    images = torch.rand(20, 3, 12, 12)
    rec = featviz.record(
        tiny(), "bare", out_dir=tmp_path, model_spec="usernets:tiny", data=torch.utils.data.TensorDataset(images)
    )  # 1-tuples: images without labels
    rec.start()
    assert rec.run.load_probe()[1].tolist() == [-1] * 20


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
    with pytest.raises(
        ConfigError,
        match=r"conv.weight is \[6, 3, 3, 3\] float32, was \[4, 3, 3, 3\] float32.*"
        r"epoch 2 snapshot was not written",
    ):
        with featviz.record(
            model, "grown", out_dir=tmp_path, model_spec="usernets:TwoHeads", data=Flips(), snapshots="epoch"
        ) as rec:
            rec.step(loss=1.0)
            rec.epoch()
            model.conv = torch.nn.Conv2d(3, 6, 3, padding=1)  # other channels between two epochs
            rec.step(loss=1.0)
            rec.epoch()
    run = Run.open(tmp_path / "grown")
    assert run.epochs_done == 1 and not run.complete and not run.snapshot_file(2).exists()
    assert [p.id for p in run.snapshot_points()] == ["epoch_000", "epoch_001"]

    model = TwoHeads()
    rec = featviz.record(
        model, "halved", out_dir=tmp_path, model_spec="usernets:TwoHeads", data=Flips(), snapshots="every:1"
    )
    rec.start()
    rec.step(loss=1.0)
    model.half()
    with pytest.raises(
        ConfigError,
        match=r"conv.weight is \[4, 3, 3, 3\] float16, was \[4, 3, 3, 3\] float32.*"
        r"step 2 snapshot was not written",
    ):
        rec.step(loss=1.0)
    assert rec.step_count == 1 and len(rec.losses) == 1 and not rec.run.step_snapshot_file(2).exists()


def _run_with_another_network_at_epoch_2(tmp_path: Path) -> Run:
    """A recorded run whose epoch 2 snapshot holds a wider conv (written by hand, as an unchecked recorder did)."""
    from usernets import TwoHeads

    from featviz.run.fileio import save_tensors

    model = TwoHeads()
    with featviz.record(
        model, "changed", out_dir=tmp_path, model_spec="usernets:TwoHeads", data=Flips(), snapshots="epoch"
    ) as rec:
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
    from featviz.optvis import RenderSettings

    run = _run_with_another_network_at_epoch_2(tmp_path)
    code, out, err = cli(["render", run.path, "--steps", "2", "--size", "12", "--model", "usernets:TwoHeads"])
    assert code == 1 and len(err.splitlines()) == 1 and "unexpected" not in err, err
    assert "snapshots/epoch_002.safetensors does not fit the run's network: conv.weight is [6, 3, 3, 3]" in err
    allow(run, "usernets:TwoHeads")
    points = run.snapshot_points()
    snaps, bad = fitting(run, *run.load_points(points))
    assert set(snaps) == {"epoch_000", "epoch_001"} and list(bad) == ["epoch_002"]
    assert "conv.weight is [6, 3, 3, 3] in it, [4, 3, 3, 3] in the run's network" in bad["epoch_002"]
    assert render.draw_filters(run, run.info.layers, points, snaps) > 0
    assert not [r for r in run.render_index() if "epoch_002" in r.file]
    cfg = RenderConfig(filters=False, settings=RenderSettings(steps=2, size=12))
    with pytest.raises(RunError, match=r"epoch_002.safetensors does not fit the run's network: conv.weight is \[6"):
        render.maximize_layers(run, run.info.layers, points[-1:], cfg, torch.device("cpu"))
    code, out, err = cli(
        ["render", run.path, "--steps", "2", "--size", "12", "--moments", "0,1", "--model", "usernets:TwoHeads"]
    )
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


def test_a_nested_recorder_of_the_same_run_is_refused(user_code: Path, tmp_path: Path) -> None:
    """A second ``featviz.record(..., force=True)`` of the same run inside the first gave a run mixing both
    models' epochs that check called ok: the first holds the run's writer lock until it closes."""
    from usernets import tiny

    outer_model, inner_model = tiny(), tiny()
    with featviz.record(
        outer_model, "x", out_dir=tmp_path, model_spec="usernets:tiny", data=Flips(), force=True
    ) as rec:
        with pytest.raises(RunError, match=r"run .*x is being written by pid \d+"):
            with featviz.record(
                inner_model, "x", out_dir=tmp_path, model_spec="usernets:tiny", data=Flips(), force=True
            ):
                pytest.fail("the nested recorder started")
        rec.step(loss=1.0)
        rec.epoch()
    from featviz.run.check import check_run

    rep = check_run(tmp_path / "x")
    assert rep.ok and rep.epochs_done == 1, rep.problems
    with featviz.record(
        inner_model, "x", out_dir=tmp_path, model_spec="usernets:tiny", data=Flips(), force=True
    ) as rec:  # once the first has closed, force replaces it
        rec.epoch()
    assert check_run(tmp_path / "x").ok
