"""featviz export --tensorboard: events read back with TensorBoard's own reader."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from featviz.config import RenderConfig
from featviz.optvis import RenderSettings
from featviz.pipeline import analyze_run, render_run
from featviz.run.store import Run

pytest.importorskip("tensorboard", reason="the tensorboard package is missing: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> tuple[Run, Path]:
    dst = tmp_path_factory.mktemp("export") / "tiny"
    shutil.copytree(tiny_run.path, dst)
    run = Run.open(dst)
    render_run(run, RenderConfig(settings=RenderSettings(steps=3)))
    analyze_run(run, probe_size=20)
    return run, dst.parent / "tb"


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_export_writes_metrics_analysis_images_and_histograms(exported, cli) -> None:
    run, out = exported
    code, stdout, err = cli(["export", run.path, "--tensorboard", out])
    assert code == 0, err
    acc = _events(out)
    tags = acc.Tags()
    steps = [p.step for p in run.snapshot_points()]  # 0, 1, 2, 4, 7, 14
    assert {"train/loss", "val/acc", "lr"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("val/acc")] == [0, 7, 14]
    assert [round(e.value, 6) for e in acc.Scalars("val/acc")] == [round(r["val_acc"], 6) for r in run.metrics()]
    assert [e.step for e in acc.Scalars("rotation_from_init/features.conv1")] == steps
    assert [e.step for e in acc.Scalars("cka_to_final/features.conv2")] == steps
    assert {e.step for e in acc.Scalars("am_incompressibility/features.conv1")} == {0, 2, 4, 7, 14}  # the moments
    assert {e.step for e in acc.Scalars("am_structure_bits/features.conv1")} == {0, 2, 4, 7, 14}
    for view in ("filters", "filters_learned"):
        imgs = acc.Images(f"{view}/features.conv1")
        assert [e.step for e in imgs] == steps
        png = run.path / (
            f"renders/filters/features.conv1/{'learned/' if view == 'filters_learned' else ''}epoch_002.png"
        )
        from PIL import Image

        w, h = Image.open(png).size
        assert (imgs[-1].width, imgs[-1].height) == (w, h)
    assert [e.step for e in acc.Images("actmax/features.conv2")] == [0, 2, 4, 7, 14]
    assert [e.step for e in acc.Histograms("weights/features.conv2")] == steps
    assert "histograms" in stdout + err


def test_export_without_tensorboard_says_how_to_install(exported, cli, monkeypatch, tmp_path: Path) -> None:
    import builtins

    real = builtins.__import__

    def no_tb(name, *a, **k):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    run, _ = exported
    code, _, err = cli(["export", run.path, "--tensorboard", tmp_path / "tb"])
    assert code != 0 and "pip install 'featviz[tensorboard]'" in err and len(err.strip().splitlines()) == 1


def test_export_into_a_file_is_one_line(exported, cli, tmp_path: Path) -> None:
    run, _ = exported
    f = tmp_path / "a-file"
    f.write_text("x")
    code, _, err = cli(["export", run.path, "--tensorboard", f])
    assert code != 0 and "is a file" in err and len(err.strip().splitlines()) == 1
