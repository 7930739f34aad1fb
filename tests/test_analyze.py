"""featviz analyze: the numbers, the plots, the reading and the gallery section, on a tiny run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from featviz.analyze import analyze_run, effective_receptive_field
from featviz.config import RenderConfig
from featviz.errors import RunError
from featviz.gallery.build import build_gallery
from featviz.reading import first_epoch_above
from featviz.render import render_run
from featviz.store import Run


@pytest.fixture(scope="module")
def analyzed(tiny_run, tmp_path_factory) -> tuple[Run, dict]:
    dst = tmp_path_factory.mktemp("analyzed") / "tiny"
    shutil.copytree(tiny_run.path, dst)
    run = Run.open(dst)
    render_run(run, RenderConfig(epochs="all", steps=6))
    return run, analyze_run(run, probe_size=40)


def test_analysis_sections_hold_checked_values(analyzed) -> None:
    run, a = analyzed
    assert a["epochs"] == [0, 1, 2] and a["layers"] == ["features.conv1", "features.conv2"]
    on_disk = json.loads((run.path / "analysis.json").read_text())
    assert on_disk["layers"] == a["layers"]
    for name in a["layers"]:
        upd = a["filter_updates"][name]
        assert upd["relative_change"][0] is None and all(v > 0 for v in upd["relative_change"][1:])
        assert upd["rotation_from_init"][0] == pytest.approx(0.0, abs=1e-12)
        assert upd["rotation_from_init"][-1] > 0  # backprop moved the filters
        cka = a["convergence"][name]["cka_to_final"]
        assert len(cka) == 3 and cka[-1] == pytest.approx(1.0)
        rf = a["receptive_field"][name]
        assert 0 < rf["effective_px_epoch_2"] <= rf["theoretical_px"]
        comp = a["complexity"][name]
        assert set(comp) == {"0", "1", "2"} and comp["2"]["bpp"]["n"] == run.meta["layers"][a["layers"].index(name)]["out_ch"]
        rows = a["faithfulness"][name]["channels"]
        assert len(rows) == len(a["faithfulness"][name]["channels"]) > 0
        for row in rows:
            assert (run.path / row["file"]).is_file() and len(row["top"]) == 9
    assert a["receptive_field"]["features.conv1"]["theoretical_px"] == 5
    assert a["probe_images"] == 40


def test_plots_and_reading_come_from_the_numbers(analyzed) -> None:
    run, a = analyzed
    for key in ("weight_change", "cka", "complexity", "receptive_field"):
        assert (run.path / f"analysis/{key}.png").stat().st_size > 1000
        assert (run.path / f"analysis/{key}.svg").read_text().lstrip().startswith("<?xml")
    rot = a["filter_updates"]["features.conv2"]["rotation_from_init"][-1]
    assert f"{rot:.2f}" in a["reading"] and "features.conv2" in a["reading"]
    html = Path(build_gallery(run)).read_text()
    assert 'id="what-changed"' in html and "../analysis/cka.png" in html and "top9/features.conv1/ch_0000.png" in html


def test_first_epoch_above_needs_every_later_value() -> None:
    assert first_epoch_above([0.1, 0.95, 0.8, 0.92, 1.0], 0.9, [0, 1, 2, 3, 4]) == 3
    assert first_epoch_above([0.1, 0.2], 0.9, [0, 1]) is None


def test_missing_renders_say_which_command(tiny_run, tmp_path: Path) -> None:
    dst = tmp_path / "plain"
    shutil.copytree(tiny_run.path, dst)
    a = analyze_run(Run.open(dst), probe_size=20)
    assert "featviz render" in a["complexity"]["skipped"] and "featviz render" in a["faithfulness"]["skipped"]
    assert not (dst / "analysis/complexity.png").exists()  # no empty plot
    assert "nan" not in json.dumps(a).lower()


def test_one_epoch_run_is_analyzed(tiny_cfgs, tmp_path: Path) -> None:
    import dataclasses

    from featviz.pipeline import train_run

    data, model, train = tiny_cfgs
    run = train_run(data, model, dataclasses.replace(train, epochs=1), out_dir=tmp_path, name="one")
    a = analyze_run(run, probe_size=20)
    assert a["epochs"] == [0, 1]
    assert a["convergence"]["features.conv1"]["cka_to_final"][-1] == pytest.approx(1.0)
    bits = a["filter_updates"]["features.conv1"]["filter_bits_per_weight"]
    assert len(bits) == 2 and all(0 < b < 9 for b in bits)  # at most ~8 bits per 8-bit weight plus zlib overhead


def test_step_snapshots_give_step_level_cka(tiny_cfgs, tmp_path: Path) -> None:
    import dataclasses

    from featviz.pipeline import train_run

    data, model, train = tiny_cfgs
    run = train_run(data, model, dataclasses.replace(train, snapshot_every_steps=3), out_dir=tmp_path, name="steps")
    assert run.snapshot_steps() == [3, 6, 9, 12]  # 7 batches per epoch; epoch ends (7, 14) are epoch snapshots
    a = analyze_run(run, probe_size=20)
    by = a["convergence"]["features.conv2"]["by_step"]
    assert by["steps"] == [0, 3, 6, 7, 9, 12, 14] and by["cka_to_final"][-1] == pytest.approx(1.0)
    assert a["steps_per_epoch"] == 7 and "in optimizer steps" in a["reading"]
    assert (run.path / "analysis/cka.png").is_file()


def test_run_without_trained_epoch_is_a_clear_error(tiny_run, tmp_path: Path) -> None:
    dst = tmp_path / "init-only"
    shutil.copytree(tiny_run.path, dst)
    man = json.loads((dst / "manifest.json").read_text())
    man["epochs_done"] = 0
    (dst / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(RunError, match="0 trained epochs"):
        analyze_run(Run.open(dst))


def test_dead_layer_gives_zero_field_not_nan() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    nn.init.zeros_(model[0].weight)
    out = effective_receptive_field(model, "0", torch.randn(4, 3, 16, 16))
    assert out["effective_px"] == 0


def test_cli_analyze(analyzed, cli, tmp_path: Path) -> None:
    run, _ = analyzed
    code, out, err = cli(["analyze", run.path, "--probe", "30"])
    assert code == 0 and "features.conv1" in out and "analysis.json" in err
    code, out, err = cli(["analyze", tmp_path])
    assert code != 0 and err.strip().startswith("featviz: error:") and len(err.strip().splitlines()) == 1
