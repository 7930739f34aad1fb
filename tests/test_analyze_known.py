"""featviz analyze on runs with known answers: snapshots and activation-maximization images built so
that every number analyze reports can be computed by hand."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from featviz.images import png_bytes
from featviz.pipeline import analyze_run
from featviz.run.fileio import save_tensors
from featviz.run.renderset import settings_set_of
from featviz.run.schema import RenderRecord
from featviz.run.store import Run


def _rebuild(run_src: Run, dst: Path, states: list[dict[str, torch.Tensor]]) -> Run:
    """A copy of ``run_src`` whose epoch snapshots are ``states`` (hashes recorded anew), without renders."""
    shutil.copytree(run_src.path, dst, ignore=shutil.ignore_patterns("renders*", "analysis*", "gallery"))
    run = Run.open(dst)
    for e, state in enumerate(states):
        save_tensors(run.snapshot_file(e), state)
    (dst / "manifest.json").unlink()
    run.write_manifest(len(states) - 1)
    return run


def _add_am(run: Run, layer: str, depth: int, channel: int, epoch: int, img: torch.Tensor, settings: dict) -> None:
    sid = settings_set_of(settings)
    path = run.write_artifact("renders", f"am/{sid}/{layer}/epoch_{epoch:03d}/ch_{channel:04d}.png", png_bytes(img))
    run.add_renders(
        [
            RenderRecord(
                run.rel(path),
                "am",
                layer=layer,
                depth=depth,
                epoch=epoch,
                channel=channel,
                activation=123.0,
                settings=settings,
                settings_set=sid,
            )
        ]
    )


@pytest.fixture(scope="module")
def known(tiny_run, tmp_path_factory) -> tuple[Run, dict, dict]:
    """Snapshots with known properties: conv1 filter 0 is zero from the init on (never changes, never
    fires); conv2 channel 3 has BatchNorm shift -100 at the end (never fires); at epoch 1 depth 1 is
    already final while depth 2 is a constant (its BatchNorm scale is 0): CKA 1 and 0 by construction.
    Activation-maximization images: conv1 channel 1's is its own top validation image, rendered at
    twice the run's size (nearest-neighbour), so it ranks with the top image; conv1 channel 0's is flat grey."""
    from featviz.loading import load_model_at, probe_images

    s0, s1, s2 = (dict(tiny_run.load_snapshot(e)) for e in (0, 1, 2))
    for s in (s0, s1, s2):
        s["features.conv1.weight"] = s["features.conv1.weight"].clone()
        s["features.conv1.weight"][0] = 0
        s["features.bn1.bias"] = s["features.bn1.bias"].clone()
        s["features.bn1.bias"][0] = 0
    s2["features.bn2.bias"] = s2["features.bn2.bias"].clone()
    s2["features.bn2.bias"][3] = -100.0
    s1 = dict(s2)
    s1["features.bn2.weight"] = torch.zeros_like(s2["features.bn2.weight"])
    run = _rebuild(tiny_run, tmp_path_factory.mktemp("known") / "known", [s0, s1, s2])
    val, raw, _ = probe_images(run)
    model = load_model_at(run, 2, torch.device("cpu"), s2)
    from featviz.hooks import capture

    with capture(model, ["features.bn1"], detach=True) as acts:
        model(val)
    means = acts["features.bn1"].mean((2, 3))  # [N, C]
    top = int(means[:, 1].argmax())
    settings = {
        "steps": 4,
        "param": "fourier",
        "transforms": "standard",
        "lr": 0.05,
        "seed": 0,
        "size": 32,
        "target": "response",
    }
    big = raw[top].repeat_interleave(2, 1).repeat_interleave(2, 2)  # 16 -> 32 px, same content
    _add_am(run, "features.conv1", 1, 1, 2, big, settings)
    _add_am(run, "features.conv1", 1, 0, 2, torch.full((3, 32, 32), 128, dtype=torch.uint8), settings)
    _add_am(run, "features.conv2", 2, 3, 2, big, settings)
    expected = {"top": top, "data_max": float(means[:, 1].max())}
    return run, analyze_run(run, probe_size=50), expected


def test_dead_and_unchanged_filters_are_found(known) -> None:
    _, a, _ = known
    assert a["filter_updates"]["features.conv1"]["unchanged_filters"] == [0]
    assert a["filter_updates"]["features.conv2"]["unchanged_filters"] == []
    assert a["convergence"]["features.conv1"]["dead_channels"] == [0]
    assert a["convergence"]["features.conv2"]["dead_channels"] == [3]


def test_cka_follows_the_constructed_order(known) -> None:
    _, a, _ = known
    c1, c2 = a["convergence"]["features.conv1"]["cka_to_final"], a["convergence"]["features.conv2"]["cka_to_final"]
    assert c1[1] == pytest.approx(1.0, abs=1e-9) and c1[2] == pytest.approx(1.0, abs=1e-9)
    assert c2[1] == 0.0 and c2[2] == pytest.approx(1.0, abs=1e-9)  # a constant representation shares nothing
    assert c1[0] < 1.0 and a["convergence"]["features.conv1"]["cka_at_init"] == c1[0]
    assert "features.conv1 at epoch 1, features.conv2 at epoch 2" in a["reading"]
    assert "shallow layers settled first" in a["reading"]


def test_faithfulness_percentile_is_measured_at_the_data_size(known) -> None:
    """The AM image of conv1 channel 1 is its top validation image (at twice the size): it ranks at the
    top of the data, within the tie at the maximum; a zero filter's response is one constant for every
    image, so its image ties with all of them (50); the dead channel is dead in analyze's one list."""
    run, a, expected = known
    n = run.info.data.n_val
    f = a["faithfulness"]
    assert f["am_size_px"] == 32 and f["measured_at_px"] == 16 and f["epoch"] == 2
    rows = {r["channel"]: r for r in f["features.conv1"]["channels"]}
    assert 100 * (n - 1) / n <= rows[1]["am_percentile"] <= 100  # the AM image is the top data-set image
    assert rows[1]["data_max"] == pytest.approx(expected["data_max"], rel=1e-5)
    assert rows[1]["top"][0] == expected["top"]
    assert rows[0]["am_percentile"] == 50.0 and rows[0]["data_max"] <= 0  # a zero filter: the BatchNorm shift alone
    dead = f["features.conv2"]["channels"][0]
    assert dead["channel"] == 3 and dead["data_max"] < -50 and 3 in a["convergence"]["features.conv2"]["dead_channels"]


def test_complexity_values_of_the_stored_images(known) -> None:
    from featviz.images import decode_png
    from featviz.metrics import incompressibility, spectrum_slope, structure_bits

    run, a, expected = known
    c1 = a["complexity"]["features.conv1"]["2"]
    assert c1["incompressibility"]["n"] == 2 and c1["flat"] == 1 and c1["slope"]["n"] == 1  # grey: no slope
    files = sorted(r.file for r in run.render_index() if r.layer == "features.conv1")
    bits = [incompressibility(decode_png(run.read_file_bytes(f))) for f in files]
    assert c1["incompressibility"]["mean"] == pytest.approx(sum(bits) / 2) and min(bits) < 0.5 < 2 < max(bits)
    saved = [structure_bits(decode_png(run.read_file_bytes(f))) for f in files]
    assert c1["structure"]["mean"] == pytest.approx(sum(saved) / 2) and 0.0 in saved  # the grey image: exactly 0

    slopes = [spectrum_slope(decode_png(run.read_file_bytes(f))) for f in files]
    assert slopes.count(None) == 1 and c1["slope"]["mean"] == pytest.approx(next(x for x in slopes if x is not None))
