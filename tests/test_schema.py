"""The run's types (featviz.run.schema): round trips, the checks from_json makes, and a run written by
the schema before (tests/fixtures/schema1_run, made by featviz 0.1 before run types) read, rendered
into, analyzed and shown by this version."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from featviz.config import RenderConfig
from featviz.optvis import RenderSettings
from featviz.pipeline import analyze_run, render_run
from featviz.run.check import check_run
from featviz.run.schema import (
    PROVENANCE,
    SCHEMA_VERSION,
    ConvLayer,
    DataInfo,
    RenderRecord,
    RunInfo,
    SchemaError,
    SnapshotPoint,
)
from featviz.run.store import Run

SCHEMA1 = Path(__file__).parent / "fixtures" / "schema1_run"


def test_a_trained_run_json_is_exactly_its_type(tiny_run: Run) -> None:
    """Every key featviz writes to run.json is a field of RunInfo (or provenance): none escapes the schema."""
    on_disk = json.loads((tiny_run.path / "run.json").read_text())
    info = RunInfo.from_json(on_disk)
    assert info.extra == {} and set(info.provenance) == set(PROVENANCE)
    assert info.to_json() == on_disk and on_disk["schema_version"] == SCHEMA_VERSION == 2
    assert info.data.image_channels == 3 and "channels" not in on_disk["data"]
    assert all(isinstance(la, ConvLayer) for la in info.layers) and info.layers[0].weight_shape == [4, 3, 5, 5]


def test_each_type_round_trips_through_json(tiny_run: Run) -> None:
    for layer in tiny_run.info.layers:
        assert ConvLayer.from_json(json.loads(json.dumps(layer.to_json()))) == layer
    assert DataInfo.from_json(json.loads(json.dumps(tiny_run.info.data.to_json()))) == tiny_run.info.data
    point = SnapshotPoint("step_0000064", "step", 64, None, "step 64 · epoch 0.41")
    assert SnapshotPoint(**point.to_json()) == point
    rec = RenderRecord(
        "renders/am/s/conv/epoch_001/ch_0001.png",
        "am",
        layer="conv",
        depth=1,
        channel=1,
        point="epoch_001",
        epoch=1,
        step=7,
        settings={"steps": 2},
        settings_set="s",
        activation=0.5,
    )
    assert RenderRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["layers"][0].pop("kernel"), "layer 0: kernel is missing or of the wrong type"),
        (lambda d: d["layers"][1].update(out_ch="8"), "layer 1: out_ch is missing or of the wrong type"),
        (lambda d: d["data"].update(size=-1), "data: size is missing or of the wrong type"),
        (lambda d: d["data"].pop("mean"), "data: mean is missing or of the wrong type"),
        (
            lambda d: d.update(schema_version=SCHEMA_VERSION + 1),
            f"schema {SCHEMA_VERSION + 1} is newer than this featviz",
        ),
        (lambda d: d.update(seed="0"), "seed is of the wrong type"),
        (lambda d: d["configs"]["train"].pop("epochs"), "configs must hold data, model and train sections"),
    ],
)
def test_from_json_names_the_first_problem(tiny_run: Run, edit, message: str) -> None:
    d = json.loads((tiny_run.path / "run.json").read_text())
    edit(d)
    with pytest.raises(SchemaError, match=message.replace("(", r"\(")):
        RunInfo.from_json(d)


def test_render_records_of_schema_1_read_as_schema_2() -> None:
    old = {
        "kind": "am",
        "file": "renders/am/x/conv/epoch_002/ch_0000.png",
        "layer": "conv",
        "epoch": 2,
        "settings": {"steps": 2},
        "settings_id": "x",
    }
    rec = RenderRecord.from_json(old)
    assert rec.settings_set == "x" and rec.point == "epoch_002" and "settings_id" not in rec.to_json()
    older = RenderRecord.from_json({k: v for k, v in old.items() if k != "settings_id"})  # before settings sets
    assert older.settings_set == "None-None-2st-lr0-sNone-Nonepx"


def test_a_schema_1_run_is_read_rendered_analyzed_and_shown(tmp_path: Path) -> None:
    """The migration: a run written by the version before opens as schema 2 in memory, its files stay as
    they were (the manifest still verifies), and every stage works on it."""
    path = tmp_path / "schema1"
    shutil.copytree(SCHEMA1, path)
    before = (path / "run.json").read_bytes()
    assert json.loads(before)["schema_version"] == 1 and json.loads(before)["data"]["channels"] == 3
    run = Run.open(path)
    assert run.info.schema_version == 2 and run.info.data.image_channels == 3
    assert [la.name for la in run.info.layers] == ["features.conv1", "features.conv2"]
    am = [r for r in run.render_index() if r.kind == "am"]
    assert am and all(r.settings_set and r.point for r in am)  # schema 1's settings_id, read as settings_set
    assert check_run(path).ok
    out = render_run(run, RenderConfig(moments="last", channels=(2,), device="cpu", settings=RenderSettings(steps=3)))
    assert out["am_images"] == 2 and out["settings_set"] != am[0].settings_set  # other steps: another set
    result = analyze_run(run, probe_size=16, settings_set=am[0].settings_set)
    assert result["settings_set"] == am[0].settings_set and set(result["complexity"]) == {
        "features.conv1",
        "features.conv2",
    }
    assert (path / "gallery" / "index.html").is_file() and (path / "run.json").read_bytes() == before
    assert check_run(path).ok


def test_types_are_frozen(tiny_run: Run) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny_run.info.layers[0].out_ch = 3  # type: ignore[misc]


def test_the_on_disk_dict_is_a_copy(tiny_run: Run) -> None:
    """Run.meta is run.json as a fresh dict: changing it changes neither the run's info nor the file."""
    planned = tiny_run.info.epochs_planned
    meta = tiny_run.meta
    meta["configs"]["train"]["epochs"] = planned + 5
    assert tiny_run.info.epochs_planned == planned and tiny_run.meta["configs"]["train"]["epochs"] == planned
