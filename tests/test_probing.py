"""Linear probes and selectivity in the analyze stage (featviz.probing), the probe task's images and
labels, and the shuffled-label control given with ``featviz analyze RUN --control RUN2``."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from torch import nn

from conftest import TINY_DATA, TINY_MODEL, TINY_TRAIN
from featviz.data import load_data
from featviz.errors import ConfigError
from featviz.loading import fitting, probe_task
from featviz.pipeline import train_run
from featviz.probing import features, probes
from featviz.run.store import Run


@pytest.fixture(scope="module")
def control(tmp_path_factory) -> Run:
    """The tiny run's shuffled-label control: same data, network and seed, training labels permuted."""
    out = tmp_path_factory.mktemp("control")
    return train_run(dataclasses.replace(TINY_DATA, labels="shuffled"), TINY_MODEL, TINY_TRAIN, out_dir=out, name="ctl")


def _loaded(run: Run) -> dict:
    return fitting(run, *run.load_snapshots(run.snapshot_epochs()))[0]


def test_features_average_the_relu_output_over_the_map_and_a_grid() -> None:
    net = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.ReLU())
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    x = torch.tensor([[-1.0, 2.0], [3.0, 4.0]])[None, None]
    f = features(net, {"0": "1"}, x)["0"]  # conv "0", its activation: the ReLU "1"
    assert f["relu"] is True
    assert f["global"].tolist() == [[(0 + 2 + 3 + 4) / 4]]  # the negative position is cut by the ReLU
    assert f["grid2"].tolist() == [[0.0, 2.0, 3.0, 4.0]]


def test_measure_recomputes_batchnorm_on_the_first_1000_fitting_images() -> None:
    """``probing.measure`` recomputes BatchNorm in its first fitting pass, on the first BATCHNORM_IMAGES
    (1,000) images in one batch: an outlier image after them leaves the statistics alone."""
    from featviz.loading import ProbeTask
    from featviz.probing import BATCHNORM_IMAGES, measure

    g = torch.Generator().manual_seed(2)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    x = torch.cat([torch.randn(1000, 1, 6, 6, generator=g) * 2 + 1, torch.full((100, 1, 6, 6), 40.0)])
    y = torch.arange(1100) % 2
    task = ProbeTask(x, y, x[:50], y[:50], 2, "constructed")
    out = measure(net, {"0": "2"}, task, ("global",))
    with torch.no_grad():
        conv = net[0](x[:BATCHNORM_IMAGES]).transpose(0, 1).flatten(1)
    assert BATCHNORM_IMAGES == 1000 and not net.training
    assert torch.allclose(net[1].running_mean, conv.mean(1), atol=1e-5)
    assert torch.allclose(net[1].running_var, conv.var(1), rtol=1e-4)
    assert 0 <= out["0"]["global"]["accuracy"] <= 1


def test_probe_task_uses_true_labels_and_the_validation_split(control: Run) -> None:
    task = probe_task(control)
    data = load_data(TINY_DATA)  # the true labels
    assert len(task.train_y) == len(data.train_x) == 200  # fewer than PROBE_TRAIN: all of them
    assert sorted(task.train_y.tolist()) == sorted(data.train_y.tolist())
    picked = {bytes(x.numpy()): int(y) for x, y in zip(data.train_x, data.train_y)}
    norm_back = (
        (task.train_x * torch.tensor(data.std).view(1, -1, 1, 1) + torch.tensor(data.mean).view(1, -1, 1, 1)) * 255
    ).round()
    pairs = [(bytes(x.to(torch.uint8).numpy()), int(y)) for x, y in zip(norm_back, task.train_y)]
    assert all(picked[k] == y for k, y in pairs)  # every fitted image keeps its true label, not the control's
    assert sorted(task.test_y.tolist()) == sorted(data.val_y.tolist()) and task.classes == 10  # all 50, reordered


def test_probes_at_every_epoch_with_the_gap_to_init(tiny_run: Run) -> None:
    loaded = _loaded(tiny_run)
    res = probes(tiny_run, loaded, torch.device("cpu"))
    assert res["epochs"] == sorted(loaded) and res["images"]["fit"] == 200 and res["images"]["test"] == 50
    for name in ("features.conv1", "features.conv2"):
        row = res["layers"][name]
        for pooling in ("global", "grid2"):
            acc = row[pooling]["accuracy"]
            assert len(acc) == (len(loaded) if pooling == "global" else 2) and all(0.0 <= a <= 1.0 for a in acc)
            assert row[pooling]["gap_from_init"] == [a - acc[0] for a in acc]
            assert all(c > 0 for c in row[pooling]["cross_entropy"])
        sel = row["selectivity"]
        assert len(sel["by_epoch"]) == len(loaded) and len(sel["channels_last"]) == 4 * (1 if name.endswith("1") else 2)
        assert all(0.0 <= s <= 1.0 for s in sel["channels_last"])
    again = probes(tiny_run, loaded, torch.device("cpu"))
    assert again == res  # deterministic


def test_control_is_probed_on_the_runs_images(tiny_run: Run, control: Run, monkeypatch) -> None:
    import featviz.probing

    tasks = []
    real = featviz.probing.probe_task
    monkeypatch.setattr(featviz.probing, "probe_task", lambda run, **kw: tasks.append(run.name) or real(run, **kw))
    res = probes(tiny_run, _loaded(tiny_run), torch.device("cpu"), control=control)
    ctl = res["control"]
    assert tasks == ["tiny"]  # one task, the run's: the control is scored on the same images and labels
    assert ctl["run"] == "ctl" and ctl["epochs"] == [0, 1, 2]
    # the same seed gives the same init: the control's epoch-0 probes are the run's
    assert (
        ctl["layers"]["features.conv2"]["global"]["accuracy"][0]
        == res["layers"]["features.conv2"]["global"]["accuracy"][0]
    )


