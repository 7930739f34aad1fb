"""Renders with BatchNorm statistics recomputed on the probe images (the default) or the snapshot's own:
the network each moment is rendered with, the settings set ids, and the errors."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

import featviz.render as render_stage
from featviz.config import RenderConfig
from featviz.errors import ConfigError
from featviz.loading import build_run_model, probe_images
from featviz.model import recalibrate_batchnorm
from featviz.optvis import RenderSettings
from featviz.pipeline import render_run
from featviz.run.store import Run

FAST = dict(settings=RenderSettings(steps=4, chunk=64), filters=False, moments="0")


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Run:
    shutil.copytree(tiny_run.path, tmp_path / "tiny")
    return Run.open(tmp_path / "tiny")


def _bn_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b.detach().cpu().clone() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))]


@pytest.fixture
def rendered_with(monkeypatch: pytest.MonkeyPatch):
    """Renders with ``maximize_channels`` watched: the BatchNorm buffers of every network it was given."""
    seen: list[list[torch.Tensor]] = []
    real = render_stage.maximize_channels

    def watch(model, *args, **kwargs):
        seen.append(_bn_buffers(model))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(render_stage, "maximize_channels", watch)
    return seen


def test_the_init_is_rendered_with_the_probe_statistics_by_default(run_copy: Run, rendered_with) -> None:
    """At the init the stored statistics are 0 and 1; the default render recomputes them on the probe
    images, exactly as analyze does before measuring."""
    summary = render_run(run_copy, RenderConfig(**FAST))
    assert summary["settings_set"].endswith("-bnprobe")
    want = build_run_model(run_copy)
    want.load_state_dict(run_copy.load_snapshot(0))
    stored = _bn_buffers(want)
    assert all(torch.all(b == 0) or torch.all(b == 1) for b in stored)  # the init's own statistics
    recalibrate_batchnorm(want, probe_images(run_copy)[0][: render_stage.PROBE_IMAGES])
    assert rendered_with and all(
        torch.allclose(got, exp, atol=1e-6) for buffers in rendered_with for got, exp in zip(buffers, _bn_buffers(want))
    )
    recs = [r for r in run_copy.render_index() if r.kind == "am"]
    assert recs and all(r.settings["batchnorm"] == "probe" for r in recs)


def test_stored_statistics_keep_the_earlier_settings_set(run_copy: Run, rendered_with) -> None:
    summary = render_run(run_copy, RenderConfig(batchnorm="stored", **FAST))
    assert not summary["settings_set"].endswith("-bnprobe") and summary["settings_set"].endswith("px")
    want = build_run_model(run_copy)
    want.load_state_dict(run_copy.load_snapshot(0))
    assert all(torch.equal(got, exp) for buffers in rendered_with for got, exp in zip(buffers, _bn_buffers(want)))
    assert all("batchnorm" not in r.settings for r in run_copy.render_index() if r.kind == "am")


def test_both_sets_live_side_by_side_and_the_probe_set_is_the_default(run_copy: Run) -> None:
    from featviz.run.renderset import choose_settings_set

    default = dict(FAST, settings=RenderSettings())  # the default settings: the choice falls on them
    a = render_run(run_copy, RenderConfig(batchnorm="stored", **default))["settings_set"]
    assert choose_settings_set(run_copy.render_index(), 16) == a  # only the stored one so far
    b = render_run(run_copy, RenderConfig(**default))["settings_set"]
    assert b == a + "-bnprobe"
    assert choose_settings_set(run_copy.render_index(), 16) == b


def test_probe_statistics_need_the_validation_images(run_copy: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from featviz.errors import DataError

    def fail(_run):
        raise DataError("data folder /nowhere is missing")

    monkeypatch.setattr(render_stage, "probe_images", fail)
    with pytest.raises(
        ConfigError, match="--batchnorm probe needs the run's validation images.*use --batchnorm stored"
    ):
        render_stage.resolve_batchnorm(run_copy, RenderConfig(batchnorm="probe"))
    auto = render_stage.resolve_batchnorm(run_copy, RenderConfig())
    assert auto.batchnorm == "stored"  # auto falls back, and the set id says so


def test_a_network_without_batchnorm_has_nothing_to_recompute(run_copy: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render_stage, "build_run_model", lambda run: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))
    assert render_stage.resolve_batchnorm(run_copy, RenderConfig(batchnorm="probe")).batchnorm == "stored"
    assert render_stage.resolve_batchnorm(run_copy, dataclasses.replace(RenderConfig())).batchnorm == "stored"


def test_cli_rejects_an_unknown_batchnorm(run_copy: Run, cli) -> None:
    code, _out, err = cli(["render", run_copy.path, "--batchnorm", "running"])
    assert code != 0 and "unknown batchnorm 'running'; choose one of auto, probe, stored" in err
    assert "Traceback" not in err
