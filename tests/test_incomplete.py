"""No reading from a half-finished render: an interrupted render leaves its settings set marked incomplete,
and check, analyze, the claims and the gallery say what it holds instead of reading it as whole."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import featviz.render as render_stage
from featviz.config import RenderConfig
from featviz.optvis import RenderSettings
from featviz.pipeline import analyze_run, render_run
from featviz.run.check import check_run
from featviz.run.renderset import begin, finish, set_status
from featviz.run.store import Run

CFG = RenderConfig(moments="all", settings=RenderSettings(steps=3))


@pytest.fixture
def interrupted(tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """A copy of the tiny run whose render stopped after its first (moment, layer) batch: epoch 0's depth 1."""
    run = Run.open(shutil.copytree(tiny_run.path, tmp_path / "tiny"))
    real, calls = render_stage.maximize_channels, []

    def stop_after_one(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt  # the user pressed Ctrl-C
        return real(*args, **kwargs)

    monkeypatch.setattr(render_stage, "maximize_channels", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        render_run(run, CFG)
    monkeypatch.setattr(render_stage, "maximize_channels", real)
    return run


def test_the_set_is_marked_incomplete_with_what_it_holds_and_lacks(interrupted: Run) -> None:
    sid = render_stage.settings_set(interrupted, CFG)
    status = set_status(interrupted, interrupted.render_index(), sid)
    assert status["known"] and not status["complete"]
    assert status["moments"] == ["epoch_000"] and status["layers"] == ["features.conv1"] and status["images"] == 4
    assert status["missing"] == {
        "epoch_000": {"features.conv2": 8},
        "epoch_001": {"features.conv1": 4, "features.conv2": 8},
        "epoch_002": {"features.conv1": 4, "features.conv2": 8},
    }
    report = check_run(interrupted.path)
    assert report.ok and any(
        f"settings set {sid} is incomplete" in n and "epoch_002: features.conv1 4" in n for n in report.notes
    )


def test_analyze_and_the_gallery_read_only_what_is_there(interrupted: Run) -> None:
    a = analyze_run(interrupted, probe_size=30)
    assert a["settings_set_status"]["complete"] is False
    assert "cover epoch 0 only, not the last epoch (2)" in a["reading"] and "incomplete" in a["reading"]
    assert "grow more complex" not in a["reading"] and "gain spatial structure" not in a["reading"]
    html = (interrupted.path / "gallery" / "index.html").read_text()
    assert 'id="incomplete-set"' in html and "features.conv2: 8" in html
    from featviz.claims import claims

    f = next(c for c in claims(a) if c["key"] == "f")
    assert f["verdict"].startswith("not measured") and "the set holds epochs 0" in f["verdict"]


def test_finishing_the_render_completes_the_set(interrupted: Run) -> None:
    render_run(interrupted, CFG)  # reuses epoch 0's depth-1 images, renders the rest
    sid = render_stage.settings_set(interrupted, CFG)
    status = set_status(interrupted, interrupted.render_index(), sid)
    assert status["complete"] and status["missing"] == {} and status["images"] == 3 * (4 + 8)
    assert not [n for n in check_run(interrupted.path).notes if "incomplete" in n]


def test_a_set_from_before_the_state_file_is_complete_but_unknown(tiny_run, tmp_path: Path) -> None:
    run = Run.open(shutil.copytree(tiny_run.path, tmp_path / "old"))
    assert set_status(run, [], "any")["complete"] and not set_status(run, [], "any")["known"]
    begin(run, "s", {"epoch_000": {"features.conv1": [0, 1]}})
    begin(run, "s", {"epoch_000": {"features.conv1": [2]}, "epoch_001": {"features.conv1": [0]}})  # plans add up
    status = set_status(run, [], "s")
    assert status["missing"] == {"epoch_000": {"features.conv1": 3}, "epoch_001": {"features.conv1": 1}}
    finish(run, "s")
    assert not set_status(run, [], "s")["complete"]  # finished, but its images are not there: still incomplete