def test_control_of_another_network_or_the_run_itself_is_refused(tiny_run: Run, tmp_path) -> None:
    shuffled = dataclasses.replace(TINY_DATA, labels="shuffled")
    other = train_run(shuffled, dataclasses.replace(TINY_MODEL, widths=(4, 6)), TINY_TRAIN, out_dir=tmp_path, name="o")
    with pytest.raises(ConfigError, match="another network"):
        probes(tiny_run, _loaded(tiny_run), torch.device("cpu"), control=other)
    with pytest.raises(ConfigError, match="names the run itself"):
        probes(tiny_run, _loaded(tiny_run), torch.device("cpu"), control=tiny_run)
    same = train_run(TINY_DATA, TINY_MODEL, TINY_TRAIN, out_dir=tmp_path, name="true-labels")
    with pytest.raises(ConfigError, match="not trained with --labels shuffled"):
        probes(tiny_run, _loaded(tiny_run), torch.device("cpu"), control=same)


def test_a_recorded_run_s_stored_probe_is_split_within_each_class(tiny_run: Run, monkeypatch) -> None:
    """Stored probe images in class order (as a user's sorted loader gives them) still put every class in
    both halves; test images of one class only are a one-line DataError, not a crash in selectivity."""
    from featviz.errors import DataError

    data = load_data(TINY_DATA)
    order = torch.argsort(data.val_y, stable=True)
    raw, labels = data.val_x[order], data.val_y[order]
    monkeypatch.setattr(type(tiny_run), "load_probe", lambda self: (raw, labels))
    task = probe_task(tiny_run)
    assert set(task.train_y.tolist()) == set(task.test_y.tolist()) == set(labels.tolist())
    assert len(task.train_y) + len(task.test_y) == len(labels) and "split within each class" in task.source
    monkeypatch.setattr(type(tiny_run), "load_probe", lambda self: (raw[:40], torch.zeros(40, dtype=torch.long)))
    with pytest.raises(DataError, match="probes need 2"):
        probe_task(tiny_run)


def test_cli_analyze_with_a_control_writes_it_and_the_claims(tiny_run: Run, control: Run, tmp_path, cli) -> None:
    shutil.copytree(tiny_run.path, tmp_path / "tiny")
    code, out, err = cli(["analyze", tmp_path / "tiny", "--probe", "40", "--control", control.path])
    assert code == 0, err
    a = json.loads((tmp_path / "tiny" / "analysis.json").read_text())
    assert a["probes"]["control"]["run"] == "ctl"
    assert "probe last" in out and "claims (docs/metrics.md; the gallery's table): a " in out + err
    last = [a["probes"]["layers"][n]["global"]["accuracy"][-1] for n in a["layers"]]
    assert f"accuracy {last[0]:.3f}, {last[1]:.3f} at epoch 2" in a["reading"]
    assert "the shuffled-label control ctl reaches" in a["reading"]
    html = (tmp_path / "tiny" / "gallery" / "index.html").read_text()
    table = html.split('<table id="claims">', 1)[1].split("</table>", 1)[0]
    assert [f'data-key="{k}"' in table for k in "abcdef"] == [True] * 6 and table.count("<tr data-key") == 6
    assert "shuffled-label control" in table and "not measured: no control" not in table  # claim c has its control
    assert (
        'src="../analysis/probes.png" class="wide"' in html
        and (tmp_path / "tiny" / "analysis" / "probes.png").is_file()
    )
    summary = html.split('id="summary">', 1)[1].split("</p>", 1)[0]
    assert summary.count(". ") + 1 <= 5 and "linear probe" in summary  # at most five sentences
    code, _out, err = cli(["analyze", tmp_path / "tiny", "--control", tmp_path / "missing"])
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_generated_runs_probe_images_come_without_generating_the_whole_set(tiny_run: Run, monkeypatch) -> None:
    """probe_images and probe_task of a run on a generated set render the validation split and the probes'
    training images only (loading the whole set is refused here), normalized with run.json's statistics, and
    hold exactly the images the whole set has at those places."""
    import featviz.loading as loading
    from featviz.images import Normalizer

    data = load_data(dataclasses.replace(TINY_DATA, labels="true"))
    loading._split.cache_clear()
    monkeypatch.setattr(loading, "_dataset", lambda cfg: pytest.fail("the whole data set was generated"))
    norm = Normalizer(tiny_run.info.data.mean, tiny_run.info.data.std)
    x, raw, labels = loading.probe_images(tiny_run)
    assert torch.equal(raw, data.val_x) and torch.equal(labels, data.val_y) and torch.equal(x, norm(data.val_x))
    task = probe_task(tiny_run, train=30, test=20)
    pick = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(0))[:30]
    held = torch.randperm(len(data.val_x), generator=torch.Generator().manual_seed(1))[:20]
    assert torch.equal(task.train_x, norm(data.train_x[pick])) and torch.equal(task.train_y, data.train_y[pick])
    assert torch.equal(task.test_x, norm(data.val_x[held])) and torch.equal(task.test_y, data.val_y[held])
