"""featviz analyze: the numbers, the plots, the reading and the gallery section, on a tiny run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from featviz.config import RenderConfig
from featviz.errors import RunError
from featviz.gallery.build import build_gallery
from featviz.optvis import RenderSettings
from featviz.pipeline import analyze_run, render_run
from featviz.reading import first_epoch_above
from featviz.receptive import effective_receptive_field
from featviz.run.store import Run


@pytest.fixture(scope="module")
def analyzed(tiny_run, tmp_path_factory) -> tuple[Run, dict]:
    dst = tmp_path_factory.mktemp("analyzed") / "tiny"
    shutil.copytree(tiny_run.path, dst)
    run = Run.open(dst)
    render_run(run, RenderConfig(moments="all", settings=RenderSettings(steps=6)))
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
        assert all(-0.1 < c < 1.0 - 1e-6 for c in cka[:-1])  # the init differs from the trained layer
        assert a["convergence"][name]["cka_at_init"] == cka[0]
        settle = a["convergence"][name]["settling"]
        assert settle["steps"][-1] == max(settle["steps"]) and len(settle["pooled"]) == len(settle["steps"])
        assert settle["pooled"][-1] == pytest.approx(1.0) and settle["own_weights"][-1] == pytest.approx(1.0)
        assert settle["flattened"][-1] == pytest.approx(1.0) and set(settle["formed_at"]) == {
            "pooled",
            "flattened",
            "own_weights",
        }
        lo, hi = settle["formed_at_interval"]
        assert lo is None or hi is None or lo <= hi
        rf = a["receptive_field"][name]
        assert 0 < rf["effective_px_epoch_2"] <= rf["theoretical_px"]  # no clamp: this can fail
        mid = (rf["measured_at_px"] - 1) / 2  # measured on mirrored images big enough for the deepest field
        assert rf["measured_at_px"] == 32 and max(abs(c - mid) for c in rf["centre_px_epoch_2"]) <= 1  # half a stride
        assert 0 < rf["rms_radius_px_epoch_2"] < rf["theoretical_px"] and rf["rms_radius_sd_px_epoch_2"] >= 0
        curve = rf["mass_by_side_epoch_2"]
        assert curve[-1][1] == pytest.approx(1.0) and all(a[1] <= b[1] for a, b in zip(curve, curve[1:]))
        comp = a["complexity"][name]
        assert (
            set(comp) == {"0", "1", "2"}
            and comp["2"]["incompressibility"]["n"] == run.info.layers[a["layers"].index(name)].out_ch
        )
        rows = a["faithfulness"][name]["channels"]
        out_ch = run.info.layers[a["layers"].index(name)].out_ch
        assert [row["channel"] for row in rows] == list(range(out_ch))  # every rendered channel, once
        for row in rows:
            assert (run.path / row["file"]).is_file() and len(row["top"]) == 9
            assert 0 <= row["am_percentile"] <= 100 and "r" not in row
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
    assert (
        'id="what-changed"' in html and "../analysis/cka.png" in html and 'href="units/features.conv1/0.html"' in html
    )
    unit = (run.path / "gallery/units/features.conv1/0.html").read_text()  # the tile's page: its top-9 and wiring
    assert 'src="../../../renders/top9/features.conv1/ch_0000.png"' in unit and 'id="unit-data"' in unit


def test_wiring_is_measured_over_every_snapshot_and_against_the_null(analyzed) -> None:
    run, a = analyzed
    w = a["wiring"]
    assert w["steps"] == [p.step for p in run.snapshot_points()]
    conv2 = w["features.conv2"]
    assert conv2["source"] == "features.conv1" and conv2["fan_in"] == 4 and conv2["wired_at"] is None  # 4 <= 9
    assert conv2["share_init"] == [1.0] * 8 and conv2["null"]["epochs"] == [0, 1, 2]
    detail = json.loads((run.path / "analysis/wiring.json").read_text())
    unit = detail["layers"]["features.conv2"]["units"]["3"]
    assert len(unit["inputs"]) == len(w["steps"]) and len(unit["inputs"][0]) == 4
    assert [len(k) for _, _, k in unit["inputs"][-1]] == [9] * 4  # 3x3 kernels


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
    a = json.loads((run.path / "analysis.json").read_text())
    rms = a["receptive_field"]["features.conv1"][f"rms_radius_px_epoch_{a['epochs'][-1]}"]
    row = next(line for line in out.splitlines() if line.startswith("features.conv1"))
    assert "RMS r" in out and f"{rms:.1f}" in row.split()  # the table prints the RMS radius
    code, out, err = cli(["analyze", tmp_path])
    assert code != 0 and err.strip().startswith("featviz: error:") and len(err.strip().splitlines()) == 1


def test_running_statistics_alone_do_not_move_cka(analyzed) -> None:
    from featviz.analyze import convergence
    from featviz.loading import probe_images

    run, _ = analyzed
    loaded, _ = run.load_snapshots(run.snapshot_epochs())
    probe = probe_images(run)[0][:40]
    base = convergence(run, probe, torch.device("cpu"), snaps=loaded)
    g = torch.Generator().manual_seed(0)
    moved = {e: dict(s) for e, s in loaded.items()}
    for key in [k for k in moved[1] if k.endswith(("running_mean", "running_var"))]:
        moved[1][key] = torch.rand(moved[1][key].shape, generator=g) * 5 + 0.1  # as if they lagged far behind
    again = convergence(run, probe, torch.device("cpu"), snaps=moved)
    for name in base:
        assert again[name]["cka_to_final"] == pytest.approx(base[name]["cka_to_final"], abs=1e-9)


# ----------------------------------------------------------------------------- renders never mix
def test_other_render_settings_never_overwrite_or_mix(tiny_run, tmp_path: Path, cli) -> None:
    from featviz.run.renderset import am_settings, settings_set_of

    dst = tmp_path / "mix"
    shutil.copytree(tiny_run.path, dst)
    run = Run.open(dst)
    render_run(run, RenderConfig(moments="all", settings=RenderSettings(steps=4)))
    default = settings_set_of(am_settings(RenderConfig(settings=RenderSettings(steps=4), batchnorm="probe"), 16))
    first = {p: p.read_bytes() for p in (dst / "renders/am").rglob("*.png")}
    assert first and all(f"renders/am/{default}/" in p.as_posix() for p in first)
    render_run(run, RenderConfig(moments="0,2", settings=RenderSettings(steps=4, param="pixel")))
    pixel = settings_set_of(
        am_settings(RenderConfig(settings=RenderSettings(steps=4, param="pixel"), batchnorm="probe"), 16)
    )
    assert all(p.read_bytes() == b for p, b in first.items())  # the first set is untouched
    assert len(list((dst / f"renders/am/{pixel}").rglob("ch_*.png"))) == 2 * (4 + 8)
    # two sets, neither is the default settings' set (steps=4): analyze must be told which
    with pytest.raises(Exception, match="several render settings sets"):
        analyze_run(run, probe_size=20)
    a = analyze_run(run, probe_size=20, settings_set=default)
    assert a["settings_set"] == default and set(a["complexity"]["features.conv1"]) == {"0", "1", "2"}
    assert a["faithfulness"]["settings_set"] == default
    b = analyze_run(run, probe_size=20, settings_set=pixel)
    assert b["settings_set"] == pixel and set(b["complexity"]["features.conv1"]) == {"0", "2"}
    assert b["complexity"]["features.conv1"]["2"]["structure"]["n"] == 4  # only that set's images
    html = Path(build_gallery(run)).read_text()  # follows the analysis: the pixel set
    assert f"am/{pixel}/" in html and f"am/{default}/" not in html and default in html  # named as another set
    html = Path(build_gallery(run, default)).read_text()
    assert f"am/{default}/" in html and f"am/{pixel}/" not in html
    code, _, err = cli(["analyze", dst, "--settings-set", "nope"])
    assert code != 0 and "'nope'" in err and pixel in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- the reading's verdict
@pytest.mark.parametrize(
    "order,verdict",
    [
        ([1, 1, 1, 1], "tie"),
        ([1, 2, 2, 3], "shown"),
        ([2, 1, 3, 4], "not shown"),
        ([1, 2, 2, 2], "shown"),
        ([1, 1, 1, 2], "shown"),
        ([2, 2, 2, 1], "not shown"),
        ([1, 2, None, 3], "not shown"),
    ],
)
def test_shallow_first_criterion(order, verdict) -> None:
    from featviz.reading import shallow_first

    assert shallow_first(order) == verdict


@pytest.mark.parametrize(
    "settle,phrase",
    [
        ([1, 1, 1, 1], "a tie"),
        ([1, 2, 3, 4], "so shallow layers settled first, each depth after the one above it"),
        ([1, 2, 2, 3], "some depths settling together (not a strict order)"),
        ([2, 1, 3, 4], "does not show shallow layers settling first"),
    ],
)
def test_reading_states_only_what_the_numbers_show(settle, phrase) -> None:
    from featviz.reading import reading

    epochs = [0, 1, 2, 3, 4]
    layers = [f"c{d}" for d in range(1, 5)]
    conv = {
        n: {"cka_to_final": [0.5 if e < s else 0.95 for e in epochs], "dead_channels": []}
        for n, s in zip(layers, settle)
    }
    upd = {n: {"rotation_from_init": [0, 0.2], "relative_change": [None, 0.1], "unchanged_filters": []} for n in layers}
    text = reading({"layers": layers, "epochs": epochs, "convergence": conv, "filter_updates": upd}, 32)
    assert phrase in text
    others = {
        "a tie",
        "so shallow layers settled first, each depth after the one above it",
        "some depths settling together (not a strict order)",
        "does not show shallow layers settling first",
    } - {phrase}
    assert not any(o in text for o in others) and "bottom-up" not in text


@pytest.mark.parametrize(
    "own,phrase",
    [
        ([0, 40, 80, 120], "shallow-first again"),
        ([40, 40, 40, 40], ": a tie"),
        ([80, 40, 80, 120], "not shallow-first"),
    ],
)
def test_the_reading_gives_the_own_weights_control_and_the_half_sample_range(own, phrase) -> None:
    """With a settling block, the step-level verdict comes from its uniform grid (pooled, 0.9), and the
    own-weights control and the half-sample ranges follow it."""
    from featviz.reading import _convergence

    layers = [f"c{d}" for d in range(1, 5)]
    conv = {
        n: {
            "cka_to_final": [0.5, 0.95],
            "dead_channels": [],
            "by_step": {"steps": [0, 1], "cka_to_final": [0.5, 0.95]},  # disagrees with the grid: not used
            "settling": {
                "formed_at": {"pooled": {"0.9": 40 * d}, "own_weights": {"0.9": o}},
                "formed_at_interval": [40 * d, 40 * d + 40],
            },
        }
        for d, (n, o) in enumerate(zip(layers, own))
    }
    text = _convergence({"layers": layers, "epochs": [0, 1], "convergence": conv})
    assert "in optimizer steps: c1 at step 0, c2 at step 40, c3 at step 80, c4 at step 120" in text
    assert "each depth after the one above it" in text and phrase in text
    assert "range 0-40, 40-80, 80-120, 120-160, and neighbouring depths overlap" in text
    conv["c1"]["settling"]["formed_at_interval"] = [0, 0]
    conv["c2"]["settling"]["formed_at_interval"] = [40, 40]
    conv["c3"]["settling"]["formed_at_interval"] = [80, 80]
    assert "range 0-0, 40-40, 80-80, 120-160, apart at every depth" in _convergence(
        {"layers": layers, "epochs": [0, 1], "convergence": conv}
    )


@pytest.mark.parametrize(
    "last,init,phrase",
    [
        ([0.1, 0.5, 0.9], [0.3, 0.2, 0.1], "grow more complex with depth"),
        ([0.1, 0.5, 0.9], [0.1, 0.2, 0.3], "but so do the random init's (0.10, 0.20, 0.30)"),
        ([0.1, 0.9, 0.5], [0.3, 0.2, 0.1], "do not gain spatial structure with depth"),
        ([0.1, 0.5, 0.9], None, "no baseline to tell it from the architecture"),
    ],
)
def test_the_reading_calls_images_more_complex_only_against_the_init(last, init, phrase) -> None:
    """ "More complex" needs structure bits rising with depth at the end and not at the random init;
    incompressibility (rising here at both) never decides it."""
    from featviz.reading import _complexity

    layers = ["c1", "c2", "c3"]

    def cell(structure: float, inc: float) -> dict:
        return {"structure": {"mean": structure}, "incompressibility": {"mean": inc}}

    comp = {n: {"2": cell(x, 10.0 + d)} for d, (n, x) in enumerate(zip(layers, last))}
    for d, n in enumerate(layers):
        if init is not None:
            comp[n]["0"] = cell(init[d], 5.0 + d)
    text = _complexity({"layers": layers, "complexity": comp})
    assert phrase in text and "10.0, 11.0, 12.0 zlib bits per pixel" in text
    others = {
        "grow more complex with depth",
        "but so do the random init's",
        "do not gain spatial structure with depth",
        "no baseline to tell it from the architecture",
    }
    assert not any(o in text for o in others if not phrase.startswith(o))
    assert ("complex" in text) == (phrase == "grow more complex with depth")


def test_every_snapshot_is_measured_and_moments_inside_epoch_one_are_analyzed(tiny_run, tmp_path: Path) -> None:
    dst = tmp_path / "moments"
    shutil.copytree(tiny_run.path, dst)
    run = Run.open(dst)
    # auto moments: the init, steps 2 and 4 of epoch 1, epochs 1, 2
    out = render_run(run, RenderConfig(settings=RenderSettings(steps=4)))
    assert out["moments"] == [
        "step 0 · init",
        "step 2 · epoch 0.29",
        "step 4 · epoch 0.57",
        "step 7 · epoch 1",
        "step 14 · epoch 2",
    ]
    a = analyze_run(run, probe_size=20)
    by = a["updates_by_step"]["features.conv1"]
    assert by["steps"] == [0, 1, 2, 4, 7, 14]  # every snapshot of the log schedule
    assert by["rotation_from_init"][0] == pytest.approx(0.0, abs=1e-12) and by["change_from_previous"][0] is None
    assert all(c > 0 for c in by["change_from_previous"][1:])  # each notch of the slider shows a change
    assert set(a["complexity"]["features.conv1"]) == {"0", "1", "2"}  # by epoch: epoch snapshots
    assert set(a["complexity_by_step"]["features.conv1"]) == {"0", "2", "4", "7", "14"}  # every rendered moment
    assert a["faithfulness"]["epoch"] == 2
    conv = a["convergence"]["features.conv2"]
    assert conv["by_step"]["steps"] == [0, 1, 2, 4, 7, 14]
    formed = conv["formed_at_step"]
    assert formed in conv["by_step"]["steps"]
    i = conv["by_step"]["steps"].index(formed)
    assert all(c >= 0.9 for c in conv["by_step"]["cka_to_final"][i:]) and (
        i == 0 or conv["by_step"]["cka_to_final"][i - 1] < 0.9
    )


def test_a_damaged_step_snapshot_is_left_out_not_fatal(tiny_run, tmp_path: Path) -> None:
    dst = tmp_path / "damaged-step"
    shutil.copytree(tiny_run.path, dst)
    snap = dst / "snapshots/step_0000002.safetensors"
    snap.write_bytes(snap.read_bytes()[:50])
    a = analyze_run(Run.open(dst), probe_size=20)
    assert a["convergence"]["features.conv1"]["by_step"]["steps"] == [0, 1, 4, 7, 14]
    assert a["updates_by_step"]["features.conv1"]["steps"] == [0, 1, 4, 7, 14]


def test_reading_of_a_deep_network_groups_layers_that_settled_together() -> None:
    from featviz.reading import _when

    at = {f"l{i}": v for i, v in enumerate([1, 2, 2, 2, 4, 4, 4, None], start=1)}
    assert _when(at, "step") == "depth 1 (l1) at step 1, depths 2-4 at step 2, depths 5-7 at step 4, depth 8 (l8) never"
    few = {"conv1": 1, "conv2": None}
    assert _when(few, "epoch") == "conv1 at epoch 1, conv2 never"
