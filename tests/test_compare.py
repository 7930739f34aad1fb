"""featviz compare: known answers (a run against its copy, a copy with permuted channels), runs of
different widths, and one-line errors for what a user gets wrong."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY_DATA, TINY_MODEL, TINY_TRAIN
from featviz.compare import compare, layer_means, match_units, state_at
from featviz.errors import ConfigError
from featviz.loading import probe_images
from featviz.pipeline import train_run
from featviz.run.store import Run


@pytest.fixture(scope="module")
def copy(tiny_run, tmp_path_factory) -> Run:
    dst = tmp_path_factory.mktemp("copy") / "copy"
    shutil.copytree(tiny_run.path, dst)
    return Run.open(dst)


def test_a_run_against_its_copy_is_identical_everywhere(tiny_run: Run, copy: Run) -> None:
    data = compare([tiny_run, copy], probe_size=40, device="cpu", transfer_steps=16)
    pair = data["pairs"][0]
    assert [round(pair["cka"][d][d], 9) for d in range(2)] == [1.0, 1.0]
    hits = data["transfer"]["hits"]  # identical networks draw identical class images and classify them alike
    assert hits[0][1] == hits[0][0] == hits[1][1] == hits[1][0] and data["transfer"]["chance"] == 0.1
    assert data["transfer"]["rate"] == hits[0][1] / 10
    assert data["identification"] == {"hits": 4, "tests": 4, "accuracy": 1.0}
    for matched in pair["matching"].values():
        assert all(a == b for a, b, r in matched if r > 0.5)  # every channel that varies matches itself
        assert all(r == pytest.approx(1.0) or r == 0.0 for _, _, r in matched)  # one that never varies: 0
    assert data["differs"] == {} and data["images"] == {"count": 40, "from": "tiny"}
    assert pair["init_control"][0] < 1.0  # against the copy's random init: less shared


def test_matching_recovers_a_permutation_of_the_channels(tiny_run: Run) -> None:
    _, state = state_at(tiny_run, "final")
    perm = torch.tensor([2, 0, 3, 1])
    moved = dict(state)
    for key in ("features.conv1.weight", "features.bn1.weight", "features.bn1.bias"):
        moved[key] = state[key][perm]
    for key in ("features.bn1.running_mean", "features.bn1.running_var"):
        moved[key] = state[key][perm]
    moved["features.conv2.weight"] = state["features.conv2.weight"][:, perm]
    _, raw, _ = probe_images(tiny_run)
    a = layer_means(tiny_run, state, raw[:40], torch.device("cpu"))
    b = layer_means(tiny_run, moved, raw[:40], torch.device("cpu"))
    assert torch.allclose(a["features.conv2"], b["features.conv2"], atol=1e-5)  # the same network, relabelled
    found = {ca: cb for ca, cb, r in match_units(a["features.conv1"], b["features.conv1"]) if r > 0.5}
    assert found == {int(perm[j]): j for j in range(4) if int(perm[j]) in found}  # channel perm[j] moved to j
    assert len(found) >= 3  # at most one channel that never varies on the images


def test_match_units_known_answer() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    y = 3 * x[:, [4, 2, 0, 1]] + 1  # 4 of x's channels, permuted, scaled and shifted
    matched = match_units(x, y)
    assert sorted((a, b) for a, b, _ in matched) == [(0, 2), (1, 3), (2, 1), (4, 0)]
    assert all(r == pytest.approx(1.0) for _, _, r in matched)


def test_runs_of_different_widths_compare(tiny_run: Run, tmp_path) -> None:
    wide = train_run(TINY_DATA, dataclasses.replace(TINY_MODEL, widths=(6, 12)), TINY_TRAIN, out_dir=tmp_path, name="w")
    data = compare([tiny_run, wide], probe_size=40, device="cpu", transfer_steps=None)
    pair = data["pairs"][0]
    assert len(pair["cka"]) == 2 and len(pair["cka"][0]) == 2
    assert len(pair["matching"]["features.conv1"]) == 4  # min(4, 6) channels matched
    assert data["differs"]["model.widths"] == [(4, 8), (6, 12)]
    from featviz.gallery.compare_page import legend

    assert legend(data) == ["tiny (model.widths=(4, 8))", "w (model.widths=(6, 12))"]  # what tells them apart


def test_user_mistakes_are_one_line_errors(tiny_run: Run, tmp_path, cli) -> None:
    with pytest.raises(ConfigError, match="at least two runs"):
        compare([tiny_run])
    with pytest.raises(ConfigError, match="same run twice"):
        compare([tiny_run, tiny_run])
    big = train_run(dataclasses.replace(TINY_DATA, size=20), TINY_MODEL, TINY_TRAIN, out_dir=tmp_path, name="big")
    with pytest.raises(ConfigError, match="different inputs"):
        compare([tiny_run, big])
    with pytest.raises(ConfigError, match="no snapshot at 999"):
        state_at(tiny_run, "999")
    for argv in (["compare", tiny_run.path], ["compare", tiny_run.path, tmp_path / "missing"]):
        code, _out, err = cli(argv)
        assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_writes_a_page_where_a_hostile_name_stays_text(tiny_run: Run, tmp_path, cli) -> None:
    hostile = tmp_path / "<img src=x onerror=alert(1)>"
    shutil.copytree(tiny_run.path, hostile)
    code, out, err = cli(["compare", tiny_run.path, hostile, "--out", tmp_path / "cmp", "--probe", "40"])
    assert code == 0, err
    html = (tmp_path / "cmp" / "index.html").read_text()
    assert "<img src=x onerror" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert data["identification"]["accuracy"] == 1.0 and (tmp_path / "cmp" / "cka_0_1.png").is_file()
    assert "layer identification: 4 of 4" in out + err
    assert 'src="curves.png"' in html and (tmp_path / "cmp" / "curves.png").is_file()
    assert not (tmp_path / "cmp" / "rotation.png").exists()  # neither run was analyzed: no per-depth curves
    assert 'id="transfer"' in html and (tmp_path / "cmp" / "classes_1.png").is_file()
    assert "class visualizations put in their class by the other runs" in out + err


def test_served_comparison_answers_inside_its_folders_only(tiny_run: Run, copy: Run, tmp_path) -> None:
    import threading
    import urllib.error
    import urllib.request

    from featviz.gallery.compare_page import write_comparison
    from featviz.gallery.serve import make_server

    folder = tmp_path / "cmp"
    write_comparison(compare([tiny_run, copy], probe_size=40, transfer_steps=None), [tiny_run, copy], folder)
    (tmp_path / "secret.txt").write_text("not served")
    folders = [folder, tiny_run.path, copy.path]
    root = os.path.commonpath([str(p.resolve()) for p in [*folders, tmp_path]])
    server = make_server(Path(root), 0, allowed=folders)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def status(path: Path) -> int:
        rel = path.resolve().relative_to(root).as_posix()
        try:
            with urllib.request.urlopen(f"{base}/{rel}") as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        assert status(folder / "index.html") == 200 and status(copy.path / "run.json") == 200
        assert status(tmp_path / "secret.txt") == 404  # under the served root, outside every allowed folder
        sibling = Path(str(copy.path) + "2")  # a folder whose name starts with an allowed run's name
        shutil.copytree(copy.path, sibling, dirs_exist_ok=True)
        assert status(sibling / "run.json") == 404
    finally:
        server.shutdown()
        server.server_close()


def test_logit_layer_is_the_last_linear() -> None:
    from torch import nn

    from featviz.transfer import logit_layer

    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert logit_layer(net) == "3"
    with pytest.raises(ConfigError, match="nn.Linear"):
        logit_layer(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_transfer_counts_the_intended_class_and_needs_the_same_classes(tiny_run: Run, tmp_path) -> None:
    """A copy whose class outputs are rotated by one (a derangement) puts none of the images the run itself
    classifies right into their class; runs on other classes are refused."""
    from featviz.transfer import transfer

    _, state = state_at(tiny_run, "final")
    rolled = dict(state)
    perm = torch.roll(torch.arange(10), 1)
    rolled["head.fc.weight"], rolled["head.fc.bias"] = state["head.fc.weight"][perm], state["head.fc.bias"][perm]
    _, raw, _ = probe_images(tiny_run)
    from featviz.optvis import RenderSettings

    out = transfer([tiny_run, tiny_run], [state, rolled], raw[:40], torch.device("cpu"), RenderSettings(steps=16))
    right = out["hits"][0][0]
    assert right >= 1 and out["hits"][0][1] <= 10 - right  # what the run gets right, the rolled copy gets wrong
    other = train_run(dataclasses.replace(TINY_DATA, name="pairs"), TINY_MODEL, TINY_TRAIN, out_dir=tmp_path, name="p")
    with pytest.raises(ConfigError, match="same named classes"):
        transfer([tiny_run, other], [state, state_at(other, "final")[1]], raw[:40], torch.device("cpu"))
