"""Hostile text in run files reaches the terminal escaped, and what featviz says about it is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from featviz.errors import error_line, printable
from featviz.run.store import Run
from hostile_helpers import _damaged


def test_names_from_files_are_printed_escaped(cli, tmp_path: Path, tiny_run: Run) -> None:
    """F19: escape sequences in names read from files (clear screen, set title) were printed raw."""
    run = _damaged(tiny_run, tmp_path)
    meta = json.loads((run.path / "run.json").read_text())
    meta["configs"]["data"]["name"] = "\x1b[2J\x1b]0;owned\x07"
    (run.path / "run.json").write_text(json.dumps(meta))
    code, out, err = cli(["runs", "--out", run.path.parent])
    assert code == 0 and "\x1b" not in out + err and "\\x1b[2J" in out
    assert printable("a\x1b[2Jb\x07\u202e\n") == "a\\x1b[2Jb\\x07\\u202e\n"


def test_error_lines_are_cut(cli) -> None:
    """F21: large --model-kwargs were echoed into a 120 KB error line."""
    code, _, err = cli(
        [
            "train",
            "--model",
            "torchvision:resnet18",
            "--model-kwargs",
            json.dumps({"bogus": "x" * 120_000}),
            "--epochs",
            "1",
            "--n-train",
            32,
            "--n-val",
            10,
        ]
    )
    assert code == 1 and len(err) < 1200 and len(err.strip().splitlines()) == 1, len(err)
    assert len(error_line("y" * 5000)) == 1000


def test_labels_from_files_are_text_and_printed_escaped(cli, tmp_path: Path, tiny_run: Run) -> None:
    """F16 and F19: a numeric label in metrics.jsonl (rec.epoch(label=2.0)) made render fail with an
    unexpected TypeError; a checkpoint name holding escape sequences was printed raw by every render."""
    run = _damaged(tiny_run, tmp_path)
    recs = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    recs[1]["label"] = 2.0
    recs[-1]["label"] = "epoch 2 · \x1b[2J\x1b]0;owned\x07ckpt.pt"
    (run.path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    run.write_manifest(run.epochs_done)  # as the writer would have committed it
    labels = [p.label for p in run.snapshot_points()]
    assert all(isinstance(x, str) for x in labels) and any("\x1b[2J" in x for x in labels)
    code, out, err = cli(["render", run.path, "--steps", 2, "--size", 16, "--moments", "last", "--channels", "0"])
    assert code == 0 and "unexpected" not in err, err
    assert "\x1b" not in out + err and "\\x1b[2J" in out + err


@pytest.mark.parametrize(
    "edit",
    [
        ("layers", 1, "depth", ""),
        ("layers", 0, "kernel", [5]),
        ("data", "size", "16"),
        ("data", "mean", "x"),
        ("layers", "conv"),
        ("name", 5),
    ],
)
def test_an_edited_run_json_is_one_line_naming_the_field(cli, tmp_path: Path, tiny_run: Run, edit: tuple) -> None:
    """A run.json whose layer depth became text made the gallery fail with an unexpected TypeError (found
    by the property-based search): run.json's layer list and data description are typed when opened."""
    run = _damaged(tiny_run, tmp_path)
    meta = json.loads((run.path / "run.json").read_text())
    *where, key, value = edit
    node = meta
    for k in where:
        node = node[k]
    node[key] = value
    (run.path / "run.json").write_text(json.dumps(meta))
    for argv in (["gallery", run.path], ["render", run.path, "--steps", 2], ["check", run.path]):
        code, _, err = cli(argv)
        assert code == 1 and "unexpected" not in err and "run.json" in err, (argv, err)
